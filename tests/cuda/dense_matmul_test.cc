// kernels/cuda DenseMatmulSimt (the dense GEMM the harness runs, and the reference the cuBLAS
// path is checked against on a GPU) against kernels/ref Matmul, every activation dtype.
//
// x and w are random values already of the activation dtype, so the reference (F32 weights,
// double accumulation) sees exactly what the kernel multiplies. Tolerance per output
// y = sum_k x_k w_k: f32 products and sums, <= k 2^-24 sum_k |x_k w_k| (gamma_k of a sequential
// sum), then the rounding to T: u (|y| + that) plus T's subnormal half-ulp (2^-25 for f16).
// A tile or indexing bug moves outputs by O(|y|) and fails at once.
#include "kernels/cuda/dense_matmul.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/ref/matmul_ref.h"
#include "tests/cuda/cuda_test_util.h"

namespace tandem::kernels::cuda {
namespace {

using namespace testing;  // NOLINT(build/namespaces): the test helpers

template <typename T>
class DenseMatmulTest : public ::testing::Test {};
TYPED_TEST_SUITE(DenseMatmulTest, ActTypes);

// Ragged shapes: m, n and k off the 16-wide tile (and 1), a k of one partial tile, n past m.
TYPED_TEST(DenseMatmulTest, MatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(61);
  struct Case {
    int m, n, k;
  };
  double worst = 0;
  for (const Case& c : {Case{1, 1, 1}, Case{1, 70, 64}, Case{5, 33, 100}, Case{17, 16, 16},
                        Case{40, 130, 75}, Case{64, 64, 256}}) {
    const std::vector<T> x = ToActs<T>(RandomFloats(static_cast<size_t>(c.m) * c.k, -1, 1, rng));
    const std::vector<T> w = ToActs<T>(RandomFloats(static_cast<size_t>(c.n) * c.k, -1, 1, rng));
    const std::vector<float> xf = FromActs(x), wf = FromActs(w);
    std::vector<float> want(static_cast<size_t>(c.m) * c.n);
    ref::Matmul(DType::kF32, wf.data(), c.n, c.k, xf.data(), c.m, want.data());
    std::vector<T> y(static_cast<size_t>(c.m) * c.n, FromFloat<T>(7.f));
    DeviceCopy<T> dx(x), dw(w), dy(y);
    DenseMatmulParams p;
    p.x = dx.get();
    p.w = dw.get();
    p.y = dy.get();
    p.m = c.m;
    p.n = c.n;
    p.k = c.k;
    p.dtype = ActTraits<T>::kDType;
    DenseMatmulSimt(p, Stream{});
    dy.ToHost(y);
    const std::vector<float> got = FromActs(y);
    for (int i = 0; i < c.m; ++i) {
      for (int r = 0; r < c.n; ++r) {
        double sum_abs = 0;
        for (int k = 0; k < c.k; ++k) {
          sum_abs += std::fabs(double{xf[i * c.k + k]} * wf[r * c.k + k]);
        }
        const double f32 = c.k * 0x1p-24 * sum_abs;
        const double want_v = want[i * c.n + r];
        const double tol = f32 + ActTraits<T>::kHalfUlp * (std::fabs(want_v) + f32) +
                           ActTraits<T>::kSubnormalAbs + 1e-30;
        const double err = std::fabs(got[i * c.n + r] - want_v);
        ASSERT_LE(err, tol) << "m " << c.m << " n " << c.n << " k " << c.k << " at (" << i << ", "
                            << r << ") got " << got[i * c.n + r] << " want " << want_v;
        worst = std::max(worst, err / tol);
      }
    }
  }
  std::printf("DenseMatmulSimt: max error / tolerance %.4f\n", worst);
}

}  // namespace
}  // namespace tandem::kernels::cuda
