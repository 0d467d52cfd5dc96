// A whole forward pass of the default model (SmolLM2-135M-Instruct Q4_1) through the CUDA
// backend's code (kernels/cuda/cuda_backend.h), run by the CUDA-on-CPU harness, against the CPU
// backend and against the exact model.
//
// What is compared, on prompts of tests/reference/greedy.json, teacher-forced on llama.cpp's 64
// greedy tokens (the prompt as one prefill chunk, then the forced tokens in single-token decode
// steps and in chunks of kChunk, so the split-K decode path and chunks that attend to the cache
// both run):
// - logits at every forced position: max |cuda - cpu| / max |cpu logit| per position;
// - the greedy token at every position, held to the project's criterion (tests/reference/
//   README.md): llama.cpp with flash attention on vs off picks another token at 2.1% of the
//   positions, at top-2 gaps up to 0.393; so the CUDA path may differ from the CPU backend,
//   each time where the CPU backend's top-2 gap is below kNearTie, at no more positions than
//   two backends that differ as llama.cpp's two paths do would reach in 99% of samples of that
//   many positions (MismatchBound: the 99th percentile of Binomial(positions,
//   kLlamaCppFlipRate); 3 of the default run's 32 positions, 46 of the full 1,536). A fixed
//   share rounded up (3% of 32: one position) was stricter than llama.cpp's own two paths
//   pass: they differ at 2 or more of 32 positions in 14% of samples, and the CPU backend's
//   query-tiled prefill attention, which moved its logits closer to llama.cpp's and to the
//   exact model on average, flipped 2 near-ties (top-2 gap 0.058) of the 32;
// - the last prompt position's logits against the float64 model (exact_last_logits.bin).
//
// The tolerance for f16 activations, derived: the two backends round differently and neither is
// exact. The CPU backend quantizes each matmul's activations to int8 per 32 (like llama.cpp):
// that alone puts it 5.0e-2 worst / 3.0e-2 mean (max |diff| / max |logit|) from the float64
// model at the last prompt position (README.md, "How far llama.cpp itself is from the exact
// model", which tandem's CPU path reproduces). The CUDA path rounds activations to f16 (relative
// 2^-11 = 4.9e-4 per rounding, about 10 roundings per layer over 30 layers, random-walk growth
// sqrt(300) * 4.9e-4 ~ 1e-2 of a typical activation) and each dequantized weight to f16 (same
// size, averaging out in the dot products). So |cuda - exact| is expected near 1e-2 and
// |cuda - cpu| is dominated by the CPU's own 5e-2; the bounds are the CPU's distance from the
// exact model plus the f16 estimate: kMaxLogitErr = 5e-2 + 2e-2 per position and kMaxMeanLogitErr
// = 3e-2 + 1e-2 on average, and against the exact model 2 x the estimate (kMaxExactErr = 2e-2).
// bf16 (8 bits of mantissa, 2^-8 = 3.9e-3 per rounding) is 8x coarser: it is checked for greedy
// agreement with looser logit bounds (kMaxBf16LogitErr).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kvcache/kv_cache.h"
#include "model/batch_builder.h"
#include "model/gguf_file.h"
#include "model/llama_model.h"
#include "nlohmann/json.hpp"

namespace tandem::kernels::cuda {
namespace {

// The smallest k with P(X <= k) >= 0.99 for X ~ Binomial(n, p).
int MismatchBound(int n, double p) {
  double term = std::pow(1 - p, n);  // P(X = 0)
  double cdf = term;
  int k = 0;
  while (cdf < 0.99 && k < n) {
    term *= (n - k) / (k + 1.0) * p / (1 - p);
    cdf += term;
    ++k;
  }
  return k;
}

using model::BatchBuilder;
using model::GgufFile;
using model::LlamaModel;

constexpr double kNearTie = 0.4;
constexpr double kLlamaCppFlipRate = 32.0 / 1536;  // tests/reference/README.md
constexpr double kMaxLogitErr = 7e-2;
constexpr double kMaxMeanLogitErr = 4e-2;
constexpr double kMaxExactErr = 2e-2;
constexpr double kMaxBf16LogitErr = 1.5e-1;
constexpr double kMaxBf16MeanLogitErr = 8e-2;
// Forced tokens: the first kDecodeSteps one per step, the rest in chunks of kChunk. The harness
// runs a Forward of this model in ~2 s on two cores (fibers; ASan ~3x), so the default run is
// kDefaultPrompts prompts of kDefaultForced tokens; TANDEM_CUDA_FORWARD_PROMPTS / _TOKENS ask
// for more (scripts/gpu-check runs all 24 x 64 on a GPU).
constexpr int kDecodeSteps = 3;
constexpr int kChunk = 8;
constexpr int kDefaultPrompts = 2;
constexpr int kDefaultForced = 16;

std::string SourceDir() {
  const char* dir = std::getenv("TANDEM_SOURCE_DIR");
  return dir != nullptr ? dir : TANDEM_SOURCE_DIR;
}

nlohmann::json ReadJson(const std::string& name) {
  std::ifstream in(SourceDir() + "/tests/reference/" + name);
  EXPECT_TRUE(in.good()) << "missing tests/reference/" << name;
  return nlohmann::json::parse(in);
}

struct Engine {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<kvcache::KvCache> cache;
};

Engine MakeEngine(const GgufFile& file, std::unique_ptr<Backend> backend) {
  Engine e;
  e.backend = std::move(backend);
  model::ModelOptions opts;
  opts.max_batch_tokens = 256;
  opts.max_logit_rows = kChunk;
  opts.max_seqs = 1;
  auto m = LlamaModel::Load(file, *e.backend, opts);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return e;
  e.model = std::move(*m);
  kvcache::KvCacheConfig kc = e.model->KvCacheLayout(KvDType::kF16);
  kc.num_blocks = 32;
  auto cache = kvcache::KvCache::Create(kc, *e.backend);
  EXPECT_TRUE(cache.ok()) << cache.status();
  if (cache.ok()) e.cache = std::move(*cache);
  return e;
}

// The logits of the last prompt position and of each forced token but the last: row k is what
// a greedy run chooses forced[k] from.
std::vector<std::vector<float>> TeacherForced(Engine& e, const std::vector<int32_t>& prompt,
                                              const std::vector<int32_t>& forced) {
  const int vocab = e.model->config().vocab_size;
  kvcache::BlockTable table(e.cache->config().block_size);
  EXPECT_TRUE(table.Reserve(e.cache->pool(), prompt.size() + forced.size()).ok());
  BatchBuilder bb(e.model->max_blocks_per_seq());
  std::vector<std::vector<float>> rows;
  std::vector<float> logits(static_cast<size_t>(kChunk) * vocab);
  auto run = [&](std::span<const int32_t> tokens, int start, bool all_rows) {
    bb.Clear();
    bb.AddSequence(table, tokens, start, !all_rows);
    if (all_rows) {  // logits at every position of the chunk
      for (size_t i = 0; i < tokens.size(); ++i) {
        bb.mutable_batch().logit_rows.push_back(static_cast<int32_t>(i));
      }
    }
    const absl::Status s = e.model->Forward(bb.batch(), e.cache->view(), logits.data());
    EXPECT_TRUE(s.ok()) << s;
    const size_t n_rows = bb.batch().logit_rows.size();
    for (size_t r = 0; r < n_rows; ++r) {
      rows.emplace_back(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
    }
  };
  run(prompt, 0, false);
  int pos = static_cast<int>(prompt.size());
  size_t k = 0;
  for (; k < forced.size() && k < kDecodeSteps; ++k) run(std::span(&forced[k], 1), pos++, false);
  for (; k + 1 < forced.size(); k += kChunk) {
    const size_t n = std::min<size_t>(kChunk, forced.size() - 1 - k);
    run(std::span(forced).subspan(k, n), pos, true);
    pos += static_cast<int>(n);
  }
  table.Release(e.cache->pool());
  return rows;
}

int Argmax(const std::vector<float>& v) {
  return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
}
double Top2Gap(const std::vector<float>& v) {
  float a = -INFINITY, b = -INFINITY;
  for (float x : v) {
    if (x > a) {
      b = a;
      a = x;
    } else if (x > b) {
      b = x;
    }
  }
  return static_cast<double>(a) - b;
}
double RelErr(const std::vector<float>& got, const float* want, int n) {
  double num = 0, den = 0;
  for (int v = 0; v < n; ++v) {
    num = std::max(num, std::fabs(static_cast<double>(got[v]) - want[v]));
    den = std::max(den, std::fabs(static_cast<double>(want[v])));
  }
  return num / den;
}

class CudaForwardTest : public ::testing::TestWithParam<ActivationDType> {};

TEST_P(CudaForwardTest, DefaultModelMatchesCpuBackendAndExactModel) {
  const ActivationDType dtype = GetParam();
  const bool f16 = dtype == ActivationDType::kF16;
  auto file = GgufFile::Open(SourceDir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf");
  ASSERT_TRUE(file.ok()) << file.status() << " (run scripts/fetch-model; make test does)";
  cpu::CpuBackendConfig cc;
  cc.threads = 1;
  auto cpu_backend = cpu::CreateCpuBackend(cc);
  ASSERT_TRUE(cpu_backend.ok()) << cpu_backend.status();
  CudaBackendConfig gc;
  gc.activations = dtype;
  auto cuda_backend = CreateCudaBackend(gc);
  ASSERT_TRUE(cuda_backend.ok()) << cuda_backend.status();
  Engine cpu = MakeEngine(**file, std::move(*cpu_backend));
  Engine gpu = MakeEngine(**file, std::move(*cuda_backend));
  ASSERT_NE(cpu.cache, nullptr);
  ASSERT_NE(gpu.cache, nullptr);
  const int vocab = cpu.model->config().vocab_size;

  const nlohmann::json ref = ReadJson("greedy.json");
  const nlohmann::json exact_index = ReadJson("last_logits.json");
  const size_t count = exact_index["header"]["count"].get<size_t>();
  std::ifstream bin(SourceDir() + "/tests/reference/exact_last_logits.bin", std::ios::binary);
  std::vector<float> exact(count * vocab);
  bin.read(reinterpret_cast<char*>(exact.data()), exact.size() * sizeof(float));
  ASSERT_EQ(static_cast<size_t>(bin.gcount()), exact.size() * sizeof(float));

  const char* env = std::getenv("TANDEM_CUDA_FORWARD_PROMPTS");
  const size_t n_prompts =
      std::min<size_t>(env != nullptr ? std::atoi(env) : kDefaultPrompts, count);
  const char* env_tokens = std::getenv("TANDEM_CUDA_FORWARD_TOKENS");
  const size_t n_forced =
      std::max(2, env_tokens != nullptr ? std::atoi(env_tokens) : kDefaultForced);
  int positions = 0, mismatches = 0;
  double worst = 0, sum = 0, worst_gap = 0, worst_exact = 0, worst_cpu_exact = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < n_prompts; ++i) {
    const auto& p = ref["prompts"][i];
    const std::vector<int32_t> prompt = p["prompt_tokens"].get<std::vector<int32_t>>();
    std::vector<int32_t> forced = p["tokens"].get<std::vector<int32_t>>();
    forced.resize(std::min(forced.size(), n_forced));
    const auto want = TeacherForced(cpu, prompt, forced);
    const auto got = TeacherForced(gpu, prompt, forced);
    ASSERT_EQ(got.size(), forced.size());
    ASSERT_EQ(want.size(), got.size());
    for (size_t k = 0; k < got.size(); ++k) {
      const double err = RelErr(got[k], want[k].data(), vocab);
      worst = std::max(worst, err);
      sum += err;
      ++positions;
      if (Argmax(got[k]) != Argmax(want[k])) {
        ++mismatches;
        const double gap = Top2Gap(want[k]);
        worst_gap = std::max(worst_gap, gap);
        EXPECT_LT(gap, kNearTie) << "prompt " << i << " position " << k << ": cpu "
                                 << Argmax(want[k]) << ", cuda " << Argmax(got[k]);
      }
    }
    worst_exact = std::max(worst_exact, RelErr(got[0], &exact[i * vocab], vocab));
    worst_cpu_exact = std::max(worst_cpu_exact, RelErr(want[0], &exact[i * vocab], vocab));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "[ cuda/%s  ] %zu prompts, %d positions: logits vs cpu worst %.2e mean %.2e; %d greedy "
      "tokens differ (largest cpu top-2 gap %.3f); last prompt position vs float64: cuda %.2e, "
      "cpu %.2e (%.0f s)\n",
      f16 ? "f16 " : "bf16", n_prompts, positions, worst, sum / positions, mismatches, worst_gap,
      worst_exact, worst_cpu_exact, secs);
  EXPECT_LE(mismatches, MismatchBound(positions, kLlamaCppFlipRate));
  EXPECT_LE(worst, f16 ? kMaxLogitErr : kMaxBf16LogitErr);
  EXPECT_LE(sum / positions, f16 ? kMaxMeanLogitErr : kMaxBf16MeanLogitErr);
  if (f16) {
    EXPECT_LE(worst_exact, kMaxExactErr);
  }
}

INSTANTIATE_TEST_SUITE_P(Activations, CudaForwardTest,
                         ::testing::Values(ActivationDType::kF16, ActivationDType::kBF16),
                         [](const auto& info) {
                           return info.param == ActivationDType::kF16 ? std::string("F16")
                                                                      : std::string("BF16");
                         });

}  // namespace
}  // namespace tandem::kernels::cuda
