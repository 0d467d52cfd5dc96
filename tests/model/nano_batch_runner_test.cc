// ModelRunner::ExecuteNano: a step run as two nano-batches on two thread groups gives the
// same logits rows, bit for bit, as the same step run monolithic on all the threads, over
// several greedy steps mixing prompt chunks (with and without logits) and decode tokens,
// under several placements (alternating, prompts apart from decodes, all on one group); and
// plans that name no group per chunk are refused.
//
// Bit for bit holds because no CPU kernel mixes rows of different sequences: activations are
// quantized per row (per 32-element block), the GEMM's dot products do not depend on m or on
// the thread split of the output columns, norms and RoPE are per row, attention is per
// (token, KV head) over that token's own sequence.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/model_runner.h"
#include "tests/support/test_model.h"

namespace tandem::model {
namespace {

ModelRunnerConfig Config(int nano_groups) {
  ModelRunnerConfig c;
  c.backend.cpu.threads = 2;
  c.model.max_batch_tokens = 96;
  c.model.max_logit_rows = 8;
  c.model.max_seqs = 8;
  c.model.block_size = 4;
  c.kv_cache_bytes = size_t{8} << 20;
  c.nano_groups = nano_groups;
  return c;
}

std::unique_ptr<GgufFile> TestFile() {
  testing::TestModelSpec spec;
  spec.weight_std = 0.2f;
  spec.embd_std = 0.5f;
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/nano_batch_runner_test.", getpid(), ".gguf");
  EXPECT_TRUE(testing::WriteTestModel(spec, path).ok());
  auto file = GgufFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  std::remove(path.c_str());
  return file.ok() ? std::move(*file) : nullptr;
}

// One sequence as both runners see it: its tokens and how many ran.
struct Seq {
  std::vector<int32_t> tokens;
  int computed = 0;
  kvcache::BlockTable table{4};
};

struct Chunk {
  int seq, start, n;
  bool want_logits;
};

int Argmax(const float* row, int vocab) {
  int best = 0;
  for (int i = 1; i < vocab; ++i) {
    if (row[i] > row[best]) best = i;
  }
  return best;
}

enum class Placement { kAlternate, kPromptsApart, kAllOnGroup1 };

void RunGreedySteps(const GgufFile& file) {
  auto mono = ModelRunner::Create(Config(0), file);
  ASSERT_TRUE(mono.ok()) << mono.status();
  auto nano = ModelRunner::Create(Config(2), (*mono)->weights());
  ASSERT_TRUE(nano.ok()) << nano.status();
  ASSERT_TRUE((*nano)->has_nano_groups());
  ASSERT_FALSE((*mono)->has_nano_groups());
  const int vocab = (*mono)->model_config().vocab_size;

  // Prompts of different lengths, joining at different steps; chunks of at most 6 tokens, so
  // the long ones prefill over several steps while the short ones decode.
  std::mt19937 rng(11);
  const std::vector<int> prompt_len = {7, 13, 20, 5, 30, 9};
  std::vector<Seq> a(prompt_len.size()), b(prompt_len.size());
  for (size_t s = 0; s < prompt_len.size(); ++s) {
    for (int i = 0; i < prompt_len[s]; ++i) a[s].tokens.push_back(3 + rng() % 200);
    b[s].tokens = a[s].tokens;
  }
  int compared_rows = 0, nano_steps = 0;
  for (int step = 0; step < 12; ++step) {
    std::vector<Chunk> chunks;
    for (int s = 0; s < static_cast<int>(a.size()); ++s) {
      if (step < s) continue;  // sequence s joins at step s
      const int left = static_cast<int>(a[s].tokens.size()) - a[s].computed;
      const int n = std::min(left, 6);
      chunks.push_back({s, a[s].computed, n, n == left});
    }
    const Placement placement = static_cast<Placement>(step % 3);
    std::vector<int> batch_of;
    std::vector<int> rows_a, rows_b;
    (*mono)->BeginStep();
    (*nano)->BeginStep();
    for (size_t i = 0; i < chunks.size(); ++i) {
      const Chunk& c = chunks[i];
      for (auto* seqs : {&a, &b}) {
        ModelRunner& r = seqs == &a ? **mono : **nano;
        Seq& q = (*seqs)[c.seq];
        ASSERT_TRUE(r.kv().Append(q.table, c.start + c.n).ok());
        const std::span<const int32_t> toks(q.tokens.data() + c.start, c.n);
        (seqs == &a ? rows_a : rows_b).push_back(r.AddChunk(q.table, toks, c.start, c.want_logits));
      }
      switch (placement) {
        case Placement::kAlternate:
          batch_of.push_back(static_cast<int>(i % 2));
          break;
        case Placement::kPromptsApart:
          batch_of.push_back(c.n > 1 ? 0 : 1);
          break;
        case Placement::kAllOnGroup1:
          batch_of.push_back(1);
          break;
      }
    }
    ASSERT_EQ(rows_a, rows_b);
    ASSERT_TRUE((*mono)->Execute().ok());
    ASSERT_TRUE((*nano)->ExecuteNano(batch_of).ok());
    ++nano_steps;
    for (size_t i = 0; i < chunks.size(); ++i) {
      const Chunk& c = chunks[i];
      a[c.seq].computed += c.n;
      b[c.seq].computed += c.n;
      if (rows_a[i] < 0) continue;
      const float* la = (*mono)->logits(rows_a[i]);
      const float* lb = (*nano)->logits(rows_b[i]);
      ASSERT_EQ(std::memcmp(la, lb, sizeof(float) * vocab), 0)
          << "step " << step << " chunk " << i << " (sequence " << c.seq << ", " << c.n
          << " tokens at " << c.start << ") in nano-batch " << batch_of[i];
      ++compared_rows;
      const int32_t ta = Argmax(la, vocab), tb = Argmax(lb, vocab);
      ASSERT_EQ(ta, tb);
      a[c.seq].tokens.push_back(ta);
      b[c.seq].tokens.push_back(tb);
    }
  }
  EXPECT_EQ(nano_steps, 12);
  EXPECT_GT(compared_rows, 40);
  for (size_t s = 0; s < a.size(); ++s) {
    EXPECT_EQ(a[s].tokens, b[s].tokens) << "sequence " << s;
    (*mono)->kv().Free(a[s].table);
    (*nano)->kv().Free(b[s].table);
  }
}

TEST(NanoBatchRunnerTest, SameRowsAsMonolithicOnTheSyntheticModel) {
  auto file = TestFile();
  ASSERT_TRUE(file);
  RunGreedySteps(*file);
}

TEST(NanoBatchRunnerTest, SameRowsAsMonolithicOnTheDefaultModel) {
  const char* root = std::getenv("TANDEM_SOURCE_DIR");
  const std::string path =
      absl::StrCat(root ? root : TANDEM_SOURCE_DIR, "/models/SmolLM2-135M-Instruct.Q4_1.gguf");
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status() << " (run scripts/fetch-model; make test does)";
  RunGreedySteps(**file);
}

TEST(NanoBatchRunnerTest, RefusesBadPlansAndConfigs) {
  auto file = TestFile();
  ASSERT_TRUE(file);
  ModelRunnerConfig one_thread = Config(2);
  one_thread.backend.cpu.threads = 1;
  EXPECT_EQ(ModelRunner::Create(one_thread, *file).status().code(),
            absl::StatusCode::kInvalidArgument);
  ModelRunnerConfig three = Config(3);
  EXPECT_EQ(ModelRunner::Create(three, *file).status().code(), absl::StatusCode::kInvalidArgument);

  auto mono = ModelRunner::Create(Config(0), *file);
  ASSERT_TRUE(mono.ok());
  (*mono)->BeginStep();
  EXPECT_EQ((*mono)->ExecuteNano({}).code(), absl::StatusCode::kFailedPrecondition);

  auto nano = ModelRunner::Create(Config(2), *file);
  ASSERT_TRUE(nano.ok());
  kvcache::BlockTable t0{4}, t1{4};
  ASSERT_TRUE((*nano)->kv().Append(t0, 3).ok());
  ASSERT_TRUE((*nano)->kv().Append(t1, 3).ok());
  const std::vector<int32_t> toks = {5, 6, 7};
  (*nano)->BeginStep();
  (*nano)->AddChunk(t0, toks, 0, true);
  (*nano)->AddChunk(t1, toks, 0, true);
  const std::vector<int> short_plan = {0};
  const std::vector<int> bad_group = {0, 2};
  EXPECT_EQ((*nano)->ExecuteNano(short_plan).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*nano)->ExecuteNano(bad_group).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int> ok_plan = {1, 0};
  EXPECT_TRUE((*nano)->ExecuteNano(ok_plan).ok());
  // Both rows hold the same prompt in different sequences: the same logits.
  EXPECT_EQ(std::memcmp((*nano)->logits(0), (*nano)->logits(1),
                        sizeof(float) * (*nano)->model_config().vocab_size),
            0);
  (*nano)->kv().Free(t0);
  (*nano)->kv().Free(t1);
}

}  // namespace
}  // namespace tandem::model
