// kernels/cuda Elementwise (Add, AddBias, Scale), GatherRows and Convert run in the CUDA-on-CPU
// harness against kernels/ref AddRef, AddBiasRef, ScaleRef and GatherRowsRef, for f32, f16 and
// bf16 activations, on ragged sizes (not multiples of the 256-thread block or of a warp) and
// random ones, fresh non-zero inputs; Add also with y aliasing x.
//
// Tolerances: none beyond the dtype's rounding. Every output element is one IEEE f32 operation
// (an add, or a multiply) on inputs that widen to f32 exactly, then one round to nearest even
// to the activation dtype. The reference computes the same f32 operation on the same widened
// values, so f32 outputs equal it bit for bit, and f16 / bf16 outputs equal the reference's
// result rounded to the dtype (FromFloat) bit for bit. That implies cuda_test_util.h's half-ulp
// rule, which is checked as well, so a platform where the bit-exact check does not hold still
// says by how much. GatherRows copies and Convert rounds once: bit for bit, with known answers
// for ties to even, f16 overflow, subnormals and NaN.
#include "kernels/cuda/elementwise.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <vector>

#include "kernels/ref/ops_ref.h"
#include "tests/cuda/cuda_test_util.h"

namespace tandem::kernels::cuda {
namespace {

using namespace testing;  // NOLINT(build/namespaces): the test helpers

template <typename T>
uint16_t Bits16(T v) {
  uint16_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

// got == want rounded to T, bit for bit (NaN for NaN), and within the half-ulp rule.
template <typename T>
void ExpectRoundedEqual(const std::vector<T>& got, const std::vector<float>& want,
                        const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const T w = FromFloat<T>(want[i]);
    const float g = ToFloat(got[i]);
    ASSERT_NEAR(g, want[i], Tolerance<T>(want[i], 0, 0)) << what << " i " << i;
    ASSERT_EQ(std::memcmp(&got[i], &w, sizeof(T)), 0)
        << what << " i " << i << " got " << g << " want " << ToFloat(w);
  }
}

template <typename T>
struct Tag {
  using type = T;
};

template <typename T>
class ElementwiseTest : public ::testing::Test {};
TYPED_TEST_SUITE(ElementwiseTest, ActTypes);

// (rows, dim): n = rows * dim, ragged against the 256-thread block and the warp. A shape past
// one grid-stride sweep (4096 blocks * 256 threads = 2^20 elements) takes seconds in the
// harness, so none is run here; GreedySample's strided rows exercise the same loop shape.
std::vector<std::pair<int, int>> Shapes(std::mt19937& rng) {
  std::vector<std::pair<int, int>> shapes = {{1, 1}, {1, 31}, {3, 37}, {5, 257}, {2, 1000}};
  std::uniform_int_distribution<int> rows(1, 6), dim(1, 700);
  for (int i = 0; i < 3; ++i) shapes.push_back({rows(rng), dim(rng)});
  return shapes;
}

TYPED_TEST(ElementwiseTest, AddMatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(11);
  for (auto [r, d] : Shapes(rng)) {
    for (bool alias : {false, true}) {
      const int64_t n = static_cast<int64_t>(r) * d;
      std::vector<T> x = ToActs<T>(RandomFloats(n, -4.f, 4.f, rng));
      const std::vector<T> y = ToActs<T>(RandomFloats(n, -4.f, 4.f, rng));
      std::vector<float> want = FromActs(x);
      const std::vector<float> yf = alias ? want : FromActs(y);
      ref::AddRef(want.data(), yf.data(), n);
      DeviceCopy<T> dx(x), dy(y);
      ElementwiseParams p;
      p.op = ElementwiseOp::kAdd;
      p.x = dx.get();
      p.y = alias ? dx.get() : dy.get();
      p.n = n;
      p.dtype = ActTraits<T>::kDType;
      Elementwise(p, Stream{});
      dx.ToHost(x);
      ExpectRoundedEqual(x, want, alias ? "add x += x" : "add");
    }
  }
}

TYPED_TEST(ElementwiseTest, AddBiasMatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(12);
  for (auto [r, d] : Shapes(rng)) {
    const int64_t n = static_cast<int64_t>(r) * d;
    std::vector<T> x = ToActs<T>(RandomFloats(n, -4.f, 4.f, rng));
    const std::vector<float> bias = RandomFloats(d, -1.f, 1.f, rng);  // f32, not rounded
    std::vector<float> want = FromActs(x);
    ref::AddBiasRef(want.data(), bias.data(), r, d);
    DeviceCopy<T> dx(x);
    DeviceCopy<float> dbias(bias);
    ElementwiseParams p;
    p.op = ElementwiseOp::kAddBias;
    p.x = dx.get();
    p.bias = dbias.get();
    p.n = n;
    p.dim = d;
    p.dtype = ActTraits<T>::kDType;
    Elementwise(p, Stream{});
    dx.ToHost(x);
    ExpectRoundedEqual(x, want, "add_bias");
  }
}

TYPED_TEST(ElementwiseTest, ScaleMatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(13);
  // sqrt(hidden) as Gemma scales its embeddings, and a factor that is not a power of two.
  for (float factor : {std::sqrt(2304.f), -0.3f}) {
    for (auto [r, d] : Shapes(rng)) {
      const int64_t n = static_cast<int64_t>(r) * d;
      std::vector<T> x = ToActs<T>(RandomFloats(n, -2.f, 2.f, rng));
      std::vector<float> want = FromActs(x);
      ref::ScaleRef(want.data(), factor, n);
      DeviceCopy<T> dx(x);
      ElementwiseParams p;
      p.op = ElementwiseOp::kScale;
      p.x = dx.get();
      p.factor = factor;
      p.n = n;
      p.dtype = ActTraits<T>::kDType;
      Elementwise(p, Stream{});
      dx.ToHost(x);
      ExpectRoundedEqual(x, want, "scale");
    }
  }
}

TYPED_TEST(ElementwiseTest, GatherRowsMatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(14);
  for (auto [n, d] : std::vector<std::pair<int, int>>{{1, 1}, {4, 33}, {7, 300}, {3, 2049}}) {
    const int x_rows = 5;
    const std::vector<T> x = ToActs<T>(RandomFloats(static_cast<size_t>(x_rows) * d, -3, 3, rng));
    std::vector<int32_t> idx(n);
    std::uniform_int_distribution<int32_t> pick(0, x_rows - 1);
    for (int32_t& i : idx) i = pick(rng);  // repeats and any order
    idx.back() = x_rows - 1;               // the last row, whatever the draw
    std::vector<float> want(static_cast<size_t>(n) * d);
    ref::GatherRowsRef(FromActs(x).data(), idx.data(), n, d, want.data());
    std::vector<T> out(want.size(), FromFloat<T>(7.f));
    DeviceCopy<T> dx(x), dout(out);
    DeviceCopy<int32_t> didx(idx);
    GatherRowsParams p;
    p.x = dx.get();
    p.idx = didx.get();
    p.out = dout.get();
    p.n = n;
    p.dim = d;
    p.x_rows = x_rows;
    p.dtype = ActTraits<T>::kDType;
    GatherRows(p, Stream{});
    dout.ToHost(out);
    EXPECT_TRUE(SameBits(out, ToActs<T>(want))) << "n " << n << " dim " << d;
  }
}

// Every pair of dtypes, on values that need rounding, overflow f16, are f16 subnormals or NaN.
TYPED_TEST(ElementwiseTest, ConvertRoundsOnce) {
  using In = TypeParam;
  std::mt19937 rng(15);
  std::vector<float> values = RandomFloats(3001, -8.f, 8.f, rng);
  const std::vector<float> wide = RandomFloats(1000, -1e5f, 1e5f, rng);
  const std::vector<float> tiny = RandomFloats(1000, -1e-6f, 1e-6f, rng);
  values.insert(values.end(), wide.begin(), wide.end());
  values.insert(values.end(), tiny.begin(), tiny.end());
  values.push_back(std::numeric_limits<float>::quiet_NaN());
  values.push_back(-std::numeric_limits<float>::infinity());
  const std::vector<In> in = ToActs<In>(values);
  DeviceCopy<In> din(in);
  auto check = [&](auto out_tag) {
    using Out = typename decltype(out_tag)::type;
    std::vector<Out> out(in.size(), FromFloat<Out>(7.f));
    DeviceCopy<Out> dout(out);
    ConvertParams p;
    p.in = din.get();
    p.out = dout.get();
    p.n = static_cast<int64_t>(in.size());
    p.in_dtype = ActTraits<In>::kDType;
    p.out_dtype = ActTraits<Out>::kDType;
    Convert(p, Stream{});
    dout.ToHost(out);
    for (size_t i = 0; i < in.size(); ++i) {
      const float x = ToFloat(in[i]);
      const Out want = FromFloat<Out>(x);
      if (std::isnan(x)) {
        ASSERT_TRUE(std::isnan(ToFloat(out[i]))) << i;
      } else {
        ASSERT_EQ(std::memcmp(&out[i], &want, sizeof(Out)), 0) << "i " << i << " x " << x;
      }
    }
  };
  check(Tag<float>{});
  check(Tag<Half>{});
  check(Tag<Bf16>{});
}

// Known answers for f32 -> f16 / bf16, independent of the FromFloat the kernel calls.
TEST(ElementwiseConvertTest, KnownAnswers) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // (f32, f16 bits, bf16 bits); ties go to the even significand.
  const struct {
    float x;
    uint16_t f16, bf16;
  } cases[] = {
      {1.f, 0x3C00, 0x3F80},
      {1.f + 0x1p-11f, 0x3C00, 0x3F80},      // f16 tie -> even (down)
      {1.f + 3 * 0x1p-11f, 0x3C02, 0x3F80},  // f16 tie -> even (up)
      {1.f + 0x1p-8f, 0x3C04, 0x3F80},       // bf16 tie -> even (down)
      {1.f + 3 * 0x1p-8f, 0x3C0C, 0x3F82},   // bf16 tie -> even (up)
      {-2.f, 0xC000, 0xC000},
      {65504.f, 0x7BFF, 0x4780},       // f16 max; bf16 65536 (rounds up)
      {65520.f, 0x7C00, 0x4780},       // f16 overflow to inf at the halfway point
      {0x1p-25f, 0x0000, 0x3300},      // half the f16 subnormal step: tie to 0
      {3 * 0x1p-26f, 0x0001, 0x3340},  // above the tie: the smallest subnormal
      {0x1p-14f, 0x0400, 0x3880},      // the smallest f16 normal
  };
  std::vector<float> in;
  for (const auto& c : cases) in.push_back(c.x);
  in.push_back(nan);
  std::vector<Half> h(in.size());
  std::vector<Bf16> b(in.size());
  DeviceCopy<float> din(in);
  DeviceCopy<Half> dh(h);
  DeviceCopy<Bf16> db(b);
  ConvertParams p;
  p.in = din.get();
  p.n = static_cast<int64_t>(in.size());
  p.in_dtype = ActivationDType::kF32;
  p.out = dh.get();
  p.out_dtype = ActivationDType::kF16;
  Convert(p, Stream{});
  p.out = db.get();
  p.out_dtype = ActivationDType::kBF16;
  Convert(p, Stream{});
  dh.ToHost(h);
  db.ToHost(b);
  for (size_t i = 0; i < std::size(cases); ++i) {
    EXPECT_EQ(Bits16(h[i]), cases[i].f16) << "f16 of " << cases[i].x;
    EXPECT_EQ(Bits16(b[i]), cases[i].bf16) << "bf16 of " << cases[i].x;
  }
  EXPECT_TRUE(std::isnan(ToFloat(h.back())));
  EXPECT_TRUE(std::isnan(ToFloat(b.back())));
}

}  // namespace
}  // namespace tandem::kernels::cuda
