// tandem-make-test-model: writes a tiny synthetic GGUF model (see tests/support/test_model.h).
//   tandem-make-test-model --out /tmp/tiny.gguf --type q4_1 --layers 2 --gqa
// With --dump_values it also writes, for every tensor in file order, the floats it quantized
// and what kernels::DequantizeRow decodes from the stored data, so another implementation
// (tests/kernels/gguf_quants_test.py: gguf-py) can be checked against tandem's formats.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "tests/support/test_model.h"

ABSL_FLAG(std::string, out, "", "output path (required)");
ABSL_FLAG(std::string, type, "q8_0",
          "linear weight type: f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0, or q2_k q3_k q4_k q5_k "
          "q6_k (K-quants need --hidden and --ffn multiples of 256)");
ABSL_FLAG(std::string, embd_type, "q8_0", "token embedding (and output) type");
ABSL_FLAG(std::string, arch, "llama", "architecture: llama or qwen2");
ABSL_FLAG(int, layers, 2, "number of layers");
ABSL_FLAG(int, hidden, 64, "hidden size");
ABSL_FLAG(int, heads, 4, "attention heads");
ABSL_FLAG(int, kv_heads, 0, "KV heads (0: heads, or heads / 2 with --gqa)");
ABSL_FLAG(bool, gqa, false, "grouped-query attention with heads / 2 KV heads");
ABSL_FLAG(int, ffn, 128, "feed-forward size");
ABSL_FLAG(int, vocab, 0, "vocabulary size (0: the tokenizer's natural size)");
ABSL_FLAG(int, context, 256, "context length");
ABSL_FLAG(bool, untied, false, "write a separate output.weight");
ABSL_FLAG(bool, qkv_bias, false, "write attention Q/K/V biases");
ABSL_FLAG(uint32_t, seed, 1, "random seed");
ABSL_FLAG(uint32_t, alignment, 32, "general.alignment");
ABSL_FLAG(std::string, dump_values, "",
          "also write here, per tensor in file order, n source floats then the n floats "
          "DequantizeRow decodes (float32, little-endian)");

namespace {

absl::Status DumpValues(tandem::testing::GgufWriter& w, const std::string& path) {
  for (const auto& t : w.tensors()) {
    if (t.values.empty()) return absl::InternalError("tensor " + t.name + " has no source values");
  }
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return absl::UnavailableError("cannot create " + path);
  bool ok = true;
  for (const auto& t : w.tensors()) {
    const auto type = static_cast<tandem::kernels::DType>(t.type);
    const int64_t cols = static_cast<int64_t>(t.dims[0]);
    const int64_t rows = static_cast<int64_t>(t.values.size()) / cols;
    const int64_t row_bytes = tandem::kernels::RowBytes(type, cols);
    std::vector<float> decoded(t.values.size());
    for (int64_t r = 0; r < rows; ++r) {
      tandem::kernels::DequantizeRow(type, t.data.data() + r * row_bytes, cols,
                                     decoded.data() + r * cols);
    }
    ok = ok && std::fwrite(t.values.data(), 4, t.values.size(), f) == t.values.size();
    ok = ok && std::fwrite(decoded.data(), 4, decoded.size(), f) == decoded.size();
  }
  if (std::fclose(f) != 0 || !ok) return absl::UnavailableError("cannot write " + path);
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Writes a tiny synthetic GGUF model for tests.");
  absl::ParseCommandLine(argc, argv);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) {
    std::fprintf(stderr, "tandem-make-test-model: --out is required\n");
    return 2;
  }
  tandem::testing::TestModelSpec spec;
  auto type = tandem::testing::ParseDType(absl::GetFlag(FLAGS_type));
  auto embd = tandem::testing::ParseDType(absl::GetFlag(FLAGS_embd_type));
  for (const auto* s : {&type, &embd}) {
    if (!s->ok()) {
      std::fprintf(stderr, "tandem-make-test-model: %s\n", s->status().ToString().c_str());
      return 2;
    }
  }
  spec.weight_type = *type;
  spec.embd_type = *embd;
  spec.arch = absl::GetFlag(FLAGS_arch);
  spec.n_layers = absl::GetFlag(FLAGS_layers);
  spec.hidden = absl::GetFlag(FLAGS_hidden);
  spec.n_heads = absl::GetFlag(FLAGS_heads);
  spec.n_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  if (spec.n_kv_heads == 0) {
    spec.n_kv_heads = absl::GetFlag(FLAGS_gqa) ? spec.n_heads / 2 : spec.n_heads;
  }
  spec.ffn = absl::GetFlag(FLAGS_ffn);
  spec.vocab = absl::GetFlag(FLAGS_vocab);
  spec.context_length = absl::GetFlag(FLAGS_context);
  spec.tied = !absl::GetFlag(FLAGS_untied);
  spec.qkv_bias = absl::GetFlag(FLAGS_qkv_bias);
  spec.seed = absl::GetFlag(FLAGS_seed);
  spec.alignment = absl::GetFlag(FLAGS_alignment);
  auto writer = tandem::testing::BuildTestModel(spec);
  absl::Status st = writer.status();
  if (st.ok()) st = writer->WriteFile(out);
  const std::string dump = absl::GetFlag(FLAGS_dump_values);
  if (st.ok() && !dump.empty()) st = DumpValues(*writer, dump);
  if (!st.ok()) {
    std::fprintf(stderr, "tandem-make-test-model: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s\n", out.c_str());
  return 0;
}
