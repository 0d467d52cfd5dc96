#include "tests/support/gguf_writer.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "common/check.h"

namespace tandem::testing {

using model::GgufType;

namespace {
uint32_t Id(GgufType t) { return static_cast<uint32_t>(t); }

template <typename T>
std::string PackArray(GgufType elem, const std::vector<T>& v) {
  std::string out = GgufWriter::EncodeArrayHeader(elem, v.size());
  out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  return out;
}
}  // namespace

std::string GgufWriter::EncodeString(std::string_view s) {
  std::string out = EncodePod<uint64_t>(s.size());
  out.append(s);
  return out;
}

std::string GgufWriter::EncodeArrayHeader(GgufType elem, uint64_t count) {
  return EncodePod<uint32_t>(Id(elem)) + EncodePod<uint64_t>(count);
}

void GgufWriter::AddRaw(std::string key, uint32_t type, std::string payload) {
  kv_.push_back(Kv{std::move(key), type, std::move(payload)});
}

void GgufWriter::AddU8(std::string key, uint8_t v) {
  AddRaw(std::move(key), Id(GgufType::kU8), EncodePod(v));
}
void GgufWriter::AddI8(std::string key, int8_t v) {
  AddRaw(std::move(key), Id(GgufType::kI8), EncodePod(v));
}
void GgufWriter::AddU16(std::string key, uint16_t v) {
  AddRaw(std::move(key), Id(GgufType::kU16), EncodePod(v));
}
void GgufWriter::AddI16(std::string key, int16_t v) {
  AddRaw(std::move(key), Id(GgufType::kI16), EncodePod(v));
}
void GgufWriter::AddU32(std::string key, uint32_t v) {
  AddRaw(std::move(key), Id(GgufType::kU32), EncodePod(v));
}
void GgufWriter::AddI32(std::string key, int32_t v) {
  AddRaw(std::move(key), Id(GgufType::kI32), EncodePod(v));
}
void GgufWriter::AddU64(std::string key, uint64_t v) {
  AddRaw(std::move(key), Id(GgufType::kU64), EncodePod(v));
}
void GgufWriter::AddI64(std::string key, int64_t v) {
  AddRaw(std::move(key), Id(GgufType::kI64), EncodePod(v));
}
void GgufWriter::AddF32(std::string key, float v) {
  AddRaw(std::move(key), Id(GgufType::kF32), EncodePod(v));
}
void GgufWriter::AddF64(std::string key, double v) {
  AddRaw(std::move(key), Id(GgufType::kF64), EncodePod(v));
}
void GgufWriter::AddBool(std::string key, bool v) {
  AddRaw(std::move(key), Id(GgufType::kBool), EncodePod<uint8_t>(v ? 1 : 0));
}
void GgufWriter::AddString(std::string key, std::string_view v) {
  AddRaw(std::move(key), Id(GgufType::kString), EncodeString(v));
}
void GgufWriter::AddStringArray(std::string key, const std::vector<std::string>& v) {
  std::string payload = EncodeArrayHeader(GgufType::kString, v.size());
  for (const std::string& s : v) payload += EncodeString(s);
  AddRaw(std::move(key), Id(GgufType::kArray), std::move(payload));
}
void GgufWriter::AddI32Array(std::string key, const std::vector<int32_t>& v) {
  AddRaw(std::move(key), Id(GgufType::kArray), PackArray(GgufType::kI32, v));
}
void GgufWriter::AddF32Array(std::string key, const std::vector<float>& v) {
  AddRaw(std::move(key), Id(GgufType::kArray), PackArray(GgufType::kF32, v));
}

void GgufWriter::SetAlignment(uint32_t alignment) {
  RemoveKey("general.alignment");
  AddU32("general.alignment", alignment);
  alignment_ = alignment;
}

void GgufWriter::RemoveKey(std::string_view key) {
  kv_.erase(std::remove_if(kv_.begin(), kv_.end(), [&](const Kv& kv) { return kv.key == key; }),
            kv_.end());
}

GgufWriter::Kv* GgufWriter::FindKey(std::string_view key) {
  for (Kv& kv : kv_) {
    if (kv.key == key) return &kv;
  }
  return nullptr;
}

void GgufWriter::AddTensor(std::string name, kernels::DType type, std::vector<uint64_t> dims,
                           const std::vector<float>& values) {
  TANDEM_CHECK(!dims.empty());
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  TANDEM_CHECK_EQ(n, values.size());
  const int64_t cols = static_cast<int64_t>(dims[0]);
  const uint64_t rows = n / dims[0];
  const int64_t row_bytes = kernels::RowBytes(type, cols);
  std::string data(rows * row_bytes, '\0');
  for (uint64_t r = 0; r < rows; ++r) {
    kernels::QuantizeRow(type, values.data() + r * cols, cols, data.data() + r * row_bytes);
  }
  tensors_.push_back(Tensor{std::move(name), static_cast<uint32_t>(type), std::move(dims),
                            std::move(data), std::nullopt, values});
}

void GgufWriter::RemoveTensor(std::string_view name) {
  tensors_.erase(std::remove_if(tensors_.begin(), tensors_.end(),
                                [&](const Tensor& t) { return t.name == name; }),
                 tensors_.end());
}

GgufWriter::Tensor* GgufWriter::FindTensor(std::string_view name) {
  for (Tensor& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::string GgufWriter::Serialize() const {
  TANDEM_CHECK_GT(alignment_, 0u);
  const uint64_t align = alignment_;
  auto pad_to = [&](std::string* s, uint64_t base) {
    while ((s->size() - base) % align != 0) s->push_back('\0');
  };
  std::string out = "GGUF";
  out += EncodePod<uint32_t>(version_);
  out += EncodePod<uint64_t>(tensors_.size());
  out += EncodePod<uint64_t>(kv_.size());
  for (const Kv& kv : kv_) {
    out += EncodeString(kv.key);
    out += EncodePod<uint32_t>(kv.type);
    out += kv.payload;
  }
  // Data offsets: each tensor starts at the next aligned offset.
  std::vector<uint64_t> offsets;
  uint64_t data_size = 0;
  for (const Tensor& t : tensors_) {
    data_size = (data_size + align - 1) / align * align;
    offsets.push_back(data_size);
    data_size += t.data.size();
  }
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const Tensor& t = tensors_[i];
    out += EncodeString(t.name);
    out += EncodePod<uint32_t>(static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) out += EncodePod<uint64_t>(d);
    out += EncodePod<uint32_t>(t.type);
    out += EncodePod<uint64_t>(t.info_offset.value_or(offsets[i]));
  }
  pad_to(&out, 0);
  const uint64_t data_start = out.size();
  for (size_t i = 0; i < tensors_.size(); ++i) {
    out.resize(data_start + offsets[i], '\0');
    out += tensors_[i].data;
  }
  if (!tensors_.empty()) pad_to(&out, data_start);
  return out;
}

absl::Status GgufWriter::WriteFile(const std::string& path) const {
  const std::string bytes = Serialize();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    return absl::UnavailableError("cannot create " + path);
  }
  const size_t written = std::fwrite(bytes.data(), 1, bytes.size(), f);
  const bool closed = std::fclose(f) == 0;
  if (written != bytes.size() || !closed) {
    return absl::UnavailableError("cannot write " + path);
  }
  return absl::OkStatus();
}

}  // namespace tandem::testing
