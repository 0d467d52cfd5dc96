#include "model/gguf_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/check.h"
#include "common/str_cat.h"

namespace tandem::model {
namespace {

template <typename... Args>
std::string Cat(const Args&... args) {
  return ::tandem::StrCat(args...);
}

static_assert(std::endian::native == std::endian::little,
              "the GGUF reader decodes little-endian files in place");

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxDims = 4;
constexpr int kMaxArrayDepth = 8;  // deeper nesting is never legitimate; bounds recursion

// Names of GGUF tensor type ids (ggml's enum ggml_type), including those tandem cannot
// compute with and those ggml has since retired, so an unsupported file gets a useful message.
constexpr std::string_view kGgmlTypeNames[] = {
    "F32",   "F16",        "Q4_0",       "Q4_1",       "Q4_2",     "Q4_3",     "Q5_0",
    "Q5_1",  "Q8_0",       "Q8_1",       "Q2_K",       "Q3_K",     "Q4_K",     "Q5_K",
    "Q6_K",  "Q8_K",       "IQ2_XXS",    "IQ2_XS",     "IQ3_XXS",  "IQ1_S",    "IQ4_NL",
    "IQ3_S", "IQ2_S",      "IQ4_XS",     "I8",         "I16",      "I32",      "I64",
    "F64",   "IQ1_M",      "BF16",       "Q4_0_4_4",   "Q4_0_4_8", "Q4_0_8_8", "TQ1_0",
    "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4",    "NVFP4",    "Q1_0"};

std::string_view GgmlTypeName(uint32_t id) {
  if (id < std::size(kGgmlTypeNames)) return kGgmlTypeNames[id];
  return "unknown";
}

// "F32, F16, ...": the types kernels::IsSupported accepts, in type id order.
const std::string& SupportedTypeNames() {
  static const std::string names = [] {
    std::string s;
    for (uint32_t id = 0; id < std::size(kGgmlTypeNames); ++id) {
      if (!kernels::IsSupported(static_cast<kernels::DType>(id))) continue;
      if (!s.empty()) s += ", ";
      s += kGgmlTypeNames[id];
    }
    return s;
  }();
  return names;
}

// Size in bytes of a fixed-size scalar type; 0 for string and array.
uint64_t ScalarSize(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
      return 8;
    case GgufType::kString:
    case GgufType::kArray:
      return 0;
  }
  return 0;
}

bool ValidType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kF64); }

// Smallest encoding of one value of type `t`, used to reject counts that cannot fit.
uint64_t MinEncodedSize(GgufType t) {
  if (t == GgufType::kString) return 8;     // length
  if (t == GgufType::kArray) return 4 + 8;  // element type + count
  return ScalarSize(t);
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Decodes one little-endian scalar at `p` into the scalar fields of `out`.
void DecodeScalar(GgufType t, const uint8_t* p, GgufValue* out) {
  out->type = t;
  switch (t) {
    case GgufType::kU8:
      out->u = Load<uint8_t>(p);
      break;
    case GgufType::kI8:
      out->i = Load<int8_t>(p);
      break;
    case GgufType::kU16:
      out->u = Load<uint16_t>(p);
      break;
    case GgufType::kI16:
      out->i = Load<int16_t>(p);
      break;
    case GgufType::kU32:
      out->u = Load<uint32_t>(p);
      break;
    case GgufType::kI32:
      out->i = Load<int32_t>(p);
      break;
    case GgufType::kU64:
      out->u = Load<uint64_t>(p);
      break;
    case GgufType::kI64:
      out->i = Load<int64_t>(p);
      break;
    case GgufType::kF32:
      out->f = Load<float>(p);
      break;
    case GgufType::kF64:
      out->f = Load<double>(p);
      break;
    case GgufType::kBool:
      out->u = Load<uint8_t>(p);
      break;
    case GgufType::kString:
    case GgufType::kArray:
      TANDEM_CHECK(false && "not a scalar type");
  }
}

// Converts a decoded integer scalar to T when its value fits.
template <typename T>
bool IntegerTo(const GgufValue& v, T* out) {
  if (v.IsSigned()) {
    if (v.i < static_cast<int64_t>(std::numeric_limits<T>::min())) return false;
    if (v.i > 0 &&
        static_cast<uint64_t>(v.i) > static_cast<uint64_t>(std::numeric_limits<T>::max()))
      return false;
    *out = static_cast<T>(v.i);
    return true;
  }
  if (v.u > static_cast<uint64_t>(std::numeric_limits<T>::max())) return false;
  *out = static_cast<T>(v.u);
  return true;
}

// Converts a scalar to float when no precision is lost (f64 values are accepted when they
// round-trip through float, integers when |v| <= 2^24).
bool ToFloat(const GgufValue& v, float* out) {
  if (v.type == GgufType::kF32) {
    *out = static_cast<float>(v.f);
    return true;
  }
  if (v.type == GgufType::kF64) {
    const float f = static_cast<float>(v.f);
    if (!(static_cast<double>(f) == v.f) && !std::isnan(v.f)) return false;
    *out = f;
    return true;
  }
  if (v.IsInteger()) {
    constexpr int64_t kExact = int64_t{1} << 24;
    if (v.IsSigned() ? (v.i < -kExact || v.i > kExact) : v.u > static_cast<uint64_t>(kExact))
      return false;
    *out = v.IsSigned() ? static_cast<float>(v.i) : static_cast<float>(v.u);
    return true;
  }
  return false;
}

}  // namespace

std::string_view GgufTypeName(GgufType t) {
  switch (t) {
    case GgufType::kU8:
      return "uint8";
    case GgufType::kI8:
      return "int8";
    case GgufType::kU16:
      return "uint16";
    case GgufType::kI16:
      return "int16";
    case GgufType::kU32:
      return "uint32";
    case GgufType::kI32:
      return "int32";
    case GgufType::kF32:
      return "float32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kU64:
      return "uint64";
    case GgufType::kI64:
      return "int64";
    case GgufType::kF64:
      return "float64";
  }
  return "unknown";
}

bool GgufValue::IsInteger() const {
  switch (type) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kU16:
    case GgufType::kI16:
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kU64:
    case GgufType::kI64:
      return true;
    default:
      return false;
  }
}

bool GgufValue::IsSigned() const {
  return type == GgufType::kI8 || type == GgufType::kI16 || type == GgufType::kI32 ||
         type == GgufType::kI64;
}

int64_t GgufTensor::Elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;  // overflow was ruled out when the file was opened
  return n;
}

// Sequential, bounds-checked reader over the file; every failure names the file and the
// item being read (set by the caller through `what`).
class GgufFile::Parser {
 public:
  explicit Parser(GgufFile* file) : f_(file) {}

  absl::Status Run();

 private:
  uint64_t Remaining() const { return f_->size_ - pos_; }

  absl::Status Error(std::string_view msg) const {
    return absl::InvalidArgumentError(
        Cat("GGUF file '", f_->path_, "': ", msg, " (at byte offset ", pos_, ")"));
  }
  absl::Status Truncated(std::string_view what) const {
    return Error(Cat("file is truncated while reading ", what));
  }

  template <typename T>
  absl::Status Read(T* out, std::string_view what) {
    if (Remaining() < sizeof(T)) return Truncated(what);
    std::memcpy(out, f_->base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }

  absl::Status ReadString(std::string_view* out, std::string_view what) {
    uint64_t len = 0;
    TANDEM_RETURN_IF_ERROR(Read(&len, what));
    if (len > Remaining()) {
      return Error(Cat("string length ", len, " of ", what, " exceeds the ", Remaining(),
                       " bytes left in the file (truncated or corrupt)"));
    }
    *out = std::string_view(reinterpret_cast<const char*>(f_->base_ + pos_), len);
    pos_ += len;
    return absl::OkStatus();
  }

  absl::Status ReadValue(GgufType type, std::string_view key, int depth, GgufValue* out);
  absl::Status ReadTensorInfo(size_t index, GgufTensor* t, uint64_t* offset);

  GgufFile* f_;
  uint64_t pos_ = 0;
};

absl::Status GgufFile::Parser::ReadValue(GgufType type, std::string_view key, int depth,
                                         GgufValue* out) {
  out->type = type;
  if (type == GgufType::kString) {
    return ReadString(&out->str, Cat("the value of key '", key, "'"));
  }
  if (type != GgufType::kArray) {
    const uint64_t size = ScalarSize(type);
    if (Remaining() < size) return Truncated(Cat("the value of key '", key, "'"));
    DecodeScalar(type, f_->base_ + pos_, out);
    if (type == GgufType::kBool && out->u > 1) {
      return Error(Cat("key '", key, "': bool value ", out->u, " is not 0 or 1"));
    }
    pos_ += size;
    return absl::OkStatus();
  }
  if (depth >= kMaxArrayDepth) {
    return Error(Cat("key '", key, "': arrays nested deeper than ", kMaxArrayDepth));
  }
  uint32_t elem = 0;
  TANDEM_RETURN_IF_ERROR(Read(&elem, Cat("the array type of key '", key, "'")));
  if (!ValidType(elem)) {
    return Error(Cat("key '", key, "': unknown array element type ", elem));
  }
  out->elem_type = static_cast<GgufType>(elem);
  TANDEM_RETURN_IF_ERROR(Read(&out->count, Cat("the array length of key '", key, "'")));
  // Reject impossible counts before allocating anything for them.
  const uint64_t min_size = MinEncodedSize(out->elem_type);
  if (out->count > Remaining() / min_size) {
    return Error(Cat("key '", key, "': array of ", out->count, " ", GgufTypeName(out->elem_type),
                     " elements cannot fit in the ", Remaining(),
                     " bytes left in the file (truncated or corrupt)"));
  }
  switch (out->elem_type) {
    case GgufType::kString: {
      out->strings.resize(out->count);
      const std::string what = Cat("an element of string array '", key, "'");
      for (uint64_t j = 0; j < out->count; ++j) {
        TANDEM_RETURN_IF_ERROR(ReadString(&out->strings[j], what));
      }
      return absl::OkStatus();
    }
    case GgufType::kArray: {
      // Grown as items parse (each takes >= 12 file bytes) rather than sized up front:
      // nested arrays sized up front could each claim memory for the whole file.
      for (uint64_t j = 0; j < out->count; ++j) {
        out->items.emplace_back();
        TANDEM_RETURN_IF_ERROR(ReadValue(GgufType::kArray, key, depth + 1, &out->items.back()));
      }
      return absl::OkStatus();
    }
    default: {
      out->raw = f_->base_ + pos_;
      pos_ += out->count * min_size;
      if (out->elem_type == GgufType::kBool) {
        for (uint64_t j = 0; j < out->count; ++j) {
          if (out->raw[j] > 1) {
            return Error(Cat("key '", key, "': bool array element ", j, " is ", out->raw[j]));
          }
        }
      }
      return absl::OkStatus();
    }
  }
}

absl::Status GgufFile::Parser::ReadTensorInfo(size_t index, GgufTensor* t, uint64_t* offset) {
  std::string_view name;
  TANDEM_RETURN_IF_ERROR(ReadString(&name, Cat("the name of tensor #", index)));
  t->name = std::string(name);
  const std::string label = Cat("tensor '", t->name, "'");
  uint32_t n_dims = 0;
  TANDEM_RETURN_IF_ERROR(Read(&n_dims, Cat("the dimension count of ", label)));
  if (n_dims == 0 || n_dims > kMaxDims) {
    return Error(Cat(label, " has ", n_dims, " dimensions; expected 1 to ", kMaxDims));
  }
  t->dims.resize(n_dims);
  uint64_t elements = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    uint64_t ne = 0;
    TANDEM_RETURN_IF_ERROR(Read(&ne, Cat("the dimensions of ", label)));
    if (ne == 0) return Error(Cat(label, " has a zero dimension (dim ", d, ")"));
    if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / ne) {
      return Error(Cat(label, ": the element count overflows (dim ", d, " = ", ne, ")"));
    }
    elements *= ne;
    t->dims[d] = static_cast<int64_t>(ne);
  }
  uint32_t type_id = 0;
  TANDEM_RETURN_IF_ERROR(Read(&type_id, Cat("the type of ", label)));
  const auto type = static_cast<kernels::DType>(type_id);
  if (!kernels::IsSupported(type)) {
    return absl::UnimplementedError(
        Cat("GGUF file '", f_->path_, "': ", label, " has type id ", type_id, " (",
            GgmlTypeName(type_id),
            "), which tandem does not support; supported types: ", SupportedTypeNames()));
  }
  t->type = type;
  const uint64_t block = static_cast<uint64_t>(kernels::BlockElems(type));
  if (t->dims[0] % block != 0) {
    return Error(Cat(label, ": row length ", t->dims[0], " is not a multiple of the ",
                     kernels::DTypeName(type), " block size ", block));
  }
  // bytes = elements / block * block_bytes; elements fits int64 and block_bytes <= 210 (Q6_K), but
  // the product can still overflow for absurd shapes.
  const uint64_t blocks = elements / block;
  const uint64_t block_bytes = static_cast<uint64_t>(kernels::BlockBytes(type));
  if (blocks > std::numeric_limits<uint64_t>::max() / block_bytes) {
    return Error(Cat(label, ": the byte size overflows"));
  }
  t->bytes = blocks * block_bytes;
  TANDEM_RETURN_IF_ERROR(Read(offset, Cat("the data offset of ", label)));
  return absl::OkStatus();
}

absl::Status GgufFile::Parser::Run() {
  uint32_t magic = 0;
  TANDEM_RETURN_IF_ERROR(Read(&magic, "the magic number"));
  if (magic != kMagic) {
    return Error(absl::StrFormat("bad magic 0x%08x: not a GGUF file (expected \"GGUF\")", magic));
  }
  TANDEM_RETURN_IF_ERROR(Read(&f_->version_, "the version"));
  if (f_->version_ == 1) {
    return absl::UnimplementedError(
        Cat("GGUF file '", f_->path_,
            "': GGUF version 1 is not supported (it used 32-bit counts); convert the model to "
            "GGUF version 3"));
  }
  if (f_->version_ != 2 && f_->version_ != 3) {
    return Error(Cat("unknown GGUF version ", f_->version_, " (expected 2 or 3)"));
  }
  uint64_t n_tensors = 0, n_kv = 0;
  TANDEM_RETURN_IF_ERROR(Read(&n_tensors, "the tensor count"));
  TANDEM_RETURN_IF_ERROR(Read(&n_kv, "the metadata count"));
  // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at
  // least 8 (name) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset).
  if (n_kv > Remaining() / 13) {
    return Error(Cat("metadata count ", n_kv, " cannot fit in the file (truncated or corrupt)"));
  }
  if (n_tensors > Remaining() / 32) {
    return Error(Cat("tensor count ", n_tensors, " cannot fit in the file (truncated or corrupt)"));
  }

  f_->kv_.reserve(n_kv);
  f_->kv_index_.reserve(n_kv);
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string_view key;
    TANDEM_RETURN_IF_ERROR(ReadString(&key, Cat("the key of metadata entry #", k)));
    uint32_t type = 0;
    TANDEM_RETURN_IF_ERROR(Read(&type, Cat("the type of key '", key, "'")));
    if (!ValidType(type)) {
      return Error(Cat("key '", key, "' has unknown value type ", type));
    }
    if (!f_->kv_index_.emplace(key, f_->kv_.size()).second) {
      return Error(Cat("duplicate metadata key '", key, "'"));
    }
    f_->kv_.emplace_back(key, GgufValue{});
    TANDEM_RETURN_IF_ERROR(ReadValue(static_cast<GgufType>(type), key, 0, &f_->kv_.back().second));
  }

  if (const GgufValue* a = f_->Find("general.alignment")) {
    uint64_t align = 0;
    if (!a->IsInteger() || !IntegerTo(*a, &align)) {
      return Error(
          Cat("key 'general.alignment' must be an unsigned integer, not ", GgufTypeName(a->type)));
    }
    if (align == 0 || !std::has_single_bit(align)) {
      return Error(Cat("key 'general.alignment' is ", align, ", which is not a power of two"));
    }
    f_->alignment_ = align;
  } else {
    f_->alignment_ = kDefaultAlignment;
  }

  std::vector<uint64_t> offsets(n_tensors);
  f_->tensors_.resize(n_tensors);
  for (uint64_t t = 0; t < n_tensors; ++t) {
    TANDEM_RETURN_IF_ERROR(ReadTensorInfo(t, &f_->tensors_[t], &offsets[t]));
  }
  // The index is built once the vector is final: its keys view the names it holds.
  f_->tensor_index_.reserve(n_tensors);
  for (size_t t = 0; t < f_->tensors_.size(); ++t) {
    if (!f_->tensor_index_.emplace(f_->tensors_[t].name, t).second) {
      return Error(Cat("duplicate tensor name '", f_->tensors_[t].name, "'"));
    }
  }

  // Data section: starts at the next multiple of the alignment after the tensor infos.
  const uint64_t align = f_->alignment_;
  const uint64_t data_start = pos_ + (align - pos_ % align) % align;
  f_->data_offset_ = data_start;
  if (n_tensors > 0 && data_start > f_->size_) {
    return Error(Cat("file is truncated: the tensor data section would start at byte ", data_start,
                     " but the file has ", f_->size_, " bytes"));
  }
  const uint64_t data_size = n_tensors > 0 ? f_->size_ - data_start : 0;
  std::vector<size_t> order(n_tensors);
  for (size_t t = 0; t < n_tensors; ++t) {
    GgufTensor& tensor = f_->tensors_[t];
    const uint64_t off = offsets[t];
    if (off % align != 0) {
      return Error(Cat("tensor '", tensor.name, "': data offset ", off,
                       " is not a multiple of the alignment ", align));
    }
    if (off > data_size || tensor.bytes > data_size - off) {
      return Error(Cat("tensor '", tensor.name, "': data [", off, ", ", off, " + ", tensor.bytes,
                       ") runs past the end of the file (the data ", "section holds ", data_size,
                       " bytes; file truncated?)"));
    }
    tensor.data = f_->base_ + data_start + off;
    order[t] = t;
  }
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return offsets[a] < offsets[b]; });
  for (size_t j = 1; j < order.size(); ++j) {
    const size_t prev = order[j - 1], cur = order[j];
    if (offsets[prev] + f_->tensors_[prev].bytes > offsets[cur]) {
      return Error(Cat("tensors '", f_->tensors_[prev].name, "' and '", f_->tensors_[cur].name,
                       "' overlap in the data section"));
    }
  }
  return absl::OkStatus();
}

GgufFile::~GgufFile() {
  if (base_ == nullptr) return;
  if (mapped_) {
    munmap(const_cast<uint8_t*>(base_), size_);
  } else {
    ::operator delete (const_cast<uint8_t*>(base_), std::align_val_t{64});
  }
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(std::unique_ptr<GgufFile> file) {
  Parser parser(file.get());
  TANDEM_RETURN_IF_ERROR(parser.Run());
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  auto file = std::unique_ptr<GgufFile>(new GgufFile());
  file->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string msg = Cat("cannot open GGUF file '", path, "': ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(msg);
    if (err == EACCES) return absl::PermissionDeniedError(msg);
    return absl::UnavailableError(msg);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::UnavailableError(Cat("cannot stat GGUF file '", path, "': ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(Cat("'", path, "' is not a regular file"));
  }
  file->size_ = static_cast<uint64_t>(st.st_size);
  if (file->size_ > 0) {
    void* p = mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::ResourceExhaustedError(
          Cat("cannot map GGUF file '", path, "': ", std::strerror(err)));
    }
    file->base_ = static_cast<const uint8_t*>(p);
    file->mapped_ = true;
  }
  ::close(fd);  // the mapping keeps the file alive
  return Parse(std::move(file));
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromBuffer(std::string_view bytes,
                                                               std::string name) {
  auto file = std::unique_ptr<GgufFile>(new GgufFile());
  file->path_ = std::move(name);
  file->size_ = bytes.size();
  if (!bytes.empty()) {
    // 64-byte aligned like a mapping would be (as far as tensor alignment needs).
    auto* buf = static_cast<uint8_t*>(::operator new (bytes.size(), std::align_val_t{64}));
    std::memcpy(buf, bytes.data(), bytes.size());
    file->base_ = buf;
  }
  return Parse(std::move(file));
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufTensor* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<const GgufValue*> GgufFile::Lookup(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) {
    return absl::NotFoundError(Cat("GGUF file '", path_, "' has no metadata key '", key, "'"));
  }
  return v;
}

namespace {

absl::Status WrongType(const std::string& path, std::string_view key, const GgufValue& v,
                       std::string_view wanted) {
  std::string have(GgufTypeName(v.type));
  if (v.type == GgufType::kArray) have = Cat("array of ", GgufTypeName(v.elem_type));
  return absl::InvalidArgumentError(
      Cat("GGUF file '", path, "': key '", key, "' is ", have, ", expected ", wanted));
}

absl::Status OutOfRange(const std::string& path, std::string_view key, std::string_view wanted) {
  return absl::InvalidArgumentError(
      Cat("GGUF file '", path, "': key '", key, "' has a value that does not fit ", wanted));
}

template <typename T>
absl::StatusOr<T> GetInteger(const GgufFile& f, std::string_view key, const GgufValue* v,
                             std::string_view wanted) {
  if (!v->IsInteger()) return WrongType(f.path(), key, *v, wanted);
  T out;
  if (!IntegerTo(*v, &out)) return OutOfRange(f.path(), key, wanted);
  return out;
}

}  // namespace

absl::StatusOr<std::string_view> GgufFile::GetStringView(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (v->type != GgufType::kString) return WrongType(path_, key, *v, "string");
  return v->str;
}

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(std::string_view s, GetStringView(key));
  return std::string(s);
}

absl::StatusOr<uint32_t> GgufFile::GetU32(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  return GetInteger<uint32_t>(*this, key, v, "uint32");
}

absl::StatusOr<int32_t> GgufFile::GetI32(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  return GetInteger<int32_t>(*this, key, v, "int32");
}

absl::StatusOr<uint64_t> GgufFile::GetU64(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  return GetInteger<uint64_t>(*this, key, v, "uint64");
}

absl::StatusOr<float> GgufFile::GetF32(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  float out;
  if (v->type == GgufType::kF32 || v->type == GgufType::kF64 || v->IsInteger()) {
    if (!ToFloat(*v, &out)) return OutOfRange(path_, key, "float32 exactly");
    return out;
  }
  return WrongType(path_, key, *v, "float32");
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (v->type != GgufType::kBool) return WrongType(path_, key, *v, "bool");
  return v->u != 0;
}

absl::StatusOr<absl::Span<const std::string_view>> GgufFile::GetStringArray(
    std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (v->type != GgufType::kArray || v->elem_type != GgufType::kString) {
    return WrongType(path_, key, *v, "array of string");
  }
  return absl::MakeConstSpan(v->strings);
}

absl::StatusOr<uint64_t> GgufFile::GetArrayLength(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (v->type != GgufType::kArray) return WrongType(path_, key, *v, "array");
  return v->count;
}

absl::StatusOr<std::vector<int32_t>> GgufFile::GetI32Array(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  GgufValue probe;
  probe.type = v->elem_type;
  if (v->type != GgufType::kArray || !probe.IsInteger()) {
    return WrongType(path_, key, *v, "array of integers");
  }
  std::vector<int32_t> out(v->count);
  if (v->elem_type == GgufType::kI32) {  // the common case: one copy
    if (v->count > 0) std::memcpy(out.data(), v->raw, v->count * 4);
    return out;
  }
  const uint64_t size = ScalarSize(v->elem_type);
  GgufValue e;
  for (uint64_t j = 0; j < v->count; ++j) {
    DecodeScalar(v->elem_type, v->raw + j * size, &e);
    if (!IntegerTo(e, &out[j])) {
      return OutOfRange(path_, Cat(key, "[", j, "]"), "int32");
    }
  }
  return out;
}

absl::StatusOr<std::vector<float>> GgufFile::GetF32Array(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (v->type != GgufType::kArray || v->elem_type == GgufType::kString ||
      v->elem_type == GgufType::kArray || v->elem_type == GgufType::kBool) {
    return WrongType(path_, key, *v, "array of float32");
  }
  std::vector<float> out(v->count);
  if (v->elem_type == GgufType::kF32) {
    if (v->count > 0) std::memcpy(out.data(), v->raw, v->count * 4);
    return out;
  }
  const uint64_t size = ScalarSize(v->elem_type);
  GgufValue e;
  for (uint64_t j = 0; j < v->count; ++j) {
    DecodeScalar(v->elem_type, v->raw + j * size, &e);
    if (!ToFloat(e, &out[j])) {
      return OutOfRange(path_, Cat(key, "[", j, "]"), "float32 exactly");
    }
  }
  return out;
}

}  // namespace tandem::model
