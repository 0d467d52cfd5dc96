// LlamaModel: a Llama-family decoder (llama, SmolLM, Mistral, Qwen2: RMSNorm, RoPE, GQA,
// SwiGLU, tied or separate output head) whose Forward is a straight list of kernels::Backend
// calls over one StepBatch. Weights stay in the GGUF's quantized types; the backend may
// repack them once at load.
//
// Thread safety: Forward is called by one thread at a time (the instance's engine thread);
// the model owns per-step scratch buffers sized at load, so a step allocates nothing.
// Must not: know about requests, sampling or scheduling.
#ifndef TANDEM_MODEL_LLAMA_MODEL_H_
#define TANDEM_MODEL_LLAMA_MODEL_H_

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kvcache/kv_cache.h"
#include "model/gguf_file.h"
#include "model/model_config.h"
#include "model/step_batch.h"

namespace tandem::model {

struct ModelOptions {
  int max_batch_tokens = 512;     // tokens one Forward may carry
  int max_logit_rows = 256;       // rows of logits one Forward may return
  int max_seqs = 256;             // sequences one Forward may carry
  int max_blocks_per_seq = 0;     // 0: enough for the model's context at block_size
  int block_size = 16;            // KV page size the cache uses
  // Called during Load after each layer's weights are in place (layers_done of n_layers), on
  // the loading thread; for progress reports. May be empty.
  std::function<void(int layers_done, int n_layers)> load_progress;

  absl::Status Validate() const;
};

class LlamaModel {
 public:
  // Reads weights from `file` (which may be closed afterwards) into `backend`.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const GgufFile& file,
                                                          kernels::Backend& backend,
                                                          const ModelOptions& options);
  ~LlamaModel();
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const ModelConfig& config() const { return config_; }
  const ModelOptions& options() const { return options_; }
  int max_blocks_per_seq() const { return max_blocks_per_seq_; }
  // The KV cache Forward accepts: the model's layers, KV heads and head size, pages of
  // options().block_size tokens, entries of `dtype`. The size (num_blocks or memory_bytes) is
  // left for the caller to choose.
  kvcache::KvCacheConfig KvCacheLayout(kernels::KvDType dtype) const;

  // Runs one step: appends the batch's K/V into `cache` and writes float logits
  // [batch.logit_rows.size(), vocab] into `logits` (host memory; untouched when no rows
  // are requested, as for a prefill chunk in the middle of a prompt). InvalidArgument when the
  // batch breaks StepBatch's invariants or exceeds ModelOptions; nothing runs then.
  absl::Status Forward(const StepBatch& batch, const kernels::KvCacheView& cache,
                       float* logits);

 private:
  struct Layer {
    float* attn_norm = nullptr;  // [hidden]
    float* ffn_norm = nullptr;   // [hidden]
    float* bq = nullptr;         // [n_heads * head_dim], qwen2 only
    float* bk = nullptr;         // [n_kv_heads * head_dim]
    float* bv = nullptr;         // [n_kv_heads * head_dim]
    std::unique_ptr<kernels::Weight> wq, wk, wv, wo, w_gate, w_up, w_down;
  };

  LlamaModel(const ModelConfig& config, const ModelOptions& options, kernels::Backend& backend);
  absl::Status LoadWeights(const GgufFile& file);
  absl::Status AllocateScratch();
  absl::StatusOr<float*> UploadVector(const GgufFile& file, const std::string& name, int64_t n);
  absl::StatusOr<std::unique_ptr<kernels::Weight>> UploadMatrix(const GgufFile& file,
                                                                const std::string& name,
                                                                int64_t rows, int64_t cols);
  absl::Status ValidateBatch(const StepBatch& batch, const kernels::KvCacheView& cache) const;
  template <typename T>
  T* Scratch(size_t count);

  // Constant after construction.
  const ModelConfig config_;
  const ModelOptions options_;
  kernels::Backend& backend_;
  int max_blocks_per_seq_ = 0;
  std::vector<kernels::DeviceBuffer> buffers_;  // every device allocation, freed on destruction

  // Weights.
  std::vector<Layer> layers_;
  std::unique_ptr<kernels::Weight> token_embd_;
  std::unique_ptr<kernels::Weight> output_;  // null when tied to token_embd_
  float* output_norm_ = nullptr;

  // Device scratch, sized by ModelOptions (engine thread only).
  float* x_ = nullptr;       // [max_batch_tokens, hidden] residual stream
  float* h_ = nullptr;       // [max_batch_tokens, hidden] normed input / projection output
  float* q_ = nullptr;       // [max_batch_tokens, n_heads * head_dim]
  float* k_ = nullptr;       // [max_batch_tokens, n_kv_heads * head_dim]
  float* v_ = nullptr;       // [max_batch_tokens, n_kv_heads * head_dim]
  float* attn_ = nullptr;    // [max_batch_tokens, n_heads * head_dim]
  float* gate_ = nullptr;    // [max_batch_tokens, ffn]
  float* up_ = nullptr;      // [max_batch_tokens, ffn]
  float* ffn_ = nullptr;     // [max_batch_tokens, ffn]
  float* sel_ = nullptr;     // [max_logit_rows, hidden] rows selected for logits
  float* logits_ = nullptr;  // [max_logit_rows, vocab]
  int32_t* d_tokens_ = nullptr;     // [max_batch_tokens]
  int32_t* d_positions_ = nullptr;  // [max_batch_tokens]
  int32_t* d_token_seq_ = nullptr;  // [max_batch_tokens]
  int32_t* d_slots_ = nullptr;      // [max_batch_tokens]
  int32_t* d_rows_ = nullptr;       // [max_logit_rows]
  int32_t* d_tables_ = nullptr;     // [max_seqs, max_blocks_per_seq]
  std::vector<int32_t> slots_;      // host staging, [max_batch_tokens]
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_LLAMA_MODEL_H_
