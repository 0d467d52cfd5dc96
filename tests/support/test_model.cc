#include "tests/support/test_model.h"

#include <cmath>
#include <cstdio>
#include <random>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace tandem::testing {
namespace {

using kernels::DType;

constexpr char kChatMlTemplate[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

// GGUF token types.
constexpr int32_t kTokenNormal = 1;
constexpr int32_t kTokenControl = 3;
constexpr int32_t kTokenUnused = 5;

std::string EncodeUtf8(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

// Seeded normal samples; Box-Muller over mt19937_64 so the values are the same with every
// standard library (std::normal_distribution is implementation-defined).
class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  double Uniform() {  // in (0, 1)
    return (static_cast<double>(gen_() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  }
  float Normal(float stddev) {
    const double u1 = Uniform(), u2 = Uniform();
    return static_cast<float>(stddev * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
  }
  std::vector<float> Normals(size_t n, float stddev) {
    std::vector<float> v(n);
    for (float& x : v) x = Normal(stddev);
    return v;
  }
  std::vector<float> NearOne(size_t n) {  // norm weights: uniform in [0.9, 1.1)
    std::vector<float> v(n);
    for (float& x : v) x = static_cast<float>(0.9 + 0.2 * Uniform());
    return v;
  }

 private:
  std::mt19937_64 gen_;
};

absl::Status CheckSpec(const TestModelSpec& s) {
  auto bad = [](std::string_view msg) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad TestModelSpec: ", absl::string_view(msg.data(), msg.size())));
  };
  if (s.arch != "llama" && s.arch != "qwen2" && s.arch != "gemma3") {
    return bad("arch must be llama, qwen2 or gemma3");
  }
  if (s.n_layers < 1 || s.hidden < 1 || s.n_heads < 1 || s.n_kv_heads < 1 || s.ffn < 1) {
    return bad("sizes must be positive");
  }
  if ((s.head_dim == 0 && s.hidden % s.n_heads != 0) || s.n_heads % s.n_kv_heads != 0) {
    return bad("n_heads must divide hidden and n_kv_heads must divide n_heads");
  }
  const int head_dim = s.head_dim != 0 ? s.head_dim : s.hidden / s.n_heads;
  if (head_dim % 2 != 0) return bad("head_dim must be even");
  if (s.head_dim != 0 && (s.n_heads * s.head_dim) % kernels::BlockElems(s.weight_type) != 0) {
    return bad("n_heads * head_dim must be a multiple of the quantization block");
  }
  for (DType t : {s.weight_type, s.embd_type}) {
    if (!kernels::IsSupported(t)) return bad("unsupported tensor type");
    const int64_t block = kernels::BlockElems(t);
    if (s.hidden % block != 0 || s.ffn % block != 0) {
      return bad(
          "hidden and ffn must be multiples of the quantization block (32, or 256 for K-quants)");
    }
  }
  if (s.vocab != 0 && s.vocab < TestTokenizerSize()) {
    return bad(absl::StrCat("vocab must be 0 or at least ", TestTokenizerSize()));
  }
  return absl::OkStatus();
}

}  // namespace

std::string ByteToUnicode(uint8_t b) {
  // Printable bytes stand for themselves; the rest map, in byte order, to 256, 257, ...
  auto printable = [](int c) {
    return (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
  };
  if (printable(b)) return EncodeUtf8(b);
  uint32_t n = 0;
  for (int c = 0; c < b; ++c) {
    if (!printable(c)) ++n;
  }
  return EncodeUtf8(256 + n);
}

const std::vector<std::pair<std::string, std::string>>& TestTokenizerMerges() {
  static const auto* merges = [] {
    const std::string sp = ByteToUnicode(' '), nl = ByteToUnicode('\n');
    return new std::vector<std::pair<std::string, std::string>>{
        {"t", "h"},       {"h", "e"},         {"i", "n"},  {"e", "r"},   {"a", "n"},
        {"o", "n"},       {"r", "e"},         {"e", "n"},  {"o", "r"},   {"i", "s"},
        {"a", "t"},       {"e", "s"},         {"o", "u"},  {"l", "l"},   {sp, "t"},
        {sp, "a"},        {sp, "s"},          {sp, "w"},   {sp, "i"},    {sp, "o"},
        {sp, "c"},        {sp, "h"},          {sp, "y"},   {"th", "e"},  {sp, "the"},
        {"in", "g"},      {"an", "d"},        {sp, "and"}, {"he", "ll"}, {"hell", "o"},
        {sp, "hello"},    {sp + "y", "ou"},   {"w", "or"}, {"l", "d"},   {"wor", "ld"},
        {sp + "w", "or"}, {sp + "wor", "ld"}, {"0", "0"},  {nl, nl},     {sp, sp},
        {sp + "i", "s"}};
  }();
  return *merges;
}

int TestTokenizerSize() { return 3 + 256 + static_cast<int>(TestTokenizerMerges().size()); }

TestModelSpec SlidingWindowTestSpec() {
  TestModelSpec spec;
  spec.arch = "gemma3";
  spec.n_layers = 6;
  spec.sliding_window = 8;
  spec.swa_pattern = 3;
  spec.rope_theta_swa = 1000.0f;
  spec.context_length = 256;
  spec.weight_std = 0.2f;
  spec.embd_std = 0.5f;
  return spec;
}

absl::StatusOr<GgufWriter> BuildTestModel(const TestModelSpec& spec) {
  TANDEM_RETURN_IF_ERROR(CheckSpec(spec));
  GgufWriter w;
  const std::string& a = spec.arch;
  const int head_dim = spec.head_dim != 0 ? spec.head_dim : spec.hidden / spec.n_heads;
  const bool gemma = a == "gemma3";
  w.AddString("general.architecture", a);
  w.AddString("general.name", "tandem-test");
  w.SetAlignment(spec.alignment);
  w.AddU32(a + ".context_length", spec.context_length);
  w.AddU32(a + ".embedding_length", spec.hidden);
  w.AddU32(a + ".block_count", spec.n_layers);
  w.AddU32(a + ".feed_forward_length", spec.ffn);
  w.AddU32(a + ".attention.head_count", spec.n_heads);
  w.AddU32(a + ".attention.head_count_kv", spec.n_kv_heads);
  w.AddU32(a + ".rope.dimension_count", head_dim);
  w.AddF32(a + ".rope.freq_base", spec.rope_theta);
  w.AddF32(a + ".attention.layer_norm_rms_epsilon", spec.rms_eps);
  if (spec.head_dim != 0) {
    w.AddU32(a + ".attention.key_length", head_dim);
    w.AddU32(a + ".attention.value_length", head_dim);
  }
  if (gemma && spec.sliding_window > 0) {
    w.AddU32(a + ".attention.sliding_window", spec.sliding_window);
  }
  if (gemma && spec.swa_pattern > 0) {
    w.AddU32(a + ".attention.sliding_window_pattern", spec.swa_pattern);
  }
  if (gemma && spec.rope_theta_swa > 0) w.AddF32(a + ".rope.freq_base_swa", spec.rope_theta_swa);

  // Tokenizer.
  std::vector<std::string> tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  std::vector<int32_t> types(3, kTokenControl);
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(ByteToUnicode(static_cast<uint8_t>(b)));
    types.push_back(kTokenNormal);
  }
  std::set<std::string> seen(tokens.begin(), tokens.end());
  std::vector<std::string> merges;
  for (const auto& [left, right] : TestTokenizerMerges()) {
    // Every merge joins two existing tokens into a new one (a broken list is a bug here).
    TANDEM_CHECK(seen.count(left) == 1 && seen.count(right) == 1);
    TANDEM_CHECK(seen.insert(left + right).second);
    tokens.push_back(left + right);
    types.push_back(kTokenNormal);
    merges.push_back(left + " " + right);
  }
  const int vocab = spec.vocab == 0 ? static_cast<int>(tokens.size()) : spec.vocab;
  for (int i = static_cast<int>(tokens.size()); i < vocab; ++i) {
    tokens.push_back(absl::StrCat("<|pad_", i, "|>"));
    types.push_back(kTokenUnused);
  }
  w.AddString("tokenizer.ggml.model", "gpt2");
  w.AddString("tokenizer.ggml.pre", "default");
  w.AddStringArray("tokenizer.ggml.tokens", tokens);
  w.AddI32Array("tokenizer.ggml.token_type", types);
  w.AddStringArray("tokenizer.ggml.merges", merges);
  w.AddU32("tokenizer.ggml.bos_token_id", 1);
  w.AddU32("tokenizer.ggml.eos_token_id", 2);
  w.AddU32("tokenizer.ggml.unknown_token_id", 0);
  w.AddU32("tokenizer.ggml.padding_token_id", 2);
  w.AddBool("tokenizer.ggml.add_bos_token", false);
  w.AddString("tokenizer.chat_template", kChatMlTemplate);

  // Weights, ne0 first: a linear layer [in, out] holds `out` rows of `in` elements.
  Rng rng(spec.seed);
  const uint64_t h = spec.hidden, q = spec.n_heads * head_dim, kv = spec.n_kv_heads * head_dim,
                 ffn = spec.ffn, v = vocab;
  auto linear = [&](const std::string& name, DType type, uint64_t in, uint64_t out, float std) {
    w.AddTensor(name, type, {in, out}, rng.Normals(in * out, std));
  };
  auto vec = [&](const std::string& name, std::vector<float> values) {
    const uint64_t n = values.size();
    w.AddTensor(name, DType::kF32, {n}, values);
  };
  linear("token_embd.weight", spec.embd_type, h, v, spec.embd_std);
  for (int l = 0; l < spec.n_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    vec(p + "attn_norm.weight", rng.NearOne(h));
    linear(p + "attn_q.weight", spec.weight_type, h, q, spec.weight_std);
    linear(p + "attn_k.weight", spec.weight_type, h, kv, spec.weight_std);
    linear(p + "attn_v.weight", spec.weight_type, h, kv, spec.weight_std);
    if (spec.qkv_bias) {
      vec(p + "attn_q.bias", rng.Normals(q, 0.02f));
      vec(p + "attn_k.bias", rng.Normals(kv, 0.02f));
      vec(p + "attn_v.bias", rng.Normals(kv, 0.02f));
    }
    linear(p + "attn_output.weight", spec.weight_type, q, h, spec.weight_std);
    vec(p + "ffn_norm.weight", rng.NearOne(h));
    linear(p + "ffn_gate.weight", spec.weight_type, h, ffn, spec.weight_std);
    linear(p + "ffn_up.weight", spec.weight_type, h, ffn, spec.weight_std);
    linear(p + "ffn_down.weight", spec.weight_type, ffn, h, spec.weight_std);
    if (gemma) {
      vec(p + "attn_q_norm.weight", rng.NearOne(head_dim));
      vec(p + "attn_k_norm.weight", rng.NearOne(head_dim));
      vec(p + "post_attention_norm.weight", rng.NearOne(h));
      vec(p + "post_ffw_norm.weight", rng.NearOne(h));
    }
  }
  vec("output_norm.weight", rng.NearOne(h));
  if (!spec.tied) linear("output.weight", spec.embd_type, h, v, spec.embd_std);
  return w;
}

absl::Status WriteTestModel(const TestModelSpec& spec, const std::string& path) {
  TANDEM_ASSIGN_OR_RETURN(GgufWriter w, BuildTestModel(spec));
  return w.WriteFile(path);
}

absl::Status WriteCorruptTestModel(const TestModelSpec& spec, ModelCorruption kind,
                                   const std::string& path) {
  TANDEM_ASSIGN_OR_RETURN(GgufWriter w, BuildTestModel(spec));
  switch (kind) {
    case ModelCorruption::kTruncated:
    case ModelCorruption::kBadMagic:
      break;  // byte-level edits below
    case ModelCorruption::kMissingTensor:
      w.RemoveTensor("blk.0.ffn_up.weight");
      break;
    case ModelCorruption::kWrongShape: {
      GgufWriter::Tensor* t = w.FindTensor("blk.0.attn_k.weight");
      TANDEM_CHECK(t != nullptr);
      // Keep the byte size consistent so only the shape is wrong, not the file.
      const uint64_t out = t->dims[1];
      t->dims[1] = out * 2;
      t->data += t->data;
      break;
    }
    case ModelCorruption::kUnknownArch:
      w.FindKey("general.architecture")->payload = GgufWriter::EncodeString("gpt-j");
      break;
    case ModelCorruption::kUnsupportedType:
      w.FindTensor("blk.0.attn_q.weight")->type = 20;  // IQ4_NL
      break;
  }
  std::string bytes = w.Serialize();
  if (kind == ModelCorruption::kTruncated) bytes.resize(bytes.size() - bytes.size() / 3);
  if (kind == ModelCorruption::kBadMagic) bytes.replace(0, 4, "GGML");
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return absl::UnavailableError("cannot create " + path);
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  if (std::fclose(f) != 0 || !ok) return absl::UnavailableError("cannot write " + path);
  return absl::OkStatus();
}

absl::StatusOr<kernels::DType> ParseDType(std::string_view name) {
  const std::string n = absl::AsciiStrToLower(absl::string_view(name.data(), name.size()));
  if (n == "f32") return DType::kF32;
  if (n == "f16") return DType::kF16;
  if (n == "bf16") return DType::kBF16;
  if (n == "q4_0") return DType::kQ4_0;
  if (n == "q4_1") return DType::kQ4_1;
  if (n == "q5_0") return DType::kQ5_0;
  if (n == "q5_1") return DType::kQ5_1;
  if (n == "q8_0") return DType::kQ8_0;
  if (n == "q2_k") return DType::kQ2_K;
  if (n == "q3_k") return DType::kQ3_K;
  if (n == "q4_k") return DType::kQ4_K;
  if (n == "q5_k") return DType::kQ5_K;
  if (n == "q6_k") return DType::kQ6_K;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown tensor type '", absl::string_view(name.data(), name.size()),
      "'; expected f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k or q6_k"));
}

}  // namespace tandem::testing
