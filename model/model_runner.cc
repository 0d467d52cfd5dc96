#include "model/model_runner.h"

#include <algorithm>
#include <utility>

#include "common/check.h"
#include "common/str_cat.h"

namespace tandem::model {

absl::Status ModelRunnerConfig::Validate() const {
  TANDEM_RETURN_IF_ERROR(backend.Validate());
  TANDEM_RETURN_IF_ERROR(model.Validate());
  if (kv_cache_bytes == 0) return absl::InvalidArgumentError("kv_cache_bytes must be > 0");
  return absl::OkStatus();
}

namespace {

// The CPU backend quantizes activations in scratch sized for its max_batch_tokens rows: make
// it hold the model's step.
kernels::BackendConfig SizedFor(kernels::BackendConfig b, const ModelOptions& mo) {
  b.cpu.max_batch_tokens = std::max(b.cpu.max_batch_tokens, mo.max_batch_tokens);
  return b;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(const ModelRunnerConfig& config,
                                                                 const GgufFile& file) {
  TANDEM_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<ModelRunner> r(new ModelRunner(config));
  TANDEM_ASSIGN_OR_RETURN(r->backend_,
                          kernels::CreateBackend(SizedFor(config.backend, config.model)));
  TANDEM_ASSIGN_OR_RETURN(r->model_, LlamaModel::Load(file, *r->backend_, config.model));
  return Finish(std::move(r));
}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(
    const ModelRunnerConfig& config, std::shared_ptr<const LlamaWeights> weights) {
  TANDEM_RETURN_IF_ERROR(config.Validate());
  if (weights == nullptr) return absl::InvalidArgumentError("no weights to share");
  std::unique_ptr<ModelRunner> r(new ModelRunner(config));
  TANDEM_ASSIGN_OR_RETURN(r->backend_,
                          kernels::CreateBackend(SizedFor(config.backend, config.model)));
  TANDEM_ASSIGN_OR_RETURN(r->model_,
                          LlamaModel::Create(std::move(weights), *r->backend_, config.model));
  return Finish(std::move(r));
}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Finish(std::unique_ptr<ModelRunner> r) {
  const ModelRunnerConfig& config = r->config_;
  kvcache::KvCacheConfig kc = r->model_->KvCacheLayout(config.kv_dtype, config.window_local_kv);
  kc.memory_bytes = config.kv_cache_bytes;
  if (config.kv_cache_bytes < kc.BytesPerBlock()) {
    return absl::InvalidArgumentError(
        StrCat("KV cache memory of ", config.kv_cache_bytes, " bytes holds no block (one block of ",
               config.model.block_size, " tokens takes ", kc.BytesPerBlock(), " bytes)"));
  }
  TANDEM_ASSIGN_OR_RETURN(r->kv_, kvcache::KvManager::Create(kc, *r->backend_));
  r->builder_ =
      std::make_unique<BatchBuilder>(r->model_->max_blocks_per_seq(), r->kv_->groups().n_groups());
  r->logits_.resize(static_cast<size_t>(config.model.max_logit_rows) *
                    r->model_->config().vocab_size);
  return r;
}

ModelRunner::~ModelRunner() = default;

void ModelRunner::BeginStep() {
  builder_->Clear();
  num_chunks_ = 0;
}

int ModelRunner::AddChunk(const kvcache::BlockTable& table, std::span<const int32_t> tokens,
                          int start, bool want_logits) {
  ++num_chunks_;
  return builder_->AddSequence(table, tokens, start, want_logits);
}

absl::Status ModelRunner::Execute(const LlamaModel::LayerHook& on_layer_kv) {
  return model_->Forward(builder_->batch(), kv_->view(), logits_.data(), on_layer_kv);
}

const float* ModelRunner::logits(int row) const {
  TANDEM_CHECK(row >= 0 && row < config_.model.max_logit_rows);
  return logits_.data() + static_cast<size_t>(row) * model_->config().vocab_size;
}

void ModelRunner::Sample(std::span<SampleJob> jobs) {
  const int vocab = model_->config().vocab_size;
  auto run = [&](int begin, int end) {
    for (int i = begin; i < end; ++i) {
      jobs[i].result = jobs[i].sampler->Sample(logits(jobs[i].row), vocab);
    }
  };
  // One row is cheaper inline than waking the pool.
  if (jobs.size() <= 1) {
    run(0, static_cast<int>(jobs.size()));
  } else {
    backend_->HostParallelFor(static_cast<int>(jobs.size()), run);
  }
}

}  // namespace tandem::model
