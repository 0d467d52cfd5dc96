#include "bench/tandem_bench/arrival_process.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

namespace tandem::bench {
namespace {

struct Stats {
  double mean;
  double cv;
};

Stats GapStats(double rate, double burstiness, uint64_t seed, int n) {
  auto p = ArrivalProcess::Create({rate, burstiness, seed});
  EXPECT_TRUE(p.ok()) << p.status();
  std::vector<double> g(n);
  for (double& x : g) x = p->NextGap();
  const double mean = std::accumulate(g.begin(), g.end(), 0.0) / n;
  double var = 0;
  for (double x : g) var += (x - mean) * (x - mean);
  var /= (n - 1);
  return {mean, std::sqrt(var) / mean};
}

// 20000 gaps: the sample mean's relative standard error is cv / sqrt(20000) < 1.5% even for
// cv = 2, so a 3% (mean) / 4% (cv) band fails only for a wrong distribution. Seeds are fixed.
TEST(ArrivalProcessTest, PoissonRateAndCv) {
  const Stats s = GapStats(5.0, 1.0, 42, 20000);
  EXPECT_NEAR(1.0 / s.mean, 5.0, 5.0 * 0.03);
  EXPECT_NEAR(s.cv, 1.0, 0.04);
}

TEST(ArrivalProcessTest, GammaCvIsOneOverSqrtBurstiness) {
  for (double b : {0.25, 0.5, 2.0, 4.0}) {
    const Stats s = GapStats(8.0, b, 7, 20000);
    const double want_cv = 1.0 / std::sqrt(b);
    EXPECT_NEAR(1.0 / s.mean, 8.0, 8.0 * 0.03) << "burstiness " << b;
    EXPECT_NEAR(s.cv, want_cv, want_cv * 0.04) << "burstiness " << b;
  }
}

TEST(ArrivalProcessTest, SameSeedSameGaps) {
  auto a = ArrivalProcess::Create({3.0, 0.5, 99});
  auto b = ArrivalProcess::Create({3.0, 0.5, 99});
  auto c = ArrivalProcess::Create({3.0, 0.5, 100});
  const auto oa = a->SendOffsets(50, false);
  EXPECT_EQ(oa, b->SendOffsets(50, false));
  EXPECT_NE(oa, c->SendOffsets(50, false));
}

TEST(ArrivalProcessTest, RescaleLandsLastSendAtNOverRate) {
  auto p = ArrivalProcess::Create({4.0, 1.0, 1});
  const auto o = p->SendOffsets(100, true);
  ASSERT_EQ(o.size(), 100u);
  EXPECT_NEAR(o.back(), 100 / 4.0, 1e-9);
  for (size_t i = 1; i < o.size(); ++i) EXPECT_GE(o[i], o[i - 1]);
}

TEST(ArrivalProcessTest, InfiniteRateSendsAllAtOnce) {
  auto p = ArrivalProcess::Create({std::numeric_limits<double>::infinity(), 1.0, 1});
  ASSERT_TRUE(p.ok());
  for (double o : p->SendOffsets(10, true)) EXPECT_EQ(o, 0.0);
}

TEST(ArrivalProcessTest, RejectsBadConfig) {
  EXPECT_FALSE(ArrivalProcess::Create({0.0, 1.0, 1}).ok());
  EXPECT_FALSE(ArrivalProcess::Create({-1.0, 1.0, 1}).ok());
  EXPECT_FALSE(ArrivalProcess::Create({1.0, 0.0, 1}).ok());
  EXPECT_FALSE(ArrivalProcess::Create({std::nan(""), 1.0, 1}).ok());
}

}  // namespace
}  // namespace tandem::bench
