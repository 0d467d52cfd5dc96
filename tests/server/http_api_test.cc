// HttpApi over a real HttpServer and the scripted FakeFrontend: per-request SLO headers,
// Retry-After on refusals, and streamed responses that hold their headers until the first
// output, so a stream refused before producing anything gets its real status.
#include "server/http_api.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/retry_after.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/http/http_server.h"
#include "tests/server/grpc/fake_frontend.h"

namespace tandem::server {
namespace {

using ::tandem::server::testing::FakeFrontend;
using ::tandem::server::testing::StreamScript;

struct Response {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;                            // as sent (chunk framing left in)
};

// A blocking client socket with a 10 s receive timeout, so a broken server fails a test
// instead of hanging it.
class Socket {
 public:
  explicit Socket(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{};
    tv.tv_sec = 10;
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~Socket() { Close(); }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  bool connected() const { return connected_; }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(n);
    }
    return true;
  }

  // True when some byte arrives within `ms`.
  bool Readable(int ms) {
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, ms) > 0;
  }

  // Everything until the server closes the connection (empty on timeout).
  std::string ReadAll() {
    std::string out;
    char buf[16384];
    for (;;) {
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) return n == 0 ? out : std::string();
      out.append(buf, n);
    }
  }

  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

std::optional<Response> ParseResponse(const std::string& raw) {
  const size_t head_end = raw.find("\r\n\r\n");
  if (head_end == std::string::npos || raw.size() < 12) return std::nullopt;
  Response r;
  r.status = std::stoi(raw.substr(9, 3));
  size_t pos = raw.find("\r\n") + 2;
  while (pos < head_end) {
    const size_t eol = raw.find("\r\n", pos);
    const std::string line = raw.substr(pos, eol - pos);
    pos = eol + 2;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    r.headers[name] = value;
  }
  r.body = raw.substr(head_end + 4);
  return r;
}

std::string Post(std::string_view path, std::string_view body, std::string_view headers = "") {
  return std::string("POST ") + std::string(path) +
         " HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nConnection: close\r\n" +
         "Content-Length: " + std::to_string(body.size()) + "\r\n" + std::string(headers) + "\r\n" +
         std::string(body);
}

ChoiceDelta Delta(std::string text, std::optional<FinishReason> finish = std::nullopt) {
  ChoiceDelta d;
  d.text = std::move(text);
  d.token_ids = {1};
  d.finish = finish;
  return d;
}

constexpr char kStreamBody[] = R"({"prompt":"p","max_tokens":4,"stream":true})";
constexpr char kPlainBody[] = R"({"prompt":"p","max_tokens":4})";

class HttpApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    api_ = std::make_unique<HttpApi>(
        HttpApiConfig{}, frontend_, [] { return true; }, [] { return std::string(); },
        [this](int code) {
          std::lock_guard<std::mutex> lock(mu_);
          statuses_.push_back(code);
          cv_.notify_all();
        });
    http::HttpServerConfig config;
    config.host = "127.0.0.1";
    config.port = 0;
    absl::StatusOr<std::unique_ptr<http::HttpServer>> server = http::HttpServer::Start(
        config, [this](http::HttpRequest request, std::shared_ptr<http::ResponseWriter> writer) {
          api_->Handle(std::move(request), std::move(writer));
        });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }

  void TearDown() override {
    server_.reset();  // fires OnClose for what is still pending, so hanging streams end
    api_.reset();
  }

  Response Exchange(const std::string& request) {
    Socket s(server_->port());
    EXPECT_TRUE(s.connected());
    EXPECT_TRUE(s.Send(request));
    std::optional<Response> r = ParseResponse(s.ReadAll());
    EXPECT_TRUE(r.has_value()) << "no complete response";
    return r.value_or(Response{});
  }

  // The statuses reported to on_status, once `n` have been (or after 10 s), and after a short
  // grace period in which a second, wrong report would show up.
  std::vector<int> Statuses(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(10), [&] { return statuses_.size() >= n; });
    lock.unlock();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    lock.lock();
    return statuses_;
  }

  FakeFrontend frontend_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int> statuses_;  // guarded by mu_
  std::unique_ptr<HttpApi> api_;
  std::unique_ptr<http::HttpServer> server_;
};

TEST_F(HttpApiTest, SloHeadersOverrideTheBody) {
  Response r =
      Exchange(Post("/v1/completions", R"({"prompt":"p","slo":{"ttft_ms":100,"tpot_ms":40}})",
                    "X-SLO-TTFT-MS: 250\r\n"));
  EXPECT_EQ(r.status, 200) << r.body;
  r = Exchange(Post("/v1/chat/completions",
                    R"({"messages":[{"role":"user","content":"q"}],"ttft_slo_ms":100})",
                    "x-slo-tpot-ms: 12.5\r\n"));
  EXPECT_EQ(r.status, 200) << r.body;
  r = Exchange(Post("/v1/completions", kPlainBody));
  EXPECT_EQ(r.status, 200) << r.body;

  const std::vector<GenerationRequest> requests = frontend_.generate_requests();
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[0].ttft_slo_ms, 250);  // header over body
  EXPECT_EQ(requests[0].tpot_slo_ms, 40);   // body
  EXPECT_EQ(requests[1].ttft_slo_ms, 100);  // the older body spelling
  EXPECT_EQ(requests[1].tpot_slo_ms, 12.5);
  EXPECT_EQ(requests[2].ttft_slo_ms, 0);  // nothing given: the daemon's default
  EXPECT_EQ(requests[2].tpot_slo_ms, 0);
  EXPECT_EQ(Statuses(3), (std::vector<int>{200, 200, 200}));
}

TEST_F(HttpApiTest, BadSloHeaderIs400NamingTheHeader) {
  for (const char* header : {"x-slo-ttft-ms: soon\r\n", "X-Slo-Tpot-Ms: 0\r\n",
                             "x-slo-tpot-ms: 3600001\r\n", "x-slo-ttft-ms: -1\r\n"}) {
    SCOPED_TRACE(header);
    const Response r = Exchange(Post("/v1/completions", kPlainBody, header));
    EXPECT_EQ(r.status, 400);
    const nlohmann::json body = nlohmann::json::parse(r.body, nullptr, false);
    ASSERT_TRUE(body.is_object()) << r.body;
    const std::string param = body["error"]["param"].get<std::string>();
    EXPECT_TRUE(param == "x-slo-ttft-ms" || param == "x-slo-tpot-ms") << r.body;
    EXPECT_NE(body["error"]["message"].get<std::string>().find("'" + param + "'"),
              std::string::npos)
        << r.body;
  }
  EXPECT_EQ(frontend_.generate_calls(), 0);
  EXPECT_EQ(Statuses(4), (std::vector<int>{400, 400, 400, 400}));
}

TEST_F(HttpApiTest, RefusalAtGenerateCarriesRetryAfter) {
  frontend_.SetGenerateError(WithRetryAfter(
      absl::ResourceExhaustedError("predicted TTFT misses the SLO"), absl::Milliseconds(1500)));
  Response r = Exchange(Post("/v1/completions", kStreamBody));
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.headers["retry-after"], "2");  // whole seconds, rounded up
  EXPECT_NE(r.body.find("rate_limit_error"), std::string::npos) << r.body;

  frontend_.SetGenerateError(absl::ResourceExhaustedError("the queue is full"));
  r = Exchange(Post("/v1/completions", kPlainBody));
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.headers["retry-after"], "1");  // a 429 without a delay

  frontend_.SetGenerateError(
      WithRetryAfter(absl::UnavailableError("draining"), absl::Milliseconds(4000)));
  r = Exchange(Post("/v1/completions", kPlainBody));
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.headers["retry-after"], "4");

  frontend_.SetGenerateError(absl::InvalidArgumentError("bad"));
  r = Exchange(Post("/v1/completions", kPlainBody));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.headers.count("retry-after"), 0u);
  EXPECT_EQ(Statuses(4), (std::vector<int>{429, 429, 503, 400}));
}

// A model without a chat template: the frontend refuses chat with InvalidArgument, which the
// chat route answers as a 400 carrying the message, streamed or not.
TEST_F(HttpApiTest, ChatWithoutTemplateIs400WithTheMessage) {
  const std::string message =
      "the model has no chat template (tokenizer.chat_template); use /v1/completions, or start "
      "tandemd with --chat-template NAME (chatml, llama3, mistral, llama2, gemma)";
  frontend_.SetGenerateError(absl::InvalidArgumentError(message));
  for (const char* body : {R"({"messages":[{"role":"user","content":"q"}]})",
                           R"({"messages":[{"role":"user","content":"q"}],"stream":true})"}) {
    SCOPED_TRACE(body);
    const Response r = Exchange(Post("/v1/chat/completions", body));
    EXPECT_EQ(r.status, 400);
    const nlohmann::json json = nlohmann::json::parse(r.body, nullptr, false);
    ASSERT_TRUE(json.is_object()) << r.body;
    EXPECT_EQ(json["error"]["message"], message);
    EXPECT_EQ(json["error"]["type"], "invalid_request_error");
  }
  EXPECT_EQ(Statuses(2), (std::vector<int>{400, 400}));
}

// The scheduler may refuse a queued request after Generate returned; a stream with no output
// yet must get a real 429, not a 200 with an in-band error.
TEST_F(HttpApiTest, StreamRefusedBeforeOutputGetsItsRealStatus) {
  StreamScript script;
  script.final_status =
      WithRetryAfter(absl::ResourceExhaustedError("the TTFT deadline passed in the queue"),
                     absl::Milliseconds(2500));
  frontend_.SetScript(script);
  Response r = Exchange(Post("/v1/completions", kStreamBody));
  EXPECT_EQ(r.status, 429) << r.body;
  EXPECT_EQ(r.headers["retry-after"], "3");
  EXPECT_EQ(r.headers["content-type"], "application/json");
  const nlohmann::json body = nlohmann::json::parse(r.body, nullptr, false);
  ASSERT_TRUE(body.is_object()) << r.body;
  EXPECT_EQ(body["error"]["type"], "rate_limit_error");
  EXPECT_EQ(body["error"]["message"], "the TTFT deadline passed in the queue");
  EXPECT_EQ(Statuses(1), (std::vector<int>{429}));
}

// The engine ends a failed choice with a bare finish delta (no text, no tokens): that is not
// output, so the refusal still gets its real status.
TEST_F(HttpApiTest, BareFinishDeltaIsNotOutput) {
  StreamScript script;
  script.batches = {{Delta("", FinishReason::kStop)}};
  script.batches[0][0].token_ids.clear();
  script.final_status = absl::UnavailableError("the engine is shutting down");
  frontend_.SetScript(script);
  Response r = Exchange(Post("/v1/completions", kStreamBody));
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_EQ(r.headers["content-type"], "application/json");
  EXPECT_EQ(Statuses(1), (std::vector<int>{503}));
}

// A bare finish that does not end the stream is held, then rendered after the headers.
TEST_F(HttpApiTest, HeldFinishDeltaIsRenderedWithTheFirstOutput) {
  StreamScript script;
  ChoiceDelta bare = Delta("", FinishReason::kStop);
  bare.index = 1;
  bare.token_ids.clear();
  script.batches = {{bare}, {Delta("late", FinishReason::kLength)}};
  frontend_.SetScript(script);
  Response r = Exchange(Post("/v1/completions", R"({"prompt":"p","n":2,"stream":true})"));
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_NE(r.body.find(R"("index":1)"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find(R"("finish_reason":"stop")"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find(R"("late")"), std::string::npos) << r.body;
  EXPECT_EQ(Statuses(1), (std::vector<int>{200}));
}

TEST_F(HttpApiTest, NonStreamRefusedLateCarriesRetryAfter) {
  StreamScript script;
  script.final_status =
      WithRetryAfter(absl::ResourceExhaustedError("dropped"), absl::Milliseconds(10));
  frontend_.SetScript(script);
  Response r =
      Exchange(Post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"q"}]})"));
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.headers["retry-after"], "1");
  EXPECT_EQ(Statuses(1), (std::vector<int>{429}));
}

TEST_F(HttpApiTest, StreamSendsHeadersWithItsFirstOutput) {
  StreamScript script;
  script.batches = {{Delta("Hel")}, {Delta("lo", FinishReason::kStop)}};
  frontend_.SetScript(script);
  Response r = Exchange(Post("/v1/completions", kStreamBody));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-type"], "text/event-stream");
  EXPECT_NE(r.body.find("\"Hel\""), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("\"lo\""), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("data: [DONE]"), std::string::npos) << r.body;
  EXPECT_EQ(Statuses(1), (std::vector<int>{200}));
}

TEST_F(HttpApiTest, ErrorAfterOutputStaysInBand) {
  StreamScript script;
  script.batches = {{Delta("partial")}};
  script.final_status = absl::ResourceExhaustedError("KV cache exhausted");
  frontend_.SetScript(script);
  Response r = Exchange(Post("/v1/completions", kStreamBody));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-type"], "text/event-stream");
  EXPECT_NE(r.body.find("\"partial\""), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("KV cache exhausted"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("data: [DONE]"), std::string::npos) << r.body;
  EXPECT_EQ(Statuses(1), (std::vector<int>{200}));
}

TEST_F(HttpApiTest, NoHeadersBeforeOutputAndDisconnectStillCancels) {
  StreamScript script;
  script.hang_after_batches = true;  // queued: no output until cancelled
  frontend_.SetScript(script);
  Socket s(server_->port());
  ASSERT_TRUE(s.connected());
  ASSERT_TRUE(s.Send(Post("/v1/completions", kStreamBody)));
  for (int i = 0; i < 200 && frontend_.generate_calls() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(frontend_.generate_calls(), 1);
  EXPECT_FALSE(s.Readable(300)) << "headers went out before any output";
  s.Close();
  ASSERT_NE(frontend_.last_stream(), nullptr);
  EXPECT_TRUE(frontend_.last_stream()->WaitForCancel(absl::Seconds(10)));
  EXPECT_EQ(Statuses(1).size(), 1u);  // reported once, whatever the stream's end status
}

}  // namespace
}  // namespace tandem::server
