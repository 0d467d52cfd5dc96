// tandem-make-test-model: writes a tiny synthetic GGUF model (see tests/support/test_model.h).
//   tandem-make-test-model --out /tmp/tiny.gguf --type q4_1 --layers 2 --gqa
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "tests/support/test_model.h"

ABSL_FLAG(std::string, out, "", "output path (required)");
ABSL_FLAG(std::string, type, "q8_0", "linear weight type: f32 f16 bf16 q4_0 q4_1 q8_0");
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
  const absl::Status st = tandem::testing::WriteTestModel(spec, out);
  if (!st.ok()) {
    std::fprintf(stderr, "tandem-make-test-model: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s\n", out.c_str());
  return 0;
}
