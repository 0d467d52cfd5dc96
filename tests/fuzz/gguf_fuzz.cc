// libFuzzer target for the GGUF reader: any byte string must give either a valid GgufFile
// whose every view stays in bounds, or an error; never a crash, hang or huge allocation.
// Build with clang from the repository root, then run it over a seed corpus written by
// tandem-make-test-model (small models: --hidden 32 --heads 2 --ffn 32 --layers 1):
//   clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -I. tests/fuzz/gguf_fuzz.cc \
//     model/gguf_file.cc model/model_config.cc kernels/quant.cc \
//     $(pkg-config --libs absl_statusor absl_strings absl_str_format absl_raw_hash_set \
//       absl_hash) \
//     -o gguf_fuzz
//   ./gguf_fuzz -max_len=65536 -rss_limit_mb=2048 corpus/
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "model/gguf_file.h"
#include "model/model_config.h"

namespace {

// Reads every byte a consumer could be handed, so ASan sees any out-of-bounds view.
uint64_t Touch(const tandem::model::GgufValue& v) {
  uint64_t sum = v.i + v.u + v.str.size();
  for (char c : v.str) sum += static_cast<unsigned char>(c);
  for (std::string_view s : v.strings) {
    for (char c : s) sum += static_cast<unsigned char>(c);
  }
  for (const auto& item : v.items) sum += Touch(item);
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = tandem::model::GgufFile::FromBuffer(
      std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!file.ok()) return 0;
  const tandem::model::GgufFile& f = **file;
  volatile uint64_t sink = 0;
  for (const auto& [key, value] : f.metadata()) {
    sink = sink + Touch(value) + key.size();
    (void)f.GetU32(key);
    (void)f.GetF32(key);
    (void)f.GetI32Array(key);
    (void)f.GetF32Array(key);
    (void)f.GetStringArray(key);
  }
  for (const auto& t : f.tensors()) {
    const auto* p = static_cast<const uint8_t*>(t.data);
    if (t.bytes > 0) sink = sink + p[0] + p[t.bytes - 1];
  }
  (void)tandem::model::ModelConfig::FromGguf(f);
  return 0;
}
