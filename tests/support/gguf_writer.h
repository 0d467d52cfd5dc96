// GgufWriter: builds GGUF files (version 3 by default) for tests and the synthetic model
// generator. It writes exactly what it is told, including things a reader must reject
// (duplicate keys, raw type ids, wrong offsets), so tests can produce corrupt files too.
//
// Thread safety: a plain builder; use from one thread.
#ifndef TANDEM_TESTS_SUPPORT_GGUF_WRITER_H_
#define TANDEM_TESTS_SUPPORT_GGUF_WRITER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "kernels/quant.h"
#include "model/gguf_file.h"

namespace tandem::testing {

class GgufWriter {
 public:
  // One metadata entry: `type` is the GGUF value type id, `payload` its encoded bytes.
  struct Kv {
    std::string key;
    uint32_t type;
    std::string payload;
  };
  // One tensor: `type` is the raw GGUF type id; `data` is written aligned in the data
  // section. `info_offset`, when set, replaces the offset written in the tensor info
  // (the data still goes where the writer would put it), for corruption tests. `values`
  // keeps the floats AddTensor quantized (empty for raw tensors), so tests can check a
  // quantizer against another implementation.
  struct Tensor {
    std::string name;
    uint32_t type;
    std::vector<uint64_t> dims;  // ne0 first
    std::string data;
    std::optional<uint64_t> info_offset;
    std::vector<float> values;
  };

  // Encoders for building payloads by hand (nested arrays, corrupt values).
  static std::string EncodeString(std::string_view s);
  static std::string EncodeArrayHeader(model::GgufType elem, uint64_t count);
  template <typename T>
  static std::string EncodePod(const T& v) {
    return std::string(reinterpret_cast<const char*>(&v), sizeof(T));
  }

  // Typed metadata setters (append; a key added twice is written twice).
  void AddU8(std::string key, uint8_t v);
  void AddI8(std::string key, int8_t v);
  void AddU16(std::string key, uint16_t v);
  void AddI16(std::string key, int16_t v);
  void AddU32(std::string key, uint32_t v);
  void AddI32(std::string key, int32_t v);
  void AddU64(std::string key, uint64_t v);
  void AddI64(std::string key, int64_t v);
  void AddF32(std::string key, float v);
  void AddF64(std::string key, double v);
  void AddBool(std::string key, bool v);
  void AddString(std::string key, std::string_view v);
  void AddStringArray(std::string key, const std::vector<std::string>& v);
  void AddI32Array(std::string key, const std::vector<int32_t>& v);
  void AddF32Array(std::string key, const std::vector<float>& v);
  // Any value from its type id and encoded payload.
  void AddRaw(std::string key, uint32_t type, std::string payload);
  // Writes general.alignment (uint32) and pads the data section to it.
  void SetAlignment(uint32_t alignment);
  void set_version(uint32_t v) { version_ = v; }
  void RemoveKey(std::string_view key);  // removes every entry with this key
  Kv* FindKey(std::string_view key);     // first entry with this key, or null

  // Tensors. AddTensor quantizes `values` (row-major, dims[0] contiguous) to `type`.
  void AddTensor(std::string name, kernels::DType type, std::vector<uint64_t> dims,
                 const std::vector<float>& values);
  void AddRawTensor(Tensor t) { tensors_.push_back(std::move(t)); }
  void RemoveTensor(std::string_view name);
  Tensor* FindTensor(std::string_view name);
  std::vector<Tensor>& tensors() { return tensors_; }
  std::vector<Kv>& metadata() { return kv_; }

  // The whole file, laid out as a reader expects (data section aligned, tensors aligned).
  std::string Serialize() const;
  absl::Status WriteFile(const std::string& path) const;

 private:
  uint32_t version_ = 3;
  uint32_t alignment_ = 32;
  std::vector<Kv> kv_;
  std::vector<Tensor> tensors_;
};

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_SUPPORT_GGUF_WRITER_H_
