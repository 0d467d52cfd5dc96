#include "bench/tandem_bench/goodput_sweep.h"

#include <gtest/gtest.h>

#include <cmath>

namespace tandem::bench {
namespace {

// A server whose attainment is a step at a known rate.
TEST(GoodputSweepTest, BisectionFindsAStepThreshold) {
  for (double threshold : {0.3, 1.0, 2.7, 7.3, 40.0}) {
    BisectConfig c;
    c.start_rate = 1.0;
    c.rel_tol = 0.02;
    auto out = BisectGoodput(
        c, [&](double r) -> absl::StatusOr<double> { return r <= threshold ? 0.97 : 0.4; });
    ASSERT_TRUE(out.ok());
    EXPECT_LE(out->goodput_rate, threshold);
    EXPECT_GE(out->goodput_rate, threshold / 1.02) << "threshold " << threshold;
    EXPECT_TRUE(out->bounded);
  }
}

// Attainment falls smoothly with the rate (a logistic curve, as latency grows with load):
// 0.9 is reached at 5 - ln(9) / 2.
TEST(GoodputSweepTest, BisectionFindsASmoothThreshold) {
  const double want = 5 - std::log(9.0) / 2;
  BisectConfig c;
  c.rel_tol = 0.01;
  auto out = BisectGoodput(
      c, [](double r) -> absl::StatusOr<double> { return 1 / (1 + std::exp((r - 5) * 2)); });
  ASSERT_TRUE(out.ok());
  EXPECT_NEAR(out->goodput_rate, want, want * 0.011);
  EXPECT_LE(out->points.size(), 20u);
}

TEST(GoodputSweepTest, NeverMetAndAlwaysMet) {
  BisectConfig c;
  auto never = BisectGoodput(c, [](double) -> absl::StatusOr<double> { return 0.1; });
  ASSERT_TRUE(never.ok());
  EXPECT_EQ(never->goodput_rate, 0);
  auto always = BisectGoodput(c, [](double) -> absl::StatusOr<double> { return 1.0; });
  ASSERT_TRUE(always.ok());
  EXPECT_FALSE(always->bounded);
  EXPECT_LE(always->goodput_rate, c.max_rate);
  EXPECT_GE(always->goodput_rate, c.max_rate / 2);
}

TEST(GoodputSweepTest, MeasurementErrorsPropagate) {
  auto out = BisectGoodput(BisectConfig{}, [](double) -> absl::StatusOr<double> {
    return absl::UnavailableError("server gone");
  });
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnavailable);
}

TEST(GoodputSweepTest, ExplicitRates) {
  auto spec = ParseSweep("4,1,2");
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(spec->rates, (std::vector<double>{1, 2, 4}));
  EXPECT_TRUE(ParseSweep("auto")->automatic);
  EXPECT_FALSE(ParseSweep("1,x").ok());
  EXPECT_FALSE(ParseSweep("0").ok());
  std::vector<SweepPoint> pts = {{1, 0.99}, {2, 0.95}, {4, 0.7}, {8, 0.2}};
  EXPECT_EQ(GoodputOfPoints(pts, 0.9), 2);
  EXPECT_EQ(GoodputOfPoints(pts, 0.999), 0);
}

}  // namespace
}  // namespace tandem::bench
