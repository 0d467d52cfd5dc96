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
    case DType::kQ2_K:
    case DType::kQ3_K:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      break;  // bounded per super-block: KBlockErrorBound below
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

// ---- K-quants ----

constexpr DType kKTypes[] = {DType::kQ4_K, DType::kQ6_K, DType::kQ5_K, DType::kQ3_K, DType::kQ2_K};

// Q4_K by hand: d = 1, dmin = 0.5, scales and minima exercising both 6-bit encodings
// (sub-blocks 4..7 keep their top 2 bits in the top bits of bytes 0..7):
//   sc = 1 2 3 4 17 33 49 63,  m = 0 5 10 15 20 40 60 63.
// qs[32c + l] = (l % 16) | (15 - l % 16) << 4: chunk c's low nibbles are sub-block 2c, its
// high nibbles sub-block 2c + 1.
constexpr uint8_t kQ4KScales[12] = {0x41, 0x82, 0xc3, 0xc4, 0x40, 0x85,
                                    0xca, 0xcf, 0x41, 0x81, 0xc1, 0xff};
constexpr int kQ4KSc[8] = {1, 2, 3, 4, 17, 33, 49, 63};
constexpr int kQ4KM[8] = {0, 5, 10, 15, 20, 40, 60, 63};

TEST(QuantTest, Q4_KDequantizesHandBuiltBlock) {
  BlockQ4_K b;
  b.d = 0x3c00;     // 1
  b.dmin = 0x3800;  // 0.5
  std::memcpy(b.scales, kQ4KScales, 12);
  for (int i = 0; i < 128; ++i) b.qs[i] = static_cast<uint8_t>(i % 16 | (15 - i % 16) << 4);
  float out[256];
  DequantizeRow(DType::kQ4_K, &b, 256, out);
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      const int lo = l % 16, hi = 15 - l % 16;
      EXPECT_EQ(out[64 * c + l], kQ4KSc[2 * c] * lo - 0.5f * kQ4KM[2 * c]) << c << " " << l;
      EXPECT_EQ(out[64 * c + 32 + l], kQ4KSc[2 * c + 1] * hi - 0.5f * kQ4KM[2 * c + 1])
          << c << " " << l;
    }
  }
  // Q5_K shares the scales; its fifth bit of element 64c + l is bit 2c of qh[l] (bit 2c + 1
  // for 64c + 32 + l). Set it for every odd l of every chunk's low half.
  BlockQ5_K b5;
  b5.d = b.d;
  b5.dmin = b.dmin;
  std::memcpy(b5.scales, kQ4KScales, 12);
  std::memcpy(b5.qs, b.qs, 128);
  for (int l = 0; l < 32; ++l) b5.qh[l] = l % 2 ? 0x55 : 0;
  DequantizeRow(DType::kQ5_K, &b5, 256, out);
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      const int lo = l % 16 + (l % 2 ? 16 : 0), hi = 15 - l % 16;
      EXPECT_EQ(out[64 * c + l], kQ4KSc[2 * c] * lo - 0.5f * kQ4KM[2 * c]) << c << " " << l;
      EXPECT_EQ(out[64 * c + 32 + l], kQ4KSc[2 * c + 1] * hi - 0.5f * kQ4KM[2 * c + 1]);
    }
  }
}

// Q6_K by hand: d = 0.25, scales[i] = i - 8 (signed), every element's low nibble 5 and top
// 2 bits taken from qh: element 128h + 32j + l reads bits 2j..2j+1 of qh[32h + l]; with
// qh = 0xe4 (j = 0: 0, 1: 1, 2: 2, 3: 3) element k gets q = 5 + 16 (k % 128 / 32).
TEST(QuantTest, Q6_KDequantizesHandBuiltBlock) {
  BlockQ6_K b;
  b.d = 0x3400;  // 0.25
  for (int i = 0; i < 16; ++i) b.scales[i] = static_cast<int8_t>(i - 8);
  std::memset(b.ql, 0x55, sizeof(b.ql));
  std::memset(b.qh, 0xe4, sizeof(b.qh));
  float out[256];
  DequantizeRow(DType::kQ6_K, &b, 256, out);
  for (int k = 0; k < 256; ++k) {
    const int q = 5 + 16 * (k % 128 / 32);
    EXPECT_EQ(out[k], 0.25f * (k / 16 - 8) * (q - 32)) << k;
  }
  // Low nibbles: ql[64h + l] holds j = 0 (low) and j = 2 (high), ql[64h + 32 + l] j = 1, 3.
  std::memset(b.qh, 0, sizeof(b.qh));
  for (int i = 0; i < 128; ++i) b.ql[i] = static_cast<uint8_t>(i % 64 < 32 ? 0x21 : 0x43);
  DequantizeRow(DType::kQ6_K, &b, 256, out);
  const int want_q[4] = {1, 3, 2, 4};
  for (int k = 0; k < 256; ++k) {
    EXPECT_EQ(out[k], 0.25f * (k / 16 - 8) * (want_q[k % 128 / 32] - 32)) << k;
  }
}

// Q3_K by hand: the 16 6-bit scales (stored as sc + 32) have their low nibbles in bytes 0..7
// (scale i at bit 4 (i / 8) of byte i % 8) and top 2 bits in bytes 8..11 (bit 2 (i / 4) of
// byte 8 + i % 4); here sc = -32, -13, -11, ..., 13, 31. q = low 2 bits | high bit << 2,
// x = d sc (q - 4): qs = 0xe4 gives low bits j for element 128h + 32j + l, hmask bit 4h + j.
TEST(QuantTest, Q3_KDequantizesHandBuiltBlock) {
  constexpr uint8_t kScales[12] = {0x10, 0x33, 0x55, 0x77, 0x99, 0xbb,
                                   0xdd, 0xff, 0xa4, 0xa5, 0xa5, 0xe5};
  const int sc[16] = {-32, -13, -11, -9, -7, -5, -3, -1, 1, 3, 5, 7, 9, 11, 13, 31};
  BlockQ3_K b;
  b.d = 0x3800;  // 0.5
  std::memcpy(b.scales, kScales, 12);
  std::memset(b.qs, 0xe4, sizeof(b.qs));
  for (int l = 0; l < 32; ++l) b.hmask[l] = l < 16 ? 0x0f : 0xa5;
  float out[256];
  DequantizeRow(DType::kQ3_K, &b, 256, out);
  for (int k = 0; k < 256; ++k) {
    const int h = k / 128, j = k % 128 / 32, l = k % 32;
    const int hbit = ((l < 16 ? 0x0f : 0xa5) >> (4 * h + j)) & 1;
    const int q = j | hbit << 2;
    EXPECT_EQ(out[k], 0.5f * sc[k / 16] * (q - 4)) << k;
  }
}

// Q2_K by hand: scales[i] = sc | m << 4 with sc = i, m = 15 - i; qs = 0x1b gives element
// 128h + 32j + l the 2-bit value (0x1b >> 2j) & 3 = 3, 2, 1, 0 for j = 0..3.
TEST(QuantTest, Q2_KDequantizesHandBuiltBlock) {
  BlockQ2_K b;
  b.d = 0x3c00;     // 1
  b.dmin = 0x3400;  // 0.25
  for (int i = 0; i < 16; ++i) b.scales[i] = static_cast<uint8_t>(i | (15 - i) << 4);
  std::memset(b.qs, 0x1b, sizeof(b.qs));
  float out[256];
  DequantizeRow(DType::kQ2_K, &b, 256, out);
  for (int k = 0; k < 256; ++k) {
    const int q = 3 - k % 128 / 32, i = k / 16;
    EXPECT_EQ(out[k], static_cast<float>(i * q) - 0.25f * (15 - i)) << k;
  }
}

TEST(QuantTest, KQuantPackUnpackRoundTrip) {
  std::mt19937 rng(11);
  for (DType type : kKTypes) {
    const int sub = KSubBlock(type);
    const bool has_min = type == DType::kQ2_K || type == DType::kQ4_K || type == DType::kQ5_K;
    const int qmax = type == DType::kQ2_K   ? 3
                     : type == DType::kQ3_K ? 7
                     : type == DType::kQ4_K ? 15
                     : type == DType::kQ5_K ? 31
                                            : 63;
    for (int trial = 0; trial < 20; ++trial) {
      KQuantValues v;
      v.d = static_cast<uint16_t>(rng() & 0x7bff);
      if (has_min) v.dmin = static_cast<uint16_t>(rng() & 0x7bff);
      for (int i = 0; i < kSuperBlock / sub; ++i) {
        switch (type) {
          case DType::kQ2_K:
            v.sc[i] = static_cast<int8_t>(rng() % 16);
            v.m[i] = static_cast<uint8_t>(rng() % 16);
            break;
          case DType::kQ3_K:
            v.sc[i] = static_cast<int8_t>(static_cast<int>(rng() % 64) - 32);
            break;
          case DType::kQ6_K:
            v.sc[i] = static_cast<int8_t>(rng());
            break;
          default:
            v.sc[i] = static_cast<int8_t>(rng() % 64);
            v.m[i] = static_cast<uint8_t>(rng() % 64);
        }
      }
      for (auto& q : v.q) q = static_cast<uint8_t>(rng() % (qmax + 1));
      std::vector<uint8_t> block(BlockBytes(type));
      PackKQuant(type, v, block.data());
      KQuantValues back;
      UnpackKQuant(type, block.data(), &back);
      ASSERT_EQ(std::memcmp(&back, &v, sizeof(v)), 0) << DTypeName(type) << " trial " << trial;
    }
  }
}

// Round-trip error of the K quantizers (quant.cc), per 256-element super-block with
// sub-blocks i of range [lo_i, hi_i] (lo_i = min(0, min x) for types with minima):
//  - with minima (levels q <= qmax, 6- or 4-bit sc and m <= lmax): dmin <= R / lmax (R the
//    largest -lo_i) rounded up to fp16, so -dmin m_i reaches lo_i within one dmin; each
//    sub-block then needs a step of (hi_i + dmin m_i) / qmax, d rounds the largest of these up
//    to fp16 / lmax, and sc_i up to a multiple of d: the step is <= need_i + d and nearest
//    rounding errs by half a step;
//  - symmetric (Q3_K: off 4, |sc| <= 31; Q6_K: off 32, |sc| <= 127): the step is
//    <= amax_i / off + d with d <= max amax / off / scmax rounded up; the side opposite the
//    sub-block's extreme may be clamped at level 2 off - 1, one step off.
// fp16 rounding up adds at most 2^-10 relative or one subnormal step (6e-8).
double KBlockErrorBound(DType type, const float* x, int sub_index) {
  const int sub = KSubBlock(type);
  const int n_sub = kSuperBlock / sub;
  auto up = [](double v) { return v * (1 + 1.0 / 1024) + 6e-8; };
  if (type == DType::kQ3_K || type == DType::kQ6_K) {
    const int off = KOffset(type), scmax = type == DType::kQ3_K ? 31 : 127;
    double max_amax = 0, amax_i = 0;
    for (int i = 0; i < n_sub; ++i) {
      double a = 0;
      for (int j = 0; j < sub; ++j) a = std::max(a, std::fabs(double{x[i * sub + j]}));
      max_amax = std::max(max_amax, a);
      if (i == sub_index) amax_i = a;
    }
    const double d = up(max_amax / off / scmax);
    return amax_i / off + d;
  }
  const int qmax = type == DType::kQ2_K ? 3 : type == DType::kQ4_K ? 15 : 31;
  const int lmax = type == DType::kQ2_K ? 15 : 63;
  double r = 0, max_need = 0, need_i = 0;
  std::vector<double> lo(n_sub), hi(n_sub);
  for (int i = 0; i < n_sub; ++i) {
    lo[i] = 0;
    hi[i] = x[i * sub];
    for (int j = 0; j < sub; ++j) {
      lo[i] = std::min(lo[i], double{x[i * sub + j]});
      hi[i] = std::max(hi[i], double{x[i * sub + j]});
    }
    r = std::max(r, -lo[i]);
  }
  const double dmin = up(r / lmax);
  for (int i = 0; i < n_sub; ++i) {
    const double need = (hi[i] - lo[i] + dmin) / qmax;
    max_need = std::max(max_need, need);
    if (i == sub_index) need_i = need;
  }
  const double d = up(max_need / lmax);
  return (need_i + d) / 2;
}

TEST(QuantTest, KQuantRoundTripWithinFormatError) {
  const int64_t cols = 512;
  std::mt19937 rng(5);
  for (DType type : kKTypes) {
    for (float scale : {1e-3f, 1.f, 300.f}) {
      for (float shift : {0.f, 0.7f, -0.7f}) {
        std::uniform_real_distribution<float> dist(-1.f, 1.f);
        std::vector<float> x(cols);
        for (int64_t k = 0; k < cols; ++k) {
          // Sub-blocks of different magnitudes, so the sub-block scales differ.
          x[k] = (dist(rng) + shift) * scale * (1 + static_cast<float>(k / 16 % 5));
        }
        std::vector<uint8_t> row(RowBytes(type, cols));
        QuantizeRow(type, x.data(), cols, row.data());
        std::vector<float> back(cols);
        DequantizeRow(type, row.data(), cols, back.data());
        const int sub = KSubBlock(type);
        for (int64_t k = 0; k < cols; ++k) {
          const float* sb = x.data() + k / kSuperBlock * kSuperBlock;
          const double bound =
              KBlockErrorBound(type, sb, static_cast<int>(k % kSuperBlock / sub)) * (1 + 1e-5);
          ASSERT_LE(std::fabs(back[k] - x[k]), bound)
              << DTypeName(type) << " scale " << scale << " shift " << shift << " k " << k;
        }
      }
    }
  }
}

TEST(QuantTest, KQuantFlatAndZeroSuperBlocks) {
  for (DType type : kKTypes) {
    for (float v : {0.f, 2.f, -3.f}) {
      std::vector<float> x(256, v), back(256);
      std::vector<uint8_t> row(BlockBytes(type));
      QuantizeRow(type, x.data(), 256, row.data());
      DequantizeRow(type, row.data(), 256, back.data());
      for (int k = 0; k < 256; ++k) {
        EXPECT_NEAR(back[k], v, std::fabs(v) * 2e-3) << DTypeName(type) << " " << v << " " << k;
      }
    }
  }
}

}  // namespace
}  // namespace tandem::kernels
