// CannedHttpServer: a tiny blocking HTTP server for client tests. It answers the i-th
// connection with the i-th canned response (raw bytes, written in the given pieces, then the
// connection is closed) and records every request it read.
//
// Thread safety: requests() may be called from any thread; the server runs on its own thread.
#ifndef TANDEM_TESTS_CLIENT_CANNED_HTTP_SERVER_H_
#define TANDEM_TESTS_CLIENT_CANNED_HTTP_SERVER_H_

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace tandem::client::testing {

// A raw HTTP response, split into pieces written one after another.
using CannedResponse = std::vector<std::string>;

class CannedHttpServer {
 public:
  explicit CannedHttpServer(std::vector<CannedResponse> responses);
  ~CannedHttpServer();

  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  // Each request read so far: head and body as received.
  std::vector<std::string> requests() const;

 private:
  void Run();

  const std::vector<CannedResponse> responses_;
  boost::asio::io_context ioc_;
  boost::asio::ip::tcp::acceptor acceptor_;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  mutable absl::Mutex mu_;
  std::vector<std::string> requests_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

// "HTTP/1.1 <status>" with the given content type and body, Content-Length framed.
std::string HttpResponse(int status, const std::string& content_type, const std::string& body);
// The head of a 200 text/event-stream response whose body ends when the connection closes.
std::string SseHead();
// The body of a request recorded by the server (after the blank line).
std::string RequestBody(const std::string& request);

}  // namespace tandem::client::testing

#endif  // TANDEM_TESTS_CLIENT_CANNED_HTTP_SERVER_H_
