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
  for (DType type :
       {DType::kF32, DType::kF16, DType::kBF16, DType::kQ4_0, DType::kQ4_1, DType::kQ8_0}) {
    for (float scale : {1e-3f, 1.f, 300.f}) {
      for (float shift : {0.f, 0.7f}) {  // shifted blocks exercise Q4_1's minimum
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

}  // namespace
}  // namespace tandem::kernels
