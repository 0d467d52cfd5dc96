// The tandem-bench executable end to end against the fake server: flags (dash spelling),
// /tokenize-sized prompts, warm-up, result files, the tandem /metrics cross-check, a sweep.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/bench/fake_openai_server.h"

namespace tandem::bench {
namespace {

using testing::FakeBehavior;
using testing::FakeOpenAiServer;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string TempDir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("tandem-bench-" + name + "-" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  return dir.string();
}

// Runs the binary with `args`; returns its exit code and its stdout in `out`.
int RunBench(const std::string& args, std::string* out) {
  const std::string log = TempDir("stdout") + ".txt";
  const std::string cmd =
      std::string(TANDEM_BENCH_BINARY) + " " + args + " --progress=off > " + log + " 2>&1";
  const int rc = std::system(cmd.c_str());
  *out = ReadAll(log);
  std::filesystem::remove(log);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

FakeBehavior Quick(const nlohmann::json&, int) {
  FakeBehavior b;
  b.first_token_ms = 5;
  b.itl_ms = 2;
  return b;
}

TEST(CliTest, OneRunWritesResultsAndCrossChecksTandemMetrics) {
  FakeOpenAiServer server(Quick);
  const std::string dir = TempDir("run");
  std::string out;
  const int rc = RunBench("--url " + server.url() +
                              " --num-prompts 6 --request-rate 50 --input-len 24 --output-len 5"
                              " --slo ttft:1000,tpot:500 --warmup 2 --seed 3 --plots=false"
                              " --result-dir " +
                              dir,
                          &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("counting prompt tokens with: server /tokenize"), std::string::npos) << out;
  EXPECT_NE(out.find("Goodput (good req/s)"), std::string::npos) << out;
  EXPECT_NE(out.find("Server cross-check (tandem"), std::string::npos) << out;
  EXPECT_EQ(server.generation_requests(), 8);  // 2 warm-up + 6
  const nlohmann::json s = nlohmann::json::parse(ReadAll(dir + "/summary.json"));
  EXPECT_EQ(s["requests"]["sent"], 6);
  EXPECT_EQ(s["requests"]["completed"], 6);
  EXPECT_EQ(s["output_tokens"], 30);
  EXPECT_EQ(s["input_tokens"], 6 * 24);  // the fake /tokenize counts words: exact prompts
  EXPECT_DOUBLE_EQ(s["attainment"]["all"].get<double>(), 1.0);
  EXPECT_EQ(s["config"]["model"], "fake-model");  // from GET /v1/models
  for (const char* key : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
    for (const char* stat : {"mean", "median", "p90", "p99"}) {
      EXPECT_TRUE(s[key].contains(stat)) << key << "." << stat;
    }
  }
  // The server's counters moved exactly as much as the client counted.
  ASSERT_EQ(s["server_cross_check"]["rows"].size(), 3u);
  for (const auto& row : s["server_cross_check"]["rows"]) {
    EXPECT_EQ(row["client"], row["server"]) << row.dump();
  }
  const std::string csv = ReadAll(dir + "/requests.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 7);  // header + 6
  std::filesystem::remove_all(dir);
}

TEST(CliTest, SweepReportsTheGoodputRate) {
  // Latency grows with load: TTFT 5 ms alone, 400 ms once 3 or more are in flight. At 10 req/s
  // with regular gaps (burstiness 8) requests barely overlap; at 200 req/s all 8 do.
  FakeOpenAiServer server([](const nlohmann::json&, int in_flight) {
    FakeBehavior b;
    b.first_token_ms = in_flight >= 3 ? 400 : 5;
    b.itl_ms = 2;
    return b;
  });
  const std::string dir = TempDir("sweep");
  std::string out;
  const int rc = RunBench("--url " + server.url() +
                              " --num-prompts 8 --input-len 8 --output-len 3 --tokenizer words"
                              " --slo ttft:200,tpot:100 --sweep 10,200 --burstiness 8 --warmup 0"
                              " --plots=false --result-dir " +
                              dir,
                          &out);
  ASSERT_EQ(rc, 0) << out;
  const nlohmann::json j = nlohmann::json::parse(ReadAll(dir + "/sweep.json"));
  ASSERT_EQ(j["points"].size(), 2u);
  EXPECT_GE(j["points"][0]["attainment"]["all"].get<double>(), 0.9) << out;
  EXPECT_LT(j["points"][1]["attainment"]["all"].get<double>(), 0.9) << out;
  EXPECT_DOUBLE_EQ(j["goodput_rate"].get<double>(), 10.0) << out;
  EXPECT_TRUE(std::filesystem::exists(dir + "/rate-10/requests.csv"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/rate-200/summary.json"));
  EXPECT_NE(out.find("Goodput: 10.000 req/s"), std::string::npos) << out;
  std::filesystem::remove_all(dir);
}

TEST(CliTest, BadFlagsAndUnreachableServersFailClearly) {
  std::string out;
  EXPECT_EQ(RunBench("--url ftp://x --model m", &out), 2);
  EXPECT_NE(out.find("want http://"), std::string::npos) << out;
  EXPECT_EQ(RunBench("--url http://127.0.0.1:1 --model m --tokenizer words --num-prompts 2", &out),
            2);
  EXPECT_NE(out.find("warm-up"), std::string::npos) << out;
  FakeOpenAiServer server(Quick);
  EXPECT_EQ(RunBench("--url " + server.url() + " --slo ttft:abc", &out), 2);
  EXPECT_NE(out.find("bad SLO"), std::string::npos) << out;
}

}  // namespace
}  // namespace tandem::bench
