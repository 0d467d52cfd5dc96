#include "server/http/connection.h"

#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/status.hpp>
#include <cstdio>
#include <exception>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "common/check.h"

namespace tandem::server::http::internal {
namespace {

namespace bhttp = beast::http;

bool IsFramingHeader(const std::string& name) {
  return absl::EqualsIgnoreCase(name, "content-length") ||
         absl::EqualsIgnoreCase(name, "transfer-encoding") ||
         absl::EqualsIgnoreCase(name, "connection");
}

// Header names and values must not break the message framing.
void AppendSanitized(const std::string& text, std::string* out) {
  for (char c : text) out->push_back(c == '\r' || c == '\n' ? ' ' : c);
}

std::string ErrorJson(std::string_view message) {
  // `message` is server-chosen text without quotes or backslashes.
  return std::string(R"({"error":{"message":")") + std::string(message) +
         R"(","type":"invalid_request_error","param":null,"code":null}})";
}

bool StatusHasBody(int status) { return status != 204 && status != 304; }

std::string ChunkPrefix(size_t size) {
  char buf[32];
  const int n = std::snprintf(buf, sizeof(buf), "%zx\r\n", size);
  return std::string(buf, n);
}

}  // namespace

Connection::Connection(uint64_t id, Strand strand, tcp::socket socket, std::string remote,
                       std::shared_ptr<ServerShared> shared)
    : id_(id),
      strand_(std::move(strand)),
      remote_(std::move(remote)),
      shared_(std::move(shared)),
      socket_(std::move(socket)),
      timer_(strand_) {}

void Connection::Start() {
  ArmTimer(shared_->idle_timeout);
  StartRead();
}

// ---- reading ----

bool Connection::RequestInProgress() const {
  return in_.size() > 0 || (parser_.has_value() && parser_->got_some());
}

void Connection::StartRead() {
  if (reading_ || phase_ == Phase::kClosed || peer_eof_) return;
  // Pipelined input beyond the cap waits; disconnects are then seen through write errors.
  if (phase_ == Phase::kResponding && in_.size() >= kMaxPipelinedBytes) return;
  reading_ = true;
  socket_.async_read_some(
      in_.prepare(kReadChunk),
      [self = shared_from_this()](boost::system::error_code ec, size_t n) { self->OnRead(ec, n); });
}

void Connection::OnRead(boost::system::error_code ec, size_t n) {
  reading_ = false;
  if (phase_ == Phase::kClosed) return;
  if (ec) {
    // EOF, reset or any other read error: the client is gone. A lingering connection with
    // output still queued lets it drain first (the client may have half-closed).
    if (phase_ == Phase::kLingering && ec == asio::error::eof && (writing_ || !out_.empty())) {
      peer_eof_ = true;
      return;
    }
    Close();
    return;
  }
  const bool was_idle = phase_ == Phase::kReading && !RequestInProgress();
  in_.commit(n);
  switch (phase_) {
    case Phase::kReading:
      if (was_idle) ArmTimer(shared_->read_timeout);
      ParseInput();
      break;
    case Phase::kResponding:
      break;  // kept for the next request
    case Phase::kLingering:
      lingered_bytes_ += n;
      in_.consume(in_.size());
      if (lingered_bytes_ > shared_->max_body_bytes + kMaxPipelinedBytes) {
        Close();
        return;
      }
      break;
    case Phase::kClosed:
      return;
  }
  StartRead();
}

void Connection::ParseInput() {
  while (phase_ == Phase::kReading && in_.size() > 0) {
    if (!parser_.has_value()) {
      parser_.emplace();
      parser_->header_limit(static_cast<std::uint32_t>(shared_->max_header_bytes));
      parser_->body_limit(shared_->max_body_bytes);
      parser_->eager(true);
      sent_continue_ = false;
    }
    boost::system::error_code ec;
    const size_t used = parser_->put(in_.data(), ec);
    in_.consume(used);
    if (ec == bhttp::error::need_more) {
      MaybeSendContinue();
      return;
    }
    if (ec == bhttp::error::body_limit) {
      FailRequest(413, "Request body is larger than the server's limit of " +
                           std::to_string(shared_->max_body_bytes) + " bytes.");
      return;
    }
    if (ec == bhttp::error::header_limit) {
      FailRequest(431, "Request header fields are larger than the server's limit of " +
                           std::to_string(shared_->max_header_bytes) + " bytes.");
      return;
    }
    if (ec) {
      FailRequest(400, "Malformed HTTP request: " + ec.message() + ".");
      return;
    }
    if (parser_->is_done()) {
      Dispatch();
    } else {
      MaybeSendContinue();
      if (used == 0) return;
    }
  }
}

void Connection::MaybeSendContinue() {
  if (sent_continue_ || !parser_.has_value() || !parser_->is_header_done() || parser_->is_done()) {
    return;
  }
  const auto& request = parser_->get();
  auto expect = request.find(bhttp::field::expect);
  if (request.version() < 11 || expect == request.end() ||
      !absl::EqualsIgnoreCase(absl::string_view(expect->value().data(), expect->value().size()),
                              "100-continue")) {
    return;
  }
  sent_continue_ = true;
  Queue({"HTTP/1.1 100 Continue\r\n\r\n", 0, nullptr});
}

void Connection::Dispatch() {
  bhttp::request<bhttp::string_body> message = parser_->release();
  parser_.reset();

  HttpRequest request;
  request.method = std::string(message.method_string());
  request.target = std::string(message.target());
  const size_t q = request.target.find('?');
  request.path = request.target.substr(0, q);
  if (q != std::string::npos) request.query = request.target.substr(q + 1);
  request.version = message.version();
  for (const auto& field : message) {
    request.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
  }
  request.body = std::move(message.body());
  request.remote = remote_;

  version_ = message.version();
  head_request_ = message.method() == bhttp::verb::head;
  keep_alive_ = message.keep_alive();
  streaming_ = false;
  chunked_ = false;
  phase_ = Phase::kResponding;
  DisarmTimer();

  ++seq_;
  std::shared_ptr<ResponseWriter> writer(new ResponseWriter(shared_from_this(), seq_));
  writer_ = writer;
  try {
    shared_->handler(std::move(request), std::move(writer));
  } catch (const std::exception& e) {
    // No exception may cross into the event loop; a lost writer answers 500 (PostAbandon).
    std::fprintf(stderr, "tandem_http: handler threw: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "tandem_http: handler threw\n");
  }
  // Keep watching the socket for a disconnect while the response is pending.
  StartRead();
}

void Connection::FailRequest(int status, std::string_view message) {
  parser_.reset();
  in_.consume(in_.size());
  version_ = 11;
  head_request_ = false;
  keep_alive_ = false;
  phase_ = Phase::kLingering;
  close_after_write_ = true;
  ArmTimer(shared_->idle_timeout);  // bounds the time a client that never reads can hold us
  std::string body = ErrorJson(message);
  std::string head = Head(status, {{"Content-Type", "application/json"}}, body.size());
  Queue({std::move(head), 0, nullptr});
  Queue({std::move(body), 0, nullptr});
}

// ---- responding ----

void Connection::PostSend(uint64_t seq, int status, HttpHeaders headers, std::string body,
                          ByteCounter counter) {
  asio::post(strand_, [self = shared_from_this(), seq, status, headers = std::move(headers),
                       body = std::move(body), counter = std::move(counter)]() mutable {
    self->DoSend(seq, status, std::move(headers), std::move(body), std::move(counter));
  });
}

void Connection::PostStartStream(uint64_t seq, int status, HttpHeaders headers) {
  asio::post(strand_,
             [self = shared_from_this(), seq, status, headers = std::move(headers)]() mutable {
               self->DoStartStream(seq, status, std::move(headers));
             });
}

void Connection::PostWrite(uint64_t seq, std::string data, ByteCounter counter) {
  asio::post(strand_, [self = shared_from_this(), seq, data = std::move(data),
                       counter = std::move(counter)]() mutable {
    self->DoWrite(seq, std::move(data), std::move(counter));
  });
}

void Connection::PostEnd(uint64_t seq) {
  asio::post(strand_, [self = shared_from_this(), seq] { self->DoEnd(seq); });
}

void Connection::PostAbandon(uint64_t seq) {
  asio::post(strand_, [self = shared_from_this(), seq] { self->DoAbandon(seq); });
}

std::string Connection::Head(int status, const HttpHeaders& headers,
                             std::optional<size_t> body_length) {
  if (shared_->draining.load(std::memory_order_relaxed)) keep_alive_ = false;
  if (!body_length.has_value() && version_ < 11) keep_alive_ = false;  // body ends at close
  std::string head = version_ < 11 ? "HTTP/1.0 " : "HTTP/1.1 ";
  head += std::to_string(status);
  head += ' ';
  const auto reason = bhttp::obsolete_reason(bhttp::int_to_status(static_cast<unsigned>(status)));
  head += bhttp::int_to_status(static_cast<unsigned>(status)) == bhttp::status::unknown
              ? std::string("Status")
              : std::string(reason);
  head += "\r\n";
  for (const auto& [name, value] : headers) {
    if (IsFramingHeader(name)) continue;
    AppendSanitized(name, &head);
    head += ": ";
    AppendSanitized(value, &head);
    head += "\r\n";
  }
  if (StatusHasBody(status)) {
    if (body_length.has_value()) {
      head += "Content-Length: " + std::to_string(*body_length) + "\r\n";
    } else if (version_ >= 11) {
      head += "Transfer-Encoding: chunked\r\n";
    }
  }
  if (!keep_alive_) {
    head += "Connection: close\r\n";
  } else if (version_ < 11) {
    head += "Connection: keep-alive\r\n";
  }
  head += "\r\n";
  return head;
}

void Connection::DoSend(uint64_t seq, int status, HttpHeaders headers, std::string body,
                        ByteCounter counter) {
  const size_t size = body.size();
  if (!IsCurrent(seq) || streaming_) {
    counter->fetch_sub(size, std::memory_order_relaxed);
    return;
  }
  Queue({Head(status, headers, size), 0, nullptr});
  if (head_request_ || !StatusHasBody(status)) {
    counter->fetch_sub(size, std::memory_order_relaxed);
  } else {
    Queue({std::move(body), size, std::move(counter)});
  }
  FinishResponse();
}

void Connection::DoStartStream(uint64_t seq, int status, HttpHeaders headers) {
  if (!IsCurrent(seq) || streaming_) return;
  streaming_ = true;
  std::string head = Head(status, headers, std::nullopt);
  chunked_ = version_ >= 11 && StatusHasBody(status);
  if (head_request_ || !StatusHasBody(status)) {
    // No body may follow: the response is complete with its head.
    Queue({std::move(head), 0, nullptr});
    chunked_ = false;
    head_request_ = true;  // makes DoWrite drop the chunks
    return;
  }
  Queue({std::move(head), 0, nullptr});
}

void Connection::DoWrite(uint64_t seq, std::string data, ByteCounter counter) {
  const size_t size = data.size();
  if (!IsCurrent(seq) || !streaming_ || head_request_ || size == 0) {
    counter->fetch_sub(size, std::memory_order_relaxed);
    return;
  }
  if (chunked_) {
    std::string framed = ChunkPrefix(size);
    framed.reserve(framed.size() + size + 2);
    framed += data;
    framed += "\r\n";
    Queue({std::move(framed), size, std::move(counter)});
  } else {
    Queue({std::move(data), size, std::move(counter)});
  }
}

void Connection::DoEnd(uint64_t seq) {
  if (!IsCurrent(seq) || !streaming_) return;
  if (chunked_) Queue({"0\r\n\r\n", 0, nullptr});
  FinishResponse();
}

void Connection::DoAbandon(uint64_t seq) {
  if (!IsCurrent(seq)) return;
  if (!streaming_) {
    std::fprintf(stderr, "tandem_http: a handler dropped its response; answering 500\n");
    const std::string body = ErrorJson("The server dropped this request.");
    Queue({Head(500, {{"Content-Type", "application/json"}}, body.size()), 0, nullptr});
    Queue({body, 0, nullptr});
    FinishResponse();
    return;
  }
  // Mid-stream: only an incomplete body can tell the client, so close without the last chunk.
  keep_alive_ = false;
  chunked_ = false;
  FinishResponse();
}

void Connection::FinishResponse() {
  if (auto writer = writer_.lock()) writer->Detach();
  writer_.reset();
  streaming_ = false;
  chunked_ = false;
  if (!keep_alive_) {
    phase_ = Phase::kLingering;
    close_after_write_ = true;
    in_.consume(in_.size());
    ArmTimer(shared_->idle_timeout);
    if (!writing_ && out_.empty()) BeginLinger();
    return;
  }
  phase_ = Phase::kReading;
  ArmTimer(RequestInProgress() ? shared_->read_timeout : shared_->idle_timeout);
  ParseInput();  // pipelined requests already buffered
  StartRead();
}

void Connection::BeginLinger() {
  if (peer_eof_) {
    Close();
    return;
  }
  boost::system::error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_send, ignored);
  ArmTimer(kLinger);
  StartRead();
}

// ---- writing ----

void Connection::Queue(OutChunk chunk) {
  if (phase_ == Phase::kClosed) {
    if (chunk.counter) chunk.counter->fetch_sub(chunk.accounted, std::memory_order_relaxed);
    return;
  }
  out_.push_back(std::move(chunk));
  StartWrite();
}

void Connection::StartWrite() {
  if (writing_ || out_.empty() || phase_ == Phase::kClosed) return;
  writing_ = true;
  std::vector<asio::const_buffer> buffers;
  buffers.reserve(out_.size());
  while (!out_.empty()) {
    in_flight_.push_back(std::move(out_.front()));
    out_.pop_front();
  }
  for (const OutChunk& chunk : in_flight_) buffers.push_back(asio::buffer(chunk.bytes));
  asio::async_write(
      socket_, buffers,
      [self = shared_from_this()](boost::system::error_code ec, size_t) { self->OnWrite(ec); });
}

void Connection::OnWrite(boost::system::error_code ec) {
  writing_ = false;
  for (OutChunk& chunk : in_flight_) {
    if (chunk.counter) chunk.counter->fetch_sub(chunk.accounted, std::memory_order_relaxed);
  }
  in_flight_.clear();
  if (phase_ == Phase::kClosed) return;
  if (ec) {
    Close();
    return;
  }
  if (!out_.empty()) {
    StartWrite();
  } else if (close_after_write_) {
    BeginLinger();
  }
}

// ---- timer and closing ----

void Connection::ArmTimer(std::chrono::nanoseconds after) {
  const uint64_t generation = ++timer_generation_;
  timer_.expires_after(after);
  timer_.async_wait([self = shared_from_this(), generation](boost::system::error_code ec) {
    if (ec || generation != self->timer_generation_ || self->phase_ == Phase::kClosed) return;
    self->OnTimeout();
  });
}

void Connection::DisarmTimer() {
  ++timer_generation_;
  timer_.cancel();
}

void Connection::OnTimeout() {
  if (phase_ == Phase::kReading && RequestInProgress()) {
    FailRequest(408, "The request was not received in time.");
    return;
  }
  if (phase_ == Phase::kResponding) return;  // not armed while responding
  Close();
}

void Connection::CloseIfIdle() {
  if (phase_ == Phase::kReading && !RequestInProgress()) Close();
}

void Connection::Close() {
  if (phase_ == Phase::kClosed) return;
  const bool responding = phase_ == Phase::kResponding;
  phase_ = Phase::kClosed;
  ++timer_generation_;
  timer_.cancel();
  boost::system::error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
  for (OutChunk& chunk : out_) {
    if (chunk.counter) chunk.counter->fetch_sub(chunk.accounted, std::memory_order_relaxed);
  }
  out_.clear();
  parser_.reset();
  std::shared_ptr<ResponseWriter> writer = writer_.lock();
  writer_.reset();
  shared_->Forget(id_);
  if (writer != nullptr) {
    if (responding) {
      writer->NotifyClosed();
    } else {
      writer->Detach();
    }
  }
}

}  // namespace tandem::server::http::internal
