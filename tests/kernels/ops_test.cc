// Tests of the CPU backend's non-matmul ops (kernels/cpu/ops.h) against the scalar references
// (kernels/ref/ops_ref.h), for every OpsIsa this CPU supports, on random inputs.
#include "kernels/cpu/ops.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/quant.h"
#include "kernels/ref/ops_ref.h"
#include "tests/support/ops_isa.h"

namespace tandem::kernels::cpu {
namespace {

using testing::OpsIsaGuard;

std::vector<OpsIsa> SupportedIsas() { return testing::SupportedOpsIsas(); }

std::vector<float> Random(size_t n, float lo, float hi, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Calls fn(begin, end) on uneven consecutive pieces of [0, n), empty ones included, the way
// a thread pool might split the work.
// Each item is covered exactly once, also for n < 3 (ops like Scale are not idempotent).
template <typename Fn>
void CallSplit(int64_t n, Fn fn) {
  const int64_t cuts[] = {0, 0, n / 3, n / 3 + 1, n - 1, n};
  int64_t b = 0;
  for (size_t i = 1; i < std::size(cuts); ++i) {
    const int64_t e = std::clamp<int64_t>(cuts[i], b, n);
    fn(b, e);
    b = e;
  }
}

class OpsTest : public ::testing::TestWithParam<OpsIsa> {
 protected:
  OpsTest() : guard_(GetParam()) {}
  OpsIsaGuard guard_;
  std::mt19937 rng_{1234};
};

TEST(OpsIsa, BestIsSupportedAndSettable) {
  EXPECT_TRUE(OpsIsaSupported(OpsIsa::kScalar));
  EXPECT_TRUE(OpsIsaSupported(BestOpsIsa()));
  const OpsIsa saved = GetOpsIsa();
  for (OpsIsa isa : SupportedIsas()) {
    SetOpsIsa(isa);
    EXPECT_EQ(GetOpsIsa(), isa) << OpsIsaName(isa);
  }
  SetOpsIsa(saved);
}

TEST_P(OpsTest, RmsNormMatchesReference) {
  const int rows = 5;
  for (int dim : {1, 7, 64, 576, 1000}) {
    const auto x = Random(rows * dim, -3.f, 3.f, rng_);
    const auto w = Random(dim, -2.f, 2.f, rng_);
    std::vector<float> want(x.size()), got(x.size(), -1.f);
    ref::RmsNormRef(x.data(), w.data(), rows, dim, 1e-5f, want.data());
    RmsNormRange(x.data(), w.data(), dim, 1e-5f, got.data(), 0, rows);
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-5f * std::fabs(want[i]) + 1e-7f)
          << "dim " << dim << " i " << i;
    }
    // In place (out aliases x), split into ranges: same values as out of place.
    std::vector<float> inplace = x;
    CallSplit(rows, [&](int64_t b, int64_t e) {
      RmsNormRange(inplace.data(), w.data(), dim, 1e-5f, inplace.data(), b, e);
    });
    EXPECT_EQ(0, std::memcmp(inplace.data(), got.data(), sizeof(float) * got.size()));
  }
}

TEST_P(OpsTest, SwiGluMatchesReference) {
  const int rows = 4;
  for (int dim : {1, 13, 64, 1536}) {
    auto gate = Random(rows * dim, -12.f, 12.f, rng_);
    const auto up = Random(rows * dim, -3.f, 3.f, rng_);
    // The exp's clamped tails: huge |g| must give g (or ~0) without inf or NaN.
    const float extremes[] = {-100.f, -90.f, -88.5f, 88.5f, 90.f, 100.f, 0.f};
    for (size_t i = 0; i < std::size(extremes) && i < gate.size(); ++i) gate[i] = extremes[i];
    std::vector<float> want(gate.size()), got(gate.size(), -1.f);
    ref::SwiGluRef(gate.data(), up.data(), rows, dim, want.data());
    SwiGluRange(gate.data(), up.data(), dim, got.data(), 0, rows);
    for (size_t i = 0; i < gate.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-5f * std::fabs(want[i]) + 1e-7f)
          << "dim " << dim << " g " << gate[i] << " u " << up[i];
    }
    std::vector<float> inplace = gate;  // out aliases gate
    CallSplit(rows, [&](int64_t b, int64_t e) {
      SwiGluRange(inplace.data(), up.data(), dim, inplace.data(), b, e);
    });
    EXPECT_EQ(0, std::memcmp(inplace.data(), got.data(), sizeof(float) * got.size()));
  }
}

// Tolerance vs the double reference: 1e-5 relative, plus 1e-30 absolute. The vector exp is
// ~1e-7 relative, but the float argument z = 2 sqrt(2/pi) (g + 0.044715 g^3) carries ~2e-7
// relative rounding, which moves exp(z) by ~2e-7 |z| relative: that exceeds 1e-5 only where
// |z| > 50, i.e. g < -8.3, where the result is below 1e-20, so the absolute term covers it.
// Below z = -88 (g < -10.03, exact result < 1e-37) the vector variants return 0.
TEST_P(OpsTest, GeGluMatchesReference) {
  const int rows = 4;
  for (int dim : {1, 13, 64, 1536}) {
    auto gate = Random(rows * dim, -12.f, 12.f, rng_);
    const auto up = Random(rows * dim, -3.f, 3.f, rng_);
    // Large |g| must give g * up (or 0) without inf or NaN, on both sides of where the
    // clamped exp and the zeroing threshold take over, and where g^3 overflows.
    const float extremes[] = {-1e30f, -1e10f, -100.f,  -20.f, -10.5f, -10.03f, -10.f,
                              -9.f,   -6.f,   -1e-20f, 0.f,   1e-20f, 6.f,     10.f,
                              20.f,   100.f,  1e10f,   1e30f, -0.f};
    for (size_t i = 0; i < std::size(extremes) && i < gate.size(); ++i) gate[i] = extremes[i];
    std::vector<float> want(gate.size()), got(gate.size(), -1.f);
    ref::GeGluRef(gate.data(), up.data(), rows, dim, want.data());
    GeGluRange(gate.data(), up.data(), dim, got.data(), 0, rows);
    // Where |want| >= 1e-20, and for |g| <= 5: the figures quoted in kernels/README.md.
    double max_rel = 0, max_rel_5 = 0;
    for (size_t i = 0; i < gate.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-5f * std::fabs(want[i]) + 1e-30f)
          << "dim " << dim << " g " << gate[i] << " u " << up[i];
      if (std::fabs(want[i]) >= 1e-20f) {
        const double rel = std::fabs(static_cast<double>(got[i]) - want[i]) / std::fabs(want[i]);
        max_rel = std::max(max_rel, rel);
        if (std::fabs(gate[i]) <= 5.f) max_rel_5 = std::max(max_rel_5, rel);
      }
      if (gate[i] >= 10.f) {
        ASSERT_EQ(got[i], gate[i] * up[i]) << gate[i];
      }
      if (gate[i] <= -10.5f) {
        ASSERT_EQ(got[i], 0.f) << gate[i];
      }
    }
    if (dim == 1536) {
      std::printf(
          "GeGLU %s vs double reference: max relative error %.3g (|out| >= 1e-20), %.3g "
          "(|g| <= 5)\n",
          OpsIsaName(GetParam()), max_rel, max_rel_5);
    }
    std::vector<float> inplace = gate;  // out aliases gate
    CallSplit(rows, [&](int64_t b, int64_t e) {
      GeGluRange(inplace.data(), up.data(), dim, inplace.data(), b, e);
    });
    EXPECT_EQ(0, std::memcmp(inplace.data(), got.data(), sizeof(float) * got.size()));
    std::vector<float> inplace_up = up;  // out aliases up
    CallSplit(rows, [&](int64_t b, int64_t e) {
      GeGluRange(gate.data(), inplace_up.data(), dim, inplace_up.data(), b, e);
    });
    EXPECT_EQ(0, std::memcmp(inplace_up.data(), got.data(), sizeof(float) * got.size()));
  }
}

// The reference is the tanh formula itself: checked against values of
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) computed independently (Python, double).
TEST(GeGluRef, MatchesTheTanhFormula) {
  const float x[] = {1.f, -1.f, 0.5f, -3.f, 3.f};
  const double want[] = {0.8411919906082768, -0.15880800939172324, 0.34571400982514394,
                         -0.0036373920817729943, 2.996362607918227};
  const float up[] = {1.f, 1.f, 1.f, 1.f, 1.f};
  float got[5];
  ref::GeGluRef(x, up, 1, 5, got);
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(got[i], want[i], 1e-7 * std::fabs(want[i])) << x[i];
  // And against the literal formula on a grid where 1 + tanh does not cancel in double.
  for (float g = -5.f; g <= 5.f; g += 0.125f) {
    const double u = std::sqrt(2.0 / 3.14159265358979323846) * (g + 0.044715 * g * g * g);
    const double literal = 0.5 * g * (1.0 + std::tanh(u));
    const float one = 1.f;
    float r;
    ref::GeGluRef(&g, &one, 1, 1, &r);
    ASSERT_NEAR(r, literal, 1e-7 * std::fabs(literal) + 1e-30) << g;
  }
}

TEST_P(OpsTest, ScaleIsExact) {
  for (int64_t n : {1, 7, 16, 17, 1000, 4099}) {
    const auto x0 = Random(n, -5.f, 5.f, rng_);
    for (float factor : {std::sqrt(2304.f), -0.5f, 0.f, 1.f}) {
      std::vector<float> want = x0, got = x0;
      ref::ScaleRef(want.data(), factor, n);
      CallSplit(n, [&](int64_t b, int64_t e) { ScaleRange(got.data(), factor, b, e); });
      EXPECT_EQ(want, got) << "n " << n << " factor " << factor;
    }
  }
}

TEST_P(OpsTest, AddBiasAndAddAreExact) {
  for (int dim : {3, 64, 577}) {
    const int rows = 6;
    const auto x0 = Random(rows * dim, -5.f, 5.f, rng_);
    const auto bias = Random(dim, -1.f, 1.f, rng_);
    std::vector<float> want = x0, got = x0;
    ref::AddBiasRef(want.data(), bias.data(), rows, dim);
    CallSplit(rows,
              [&](int64_t b, int64_t e) { AddBiasRange(got.data(), bias.data(), dim, b, e); });
    EXPECT_EQ(want, got);

    const auto y = Random(x0.size(), -5.f, 5.f, rng_);
    want = x0;
    got = x0;
    ref::AddRef(want.data(), y.data(), static_cast<int64_t>(want.size()));
    CallSplit(static_cast<int64_t>(got.size()),
              [&](int64_t b, int64_t e) { AddRange(got.data(), y.data(), b, e); });
    EXPECT_EQ(want, got);
  }
}

TEST_P(OpsTest, GatherRowsIsExact) {
  const int rows = 10, dim = 67, n = 7;
  const auto x = Random(rows * dim, -1.f, 1.f, rng_);
  const std::vector<int32_t> idx = {9, 0, 3, 3, 7, 1, 9};
  std::vector<float> want(n * dim), got(n * dim, -1.f);
  ref::GatherRowsRef(x.data(), idx.data(), n, dim, want.data());
  CallSplit(n, [&](int64_t b, int64_t e) {
    GatherRowsRange(x.data(), idx.data(), dim, got.data(), b, e);
  });
  EXPECT_EQ(want, got);
}

struct RopeCase {
  int head_dim;
  int rot_dim;
  float theta;
  RopeStyle style;
};

TEST_P(OpsTest, RopeMatchesReference) {
  const RopeCase cases[] = {{64, 64, 1e5f, RopeStyle::kNormal},
                            {64, 64, 1e4f, RopeStyle::kNeox},
                            {128, 64, 1e4f, RopeStyle::kNormal},
                            {128, 32, 1e6f, RopeStyle::kNeox}};
  for (const RopeCase& rc : cases) {
    const int n_tokens = 11, n_heads = 9, n_kv_heads = 3;
    std::uniform_int_distribution<int32_t> pos_dist(0, 8191);
    std::vector<int32_t> positions(n_tokens);
    for (int32_t& p : positions) p = pos_dist(rng_);
    positions[0] = 0;
    positions[1] = 1;
    const auto q0 = Random(n_tokens * n_heads * rc.head_dim, -2.f, 2.f, rng_);
    const auto k0 = Random(n_tokens * n_kv_heads * rc.head_dim, -2.f, 2.f, rng_);
    std::vector<float> q_want = q0, k_want = k0, q_got = q0, k_got = k0;
    RopeParams p;
    p.positions = positions.data();
    p.n_tokens = n_tokens;
    p.n_heads = n_heads;
    p.n_kv_heads = n_kv_heads;
    p.head_dim = rc.head_dim;
    p.rot_dim = rc.rot_dim;
    p.theta = rc.theta;
    p.style = rc.style;
    p.q = q_want.data();
    p.k = k_want.data();
    ref::RopeRef(p);
    p.q = q_got.data();
    p.k = k_got.data();
    CallSplit(n_tokens, [&](int64_t b, int64_t e) { RopeRange(p, b, e); });
    // Inputs are in [-2, 2]: 1e-5 absolute is ~5e-6 relative to the pair's length.
    for (size_t i = 0; i < q0.size(); ++i) ASSERT_NEAR(q_got[i], q_want[i], 1e-5f) << i;
    for (size_t i = 0; i < k0.size(); ++i) ASSERT_NEAR(k_got[i], k_want[i], 1e-5f) << i;
    // Dimensions past rot_dim and every head at position 0 are untouched.
    for (int t = 0; t < n_tokens; ++t) {
      for (int h = 0; h < n_heads; ++h) {
        for (int i = 0; i < rc.head_dim; ++i) {
          const size_t j = (static_cast<size_t>(t) * n_heads + h) * rc.head_dim + i;
          if (i >= rc.rot_dim || positions[t] == 0) {
            ASSERT_EQ(q_got[j], q0[j]);
          }
        }
      }
    }
  }
}

// Checks the reference's convention itself on values computed by hand: at position 1, pair 0
// turns by 1 rad and pair i by theta^(-2i/d) rad.
TEST(RopeRef, RotatesPairsByTheDocumentedAngles) {
  const int d = 8;
  for (RopeStyle style : {RopeStyle::kNormal, RopeStyle::kNeox}) {
    std::vector<float> q(d, 0.f), k(d, 0.f);
    // Unit vector on the first element of pair 1.
    const int a = style == RopeStyle::kNormal ? 2 : 1;
    const int b = style == RopeStyle::kNormal ? 3 : 1 + d / 2;
    q[a] = 1.f;
    k[a] = 1.f;
    const int32_t pos = 3;
    RopeParams p;
    p.q = q.data();
    p.k = k.data();
    p.positions = &pos;
    p.n_tokens = 1;
    p.n_heads = 1;
    p.n_kv_heads = 1;
    p.head_dim = d;
    p.rot_dim = d;
    p.theta = 100.f;
    p.style = style;
    ref::RopeRef(p);
    const double angle = 3 * std::pow(100.0, -2.0 / d);
    EXPECT_NEAR(q[a], std::cos(angle), 1e-6);
    EXPECT_NEAR(q[b], std::sin(angle), 1e-6);
    EXPECT_EQ(q, k);
  }
}

// A cache with random bytes everywhere, so that untouched slots can be checked.
struct TestCache {
  TestCache(KvDType dtype, int head_dim, std::mt19937& rng) {
    view.dtype = dtype;
    view.n_layers = 2;
    view.n_blocks = 6;
    view.block_size = 16;
    view.n_kv_heads = 3;
    view.head_dim = head_dim;
    const size_t elems = static_cast<size_t>(view.n_layers) * view.n_blocks * view.n_kv_heads *
                         view.block_size * head_dim;
    const size_t elem_bytes = dtype == KvDType::kF32 ? 4 : dtype == KvDType::kF16 ? 2 : 1;
    std::uniform_int_distribution<int> byte(0, 255);
    k.resize(elems * elem_bytes);
    v.resize(elems * elem_bytes);
    for (auto& x : k) x = static_cast<uint8_t>(byte(rng));
    for (auto& x : v) x = static_cast<uint8_t>(byte(rng));
    const size_t sz = elems / head_dim * 2;
    ksz.assign(sz, 0.5f);
    vsz.assign(sz, 0.25f);
    view.k = k.data();
    view.v = v.data();
    view.k_scale_zero = ksz.data();
    view.v_scale_zero = vsz.data();
  }
  KvCacheView view;
  std::vector<uint8_t> k, v;
  std::vector<float> ksz, vsz;
};

TEST_P(OpsTest, KvAppendMatchesReferenceBitForBit) {
  for (KvDType dtype : {KvDType::kF32, KvDType::kF16, KvDType::kInt8}) {
    // 40 is not a multiple of 16: the scalar fallback inside a vector ISA.
    for (int head_dim : {64, 128, 40}) {
      std::mt19937 cache_rng(99);
      TestCache want(dtype, head_dim, cache_rng);
      cache_rng.seed(99);
      TestCache got(dtype, head_dim, cache_rng);
      ASSERT_EQ(want.k, got.k);
      const int n_tokens = 9;
      const std::vector<int32_t> slots = {17, 0, 95, 40, 41, 42, 63, 64, 5};
      auto k_in = Random(n_tokens * 3 * head_dim, -4.f, 4.f, rng_);
      const auto v_in = Random(n_tokens * 3 * head_dim, -1.f, 3.f, rng_);
      // A constant row: int8's scale == 0 guard.
      std::fill(k_in.begin() + head_dim, k_in.begin() + 2 * head_dim, 0.75f);
      KvAppendParams p;
      p.k = k_in.data();
      p.v = v_in.data();
      p.slots = slots.data();
      p.n_tokens = n_tokens;
      p.layer = 1;
      p.cache = want.view;
      ref::KvAppendRef(p);
      p.cache = got.view;
      CallSplit(n_tokens, [&](int64_t b, int64_t e) { KvAppendRange(p, b, e); });
      EXPECT_EQ(want.k, got.k) << static_cast<int>(dtype) << " " << head_dim;
      EXPECT_EQ(want.v, got.v) << static_cast<int>(dtype) << " " << head_dim;
      EXPECT_EQ(want.ksz, got.ksz);
      EXPECT_EQ(want.vsz, got.vsz);

      // What reads back is the input within the format's rounding error.
      std::vector<float> row(head_dim);
      for (int t = 0; t < n_tokens; ++t) {
        for (int h = 0; h < 3; ++h) {
          for (int which = 0; which < 2; ++which) {
            const float* in = (which == 0 ? k_in.data() : v_in.data()) + (t * 3 + h) * head_dim;
            const int block = slots[t] / 16, offset = slots[t] % 16;
            ref::KvReadRowRef(got.view, which == 1, 1, block, h, offset, row.data());
            const float mn = *std::min_element(in, in + head_dim);
            const float mx = *std::max_element(in, in + head_dim);
            for (int i = 0; i < head_dim; ++i) {
              float tol = 0;
              if (dtype == KvDType::kF16) tol = std::fabs(in[i]) * (1.f / 2048);  // half ulp
              // Int8: half a quantization step (max - min) / 255, plus float rounding.
              if (dtype == KvDType::kInt8) tol = (mx - mn) / 510.f * 1.0001f + 1e-6f;
              ASSERT_NEAR(row[i], in[i], tol) << "t " << t << " h " << h << " i " << i;
            }
          }
        }
      }
    }
  }
}

std::string IsaParamName(const ::testing::TestParamInfo<OpsIsa>& info) {
  return OpsIsaName(info.param);
}

INSTANTIATE_TEST_SUITE_P(AllIsas, OpsTest, ::testing::ValuesIn(SupportedIsas()), IsaParamName);

}  // namespace
}  // namespace tandem::kernels::cpu
