// LlamaWeights shared by several LlamaModels: one copy of the packed weights serves models on
// other backends of the same device kind, sequentially and concurrently, with the logits of a
// model loaded the usual way; another device kind is refused.
#include "model/llama_weights.h"

#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvcache/kv_cache.h"
#include "model/batch_builder.h"
#include "model/llama_model.h"
#include "tests/support/test_model.h"

namespace tandem::model {
namespace {

using kernels::DType;
using kernels::KvDType;
using kernels::cpu::Isa;

std::unique_ptr<GgufFile> WriteAndOpen(const testing::TestModelSpec& spec,
                                       const std::string& name) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/", name, ".gguf");
  EXPECT_TRUE(testing::WriteTestModel(spec, path).ok());
  auto file = GgufFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  return file.ok() ? std::move(*file) : nullptr;
}

std::unique_ptr<kernels::Backend> CpuBackend(Isa isa = kernels::cpu::BestIsa()) {
  kernels::cpu::CpuBackendConfig bc;
  bc.threads = 1;
  bc.isa = isa;
  auto backend = kernels::cpu::CreateCpuBackend(bc);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

ModelOptions Options() {
  ModelOptions opts;
  opts.max_batch_tokens = 64;
  opts.max_logit_rows = 64;
  opts.block_size = 4;
  return opts;
}

// A model with its own KV cache, on a backend it does not own.
struct Instance {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<kvcache::KvCache> cache;

  static Instance Make(absl::StatusOr<std::unique_ptr<LlamaModel>> model,
                       kernels::Backend& backend) {
    Instance in;
    EXPECT_TRUE(model.ok()) << model.status();
    if (!model.ok()) return in;
    in.model = std::move(*model);
    kvcache::KvCacheConfig kc = in.model->KvCacheLayout(KvDType::kF16);
    kc.num_blocks = 64;
    auto cache = kvcache::KvCache::Create(kc, backend);
    EXPECT_TRUE(cache.ok()) << cache.status();
    if (cache.ok()) in.cache = std::move(*cache);
    return in;
  }

  // A prefill of `prompt` with logits at every position, then `decode` greedy steps: every
  // logit the model returned, in order.
  std::vector<float> Run(const std::vector<int32_t>& prompt, int decode) {
    const int vocab = model->config().vocab_size;
    kvcache::BlockTable table(cache->config().block_size);
    BatchBuilder bb(model->max_blocks_per_seq());
    std::vector<float> all;
    std::vector<float> logits(prompt.size() * vocab);
    std::vector<int32_t> next = prompt;
    int pos = 0;
    for (int step = 0; step <= decode; ++step) {
      EXPECT_TRUE(table.Reserve(cache->pool(), pos + next.size()).ok());
      bb.Clear();
      bb.AddSequence(table, next, pos, true);
      StepBatch& b = bb.mutable_batch();
      b.logit_rows.resize(next.size());
      for (size_t i = 0; i < next.size(); ++i) b.logit_rows[i] = static_cast<int32_t>(i);
      EXPECT_TRUE(model->Forward(b, cache->view(), logits.data()).ok());
      pos += static_cast<int>(next.size());
      table.SetNumTokens(pos);
      const float* last = &logits[(next.size() - 1) * vocab];
      all.insert(all.end(), logits.begin(), logits.begin() + next.size() * vocab);
      next = {static_cast<int32_t>(std::max_element(last, last + vocab) - last)};
    }
    table.Release(cache->pool());
    return all;
  }
};

std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = 3 + rng() % (vocab - 3);
  return t;
}

TEST(LlamaWeightsTest, LoadReadsTheConfigAndNamesTheDeviceKind) {
  testing::TestModelSpec spec;
  spec.n_layers = 3;
  auto file = WriteAndOpen(spec, "weights_load");
  auto backend = CpuBackend();
  ASSERT_TRUE(file && backend);
  EXPECT_EQ(DeviceKind(*backend),
            absl::StrCat("cpu/", kernels::cpu::IsaName(kernels::cpu::BestIsa())));
  std::vector<std::pair<int, int>> progress;
  WeightOptions wo;
  wo.load_progress = [&](int done, int total) { progress.push_back({done, total}); };
  auto weights = LlamaWeights::Load(*file, *backend, wo);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->device_kind(), DeviceKind(*backend));
  EXPECT_EQ((*weights)->config().n_layers, 3);
  EXPECT_EQ(progress, (std::vector<std::pair<int, int>>{{1, 3}, {2, 3}, {3, 3}}));
  // Tied embeddings: the head is the embedding matrix.
  EXPECT_EQ(&(*weights)->output(), &(*weights)->token_embd());

  // Load is "load weights + Create": its model hands them out for another instance.
  auto model = LlamaModel::Load(*file, *backend, Options());
  ASSERT_TRUE(model.ok()) << model.status();
  auto second = LlamaModel::Create((*model)->weights(), *backend, Options());
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ((*second)->weights(), (*model)->weights());
  EXPECT_EQ(LlamaModel::Create(nullptr, *backend, Options()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(LlamaWeightsTest, ModelsOnTwoBackendsShareOneCopyAndMatchAModelOfTheirOwn) {
  for (DType type : {DType::kQ4_1, DType::kQ8_0, DType::kF16}) {
    SCOPED_TRACE(std::string(kernels::DTypeName(type)));
    testing::TestModelSpec spec;
    spec.weight_type = type;
    spec.tied = false;
    spec.embd_type = type == DType::kF16 ? DType::kF16 : DType::kQ8_0;
    auto file = WriteAndOpen(spec, absl::StrCat("weights_shared_", static_cast<int>(type)));
    ASSERT_TRUE(file);

    // The usual way: weights and model on one backend.
    auto own_backend = CpuBackend();
    ASSERT_TRUE(own_backend);
    Instance own = Instance::Make(LlamaModel::Load(*file, *own_backend, Options()), *own_backend);
    ASSERT_TRUE(own.model && own.cache);
    const int vocab = own.model->config().vocab_size;
    const std::vector<int32_t> prompt_a = RandomTokens(11, vocab, 7);
    const std::vector<int32_t> prompt_b = RandomTokens(17, vocab, 8);
    const std::vector<float> want_a = own.Run(prompt_a, 4);
    const std::vector<float> want_b = own.Run(prompt_b, 4);

    // Shared: packed by a backend that is gone before either model runs (on the CPU the
    // weights keep nothing of it), then used by two other backends.
    std::shared_ptr<const LlamaWeights> weights;
    {
      auto loader = CpuBackend();
      ASSERT_TRUE(loader);
      auto loaded = LlamaWeights::Load(*file, *loader, WeightOptions());
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      weights = std::move(*loaded);
    }
    auto backend_a = CpuBackend();
    auto backend_b = CpuBackend();
    ASSERT_TRUE(backend_a && backend_b);
    Instance a = Instance::Make(LlamaModel::Create(weights, *backend_a, Options()), *backend_a);
    Instance b = Instance::Make(LlamaModel::Create(weights, *backend_b, Options()), *backend_b);
    ASSERT_TRUE(a.model && a.cache && b.model && b.cache);
    EXPECT_EQ(weights.use_count(), 3);

    // One after the other: bit-identical to the model with its own weights.
    EXPECT_EQ(a.Run(prompt_a, 4), want_a);
    EXPECT_EQ(b.Run(prompt_b, 4), want_b);

    // Concurrently, each on its own thread and backend, several rounds to give a race a
    // chance; the weights are only read.
    for (int round = 0; round < 3; ++round) {
      std::vector<float> got_a, got_b;
      std::thread ta([&] { got_a = a.Run(prompt_a, 4); });
      std::thread tb([&] { got_b = b.Run(prompt_b, 4); });
      ta.join();
      tb.join();
      EXPECT_EQ(got_a, want_a) << "round " << round;
      EXPECT_EQ(got_b, want_b) << "round " << round;
    }
  }
}

TEST(LlamaWeightsTest, AnotherDeviceKindIsRefused) {
  const Isa best = kernels::cpu::BestIsa();
  if (best == Isa::kScalar) GTEST_SKIP() << "this CPU has one ISA tier: no second device kind";
  testing::TestModelSpec spec;
  auto file = WriteAndOpen(spec, "weights_kind");
  // The scalar backend first: ops pick their ISA process-wide at backend construction, so
  // the last one made leaves the best ISA in place for other tests.
  auto scalar = CpuBackend(Isa::kScalar);
  auto fast = CpuBackend(best);
  ASSERT_TRUE(file && scalar && fast);
  auto weights = LlamaWeights::Load(*file, *fast, WeightOptions());
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto model = LlamaModel::Create(*weights, *scalar, Options());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kFailedPrecondition) << model.status();
  EXPECT_NE(model.status().message().find(DeviceKind(*fast)), std::string::npos);
  EXPECT_NE(model.status().message().find("cpu/scalar"), std::string::npos);
}

}  // namespace
}  // namespace tandem::model
