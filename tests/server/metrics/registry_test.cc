#include "server/metrics/registry.h"

#include <cmath>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace tandem::server::metrics {
namespace {

TEST(FormatValueTest, ShortestRoundTripAndSpecials) {
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(3), "3");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(FormatValue(-2.5), "-2.5");
  EXPECT_EQ(FormatValue(1.0 / 0.0), "+Inf");
  EXPECT_EQ(FormatValue(-1.0 / 0.0), "-Inf");
  EXPECT_EQ(FormatValue(std::nan("")), "NaN");
}

TEST(RegistryTest, RendersCounterWithLabels) {
  Registry registry;
  auto& requests = registry.AddCounter("tandem:request_success_total", "Finished requests.",
                                       {"finished_reason", "model"});
  requests.WithLabels({"stop", "m"}).Increment();
  requests.WithLabels({"stop", "m"}).Increment(2);
  requests.WithLabels({"length", "m"}).Increment(0.5);
  EXPECT_EQ(registry.Render(),
            "# HELP tandem:request_success_total Finished requests.\n"
            "# TYPE tandem:request_success_total counter\n"
            "tandem:request_success_total{finished_reason=\"length\",model=\"m\"} 0.5\n"
            "tandem:request_success_total{finished_reason=\"stop\",model=\"m\"} 3\n");
}

TEST(RegistryTest, UnlabelledSeriesRendersZeroBeforeFirstUpdate) {
  Registry registry;
  registry.AddGauge("tandem:num_requests_running", "Running sequences.");
  auto& kv = registry.AddGauge("tandem:kv_cache_usage_ratio", "KV usage.");
  kv.Get().Set(0.25);
  kv.Get().Increment(0.5);
  kv.Get().Decrement(0.125);
  EXPECT_DOUBLE_EQ(kv.Get().Value(), 0.625);
  EXPECT_EQ(registry.Render(),
            "# HELP tandem:num_requests_running Running sequences.\n"
            "# TYPE tandem:num_requests_running gauge\n"
            "tandem:num_requests_running 0\n"
            "# HELP tandem:kv_cache_usage_ratio KV usage.\n"
            "# TYPE tandem:kv_cache_usage_ratio gauge\n"
            "tandem:kv_cache_usage_ratio 0.625\n");
}

TEST(RegistryTest, LabelledFamilyWithoutSeriesRendersOnlyHeader) {
  Registry registry;
  registry.AddCounter("c_total", "C.", {"code"});
  EXPECT_EQ(registry.Render(), "# HELP c_total C.\n# TYPE c_total counter\n");
}

TEST(RegistryTest, RendersHistogramCumulatively) {
  Registry registry;
  auto& ttft = registry.AddHistogram("tandem:time_to_first_token_seconds", "TTFT.", {0.01, 0.1, 1},
                                     {"model"});
  Histogram& h = ttft.WithLabels({"m"});
  h.Observe(0.005);
  h.Observe(0.01);  // le is inclusive
  h.Observe(0.5);
  h.Observe(7);
  EXPECT_EQ(h.Count(), 4u);
  EXPECT_EQ(h.BucketCounts(), (std::vector<uint64_t>{2, 0, 1, 1}));
  EXPECT_EQ(registry.Render(),
            "# HELP tandem:time_to_first_token_seconds TTFT.\n"
            "# TYPE tandem:time_to_first_token_seconds histogram\n"
            "tandem:time_to_first_token_seconds_bucket{model=\"m\",le=\"0.01\"} 2\n"
            "tandem:time_to_first_token_seconds_bucket{model=\"m\",le=\"0.1\"} 2\n"
            "tandem:time_to_first_token_seconds_bucket{model=\"m\",le=\"1\"} 3\n"
            "tandem:time_to_first_token_seconds_bucket{model=\"m\",le=\"+Inf\"} 4\n"
            "tandem:time_to_first_token_seconds_sum{model=\"m\"} 7.515\n"
            "tandem:time_to_first_token_seconds_count{model=\"m\"} 4\n");
}

TEST(RegistryTest, UnlabelledHistogram) {
  Registry registry;
  auto& h = registry.AddHistogram("lat_seconds", "L.", {1, 2});
  h.Get().Observe(1.5);
  EXPECT_EQ(registry.Render(),
            "# HELP lat_seconds L.\n"
            "# TYPE lat_seconds histogram\n"
            "lat_seconds_bucket{le=\"1\"} 0\n"
            "lat_seconds_bucket{le=\"2\"} 1\n"
            "lat_seconds_bucket{le=\"+Inf\"} 1\n"
            "lat_seconds_sum 1.5\n"
            "lat_seconds_count 1\n");
}

TEST(RegistryTest, EscapesLabelValuesAndHelp) {
  Registry registry;
  auto& c = registry.AddCounter("e_total", "Line one\nback\\slash \"quoted\".", {"path"});
  c.WithLabels({"a\"b\\c\nd"}).Increment();
  EXPECT_EQ(registry.Render(),
            "# HELP e_total Line one\\nback\\\\slash \"quoted\".\n"
            "# TYPE e_total counter\n"
            "e_total{path=\"a\\\"b\\\\c\\nd\"} 1\n");
}

TEST(RegistryTest, BucketHelpers) {
  EXPECT_EQ(Histogram::ExponentialBuckets(0.001, 10, 3), (std::vector<double>{0.001, 0.01, 0.1}));
  EXPECT_EQ(Histogram::LinearBuckets(1, 2, 3), (std::vector<double>{1, 3, 5}));
}

TEST(RegistryTest, ReRegisteringTheSameFamilyReturnsIt) {
  Registry registry;
  auto& a = registry.AddCounter("x_total", "X.", {"k"});
  auto& b = registry.AddCounter("x_total", "X.", {"k"});
  EXPECT_EQ(&a, &b);
  auto& h1 = registry.AddHistogram("h", "H.", {1});
  auto& h2 = registry.AddHistogram("h", "H.", {1});
  EXPECT_EQ(&h1, &h2);
}

TEST(RegistryDeathTest, MisuseAborts) {
  Registry registry;
  EXPECT_DEATH(registry.AddCounter("bad name", "B."), "IsMetricName");
  EXPECT_DEATH(registry.AddCounter("ok", "B.", {"__reserved"}), "IsLabelName");
  EXPECT_DEATH(registry.AddHistogram("h", "H.", {1}, {"le"}), "IsLabelName");
  EXPECT_DEATH(registry.AddHistogram("h2", "H.", {2, 1}), "CHECK failed");
  auto& c = registry.AddCounter("c_total", "C.", {"a"});
  EXPECT_DEATH(c.WithLabels({"x", "y"}), "label_values.size");
  EXPECT_DEATH(c.WithLabels({"x"}).Increment(-1), "amount >= 0.0");
  EXPECT_DEATH(registry.AddGauge("c_total", "C.", {"a"}), "registered twice");
}

TEST(RegistryTest, ConcurrentUpdatesSumCorrectly) {
  Registry registry;
  auto& counter = registry.AddCounter("n_total", "N.", {"t"});
  auto& gauge = registry.AddGauge("g", "G.");
  auto& hist = registry.AddHistogram("h_seconds", "H.", {0.5, 1.5});
  constexpr int kThreads = 8;
  constexpr int kIters = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Half the threads share one series (looked up concurrently), half use their own.
      Counter& shared = counter.WithLabels({"shared"});
      Counter& own = counter.WithLabels({"own" + std::to_string(t)});
      for (int i = 0; i < kIters; ++i) {
        shared.Increment();
        own.Increment();
        gauge.Get().Increment();
        if (i % 2 == 0) gauge.Get().Decrement();
        hist.Get().Observe(i % 3);             // 0, 1, 2
        if (i % 1000 == 0) registry.Render();  // rendering races with updates safely
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(counter.WithLabels({"shared"}).Value(), double{kThreads} * kIters);
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(counter.WithLabels({"own" + std::to_string(t)}).Value(), kIters);
  }
  EXPECT_EQ(gauge.Get().Value(), double{kThreads} * kIters / 2);
  const Histogram& h = hist.Get();
  EXPECT_EQ(h.Count(), uint64_t{kThreads} * kIters);
  std::vector<uint64_t> counts = h.BucketCounts();
  uint64_t per_value = 0;
  for (int i = 0; i < kIters; ++i) per_value += (i % 3 == 0);
  EXPECT_EQ(counts[0], kThreads * per_value);
  uint64_t sum_expected = 0;
  for (int i = 0; i < kIters; ++i) sum_expected += i % 3;
  EXPECT_EQ(h.Sum(), double(sum_expected) * kThreads);
}

}  // namespace
}  // namespace tandem::server::metrics
