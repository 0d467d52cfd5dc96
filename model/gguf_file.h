// GgufFile: a read-only, validated view of a GGUF model file (versions 2 and 3).
//
// Open() maps the file (PROT_READ, MAP_PRIVATE) and parses the header, every metadata value
// (types 0..12, arrays nested to any reasonable depth) and the tensor infos. Everything is
// checked before it is trusted: each read is bounds-checked against the file size, counts
// that cannot fit in the remaining bytes are rejected before anything is allocated, and each
// tensor's type, shape, alignment and byte range are validated (no two tensors may overlap).
// Each error names the file and the key or tensor at fault. Strings (keys, values, string
// array elements) are string_views into the mapping, so parsing a 49152-entry token array
// costs one vector allocation.
//
// Thread safety: immutable after Open(); every const method may be called from any thread.
// Lifetime: string_views, spans and tensor data pointers stay valid while the GgufFile lives.
// Invariants (after a successful Open/FromBuffer): tensor names and metadata keys are unique;
// every tensor's [data, data + bytes) lies inside the data section, is aligned to
// alignment(), and does not overlap another tensor; bytes == RowBytes(type, dims[0]) * rows.
#ifndef TANDEM_MODEL_GGUF_FILE_H_
#define TANDEM_MODEL_GGUF_FILE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/quant.h"

namespace tandem::model {

// GGUF metadata value type ids (the numbers are the file format's).
enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
std::string_view GgufTypeName(GgufType t);

// One metadata value. Scalars are decoded eagerly; arrays keep a view of their elements.
struct GgufValue {
  GgufType type = GgufType::kU8;
  // Scalars. Integer types and bool fill `i` (signed) or `u` (unsigned); floats fill `f`.
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string_view str;  // kString
  // kArray: element type and count. Fixed-size numeric elements stay packed little-endian
  // in the file at `raw` (count * size bytes); strings are in `strings`; arrays in `items`.
  GgufType elem_type = GgufType::kU8;
  uint64_t count = 0;
  const uint8_t* raw = nullptr;
  std::vector<std::string_view> strings;
  std::vector<GgufValue> items;

  bool IsInteger() const;
  bool IsSigned() const;  // for integer types
};

struct GgufTensor {
  std::string name;
  kernels::DType type;
  std::vector<int64_t> dims;  // ne0 first: dims[0] is the contiguous (row) length
  const void* data;           // inside the mapping, aligned to the file's alignment
  uint64_t bytes;
  int64_t Elements() const;
  int64_t Rows() const { return Elements() / dims[0]; }
};

class GgufFile {
 public:
  // Maps and validates `path`. Errors: NotFound / PermissionDenied for the open,
  // InvalidArgument for a malformed file, Unimplemented for a valid file tandem cannot use
  // (version 1, unsupported tensor types).
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Same parser over a copy of `bytes` (used by the fuzzer and tests); `name` labels errors.
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBuffer(std::string_view bytes,
                                                              std::string name = "<buffer>");

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // start of the tensor data section
  uint64_t file_size() const { return size_; }

  // Metadata, in file order.
  const std::vector<std::pair<std::string_view, GgufValue>>& metadata() const { return kv_; }
  bool Has(std::string_view key) const { return kv_index_.contains(key); }
  const GgufValue* Find(std::string_view key) const;

  // Typed lookups. NotFound when the key is missing; InvalidArgument when its type cannot
  // be converted without loss (integers convert when the value fits the target; floats
  // accept f64 and integers that the target represents exactly).
  absl::StatusOr<std::string_view> GetStringView(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<uint32_t> GetU32(std::string_view key) const;
  absl::StatusOr<int32_t> GetI32(std::string_view key) const;
  absl::StatusOr<uint64_t> GetU64(std::string_view key) const;
  absl::StatusOr<float> GetF32(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  // Array lookups. Strings are views into the file (no copies).
  absl::StatusOr<absl::Span<const std::string_view>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<int32_t>> GetI32Array(std::string_view key) const;
  absl::StatusOr<std::vector<float>> GetF32Array(std::string_view key) const;
  // Length of any array value.
  absl::StatusOr<uint64_t> GetArrayLength(std::string_view key) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* FindTensor(std::string_view name) const;

 private:
  class Parser;
  GgufFile() = default;
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(std::unique_ptr<GgufFile> file);
  absl::StatusOr<const GgufValue*> Lookup(std::string_view key) const;

  // Constant after construction.
  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  bool mapped_ = false;  // base_ is an mmap (else an owned heap buffer)
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string_view, GgufValue>> kv_;
  absl::flat_hash_map<std::string_view, size_t> kv_index_;
  std::vector<GgufTensor> tensors_;
  absl::flat_hash_map<std::string_view, size_t> tensor_index_;
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_GGUF_FILE_H_
