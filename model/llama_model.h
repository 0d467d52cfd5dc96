// LlamaModel: a Llama-family decoder (llama, SmolLM, Mistral, Qwen2: RMSNorm, RoPE, GQA,
// SwiGLU, tied or separate output head; Gemma 3 as the same layer with the features its
// ModelConfig names: scaled embeddings, QK-norm, post-norms, GeGLU, sliding-window layers)
// whose Forward is a straight list of kernels::Backend
// calls over one StepBatch. The weights (LlamaWeights: config and packed matrices, read-only)
// may be shared by several models on backends of the same device kind; a model owns only its
// per-step scratch on its own backend.
//
// Activations (every float* scratch below) are elements of the backend's activation_dtype();
// only the logits are converted to f32 before they leave the device.
//
// Thread safety: Forward is called by one thread at a time (the instance's engine thread);
// the model owns per-step scratch buffers sized at creation, so a step allocates nothing.
// Models sharing one LlamaWeights may run Forward concurrently, each on its own backend.
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
#include "model/llama_weights.h"
#include "model/model_config.h"
#include "model/step_batch.h"

namespace tandem::model {

struct ModelOptions {
  int max_batch_tokens = 512;  // tokens one Forward may carry
  int max_logit_rows = 256;    // rows of logits one Forward may return
  int max_seqs = 256;          // sequences one Forward may carry
  int max_blocks_per_seq = 0;  // 0: enough for the model's context at block_size
  int block_size = 16;         // KV page size the cache uses
  // Load only (passed on as WeightOptions::load_progress; Create loads nothing): called
  // after each layer's weights are in place, on the loading thread. May be empty.
  std::function<void(int layers_done, int n_layers)> load_progress;

  absl::Status Validate() const;
};

class LlamaModel {
 public:
  // Called once per layer, in order, right after that layer's K/V for the whole batch have
  // been appended to the cache on the model's stream (the backend's DefaultStream()). On a
  // synchronous backend such as the CPU they are in memory then; on an asynchronous one the
  // hook may record an event on that stream to learn when they are. Runs on the calling
  // thread; must not call back into the model. Returning false stops the step there: Forward
  // returns Cancelled, and the logits and the later layers' KV of the batch are unspecified
  // (the caller drops the batch's sequences, e.g. when every one of them was cancelled).
  using LayerHook = std::function<bool(int layer)>;

  // Loads the weights from `file` (which may be closed afterwards) onto `backend`, then
  // Create()s a model on the same backend. Another instance may share them via weights().
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const GgufFile& file,
                                                          kernels::Backend& backend,
                                                          const ModelOptions& options);
  // A model running `weights` on `backend`, which must be of the device kind the weights were
  // packed for (FailedPrecondition otherwise). Allocates the step scratch on `backend`, which
  // must outlive the model.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Create(
      std::shared_ptr<const LlamaWeights> weights, kernels::Backend& backend,
      const ModelOptions& options);
  ~LlamaModel();
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const ModelConfig& config() const { return config_; }
  // The weights this model runs, for another instance of the same device kind to share.
  const std::shared_ptr<const LlamaWeights>& weights() const { return weights_; }
  const ModelOptions& options() const { return options_; }
  int max_blocks_per_seq() const { return max_blocks_per_seq_; }
  // The KV cache Forward accepts: the model's layers, KV heads and head size, pages of
  // options().block_size tokens, entries of `dtype`; with `window_local`, a sliding-window
  // model's local layers in their own groups that keep only the window (kvcache::KvGroups).
  // The size (num_blocks or memory_bytes) is left for the caller to choose.
  kvcache::KvCacheConfig KvCacheLayout(kernels::KvDType dtype, bool window_local = false) const;

  // Runs one step: appends the batch's K/V into `cache` (of either KvCacheLayout: the batch's
  // n_groups says which) and writes float logits
  // [batch.logit_rows.size(), vocab] into `logits` (host memory; untouched when no rows
  // are requested, as for a prefill chunk in the middle of a prompt). With `logits` null they
  // stay on the device, in device_logits(), for Backend::Sample or CopyLogitsToHost.
  // InvalidArgument when the batch breaks StepBatch's invariants or exceeds ModelOptions; nothing
  // runs then. `on_layer_kv`, when set, is called after each layer's KV append (see LayerHook);
  // `on_layer_begin`, likewise, before each layer's first op is queued (a nano-batch executor
  // makes the stream wait there for another stream's event). Cancelled when either stopped the
  // step.
  absl::Status Forward(const StepBatch& batch, const kernels::KvCacheView& cache, float* logits,
                       const LayerHook& on_layer_kv = nullptr,
                       const LayerHook& on_layer_begin = nullptr);
  // The last Forward's logits on the device: [logit rows, vocab] of the backend's activation
  // dtype, valid until the next Forward.
  const float* device_logits() const { return logits_; }
  // Copies rows [first, first + n) of device_logits() to `out` (host, f32, [n, vocab]) and
  // waits for them.
  void CopyLogitsToHost(int first, int n, float* out);

 private:
  LlamaModel(std::shared_ptr<const LlamaWeights> weights, const ModelOptions& options,
             kernels::Backend& backend);
  absl::Status AllocateScratch();
  // The grouping of `cache` (one of KvCacheLayout's two), or null when it matches neither.
  const kvcache::KvGroups* GroupsOf(const kernels::KvCacheView& cache) const;
  absl::Status ValidateBatch(const StepBatch& batch, const kernels::KvCacheView& cache,
                             const kvcache::KvGroups& groups) const;
  template <typename T>
  T* Scratch(size_t count);

  // Constant after construction.
  const std::shared_ptr<const LlamaWeights> weights_;
  const ModelConfig& config_;  // weights_->config()
  const ModelOptions options_;
  kernels::Backend& backend_;
  int max_blocks_per_seq_ = 0;
  kvcache::KvGroups whole_groups_;              // KvCacheLayout(_, false).Groups(): one group
  kvcache::KvGroups windowed_groups_;           // KvCacheLayout(_, true).Groups()
  int max_groups_ = 1;                          // of the two
  std::vector<kernels::DeviceBuffer> buffers_;  // the scratch below, freed on destruction

  // Device scratch, sized by ModelOptions (engine thread only).
  float* x_ = nullptr;              // [max_batch_tokens, hidden] residual stream
  float* h_ = nullptr;              // [max_batch_tokens, hidden] normed input / projection output
  float* q_ = nullptr;              // [max_batch_tokens, n_heads * head_dim]
  float* k_ = nullptr;              // [max_batch_tokens, n_kv_heads * head_dim]
  float* v_ = nullptr;              // [max_batch_tokens, n_kv_heads * head_dim]
  float* attn_ = nullptr;           // [max_batch_tokens, n_heads * head_dim]
  float* gate_ = nullptr;           // [max_batch_tokens, ffn]
  float* up_ = nullptr;             // [max_batch_tokens, ffn]
  float* ffn_ = nullptr;            // [max_batch_tokens, ffn]
  float* sel_ = nullptr;            // [max_logit_rows, hidden] rows selected for logits
  float* logits_ = nullptr;         // [max_logit_rows, vocab]
  float* logits_f32_ = nullptr;     // [max_logit_rows, vocab] f32 (logits_ on an f32 backend)
  int32_t* d_tokens_ = nullptr;     // [max_batch_tokens]
  int32_t* d_positions_ = nullptr;  // [max_batch_tokens]
  int32_t* d_token_seq_ = nullptr;  // [max_batch_tokens]
  int32_t* d_slots_ = nullptr;      // [max_groups, max_batch_tokens]
  int32_t* d_rows_ = nullptr;       // [max_logit_rows]
  int32_t* d_tables_ = nullptr;     // [max_seqs, max_groups, max_blocks_per_seq]
  std::vector<int32_t> slots_;      // host staging, [max_groups, max_batch_tokens]
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_LLAMA_MODEL_H_
