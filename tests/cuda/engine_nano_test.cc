// scheduler::EngineInstance with nano-batching on the CUDA backend's code (the harness here):
// the two nano groups share the device (two streams), so the instance profiles a nano-batch's
// latency beside the other's (alternate chunks in both groups) and the planner splits decode
// steps (min_gain so low that it splits every step it can). The outputs are those of an
// instance without nano-batching, greedy, token for token: decode steps of up to 8 sequences
// split into halves take the same kernels as the whole step (runner_nano_test.cc), and steps with
// prompts run whole.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_backend.h"
#include "model/gguf_file.h"
#include "scheduler/engine_instance.h"
#include "tests/scheduler/recording_sink.h"
#include "tests/support/test_model.h"

namespace tandem::kernels::cuda {
namespace {

using scheduler::EngineInstance;
using scheduler::EngineInstanceConfig;
using scheduler::RecordingSink;
using scheduler::SequenceEnd;
using scheduler::SequenceRequest;

std::vector<std::vector<int32_t>> RunPrompts(EngineInstance& inst) {
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 8; ++i) {
    SequenceRequest r;
    for (int t = 0; t < 3 + 2 * i; ++t) r.prompt.push_back(3 + (i * 37 + t * 11) % 120);
    r.max_tokens = 12;
    r.sampling.temperature = 0;
    r.sink = sinks.emplace_back(std::make_shared<RecordingSink>());
    EXPECT_TRUE(inst.Submit(std::move(r)).ok());
  }
  std::vector<std::vector<int32_t>> out;
  for (auto& s : sinks) {
    s->Wait();
    EXPECT_EQ(s->end(), SequenceEnd::kLength) << s->status();
    out.push_back(s->tokens());
  }
  return out;
}

TEST(CudaEngineTest, NanoBatchedDecodeStepsKeepOutputs) {
  testing::TestModelSpec spec;
  spec.weight_std = 0.2f;
  spec.embd_std = 0.5f;
  const std::string path = absl::StrCat(::testing::TempDir(), "/engine_nano.", getpid(), ".gguf");
  ASSERT_TRUE(testing::WriteTestModel(spec, path).ok());
  auto file = model::GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::remove(path.c_str());

  EngineInstanceConfig c;
  c.backend.cpu.threads = 2;  // the config's device is "cpu"; the backends are the seam's
  c.make_backend = [](const BackendConfig&) {
    CudaBackendConfig cc;
    cc.activations = ActivationDType::kF16;
    return CreateCudaBackend(cc);
  };
  c.scheduler.max_num_seqs = 8;
  c.scheduler.max_batch_tokens = 32;
  c.block_size = 4;
  c.eos_token_id = -1;
  c.kv_cache_bytes = size_t{1} << 20;
  c.profile = true;
  auto whole = EngineInstance::Create(c, **file);
  ASSERT_TRUE(whole.ok()) << whole.status();
  const std::vector<std::vector<int32_t>> want = RunPrompts(**whole);
  (*whole)->Stop();

  c.nano_batching = true;
  c.nano_min_gain = -1e9;
  auto nano = EngineInstance::Create(c, **file);
  ASSERT_TRUE(nano.ok()) << nano.status();
  EXPECT_EQ(RunPrompts(**nano), want);
  const scheduler::InstanceStats st = (*nano)->stats();
  EXPECT_GT(st.nano_steps, 0u);
  EXPECT_LT(st.nano_steps, st.steps);  // steps with prompts ran whole
  EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total);
}

}  // namespace
}  // namespace tandem::kernels::cuda
