// internal::Connection: one accepted TCP connection of an HttpServer, a state machine that runs
// only on its strand. Not part of the public API (include http_server.h instead).
//
// Phases:
//   kReading     parsing the next request (idle_timeout until its first byte, then
//                read_timeout); pipelined bytes already buffered are parsed first.
//   kResponding  the Handler owns the response; the socket stays under a read (bytes that
//                arrive are kept for the next request, up to kMaxPipelinedBytes, then reading
//                pauses) so that EOF or a reset is seen at once and fires OnClose.
//   kLingering   the last response is queued and the connection will close: once the writes
//                drain, shut down the sending side, discard input until EOF or a short linger
//                timeout, then close (closing with unread input would send a RST that can
//                destroy the answer before the client reads it).
//   kClosed      socket closed; every later event is ignored.
//
// Thread safety: the Post*() methods and strand() may be called from any thread; everything
// else runs on the strand only.
#ifndef TANDEM_SERVER_HTTP_CONNECTION_H_
#define TANDEM_SERVER_HTTP_CONNECTION_H_

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/http/http_server.h"

namespace tandem::server::http::internal {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;
using Strand = asio::strand<asio::io_context::executor_type>;
using ByteCounter = std::shared_ptr<std::atomic<size_t>>;

class Connection;

// State shared by the server and its connections; connections hold it by shared_ptr so it
// outlives whichever goes last.
struct ServerShared {
  // Constant after construction.
  Handler handler;
  size_t max_body_bytes = 0;
  size_t max_header_bytes = 0;
  std::chrono::nanoseconds idle_timeout{0};
  std::chrono::nanoseconds read_timeout{0};

  // Set by StopAccepting: responses close their connection afterwards.
  std::atomic<bool> draining{false};

  mutable absl::Mutex mu;
  std::unordered_map<uint64_t, std::weak_ptr<Connection>> connections ABSL_GUARDED_BY(mu);

  void Forget(uint64_t id) {
    absl::MutexLock lock(&mu);
    connections.erase(id);
  }
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  // `socket` must use `strand` as its executor.
  Connection(uint64_t id, Strand strand, tcp::socket socket, std::string remote,
             std::shared_ptr<ServerShared> shared);

  const Strand& strand() const { return strand_; }

  // Strand only: begins reading requests.
  void Start();
  // Strand only: closes now; fires OnClose if a response is pending.
  void Close();
  // Strand only: closes if no request is in progress (drain); else lets it finish.
  void CloseIfIdle();

  // Any thread: the ResponseWriter's calls, posted to the strand. `seq` names the response;
  // calls for a response that is no longer current (ended, or connection closed) are dropped.
  void PostSend(uint64_t seq, int status, HttpHeaders headers, std::string body,
                ByteCounter counter);
  void PostStartStream(uint64_t seq, int status, HttpHeaders headers);
  void PostWrite(uint64_t seq, std::string data, ByteCounter counter);
  void PostEnd(uint64_t seq);
  void PostAbandon(uint64_t seq);  // the writer was destroyed before the response ended

 private:
  enum class Phase { kReading, kResponding, kLingering, kClosed };

  // Bytes queued for the socket; `counter` (may be null) is decreased by `accounted` once the
  // socket took them.
  struct OutChunk {
    std::string bytes;
    size_t accounted = 0;
    ByteCounter counter;
  };

  static constexpr size_t kReadChunk = 4096;
  static constexpr size_t kMaxPipelinedBytes = 64 << 10;
  static constexpr std::chrono::milliseconds kLinger{1000};

  // Reading and parsing.
  void StartRead();
  void OnRead(boost::system::error_code ec, size_t n);
  void ParseInput();
  void MaybeSendContinue();
  void Dispatch();
  void FailRequest(int status, std::string_view message);
  bool RequestInProgress() const;

  // Responding.
  bool IsCurrent(uint64_t seq) const { return phase_ == Phase::kResponding && seq == seq_; }
  void DoSend(uint64_t seq, int status, HttpHeaders headers, std::string body, ByteCounter counter);
  void DoStartStream(uint64_t seq, int status, HttpHeaders headers);
  void DoWrite(uint64_t seq, std::string data, ByteCounter counter);
  void DoEnd(uint64_t seq);
  void DoAbandon(uint64_t seq);
  // The response head; `body_length` nullopt means a streamed body.
  std::string Head(int status, const HttpHeaders& headers, std::optional<size_t> body_length);
  // The current response is fully queued: detach its writer, then keep-alive or linger.
  void FinishResponse();
  void BeginLinger();

  // Writing.
  void Queue(OutChunk chunk);
  void StartWrite();
  void OnWrite(boost::system::error_code ec);

  // Timer.
  void ArmTimer(std::chrono::nanoseconds after);
  void DisarmTimer();
  void OnTimeout();

  // Constant after construction.
  const uint64_t id_;
  const Strand strand_;
  const std::string remote_;
  const std::shared_ptr<ServerShared> shared_;

  // Strand only.
  tcp::socket socket_;
  asio::steady_timer timer_;
  uint64_t timer_generation_ = 0;
  beast::flat_buffer in_;
  std::optional<beast::http::request_parser<beast::http::string_body>> parser_;
  Phase phase_ = Phase::kReading;
  bool reading_ = false;   // a read is outstanding
  bool peer_eof_ = false;  // the client closed its sending side (lingering only)
  bool sent_continue_ = false;
  size_t lingered_bytes_ = 0;
  // The current request / response.
  uint64_t seq_ = 0;
  std::weak_ptr<ResponseWriter> writer_;
  int version_ = 11;
  bool head_request_ = false;
  bool keep_alive_ = true;
  bool streaming_ = false;
  bool chunked_ = false;
  // Output.
  std::deque<OutChunk> out_;
  std::vector<OutChunk> in_flight_;
  bool writing_ = false;
  bool close_after_write_ = false;
};

}  // namespace tandem::server::http::internal

#endif  // TANDEM_SERVER_HTTP_CONNECTION_H_
