// model::ModelRunner's nano-batching on the CUDA backend's code (the harness here, a GPU in
// cuda_gpu_test): two more backends on the device, a stream each, running a step's chunks as two
// nano-batches pipelined by events (model_runner.cc, NanoGroups). The harness runs each launch to
// its end, so what is checked here is what does not depend on timing: the two groups' hooks hand
// over without deadlock whatever the split (one chunk, uneven halves), and the rows equal a
// monolithic step's.
//
// Checked, over a prefill step and decode steps of sequences of different lengths (a small
// model, f16 activations, teacher-forced with the monolithic runner's greedy tokens):
//   - up to 8 sequences: every logit row of the nano-batched step equals the monolithic one's
//     bit for bit, so the tokens are identical (both steps pick the same kernels: the quantized
//     GEMV up to 8 rows, the mma GEMM above, and for prompts the tiled prefill attention where
//     a step has >= 4 tokens per sequence);
//   - 12 sequences: the monolithic step and the nano-batches pick different kernels (the GEMM
//     for 12 decode rows against the GEMV for 6; the prefill attention's choice), which round
//     differently (measured: at most 0.031 on logits of magnitude 16, 2 f16 ulps), so the rows
//     agree within 1% of the largest logit and the greedy tokens wherever the top two logits
//     are further apart than 2% of it.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_backend.h"
#include "model/gguf_file.h"
#include "model/model_runner.h"
#include "tests/support/test_model.h"

namespace tandem::kernels::cuda {
namespace {

using model::ModelRunner;

TEST(CudaRunnerTest, NanoBatchedStepsEqualMonolithicSteps) {
  testing::TestModelSpec spec;
  spec.weight_std = 0.2f;
  spec.embd_std = 0.5f;
  const std::string path = absl::StrCat(::testing::TempDir(), "/runner_nano.", getpid(), ".gguf");
  ASSERT_TRUE(testing::WriteTestModel(spec, path).ok());
  auto file = model::GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::remove(path.c_str());

  model::ModelRunnerConfig c;
  c.model.max_batch_tokens = 128;
  c.model.max_logit_rows = 16;
  c.model.max_seqs = 16;
  c.model.block_size = 4;
  c.kv_cache_bytes = size_t{1} << 21;
  c.sampling = model::SamplingPlace::kHost;
  c.make_backend = [](const BackendConfig&) {
    CudaBackendConfig cc;
    cc.activations = ActivationDType::kF16;
    return CreateCudaBackend(cc);
  };
  auto mono = ModelRunner::Create(c, **file);
  ASSERT_TRUE(mono.ok()) << mono.status();
  c.nano_groups = 2;
  c.backend.cpu.threads = 2;  // the config's device is "cpu"; the backends are the seam's
  auto nano = ModelRunner::Create(c, **file);
  ASSERT_TRUE(nano.ok()) << nano.status();
  ASSERT_TRUE((*nano)->has_nano_groups());
  const int vocab = (*mono)->model_config().vocab_size;

  for (const int n_seqs : {1, 5, 8, 12}) {
    SCOPED_TRACE(absl::StrCat(n_seqs, " sequences"));
    std::mt19937 rng(17 + n_seqs);
    std::vector<std::vector<int32_t>> seqs(n_seqs);
    std::vector<kvcache::BlockTable> mono_tables, nano_tables;
    for (int i = 0; i < n_seqs; ++i) {
      seqs[i].resize(3 + (i * 5) % 9);
      for (int32_t& t : seqs[i]) t = 3 + rng() % 120;
      mono_tables.emplace_back(c.model.block_size);
      nano_tables.emplace_back(c.model.block_size);
    }
    // Every split the planner can make: alternate chunks, all but one in group 1, and (one
    // sequence) everything in group 0.
    for (int step = 0; step < 5; ++step) {
      SCOPED_TRACE(absl::StrCat("step ", step));
      std::vector<int> mono_rows, nano_rows, batch_of;
      (*mono)->BeginStep();
      (*nano)->BeginStep();
      for (int i = 0; i < n_seqs; ++i) {
        const int n = static_cast<int>(seqs[i].size());
        const int done = step == 0 ? 0 : n - 1;
        ASSERT_TRUE((*mono)->kv().Append(mono_tables[i], n).ok());
        ASSERT_TRUE((*nano)->kv().Append(nano_tables[i], n).ok());
        const auto tokens = std::span<const int32_t>(seqs[i]).subspan(done);
        mono_rows.push_back((*mono)->AddChunk(mono_tables[i], tokens, done, true));
        nano_rows.push_back((*nano)->AddChunk(nano_tables[i], tokens, done, true));
        batch_of.push_back(step % 2 == 0 ? i % 2 : (i == 0 ? 0 : 1));
      }
      ASSERT_TRUE((*mono)->Execute().ok());
      // The prompts run nano-batched too: their KV must be what the monolithic step wrote for
      // the decode steps to compare.
      const absl::Status run = (*nano)->ExecuteNano(batch_of);
      ASSERT_TRUE(run.ok()) << run;
      const bool same_path = n_seqs <= 8;  // the same kernels, row for row (see the top)
      double worst = 0, scale = 0;
      for (int i = 0; i < n_seqs; ++i) {
        const float* want = (*mono)->logits(mono_rows[i]);
        const float* got = (*nano)->logits(nano_rows[i]);
        if (same_path) {
          EXPECT_EQ(std::memcmp(want, got, vocab * sizeof(float)), 0) << "sequence " << i;
        }
        for (int v = 0; v < vocab; ++v) {
          worst = std::max(worst, std::fabs(static_cast<double>(want[v]) - got[v]));
          scale = std::max(scale, std::fabs(static_cast<double>(want[v])));
        }
        // The monolithic runner's greedy token, fed to both.
        std::vector<float> sorted(want, want + vocab);
        std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
        const int32_t token = static_cast<int32_t>(std::max_element(want, want + vocab) - want);
        const int32_t nano_token = static_cast<int32_t>(std::max_element(got, got + vocab) - got);
        // Different GEMM paths: f16 activations carry ~2^-11 relative error per rounding, and
        // a logit is a few roundings deep in each layer; 1% of the largest logit bounds it.
        if (same_path || sorted[0] - sorted[1] > 0.02 * scale) {
          EXPECT_EQ(nano_token, token) << "sequence " << i;
        }
        seqs[i].push_back(token);
      }
      EXPECT_LE(worst, 0.01 * scale);
    }
    for (int i = 0; i < n_seqs; ++i) {
      (*mono)->kv().Free(mono_tables[i]);
      (*nano)->kv().Free(nano_tables[i]);
    }
  }
}

}  // namespace
}  // namespace tandem::kernels::cuda
