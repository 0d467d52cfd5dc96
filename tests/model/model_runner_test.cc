// ModelRunner: config errors name the problem; a step's logits match the model run directly;
// Sample over the backend's threads gives what one-by-one sampling gives; a second runner on
// the first's weights computes the same logits.
#include "model/model_runner.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/support/test_model.h"

namespace tandem::model {
namespace {

ModelRunnerConfig Config(int threads) {
  ModelRunnerConfig c;
  c.backend.cpu.threads = threads;
  c.model.max_batch_tokens = 64;
  c.model.max_logit_rows = 8;
  c.model.max_seqs = 8;
  c.model.block_size = 4;
  c.kv_cache_bytes = size_t{4} << 20;
  return c;
}

std::unique_ptr<GgufFile> TestFile() {
  testing::TestModelSpec spec;
  spec.weight_std = 0.2f;
  spec.embd_std = 0.5f;
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/model_runner_test.", getpid(), ".gguf");
  EXPECT_TRUE(testing::WriteTestModel(spec, path).ok());
  auto file = GgufFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  std::remove(path.c_str());  // mapped; the name is not needed any more
  return file.ok() ? std::move(*file) : nullptr;
}

std::vector<int32_t> Prompt(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> p(n);
  for (int32_t& t : p) t = 3 + rng() % 200;
  return p;
}

TEST(ModelRunnerTest, ConfigErrorsNameTheProblem) {
  auto file = TestFile();
  ASSERT_TRUE(file);
  ModelRunnerConfig c = Config(1);
  c.backend.device = "cuda:0";
  EXPECT_EQ(ModelRunner::Create(c, *file).status().code(), absl::StatusCode::kUnimplemented);
  c.backend.device = "tpu";
  EXPECT_EQ(ModelRunner::Create(c, *file).status().code(), absl::StatusCode::kInvalidArgument);
  c = Config(1);
  c.kv_cache_bytes = 16;  // not one block
  const absl::Status s = ModelRunner::Create(c, *file).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("holds no block"), std::string::npos) << s;
  EXPECT_FALSE(ModelRunner::Create(Config(1), nullptr).ok());
}

// Three sequences in one step, each asking for logits: the runner's rows are the model's, and
// sampling them on two threads gives what sampling them one at a time gives.
TEST(ModelRunnerTest, StepsAndSamplesInParallel) {
  auto file = TestFile();
  ASSERT_TRUE(file);
  auto runner = ModelRunner::Create(Config(2), *file);
  ASSERT_TRUE(runner.ok()) << runner.status();
  ModelRunner& r = **runner;
  const int vocab = r.model_config().vocab_size;
  std::vector<std::vector<int32_t>> prompts = {Prompt(5, 1), Prompt(11, 2), Prompt(3, 3)};
  std::vector<kvcache::BlockTable> tables(prompts.size(), kvcache::BlockTable(4));
  r.BeginStep();
  std::vector<int> rows;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(r.kv().Append(tables[i], static_cast<int>(prompts[i].size())).ok());
    rows.push_back(r.AddChunk(tables[i], prompts[i], 0, /*want_logits=*/true));
  }
  EXPECT_EQ(r.num_chunks(), 3);
  EXPECT_EQ(rows, (std::vector<int>{0, 1, 2}));
  int hooked = 0;
  ASSERT_TRUE(r.Execute([&](int) {
                 ++hooked;
                 return true;
               }).ok());
  EXPECT_EQ(hooked, r.model_config().n_layers);

  // Seeded samplers, twice over: one set sampled by the runner, one by hand.
  SamplingParams sp;
  sp.temperature = 0.8f;
  sp.has_seed = true;
  std::vector<Sampler> mine, theirs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    sp.seed = 10 + i;
    mine.emplace_back(sp, vocab, -1);
    theirs.emplace_back(sp, vocab, -1);
  }
  std::vector<SampleJob> jobs;
  for (size_t i = 0; i < prompts.size(); ++i) jobs.push_back({&theirs[i], rows[i], {}});
  r.Sample(jobs);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(jobs[i].result.token, mine[i].Sample(r.logits(rows[i]), vocab).token) << i;
  }
  // Greedy picks the row's argmax.
  sp = SamplingParams();
  sp.temperature = 0;
  Sampler greedy(sp, vocab, -1);
  std::vector<SampleJob> one = {{&greedy, rows[1], {}}};
  r.Sample(one);
  const float* l = r.logits(rows[1]);
  EXPECT_EQ(one[0].result.token, std::max_element(l, l + vocab) - l);

  // The same step on a runner sharing these weights: the same logits.
  auto twin = ModelRunner::Create(Config(1), r.weights());
  ASSERT_TRUE(twin.ok()) << twin.status();
  EXPECT_EQ((*twin)->weights(), r.weights());
  std::vector<kvcache::BlockTable> twin_tables(prompts.size(), kvcache::BlockTable(4));
  (*twin)->BeginStep();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE((*twin)->kv().Append(twin_tables[i], static_cast<int>(prompts[i].size())).ok());
    (*twin)->AddChunk(twin_tables[i], prompts[i], 0, true);
  }
  ASSERT_TRUE((*twin)->Execute().ok());
  for (int row : rows) {
    EXPECT_TRUE(std::equal(r.logits(row), r.logits(row) + vocab, (*twin)->logits(row))) << row;
  }
  for (auto& t : tables) r.kv().Free(t);
  for (auto& t : twin_tables) (*twin)->kv().Free(t);
  EXPECT_EQ(r.kv().num_free(), r.kv().num_total());
}

}  // namespace
}  // namespace tandem::model
