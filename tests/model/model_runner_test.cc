// ModelRunner: config errors name the problem; a step's logits match the model run directly;
// Sample over the backend's threads gives what one-by-one sampling gives; a second runner on
// the first's weights computes the same logits; a sliding-window model's logits are the same
// bit for bit whether its local layers keep the whole context or only the window; rows
// sampled on the device draw the host's tokens.
#include "model/model_runner.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <random>
#include <set>
#include <span>
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
  // Without the CUDA toolkit: Unimplemented; with it, FailedPrecondition where there is no GPU
  // (CI), in one line naming the device; where there is one, the runner is made.
  const absl::Status cuda = ModelRunner::Create(c, *file).status();
  if (!cuda.ok()) {
    EXPECT_TRUE(cuda.code() == absl::StatusCode::kUnimplemented ||
                cuda.code() == absl::StatusCode::kFailedPrecondition)
        << cuda;
    EXPECT_NE(cuda.message().find("cuda:0"), std::string::npos) << cuda;
    EXPECT_EQ(cuda.message().find('\n'), std::string::npos) << cuda;
  }
  for (const char* bad : {"cuda", "cuda:", "cuda:x", "cuda:-1", "cuda:0x"}) {
    c.backend.device = bad;
    EXPECT_EQ(ModelRunner::Create(c, *file).status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
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

// Sampling on the device (Backend::Sample, here the CPU's) against sampling on the host: five
// sequences decode twelve tokens on two runners sharing weights, one per place. Rows of every
// kind: greedy, seeded temperature with top-k / top-p / min-p, logprobs, and two that the
// device runner must still sample on the host (penalties, top_logprobs). The streams are the
// same token for token (one definition of the draw), the logprobs agree, and a row left out
// of a Sample call (sampled by a second call) disturbs none of the others.
TEST(ModelRunnerTest, DeviceSamplingDrawsTheHostsTokens) {
  auto file = TestFile();
  ASSERT_TRUE(file);
  ModelRunnerConfig hc = Config(2);
  hc.sampling = SamplingPlace::kHost;
  auto host = ModelRunner::Create(hc, *file);
  ASSERT_TRUE(host.ok()) << host.status();
  ModelRunnerConfig dc = Config(2);
  dc.sampling = SamplingPlace::kDevice;
  auto device = ModelRunner::Create(dc, (*host)->weights());
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_FALSE((*host)->samples_on_device());
  EXPECT_TRUE((*device)->samples_on_device());
  auto automatic = ModelRunner::Create(Config(1), (*host)->weights());
  ASSERT_TRUE(automatic.ok());
  EXPECT_FALSE((*automatic)->samples_on_device());  // the CPU's memory is the host's

  const int vocab = (*host)->model_config().vocab_size;
  std::vector<SamplingParams> params(5);
  params[0].temperature = 0.0f;  // greedy
  params[1].temperature = 0.9f;
  params[1].top_k = 20;
  params[1].top_p = 0.9f;
  params[2].temperature = 1.3f;
  params[2].min_p = 0.02f;
  params[2].logprobs = true;
  params[3].temperature = 0.7f;  // penalties: the host's, on either runner
  params[3].repetition_penalty = 1.3f;
  params[3].frequency_penalty = 0.5f;
  params[4].temperature = 1.0f;  // top_logprobs: the host's, on either runner
  params[4].top_p = 0.95f;
  params[4].logprobs = true;
  params[4].top_logprobs = 3;
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].seed = 500 + i;
    params[i].has_seed = true;
  }

  struct Side {
    ModelRunner* runner = nullptr;
    std::vector<Sampler> samplers;
    std::vector<kvcache::BlockTable> tables;
    std::vector<std::vector<int32_t>> tokens;
    std::vector<std::vector<float>> logprobs;
  };
  std::vector<Side> sides(2);
  sides[0].runner = host->get();
  sides[1].runner = device->get();
  for (Side& side : sides) {
    for (size_t i = 0; i < params.size(); ++i) {
      side.samplers.emplace_back(params[i], vocab, -1);
      side.tables.emplace_back(4);
      side.tokens.push_back(Prompt(3 + 2 * static_cast<int>(i), 40 + i));
      side.samplers.back().AddPromptTokens(side.tokens.back());
    }
    side.logprobs.resize(params.size());
  }
  const int n_prompt0 = static_cast<int>(sides[0].tokens[0].size());
  for (int step = 0; step < 12; ++step) {
    for (Side& side : sides) {
      ModelRunner& r = *side.runner;
      r.BeginStep();
      std::vector<SampleJob> jobs;
      for (size_t i = 0; i < params.size(); ++i) {
        std::vector<int32_t>& seq = side.tokens[i];
        const int done = step == 0 ? 0 : static_cast<int>(seq.size()) - 1;
        ASSERT_TRUE(r.kv().Append(side.tables[i], static_cast<int>(seq.size())).ok());
        const int row = r.AddChunk(side.tables[i], std::span(seq).subspan(done), done, true);
        jobs.push_back({&side.samplers[i], row, {}});
      }
      const absl::Status run = r.Execute();
      ASSERT_TRUE(run.ok()) << run;
      if (step % 4 == 1) {
        // Row 1 in a second call: the first samples rows 0 and 2.. around a row no job wants.
        std::vector<SampleJob> second = {jobs[1]};
        jobs.erase(jobs.begin() + 1);
        r.Sample(jobs);
        r.Sample(second);
        jobs.insert(jobs.begin() + 1, second[0]);
      } else {
        r.Sample(jobs);
      }
      for (size_t i = 0; i < jobs.size(); ++i) {
        side.tokens[i].push_back(jobs[i].result.token);
        side.logprobs[i].push_back(jobs[i].result.logprob);
        if (params[i].top_logprobs > 0) {
          EXPECT_EQ(jobs[i].result.num_top_logprobs, 3);
        }
      }
    }
  }
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(sides[0].tokens[i], sides[1].tokens[i]) << "sequence " << i;
    if (!params[i].logprobs) continue;
    for (size_t t = 0; t < sides[0].logprobs[i].size(); ++t) {
      EXPECT_NEAR(sides[0].logprobs[i][t], sides[1].logprobs[i][t], 1e-4) << i << " " << t;
      EXPECT_LT(sides[1].logprobs[i][t], 0.0f);
    }
  }
  EXPECT_EQ(static_cast<int>(sides[1].tokens[0].size()), n_prompt0 + 12);
  // Sampled, not all the same token: the draws are live.
  const std::vector<int32_t>& t2 = sides[1].tokens[2];
  EXPECT_GT(std::set<int32_t>(t2.end() - 12, t2.end()).size(), 3u);
  // The device runner's logits, copied out on request, are the host runner's.
  for (size_t r = 0; r < 3; ++r) {
    EXPECT_TRUE(std::equal(sides[0].runner->logits(static_cast<int>(r)),
                           sides[0].runner->logits(static_cast<int>(r)) + vocab,
                           sides[1].runner->logits(static_cast<int>(r))))
        << r;
  }
  for (Side& side : sides) {
    for (auto& t : side.tables) side.runner->kv().Free(t);
  }
}

// Gemma 3's shape in small: 6 layers, 2 and 5 global, the others sliding over 8 positions.
// Three sequences in chunks and decode steps well past the window, on a runner whose local
// layers keep only the window and on one that keeps everything: the same logits bit for bit
// (the attention reads the same keys), for a fraction of the KV.
TEST(ModelRunnerTest, WindowedLocalLayersGiveTheSameLogits) {
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/model_runner_test_swa.", getpid(), ".gguf");
  ASSERT_TRUE(testing::WriteTestModel(testing::SlidingWindowTestSpec(), path).ok());
  auto file = GgufFile::Open(path);
  std::remove(path.c_str());
  ASSERT_TRUE(file.ok()) << file.status();
  auto whole = ModelRunner::Create(Config(1), **file);
  ASSERT_TRUE(whole.ok()) << whole.status();
  ModelRunnerConfig wc = Config(1);
  wc.window_local_kv = true;
  auto windowed = ModelRunner::Create(wc, (*whole)->weights());
  ASSERT_TRUE(windowed.ok()) << windowed.status();
  ModelRunner& a = **whole;
  ModelRunner& b = **windowed;
  ASSERT_EQ(a.kv().groups().n_groups(), 1);
  // Pages of 2 layers: {2, 5} full, {0, 1} and {3, 4} local.
  ASSERT_EQ(b.kv().groups().n_groups(), 3);
  ASSERT_EQ(b.kv().groups().layers_per_group, 2);
  const int vocab = a.model_config().vocab_size;

  struct Seq {
    std::vector<int32_t> tokens;
    int prompt = 0;
    int chunk = 0;
    int done = 0;
    kvcache::BlockTable ta{4}, tb{4};
  };
  std::vector<Seq> seqs(3);
  seqs[0].tokens = Prompt(37, 11);
  seqs[0].chunk = 10;
  seqs[1].tokens = Prompt(5, 12);
  seqs[1].chunk = 5;
  seqs[2].tokens = Prompt(23, 13);
  seqs[2].chunk = 23;
  for (Seq& s : seqs) s.prompt = static_cast<int>(s.tokens.size());
  int steps = 0;
  int most_local = 0;
  while (steps < 40) {
    a.BeginStep();
    b.BeginStep();
    std::vector<std::pair<Seq*, int>> rows;
    for (Seq& s : seqs) {
      const int n = s.done < s.prompt ? std::min(s.chunk, s.prompt - s.done) : 1;
      const std::span<const int32_t> run(s.tokens.data() + s.done, n);
      ASSERT_TRUE(a.kv().Append(s.ta, s.done + n).ok());
      ASSERT_TRUE(b.kv().Append(s.tb, s.done + n).ok());
      const bool last = s.done + n >= s.prompt;
      const int ra = a.AddChunk(s.ta, run, s.done, last);
      const int rb = b.AddChunk(s.tb, run, s.done, last);
      ASSERT_EQ(ra, rb);
      if (last) rows.emplace_back(&s, ra);
      s.done += n;
    }
    ASSERT_TRUE(a.Execute().ok());
    int hooked = 0;
    ASSERT_TRUE(b.Execute([&](int) { return ++hooked > 0; }).ok());
    EXPECT_EQ(hooked, 6);
    for (auto& [s, row] : rows) {
      ASSERT_TRUE(std::equal(a.logits(row), a.logits(row) + vocab, b.logits(row)))
          << "step " << steps << ", position " << s->done - 1;
      const float* l = b.logits(row);
      s->tokens.push_back(static_cast<int32_t>(std::max_element(l, l + vocab) - l));
    }
    for (Seq& s : seqs) {
      s.ta.SetNumTokens(s.done);
      s.tb.SetNumTokens(s.done);
      for (int g = 1; g < 3; ++g) {
        int held = 0;
        for (int32_t blk : s.tb.group(g)) held += blk >= 0;
        most_local = std::max(most_local, held);
      }
    }
    ++steps;
  }
  EXPECT_GT(seqs[0].done, 60);
  // A local group holds the window before a step and the step: <= ceil((8 - 1 + 10) / 4) + 1.
  EXPECT_LE(most_local, 6);
  // Layer-blocks held: the whole-context runner 6 per block of context, the windowed one 2
  // per block and the local groups' few.
  const int whole_held = (a.kv().num_total() - a.kv().num_free()) * 6;
  const int windowed_held = (b.kv().num_total() - b.kv().num_free()) * 2;
  EXPECT_LT(windowed_held * 2, whole_held) << windowed_held << " vs " << whole_held;
  for (Seq& s : seqs) {
    a.kv().Free(s.ta);
    b.kv().Free(s.tb);
  }
  EXPECT_EQ(b.kv().num_free(), b.kv().num_total());
}

}  // namespace
}  // namespace tandem::model
