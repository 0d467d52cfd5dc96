// kernels/cuda EmbeddingGather run in the CUDA-on-CPU harness against kernels/quant
// DequantizeRow, for every supported table type and every activation dtype: bit for bit (every
// table type dequantizes exactly in f32, and both sides round that value to T once, to nearest
// even; see embedding.cuh). EmbeddingGatherPacked likewise from the packed layout.
#include "kernels/cuda/embedding.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cuda/quant_matmul.h"
#include "kernels/quant.h"
#include "tests/cuda/cuda_test_util.h"

namespace tandem::kernels::cuda {
namespace {

using namespace testing;  // NOLINT(build/namespaces): the test helpers

// A table of `rows` rows of `cols` random values stored as type t.
std::vector<unsigned char> MakeTable(DType t, int64_t rows, int cols, std::mt19937& rng) {
  const std::vector<float> values = RandomFloats(rows * cols, -1.f, 1.f, rng);
  const int64_t row_bytes = RowBytes(t, cols);
  std::vector<unsigned char> table(rows * row_bytes);
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = values.data() + r * cols;
    unsigned char* out = table.data() + r * row_bytes;
    switch (t) {
      case DType::kF32:
        std::memcpy(out, in, cols * sizeof(float));
        break;
      case DType::kF16:
      case DType::kBF16:
        for (int c = 0; c < cols; ++c) {
          const uint16_t bits = t == DType::kF16 ? FloatToHalf(in[c]) : FloatToBf16(in[c]);
          std::memcpy(out + 2 * c, &bits, 2);
        }
        break;
      default:
        QuantizeRow(t, in, cols, out);
    }
  }
  return table;
}

template <typename T>
class EmbeddingTest : public ::testing::Test {};
TYPED_TEST_SUITE(EmbeddingTest, ActTypes);

TYPED_TEST(EmbeddingTest, MatchesDequantizeRow) {
  using T = TypeParam;
  std::mt19937 rng(41);
  const int64_t table_rows = 50;
  for (DType t :
       {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1}) {
    ASSERT_TRUE(EmbeddingTypeSupported(t));
    std::vector<int> col_choices = {32, 96, 320};
    if (BlockElems(t) == 1) col_choices.insert(col_choices.end(), {1, 7, 100});
    for (int cols : col_choices) {
      for (int n : {1, 5, 17}) {
        const std::vector<unsigned char> table = MakeTable(t, table_rows, cols, rng);
        std::vector<int32_t> ids(n);
        std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(table_rows - 1));
        for (int32_t& i : ids) i = id(rng);
        if (n > 1) ids[n - 1] = ids[0];  // repeats are fine
        std::vector<T> want(static_cast<size_t>(n) * cols);
        std::vector<float> row(cols);
        for (int i = 0; i < n; ++i) {
          DequantizeRow(t, table.data() + ids[i] * RowBytes(t, cols), cols, row.data());
          for (int c = 0; c < cols; ++c)
            want[static_cast<size_t>(i) * cols + c] = FromFloat<T>(row[c]);
        }
        std::vector<T> out(want.size(), FromFloat<T>(7.f));
        DeviceCopy<unsigned char> dtable(table);
        DeviceCopy<int32_t> dids(ids);
        DeviceCopy<T> dout(out);
        EmbeddingParams p;
        p.table = dtable.get();
        p.table_type = t;
        p.table_rows = table_rows;
        p.cols = cols;
        p.ids = dids.get();
        p.n = n;
        p.out = dout.get();
        p.dtype = ActTraits<T>::kDType;
        EmbeddingGather(p, Stream{});
        dout.ToHost(out);
        EXPECT_TRUE(SameBits(out, want)) << DTypeName(t) << " cols " << cols << " n " << n;
      }
    }
  }
}

// The packed layout (RepackGguf), which the backend gathers Q5 and K-quant tables from: every
// quantized type, tables of two 64-row tiles and a ragged third, k of one or several 64-column
// tiles and k = 96 / 160 (half a tile of padding). The 32-block types' pairs are exact, so the
// values are DequantizeRow's bit for bit; a K-quant pair is rounded to fp16 at repack (scale
// d sc and bias -offset d sc - dmin m, 2^-11 each: quant_matmul.h), so its weight may be off by
// e_w = (q + offset) e_s + 2^-11 |bias| (+ fp16 subnormal half-ulps), e_s = 2^-11 |d sc|, before
// the one rounding to T.
TYPED_TEST(EmbeddingTest, PackedMatchesDequantizeRow) {
  using T = TypeParam;
  std::mt19937 rng(43);
  const int64_t rows = 150;
  for (DType t : {DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0,
                  DType::kQ2_K, DType::kQ3_K, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K}) {
    const std::vector<int> col_choices =
        IsKQuant(t) ? std::vector<int>{256, 512} : std::vector<int>{32, 96, 160};
    for (int cols : col_choices) {
      const std::vector<unsigned char> table = MakeTable(t, rows, cols, rng);
      auto packed = RepackGguf(WeightDesc{t, rows, cols, table.data(), "table"});
      ASSERT_TRUE(packed.ok()) << packed.status();
      const int n = 9;
      std::vector<int32_t> ids(n);
      std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(rows - 1));
      for (int32_t& i : ids) i = id(rng);
      ids[0] = 0;
      ids[1] = static_cast<int32_t>(rows - 1);  // the ragged tile's last row
      std::vector<float> want(static_cast<size_t>(n) * cols), err(want.size(), 0.f);
      for (int i = 0; i < n; ++i) {
        const unsigned char* row = table.data() + ids[i] * RowBytes(t, cols);
        DequantizeRow(t, row, cols, want.data() + static_cast<size_t>(i) * cols);
        if (!IsKQuant(t)) continue;
        for (int b = 0; b < cols / kSuperBlock; ++b) {
          KQuantValues v;
          UnpackKQuant(t, row + b * BlockBytes(t), &v);
          for (int e = 0; e < kSuperBlock; ++e) {
            const int sub = e / KSubBlock(t);
            const double scale = double{HalfToFloat(v.d)} * v.sc[sub];
            const double bias = -KOffset(t) * scale - double{HalfToFloat(v.dmin)} * v.m[sub];
            const double e_s = std::ldexp(std::fabs(scale), -11) + 0x1p-25;
            err[static_cast<size_t>(i) * cols + b * kSuperBlock + e] = static_cast<float>(
                (v.q[e] + KOffset(t)) * e_s + 1.01 * std::ldexp(std::fabs(bias), -11) + 0x1p-25);
          }
        }
      }
      std::vector<T> out(want.size(), FromFloat<T>(7.f));
      DeviceCopy<uint32_t> dq(packed->q), ds(packed->scales);
      DeviceCopy<int32_t> dids(ids);
      DeviceCopy<T> dout(out);
      PackedEmbeddingParams p;
      p.table.q = dq.get();
      p.table.scales = ds.get();
      p.table.bits = packed->bits;
      p.table.n = static_cast<int>(packed->n);
      p.table.k = static_cast<int>(packed->k);
      p.table.n_pad = static_cast<int>(packed->n_pad);
      p.table.k_pad = static_cast<int>(packed->k_pad);
      p.table.group = packed->group;
      p.ids = dids.get();
      p.n = n;
      p.out = dout.get();
      p.dtype = ActTraits<T>::kDType;
      EmbeddingGatherPacked(p, Stream{});
      dout.ToHost(out);
      for (size_t j = 0; j < want.size(); ++j) {
        const double got = ToFloat(out[j]);
        if (!IsKQuant(t)) {
          ASSERT_EQ(got, ToFloat(FromFloat<T>(want[j])))
              << DTypeName(t) << " cols " << cols << " element " << j;
          continue;
        }
        const double tol = err[j] + ActTraits<T>::kHalfUlp * (std::fabs(want[j]) + err[j]) +
                           ActTraits<T>::kSubnormalAbs;
        ASSERT_NEAR(got, want[j], tol) << DTypeName(t) << " cols " << cols << " element " << j;
      }
    }
  }
}

#if defined(TANDEM_CUDA_EMU)
// An id outside the table is a broken invariant: the kernel's device check traps on a GPU and
// aborts in the harness.
TEST(EmbeddingDeathTest, IdOutOfRangeAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::mt19937 rng(42);
  const std::vector<unsigned char> table = MakeTable(DType::kF32, 4, 8, rng);
  const std::vector<int32_t> ids = {1, 4};
  std::vector<float> out(16);
  EmbeddingParams p;
  p.table = table.data();
  p.table_type = DType::kF32;
  p.table_rows = 4;
  p.cols = 8;
  p.ids = ids.data();
  p.n = 2;
  p.out = out.data();
  EXPECT_DEATH(EmbeddingGather(p, Stream{}), "CHECK failed");
}
#endif  // TANDEM_CUDA_EMU

}  // namespace
}  // namespace tandem::kernels::cuda
