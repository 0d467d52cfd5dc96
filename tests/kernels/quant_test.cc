// kernels/quant.cc: fp16 conversions against the F16C instructions (when the CPU has them)
// and the round-trip error of QuantizeRow / DequantizeRow.
#include "kernels/quant.h"

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace tandem::kernels {
namespace {

__attribute__((target("f16c"))) float HardwareHalfToFloat(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) uint16_t HardwareFloatToHalf(float f) {
  return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

bool HaveF16c() { return __builtin_cpu_supports("f16c"); }

TEST(QuantTest, HalfToFloatMatchesF16cForAllHalves) {
  if (!HaveF16c()) GTEST_SKIP() << "CPU has no F16C";
  for (uint32_t h = 0; h < 65536; ++h) {
    const float hw = HardwareHalfToFloat(static_cast<uint16_t>(h));
    const float sw = HalfToFloat(static_cast<uint16_t>(h));
    ASSERT_EQ(Bits(sw), Bits(hw)) << "half 0x" << std::hex << h;
  }
}

TEST(QuantTest, FloatToHalfMatchesF16c) {
  if (!HaveF16c()) GTEST_SKIP() << "CPU has no F16C";
  auto check = [](float f) {
    const uint16_t hw = HardwareFloatToHalf(f);
    const uint16_t sw = FloatToHalf(f);
    ASSERT_EQ(sw, hw) << "float bits 0x" << std::hex << Bits(f) << " (" << f << ")";
  };
  // Every half's value, its neighbours one float ulp away, and the midpoints between
  // consecutive halves (the round-to-even cases), positive and negative.
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const float v = HalfToFloat(static_cast<uint16_t>(h));
    const float next = HalfToFloat(static_cast<uint16_t>(h + 1));
    for (float f : {v, std::nextafter(v, 1e30f), std::nextafter(v, -1e30f), (v + next) / 2,
                    std::nextafter((v + next) / 2, 1e30f), std::nextafter((v + next) / 2, 0.f)}) {
      check(f);
      check(-f);
    }
  }
  // Random bit patterns over the whole float range (inf and nan included).
  std::mt19937 rng(42);
  for (int i = 0; i < 2000000; ++i) check(FromBits(static_cast<uint32_t>(rng())));
  for (float f :
       {0.f, -0.f, 65504.f, 65519.99f, 65520.f, 1e10f, 5.96e-8f, 2.98e-8f, 2.99e-8f,
        std::numeric_limits<float>::infinity(), std::numeric_limits<float>::denorm_min()}) {
    check(f);
    check(-f);
  }
}

TEST(QuantTest, Bf16RoundTripsAndRoundsToNearestEven) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-100.f, 100.f);
  for (int i = 0; i < 100000; ++i) {
    const float f = dist(rng);
    const float back = Bf16ToFloat(FloatToBf16(f));
    EXPECT_LE(std::fabs(back - f), std::fabs(f) * (1.f / 256));
  }
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(FloatToBf16(FromBits(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808001u)), 0x3f81);
}

// Worst error one element may carry after QuantizeRow + DequantizeRow for a block whose
// values lie in [mn, mx].
double BlockErrorBound(DType type, float mn, float mx) {
  const double amax = std::max(std::fabs(mn), std::fabs(mx));
  // Error of storing v as fp16: half an ulp, 2^-11 relative, or 2^-25 absolute once v is
  // in fp16's subnormal range (tiny blocks have subnormal scales).
  auto fp16_err = [](double v) { return std::fabs(v) / 2048 + 3e-8; };
  switch (type) {
    case DType::kQ8_0: {
      const double d = amax / 127;
      return d / 2 + 127 * fp16_err(d);
    }
    case DType::kQ4_0: {
      // d = max / -8: the extreme on the other side lands on q = 16, clamped to 15.
      const double d = amax / 8;
      return d + 8 * fp16_err(d);
    }
    case DType::kQ4_1: {
      const double d = (mx - mn) / 15.0;
      return d / 2 + 15 * fp16_err(d) + fp16_err(mn);
    }
    case DType::kQ5_0: {
      // d = max / -16: like Q4_0, the other side's extreme lands on q = 32, clamped to 31.
      const double d = amax / 16;
      return d + 16 * fp16_err(d);
    }
    case DType::kQ5_1: {
      const double d = (mx - mn) / 31.0;
      return d / 2 + 31 * fp16_err(d) + fp16_err(mn);
    }
    case DType::kF16:
      return fp16_err(amax);
    case DType::kBF16:
      return amax / 256;  // half an ulp of an 8-bit significand
    case DType::kF32:
      return 0;
  }
  return 0;
}

TEST(QuantTest, QuantizeDequantizeRoundTripWithinFormatError) {
  const int64_t cols = 256;
  std::mt19937 rng(3);
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ4_0, DType::kQ4_1,
                     DType::kQ5_0, DType::kQ5_1, DType::kQ8_0}) {
    for (float scale : {1e-3f, 1.f, 300.f}) {
      for (float shift : {0.f, 0.7f}) {  // shifted blocks exercise Q4_1's and Q5_1's minimum
        std::uniform_real_distribution<float> dist(-1.f, 1.f);
        std::vector<float> x(cols);
        for (auto& v : x) v = (dist(rng) + shift) * scale;
        std::vector<uint8_t> row(RowBytes(type, cols));
        QuantizeRow(type, x.data(), cols, row.data());
        std::vector<float> back(cols);
        DequantizeRow(type, row.data(), cols, back.data());
        const int64_t block = BlockElems(type) == 1 ? 32 : BlockElems(type);
        for (int64_t b = 0; b < cols / block; ++b) {
          float mn = x[b * block], mx = x[b * block];
          for (int64_t j = 0; j < block; ++j) {
            mn = std::min(mn, x[b * block + j]);
            mx = std::max(mx, x[b * block + j]);
          }
          const double bound = BlockErrorBound(type, mn, mx) * (1 + 1e-6);
          for (int64_t j = 0; j < block; ++j) {
            const int64_t k = b * block + j;
            if (BlockElems(type) == 1 && type != DType::kF32) {
              const double elem_bound = BlockErrorBound(type, x[k], x[k]) * (1 + 1e-6);
              ASSERT_LE(std::fabs(back[k] - x[k]), elem_bound) << DTypeName(type) << " " << k;
            } else {
              ASSERT_LE(std::fabs(back[k] - x[k]), bound) << DTypeName(type) << " " << k;
            }
          }
        }
      }
    }
  }
}

// Two Q5 blocks by hand. Block 0: qs[j] = j | (15 - j) << 4 and qh = 0xf0008001 (fifth bits
// of elements 0, 15 and 28..31), so its 5-bit values are
//   q = 16, 1..14, 31 | 15, 14, ..., 4, 19, 18, 17, 16.
// Block 1: every nibble 15 and every fifth bit set, q = 31 throughout.
constexpr uint8_t kQh0[4] = {0x01, 0x80, 0x00, 0xf0};
constexpr int kQ0[32] = {16, 1,  2,  3,  4,  5,  6, 7, 8, 9, 10, 11, 12, 13, 14, 31,
                         15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5,  4,  19, 18, 17, 16};
void FillQs(uint8_t qs[16]) {
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>(j | (15 - j) << 4);
}

TEST(QuantTest, Q5_0DequantizesHandBuiltBlocks) {
  BlockQ5_0 b[2];
  b[0].d = 0x3800;  // 0.5
  std::memcpy(b[0].qh, kQh0, 4);
  FillQs(b[0].qs);
  b[1].d = 0xc000;  // -2
  std::memset(b[1].qh, 0xff, 4);
  std::memset(b[1].qs, 0xff, 16);
  // x = (q - 16) * d, written out from kQ0 by hand.
  const float want0[32] = {0,    -7.5, -7,   -6.5, -6,   -5.5, -5,  -4.5, -4,  -3.5, -3,
                           -2.5, -2,   -1.5, -1,   7.5,  -0.5, -1,  -1.5, -2,  -2.5, -3,
                           -3.5, -4,   -4.5, -5,   -5.5, -6,   1.5, 1,    0.5, 0};
  float out[64];
  DequantizeRow(DType::kQ5_0, b, 64, out);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(out[j], want0[j]) << j;
    EXPECT_EQ(out[j], (kQ0[j] - 16) * 0.5f) << j;
    EXPECT_EQ(out[32 + j], -30.f) << j;  // (31 - 16) * -2
  }
}

TEST(QuantTest, Q5_1DequantizesHandBuiltBlocks) {
  BlockQ5_1 b[2];
  b[0].d = 0x3400;  // 0.25
  b[0].m = 0xbc00;  // -1
  std::memcpy(b[0].qh, kQh0, 4);
  FillQs(b[0].qs);
  b[1].d = 0x3c00;  // 1
  b[1].m = 0x3800;  // 0.5
  std::memset(b[1].qh, 0xff, 4);
  std::memset(b[1].qs, 0xff, 16);
  // x = q * d + m, written out from kQ0 by hand.
  const float want0[32] = {3,    -0.75, -0.5, -0.25, 0,    0.25, 0.5,  0.75, 1,    1.25, 1.5,
                           1.75, 2,     2.25, 2.5,   6.75, 2.75, 2.5,  2.25, 2,    1.75, 1.5,
                           1.25, 1,     0.75, 0.5,   0.25, 0,    3.75, 3.5,  3.25, 3};
  float out[64];
  DequantizeRow(DType::kQ5_1, b, 64, out);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(out[j], want0[j]) << j;
    EXPECT_EQ(out[j], kQ0[j] * 0.25f - 1) << j;
    EXPECT_EQ(out[32 + j], 31.5f) << j;
  }
}

// Blocks whose values sit exactly on the grid quantize to known bytes: element j gets q = j,
// so qs[j] = j | j << 4 and the fifth bits are those of elements 16..31.
TEST(QuantTest, Q5QuantizeRowWritesGgmlBytes) {
  float x[32];
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j - 16);  // max |x| = 16 at j = 0
  BlockQ5_0 b0;
  QuantizeRow(DType::kQ5_0, x, 32, &b0);
  EXPECT_EQ(b0.d, 0x3c00);                           // d = -16 / -16 = 1
  for (int j = 0; j < 32; ++j) x[j] = 2 + 0.5f * j;  // min 2, max 17.5
  BlockQ5_1 b1;
  QuantizeRow(DType::kQ5_1, x, 32, &b1);
  EXPECT_EQ(b1.d, 0x3800);  // d = 15.5 / 31 = 0.5
  EXPECT_EQ(b1.m, 0x4000);  // 2
  const uint8_t want_qh[4] = {0x00, 0x00, 0xff, 0xff};
  for (const uint8_t* qh : {b0.qh, b1.qh}) {
    for (int k = 0; k < 4; ++k) EXPECT_EQ(qh[k], want_qh[k]) << k;
  }
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(b0.qs[j], j | j << 4) << j;
    EXPECT_EQ(b1.qs[j], j | j << 4) << j;
  }
  uint8_t q[32];
  UnpackQ5(b1.qh, b1.qs, q);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(q[j], j);
}

// ggml's Q5_0 maps the block's extreme to q = 0 and clamps the other side to 31; a block
// that is all one value (or all zero) must not spill a fifth bit.
TEST(QuantTest, Q5_0ClampsAndHandlesFlatBlocks) {
  float x[32];
  for (int j = 0; j < 32; ++j) x[j] = 1.f;
  x[0] = -1.f;  // max = -1 (first of equal |x|), d = 1/16, so +1 maps to q = 32 -> 31
  BlockQ5_0 b;
  QuantizeRow(DType::kQ5_0, x, 32, &b);
  float back[32];
  DequantizeRow(DType::kQ5_0, &b, 32, back);
  EXPECT_EQ(back[0], -1.f);
  for (int j = 1; j < 32; ++j) EXPECT_EQ(back[j], 15.f / 16) << j;
  for (float v : {0.f, 3.f}) {
    for (int j = 0; j < 32; ++j) x[j] = v;
    BlockQ5_1 b1;
    QuantizeRow(DType::kQ5_1, x, 32, &b1);
    DequantizeRow(DType::kQ5_1, &b1, 32, back);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(back[j], v) << j;
  }
}

}  // namespace
}  // namespace tandem::kernels
