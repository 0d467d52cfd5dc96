#include "model/gguf_file.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/model_config.h"
#include "tests/support/gguf_writer.h"
#include "tests/support/test_model.h"

namespace tandem::model {
namespace {

using kernels::DType;
using testing::GgufWriter;
using ::testing::HasSubstr;

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/gguf_file_test_" + std::to_string(getpid()) + "_" + name;
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::string ErrorOf(const absl::StatusOr<std::unique_ptr<GgufFile>>& r) {
  return r.ok() ? std::string("<ok>") : std::string(r.status().message());
}

std::vector<float> Ramp(size_t n, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * std::sin(0.37f * static_cast<float>(i) + 0.1f);
  return v;
}

// A small valid file: a few keys and two tensors; the last tensor ends on an alignment
// boundary so that every proper prefix of the file is invalid.
GgufWriter SmallWriter() {
  GgufWriter w;
  w.AddString("general.architecture", "llama");
  w.AddU32("llama.block_count", 1);
  w.AddStringArray("tokenizer.ggml.tokens", {"a", "bc", ""});
  w.AddF32Array("scores", {1.0f, -2.5f});
  w.AddTensor("w", DType::kQ8_0, {32, 2}, Ramp(64, 1.0f));
  w.AddTensor("n", DType::kF32, {8}, Ramp(8, 1.0f));  // 32 bytes
  return w;
}

// ---- Round trips -------------------------------------------------------------------------

class GgufRoundTrip : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GgufRoundTrip, EveryMetadataType) {
  const uint32_t align = GetParam();
  GgufWriter w;
  w.SetAlignment(align);
  w.AddU8("u8", 250);
  w.AddI8("i8", -100);
  w.AddU16("u16", 65000);
  w.AddI16("i16", -30000);
  w.AddU32("u32", 4000000000u);
  w.AddI32("i32", -2000000000);
  w.AddF32("f32", 1.5f);
  w.AddBool("bool", true);
  w.AddString("str", "héllo");
  w.AddString("empty", "");
  w.AddU64("u64", 1ull << 40);
  w.AddI64("i64", -(1ll << 40));
  w.AddF64("f64", 0.25);
  w.AddF64("f64_inexact", 0.1);
  w.AddStringArray("strs", {"x", "", "yz"});
  w.AddI32Array("i32s", {1, -2, 3});
  w.AddF32Array("f32s", {0.5f, -1.0f});
  w.AddRaw("u8s", static_cast<uint32_t>(GgufType::kArray),
           GgufWriter::EncodeArrayHeader(GgufType::kU8, 3) + std::string("\x01\x02\xff", 3));
  w.AddRaw("i16s", static_cast<uint32_t>(GgufType::kArray),
           GgufWriter::EncodeArrayHeader(GgufType::kI16, 2) + GgufWriter::EncodePod<int16_t>(-7) +
               GgufWriter::EncodePod<int16_t>(300));
  w.AddRaw("empty_arr", static_cast<uint32_t>(GgufType::kArray),
           GgufWriter::EncodeArrayHeader(GgufType::kI32, 0));
  // An array of two arrays: [[1, 2], ["p", "q", "r"]].
  w.AddRaw("nested", static_cast<uint32_t>(GgufType::kArray),
           GgufWriter::EncodeArrayHeader(GgufType::kArray, 2) +
               GgufWriter::EncodeArrayHeader(GgufType::kU32, 2) +
               GgufWriter::EncodePod<uint32_t>(1) + GgufWriter::EncodePod<uint32_t>(2) +
               GgufWriter::EncodeArrayHeader(GgufType::kString, 3) + GgufWriter::EncodeString("p") +
               GgufWriter::EncodeString("q") + GgufWriter::EncodeString("r"));
  w.AddTensor("t", DType::kF32, {4}, {1, 2, 3, 4});
  auto r = GgufFile::FromBuffer(w.Serialize(), "roundtrip");
  ASSERT_TRUE(r.ok()) << r.status();
  const GgufFile& f = **r;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), align);
  EXPECT_EQ(f.data_offset() % align, 0u);
  EXPECT_EQ(f.metadata().size(), w.metadata().size());
  EXPECT_EQ(f.metadata()[1].first, "u8");

  EXPECT_EQ(*f.GetU32("u8"), 250u);
  EXPECT_EQ(*f.GetI32("i8"), -100);
  EXPECT_EQ(*f.GetU32("u16"), 65000u);
  EXPECT_EQ(*f.GetI32("i16"), -30000);
  EXPECT_EQ(*f.GetU32("u32"), 4000000000u);
  EXPECT_EQ(*f.GetI32("i32"), -2000000000);
  EXPECT_EQ(*f.GetF32("f32"), 1.5f);
  EXPECT_EQ(*f.GetBool("bool"), true);
  EXPECT_EQ(*f.GetString("str"), "héllo");
  EXPECT_EQ(*f.GetString("empty"), "");
  EXPECT_EQ(*f.GetU64("u64"), 1ull << 40);
  EXPECT_EQ(f.Find("i64")->i, -(1ll << 40));
  EXPECT_EQ(*f.GetF32("f64"), 0.25f);
  EXPECT_EQ(f.Find("f64_inexact")->f, 0.1);
  // Widening where lossless; errors where not.
  EXPECT_EQ(*f.GetU64("u8"), 250u);
  EXPECT_EQ(*f.GetI32("u16"), 65000);
  EXPECT_EQ(*f.GetF32("i16"), -30000.0f);
  EXPECT_FALSE(f.GetI32("u32").ok());  // 4e9 does not fit int32
  EXPECT_FALSE(f.GetU32("i8").ok());   // negative
  EXPECT_FALSE(f.GetU32("u64").ok());  // 2^40 does not fit uint32
  EXPECT_FALSE(f.GetF32("f64_inexact").ok());
  EXPECT_FALSE(f.GetF32("u32").ok());  // not exact in float
  EXPECT_FALSE(f.GetU32("f32").ok());
  EXPECT_FALSE(f.GetBool("u8").ok());
  auto wrong = f.GetString("u8");
  ASSERT_FALSE(wrong.ok());
  EXPECT_THAT(wrong.status().message(), HasSubstr("'u8'"));
  EXPECT_THAT(wrong.status().message(), HasSubstr("uint8"));
  auto missing = f.GetU32("nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("'nope'"));
  EXPECT_TRUE(f.Has("nested"));
  EXPECT_FALSE(f.Has("nope"));

  auto strs = f.GetStringArray("strs");
  ASSERT_TRUE(strs.ok());
  ASSERT_EQ(strs->size(), 3u);
  EXPECT_EQ((*strs)[0], "x");
  EXPECT_EQ((*strs)[1], "");
  EXPECT_EQ((*strs)[2], "yz");
  EXPECT_EQ(*f.GetI32Array("i32s"), (std::vector<int32_t>{1, -2, 3}));
  EXPECT_EQ(*f.GetF32Array("f32s"), (std::vector<float>{0.5f, -1.0f}));
  EXPECT_EQ(*f.GetI32Array("u8s"), (std::vector<int32_t>{1, 2, 255}));
  EXPECT_EQ(*f.GetI32Array("i16s"), (std::vector<int32_t>{-7, 300}));
  EXPECT_EQ(*f.GetF32Array("i32s"), (std::vector<float>{1.0f, -2.0f, 3.0f}));
  EXPECT_TRUE(f.GetI32Array("empty_arr")->empty());
  EXPECT_EQ(*f.GetArrayLength("strs"), 3u);
  EXPECT_FALSE(f.GetI32Array("strs").ok());
  EXPECT_FALSE(f.GetStringArray("i32s").ok());
  EXPECT_FALSE(f.GetI32Array("f32s").ok());

  const GgufValue* nested = f.Find("nested");
  ASSERT_NE(nested, nullptr);
  ASSERT_EQ(nested->elem_type, GgufType::kArray);
  ASSERT_EQ(nested->items.size(), 2u);
  EXPECT_EQ(nested->items[0].elem_type, GgufType::kU32);
  EXPECT_EQ(nested->items[0].count, 2u);
  uint32_t second;
  std::memcpy(&second, nested->items[0].raw + 4, 4);
  EXPECT_EQ(second, 2u);
  EXPECT_EQ(nested->items[1].strings, (std::vector<std::string_view>{"p", "q", "r"}));

  const GgufTensor* t = f.FindTensor("t");
  ASSERT_NE(t, nullptr);
  float vals[4];
  std::memcpy(vals, t->data, 16);
  EXPECT_EQ(vals[3], 4.0f);
}

TEST_P(GgufRoundTrip, EveryTensorType) {
  const uint32_t align = GetParam();
  const DType types[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ4_0,
                         DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0};
  GgufWriter w;
  w.SetAlignment(align);
  int i = 0;
  for (DType type : types) {
    // 1-D, 2-D, 3-D and 4-D shapes; ne0 a multiple of 32 for the block types.
    std::vector<uint64_t> dims;
    switch (i % 4) {
      case 0:
        dims = {64};
        break;
      case 1:
        dims = {32, 3};
        break;
      case 2:
        dims = {96, 2, 2};
        break;
      case 3:
        dims = {32, 1, 2, 3};
        break;
    }
    uint64_t n = 1;
    for (uint64_t d : dims) n *= d;
    w.AddTensor("tensor." + std::to_string(i), type, dims, Ramp(n, 2.0f));
    ++i;
  }
  const std::string path = TempPath("types_" + std::to_string(align) + ".gguf");
  ASSERT_TRUE(w.WriteFile(path).ok());
  auto r = GgufFile::Open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  const GgufFile& f = **r;
  ASSERT_EQ(f.tensors().size(), std::size(types));
  const auto* base = static_cast<const uint8_t*>(f.tensors()[0].data) - 0;
  for (size_t j = 0; j < std::size(types); ++j) {
    const GgufTensor& t = f.tensors()[j];
    const GgufWriter::Tensor& src = w.tensors()[j];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, src.name);
    EXPECT_EQ(t.type, types[j]);
    ASSERT_EQ(t.dims.size(), src.dims.size());
    for (size_t d = 0; d < t.dims.size(); ++d)
      EXPECT_EQ(t.dims[d], static_cast<int64_t>(src.dims[d]));
    EXPECT_EQ(t.bytes, src.data.size());
    EXPECT_EQ(t.bytes, static_cast<uint64_t>(kernels::RowBytes(t.type, t.dims[0]) * t.Rows()));
    EXPECT_EQ(0, std::memcmp(t.data, src.data.data(), t.bytes));
    EXPECT_EQ((static_cast<const uint8_t*>(t.data) - base) % align, 0);
    EXPECT_EQ(f.FindTensor(t.name), &t);
    // The data decodes back to what was written (within the type's precision).
    std::vector<float> row(t.dims[0]);
    kernels::DequantizeRow(t.type, t.data, t.dims[0], row.data());
    const std::vector<float> want = Ramp(t.Elements(), 2.0f);
    const bool q4_or_q5 = t.type == DType::kQ4_0 || t.type == DType::kQ4_1 ||
                          t.type == DType::kQ5_0 || t.type == DType::kQ5_1;
    const float tol = t.type == DType::kF32 ? 0 : q4_or_q5 ? 0.3f : 0.02f;
    for (int64_t c = 0; c < t.dims[0]; ++c) EXPECT_NEAR(row[c], want[c], tol) << c;
  }
  // The mapping's tensor data is page-aligned at the file start, so alignment holds in memory.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f.tensors()[0].data) % align, 0u);
  EXPECT_EQ(f.FindTensor("missing"), nullptr);
  std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Alignments, GgufRoundTrip, ::testing::Values(32u, 64u));

TEST(GgufFile, Version2IsAcceptedVersion1AndUnknownAreNot) {
  GgufWriter w = SmallWriter();
  w.set_version(2);
  auto v2 = GgufFile::FromBuffer(w.Serialize(), "v2.gguf");
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ((*v2)->version(), 2u);
  w.set_version(1);
  auto v1 = GgufFile::FromBuffer(w.Serialize(), "v1.gguf");
  ASSERT_FALSE(v1.ok());
  EXPECT_EQ(v1.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(ErrorOf(v1), HasSubstr("version 1 is not supported"));
  EXPECT_THAT(ErrorOf(v1), HasSubstr("v1.gguf"));
  w.set_version(7);
  EXPECT_THAT(ErrorOf(GgufFile::FromBuffer(w.Serialize(), "v7.gguf")),
              HasSubstr("unknown GGUF version 7"));
}

TEST(GgufFile, OpenReportsMissingFile) {
  auto r = GgufFile::Open(TempPath("does_not_exist.gguf"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(ErrorOf(r), HasSubstr("does_not_exist.gguf"));
}

TEST(GgufFile, EmptyFileIsAnError) {
  const std::string path = TempPath("empty.gguf");
  WriteBytes(path, "");
  auto r = GgufFile::Open(path);
  EXPECT_THAT(ErrorOf(r), HasSubstr("truncated"));
  EXPECT_THAT(ErrorOf(r), HasSubstr(path));
  std::remove(path.c_str());
}

// ---- Corruptions: each error names the key or tensor (and the file) -------------------------

struct Corruption {
  std::string name;
  std::function<std::string()> make;  // the corrupt file's bytes
  std::vector<std::string> expect;    // substrings of the error message
};

std::string WithKeyPayload(uint32_t type, const std::string& payload) {
  GgufWriter w = SmallWriter();
  w.AddRaw("bad.key", type, payload);
  return w.Serialize();
}

std::vector<Corruption> Corruptions() {
  const uint32_t kArr = static_cast<uint32_t>(GgufType::kArray);
  std::vector<Corruption> c;
  c.push_back({"bad_magic",
               [] {
                 std::string b = SmallWriter().Serialize();
                 b[0] = 'X';
                 return b;
               },
               {"bad magic", "not a GGUF file"}});
  c.push_back({"duplicate_key",
               [] {
                 GgufWriter w = SmallWriter();
                 w.AddU32("llama.block_count", 2);
                 return w.Serialize();
               },
               {"duplicate metadata key 'llama.block_count'"}});
  c.push_back({"duplicate_tensor",
               [] {
                 GgufWriter w = SmallWriter();
                 w.AddTensor("w", DType::kF32, {8}, Ramp(8, 1));
                 return w.Serialize();
               },
               {"duplicate tensor name 'w'"}});
  c.push_back({"zero_dims",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("n")->dims = {};
                 return w.Serialize();
               },
               {"tensor 'n' has 0 dimensions"}});
  c.push_back({"five_dims",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("n")->dims = {8, 1, 1, 1, 1};
                 return w.Serialize();
               },
               {"tensor 'n' has 5 dimensions"}});
  c.push_back({"zero_dim",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("w")->dims = {32, 0};
                 return w.Serialize();
               },
               {"tensor 'w' has a zero dimension"}});
  c.push_back({"overflowing_dims",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("n")->dims = {1ull << 32, 1ull << 32};
                 return w.Serialize();
               },
               {"tensor 'n'", "overflows"}});
  c.push_back({"huge_dim",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("n")->dims = {~0ull};
                 return w.Serialize();
               },
               {"tensor 'n'", "overflows"}});
  c.push_back({"byte_size_overflow",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("n")->dims = {1ull << 62};  // 2^62 F32 elements = 2^64 bytes
                 return w.Serialize();
               },
               {"tensor 'n'", "overflows"}});
  c.push_back({"unsupported_type",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("w")->type = 15;
                 return w.Serialize();
               },
               {"tensor 'w'", "type id 15 (Q8_K)",
                "supported types: F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, "
                "Q5_K, Q6_K, BF16"}});
  c.push_back({"unsupported_iq_type",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("w")->type = 20;
                 return w.Serialize();
               },
               {"tensor 'w'", "type id 20 (IQ4_NL)"}});
  c.push_back({"unsupported_ternary_type",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("w")->type = 35;
                 return w.Serialize();
               },
               {"tensor 'w'", "type id 35 (TQ2_0)"}});
  c.push_back({"unsupported_mxfp4_type",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("w")->type = 39;
                 return w.Serialize();
               },
               {"tensor 'w'", "type id 39 (MXFP4)"}});
  c.push_back({"unknown_type",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("n")->type = 1234;
                 return w.Serialize();
               },
               {"tensor 'n'", "type id 1234"}});
  c.push_back({"not_block_multiple",
               [] {
                 GgufWriter w = SmallWriter();
                 GgufWriter::Tensor* t = w.FindTensor("w");
                 t->dims = {48, 1};  // Q8_0 rows must be multiples of 32
                 return w.Serialize();
               },
               {"tensor 'w'", "row length 48 is not a multiple of the Q8_0 block size 32"}});
  c.push_back({"misaligned_offset",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("n")->info_offset = 80;  // 32-aligned offsets only
                 return w.Serialize();
               },
               {"tensor 'n'", "offset 80 is not a multiple of the alignment 32"}});
  c.push_back({"data_out_of_range",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("n")->info_offset = 1024;
                 return w.Serialize();
               },
               {"tensor 'n'", "runs past the end of the file"}});
  c.push_back({"offset_wraps",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("n")->info_offset = ~uint64_t{31};
                 return w.Serialize();
               },
               {"tensor 'n'", "runs past the end of the file"}});
  c.push_back({"overlap",
               [] {
                 GgufWriter w = SmallWriter();
                 w.FindTensor("n")->info_offset = 32;  // inside w's 68 bytes at [0, 68)
                 return w.Serialize();
               },
               {"tensors 'w' and 'n' overlap"}});
  c.push_back({"alignment_not_power_of_two",
               [] {
                 GgufWriter w = SmallWriter();
                 w.AddU32("general.alignment", 48);
                 return w.Serialize();
               },
               {"'general.alignment' is 48", "power of two"}});
  c.push_back({"alignment_zero",
               [] {
                 GgufWriter w = SmallWriter();
                 w.AddU32("general.alignment", 0);
                 return w.Serialize();
               },
               {"'general.alignment' is 0"}});
  c.push_back({"alignment_string",
               [] {
                 GgufWriter w = SmallWriter();
                 w.AddString("general.alignment", "32");
                 return w.Serialize();
               },
               {"'general.alignment' must be an unsigned integer"}});
  c.push_back({"unknown_value_type",
               [] { return WithKeyPayload(13, "x"); },
               {"key 'bad.key' has unknown value type 13"}});
  c.push_back({"bool_not_0_1",
               [] { return WithKeyPayload(7, std::string(1, '\x02')); },
               {"key 'bad.key'", "bool value 2"}});
  c.push_back({"string_too_long",
               [] { return WithKeyPayload(8, GgufWriter::EncodePod<uint64_t>(1ull << 60)); },
               {"the value of key 'bad.key'", "exceeds"}});
  c.push_back({"array_count_too_big",
               [kArr] {
                 return WithKeyPayload(
                     kArr, GgufWriter::EncodeArrayHeader(GgufType::kString, 1ull << 61));
               },
               {"key 'bad.key'", "cannot fit"}});
  c.push_back({"array_of_arrays_count_too_big",
               [kArr] {
                 return WithKeyPayload(kArr,
                                       GgufWriter::EncodeArrayHeader(GgufType::kArray, ~0ull / 2));
               },
               {"key 'bad.key'", "cannot fit"}});
  c.push_back({"array_bad_elem_type",
               [kArr] {
                 return WithKeyPayload(kArr,
                                       GgufWriter::EncodeArrayHeader(static_cast<GgufType>(99), 1));
               },
               {"key 'bad.key'", "unknown array element type 99"}});
  c.push_back({"arrays_too_deep",
               [kArr] {
                 std::string p;
                 for (int d = 0; d < 9; ++d)
                   p += GgufWriter::EncodeArrayHeader(GgufType::kArray, 1);
                 p += GgufWriter::EncodeArrayHeader(GgufType::kU8, 0);
                 return WithKeyPayload(kArr, p);
               },
               {"key 'bad.key'", "nested deeper"}});
  c.push_back({"kv_count_too_big",
               [] {
                 std::string b = SmallWriter().Serialize();
                 const uint64_t n = 1ull << 60;
                 std::memcpy(&b[16], &n, 8);
                 return b;
               },
               {"metadata count", "cannot fit"}});
  c.push_back({"tensor_count_too_big",
               [] {
                 std::string b = SmallWriter().Serialize();
                 const uint64_t n = 1ull << 60;
                 std::memcpy(&b[8], &n, 8);
                 return b;
               },
               {"tensor count", "cannot fit"}});
  return c;
}

TEST(GgufFile, EveryCorruptionIsRejectedWithANamedError) {
  for (const Corruption& c : Corruptions()) {
    SCOPED_TRACE(c.name);
    auto r = GgufFile::FromBuffer(c.make(), "corrupt-" + c.name + ".gguf");
    ASSERT_FALSE(r.ok());
    for (const std::string& s : c.expect) EXPECT_THAT(ErrorOf(r), HasSubstr(s));
    EXPECT_THAT(ErrorOf(r), HasSubstr("corrupt-" + c.name + ".gguf"));
  }
}

TEST(GgufFile, CorruptionsAreRejectedThroughOpenToo) {
  for (const Corruption& c : Corruptions()) {
    SCOPED_TRACE(c.name);
    const std::string path = TempPath(c.name + ".gguf");
    WriteBytes(path, c.make());
    auto r = GgufFile::Open(path);
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(ErrorOf(r), HasSubstr(path));
    std::remove(path.c_str());
  }
}

TEST(GgufFile, EveryTruncationIsAnErrorNeverACrash) {
  const std::string full = SmallWriter().Serialize();
  ASSERT_TRUE(GgufFile::FromBuffer(full).ok());
  for (size_t cut = 0; cut < full.size(); ++cut) {
    auto r = GgufFile::FromBuffer(std::string_view(full).substr(0, cut), "cut");
    ASSERT_FALSE(r.ok()) << "prefix of " << cut << " of " << full.size() << " bytes was accepted";
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << cut;
  }
  // Through the mmap path as well, at a few cut points.
  for (size_t cut : {size_t{3}, size_t{30}, full.size() / 2, full.size() - 1}) {
    const std::string path = TempPath("cut_" + std::to_string(cut) + ".gguf");
    WriteBytes(path, full.substr(0, cut));
    auto r = GgufFile::Open(path);
    EXPECT_FALSE(r.ok()) << cut;
    EXPECT_THAT(ErrorOf(r), HasSubstr("truncated")) << cut;
    std::remove(path.c_str());
  }
}

TEST(GgufFile, TruncatedTestModelIsAnError) {
  testing::TestModelSpec spec;
  for (auto kind : {testing::ModelCorruption::kTruncated, testing::ModelCorruption::kBadMagic,
                    testing::ModelCorruption::kUnsupportedType}) {
    const std::string path = TempPath("corrupt_model.gguf");
    ASSERT_TRUE(testing::WriteCorruptTestModel(spec, kind, path).ok());
    EXPECT_FALSE(GgufFile::Open(path).ok());
    std::remove(path.c_str());
  }
}

// ---- The real default model ---------------------------------------------------------------

std::string DefaultModelPath() {
  const char* dir = std::getenv("TANDEM_SOURCE_DIR");
#ifdef TANDEM_SOURCE_DIR
  if (dir == nullptr) dir = TANDEM_SOURCE_DIR;
#endif
  return std::string(dir == nullptr ? "." : dir) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

TEST(GgufFile, OpensTheDefaultModel) {
  const std::string path = DefaultModelPath();
  if (access(path.c_str(), R_OK) != 0) {
    FAIL() << "the default model is missing at " << path
           << "; run scripts/fetch-model (`make test` fetches it first)";
  }
  const auto start = std::chrono::steady_clock::now();
  auto r = GgufFile::Open(path);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(r.ok()) << r.status();
  const GgufFile& f = **r;
  std::printf("opened %s in %.2f ms\n", path.c_str(), ms);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.tensors().size(), 272u);
  EXPECT_EQ(*f.GetString("general.architecture"), "llama");
  EXPECT_EQ(*f.GetU32("llama.block_count"), 30u);
  EXPECT_EQ(*f.GetU32("llama.embedding_length"), 576u);
  EXPECT_EQ(*f.GetU32("llama.feed_forward_length"), 1536u);
  EXPECT_EQ(*f.GetU32("llama.attention.head_count"), 9u);
  EXPECT_EQ(*f.GetU32("llama.attention.head_count_kv"), 3u);
  EXPECT_EQ(*f.GetU32("llama.context_length"), 8192u);
  EXPECT_EQ(*f.GetF32("llama.rope.freq_base"), 100000.0f);
  EXPECT_EQ(*f.GetF32("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_EQ(*f.GetString("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(*f.GetString("tokenizer.ggml.pre"), "smollm");
  auto tokens = f.GetStringArray("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok());
  ASSERT_EQ(tokens->size(), 49152u);
  EXPECT_EQ((*tokens)[0], "<|endoftext|>");
  EXPECT_EQ((*tokens)[1], "<|im_start|>");
  EXPECT_EQ((*tokens)[2], "<|im_end|>");
  auto types = f.GetI32Array("tokenizer.ggml.token_type");
  ASSERT_TRUE(types.ok());
  ASSERT_EQ(types->size(), 49152u);
  EXPECT_EQ((*types)[0], 3);
  EXPECT_GT(f.GetStringArray("tokenizer.ggml.merges")->size(), 40000u);
  EXPECT_THAT(*f.GetString("tokenizer.chat_template"), HasSubstr("<|im_start|>"));

  const GgufTensor* embd = f.FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->type, DType::kQ8_0);
  EXPECT_EQ(embd->dims, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(f.FindTensor("blk.0.attn_q.weight")->type, DType::kQ4_1);
  EXPECT_EQ(f.FindTensor("blk.29.ffn_down.weight")->dims, (std::vector<int64_t>{1536, 576}));
  EXPECT_EQ(f.FindTensor("output_norm.weight")->type, DType::kF32);
  EXPECT_EQ(f.FindTensor("output.weight"), nullptr);

  auto config = ModelConfig::FromGguf(f);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "llama");
  EXPECT_EQ(config->n_layers, 30);
  EXPECT_EQ(config->hidden, 576);
  EXPECT_EQ(config->n_heads, 9);
  EXPECT_EQ(config->n_kv_heads, 3);
  EXPECT_EQ(config->head_dim, 64);
  EXPECT_EQ(config->ffn_dim, 1536);
  EXPECT_EQ(config->vocab_size, 49152);
  EXPECT_EQ(config->context_length, 8192);
  EXPECT_EQ(config->rope_theta, 100000.0f);
  EXPECT_EQ(config->rope_dim, 64);
  EXPECT_EQ(config->rope_style, kernels::RopeStyle::kNormal);
  EXPECT_EQ(config->rms_eps, 1e-5f);
  EXPECT_TRUE(config->tied_embeddings);
  EXPECT_FALSE(config->has_qkv_bias);
}

}  // namespace
}  // namespace tandem::model
