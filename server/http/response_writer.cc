#include "server/http/response_writer.h"

#include "common/check.h"
#include "server/http/connection.h"

namespace tandem::server::http {

ResponseWriter::ResponseWriter(std::shared_ptr<internal::Connection> connection, uint64_t seq)
    : seq_(seq),
      buffered_(std::make_shared<std::atomic<size_t>>(0)),
      connection_(std::move(connection)) {}

ResponseWriter::~ResponseWriter() {
  absl::MutexLock lock(&mu_);
  if (connection_ != nullptr && state_.load(std::memory_order_acquire) != kDone) {
    connection_->PostAbandon(seq_);
  }
}

void ResponseWriter::Transition(State from, State to, const char* what) {
  int expected = from;
  if (!state_.compare_exchange_strong(expected, to, std::memory_order_acq_rel)) {
    ::tandem::internal::CheckFailed(__FILE__, __LINE__, what, "(ResponseWriter used out of order)");
  }
}

void ResponseWriter::Send(int status, HttpHeaders headers, std::string body) {
  TANDEM_CHECK(status >= 200 && status <= 999);
  Transition(kNew, kDone, "Send() on a response already started");
  const size_t size = body.size();
  buffered_->fetch_add(size, std::memory_order_relaxed);
  absl::MutexLock lock(&mu_);
  if (connection_ == nullptr) {
    buffered_->fetch_sub(size, std::memory_order_relaxed);
    return;
  }
  connection_->PostSend(seq_, status, std::move(headers), std::move(body), buffered_);
}

void ResponseWriter::StartStream(int status, HttpHeaders headers) {
  TANDEM_CHECK(status >= 200 && status <= 999);
  Transition(kNew, kStreaming, "StartStream() on a response already started");
  absl::MutexLock lock(&mu_);
  if (connection_ != nullptr) connection_->PostStartStream(seq_, status, std::move(headers));
}

void ResponseWriter::Write(std::string data) {
  if (state_.load(std::memory_order_acquire) != kStreaming) {
    ::tandem::internal::CheckFailed(__FILE__, __LINE__, "Write() outside a stream",
                                    "(call StartStream() first, never after End())");
  }
  if (data.empty()) return;
  const size_t size = data.size();
  buffered_->fetch_add(size, std::memory_order_relaxed);
  absl::MutexLock lock(&mu_);
  if (connection_ == nullptr) {
    buffered_->fetch_sub(size, std::memory_order_relaxed);
    return;
  }
  connection_->PostWrite(seq_, std::move(data), buffered_);
}

void ResponseWriter::End() {
  Transition(kStreaming, kDone, "End() without StartStream(), or twice");
  absl::MutexLock lock(&mu_);
  if (connection_ != nullptr) connection_->PostEnd(seq_);
}

void ResponseWriter::OnClose(std::function<void()> fn) {
  {
    absl::MutexLock lock(&mu_);
    if (!closed_.load(std::memory_order_acquire)) {
      if (connection_ != nullptr) on_close_ = std::move(fn);
      return;  // stored, or dropped because the response already ended
    }
  }
  fn();
}

void ResponseWriter::NotifyClosed() {
  std::function<void()> fn;
  std::shared_ptr<internal::Connection> connection;  // released outside the lock
  {
    absl::MutexLock lock(&mu_);
    closed_.store(true, std::memory_order_release);
    connection = std::move(connection_);
    connection_ = nullptr;
    fn = std::move(on_close_);
    on_close_ = nullptr;
  }
  if (fn) fn();
}

void ResponseWriter::Detach() {
  std::shared_ptr<internal::Connection> connection;
  std::function<void()> fn;  // destroyed outside the lock: its captures may call back in
  {
    absl::MutexLock lock(&mu_);
    connection = std::move(connection_);
    connection_ = nullptr;
    fn = std::move(on_close_);
    on_close_ = nullptr;
  }
}

}  // namespace tandem::server::http
