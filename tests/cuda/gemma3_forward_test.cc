// Gemma 3 270M (Q4_K_M: Q4_K, Q6_K, Q5_0 and Q8_0 matrices, GeGLU, sliding windows, per-head
// q/k norms) through the CUDA backend's code (kernels/cuda/cuda_backend.h) with bf16
// activations, run by the CUDA-on-CPU harness, against llama.cpp's outputs
// (tests/reference/gemma3/greedy.json and last_logits.json, the files tests/model/gemma3_test.cc
// holds the CPU backend to). bf16, because Gemma 3's activations pass fp16's range (65504):
// with f16 they turn into NaN from the first layers on, so loading it on an f16 backend is
// refused (checked here too) and tandemd's --activations=auto picks bf16 for it.
//
// Teacher-forced on llama.cpp's greedy tokens: the prompt as one prefill, kDecodeSteps single
// decode steps (the split-K decode path), then one chunk with logits at every position (the
// tiled prefill path over the cached context). The criterion is the project's (tests/reference/
// README.md), with gemma3_test's bounds: llama.cpp with flash attention on vs off differs at
// 1.8% of the positions, at top-2 gaps up to 0.444, and moves its top-64 last-prompt logits by
// 9.9e-2 of max |logit| (2.8e-2 mean). So a greedy token may differ from llama.cpp's only where
// llama.cpp's or the exact float64 model's top-2 gap is below kNearTie, or where the exact
// model picks this backend's token (llama.cpp's rounding is what differs there: it picks
// another token than the exact model at 10 of the 896 reference positions). Positions that
// differ from the exact model, and positions that differ from llama.cpp where the exact model
// does not side with this backend, are each at most kMaxMismatchShare of the positions, rounded
// up to a whole position (the default run judges 32). Top-64 logits within kMaxTopLogitErr
// worst and kMaxMeanTopLogitErr mean. bf16 keeps 8 bits of mantissa (2^-8 per rounding) where
// the CPU backend's int8 activations keep ~7, and the CPU backend meets these bounds
// (gemma3_test), so they are not loosened here.
//
// The harness runs a Forward of this model (262,144-token vocabulary) in a few seconds per
// logit row on two cores, so the default run is kDefaultPrompts prompts x kForced positions;
// TANDEM_CUDA_GEMMA_PROMPTS asks for more (scripts/gpu-check runs all 12 plain prompts).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_backend.h"
#include "kvcache/kv_cache.h"
#include "model/batch_builder.h"
#include "model/gguf_file.h"
#include "model/llama_model.h"
#include "nlohmann/json.hpp"
#include "tests/support/greedy_judge.h"
#include "tests/support/reference_cases.h"

namespace tandem::kernels::cuda {
namespace {

using model::BatchBuilder;
using model::GgufFile;
using model::LlamaModel;

constexpr double kNearTie = 0.45;
constexpr double kMaxMismatchShare = 0.025;
constexpr double kMaxTopLogitErr = 0.1;
constexpr double kMaxMeanTopLogitErr = 0.03;
constexpr int kDecodeSteps = 3;
constexpr int kForced = 16;  // positions judged per prompt: 1 + kDecodeSteps + the chunk's
constexpr int kDefaultPrompts = 2;

using tandem::testing::SourceDir;

nlohmann::json ReadJson(const std::string& name) {
  return tandem::testing::ReadReferenceJson("gemma3/" + name);
}

TEST(CudaGemma3Test, MatchesLlamaCppWithinItsOwnSpread) {
  auto file = GgufFile::Open(SourceDir() + "/models/gemma-3-270m-q4_k_m.gguf");
  ASSERT_TRUE(file.ok()) << file.status()
                         << " (fetch it with scripts/fetch-model gemma3-270m; make test does)";
  {
    CudaBackendConfig f16;
    f16.activations = ActivationDType::kF16;
    auto b = CreateCudaBackend(f16);
    ASSERT_TRUE(b.ok()) << b.status();
    auto refused = LlamaModel::Load(**file, **b, model::ModelOptions{});
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(refused.status().message().find("fp16's range"), std::string::npos)
        << refused.status();
  }
  CudaBackendConfig gc;
  gc.activations = ActivationDType::kBF16;
  auto backend = CreateCudaBackend(gc);
  ASSERT_TRUE(backend.ok()) << backend.status();
  model::ModelOptions opts;
  opts.max_batch_tokens = 256;
  opts.max_logit_rows = kForced;
  opts.max_seqs = 1;
  auto model = LlamaModel::Load(**file, **backend, opts);
  ASSERT_TRUE(model.ok()) << model.status();
  const model::ModelConfig& c = (*model)->config();
  kvcache::KvCacheConfig kc = (*model)->KvCacheLayout(KvDType::kF16);
  kc.num_blocks = 256 / kc.block_size;
  auto cache = kvcache::KvCache::Create(kc, **backend);
  ASSERT_TRUE(cache.ok()) << cache.status();

  const nlohmann::json ref = ReadJson("greedy.json");
  const nlohmann::json tops = ReadJson("last_logits.json");
  const char* env = std::getenv("TANDEM_CUDA_GEMMA_PROMPTS");
  const int want_prompts = env != nullptr ? std::atoi(env) : kDefaultPrompts;
  std::vector<float> logits(static_cast<size_t>(kForced) * c.vocab_size);
  int prompts = 0;
  double worst_top = 0, sum_top = 0;
  tandem::testing::GreedyJudge judge(kNearTie);
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < ref["prompts"].size() && prompts < want_prompts; ++i) {
    const auto& p = ref["prompts"][i];
    const std::vector<int32_t> prompt = p["prompt_tokens"].get<std::vector<int32_t>>();
    if (static_cast<int>(prompt.size()) + kForced > opts.max_batch_tokens) continue;  // long ones
    ++prompts;
    const tandem::testing::GreedyReference want = tandem::testing::GreedyReference::FromJson(p);
    ASSERT_GE(want.tokens.size(), static_cast<size_t>(kForced));
    kvcache::BlockTable table(kc.block_size);
    ASSERT_TRUE(table.Reserve((*cache)->pool(), prompt.size() + kForced).ok());
    BatchBuilder bb((*model)->max_blocks_per_seq());
    bb.AddSequence(table, prompt, 0, true);
    ASSERT_TRUE((*model)->Forward(bb.batch(), (*cache)->view(), logits.data()).ok());
    const double err = tandem::testing::TopLogitError(tops["prompts"][i], logits.data());
    worst_top = std::max(worst_top, err);
    sum_top += err;
    const std::string where = "prompt " + std::to_string(i);
    int pos = static_cast<int>(prompt.size());
    for (int k = 0; k < kDecodeSteps; ++k) {
      judge.Judge(want, logits.data(), c.vocab_size, k, where);
      bb.Clear();
      bb.AddSequence(table, std::span(&want.tokens[k], 1), pos++, true);
      ASSERT_TRUE((*model)->Forward(bb.batch(), (*cache)->view(), logits.data()).ok());
    }
    judge.Judge(want, logits.data(), c.vocab_size, kDecodeSteps, where);
    const int chunk = kForced - kDecodeSteps - 1;
    bb.Clear();
    bb.AddSequence(table, std::span(&want.tokens[kDecodeSteps], chunk), pos, false);
    for (int r = 0; r < chunk; ++r) bb.mutable_batch().logit_rows.push_back(r);
    ASSERT_TRUE((*model)->Forward(bb.batch(), (*cache)->view(), logits.data()).ok());
    for (int r = 0; r < chunk; ++r) {
      judge.Judge(want, &logits[static_cast<size_t>(r) * c.vocab_size], c.vocab_size,
                  kDecodeSteps + 1 + r, where);
    }
    table.Release((*cache)->pool());
  }
  ASSERT_GT(prompts, 0);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "[ cuda/gemma3 ] bf16, %d prompts, %d positions: %d differ from llama.cpp (%d where the "
      "exact model picks cuda's token; largest near-tie gap at the others %.3f); against the "
      "exact model cuda differs at %d, llama.cpp at %d; top-64 logits err worst %.2e / mean "
      "%.2e of max |logit| (%.0f s)\n",
      prompts, judge.positions(), judge.mismatches(), judge.exact_sides(), judge.worst_gap(),
      judge.exact_differs(), judge.llama_exact_differs(), worst_top, sum_top / prompts, secs);
  const double allowed = std::ceil(kMaxMismatchShare * judge.positions());
  EXPECT_LE(judge.mismatches() - judge.exact_sides(), allowed);
  EXPECT_LE(judge.exact_differs(), allowed);
  EXPECT_LE(worst_top, kMaxTopLogitErr);
  EXPECT_LE(sum_top / prompts, kMaxMeanTopLogitErr);
}

}  // namespace
}  // namespace tandem::kernels::cuda
