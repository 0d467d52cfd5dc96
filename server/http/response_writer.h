// ResponseWriter: the response to one HTTP request, in progress. The server creates one per
// request and hands it to the Handler; the handler (or whatever it passes the writer to, such
// as an engine thread producing tokens) completes it with either
//   Send(status, headers, body)                    one whole response with Content-Length, or
//   StartStream(status, headers), Write(chunk)..., End()
//                                                  a streamed body (chunked transfer encoding
//                                                  on HTTP/1.1; on HTTP/1.0 the body runs to
//                                                  the connection's close), e.g. SSE.
// Until the response has ended the server keeps reading the socket, so a client that closes or
// resets its connection is noticed even while nothing is being written; the writer then
// reports closed() and runs the OnClose callback once, and later calls are no-ops. The same
// happens when a write fails and at HttpServer::Shutdown(). A client that half-closes its
// sending side (EOF) while its response is pending counts as gone, as in most HTTP servers.
//
// The server owns the framing headers: Content-Length, Transfer-Encoding and Connection given
// by the caller are dropped. CR and LF in header names or values are replaced by spaces.
// For HEAD requests the body is not sent (Content-Length still tells its size).
//
// If every reference to a writer is dropped before the response ended, the server answers 500
// (nothing sent yet) or cuts the connection (mid-stream), so a client never hangs on a lost
// writer.
//
// Thread safety: every method may be called from any thread; calls take effect in the order
// they are made (each is posted to the connection's strand, none blocks on the network).
// Calling Send/StartStream twice, Write/End without StartStream, or anything after End is a
// programming error (checked, aborts).
#ifndef TANDEM_SERVER_HTTP_RESPONSE_WRITER_H_
#define TANDEM_SERVER_HTTP_RESPONSE_WRITER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace tandem::server::http {

namespace internal {
class Connection;
}  // namespace internal

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

class ResponseWriter {
 public:
  ~ResponseWriter();
  ResponseWriter(const ResponseWriter&) = delete;
  ResponseWriter& operator=(const ResponseWriter&) = delete;

  // The whole response. `status` in [200, 999].
  void Send(int status, HttpHeaders headers, std::string body);
  // Starts a streamed response; follow with Write()s and one End().
  void StartStream(int status, HttpHeaders headers);
  // Queues one chunk (flushed as soon as the socket takes it; TCP_NODELAY is set). Empty data
  // is ignored.
  void Write(std::string data);
  // Ends the stream; the connection goes back to reading the next request (keep-alive).
  void End();

  // Runs `fn` once when the client is gone (disconnect, write error, server shutdown) before the
  // response ended. If that already happened, runs `fn` now on the calling thread; if the
  // response already ended normally, `fn` is dropped. Otherwise `fn` runs on an io thread, so
  // it must not block (set a flag, post a cancellation). Replaces an earlier callback.
  void OnClose(std::function<void()> fn);

  // True once the client is gone (OnClose has fired or is firing).
  bool closed() const { return closed_.load(std::memory_order_acquire); }

  // Body bytes passed to Send/Write that the socket has not yet taken. A producer streaming to
  // a slow client should pause while this is large.
  size_t buffered_bytes() const { return buffered_->load(std::memory_order_relaxed); }

 private:
  friend class internal::Connection;
  enum State : int { kNew, kStreaming, kDone };

  ResponseWriter(std::shared_ptr<internal::Connection> connection, uint64_t seq);

  // Strand side, called by the Connection.
  void NotifyClosed();  // fires the OnClose callback
  void Detach();        // the response ended normally

  // Moves caller-side state `from` -> `to`, aborting with `what` on misuse.
  void Transition(State from, State to, const char* what);

  // Constant after construction.
  const uint64_t seq_;  // which response of the connection this is
  const std::shared_ptr<std::atomic<size_t>> buffered_;

  std::atomic<int> state_{kNew};  // caller-side sequencing
  std::atomic<bool> closed_{false};

  // Held while posting to the connection, so nothing is posted after Detach/NotifyClosed.
  absl::Mutex mu_;
  std::shared_ptr<internal::Connection> connection_ ABSL_GUARDED_BY(mu_);  // null once finished
  std::function<void()> on_close_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem::server::http

#endif  // TANDEM_SERVER_HTTP_RESPONSE_WRITER_H_
