// End-to-end: LoadRunner against the scripted FakeOpenAiServer. The server's schedule is known
// (first token F ms after it read the request, then one every I ms, on an absolute schedule).
// Checked, with a tolerance of 15 ms:
//   - against what the server actually did (its own write times, same process clock): each
//     request's TTFT is at least the server's read-to-first-write time and at most 15 ms more,
//     and each ITL is within 15 ms of the server's gap between the same two writes. This holds
//     even when the machine is so loaded that the server itself runs late;
//   - against the script: TTFT >= F, and the median and mean ITL and every TPOT within 15 ms
//     of I (the absolute schedule makes late writes catch up).
// Real errors (a chunk timed after parsing a whole batch, TPOT over the wrong token count, a
// clock started at the scheduled rather than the actual send) are larger than 15 ms.
#include "bench/tandem_bench/load_runner.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>

#include "bench/tandem_bench/run_summary.h"
#include "tests/bench/fake_openai_server.h"

namespace tandem::bench {
namespace {

using testing::FakeBehavior;
using testing::FakeOpenAiServer;

constexpr double kTolMs = 15;
constexpr double kInf = std::numeric_limits<double>::infinity();

LoadConfig ConfigFor(const FakeOpenAiServer& server) {
  LoadConfig c;
  c.server = *ParseServerUrl(server.url());
  c.model = "fake-model";
  c.timeout_s = 10;
  return c;
}

std::vector<BenchRequest> Requests(int n, int max_tokens, const std::string& prompt = "a b c d") {
  std::vector<BenchRequest> out(n);
  for (auto& r : out) {
    r.prompt = prompt;
    r.prompt_tokens = 4;
    r.max_tokens = max_tokens;
  }
  return out;
}

RunResult RunAll(const LoadConfig& c, const std::vector<BenchRequest>& reqs,
                 std::vector<double> offsets = {}) {
  if (offsets.empty()) offsets.assign(reqs.size(), 0.0);
  LoadRunner runner(c);
  auto r = runner.Run(reqs, ScheduleFromOffsets(offsets, reqs.size()), 0,
                      static_cast<int>(offsets.size()), nullptr);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : RunResult{};
}

// Prompts "p0", "p1", ...: unique, so server logs match client records.
std::vector<BenchRequest> UniqueRequests(int n, int max_tokens) {
  std::vector<BenchRequest> out = Requests(n, max_tokens);
  for (int i = 0; i < n; ++i) out[i].prompt = "p" + std::to_string(i);
  return out;
}

double Ms(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

void ExpectTimingMatches(const FakeOpenAiServer& server, const std::vector<BenchRequest>& reqs,
                         const RunResult& run, int tokens, double first_ms, double itl_ms) {
  const int n = static_cast<int>(reqs.size());
  ASSERT_EQ(static_cast<int>(run.records.size()), n);
  std::map<std::string, FakeOpenAiServer::StreamLog> logs;
  for (auto& l : server.streams()) logs[l.prompt] = l;
  std::vector<double> itls;
  for (const RequestRecord& r : run.records) {
    ASSERT_TRUE(r.ok()) << RequestStatusName(r.status) << ": " << r.error;
    EXPECT_EQ(r.token_chunks, tokens);
    EXPECT_EQ(r.output_tokens, tokens);
    EXPECT_TRUE(r.usage_reported);
    EXPECT_EQ(r.http_status, 200);
    ASSERT_EQ(static_cast<int>(r.itl_s.size()), tokens - 1);
    // Against the script.
    EXPECT_GE(r.ttft_s * 1e3, first_ms - 1);
    EXPECT_NEAR(r.TpotS() * 1e3, itl_ms, kTolMs);
    // Against what the server did.
    const std::string prompt = reqs[r.index].prompt;
    ASSERT_TRUE(logs.count(prompt)) << prompt;
    const auto& log = logs[prompt];
    ASSERT_EQ(static_cast<int>(log.token_writes.size()), tokens);
    const double server_ttft = Ms(log.token_writes[0] - log.read);
    EXPECT_GE(server_ttft, first_ms - 1);
    EXPECT_GE(r.ttft_s * 1e3, server_ttft - 1) << prompt;
    EXPECT_LE(r.ttft_s * 1e3, server_ttft + kTolMs) << prompt;
    for (int k = 1; k < tokens; ++k) {
      const double server_gap = Ms(log.token_writes[k] - log.token_writes[k - 1]);
      EXPECT_NEAR(r.itl_s[k - 1] * 1e3, server_gap, kTolMs) << prompt << " gap " << k;
    }
    itls.insert(itls.end(), r.itl_s.begin(), r.itl_s.end());
  }
  const Distribution d = Distribute(itls);
  EXPECT_NEAR(d.mean, itl_ms, kTolMs);
  EXPECT_NEAR(d.median, itl_ms, kTolMs);
}

TEST(LoadRunnerTest, CompletionsTimingMatchesTheScript) {
  FakeOpenAiServer server([](const nlohmann::json&, int) {
    FakeBehavior b;
    b.first_token_ms = 60;
    b.itl_ms = 20;
    return b;
  });
  const auto reqs = UniqueRequests(8, 10);
  const RunResult run = RunAll(ConfigFor(server), reqs);
  ExpectTimingMatches(server, reqs, run, 10, 60, 20);
  EXPECT_EQ(server.generation_requests(), 8);
  EXPECT_EQ(server.max_in_flight(), 8);  // all in flight together on one client thread
  const nlohmann::json body = server.last_body();
  EXPECT_EQ(body["max_tokens"], 10);
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["ignore_eos"], true);
  EXPECT_EQ(body["prompt"].get<std::string>()[0], 'p');
  EXPECT_EQ(body["stream_options"]["include_usage"], true);
  // The server's usage.prompt_tokens (1 word here) replaces the dataset's count (4).
  EXPECT_EQ(run.records[0].prompt_tokens, 1);
}

TEST(LoadRunnerTest, ChatTimingMatchesEvenWithEventsSplitAcrossWrites) {
  FakeOpenAiServer server([](const nlohmann::json&, int) {
    FakeBehavior b;
    b.first_token_ms = 40;
    b.itl_ms = 25;
    b.split_events = true;
    return b;
  });
  LoadConfig c = ConfigFor(server);
  c.endpoint = Endpoint::kChat;
  c.ignore_eos = false;
  c.extra_body = {{"top_k", 1}};
  const auto reqs = UniqueRequests(4, 6);
  const RunResult run = RunAll(c, reqs);
  ExpectTimingMatches(server, reqs, run, 6, 40, 25);
  const nlohmann::json body = server.last_body();
  ASSERT_TRUE(body["messages"].is_array());
  EXPECT_EQ(body["messages"][0]["content"].get<std::string>()[0], 'p');
  EXPECT_FALSE(body.contains("ignore_eos"));
  EXPECT_EQ(body["top_k"], 1);
}

TEST(LoadRunnerTest, FailuresAreCountedNeverDropped) {
  FakeOpenAiServer server([](const nlohmann::json& body, int) {
    FakeBehavior b;
    b.first_token_ms = 5;
    b.itl_ms = 5;
    const std::string p = body.value("prompt", "");
    if (p == "http500") b.status = 500;
    if (p == "cut") b.break_after = 3;
    if (p == "hang") b.hang_ms = 900;
    if (p == "error") b.error_after = 2;
    return b;
  });
  std::vector<BenchRequest> reqs;
  for (const char* p : {"ok", "http500", "cut", "hang", "error", "ok"}) {
    reqs.push_back(Requests(1, 8, p)[0]);
  }
  LoadConfig c = ConfigFor(server);
  c.timeout_s = 0.3;
  c.slo = *ParseSlo("ttft:1000,tpot:1000");
  const RunResult run = RunAll(c, reqs);
  ASSERT_EQ(run.records.size(), 6u);
  std::map<std::string, RequestStatus> by_prompt;
  for (const RequestRecord& r : run.records) by_prompt[reqs[r.index].prompt] = r.status;
  EXPECT_EQ(by_prompt["ok"], RequestStatus::kOk);
  EXPECT_EQ(by_prompt["http500"], RequestStatus::kHttpError);
  EXPECT_EQ(by_prompt["cut"], RequestStatus::kBrokenStream);
  EXPECT_EQ(by_prompt["hang"], RequestStatus::kTimeout);
  EXPECT_EQ(by_prompt["error"], RequestStatus::kServerError);
  for (const RequestRecord& r : run.records) {
    if (reqs[r.index].prompt == "http500") {
      EXPECT_EQ(r.http_status, 500);
      EXPECT_NE(r.error.find("scripted failure"), std::string::npos) << r.error;
    }
    if (reqs[r.index].prompt == "cut") {
      EXPECT_EQ(r.token_chunks, 3);
    }
    if (reqs[r.index].prompt == "hang") {
      EXPECT_NEAR(r.e2e_s, 0.3, 0.2);
    }
    if (reqs[r.index].prompt == "error") {
      EXPECT_EQ(r.error, "scripted stream error");
    }
  }
  const RunSummary s = Summarize(run.records, run.duration_s);
  EXPECT_EQ(s.requests, 6);
  EXPECT_EQ(s.completed, 2);
  EXPECT_EQ(s.failed, 4);
  EXPECT_EQ(s.errors_by_kind.at("http_error"), 1);
  EXPECT_EQ(s.errors_by_kind.at("broken_stream"), 1);
  EXPECT_EQ(s.errors_by_kind.at("timeout"), 1);
  EXPECT_EQ(s.errors_by_kind.at("server_error"), 1);
  EXPECT_DOUBLE_EQ(s.attainment, 2.0 / 6);
}

TEST(LoadRunnerTest, ConnectionRefusedIsAConnectError) {
  int port = 0;
  {
    FakeOpenAiServer gone([](const nlohmann::json&, int) { return FakeBehavior{}; });
    port = gone.port();
  }
  LoadConfig c;
  c.server = *ParseServerUrl("http://127.0.0.1:" + std::to_string(port));
  c.timeout_s = 2;
  const RunResult run = RunAll(c, Requests(2, 4));
  ASSERT_EQ(run.records.size(), 2u);
  for (const auto& r : run.records) EXPECT_EQ(r.status, RequestStatus::kConnectError) << r.error;
}

TEST(LoadRunnerTest, MaxConcurrencyBoundsRequestsInFlight) {
  FakeOpenAiServer server([](const nlohmann::json&, int) {
    FakeBehavior b;
    b.first_token_ms = 10;
    b.itl_ms = 10;
    return b;
  });
  LoadConfig c = ConfigFor(server);
  c.max_concurrency = 2;
  const RunResult run = RunAll(c, Requests(6, 5));
  ASSERT_EQ(run.records.size(), 6u);
  for (const auto& r : run.records) EXPECT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(server.max_in_flight(), 2);
  // A closed loop of 2: three waves of ~50 ms each.
  EXPECT_GE(run.duration_s, 3 * 0.050 - 0.005);
  // TTFT starts at the actual send, after the wait for a slot: timed from the scheduled time
  // (0), waves 2 and 3 would show >= 60 and >= 110 ms.
  for (const auto& r : run.records) EXPECT_LT(r.ttft_s * 1e3, 45);
}

TEST(LoadRunnerTest, SendTimesFollowTheSchedule) {
  FakeOpenAiServer server([](const nlohmann::json&, int) {
    FakeBehavior b;
    b.first_token_ms = 1;
    b.itl_ms = 1;
    return b;
  });
  const std::vector<double> offsets = {0.0, 0.03, 0.05, 0.12, 0.2};
  const RunResult run = RunAll(ConfigFor(server), Requests(5, 2), offsets);
  ASSERT_EQ(run.records.size(), 5u);
  for (size_t i = 0; i < offsets.size(); ++i) {
    EXPECT_GE(run.records[i].send_s, offsets[i] - 1e-3);
    EXPECT_LE(run.records[i].send_s, offsets[i] + kTolMs / 1e3);
  }
}

TEST(LoadRunnerTest, DurationStopsDispatching) {
  FakeOpenAiServer server([](const nlohmann::json&, int) {
    FakeBehavior b;
    b.first_token_ms = 1;
    b.itl_ms = 1;
    return b;
  });
  // An endless schedule of a request every 20 ms, stopped after 0.2 s.
  auto t = std::make_shared<double>(0);
  ScheduleFn endless = [t]() -> std::optional<Scheduled> {
    *t += 0.02;
    return Scheduled{0, *t};
  };
  LoadRunner runner(ConfigFor(server));
  auto run = runner.Run(Requests(1, 2), endless, 0.2, 0, nullptr);
  ASSERT_TRUE(run.ok());
  EXPECT_GE(run->records.size(), 8u);
  EXPECT_LE(run->records.size(), 10u);
  for (const auto& r : run->records) EXPECT_LT(r.send_s, 0.2 + 1e-3);
}

}  // namespace
}  // namespace tandem::bench
