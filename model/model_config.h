// ModelConfig: the architecture hyper-parameters of a decoder-only transformer, read from a
// GGUF file's metadata and checked against its tensors.
//
// FromGguf() supports the "llama" architecture (which GGUF also uses for Mistral models;
// "mistral" is accepted as an alias), "qwen2" and "gemma3". Gemma 3 differs from Llama in
// ways the config names one by one (so the forward pass branches on features, not on the
// architecture's name): embeddings scaled by sqrt(hidden), RMSNorm of each query and key head
// (QK-norm), norms after attention and after the FFN as well as before, GeGLU instead of
// SwiGLU, and sliding-window attention on the local layers (every layer but each sixth) with
// their own RoPE base. It validates the numbers against each
// other (heads divide the hidden size, query heads are a multiple of KV heads) and checks
// that every tensor the forward pass reads exists with the expected shape and a supported
// type, so the model code can index weights without further checks.
//
// Thread safety: a plain value; FromGguf is a pure function of the (immutable) file.
#ifndef TANDEM_MODEL_MODEL_CONFIG_H_
#define TANDEM_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/gguf_file.h"

namespace tandem::model {

enum class FfnActivation {
  kSilu,      // SwiGLU: silu(gate) * up (llama, qwen2)
  kGeluTanh,  // GeGLU: gelu(gate) * up, GELU's tanh approximation (gemma3)
};

struct ModelConfig {
  std::string architecture;  // GGUF general.architecture: "llama", "mistral", "qwen2", "gemma3"
  int n_layers = 0;
  int hidden = 0;      // embedding length
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads (== n_heads for MHA; fewer for GQA)
  int head_dim = 0;    // per-head size (hidden / n_heads unless key_length says else)
  int ffn_dim = 0;     // feed-forward (SwiGLU) inner size
  int vocab_size = 0;
  int context_length = 0;  // trained context
  float rope_theta = 10000.0f;
  int rope_dim = 0;  // rotated dimensions per head (== head_dim for these archs)
  kernels::RopeStyle rope_style = kernels::RopeStyle::kNormal;
  float rms_eps = 1e-5f;
  bool tied_embeddings = false;  // no output.weight: the head reuses token_embd.weight
  bool has_qkv_bias = false;     // blk.N.attn_{q,k,v}.bias present (qwen2)

  // Gemma-style features; the defaults are Llama's.
  float embedding_scale = 1.0f;  // the embeddings are multiplied by it (gemma3: sqrt(hidden))
  float attention_scale = 0.0f;  // softmax scale of q.k; FromGguf sets it (1/sqrt(head_dim))
  bool has_qk_norm = false;      // blk.N.attn_{q,k}_norm.weight [head_dim]: RMSNorm per head
  bool has_post_norms = false;   // blk.N.post_attention_norm, post_ffw_norm [hidden]
  // Activations pass fp16's range (65504): gemma3 (large norm weights after sqrt(hidden)-scaled
  // embeddings; transformers issue 36822). Such a model runs with f32 or bf16 activations,
  // never f16 (DefaultActivations, LlamaModel::Create).
  bool f16_overflows = false;
  FfnActivation ffn_activation = FfnActivation::kSilu;
  // Sliding-window attention: a layer il with swa_layers[il] set attends to the last
  // `sliding_window` positions only (p - j < sliding_window) and rotates with
  // rope_theta_swa. Empty when the model has no local layers.
  int sliding_window = 0;
  std::vector<bool> swa_layers;  // [n_layers] when sliding_window > 0
  float rope_theta_swa = 10000.0f;

  bool IsSlidingLayer(int il) const {
    return sliding_window > 0 && swa_layers[static_cast<size_t>(il)];
  }
  // The attention window of layer il (0: the whole causal context) and its RoPE base.
  int LayerWindow(int il) const { return IsSlidingLayer(il) ? sliding_window : 0; }
  float LayerRopeTheta(int il) const { return IsSlidingLayer(il) ? rope_theta_swa : rope_theta; }

  // The activation dtype a 16-bit device runs this model with: bf16 where f16 overflows.
  kernels::ActivationDType DefaultActivations() const {
    return f16_overflows ? kernels::ActivationDType::kBF16 : kernels::ActivationDType::kF16;
  }

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }

  static absl::StatusOr<ModelConfig> FromGguf(const GgufFile& file);
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_MODEL_CONFIG_H_
