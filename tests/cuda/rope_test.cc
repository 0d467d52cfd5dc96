// kernels/cuda Rope run in the CUDA-on-CPU harness against kernels/ref RopeRef, normal and NeoX
// pairs, partial rotation, for f32, f16 and bf16 activations.
//
// f32 tolerance: 1e-5 absolute on inputs in [-2, 2], the CPU backend's. The kernel's angles
// come from double like the reference's, but cos and sin are rounded to f32 (2^-24 relative)
// and the rotation takes two f32 products and a sum: |error| <= ~4 * 2 * 2^-24 ~ 5e-7 for
// |x| <= 2. f16/bf16: plus the output's rounding (cuda_test_util.h). Dimensions past rot_dim
// are untouched (compared exactly).
#include "kernels/cuda/rope.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/ref/ops_ref.h"
#include "tests/cuda/cuda_test_util.h"

namespace tandem::kernels::cuda {
namespace {

using namespace testing;  // NOLINT(build/namespaces): the test helpers

constexpr double kF32Abs = 1e-5;

struct Shape {
  int n_tokens, n_heads, n_kv_heads, head_dim, rot_dim;
};

template <typename T>
class RopeTest : public ::testing::Test {};
TYPED_TEST_SUITE(RopeTest, ActTypes);

TYPED_TEST(RopeTest, MatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(21);
  std::vector<Shape> shapes = {{1, 1, 1, 2, 2},   {3, 4, 2, 64, 64},  {2, 9, 3, 64, 32},
                               {5, 2, 1, 80, 80}, {1, 3, 3, 128, 64}, {4, 2, 2, 10, 6},
                               {2, 0, 2, 16, 16}};
  std::uniform_int_distribution<int> tokens(1, 6), heads(1, 5), half_dim(1, 40);
  for (int i = 0; i < 3; ++i) {
    const int hd = 2 * half_dim(rng);
    shapes.push_back({tokens(rng), heads(rng), heads(rng), hd,
                      2 * std::uniform_int_distribution<int>(1, hd / 2)(rng)});
  }
  std::uniform_int_distribution<int32_t> pos(0, 8191);
  for (const Shape& s : shapes) {
    for (RopeStyle style : {RopeStyle::kNormal, RopeStyle::kNeox}) {
      for (float theta : {10000.f, 1e6f}) {
        const size_t nq = static_cast<size_t>(s.n_tokens) * s.n_heads * s.head_dim;
        const size_t nk = static_cast<size_t>(s.n_tokens) * s.n_kv_heads * s.head_dim;
        std::vector<T> q = ToActs<T>(RandomFloats(nq, -2.f, 2.f, rng));
        std::vector<T> k = ToActs<T>(RandomFloats(nk, -2.f, 2.f, rng));
        std::vector<int32_t> positions(s.n_tokens);
        for (int32_t& p : positions) p = pos(rng);
        std::vector<float> want_q = FromActs(q), want_k = FromActs(k);
        RopeParams p;
        p.q = want_q.data();
        p.k = want_k.data();
        p.positions = positions.data();
        p.n_tokens = s.n_tokens;
        p.n_heads = s.n_heads;
        p.n_kv_heads = s.n_kv_heads;
        p.head_dim = s.head_dim;
        p.rot_dim = s.rot_dim;
        p.theta = theta;
        p.style = style;
        ref::RopeRef(p);
        DeviceCopy<T> dq(q), dk(k);
        DeviceCopy<int32_t> dpositions(positions);
        p.q = reinterpret_cast<float*>(dq.get());
        p.k = reinterpret_cast<float*>(dk.get());
        p.positions = dpositions.get();
        Rope(p, ActTraits<T>::kDType, Stream{});
        dq.ToHost(q);
        dk.ToHost(k);
        const std::vector<float> got_q = FromActs(q), got_k = FromActs(k);
        for (int which = 0; which < 2; ++which) {
          const std::vector<float>& got = which == 0 ? got_q : got_k;
          const std::vector<float>& want = which == 0 ? want_q : want_k;
          for (size_t i = 0; i < got.size(); ++i) {
            const bool rotated = static_cast<int>(i % s.head_dim) < s.rot_dim;
            ASSERT_NEAR(got[i], want[i], rotated ? Tolerance<T>(want[i], 0, kF32Abs) : 0)
                << (which == 0 ? "q" : "k") << " i " << i << " head_dim " << s.head_dim
                << " rot_dim " << s.rot_dim << " style " << static_cast<int>(style);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace tandem::kernels::cuda
