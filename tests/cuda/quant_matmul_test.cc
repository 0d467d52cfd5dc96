// kernels/cuda QuantMatmul, W4A16 and W8A16 (GEMM and GEMV paths), and its repack, run in the
// CUDA-on-CPU harness.
//
// Reference: for the GGUF types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q6_K), kernels/ref Matmul
// (DequantizeRow weights, activations as given, double accumulation; not MatmulQuantizedActs, which
// quantizes activations to int8 like the CPU kernels and so is not what these kernels compute). AWQ
// has no GGUF type, so its reference is the same sum written here over (q - z) * s. The test rounds
// the random activations to the activation dtype first and gives the reference those rounded
// values, so activation rounding is not part of the error.
//
// Tolerance per output y = sum_k x_k w_k, with u the unit roundoff of the activation dtype
// (2^-11 f16, 2^-8 bf16):
//   * the weight the kernel multiplies: fmaf(q, s, b) in f32 (one rounding, 2^-24 relative),
//     where for AWQ b = -z s was rounded to fp16 at repack (|e_b| <= 2^-11 |z s|; exact for
//     Q4_0's -8 d, Q5_0's -16 d, Q4_1's and Q5_1's m and Q8_0's -128 d). A K-quant's pair
//     (s, b) = (d sc, -offset s - dmin m) has both halves rounded to fp16, so its weight
//     q s + b is off by e_b = (q + offset) e_s + 2^-11 |b| (+ fp16 subnormal half-ulps),
//     e_s = 2^-11 |d sc|. The GEMM then rounds it to the activation dtype for
//     the mma (u relative); the GEMV keeps the f32 value. Per weight:
//       |w'_k - w_k| <= (u_w + 2^-24)(1 + u_w)(|w_k| + e_b) + e_b,  u_w = u (GEMM) or 0 (GEMV);
//   * f32 accumulation over k terms: <= k 2^-24 sum_k |x_k w'_k| for a sequential sum (gamma_k);
//     doubled, k 2^-23, because a tensor core's internal sum may truncate rather than round;
//   * the output's rounding to the activation dtype: u (|y| + the above), plus 2^-25 for f16
//     subnormals.
// The bound is a worst case (errors of one sign on every term); measured errors use a few
// percent of it (printed per test), while a fragment-layout or pipeline bug moves outputs by
// O(|y|) and fails at once.
#include "kernels/cuda/quant_matmul.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/quant.h"
#include "kernels/ref/matmul_ref.h"
#include "tests/cuda/cuda_test_util.h"

namespace tandem::kernels::cuda {
namespace {

using namespace testing;  // NOLINT(build/namespaces): the test helpers

enum class Format { kQ4_0, kQ4_1, kQ8_0, kQ5_0, kQ5_1, kQ2_K, kQ3_K, kQ4_K, kQ5_K, kQ6_K, kAwq };
constexpr int kNumFormats = static_cast<int>(Format::kAwq) + 1;

DType GgufType(Format f) {
  constexpr DType kTypes[] = {DType::kQ4_0, DType::kQ4_1, DType::kQ8_0, DType::kQ5_0, DType::kQ5_1,
                              DType::kQ2_K, DType::kQ3_K, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};
  TANDEM_CHECK(f != Format::kAwq);
  return kTypes[static_cast<int>(f)];
}

// The group RepackGguf gives a GGUF format (AWQ's is the case's own).
int GgufGroup(Format f) { return QuantMatmulGroup(GgufType(f)); }

// A random weight in its source format, with its exact dequantized values and the fp16
// rounding error bound of each weight's fused bias (e_b above).
struct TestWeight {
  Format format;
  int64_t n, k;
  int group;
  std::vector<uint8_t> gguf;  // GGUF rows
  std::vector<uint8_t> q, zero;
  std::vector<uint16_t> scale;
  std::vector<float> dequant;   // [n, k]
  std::vector<float> bias_err;  // [n, k]
  PackedQuantWeight packed;
};

TestWeight MakeWeight(Format format, int64_t n, int64_t k, int group, std::mt19937& rng) {
  TestWeight w;
  w.format = format;
  w.n = n;
  w.k = k;
  w.group = group;
  w.dequant.resize(n * k);
  w.bias_err.assign(n * k, 0.f);
  if (format != Format::kAwq) {
    const DType type = GgufType(format);
    const int64_t row_bytes = RowBytes(type, k);
    w.gguf.resize(n * row_bytes);
    for (int64_t r = 0; r < n; ++r) {
      // Rows of different magnitudes, with an offset so Q4_1's minimum is not symmetric.
      const float mag = 0.25f + 0.1f * static_cast<float>(r % 7);
      std::vector<float> row = RandomFloats(k, -mag, 1.3f * mag, rng);
      const uint8_t* bytes = w.gguf.data() + r * row_bytes;
      QuantizeRow(type, row.data(), k, w.gguf.data() + r * row_bytes);
      DequantizeRow(type, bytes, k, w.dequant.data() + r * k);
      if (!IsKQuant(type)) continue;  // the 32-block types' pairs are exact
      for (int64_t b = 0; b < k / kSuperBlock; ++b) {
        KQuantValues v;
        UnpackKQuant(type, bytes + b * BlockBytes(type), &v);
        const double offset = KOffset(type);
        for (int e = 0; e < kSuperBlock; ++e) {
          const int i = e / KSubBlock(type);
          const double scale = double{HalfToFloat(v.d)} * v.sc[i];
          const double bias = -offset * scale - double{HalfToFloat(v.dmin)} * v.m[i];
          const double e_s = std::ldexp(std::fabs(scale), -11) + 0x1p-25;
          const double e_b = offset * e_s + 1.01 * std::ldexp(std::fabs(bias), -11) + 0x1p-25;
          w.bias_err[r * k + b * kSuperBlock + e] = static_cast<float>(v.q[e] * e_s + e_b);
        }
      }
    }
    WeightDesc desc{type, n, k, w.gguf.data(), "test.gguf"};
    auto packed = RepackGguf(desc);
    TANDEM_CHECK(packed.ok());
    w.packed = std::move(*packed);
    return w;
  }
  std::uniform_int_distribution<int> code(0, 15);
  std::uniform_real_distribution<float> scale(0.01f, 0.15f);
  const int64_t groups = k / group;
  w.q.resize(n * k);
  w.zero.resize(n * groups);
  w.scale.resize(n * groups);
  for (auto& v : w.q) v = static_cast<uint8_t>(code(rng));
  for (auto& v : w.zero) v = static_cast<uint8_t>(code(rng));
  for (auto& v : w.scale) v = FloatToHalf(scale(rng));
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      const int64_t g = r * groups + c / group;
      const double s = HalfToFloat(w.scale[g]);
      w.dequant[r * k + c] = static_cast<float>((w.q[r * k + c] - w.zero[g]) * s);  // exact
      w.bias_err[r * k + c] = static_cast<float>(std::ldexp(w.zero[g] * s, -11));
    }
  }
  AwqWeightDesc desc{n, k, group, w.q.data(), w.scale.data(), w.zero.data(), "test.awq"};
  auto packed = RepackAwq(desc);
  TANDEM_CHECK(packed.ok());
  w.packed = std::move(*packed);
  return w;
}

// The code and (scale, bias) of (row n, column k) read back from the packed layout, written
// from quant_matmul.h's description independently of the repack code.
void ReadPacked(const PackedQuantWeight& p, int64_t n, int64_t k, uint32_t* code,
                uint32_t* scale_bias) {
  const int64_t tile = (n / 64) * (p.k_pad / 64) + k / 64;
  const int64_t f = n % 64 / 8, g = n % 8, step = k % 64 / 16, kk = k % 16;
  const int64_t lane = 4 * g + kk % 8 / 2, reg = kk / 8, upper = kk % 2;
  const uint32_t* words = p.q.data() + ((tile * 8 + f) * 32 + lane) * (p.bits / 2);
  if (p.bits == 4) {
    *code = words[step / 2] >> (4 * (2 * (step % 2) + reg) + 16 * upper) & 0xf;
  } else {
    *code = words[step] >> (16 * reg + 8 * upper) & 0xff;
  }
  *scale_bias = p.scales[k / p.group * p.n_pad + n];
}

TEST(QuantRepackTest, DequantizesToTheSourceValuesAndPadsWithZeros) {
  std::mt19937 rng(5);
  struct Case {
    Format format;
    int64_t n, k;
    int group;
  };
  for (const Case& c : {Case{Format::kQ4_0, 70, 96, 32}, Case{Format::kQ4_1, 9, 160, 32},
                        Case{Format::kQ8_0, 66, 96, 32}, Case{Format::kQ5_0, 5, 96, 32},
                        Case{Format::kQ5_1, 65, 64, 32}, Case{Format::kQ2_K, 3, 256, 16},
                        Case{Format::kQ3_K, 66, 256, 16}, Case{Format::kQ4_K, 9, 512, 32},
                        Case{Format::kQ5_K, 7, 256, 32}, Case{Format::kQ6_K, 70, 256, 16},
                        Case{Format::kAwq, 65, 256, 128}, Case{Format::kAwq, 8, 64, 64},
                        Case{Format::kAwq, 3, 96, 32}}) {
    if (c.format != Format::kAwq) {
      ASSERT_EQ(c.group, GgufGroup(c.format));
    }
    const TestWeight w = MakeWeight(c.format, c.n, c.k, c.group, rng);
    const PackedQuantWeight& p = w.packed;
    ASSERT_EQ(p.n_pad, (c.n + 63) / 64 * 64);
    ASSERT_EQ(p.k_pad, (c.k + 63) / 64 * 64);
    ASSERT_EQ(p.bits, c.format == Format::kAwq ? 4 : QuantMatmulBits(GgufType(c.format)));
    ASSERT_EQ(p.group, c.group);
    ASSERT_EQ(p.q.size(), static_cast<size_t>(p.n_pad * p.k_pad * p.bits / 32));
    ASSERT_EQ(p.scales.size(), static_cast<size_t>(p.k_pad / c.group * p.n_pad));
    for (int64_t n = 0; n < p.n_pad; ++n) {
      for (int64_t k = 0; k < p.k_pad; ++k) {
        uint32_t code, sb;
        ReadPacked(p, n, k, &code, &sb);
        const float s = HalfToFloat(sb & 0xffff), b = HalfToFloat(sb >> 16);
        const float got = std::fma(static_cast<float>(code), s, b);  // what the kernels do
        if (n >= c.n || k >= c.k) {
          ASSERT_EQ(code, 0u) << n << " " << k;
          ASSERT_EQ(sb, 0u) << n << " " << k;
          continue;
        }
        if (c.format == Format::kAwq) {
          ASSERT_EQ(code, w.q[n * c.k + k]);
          const int64_t g = n * (c.k / c.group) + k / c.group;
          ASSERT_EQ(sb & 0xffff, w.scale[g]);
          ASSERT_EQ(sb >> 16, FloatToHalf(-static_cast<float>(w.zero[g]) * s));
          ASSERT_NEAR(got, w.dequant[n * c.k + k], 1.01 * w.bias_err[n * c.k + k]);
        } else if (IsKQuant(GgufType(c.format))) {
          ASSERT_NEAR(got, w.dequant[n * c.k + k], w.bias_err[n * c.k + k]) << n << " " << k;
        } else {
          ASSERT_EQ(got, w.dequant[n * c.k + k]) << n << " " << k;  // bit for bit
        }
      }
    }
  }
}

TEST(QuantRepackTest, RefusesWhatItCannotPack) {
  std::vector<uint8_t> data(RowBytes(DType::kQ6_K, 512) * 2);
  auto f16 = RepackGguf(WeightDesc{DType::kF16, 2, 64, data.data(), "w.f16"});
  ASSERT_FALSE(f16.ok());
  EXPECT_NE(f16.status().message().find("w.f16: type F16"), std::string::npos)
      << f16.status().message();
  EXPECT_FALSE(RepackGguf(WeightDesc{DType::kQ4_0, 1, 48, data.data(), "w"}).ok());
  EXPECT_FALSE(RepackGguf(WeightDesc{DType::kQ4_K, 1, 128, data.data(), "w"}).ok());
  std::vector<uint8_t> q(4 * 64, 1), zero(4, 1);
  std::vector<uint16_t> scale(4, FloatToHalf(0.1f));
  EXPECT_FALSE(RepackAwq(AwqWeightDesc{4, 64, 48, q.data(), scale.data(), zero.data(), "w"}).ok());
  q[5] = 16;
  auto bad_code = RepackAwq(AwqWeightDesc{2, 128, 64, q.data(), scale.data(), zero.data(), "w"});
  ASSERT_FALSE(bad_code.ok());
  EXPECT_NE(bad_code.status().message().find("w: row 0 column 5"), std::string::npos);
}

struct QmCase {
  Format format;
  int m, n, k, group;
  QuantMatmulPath path;
};

template <typename T>
void RunCase(const QmCase& c, std::mt19937& rng, double* worst_ratio) {
  const TestWeight w = MakeWeight(c.format, c.n, c.k, c.group, rng);
  const std::vector<T> x = ToActs<T>(RandomFloats(static_cast<size_t>(c.m) * c.k, -1.f, 1.f, rng));
  const std::vector<float> xf = FromActs(x);
  std::vector<float> want(static_cast<size_t>(c.m) * c.n);
  if (c.format == Format::kAwq) {
    for (int i = 0; i < c.m; ++i) {
      for (int r = 0; r < c.n; ++r) {
        double acc = 0;
        for (int k = 0; k < c.k; ++k) acc += double{xf[i * c.k + k]} * w.dequant[r * c.k + k];
        want[i * c.n + r] = static_cast<float>(acc);
      }
    }
  } else {
    ref::Matmul(GgufType(c.format), w.gguf.data(), c.n, c.k, xf.data(), c.m, want.data());
  }

  std::vector<T> y(static_cast<size_t>(c.m) * c.n, FromFloat<T>(7.f));
  DeviceCopy<T> dx(x), dy(y);
  DeviceCopy<uint32_t> dq(w.packed.q), ds(w.packed.scales);
  QuantMatmulParams p;
  p.x = dx.get();
  p.y = dy.get();
  p.m = c.m;
  p.w.q = dq.get();
  p.w.scales = ds.get();
  p.w.bits = w.packed.bits;
  p.w.n = static_cast<int>(w.packed.n);
  p.w.k = static_cast<int>(w.packed.k);
  p.w.n_pad = static_cast<int>(w.packed.n_pad);
  p.w.k_pad = static_cast<int>(w.packed.k_pad);
  p.w.group = w.packed.group;
  p.dtype = ActTraits<T>::kDType;
  p.path = c.path;
  QuantMatmul(p, Stream{});
  dy.ToHost(y);
  const std::vector<float> got = FromActs(y);

  const double u = ActTraits<T>::kHalfUlp;
  const double u_w = c.path == QuantMatmulPath::kGemm ? u : 0.0;
  for (int i = 0; i < c.m; ++i) {
    for (int r = 0; r < c.n; ++r) {
      double weight_err = 0, sum_abs = 0;
      for (int k = 0; k < c.k; ++k) {
        const double ax = std::fabs(xf[i * c.k + k]), aw = std::fabs(w.dequant[r * c.k + k]);
        const double eb = w.bias_err[r * c.k + k];
        const double dw = (u_w + 0x1p-24) * (1 + u_w) * (aw + eb) + eb;
        weight_err += ax * dw;
        sum_abs += ax * (aw + dw);
      }
      const double f32 = weight_err + c.k * 0x1p-23 * sum_abs;
      const double want_v = want[i * c.n + r];
      const double tol = f32 + u * (std::fabs(want_v) + f32) + ActTraits<T>::kSubnormalAbs;
      const double err = std::fabs(got[i * c.n + r] - want_v);
      ASSERT_LE(err, tol) << "format " << static_cast<int>(c.format) << " m " << c.m << " n " << c.n
                          << " k " << c.k << " group " << c.group << " path "
                          << static_cast<int>(c.path) << " at (" << i << ", " << r << ") got "
                          << got[i * c.n + r] << " want " << want_v;
      *worst_ratio = std::max(*worst_ratio, err / tol);
    }
  }
}

// `count` cases of random format, group and shape (k a multiple of the format's block, up to
// 256).
std::vector<QmCase> RandomCases(int count, int max_m, QuantMatmulPath path, std::mt19937& rng) {
  std::vector<QmCase> cases;
  std::uniform_int_distribution<int> format(0, kNumFormats - 1), m(1, max_m), n(1, 150),
      log_group(5, 7);
  for (int i = 0; i < count; ++i) {
    QmCase c{static_cast<Format>(format(rng)), m(rng), n(rng), 0, 32, path};
    int block = 32;
    if (c.format == Format::kAwq) {
      c.group = block = 1 << log_group(rng);
    } else {
      c.group = GgufGroup(c.format);
      block = static_cast<int>(BlockElems(GgufType(c.format)));
    }
    c.k = block * std::uniform_int_distribution<int>(1, 256 / block)(rng);
    cases.push_back(c);
  }
  return cases;
}

template <typename T>
class QuantMatmulTest : public ::testing::Test {};
using QmTypes = ::testing::Types<Half, Bf16>;
TYPED_TEST_SUITE(QuantMatmulTest, QmTypes);

// Ragged shapes: m not a multiple of 16 (and 1), n not a multiple of 64 or 8, k a multiple of
// the group but not of the 64-column tile (k = 96, 160), m spanning two GEMM row tiles; then
// random formats, groups and shapes.
TYPED_TEST(QuantMatmulTest, GemmMatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(101);
  double worst = 0;
  for (const QmCase& c : {
           QmCase{Format::kQ4_0, 37, 136, 96, 32, QuantMatmulPath::kGemm},
           QmCase{Format::kQ4_1, 70, 61, 160, 32, QuantMatmulPath::kGemm},
           QmCase{Format::kAwq, 5, 72, 256, 128, QuantMatmulPath::kGemm},
           QmCase{Format::kAwq, 17, 64, 128, 64, QuantMatmulPath::kGemm},
           QmCase{Format::kQ4_0, 1, 8, 32, 32, QuantMatmulPath::kGemm},
           QmCase{Format::kQ8_0, 37, 100, 96, 32, QuantMatmulPath::kGemm},
           QmCase{Format::kQ8_0, 66, 64, 128, 32, QuantMatmulPath::kGemm},
           QmCase{Format::kQ5_0, 19, 70, 96, 32, QuantMatmulPath::kGemm},
           QmCase{Format::kQ5_1, 3, 64, 64, 32, QuantMatmulPath::kGemm},
           QmCase{Format::kQ4_K, 33, 72, 512, 32, QuantMatmulPath::kGemm},
           QmCase{Format::kQ5_K, 9, 64, 256, 32, QuantMatmulPath::kGemm},
           QmCase{Format::kQ6_K, 40, 100, 256, 16, QuantMatmulPath::kGemm},
           QmCase{Format::kQ3_K, 16, 64, 256, 16, QuantMatmulPath::kGemm},
           QmCase{Format::kQ2_K, 2, 9, 256, 16, QuantMatmulPath::kGemm},
       }) {
    RunCase<T>(c, rng, &worst);
  }
  for (const QmCase& c : RandomCases(3, 80, QuantMatmulPath::kGemm, rng))
    RunCase<T>(c, rng, &worst);
  std::printf("QuantMatmul GEMM: max error / tolerance %.4f\n", worst);
}

TYPED_TEST(QuantMatmulTest, GemvMatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(202);
  double worst = 0;
  for (const QmCase& c : {
           QmCase{Format::kQ4_0, 1, 200, 96, 32, QuantMatmulPath::kGemv},
           QmCase{Format::kQ4_1, 3, 77, 160, 32, QuantMatmulPath::kGemv},
           QmCase{Format::kAwq, 8, 130, 256, 128, QuantMatmulPath::kGemv},
           QmCase{Format::kAwq, 2, 9, 192, 64, QuantMatmulPath::kAuto},
           QmCase{Format::kQ4_1, 8, 64, 64, 32, QuantMatmulPath::kAuto},
           QmCase{Format::kQ8_0, 1, 130, 96, 32, QuantMatmulPath::kGemv},
           QmCase{Format::kQ8_0, 5, 64, 256, 32, QuantMatmulPath::kAuto},
           QmCase{Format::kQ5_0, 2, 70, 96, 32, QuantMatmulPath::kGemv},
           QmCase{Format::kQ5_1, 8, 64, 64, 32, QuantMatmulPath::kGemv},
           QmCase{Format::kQ4_K, 1, 130, 512, 32, QuantMatmulPath::kGemv},
           QmCase{Format::kQ5_K, 4, 64, 256, 32, QuantMatmulPath::kGemv},
           QmCase{Format::kQ6_K, 7, 100, 256, 16, QuantMatmulPath::kGemv},
           QmCase{Format::kQ3_K, 1, 64, 256, 16, QuantMatmulPath::kAuto},
           QmCase{Format::kQ2_K, 3, 9, 256, 16, QuantMatmulPath::kGemv},
       }) {
    RunCase<T>(c, rng, &worst);
  }
  for (const QmCase& c : RandomCases(3, kQmGemvMaxRows, QuantMatmulPath::kGemv, rng)) {
    RunCase<T>(c, rng, &worst);
  }
  std::printf("QuantMatmul GEMV: max error / tolerance %.4f\n", worst);
}

}  // namespace
}  // namespace tandem::kernels::cuda
