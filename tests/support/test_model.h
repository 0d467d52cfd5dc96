// Tiny synthetic GGUF models for tests: every supported tensor type, MHA or GQA, tied or
// untied embeddings, llama or qwen2 (with QKV biases), seeded random weights, and a small
// but valid GPT-2 style byte-level BPE tokenizer with ChatML special tokens.
//
// The tokenizer (ids are stable; tests may rely on them):
//   0 "<|endoftext|>", 1 "<|im_start|>", 2 "<|im_end|>" (token_type 3, control);
//   3 + b for each byte b, as its GPT-2 bytes_to_unicode character (token_type 1);
//   then one token per merge in TestTokenizerMerges(), in that order (merge rank order);
//   then "<|pad_N|>" tokens (token_type 5, unused) up to spec.vocab when that is larger.
//   bos = 1, eos = 2, unknown = 0, padding = 2; chat template: ChatML.
//
// Thread safety: pure functions; each call writes only its own output path.
#ifndef TANDEM_TESTS_SUPPORT_TEST_MODEL_H_
#define TANDEM_TESTS_SUPPORT_TEST_MODEL_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/quant.h"
#include "tests/support/gguf_writer.h"

namespace tandem::testing {

struct TestModelSpec {
  // "llama", "qwen2" (NeoX RoPE) or "gemma3" (NeoX RoPE, QK-norm, post-norms, GeGLU, scaled
  // embeddings, sliding-window local layers when sliding_window > 0)
  std::string arch = "llama";
  int n_layers = 2;
  int hidden = 64;
  int n_heads = 4;
  int n_kv_heads = 2;  // GQA; set equal to n_heads for MHA
  int ffn = 128;
  int head_dim = 0;  // 0: hidden / n_heads; else written as attention.key/value_length
  // gemma3 only: attention.sliding_window (0: key absent, every layer global), the period of
  // global layers (0: key absent, llama.cpp's default 6) and rope.freq_base_swa (0: absent).
  int sliding_window = 0;
  int swa_pattern = 0;
  float rope_theta_swa = 0.0f;
  int vocab = 0;  // 0: the tokenizer's natural size; larger pads with unused tokens
  int context_length = 256;
  float rope_theta = 10000.0f;
  float rms_eps = 1e-5f;
  kernels::DType weight_type = kernels::DType::kQ8_0;  // linear layers
  kernels::DType embd_type = kernels::DType::kQ8_0;    // token_embd (and output if untied)
  bool tied = true;                                    // no output.weight
  bool qkv_bias = false;                               // blk.N.attn_{q,k,v}.bias
  uint32_t seed = 1;
  uint32_t alignment = 32;
  float weight_std = 0.05f;  // N(0, std) for linear weights
  float embd_std = 0.1f;     // N(0, std) for embeddings
};

// The GPT-2 byte-to-unicode mapping: the UTF-8 text of the character standing for byte b.
std::string ByteToUnicode(uint8_t b);
// The merges of the test tokenizer, in rank order, as (left, right) token texts.
const std::vector<std::pair<std::string, std::string>>& TestTokenizerMerges();
// Number of tokens before padding: 3 specials + 256 bytes + merges.
int TestTokenizerSize();

// The model as a writer, so tests can alter it (drop a tensor, change a shape) first.
absl::StatusOr<GgufWriter> BuildTestModel(const TestModelSpec& spec);
// Gemma 3's shape in small, for sliding-window tests: 6 layers, 2 and 5 global, the others
// sliding over 8 positions (their own RoPE base), context 256, weights large enough that
// greedy choices are not near-ties.
TestModelSpec SlidingWindowTestSpec();
absl::Status WriteTestModel(const TestModelSpec& spec, const std::string& path);

// Corrupt variants of a test model, for error-path tests anywhere in the project.
enum class ModelCorruption {
  kTruncated,        // cut in the middle of the tensor data
  kBadMagic,         // first bytes not "GGUF"
  kMissingTensor,    // blk.0.ffn_up.weight dropped
  kWrongShape,       // blk.0.attn_k.weight with a wrong output dimension
  kUnknownArch,      // general.architecture = "gpt-j"
  kUnsupportedType,  // one tensor claims type id 20 (IQ4_NL)
};
absl::Status WriteCorruptTestModel(const TestModelSpec& spec, ModelCorruption kind,
                                   const std::string& path);

// Parses "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k",
// "q4_k", "q5_k", "q6_k" (any case). The K-quants need hidden and ffn multiples of 256.
absl::StatusOr<kernels::DType> ParseDType(std::string_view name);

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_SUPPORT_TEST_MODEL_H_
