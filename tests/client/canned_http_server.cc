#include "tests/client/canned_http_server.h"

#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>
#include <cstdlib>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace tandem::client::testing {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

CannedHttpServer::CannedHttpServer(std::vector<CannedResponse> responses)
    : responses_(std::move(responses)),
      acceptor_(ioc_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
  port_ = acceptor_.local_endpoint().port();
  thread_ = std::thread([this] { Run(); });
}

CannedHttpServer::~CannedHttpServer() {
  stopping_ = true;
  // Unblock an accept still waiting for a connection the test never made.
  boost::system::error_code ec;
  tcp::socket poke(ioc_);
  poke.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port_), ec);
  poke.close(ec);
  thread_.join();
}

std::vector<std::string> CannedHttpServer::requests() const {
  absl::MutexLock lock(&mu_);
  return requests_;
}

void CannedHttpServer::Run() {
  for (const CannedResponse& response : responses_) {
    boost::system::error_code ec;
    tcp::socket socket(ioc_);
    acceptor_.accept(socket, ec);
    if (ec || stopping_) return;
    // The head, then Content-Length bytes of body.
    std::string request;
    const size_t head_end = asio::read_until(socket, asio::dynamic_buffer(request), "\r\n\r\n", ec);
    if (ec) continue;
    size_t content_length = 0;
    std::string head = absl::AsciiStrToLower(request.substr(0, head_end));
    if (size_t at = head.find("content-length:"); at != std::string::npos) {
      content_length = std::strtoul(head.c_str() + at + 15, nullptr, 10);
    }
    if (request.size() < head_end + content_length) {
      asio::read(socket, asio::dynamic_buffer(request),
                 asio::transfer_exactly(head_end + content_length - request.size()), ec);
    }
    {
      absl::MutexLock lock(&mu_);
      requests_.push_back(request);
    }
    for (const std::string& piece : response) {
      asio::write(socket, asio::buffer(piece), ec);
      if (ec) break;
    }
    socket.shutdown(tcp::socket::shutdown_both, ec);
    socket.close(ec);
  }
}

std::string HttpResponse(int status, const std::string& content_type, const std::string& body) {
  return absl::StrCat("HTTP/1.1 ", status, " Status\r\nContent-Type: ", content_type,
                      "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
}

std::string SseHead() {
  return "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
         "Connection: close\r\n\r\n";
}

std::string RequestBody(const std::string& request) {
  const size_t at = request.find("\r\n\r\n");
  return at == std::string::npos ? "" : request.substr(at + 4);
}

}  // namespace tandem::client::testing
