// tandem_http: the asynchronous HTTP/1.1 server under tandemd's OpenAI API (Boost.Beast and
// Asio; no Boost type appears in these headers).
//
// Model: `io_threads` threads run one event loop; each connection is a state machine on its own
// strand, so hundreds of idle or streaming connections cost a socket and a few KiB each, never
// a thread. Per connection the server reads and parses one request at a time, calls the
// Handler on an io thread with the request and a ResponseWriter, and answers pipelined
// requests in order, one after the other.
//
// HTTP behaviour:
//   - Keep-alive by default on HTTP/1.1, on HTTP/1.0 only with `Connection: keep-alive`;
//     `Connection: close` is honoured. `Expect: 100-continue` gets an interim 100.
//   - A body over max_body_bytes gets 413 (as soon as Content-Length shows it, or when the
//     chunked body passes the limit), headers over max_header_bytes 431, anything unparsable
//     400, a request not complete within read_timeout 408; each with an OpenAI-style JSON
//     error body ({"error":{"message","type":"invalid_request_error","param":null,
//     "code":null}}), then the connection closes (after a short linger so the client can read
//     the answer). The Handler never sees these requests.
//   - A connection idle between requests for idle_timeout is closed. While a response is
//     pending there is no timeout: the producer owns the pace (see buffered_bytes()).
//   - While a response is pending the socket stays under an outstanding read, so a client
//     disconnect fires ResponseWriter's OnClose promptly (response_writer.h).
//   - TCP_NODELAY is set, so streamed chunks leave at once.
//
// Lifecycle: Start() binds and listens; StopAccepting() closes the listener and drains:
// responses in progress finish (with `Connection: close`), idle keep-alive connections close.
// Shutdown() (also run by the destructor) closes every connection, firing OnClose for pending
// responses, then stops and joins the io threads; writers used after it are no-ops.
//
// Thread safety: all methods may be called from any thread except the io threads themselves
// (StopAccepting and Shutdown wait for them; calling those from a Handler is checked and
// aborts). The Handler runs on io threads, possibly several at once for different connections
// when io_threads > 1, and must not block.
#ifndef TANDEM_SERVER_HTTP_HTTP_SERVER_H_
#define TANDEM_SERVER_HTTP_HTTP_SERVER_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/http/http_request.h"
#include "server/http/response_writer.h"

namespace tandem::server::http {

struct HttpServerConfig {
  std::string host = "0.0.0.0";  // address or name to bind
  int port = 8000;               // 0 picks a free port (see HttpServer::port())
  int io_threads = 1;
  size_t max_body_bytes = 8 << 20;
  size_t max_header_bytes = 16 << 10;               // request line + header fields
  absl::Duration idle_timeout = absl::Seconds(60);  // keep-alive wait between requests
  absl::Duration read_timeout = absl::Seconds(30);  // first byte to last byte of a request

  // InvalidArgument naming the first bad field.
  absl::Status Validate() const;
};

// Called once per request on an io thread; must not block. It owns `writer` and must
// eventually complete it (directly or from another thread).
using Handler = std::function<void(HttpRequest request, std::shared_ptr<ResponseWriter> writer)>;

class HttpServer {
 public:
  // Validates `config`, binds and listens, starts the io threads. Errors (bad config, address
  // in use, unresolvable host) name host:port.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerConfig& config,
                                                           Handler handler);
  ~HttpServer();  // Shutdown()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The bound port (the chosen one when config.port was 0).
  int port() const;

  // Closes the listener and drains (see above); new connections are refused once it returns.
  // Idempotent.
  void StopAccepting();

  // Closes every connection (OnClose fires for pending responses), stops and joins the io
  // threads. Idempotent.
  void Shutdown();

  // Connections accepted and not yet closed.
  size_t open_connections() const;

 private:
  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem::server::http

#endif  // TANDEM_SERVER_HTTP_HTTP_SERVER_H_
