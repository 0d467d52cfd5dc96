#include "bench/tandem_bench/length_dist.h"

#include <gtest/gtest.h>

#include <cmath>

namespace tandem::bench {
namespace {

TEST(LengthDistTest, Fixed) {
  for (const char* spec : {"128", "fixed:128"}) {
    auto d = LengthDist::Parse(spec);
    ASSERT_TRUE(d.ok()) << spec;
    std::mt19937_64 rng(1);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(d->Sample(rng), 128);
  }
}

TEST(LengthDistTest, UniformStaysInRangeAndCoversIt) {
  auto d = LengthDist::Parse("uniform:10:20");
  ASSERT_TRUE(d.ok());
  std::mt19937_64 rng(3);
  int lo = 1000, hi = 0;
  for (int i = 0; i < 2000; ++i) {
    const int v = d->Sample(rng);
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  EXPECT_EQ(lo, 10);
  EXPECT_EQ(hi, 20);
}

TEST(LengthDistTest, LognormalMeanAndSpread) {
  auto d = LengthDist::Parse("lognormal:200:0.5");
  ASSERT_TRUE(d.ok());
  std::mt19937_64 rng(5);
  const int n = 20000;
  double sum = 0, sum_log = 0, sum_log2 = 0;
  for (int i = 0; i < n; ++i) {
    const double v = d->Sample(rng);
    sum += v;
    sum_log += std::log(v);
    sum_log2 += std::log(v) * std::log(v);
  }
  EXPECT_NEAR(sum / n, 200, 200 * 0.03);
  const double m = sum_log / n;
  EXPECT_NEAR(std::sqrt(sum_log2 / n - m * m), 0.5, 0.02);
}

TEST(LengthDistTest, RejectsBadSpecs) {
  for (const char* spec : {"", "0", "-3", "uniform:5", "uniform:9:3", "lognormal:100", "zipf:3",
                           "fixed:abc", "lognormal:100:-1"}) {
    EXPECT_FALSE(LengthDist::Parse(spec).ok()) << spec;
  }
}

}  // namespace
}  // namespace tandem::bench
