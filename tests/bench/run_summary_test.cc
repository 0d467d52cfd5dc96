#include "bench/tandem_bench/run_summary.h"

#include <gtest/gtest.h>

#include "bench/tandem_bench/slo.h"

namespace tandem::bench {
namespace {

RequestRecord Ok(double send, double ttft, double e2e, int out, SloSpec slo = {}) {
  RequestRecord r;
  r.send_s = send;
  r.ttft_s = ttft;
  r.e2e_s = e2e;
  r.output_tokens = out;
  r.token_chunks = out;
  r.prompt_tokens = 10;
  for (int i = 1; i < out; ++i) r.itl_s.push_back((e2e - ttft) / (out - 1));
  r.slo = slo;
  return r;
}

TEST(RunSummaryTest, PercentileInterpolatesLinearly) {
  std::vector<double> v = {4, 1, 3, 2};  // sorted 1 2 3 4
  EXPECT_DOUBLE_EQ(Percentile(v, 50), 2.5);
  EXPECT_DOUBLE_EQ(Percentile(v, 90), 3.7);
  EXPECT_DOUBLE_EQ(Percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(Percentile(v, 100), 4);
  std::vector<double> one = {7};
  EXPECT_DOUBLE_EQ(Percentile(one, 99), 7);
}

TEST(RunSummaryTest, TpotDefinition) {
  RequestRecord r = Ok(0, 0.2, 1.1, 10);
  EXPECT_DOUBLE_EQ(r.TpotS(), 0.1);  // (1.1 - 0.2) / 9
  r.output_tokens = 1;
  EXPECT_EQ(r.TpotS(), 0);
  r.output_tokens = 0;
  EXPECT_EQ(r.TpotS(), 0);
}

TEST(RunSummaryTest, AttainmentCountsFailuresAsMisses) {
  SloSpec slo = *ParseSlo("ttft:250,tpot:100");
  std::vector<RequestRecord> rs;
  rs.push_back(Ok(0.0, 0.1, 1.0, 10, slo));  // ttft ok, tpot 0.1 ok -> good
  rs.push_back(Ok(0.5, 0.3, 1.2, 10, slo));  // ttft miss, tpot 0.1 ok
  rs.push_back(Ok(1.0, 0.1, 2.0, 10, slo));  // tpot 0.211 miss
  RequestRecord fail;
  fail.send_s = 1.5;
  fail.status = RequestStatus::kHttpError;
  fail.http_status = 500;
  fail.slo = slo;
  rs.push_back(fail);
  RequestRecord timeout = fail;
  timeout.status = RequestStatus::kTimeout;
  rs.push_back(timeout);
  const RunSummary s = Summarize(rs, 4.0);
  EXPECT_EQ(s.requests, 5);
  EXPECT_EQ(s.completed, 3);
  EXPECT_EQ(s.failed, 2);
  EXPECT_EQ(s.errors_by_kind.at("http_error"), 1);
  EXPECT_EQ(s.errors_by_kind.at("timeout"), 1);
  EXPECT_DOUBLE_EQ(s.attainment_ttft, 2.0 / 5);
  EXPECT_DOUBLE_EQ(s.attainment_tpot, 2.0 / 5);
  EXPECT_DOUBLE_EQ(s.attainment, 1.0 / 5);
  EXPECT_EQ(s.good_requests, 1);
  EXPECT_DOUBLE_EQ(s.goodput, 1.0 / 4.0);
  EXPECT_DOUBLE_EQ(s.request_throughput, 3.0 / 4.0);
  EXPECT_EQ(s.output_tokens, 30);
  EXPECT_DOUBLE_EQ(s.output_token_throughput, 30.0 / 4.0);
  EXPECT_EQ(s.ttft.count, 3);
  EXPECT_NEAR(s.ttft.mean, (100 + 300 + 100) / 3.0, 1e-9);
  EXPECT_NEAR(s.ttft.median, 100, 1e-9);
  EXPECT_EQ(s.itl.count, 27);  // pooled: 9 gaps x 3 requests
  EXPECT_NEAR(s.offered_rate, 4 / 1.5, 1e-9);
  const auto j = ToJson(s);
  EXPECT_EQ(j["requests"]["errors"]["timeout"], 1);
  EXPECT_DOUBLE_EQ(j["goodput"].get<double>(), 0.25);
}

TEST(RunSummaryTest, NoSloMeansEveryCompletedRequestIsGood) {
  std::vector<RequestRecord> rs = {Ok(0, 5, 10, 3), Ok(1, 5, 10, 3)};
  const RunSummary s = Summarize(rs, 2.0);
  EXPECT_DOUBLE_EQ(s.attainment, 1.0);
  EXPECT_DOUBLE_EQ(s.goodput, 1.0);
}

// Cached prompt tokens: summed over the completed requests whose server reported them, and
// their share of those requests' prompt tokens only.
TEST(RunSummaryTest, CachedTokensOverTheRequestsThatReportThem) {
  std::vector<RequestRecord> rs = {Ok(0, 5, 10, 3), Ok(1, 5, 10, 3), Ok(2, 5, 10, 3)};
  rs[0].cached_tokens = 8;  // of its 10
  rs[1].cached_tokens = 0;
  rs[2].status = RequestStatus::kTimeout;  // failed: not counted
  rs[2].cached_tokens = 10;
  RequestRecord silent = Ok(3, 5, 10, 3);  // a server without prompt_tokens_details
  rs.push_back(silent);
  const RunSummary s = Summarize(rs, 2.0);
  EXPECT_EQ(s.cached_reported, 2);
  EXPECT_EQ(s.cached_tokens, 8);
  EXPECT_DOUBLE_EQ(s.cached_share, 8.0 / 20);
  EXPECT_EQ(ToJson(s)["cached_prompt_tokens"]["tokens"], 8);
  EXPECT_EQ(Summarize({Ok(0, 5, 10, 3)}, 1.0).cached_reported, 0);
}

TEST(SloTest, ParsesAndRejects) {
  auto s = ParseSlo("ttft:250,tpot:100,e2e:5000");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s->ttft_ms, 250);
  EXPECT_EQ(*s->tpot_ms, 100);
  EXPECT_EQ(*s->e2e_ms, 5000);
  EXPECT_EQ(s->ToString(), "ttft:250,tpot:100,e2e:5000");
  EXPECT_TRUE(ParseSlo("")->empty());
  for (const char* bad : {"ttft", "ttft:", "ttft:-1", "foo:10", "ttft:10:20", "tpot:abc"}) {
    EXPECT_FALSE(ParseSlo(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace tandem::bench
