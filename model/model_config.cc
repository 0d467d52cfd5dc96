#include "model/model_config.h"

#include <cmath>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/check.h"
#include "common/str_cat.h"

namespace tandem::model {
namespace {

template <typename... Args>
std::string Cat(const Args&... args) {
  return ::tandem::StrCat(args...);
}

// Largest value accepted for any size hyper-parameter; keeps products in int range.
constexpr uint32_t kMaxDim = 1u << 24;

std::string ShapeString(const std::vector<int64_t>& dims) {
  return Cat("[", absl::StrJoin(dims, ", "), "]");
}

class ConfigReader {
 public:
  ConfigReader(const GgufFile& file, std::string arch) : f_(file), arch_(std::move(arch)) {}

  std::string Key(std::string_view suffix) const { return Cat(arch_, ".", suffix); }

  absl::Status Error(std::string_view msg) const {
    return absl::InvalidArgumentError(Cat("model '", f_.path(), "': ", msg));
  }

  // A required positive size.
  absl::StatusOr<int> Size(std::string_view suffix) const {
    const std::string key = Key(suffix);
    if (!f_.Has(key)) return Error(Cat("missing metadata key '", key, "'"));
    TANDEM_ASSIGN_OR_RETURN(uint32_t v, f_.GetU32(key));
    if (v == 0 || v > kMaxDim) {
      return Error(Cat("metadata key '", key, "' is ", v, "; expected 1 to ", kMaxDim));
    }
    return static_cast<int>(v);
  }
  absl::StatusOr<int> OptionalSize(std::string_view suffix, int fallback) const {
    if (!f_.Has(Key(suffix))) return fallback;
    return Size(suffix);
  }
  absl::StatusOr<float> OptionalFloat(std::string_view suffix, float fallback) const {
    const std::string key = Key(suffix);
    if (!f_.Has(key)) return fallback;
    TANDEM_ASSIGN_OR_RETURN(float v, f_.GetF32(key));
    if (!std::isfinite(v) || v <= 0) {
      return Error(Cat("metadata key '", key, "' is ", v, "; expected a positive number"));
    }
    return v;
  }

  // Checks that `name` exists with `dims` (ne0 first); 1-D tensors (norms, biases) must be F32.
  absl::Status ExpectTensor(const std::string& name, const std::vector<int64_t>& dims) const {
    const GgufTensor* t = f_.FindTensor(name);
    if (t == nullptr) return Error(Cat("missing tensor '", name, "'"));
    if (t->dims != dims) {
      return Error(Cat("tensor '", name, "' has shape ", ShapeString(t->dims), ", expected ",
                       ShapeString(dims), " (ne0 first)"));
    }
    if (dims.size() == 1 && t->type != kernels::DType::kF32) {
      return Error(Cat("tensor '", name, "' has type ", kernels::DTypeName(t->type),
                       "; norm and bias vectors must be F32"));
    }
    return absl::OkStatus();
  }

 private:
  const GgufFile& f_;
  std::string arch_;
};

// Gemma 3's hyper-parameters beyond Llama's, with llama.cpp's defaults: every sixth layer
// global (attention.sliding_window_pattern: a period, or one bool per layer), local layers
// with RoPE base rope.freq_base_swa (10000), the query scaled by 1/sqrt(head_dim) (the 62-layer
// 27B model by 1/sqrt(hidden / heads)).
absl::Status ReadGemma3(const GgufFile& file, const ConfigReader& r, ModelConfig* c) {
  c->embedding_scale = std::sqrt(static_cast<float>(c->hidden));
  c->has_qk_norm = true;
  c->has_post_norms = true;
  c->f16_overflows = true;
  c->ffn_activation = FfnActivation::kGeluTanh;
  if (c->n_layers == 62) {
    c->attention_scale = 1.0f / std::sqrt(static_cast<float>(c->hidden / c->n_heads));
  }
  // A window of 0 (as some converters write for "none") is no window, as llama.cpp reads it.
  const std::string window_key = r.Key("attention.sliding_window");
  const bool window_zero = file.Has(window_key) && file.GetU32(window_key).value_or(1) == 0;
  TANDEM_ASSIGN_OR_RETURN(c->sliding_window,
                          window_zero ? 0 : r.OptionalSize("attention.sliding_window", 0));
  if (c->sliding_window > 0) {
    c->swa_layers.assign(c->n_layers, false);
    const std::string pattern_key = r.Key("attention.sliding_window_pattern");
    const GgufValue* pattern = file.Find(pattern_key);
    if (pattern != nullptr && pattern->type == GgufType::kArray) {
      // One entry per layer (bool or integer), non-zero for a sliding-window layer.
      if (pattern->count != static_cast<uint64_t>(c->n_layers)) {
        return r.Error(Cat("'", pattern_key, "' has ", pattern->count, " entries for ", c->n_layers,
                           " layers"));
      }
      if (pattern->elem_type == GgufType::kBool || pattern->elem_type == GgufType::kU8 ||
          pattern->elem_type == GgufType::kI8) {
        for (int il = 0; il < c->n_layers; ++il) c->swa_layers[il] = pattern->raw[il] != 0;
      } else {
        TANDEM_ASSIGN_OR_RETURN(std::vector<int32_t> flags, file.GetI32Array(pattern_key));
        for (int il = 0; il < c->n_layers; ++il) c->swa_layers[il] = flags[il] != 0;
      }
    } else {
      TANDEM_ASSIGN_OR_RETURN(int period, r.OptionalSize("attention.sliding_window_pattern", 6));
      for (int il = 0; il < c->n_layers; ++il) c->swa_layers[il] = il % period < period - 1;
    }
    TANDEM_ASSIGN_OR_RETURN(c->rope_theta_swa, r.OptionalFloat("rope.freq_base_swa", 10000.0f));
  }
  // Not implemented (refused rather than run wrong): logit soft-capping and RoPE scaling
  // (Gemma 3 4B and larger scale the global layers' positions by 1/8).
  if (file.Has(r.Key("final_logit_softcapping"))) {
    TANDEM_ASSIGN_OR_RETURN(float cap, file.GetF32(r.Key("final_logit_softcapping")));
    if (cap != 0.0f) {
      return absl::UnimplementedError(
          Cat("model '", file.path(), "': final logit soft-capping (", cap, ") is not supported"));
    }
  }
  if (file.Has(r.Key("rope.scaling.factor"))) {
    TANDEM_ASSIGN_OR_RETURN(float factor, file.GetF32(r.Key("rope.scaling.factor")));
    std::string type = "linear";
    if (file.Has(r.Key("rope.scaling.type"))) {
      TANDEM_ASSIGN_OR_RETURN(type, file.GetString(r.Key("rope.scaling.type")));
    }
    if (factor != 1.0f && factor != 0.0f && type != "none") {
      return absl::UnimplementedError(Cat("model '", file.path(), "': RoPE scaling (", type,
                                          ", factor ", factor, ") is not supported yet"));
    }
  }
  for (const char* name : {"dense_2.weight", "dense_3.weight"}) {
    if (file.FindTensor(name) != nullptr) {
      return absl::UnimplementedError(Cat("model '", file.path(), "': tensor '", name,
                                          "' (an embedding model's projection) is not supported"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromGguf(const GgufFile& file) {
  ModelConfig c;
  if (!file.Has("general.architecture")) {
    return absl::InvalidArgumentError(
        Cat("model '", file.path(), "': missing metadata key 'general.architecture'"));
  }
  TANDEM_ASSIGN_OR_RETURN(c.architecture, file.GetString("general.architecture"));
  float default_eps;
  if (c.architecture == "llama" || c.architecture == "mistral") {
    c.rope_style = kernels::RopeStyle::kNormal;
    default_eps = 1e-5f;
  } else if (c.architecture == "qwen2") {
    c.rope_style = kernels::RopeStyle::kNeox;
    default_eps = 1e-6f;
  } else if (c.architecture == "gemma3") {
    c.rope_style = kernels::RopeStyle::kNeox;
    default_eps = 1e-6f;
  } else {
    return absl::UnimplementedError(
        Cat("model '", file.path(), "': architecture '", c.architecture,
            "' is not supported; tandem supports llama (and mistral as llama), qwen2 and gemma3"));
  }
  const ConfigReader r(file, c.architecture);

  TANDEM_ASSIGN_OR_RETURN(c.n_layers, r.Size("block_count"));
  TANDEM_ASSIGN_OR_RETURN(c.hidden, r.Size("embedding_length"));
  TANDEM_ASSIGN_OR_RETURN(c.ffn_dim, r.Size("feed_forward_length"));
  TANDEM_ASSIGN_OR_RETURN(c.n_heads, r.Size("attention.head_count"));
  TANDEM_ASSIGN_OR_RETURN(c.n_kv_heads, r.OptionalSize("attention.head_count_kv", c.n_heads));
  TANDEM_ASSIGN_OR_RETURN(c.context_length, r.Size("context_length"));
  TANDEM_ASSIGN_OR_RETURN(c.rope_theta, r.OptionalFloat("rope.freq_base", 10000.0f));
  TANDEM_ASSIGN_OR_RETURN(c.rms_eps,
                          r.OptionalFloat("attention.layer_norm_rms_epsilon", default_eps));

  if (file.Has(r.Key("attention.key_length"))) {
    TANDEM_ASSIGN_OR_RETURN(c.head_dim, r.Size("attention.key_length"));
  } else {
    if (c.hidden % c.n_heads != 0) {
      return r.Error(Cat("hidden size ", c.hidden, " is not divisible by the ", c.n_heads,
                         " attention heads"));
    }
    c.head_dim = c.hidden / c.n_heads;
  }
  TANDEM_ASSIGN_OR_RETURN(int value_dim, r.OptionalSize("attention.value_length", c.head_dim));
  if (value_dim != c.head_dim) {
    return r.Error(Cat("value head size ", value_dim, " differs from key head size ", c.head_dim,
                       "; tandem needs them equal"));
  }
  if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0) {
    return r.Error(
        Cat(c.n_heads, " attention heads are not a multiple of the ", c.n_kv_heads, " KV heads"));
  }
  if (c.head_dim % 2 != 0) {
    return r.Error(Cat("head size ", c.head_dim, " is odd; RoPE needs it even"));
  }
  TANDEM_ASSIGN_OR_RETURN(c.rope_dim, r.OptionalSize("rope.dimension_count", c.head_dim));
  if (c.rope_dim > c.head_dim || c.rope_dim % 2 != 0) {
    return r.Error(Cat("rope dimension count ", c.rope_dim,
                       " must be even and at most the head size ", c.head_dim));
  }

  c.attention_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  if (c.architecture == "gemma3") TANDEM_RETURN_IF_ERROR(ReadGemma3(file, r, &c));

  // Vocabulary: the explicit key, else the tokenizer's token list.
  if (file.Has(r.Key("vocab_size"))) {
    TANDEM_ASSIGN_OR_RETURN(c.vocab_size, r.Size("vocab_size"));
  } else if (file.Has("tokenizer.ggml.tokens")) {
    TANDEM_ASSIGN_OR_RETURN(uint64_t n, file.GetArrayLength("tokenizer.ggml.tokens"));
    if (n == 0 || n > kMaxDim) {
      return r.Error(Cat("tokenizer.ggml.tokens has ", n, " entries"));
    }
    c.vocab_size = static_cast<int>(n);
  } else {
    return r.Error(Cat("cannot tell the vocabulary size: neither '", r.Key("vocab_size"),
                       "' nor 'tokenizer.ggml.tokens' is present"));
  }

  // Tensors: everything Forward reads, with shapes ne0 first (ne0 = input features).
  const int64_t h = c.hidden, q = c.q_dim(), kv = c.kv_dim(), ffn = c.ffn_dim;
  TANDEM_RETURN_IF_ERROR(r.ExpectTensor("token_embd.weight", {h, c.vocab_size}));
  TANDEM_RETURN_IF_ERROR(r.ExpectTensor("output_norm.weight", {h}));
  c.tied_embeddings = file.FindTensor("output.weight") == nullptr;
  if (!c.tied_embeddings) {
    TANDEM_RETURN_IF_ERROR(r.ExpectTensor("output.weight", {h, c.vocab_size}));
  }
  c.has_qkv_bias = file.FindTensor("blk.0.attn_q.bias") != nullptr;
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = Cat("blk.", l, ".");
    if (c.has_qk_norm) {
      TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "attn_q_norm.weight", {c.head_dim}));
      TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "attn_k_norm.weight", {c.head_dim}));
    }
    if (c.has_post_norms) {
      TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "post_attention_norm.weight", {h}));
      TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "post_ffw_norm.weight", {h}));
    }
    TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "attn_norm.weight", {h}));
    TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "attn_q.weight", {h, q}));
    TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "attn_k.weight", {h, kv}));
    TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "attn_v.weight", {h, kv}));
    TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "attn_output.weight", {q, h}));
    TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "ffn_norm.weight", {h}));
    TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "ffn_gate.weight", {h, ffn}));
    TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "ffn_up.weight", {h, ffn}));
    TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "ffn_down.weight", {ffn, h}));
    if (c.has_qkv_bias) {
      TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "attn_q.bias", {q}));
      TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "attn_k.bias", {kv}));
      TANDEM_RETURN_IF_ERROR(r.ExpectTensor(p + "attn_v.bias", {kv}));
    } else if (file.FindTensor(p + "attn_q.bias") != nullptr) {
      return r.Error(Cat("tensor '", p,
                         "attn_q.bias' is present but blk.0 has no "
                         "attention biases; biases must be in every layer or none"));
    }
  }
  if (file.FindTensor(Cat("blk.", c.n_layers, ".attn_norm.weight")) != nullptr) {
    return r.Error(Cat("the file has tensors for layer ", c.n_layers, " but ", r.Key("block_count"),
                       " is ", c.n_layers));
  }
  return c;
}

}  // namespace tandem::model
