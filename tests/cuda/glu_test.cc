// kernels/cuda Glu (SwiGLU and GeGLU) run in the CUDA-on-CPU harness against kernels/ref
// SwiGluRef and GeGluRef, for f32, f16 and bf16 activations, ragged sizes, out aliasing gate.
//
// f32 tolerance: 1e-5 relative plus 1e-30 absolute, the CPU backend's. SwiGLU: expf (<= 2 ulp
// on CUDA, < 1 on glibc), 1 + e, a division and a product: ~5 ulp, 3e-7. GeGLU also forms z in
// f32 (~3 ulp), which moves exp(-z) by ~3 * 2^-24 * |z| relative: <= 4.5e-6 for |g| <= 6
// (|z| <= 25), the range tested (past g ~ -8.3 the bound would pass 1e-5, where |out| < 1e-20).
// f16/bf16: plus the output's rounding (cuda_test_util.h).
#include "kernels/cuda/glu.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/ref/ops_ref.h"
#include "tests/cuda/cuda_test_util.h"

namespace tandem::kernels::cuda {
namespace {

using namespace testing;  // NOLINT(build/namespaces): the test helpers

constexpr double kF32Rel = 1e-5;
constexpr double kF32Abs = 1e-30;

template <typename T>
class GluTest : public ::testing::Test {};
TYPED_TEST_SUITE(GluTest, ActTypes);

TYPED_TEST(GluTest, MatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(31);
  std::vector<std::pair<int, int>> shapes = {{1, 1}, {3, 37}, {7, 300}, {2, 5000}};
  std::uniform_int_distribution<int> rows(1, 8), dim(1, 900);
  for (int i = 0; i < 3; ++i) shapes.push_back({rows(rng), dim(rng)});
  for (auto [r, d] : shapes) {
    for (GluKind kind : {GluKind::kSwiGlu, GluKind::kGeGlu}) {
      for (bool out_is_gate : {false, true}) {
        const size_t n = static_cast<size_t>(r) * d;
        const float range = kind == GluKind::kSwiGlu ? 10.f : 6.f;
        std::vector<T> gate = ToActs<T>(RandomFloats(n, -range, range, rng));
        const std::vector<T> up = ToActs<T>(RandomFloats(n, -2.f, 2.f, rng));
        std::vector<float> want(n);
        (kind == GluKind::kSwiGlu ? ref::SwiGluRef : ref::GeGluRef)(
            FromActs(gate).data(), FromActs(up).data(), r, d, want.data());
        std::vector<T> out(n, FromFloat<T>(7.f));
        DeviceCopy<T> dgate(gate), dup(up), dout(out);
        GluParams p;
        p.gate = dgate.get();
        p.up = dup.get();
        p.out = out_is_gate ? dgate.get() : dout.get();
        p.rows = r;
        p.dim = d;
        p.kind = kind;
        p.dtype = ActTraits<T>::kDType;
        Glu(p, Stream{});
        dgate.ToHost(gate);
        dout.ToHost(out);
        const std::vector<float> got = FromActs(out_is_gate ? gate : out);
        for (size_t i = 0; i < n; ++i) {
          ASSERT_NEAR(got[i], want[i], Tolerance<T>(want[i], kF32Rel, kF32Abs))
              << "rows " << r << " dim " << d << " i " << i << " kind " << static_cast<int>(kind);
        }
      }
    }
  }
}

}  // namespace
}  // namespace tandem::kernels::cuda
