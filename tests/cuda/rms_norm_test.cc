// kernels/cuda RmsNorm (plain and fused with the residual add) run in the CUDA-on-CPU harness
// against kernels/ref RmsNormRef (and AddRef), for f32, f16 and bf16 activations.
//
// f32 tolerance: 1e-5 relative, the CPU backend's. The kernel sums squares in f32 (ceil(dim /
// threads) terms per thread, then a 5-step butterfly and <= 8 warp partials: about
// (dim / threads + 13) * 2^-24 relative, ~1.7e-6 at dim 4096 on 256 threads) and forms
// 1 / sqrt and two products with a few ulps more, against the reference's double.
// f16/bf16: the f32 bound plus the output's rounding (cuda_test_util.h).
#include "kernels/cuda/rms_norm.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/ref/ops_ref.h"
#include "tests/cuda/cuda_test_util.h"

namespace tandem::kernels::cuda {
namespace {

using namespace testing;  // NOLINT(build/namespaces): the test helpers

constexpr double kF32Rel = 1e-5;

struct Shape {
  int rows;
  int dim;
};

std::vector<Shape> Shapes(std::mt19937& rng) {
  std::vector<Shape> shapes = {{1, 1}, {3, 33}, {5, 100}, {2, 257}, {4, 1000}, {2, 4096}};
  std::uniform_int_distribution<int> rows(1, 6), dim(1, 700);
  for (int i = 0; i < 3; ++i) shapes.push_back({rows(rng), dim(rng)});
  return shapes;
}

template <typename T>
class RmsNormTest : public ::testing::Test {};
TYPED_TEST_SUITE(RmsNormTest, ActTypes);

TYPED_TEST(RmsNormTest, MatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(11);
  for (const Shape& s : Shapes(rng)) {
    for (bool in_place : {false, true}) {
      const size_t n = static_cast<size_t>(s.rows) * s.dim;
      std::vector<T> x = ToActs<T>(RandomFloats(n, -2.f, 2.f, rng));
      const std::vector<float> w = RandomFloats(s.dim, 0.5f, 1.5f, rng);
      const float eps = in_place ? 1e-6f : 1e-5f;
      std::vector<float> want(n);
      ref::RmsNormRef(FromActs(x).data(), w.data(), s.rows, s.dim, eps, want.data());
      std::vector<T> out(n, FromFloat<T>(7.f));
      DeviceCopy<T> dx(x), dout(out);
      DeviceCopy<float> dw(w);
      RmsNormParams p;
      p.x = dx.get();
      p.weight = dw.get();
      p.out = in_place ? dx.get() : dout.get();
      p.rows = s.rows;
      p.dim = s.dim;
      p.eps = eps;
      p.dtype = ActTraits<T>::kDType;
      RmsNorm(p, Stream{});
      dx.ToHost(x);
      dout.ToHost(out);
      const std::vector<float> got = FromActs(in_place ? x : out);
      for (size_t i = 0; i < n; ++i) {
        ASSERT_NEAR(got[i], want[i], Tolerance<T>(want[i], kF32Rel, 0))
            << "rows " << s.rows << " dim " << s.dim << " i " << i << " in_place " << in_place;
      }
    }
  }
}

// out = RmsNorm(x + residual) with the sum rounded to T and written back: the reference is AddRef
// then rounding to T (the sum must match bit for bit) then RmsNormRef.
TYPED_TEST(RmsNormTest, FusedResidualMatchesAddThenNorm) {
  using T = TypeParam;
  std::mt19937 rng(12);
  for (const Shape& s : Shapes(rng)) {
    for (bool sum_into_x : {false, true}) {
      const size_t n = static_cast<size_t>(s.rows) * s.dim;
      std::vector<T> x = ToActs<T>(RandomFloats(n, -2.f, 2.f, rng));
      const std::vector<T> residual = ToActs<T>(RandomFloats(n, -2.f, 2.f, rng));
      const std::vector<float> w = RandomFloats(s.dim, 0.5f, 1.5f, rng);
      std::vector<float> sum = FromActs(x);
      ref::AddRef(sum.data(), FromActs(residual).data(), static_cast<int64_t>(n));
      const std::vector<T> want_sum = ToActs<T>(sum);
      std::vector<float> want(n);
      ref::RmsNormRef(FromActs(want_sum).data(), w.data(), s.rows, s.dim, 1e-5f, want.data());

      std::vector<T> sum_out(n, FromFloat<T>(7.f)), out(n, FromFloat<T>(7.f));
      DeviceCopy<T> dx(x), dresidual(residual), dsum(sum_out), dout(out);
      DeviceCopy<float> dw(w);
      RmsNormParams p;
      p.x = dx.get();
      p.residual = dresidual.get();
      p.sum_out = sum_into_x ? dx.get() : dsum.get();
      p.weight = dw.get();
      p.out = dout.get();
      p.rows = s.rows;
      p.dim = s.dim;
      p.eps = 1e-5f;
      p.dtype = ActTraits<T>::kDType;
      RmsNorm(p, Stream{});
      dx.ToHost(x);
      dsum.ToHost(sum_out);
      dout.ToHost(out);
      EXPECT_TRUE(SameBits(sum_into_x ? x : sum_out, want_sum))
          << "rows " << s.rows << " dim " << s.dim;
      const std::vector<float> got = FromActs(out);
      for (size_t i = 0; i < n; ++i) {
        ASSERT_NEAR(got[i], want[i], Tolerance<T>(want[i], kF32Rel, 0))
            << "rows " << s.rows << " dim " << s.dim << " i " << i;
      }
    }
  }
}

}  // namespace
}  // namespace tandem::kernels::cuda
