// ModelConfig: the architecture hyper-parameters of a decoder-only transformer, read from a
// GGUF file's metadata and checked against its tensors.
//
// FromGguf() supports the "llama" architecture (which GGUF also uses for Mistral models;
// "mistral" is accepted as an alias) and "qwen2". It validates the numbers against each
// other (heads divide the hidden size, query heads are a multiple of KV heads) and checks
// that every tensor the forward pass reads exists with the expected shape and a supported
// type, so the model code can index weights without further checks.
//
// Thread safety: a plain value; FromGguf is a pure function of the (immutable) file.
#ifndef TANDEM_MODEL_MODEL_CONFIG_H_
#define TANDEM_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/gguf_file.h"

namespace tandem::model {

struct ModelConfig {
  std::string architecture;  // GGUF general.architecture: "llama", "mistral" or "qwen2"
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

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }

  static absl::StatusOr<ModelConfig> FromGguf(const GgufFile& file);
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_MODEL_CONFIG_H_
