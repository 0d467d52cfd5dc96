// HttpClient against CannedHttpServer: SSE parsing of both endpoints, framing variants, and
// how HTTP errors become statuses.
#include "client/http_client.h"

#include <gtest/gtest.h>

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

std::unique_ptr<HttpClient> MakeClient(const std::string& url, const std::string& key = "") {
  HttpClientOptions options;
  options.url = url;
  options.api_key = key;
  absl::StatusOr<std::unique_ptr<HttpClient>> client = HttpClient::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return std::move(*client);
}

struct Collected {
  std::vector<TextDelta> deltas;
  DeltaCallback callback() {
    return [this](const TextDelta& d) {
      deltas.push_back(d);
      return true;
    };
  }
};

TEST(HttpClientTest, ChatStreamDeltasUsageAndRequest) {
  const std::string body =
      "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
      "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n"
      "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}"
      "\n\n"
      "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\u00e9\"},"
      "\"finish_reason\":null}]}\n\n"
      "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
      "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,"
      "\"total_tokens\":15,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n"
      "data: [DONE]\n\n";
  // The body split mid-event, as a network would.
  CannedHttpServer server(
      {{SseHead(), body.substr(0, 100), body.substr(100, 37), body.substr(137)}});
  auto client = MakeClient(server.url(), "sk-test");
  GenerateParams params;
  params.chat = true;
  params.model = "m";
  params.messages = {{"system", "sys"}, {"user", "hi"}};
  params.max_tokens = 8;
  params.temperature = 0.0f;
  params.seed = 5;
  Collected got;
  absl::StatusOr<Usage> usage = client->Generate(params, got.callback());
  ASSERT_TRUE(usage.ok()) << usage.status();
  ASSERT_EQ(got.deltas.size(), 3u);  // the role-only chunk carries nothing
  EXPECT_EQ(got.deltas[0].text, "Hel");
  EXPECT_EQ(got.deltas[1].text, "lo \xc3\xa9");
  EXPECT_EQ(got.deltas[1].finish_reason, "");
  EXPECT_EQ(got.deltas[2].text, "");
  EXPECT_EQ(got.deltas[2].finish_reason, "stop");
  EXPECT_EQ(usage->prompt_tokens, 12);
  EXPECT_EQ(usage->completion_tokens, 3);
  EXPECT_EQ(usage->cached_tokens, 8);

  std::vector<std::string> requests = server.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].rfind("POST /v1/chat/completions HTTP/1.1\r\n", 0), 0u) << requests[0];
  EXPECT_NE(requests[0].find("Authorization: Bearer sk-test\r\n"), std::string::npos);
  nlohmann::json sent = nlohmann::json::parse(RequestBody(requests[0]));
  EXPECT_EQ(sent["model"], "m");
  EXPECT_EQ(sent["stream"], true);
  EXPECT_EQ(sent["stream_options"]["include_usage"], true);
  EXPECT_EQ(sent["messages"].size(), 2u);
  EXPECT_EQ(sent["messages"][1]["role"], "user");
  EXPECT_EQ(sent["messages"][1]["content"], "hi");
  EXPECT_EQ(sent["max_tokens"], 8);
  EXPECT_EQ(sent["temperature"], 0.0);
  EXPECT_EQ(sent["seed"], 5);
  EXPECT_FALSE(sent.contains("prompt"));
  EXPECT_FALSE(sent.contains("top_p"));  // unset fields are left to the server
}

TEST(HttpClientTest, CompletionStreamOverChunkedEncodingWithCrlf) {
  std::string events =
      "data: {\"choices\":[{\"index\":0,\"text\":\"one\",\"finish_reason\":null},"
      "{\"index\":1,\"text\":\"uno\",\"finish_reason\":null}]}\r\n\r\n"
      "data: {\"choices\":[{\"index\":1,\"text\":\" dos\",\"finish_reason\":\"length\"}]}\r\n\r\n"
      "data: {\"choices\":[{\"index\":0,\"text\":\" two\",\"finish_reason\":\"stop\"}],"
      "\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":4}}\r\n\r\n"
      "data: [DONE]\r\n\r\n";
  // HTTP chunks that cut events and even "\r\n" pairs in half.
  std::string chunked;
  for (size_t at = 0; at < events.size(); at += 41) {
    const std::string part = events.substr(at, 41);
    char size[16];
    std::snprintf(size, sizeof(size), "%zx\r\n", part.size());
    chunked += size + part + "\r\n";
  }
  chunked += "0\r\n\r\n";
  const std::string head =
      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
  CannedHttpServer server({{head, chunked}});
  auto client = MakeClient(server.url());
  GenerateParams params;
  params.prompt = "count";
  params.n = 2;
  params.stop = {"three"};
  Collected got;
  absl::StatusOr<Usage> usage = client->Generate(params, got.callback());
  ASSERT_TRUE(usage.ok()) << usage.status();
  std::string text[2];
  std::string finish[2];
  for (const TextDelta& d : got.deltas) {
    text[d.index] += d.text;
    if (!d.finish_reason.empty()) finish[d.index] = d.finish_reason;
  }
  EXPECT_EQ(text[0], "one two");
  EXPECT_EQ(text[1], "uno dos");
  EXPECT_EQ(finish[0], "stop");
  EXPECT_EQ(finish[1], "length");
  EXPECT_EQ(usage->completion_tokens, 4);
  EXPECT_EQ(usage->cached_tokens, 0);  // a server without prompt_tokens_details

  const std::string request = server.requests().at(0);
  EXPECT_EQ(request.rfind("POST /v1/completions HTTP/1.1\r\n", 0), 0u);
  EXPECT_EQ(request.find("Authorization:"), std::string::npos);  // no key, no header
  nlohmann::json sent = nlohmann::json::parse(RequestBody(request));
  EXPECT_EQ(sent["prompt"], "count");
  EXPECT_EQ(sent["n"], 2);
  EXPECT_EQ(sent["stop"], nlohmann::json::array({"three"}));
  EXPECT_FALSE(sent.contains("model"));  // empty: the served model
}

struct ErrorCase {
  int http_status;
  absl::StatusCode code;
};

class HttpErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(HttpErrorTest, OpenAIErrorBodyBecomesStatusWithTheMessage) {
  const ErrorCase c = GetParam();
  const std::string body =
      "{\"error\":{\"message\":\"'temperature' must be >= 0\",\"type\":\"invalid_request_error\","
      "\"param\":\"temperature\",\"code\":\"invalid_value\"}}";
  CannedHttpServer server({{HttpResponse(c.http_status, "application/json", body)},
                           {HttpResponse(c.http_status, "application/json", body)}});
  auto client = MakeClient(server.url());
  GenerateParams params;
  params.prompt = "x";
  Collected got;
  absl::StatusOr<Usage> usage = client->Generate(params, got.callback());
  EXPECT_EQ(usage.status().code(), c.code);
  EXPECT_EQ(usage.status().message(), "'temperature' must be >= 0");
  EXPECT_TRUE(got.deltas.empty());
  absl::Status health = client->Health();
  EXPECT_EQ(health.code(), c.code);
  EXPECT_EQ(health.message(), "'temperature' must be >= 0");
}

INSTANTIATE_TEST_SUITE_P(Codes, HttpErrorTest,
                         ::testing::Values(ErrorCase{400, absl::StatusCode::kInvalidArgument},
                                           ErrorCase{401, absl::StatusCode::kUnauthenticated},
                                           ErrorCase{404, absl::StatusCode::kNotFound},
                                           ErrorCase{413, absl::StatusCode::kOutOfRange},
                                           ErrorCase{422, absl::StatusCode::kInvalidArgument},
                                           ErrorCase{429, absl::StatusCode::kResourceExhausted},
                                           ErrorCase{500, absl::StatusCode::kInternal},
                                           ErrorCase{503, absl::StatusCode::kUnavailable}));

TEST(HttpClientTest, StatusFromNonJsonErrors) {
  absl::Status s = StatusFromHttpError(502, "Bad Gateway\r\n");
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(s.message(), "Bad Gateway");
  s = StatusFromHttpError(404, "");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "HTTP 404");
  s = StatusFromHttpError(400, "{\"error\":\"plain string error\"}");
  EXPECT_EQ(s.message(), "plain string error");
  s = StatusFromHttpError(418, "{\"detail\":\"x\"}");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "{\"detail\":\"x\"}");
}

TEST(HttpClientTest, ErrorEventMidStream) {
  const std::string body =
      "data: {\"choices\":[{\"index\":0,\"text\":\"par\",\"finish_reason\":null}]}\n\n"
      "data: {\"error\":{\"message\":\"server is shutting down\",\"type\":\"server_error\","
      "\"code\":503}}\n\n";
  CannedHttpServer server({{SseHead(), body}});
  auto client = MakeClient(server.url());
  GenerateParams params;
  Collected got;
  absl::StatusOr<Usage> usage = client->Generate(params, got.callback());
  EXPECT_EQ(usage.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(usage.status().message(), "server is shutting down");
  ASSERT_EQ(got.deltas.size(), 1u);
  EXPECT_EQ(got.deltas[0].text, "par");
}

TEST(HttpClientTest, StreamCutBeforeDoneIsUnavailable) {
  CannedHttpServer server(
      {{SseHead(),
        "data: {\"choices\":[{\"index\":0,\"text\":\"a\",\"finish_reason\":null}]}\n\n"}});
  auto client = MakeClient(server.url());
  Collected got;
  absl::StatusOr<Usage> usage = client->Generate(GenerateParams(), got.callback());
  EXPECT_EQ(usage.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(got.deltas.size(), 1u);
}

TEST(HttpClientTest, MalformedEventIsInternal) {
  CannedHttpServer server({{SseHead(), "data: {not json\n\ndata: [DONE]\n\n"}});
  auto client = MakeClient(server.url());
  Collected got;
  absl::StatusOr<Usage> usage = client->Generate(GenerateParams(), got.callback());
  EXPECT_EQ(usage.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(usage.status().message().find("{not json"), std::string::npos);
}

TEST(HttpClientTest, CallbackStopCancels) {
  const std::string body =
      "data: {\"choices\":[{\"index\":0,\"text\":\"a\",\"finish_reason\":null}]}\n\n"
      "data: {\"choices\":[{\"index\":0,\"text\":\"b\",\"finish_reason\":null}]}\n\n"
      "data: [DONE]\n\n";
  CannedHttpServer server({{SseHead(), body}});
  auto client = MakeClient(server.url());
  int calls = 0;
  absl::StatusOr<Usage> usage = client->Generate(GenerateParams(), [&](const TextDelta&) {
    ++calls;
    return false;
  });
  EXPECT_EQ(usage.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(calls, 1);
}

TEST(HttpClientTest, HealthAndModels) {
  const std::string models =
      "{\"object\":\"list\",\"data\":[{\"id\":\"smollm\",\"object\":\"model\",\"created\":17,"
      "\"owned_by\":\"tandem\",\"max_model_len\":8192},{\"id\":\"other\"}]}";
  CannedHttpServer server({{HttpResponse(200, "text/plain", "ok")},
                           {HttpResponse(200, "application/json", models)},
                           {HttpResponse(200, "application/json", "[]")}});
  // An OpenAI-style base URL: the "/v1" suffix is not doubled.
  auto client = MakeClient(server.url() + "/v1/");
  EXPECT_TRUE(client->Health().ok());
  absl::StatusOr<std::vector<ModelEntry>> listed = client->ListModels();
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ((*listed)[0].id, "smollm");
  EXPECT_EQ((*listed)[0].created, 17);
  EXPECT_EQ((*listed)[0].max_model_len, 8192);
  EXPECT_EQ((*listed)[1].id, "other");
  EXPECT_EQ((*listed)[1].max_model_len, 0);
  EXPECT_EQ(client->ListModels().status().code(), absl::StatusCode::kInternal);

  std::vector<std::string> requests = server.requests();
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[0].rfind("GET /health HTTP/1.1\r\n", 0), 0u);
  EXPECT_EQ(requests[1].rfind("GET /v1/models HTTP/1.1\r\n", 0), 0u);
}

TEST(HttpClientTest, UrlPrefixIsKept) {
  CannedHttpServer server({{HttpResponse(200, "text/plain", "ok")}});
  auto client = MakeClient(server.url() + "/proxy");
  EXPECT_TRUE(client->Health().ok());
  EXPECT_EQ(server.requests().at(0).rfind("GET /proxy/health ", 0), 0u);
}

TEST(HttpClientTest, BadUrlsAreInvalidArgument) {
  for (const char* url : {"", "localhost:8000", "https://x:1", "http://", "http://host:",
                          "http://host:99999", "http://host:8x", "http://[::1:80"}) {
    HttpClientOptions options;
    options.url = url;
    EXPECT_EQ(HttpClient::Create(options).status().code(), absl::StatusCode::kInvalidArgument)
        << url;
  }
  HttpClientOptions options;
  options.url = "http://[::1]:8000";
  EXPECT_TRUE(HttpClient::Create(options).ok());
  options.url = "http://example.com";
  EXPECT_TRUE(HttpClient::Create(options).ok());
}

TEST(HttpClientTest, NobodyListeningIsUnavailable) {
  int port = 0;
  {
    CannedHttpServer server({});  // binds a free port, then releases it
    port = server.port();
  }
  auto client = MakeClient("http://127.0.0.1:" + std::to_string(port));
  absl::Status status = client->Health();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(status.message().find("cannot connect"), std::string::npos) << status;
}

}  // namespace
}  // namespace tandem::client
