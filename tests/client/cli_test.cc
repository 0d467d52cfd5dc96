// The tandem CLI: argument errors (exit 2), and commands over HTTP against CannedHttpServer.
#include "client/cli.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "tests/client/canned_http_server.h"

namespace tandem::client {
namespace {

using testing::CannedHttpServer;
using testing::HttpResponse;
using testing::RequestBody;
using testing::SseHead;

struct CliRun {
  int code;
  std::string out;
  std::string err;
};

CliRun RunWith(const std::vector<std::string>& args, const std::string& input = "") {
  std::istringstream in(input);
  std::ostringstream out;
  std::ostringstream err;
  const int code = RunCli(args, in, out, err);
  return {code, out.str(), err.str()};
}

size_t Lines(const std::string& s) { return std::count(s.begin(), s.end(), '\n'); }

TEST(CliTest, UsageErrorsExit2WithOneLine) {
  const std::vector<std::vector<std::string>> cases = {
      {},
      {"frobnicate"},
      {"health", "extra"},
      {"--bogus", "1", "health"},
      {"health", "--url"},
      {"complete"},
      {"complete", "--prompt", "x", "--max-tokens", "0"},
      {"complete", "--prompt", "x", "--max-tokens", "12abc"},
      {"complete", "--prompt", "x", "--temperature", "-1"},
      {"complete", "--prompt", "x", "--temperature", "hot"},
      {"complete", "--prompt", "x", "--seed", "-3"},
      {"chat", "--prompt", "x"},
      {"health", "--system", "x"},
      {"--url", "http://a:1", "--grpc", "a:2", "health"},
      {"--url", "ftp://a", "health"},
      {"--url=localhost:8000", "models"},
  };
  for (const std::vector<std::string>& args : cases) {
    CliRun run = RunWith(args);
    std::string joined;
    for (const std::string& a : args) joined += a + " ";
    EXPECT_EQ(run.code, kExitUsage) << joined;
    EXPECT_EQ(Lines(run.err), 1u) << joined << ": " << run.err;
    EXPECT_EQ(run.err.rfind("tandem: ", 0), 0u) << joined << ": " << run.err;
    EXPECT_TRUE(run.out.empty()) << joined;
  }
}

TEST(CliTest, ParsesFlagsAnywhereInBothForms) {
  absl::StatusOr<CliOptions> o =
      ParseCliArgs({"--model=m", "complete", "--prompt", "p q", "--url", "http://h:1",
                    "--max-tokens=7", "--temperature", "0.5", "--seed", "18446744073709551615"},
                   "env-key");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->command, "complete");
  EXPECT_EQ(o->model, "m");
  EXPECT_EQ(o->prompt, "p q");
  EXPECT_EQ(o->url, "http://h:1");
  EXPECT_EQ(o->max_tokens, 7);
  EXPECT_EQ(o->temperature, 0.5f);
  EXPECT_EQ(o->seed, 18446744073709551615ull);
  EXPECT_EQ(o->api_key, "env-key");
  o = ParseCliArgs({"--api-key", "flag-key", "--grpc", "h:2", "chat", "--system", "s"}, "env");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->api_key, "flag-key");
  EXPECT_EQ(o->grpc_target, "h:2");
  EXPECT_EQ(o->system, "s");
  EXPECT_EQ(o->url, "http://127.0.0.1:8000");
}

TEST(CliTest, HelpGoesToStdout) {
  CliRun run = RunWith({"--help"});
  EXPECT_EQ(run.code, kExitOk);
  EXPECT_NE(run.out.find("usage: tandem"), std::string::npos);
  EXPECT_TRUE(run.err.empty());
}

TEST(CliTest, TheBinaryExits2OnUsageErrors) {
  const std::string command = std::string(TANDEM_CLI_PATH) + " frobnicate 2>/dev/null";
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), kExitUsage);
  const int ok = std::system((std::string(TANDEM_CLI_PATH) + " --help >/dev/null").c_str());
  ASSERT_TRUE(WIFEXITED(ok));
  EXPECT_EQ(WEXITSTATUS(ok), 0);
}

std::string CompletionEvents(const std::vector<std::string>& texts) {
  std::string body;
  for (const std::string& t : texts) {
    body += "data: " +
            nlohmann::json({{"choices", {{{"index", 0}, {"text", t}, {"finish_reason", nullptr}}}}})
                .dump() +
            "\n\n";
  }
  return body + "data: [DONE]\n\n";
}

std::string ChatEvents(const std::string& text) {
  nlohmann::json chunk = {
      {"choices", {{{"index", 0}, {"delta", {{"content", text}}}, {"finish_reason", "stop"}}}}};
  return "data: " + chunk.dump() + "\n\ndata: [DONE]\n\n";
}

TEST(CliTest, CompleteStreamsToStdout) {
  CannedHttpServer server({{SseHead(), CompletionEvents({"Once", " upon", " a time"})}});
  CliRun run =
      RunWith({"--url", server.url(), "--api-key", "k", "--model", "m", "complete", "--prompt",
               "Tell me", "--max-tokens", "3", "--temperature", "0", "--seed", "9"});
  EXPECT_EQ(run.code, kExitOk) << run.err;
  EXPECT_EQ(run.out, "Once upon a time\n");
  const std::string request = server.requests().at(0);
  EXPECT_NE(request.find("Authorization: Bearer k\r\n"), std::string::npos);
  nlohmann::json sent = nlohmann::json::parse(RequestBody(request));
  EXPECT_EQ(sent["prompt"], "Tell me");
  EXPECT_EQ(sent["model"], "m");
  EXPECT_EQ(sent["max_tokens"], 3);
  EXPECT_EQ(sent["temperature"], 0.0);
  EXPECT_EQ(sent["seed"], 9);
}

TEST(CliTest, ServerErrorExits1WithTheServersMessage) {
  const std::string body =
      "{\"error\":{\"message\":\"This model's maximum context length is 2048 tokens.\\n"
      "Please shorten.\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}";
  CannedHttpServer server({{HttpResponse(413, "application/json", body)}});
  CliRun run = RunWith({"--url", server.url(), "complete", "--prompt", "x"});
  EXPECT_EQ(run.code, kExitServerError);
  EXPECT_EQ(run.err,
            "tandem: OUT_OF_RANGE: This model's maximum context length is 2048 tokens. "
            "Please shorten.\n");
}

TEST(CliTest, UnreachableServerExits1) {
  int port = 0;
  {
    CannedHttpServer server({});
    port = server.port();
  }
  CliRun run = RunWith({"--url", "http://127.0.0.1:" + std::to_string(port), "health"});
  EXPECT_EQ(run.code, kExitServerError);
  EXPECT_EQ(Lines(run.err), 1u);
  EXPECT_NE(run.err.find("UNAVAILABLE"), std::string::npos) << run.err;
}

TEST(CliTest, HealthAndModels) {
  CannedHttpServer server(
      {{HttpResponse(200, "text/plain", "")},
       {HttpResponse(200, "application/json",
                     "{\"data\":[{\"id\":\"smollm\",\"max_model_len\":8192}]}")}});
  CliRun health = RunWith({"--url", server.url(), "health"});
  EXPECT_EQ(health.code, kExitOk) << health.err;
  EXPECT_EQ(health.out, "serving\n");
  CliRun models = RunWith({"--url", server.url(), "models"});
  EXPECT_EQ(models.code, kExitOk) << models.err;
  EXPECT_EQ(models.out, "smollm\tmax_model_len=8192\n");
}

TEST(CliTest, ChatKeepsHistoryAndStopsAtEndOfInput) {
  CannedHttpServer server({{SseHead(), ChatEvents("Hi there.")}, {SseHead(), ChatEvents("Fine.")}});
  CliRun run =
      RunWith({"--url", server.url(), "chat", "--system", "terse"}, "hello\nhow are you?\n");
  EXPECT_EQ(run.code, kExitOk) << run.err;
  EXPECT_EQ(run.out, "Hi there.\nFine.\n");
  std::vector<std::string> requests = server.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[1].rfind("POST /v1/chat/completions ", 0), 0u);
  nlohmann::json second = nlohmann::json::parse(RequestBody(requests[1]));
  const nlohmann::json expected = nlohmann::json::array({
      {{"role", "system"}, {"content", "terse"}},
      {{"role", "user"}, {"content", "hello"}},
      {{"role", "assistant"}, {"content", "Hi there."}},
      {{"role", "user"}, {"content", "how are you?"}},
  });
  EXPECT_EQ(second["messages"], expected);
}

}  // namespace
}  // namespace tandem::client
