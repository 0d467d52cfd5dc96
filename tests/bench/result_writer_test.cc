#include "bench/tandem_bench/result_writer.h"

#include <gtest/gtest.h>

#include <sstream>

#include "bench/tandem_bench/server_metrics.h"

namespace tandem::bench {
namespace {

TEST(ResultWriterTest, CsvHasEveryRequestAndItl) {
  RequestRecord ok;
  ok.index = 3;
  ok.send_s = 0.5;
  ok.ttft_s = 0.1;
  ok.e2e_s = 0.3;
  ok.output_tokens = 3;
  ok.itl_s = {0.1, 0.1};
  ok.cached_tokens = 16;
  RequestRecord bad;
  bad.status = RequestStatus::kBrokenStream;
  bad.error = "cut \"here\"\nsecond line";
  const std::string csv = RequestsCsv({ok, bad});
  std::istringstream in(csv);
  std::string header, row1, row2, extra;
  std::getline(in, header);
  std::getline(in, row1);
  std::getline(in, row2);
  EXPECT_FALSE(std::getline(in, extra));
  EXPECT_NE(header.find("itl_ms"), std::string::npos);
  EXPECT_NE(row1.find(",ok,"), std::string::npos);
  EXPECT_NE(row1.find("100.000;100.000"), std::string::npos);
  EXPECT_NE(row1.find(",100.000,"), std::string::npos);  // TPOT = (300 - 100) / 2
  EXPECT_NE(row2.find("broken_stream"), std::string::npos);
  EXPECT_NE(row2.find("\"cut \"\"here\"\" second line\""), std::string::npos);
  // The last column: cached prompt tokens, empty when the server did not say.
  EXPECT_EQ(header.substr(header.rfind(',') + 1), "cached_tokens");
  EXPECT_EQ(row1.substr(row1.rfind(',') + 1), "16");
  EXPECT_EQ(row2.back(), ',');
}

TEST(ResultWriterTest, TablesNameTheNumbers) {
  RunSummary s;
  s.requests = 10;
  s.completed = 9;
  s.failed = 1;
  s.errors_by_kind["timeout"] = 1;
  s.attainment = 0.8;
  s.goodput = 1.5;
  const std::string t = FormatSummaryTable("run", s, "ttft:250,tpot:100", 0.9);
  EXPECT_NE(t.find("timeout 1"), std::string::npos);
  EXPECT_NE(t.find("80.0% (target 90%: missed)"), std::string::npos);
  EXPECT_NE(t.find("1.500"), std::string::npos);
  const std::string sweep = FormatSweepTable({{1.0, s}, {2.0, s}}, 1.0, 0.9, true);
  EXPECT_NE(sweep.find("Goodput: 1.000 req/s"), std::string::npos);
  EXPECT_NE(FormatSweepTable({{1.0, s}}, 0, 0.9, true).find("Goodput: 0"), std::string::npos);
}

TEST(ServerMetricsTest, ParsesPrometheusTextAndCrossChecks) {
  const auto before = ParsePrometheusText(
      "# HELP tandem:request_success_total done\n"
      "# TYPE tandem:request_success_total counter\n"
      "tandem:request_success_total{finished_reason=\"length\"} 3\n"
      "tandem:request_success_total{finished_reason=\"stop\"} 2\n"
      "tandem:prompt_tokens_total 100\n"
      "tandem:generation_tokens_total 50 1700000000000\n"
      "garbage line without value\n");
  EXPECT_EQ(before.at("tandem:request_success_total"), 5);
  EXPECT_EQ(before.at("tandem:generation_tokens_total"), 50);
  EXPECT_EQ(DetectServerKind(before), "tandem");
  const auto after = ParsePrometheusText(
      "tandem:request_success_total 15\ntandem:prompt_tokens_total 420\n"
      "tandem:generation_tokens_total 690\n"
      "tandem:prefix_cache_hit_tokens_total 96\n");
  ClientCounts cc{10, 320, 640, 96};
  const auto rows = CrossCheck(before, after, cc);
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[3].quantity, "cached prompt tokens");
  EXPECT_EQ(rows[3].server, 96);  // absent before: counted from 0
  EXPECT_EQ(rows[0].server, 10);
  EXPECT_EQ(rows[1].server, 320);
  EXPECT_EQ(rows[2].server, 640);
  EXPECT_EQ(rows[2].client, 640);
  EXPECT_NE(FormatCrossCheck("tandem", rows).find("+0.0%"), std::string::npos);
  EXPECT_EQ(DetectServerKind(ParsePrometheusText("llamacpp:prompt_tokens_total 4\n")), "llamacpp");
  EXPECT_EQ(DetectServerKind(ParsePrometheusText("vllm:x 1\n")), "");
  EXPECT_TRUE(CrossCheck({}, ParsePrometheusText("other 1\n"), cc).empty());
}

}  // namespace
}  // namespace tandem::bench
