// LlamaWeights: the read-only half of a Llama-family model: its config and every weight,
// packed once for one kind of device, so that several LlamaModel instances of that kind (a
// prefill and a decode instance on disjoint cores, each with its own kernels::Backend) run
// on one copy in the process. It owns the kernels::Weight objects (matrices, in the layout
// the backend chose) and the float vectors (norms, biases); LlamaModel owns everything that
// is written during a step.
//
// Device kind: DeviceKind(backend), the backend's Name() up to its first space
// ("cpu/avx512 x4" -> "cpu/avx512"). Weights packed for a kind serve any backend of that kind.
// Why that is safe on the CPU: a packed weight (CpuWeight) is plain host memory in a layout
// that does not depend on the ISA (kernels/cpu/matmul.h), written once by PackWeight and
// never again: Matmul and EmbeddingGather read it through const pointers, keep no cache in
// it, and write only their outputs and the scratch of the backend that runs them (sized for
// the weights by Backend::AdoptWeight; see PrepareBackend). Requiring the same ISA as well
// keeps two instances from picking different process-wide op variants
// (kernels/cpu/cpu_backend.h).
//
// Lifetime: on a backend whose device pointers are host pointers (IsHostMemory(): the CPU)
// the weights keep nothing of the loading backend: each CPU Weight frees its own bytes and
// the vectors live in memory the weights allocate themselves, so they may outlive it. On any
// other backend (a GPU) the vectors are device memory of the loading backend, which must then
// outlive the weights.
//
// Thread safety: immutable after Load; any number of threads may read one LlamaWeights
// concurrently (each through its own backend). Load runs on one thread.
// Must not: hold per-step state, or anything a step writes.
#ifndef TANDEM_MODEL_LLAMA_WEIGHTS_H_
#define TANDEM_MODEL_LLAMA_WEIGHTS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/gguf_file.h"
#include "model/model_config.h"

namespace tandem::model {

struct WeightOptions {
  // Called during Load after each layer's weights are in place (layers_done of n_layers), on
  // the loading thread; for progress reports. May be empty.
  std::function<void(int layers_done, int n_layers)> load_progress;
};

// The kind of device `backend` packs weights for: Name() up to the first space.
std::string DeviceKind(const kernels::Backend& backend);

class LlamaWeights {
 public:
  // One decoder layer. Vectors are device pointers of the loading backend's kind.
  struct Layer {
    const float* attn_norm = nullptr;         // [hidden]
    const float* ffn_norm = nullptr;          // [hidden]
    const float* bq = nullptr;                // [n_heads * head_dim], qwen2 only
    const float* bk = nullptr;                // [n_kv_heads * head_dim], qwen2 only
    const float* bv = nullptr;                // [n_kv_heads * head_dim], qwen2 only
    const float* q_norm = nullptr;            // [head_dim], has_qk_norm only
    const float* k_norm = nullptr;            // [head_dim], has_qk_norm only
    const float* post_attn_norm = nullptr;    // [hidden], has_post_norms only
    const float* post_ffn_norm = nullptr;     // [hidden], has_post_norms only
    std::unique_ptr<kernels::Weight> wq;      // [n_heads * head_dim, hidden]
    std::unique_ptr<kernels::Weight> wk;      // [n_kv_heads * head_dim, hidden]
    std::unique_ptr<kernels::Weight> wv;      // [n_kv_heads * head_dim, hidden]
    std::unique_ptr<kernels::Weight> wo;      // [hidden, n_heads * head_dim]
    std::unique_ptr<kernels::Weight> w_gate;  // [ffn, hidden]
    std::unique_ptr<kernels::Weight> w_up;    // [ffn, hidden]
    std::unique_ptr<kernels::Weight> w_down;  // [hidden, ffn]
  };

  // Reads the config and every weight from `file` (which may be closed afterwards) and packs
  // them with `backend`. Errors: an unsupported or inconsistent model, out of memory.
  static absl::StatusOr<std::shared_ptr<const LlamaWeights>> Load(const GgufFile& file,
                                                                  kernels::Backend& backend,
                                                                  const WeightOptions& options);
  ~LlamaWeights();
  LlamaWeights(const LlamaWeights&) = delete;
  LlamaWeights& operator=(const LlamaWeights&) = delete;

  const ModelConfig& config() const { return config_; }
  // The device kind the weights were packed for (see DeviceKind).
  const std::string& device_kind() const { return device_kind_; }

  const Layer& layer(int i) const { return layers_[i]; }
  const kernels::Weight& token_embd() const { return *token_embd_; }  // [vocab, hidden]
  // The output head [vocab, hidden]: token_embd() when the embeddings are tied.
  const kernels::Weight& output() const { return output_ ? *output_ : *token_embd_; }
  const float* output_norm() const { return output_norm_; }  // [hidden]

  // Readies `backend`, of device_kind(), to run ops on these weights (Backend::AdoptWeight
  // on every matrix: sizes its scratch). Set-up time, on the thread that drives `backend`.
  absl::Status PrepareBackend(kernels::Backend& backend) const;

 private:
  struct FreeHost {
    void operator()(float* p) const;
  };

  LlamaWeights(const ModelConfig& config, const kernels::Backend& backend);
  absl::Status LoadAll(const GgufFile& file, kernels::Backend& backend,
                       const WeightOptions& options);
  absl::StatusOr<const float*> UploadVector(const GgufFile& file, kernels::Backend& backend,
                                            const std::string& name, int64_t n);

  // Constant after Load.
  const ModelConfig config_;
  const std::string device_kind_;
  std::vector<Layer> layers_;
  std::unique_ptr<kernels::Weight> token_embd_;
  std::unique_ptr<kernels::Weight> output_;  // null when tied to token_embd_
  const float* output_norm_ = nullptr;

  // Storage of the vectors: host memory on a host-memory backend, else device buffers of
  // `device_backend_` (null on a host-memory backend: nothing of it is kept).
  std::vector<std::unique_ptr<float, FreeHost>> host_vectors_;
  kernels::Backend* device_backend_ = nullptr;
  std::vector<kernels::DeviceBuffer> device_vectors_;
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_LLAMA_WEIGHTS_H_
