// ReferenceModel: a naive, dense, double-precision Llama-family forward pass over one
// sequence (Gemma 3's features included: scaled embeddings, QK-norm, post-norms, GeGLU with
// GELU's tanh form, sliding-window local layers with their own RoPE base), written straight
// from the architecture's definition (weights dequantized to
// float, no paging, no batching, no int8 activations). Tests compare LlamaModel to it.
//
// Thread safety: not thread-safe; one per test.
#ifndef TANDEM_TESTS_SUPPORT_REFERENCE_MODEL_H_
#define TANDEM_TESTS_SUPPORT_REFERENCE_MODEL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "model/gguf_file.h"
#include "model/model_config.h"

namespace tandem::testing {

class ReferenceModel {
 public:
  static absl::StatusOr<std::unique_ptr<ReferenceModel>> Create(const model::GgufFile& file);

  const model::ModelConfig& config() const { return config_; }
  // Logits [tokens.size(), vocab] for every position of one sequence starting at position 0.
  std::vector<std::vector<float>> Forward(const std::vector<int32_t>& tokens) const;

 private:
  struct Layer {
    std::vector<float> attn_norm, ffn_norm, bq, bk, bv;
    std::vector<float> q_norm, k_norm, post_attn_norm, post_ffn_norm;  // gemma3
    std::vector<float> wq, wk, wv, wo, w_gate, w_up, w_down;           // row-major [rows, cols]
  };
  model::ModelConfig config_;
  std::vector<Layer> layers_;
  std::vector<float> token_embd_, output_, output_norm_;
};

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_SUPPORT_REFERENCE_MODEL_H_
