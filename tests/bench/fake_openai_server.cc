#include "tests/bench/fake_openai_server.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <mutex>
#include <sstream>

namespace tandem::bench::testing {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

// Named strings, not literals, in co_await expressions: GCC 12 fails on string-literal
// temporaries in coroutines ("array used as initializer").
const std::string kJson = "application/json";
const std::string kText = "text/plain; version=0.0.4";
const std::string kNotFound = "not found";
const std::string kModels = R"({"object":"list","data":[{"id":"fake-model","object":"model"}]})";
const std::string kNoRoute = R"({"error":{"message":"no route"}})";
const std::string kScriptedFailure =
    R"({"error":{"message":"scripted failure","type":"server_error"}})";
const std::string kStreamError = R"({"error":{"message":"scripted stream error"}})";
const std::string kSseHeader =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
    "Connection: close\r\n\r\n";
const std::string kDone = "[DONE]";
const std::string kLastChunk = "0\r\n\r\n";
const std::string kTok = " tok";

struct FakeOpenAiServer::Impl {
  FakeOpenAiServer* owner;
  BehaviorFn behavior;
  bool serve_metrics;
  TokenizeForm tokenize_form;
  asio::io_context ioc{1};
  tcp::acceptor acceptor{ioc};
  int in_flight = 0;  // io thread only
  // Counters served on /metrics: io thread only.
  long success = 0, prompt_tokens = 0, generation_tokens = 0;
  mutable std::mutex mu;
  nlohmann::json last_body;                       // guarded by mu
  std::vector<FakeOpenAiServer::StreamLog> logs;  // guarded by mu

  static int CountWords(const std::string& s) {
    std::istringstream in(s);
    std::string w;
    int n = 0;
    while (in >> w) ++n;
    return n;
  }

  static std::string PromptText(const nlohmann::json& body) {
    if (body.contains("prompt") && body["prompt"].is_string()) return body["prompt"];
    std::string all;
    if (body.contains("messages") && body["messages"].is_array()) {
      for (const auto& m : body["messages"]) {
        if (m.contains("content") && m["content"].is_string()) {
          if (!all.empty()) all += " ";
          all += m["content"].get<std::string>();
        }
      }
    }
    return all;
  }

  asio::awaitable<void> Accept() {
    for (;;) {
      beast::error_code ec;
      tcp::socket sock =
          co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;
      asio::co_spawn(ioc, Serve(std::move(sock)), asio::detached);
    }
  }

  static asio::awaitable<void> WriteAll(tcp::socket& sock, std::string data,
                                        beast::error_code& ec) {
    co_await asio::async_write(sock, asio::buffer(data),
                               asio::redirect_error(asio::use_awaitable, ec));
  }

  static std::string Chunk(const std::string& payload) {
    std::ostringstream os;
    os << std::hex << payload.size() << "\r\n" << payload << "\r\n";
    return os.str();
  }

  asio::awaitable<void> SimpleReply(tcp::socket& sock, int status, std::string ctype,
                                    std::string body) {
    std::ostringstream os;
    os << "HTTP/1.1 " << status << (status == 200 ? " OK" : " Error")
       << "\r\nContent-Type: " << ctype << "\r\nContent-Length: " << body.size()
       << "\r\nConnection: close\r\n\r\n"
       << body;
    beast::error_code ec;
    co_await WriteAll(sock, os.str(), ec);
  }

  asio::awaitable<void> Serve(tcp::socket sock) {
    beast::flat_buffer buf;
    http::request<http::string_body> req;
    beast::error_code ec;
    co_await http::async_read(sock, buf, req, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    const Clock::time_point t_read = Clock::now();
    const std::string target(req.target());
    nlohmann::json body = nlohmann::json::parse(req.body(), nullptr, false);
    if (target == "/tokenize") {
      const char* key = tokenize_form == TokenizeForm::kLlamaCpp ? "content" : "prompt";
      if (tokenize_form == TokenizeForm::kNone || !body.is_object() || !body.contains(key) ||
          !body[key].is_string() ||
          (tokenize_form == TokenizeForm::kVllm && !body.contains("model"))) {
        co_await SimpleReply(sock, tokenize_form == TokenizeForm::kNone ? 404 : 400, kJson,
                             kNoRoute);
        co_return;
      }
      nlohmann::json tokens = nlohmann::json::array();
      const int n = CountWords(body[key].get<std::string>());
      for (int i = 0; i < n; ++i) tokens.push_back(i + 10);
      nlohmann::json answer;
      answer["tokens"] = tokens;
      co_await SimpleReply(sock, 200, kJson, answer.dump());
      co_return;
    }
    if (target == "/v1/models") {
      co_await SimpleReply(sock, 200, kJson, kModels);
      co_return;
    }
    if (target == "/metrics") {
      if (!serve_metrics) {
        co_await SimpleReply(sock, 404, kText, kNotFound);
        co_return;
      }
      std::ostringstream os;
      os << "# TYPE tandem:request_success_total counter\n"
         << "tandem:request_success_total{model=\"fake-model\"} " << success << "\n"
         << "tandem:prompt_tokens_total " << prompt_tokens << "\n"
         << "tandem:generation_tokens_total " << generation_tokens << "\n";
      co_await SimpleReply(sock, 200, kText, os.str());
      co_return;
    }
    const bool chat = target == "/v1/chat/completions";
    if (!chat && target != "/v1/completions") {
      co_await SimpleReply(sock, 404, kJson, kNoRoute);
      co_return;
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      last_body = body;
    }
    ++in_flight;
    owner->generation_requests_.fetch_add(1);
    if (in_flight > owner->max_in_flight_.load()) owner->max_in_flight_.store(in_flight);
    co_await Generate(sock, body, chat, t_read);
    --in_flight;
  }

  asio::awaitable<void> Generate(tcp::socket& sock, const nlohmann::json& body, bool chat,
                                 Clock::time_point t_read) {
    const FakeBehavior b = behavior(body, in_flight);
    beast::error_code ec;
    asio::steady_timer timer(ioc);
    auto sleep_until = [&](Clock::time_point t) -> asio::awaitable<void> {
      timer.expires_at(t);
      beast::error_code ignored;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    };
    if (b.status != 200) {
      co_await SimpleReply(sock, b.status, kJson, kScriptedFailure);
      co_return;
    }
    co_await WriteAll(sock, kSseHeader, ec);
    if (ec) co_return;
    if (b.hang_ms > 0) {
      co_await sleep_until(Clock::now() +
                           std::chrono::microseconds(static_cast<long>(b.hang_ms * 1e3)));
      co_return;  // the socket closes here
    }
    const int max_tokens = body.value("max_tokens", 16);
    const int n = b.tokens >= 0 ? b.tokens : max_tokens;
    const std::string prompt = PromptText(body);
    size_t log_index = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      log_index = logs.size();
      logs.push_back({prompt, t_read, {}});
    }
    auto send_event = [&](const std::string& payload) -> asio::awaitable<void> {
      const std::string event = "data: " + payload + "\n\n";
      if (b.split_events) {
        const size_t half = event.size() / 2;
        co_await WriteAll(sock, Chunk(event.substr(0, half)), ec);
        if (ec) co_return;
        co_await sleep_until(Clock::now() + std::chrono::milliseconds(1));
        co_await WriteAll(sock, Chunk(event.substr(half)), ec);
      } else {
        co_await WriteAll(sock, Chunk(event), ec);
      }
    };
    for (int i = 0; i < n; ++i) {
      if (i == b.break_after) co_return;  // cut: no terminating chunk, no [DONE]
      if (i == b.error_after) {
        co_await send_event(kStreamError);
        co_await send_event(kDone);
        co_await WriteAll(sock, kLastChunk, ec);
        co_return;
      }
      const double at_ms = b.first_token_ms + i * b.itl_ms;
      co_await sleep_until(t_read + std::chrono::microseconds(static_cast<long>(at_ms * 1e3)));
      const std::string text = kTok + std::to_string(i);
      nlohmann::json chunk;
      if (chat) {
        chunk = {{"object", "chat.completion.chunk"},
                 {"choices", {{{"index", 0}, {"delta", {{"content", text}}}}}}};
      } else {
        chunk = {{"object", "text_completion"}, {"choices", {{{"index", 0}, {"text", text}}}}};
      }
      co_await send_event(chunk.dump());
      if (ec) co_return;
      {
        const Clock::time_point written = Clock::now();
        std::lock_guard<std::mutex> lock(mu);
        logs[log_index].token_writes.push_back(written);
      }
    }
    const int p_tokens = CountWords(prompt);
    nlohmann::json usage = {{"choices", nlohmann::json::array()},
                            {"usage", {{"prompt_tokens", p_tokens}, {"completion_tokens", n}}}};
    co_await send_event(usage.dump());
    co_await send_event(kDone);
    co_await WriteAll(sock, kLastChunk, ec);
    if (ec) co_return;
    ++success;
    prompt_tokens += p_tokens;
    generation_tokens += n;
  }
};

FakeOpenAiServer::FakeOpenAiServer(BehaviorFn behavior, bool serve_metrics, TokenizeForm tokenize)
    : impl_(std::make_unique<Impl>()) {
  impl_->tokenize_form = tokenize;
  impl_->owner = this;
  impl_->behavior = std::move(behavior);
  impl_->serve_metrics = serve_metrics;
  tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), 0);
  impl_->acceptor.open(ep.protocol());
  impl_->acceptor.set_option(tcp::acceptor::reuse_address(true));
  impl_->acceptor.bind(ep);
  impl_->acceptor.listen(256);
  port_ = impl_->acceptor.local_endpoint().port();
  asio::co_spawn(impl_->ioc, impl_->Accept(), asio::detached);
  thread_ = std::thread([this] { impl_->ioc.run(); });
}

FakeOpenAiServer::~FakeOpenAiServer() {
  impl_->ioc.stop();
  thread_.join();
}

std::vector<FakeOpenAiServer::StreamLog> FakeOpenAiServer::streams() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->logs;
}

nlohmann::json FakeOpenAiServer::last_body() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->last_body;
}

}  // namespace tandem::bench::testing
