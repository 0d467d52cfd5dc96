// model::ModelRunner sampling on the device through the CUDA backend's code, run by the
// CUDA-on-CPU harness (and on a GPU in cuda_gpu_test): the runner keeps a step's logits on the
// device and draws its rows with the CUDA sampling kernel (kernels/cuda/sample.h), sending back
// only ids and logprobs; rows that need the host (penalties, top_logprobs) are copied out through
// ToF32 of f16 rows. A small model (tests/support/test_model.h, Q8_0) keeps the harness fast; its
// vocabulary is padded to 3000 so the filters have work to do.
//
// Checked: every row drawn on the device is the token a host Sampler in the same state draws
// from the same logits (copied out with ModelRunner::logits), with the same logprob, over a
// prefill step and decode steps of five sequences with greedy, seeded top-k / top-p / min-p,
// logprobs, penalties and top_logprobs; the device runner's tokens continue from what it
// sampled, so a wrong id or counter shows up as diverging streams.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_backend.h"
#include "model/gguf_file.h"
#include "model/model_runner.h"
#include "model/sampler.h"
#include "tests/support/test_model.h"

namespace tandem::kernels::cuda {
namespace {

using model::ModelRunner;
using model::SampleJob;
using model::Sampler;
using model::SamplingParams;

TEST(CudaRunnerTest, DeviceSamplingDrawsTheHostsTokens) {
  testing::TestModelSpec spec;
  spec.vocab = 3000;
  spec.weight_std = 0.2f;
  spec.embd_std = 0.5f;
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/runner_sampling.", getpid(), ".gguf");
  ASSERT_TRUE(testing::WriteTestModel(spec, path).ok());
  auto file = model::GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::remove(path.c_str());

  model::ModelRunnerConfig c;
  c.model.max_batch_tokens = 64;
  c.model.max_logit_rows = 8;
  c.model.max_seqs = 8;
  c.model.block_size = 4;
  c.kv_cache_bytes = size_t{1} << 20;
  c.make_backend = [](const BackendConfig&) {
    CudaBackendConfig cc;
    cc.activations = ActivationDType::kF16;
    return CreateCudaBackend(cc);
  };
  // auto samples on the device where its memory is not the host's: on a GPU, not in the
  // harness, which is asked for the device below.
  c.sampling = model::SamplingPlace::kAuto;
  {
    auto automatic = ModelRunner::Create(c, **file);
    ASSERT_TRUE(automatic.ok()) << automatic.status();
    EXPECT_EQ((*automatic)->samples_on_device(), !(*automatic)->backend().IsHostMemory());
  }
  c.sampling = model::SamplingPlace::kDevice;
  auto runner = ModelRunner::Create(c, **file);
  ASSERT_TRUE(runner.ok()) << runner.status();
  ModelRunner& r = **runner;
  ASSERT_TRUE(r.samples_on_device());
  EXPECT_EQ(r.backend().activation_dtype(), ActivationDType::kF16);
  const int vocab = r.model_config().vocab_size;
  ASSERT_EQ(vocab, 3000);

  std::vector<SamplingParams> params(5);
  params[0].temperature = 0.0f;
  params[0].logprobs = true;
  params[1].temperature = 0.9f;
  params[1].top_k = 40;
  params[1].top_p = 0.9f;
  params[2].temperature = 1.4f;
  params[2].min_p = 0.01f;
  params[2].logprobs = true;
  params[3].temperature = 0.8f;  // penalties: sampled on the host
  params[3].repetition_penalty = 1.2f;
  params[3].presence_penalty = 0.4f;
  params[4].temperature = 1.0f;  // top_logprobs: sampled on the host
  params[4].top_p = 0.95f;
  params[4].logprobs = true;
  params[4].top_logprobs = 4;
  std::vector<Sampler> device, host;
  std::vector<kvcache::BlockTable> tables;
  std::vector<std::vector<int32_t>> seqs;
  std::mt19937 rng(9);
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].seed = 90 + i;
    params[i].has_seed = true;
    device.emplace_back(params[i], vocab, -1);
    host.emplace_back(params[i], vocab, -1);
    tables.emplace_back(c.model.block_size);
    std::vector<int32_t> prompt(2 + i);
    for (int32_t& t : prompt) t = 3 + rng() % 250;
    device.back().AddPromptTokens(prompt);
    host.back().AddPromptTokens(prompt);
    seqs.push_back(std::move(prompt));
  }

  constexpr int kSteps = 4;
  int device_rows = 0;
  for (int step = 0; step < kSteps; ++step) {
    r.BeginStep();
    std::vector<SampleJob> jobs;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const int done = step == 0 ? 0 : static_cast<int>(seqs[i].size()) - 1;
      ASSERT_TRUE(r.kv().Append(tables[i], static_cast<int>(seqs[i].size())).ok());
      const int row = r.AddChunk(tables[i], std::span(seqs[i]).subspan(done), done, true);
      jobs.push_back({&device[i], row, {}});
    }
    const absl::Status run = r.Execute();
    ASSERT_TRUE(run.ok()) << run;
    r.Sample(jobs);
    for (size_t i = 0; i < jobs.size(); ++i) {
      const model::SampleResult want = host[i].Sample(r.logits(jobs[i].row), vocab);
      EXPECT_EQ(jobs[i].result.token, want.token) << "sequence " << i << " step " << step;
      if (params[i].logprobs) {
        EXPECT_NEAR(jobs[i].result.logprob, want.logprob, 1e-4) << i << " " << step;
        EXPECT_LE(jobs[i].result.logprob, 0.0f);
      }
      EXPECT_EQ(jobs[i].result.num_top_logprobs, params[i].top_logprobs);
      device_rows += device[i].DeviceSamplable();
      seqs[i].push_back(jobs[i].result.token);
    }
  }
  EXPECT_EQ(device_rows, 3 * kSteps);
  // The greedy row is the argmax of what the device computed.
  const float* l0 = r.logits(0);
  EXPECT_EQ(seqs[0].back(), std::max_element(l0, l0 + vocab) - l0);
  // Sampled rows vary: the draws are live.
  std::set<int32_t> drawn(seqs[2].end() - kSteps, seqs[2].end());
  EXPECT_GT(drawn.size(), 1u);
  for (auto& t : tables) r.kv().Free(t);
  EXPECT_EQ(r.kv().num_free(), r.kv().num_total());
}

}  // namespace
}  // namespace tandem::kernels::cuda
