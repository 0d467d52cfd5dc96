#include "bench/tandem_bench/load_runner.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <deque>
#include <limits>
#include <memory>

#include "absl/status/status.h"
#include "bench/tandem_bench/sse_parser.h"
#include "bench/tandem_bench/stream_chunk.h"
#include "common/check.h"
#include "common/str_cat.h"

namespace tandem::bench {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using Clock = std::chrono::steady_clock;

std::string EndpointPath(Endpoint e) {
  return e == Endpoint::kChat ? "/v1/chat/completions" : "/v1/completions";
}

nlohmann::json BuildRequestBody(const LoadConfig& config, const BenchRequest& request) {
  nlohmann::json body = {
      {"model", config.model}, {"max_tokens", request.max_tokens},
      {"stream", true},        {"stream_options", {{"include_usage", true}}},
      {"temperature", 0.0},
  };
  if (config.ignore_eos) body["ignore_eos"] = true;
  if (config.endpoint == Endpoint::kChat) {
    body["messages"] =
        request.messages.is_array()
            ? request.messages
            : nlohmann::json::array({{{"role", "user"}, {"content", request.prompt}}});
  } else {
    body["prompt"] = request.prompt;
  }
  for (auto it = config.extra_body.begin(); it != config.extra_body.end(); ++it) {
    body[it.key()] = it.value();
  }
  return body;
}

ScheduleFn ScheduleFromOffsets(std::vector<double> offsets, size_t n_requests) {
  auto state = std::make_shared<std::pair<std::vector<double>, size_t>>(std::move(offsets), 0);
  return [state, n_requests]() -> std::optional<Scheduled> {
    auto& [offs, i] = *state;
    if (i >= offs.size() || n_requests == 0) return std::nullopt;
    Scheduled s{i % n_requests, offs[i]};
    ++i;
    return s;
  };
}

namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// The state of one Run, owned by the io thread.
class RunSession {
 public:
  RunSession(const LoadConfig& config, const std::vector<BenchRequest>& requests,
             asio::io_context& ioc, asio::ip::tcp::resolver::results_type endpoints, int expected,
             double stop_after_s, ProgressReporter* progress)
      : config_(config),
        requests_(requests),
        ioc_(ioc),
        endpoints_(std::move(endpoints)),
        slot_timer_(ioc),
        expected_(expected),
        stop_after_s_(stop_after_s),
        progress_(progress) {}

  asio::awaitable<void> Dispatch(const ScheduleFn& next) {
    start_ = Clock::now();
    asio::steady_timer timer(ioc_);
    beast::error_code ec;
    auto tok = asio::redirect_error(asio::use_awaitable, ec);
    while (std::optional<Scheduled> s = next()) {
      TANDEM_CHECK_LT(s->request, requests_.size());
      if (stop_after_s_ > 0 && s->offset_s >= stop_after_s_) break;
      const auto due = start_ + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(s->offset_s));
      if (due > Clock::now()) {
        timer.expires_at(due);
        co_await timer.async_wait(tok);
      }
      while (config_.max_concurrency > 0 && in_flight_ >= config_.max_concurrency) {
        slot_timer_.expires_at(Clock::time_point::max());
        co_await slot_timer_.async_wait(tok);  // cancelled when a request finishes
      }
      if (stop_after_s_ > 0 && Seconds(Clock::now() - start_) >= stop_after_s_) break;
      records_.emplace_back();
      RequestRecord& rec = records_.back();
      rec.index = static_cast<int>(s->request);
      const BenchRequest& req = requests_[s->request];
      rec.prompt_tokens = req.prompt_tokens;
      rec.slo = req.slo ? *req.slo : config_.slo;
      ++in_flight_;
      asio::co_spawn(ioc_, Send(req, rec), asio::detached);
    }
    dispatching_done_ = true;
  }

  RunResult TakeResult() {
    RunResult r;
    r.records.assign(std::make_move_iterator(records_.begin()),
                     std::make_move_iterator(records_.end()));
    r.duration_s = Seconds(last_end_ - start_);
    if (r.duration_s < 0) r.duration_s = 0;
    return r;
  }

 private:
  asio::awaitable<void> Send(const BenchRequest& req, RequestRecord& rec) {
    http::request<http::string_body> hreq;
    hreq.method(http::verb::post);
    hreq.target(config_.server.base_path + EndpointPath(config_.endpoint));
    hreq.version(11);
    hreq.set(http::field::host, config_.server.HostHeader());
    hreq.set(http::field::user_agent, "tandem-bench");
    hreq.set(http::field::content_type, "application/json");
    hreq.set(http::field::accept, "text/event-stream");
    if (!config_.api_key.empty()) hreq.set(http::field::authorization, "Bearer " + config_.api_key);
    hreq.keep_alive(false);
    hreq.body() = BuildRequestBody(config_, req).dump();
    hreq.prepare_payload();

    const Clock::time_point t0 = Clock::now();
    rec.send_s = Seconds(t0 - start_);
    beast::error_code ec;
    auto tok = asio::redirect_error(asio::use_awaitable, ec);
    beast::tcp_stream stream(ioc_);
    // One deadline for the whole request: it applies to every operation started until reset.
    stream.expires_after(std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(config_.timeout_s)));
    auto fail = [&](RequestStatus status, std::string why) {
      rec.status = status;
      rec.error = std::move(why);
    };
    auto io_fail = [&](const char* stage) {
      if (ec == beast::error::timeout) {
        fail(RequestStatus::kTimeout,
             StrCat("timed out after ", config_.timeout_s, " s (", stage, ")"));
      } else if (std::string_view(stage) == "connect" || std::string_view(stage) == "send") {
        fail(RequestStatus::kConnectError, StrCat(stage, ": ", ec.message()));
      } else {
        fail(RequestStatus::kBrokenStream, StrCat(stage, ": ", ec.message()));
      }
    };

    beast::flat_buffer buf;
    http::response_parser<http::buffer_body> parser;
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    co_await stream.async_connect(endpoints_, tok);
    if (ec) {
      io_fail("connect");
    } else {
      co_await http::async_write(stream, hreq, tok);
      if (ec) io_fail("send");
    }
    if (!ec) {
      co_await http::async_read_header(stream, buf, parser, tok);
      if (ec) io_fail("reading the response header");
    }
    if (!ec) {
      rec.http_status = static_cast<int>(parser.get().result_int());
      co_await ReadBody(stream, buf, parser, rec, t0, ec);
      if (ec) io_fail("reading the stream");
    }
    const Clock::time_point t_end = Clock::now();
    rec.e2e_s = Seconds(t_end - t0);
    if (t_end > last_end_) last_end_ = t_end;
    beast::error_code ignored;
    stream.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
    OnDone(rec);
  }

  // Reads the body in pieces; parses SSE for a 200, collects the text of an error otherwise.
  asio::awaitable<void> ReadBody(beast::tcp_stream& stream, beast::flat_buffer& buf,
                                 http::response_parser<http::buffer_body>& parser,
                                 RequestRecord& rec, Clock::time_point t0, beast::error_code& ec) {
    auto tok = asio::redirect_error(asio::use_awaitable, ec);
    const bool is_ok = rec.http_status == 200;
    SseParser sse;
    std::vector<std::string> events;
    std::string error_body;
    bool done = false;
    Clock::time_point last_token{};
    char piece[16384];
    while (!parser.is_done()) {
      parser.get().body().data = piece;
      parser.get().body().size = sizeof(piece);
      co_await http::async_read_some(stream, buf, parser, tok);
      if (ec == http::error::need_buffer) ec = {};
      if (ec) break;
      const Clock::time_point now = Clock::now();
      const size_t n = sizeof(piece) - parser.get().body().size;
      if (n == 0) continue;
      if (!is_ok) {
        if (error_body.size() < 2000) error_body.append(piece, n);
        continue;
      }
      events.clear();
      sse.Feed(std::string_view(piece, n), events);
      for (const std::string& e : events) {
        if (done || rec.status != RequestStatus::kOk) continue;  // after [DONE] or an error
        absl::StatusOr<StreamChunk> chunk = ParseStreamChunk(e);
        if (!chunk.ok()) {
          rec.status = RequestStatus::kBrokenStream;
          rec.error = std::string(chunk.status().message());
          continue;
        }
        if (chunk->done) {
          done = true;
          continue;
        }
        if (chunk->error) {
          rec.status = RequestStatus::kServerError;
          rec.error = *chunk->error;
          continue;
        }
        if (!chunk->text.empty()) {
          if (rec.token_chunks == 0) {
            rec.ttft_s = Seconds(now - t0);
          } else {
            rec.itl_s.push_back(Seconds(now - last_token));
          }
          last_token = now;
          ++rec.token_chunks;
        }
        if (chunk->completion_tokens) {
          rec.usage_reported = true;
          rec.output_tokens = *chunk->completion_tokens;
          if (chunk->prompt_tokens) rec.prompt_tokens = *chunk->prompt_tokens;
          if (chunk->cached_tokens) rec.cached_tokens = *chunk->cached_tokens;
        }
      }
    }
    if (ec) co_return;
    if (!is_ok) {
      rec.status = RequestStatus::kHttpError;
      rec.error = StrCat("HTTP ", rec.http_status, ": ", error_body.substr(0, 500));
      co_return;
    }
    if (rec.status == RequestStatus::kOk && !done) {
      rec.status = RequestStatus::kBrokenStream;
      rec.error = sse.HasPartialEvent() ? "stream cut inside an event"
                                        : "stream ended without data: [DONE]";
    }
    if (!rec.usage_reported) rec.output_tokens = rec.token_chunks;
  }

  void OnDone(const RequestRecord& rec) {
    --in_flight_;
    ++finished_;
    if (!rec.ok()) ++errors_;
    slot_timer_.cancel();
    if (progress_) {
      const double frac = expected_ > 0       ? static_cast<double>(finished_) / expected_
                          : stop_after_s_ > 0 ? Seconds(Clock::now() - start_) / stop_after_s_
                                              : 0.0;
      progress_->Update(frac, StrCat(finished_, expected_ > 0 ? StrCat("/", expected_) : "",
                                     " done, ", in_flight_, " in flight, ", errors_, " errors"));
    }
  }

  const LoadConfig& config_;
  const std::vector<BenchRequest>& requests_;
  asio::io_context& ioc_;
  asio::ip::tcp::resolver::results_type endpoints_;
  asio::steady_timer slot_timer_;
  const int expected_;
  const double stop_after_s_;
  ProgressReporter* progress_;
  std::deque<RequestRecord> records_;  // deque: records keep their address while appended
  Clock::time_point start_{};
  Clock::time_point last_end_{};
  int in_flight_ = 0;
  int finished_ = 0;
  int errors_ = 0;
  bool dispatching_done_ = false;
};

}  // namespace

absl::StatusOr<RunResult> LoadRunner::Run(const std::vector<BenchRequest>& requests,
                                          const ScheduleFn& next, double stop_after_s, int expected,
                                          ProgressReporter* progress) {
  if (requests.empty()) return absl::InvalidArgumentError("no requests to send");
  asio::io_context ioc(1);
  asio::ip::tcp::resolver resolver(ioc);
  beast::error_code ec;
  auto endpoints = resolver.resolve(config_.server.host, config_.server.port, ec);
  if (ec) {
    return absl::UnavailableError(StrCat("cannot resolve ", config_.server.host, ":",
                                         config_.server.port, ": ", ec.message()));
  }
  RunSession session(config_, requests, ioc, std::move(endpoints), expected, stop_after_s,
                     progress);
  asio::co_spawn(ioc, session.Dispatch(next), asio::detached);
  ioc.run();
  RunResult result = session.TakeResult();
  if (progress) {
    int errors = 0;
    for (const auto& r : result.records) errors += !r.ok();
    progress->Finish(StrCat(result.records.size(), " requests, ", errors, " errors"));
  }
  return result;
}

}  // namespace tandem::bench
