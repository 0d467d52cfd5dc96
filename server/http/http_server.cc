#include "server/http/http_server.h"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "server/http/connection.h"

namespace tandem::server::http {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using internal::Connection;
using internal::ServerShared;
using internal::Strand;

absl::Status HttpServerConfig::Validate() const {
  if (host.empty()) return absl::InvalidArgumentError("http: host is empty");
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("http: port ", port, " is not in [0, 65535]"));
  }
  if (io_threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat("http: io_threads ", io_threads, " < 1"));
  }
  if (max_body_bytes == 0) return absl::InvalidArgumentError("http: max_body_bytes is 0");
  if (max_header_bytes < 256 || max_header_bytes > (1u << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("http: max_header_bytes ", max_header_bytes, " is not in [256, 2^30]"));
  }
  if (idle_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("http: idle_timeout must be positive");
  }
  if (read_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("http: read_timeout must be positive");
  }
  return absl::OkStatus();
}

struct HttpServer::Impl {
  explicit Impl(const HttpServerConfig& config)
      : config(config),
        io(config.io_threads),
        work(asio::make_work_guard(io)),
        accept_strand(asio::make_strand(io)),
        acceptor(accept_strand),
        accept_retry(accept_strand) {}

  void Accept();
  void OnAccept(Strand strand, boost::system::error_code ec, tcp::socket socket);
  void RunIoThread();
  // Runs `fn` on the accept strand and waits for it.
  void RunOnAcceptStrand(std::function<void()> fn);
  // Snapshot of the live connections.
  std::vector<std::shared_ptr<Connection>> Connections() const;

  // Constant after Start().
  const HttpServerConfig config;
  std::shared_ptr<ServerShared> shared;
  int port = 0;

  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  // Accept strand only.
  Strand accept_strand;
  tcp::acceptor acceptor;
  asio::steady_timer accept_retry;
  uint64_t next_id = 0;

  std::vector<std::thread> threads;

  std::mutex lifecycle_mu;  // serialises StopAccepting and Shutdown
  bool accepting = true;    // guarded by lifecycle_mu
  bool shut_down = false;   // guarded by lifecycle_mu
};

void HttpServer::Impl::Accept() {
  Strand strand = asio::make_strand(io);
  acceptor.async_accept(strand, [this, strand](boost::system::error_code ec, tcp::socket socket) {
    OnAccept(strand, ec, std::move(socket));
  });
}

void HttpServer::Impl::OnAccept(Strand strand, boost::system::error_code ec, tcp::socket socket) {
  if (!acceptor.is_open()) return;  // StopAccepting
  if (ec) {
    if (ec == asio::error::operation_aborted) return;
    // Out of file descriptors and the like: retry shortly rather than spin.
    std::fprintf(stderr, "tandem_http: accept failed: %s\n", ec.message().c_str());
    accept_retry.expires_after(std::chrono::milliseconds(50));
    accept_retry.async_wait([this](boost::system::error_code wait_ec) {
      if (!wait_ec && acceptor.is_open()) Accept();
    });
    return;
  }
  boost::system::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  std::string remote;
  const tcp::endpoint peer = socket.remote_endpoint(ignored);
  if (!ignored) remote = peer.address().to_string() + ":" + std::to_string(peer.port());
  const uint64_t id = ++next_id;
  auto connection =
      std::make_shared<Connection>(id, strand, std::move(socket), std::move(remote), shared);
  {
    absl::MutexLock lock(&shared->mu);
    shared->connections.emplace(id, connection);
  }
  asio::post(strand, [connection] { connection->Start(); });
  Accept();
}

void HttpServer::Impl::RunIoThread() {
  for (;;) {
    try {
      io.run();
      return;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "tandem_http: exception in the event loop: %s\n", e.what());
    } catch (...) {
      std::fprintf(stderr, "tandem_http: exception in the event loop\n");
    }
  }
}

void HttpServer::Impl::RunOnAcceptStrand(std::function<void()> fn) {
  std::promise<void> done;
  asio::post(accept_strand, [&] {
    fn();
    done.set_value();
  });
  done.get_future().wait();
}

std::vector<std::shared_ptr<Connection>> HttpServer::Impl::Connections() const {
  std::vector<std::shared_ptr<Connection>> out;
  absl::MutexLock lock(&shared->mu);
  for (const auto& [id, weak] : shared->connections) {
    if (auto connection = weak.lock()) out.push_back(std::move(connection));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerConfig& config,
                                                              Handler handler) {
  const std::string where = absl::StrCat(config.host, ":", config.port);
  if (absl::Status status = config.Validate(); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(status.message(), " (", where, ")"));
  }
  TANDEM_CHECK(handler != nullptr);
  auto impl = std::make_unique<Impl>(config);
  auto shared = std::make_shared<ServerShared>();
  shared->handler = std::move(handler);
  shared->max_body_bytes = config.max_body_bytes;
  shared->max_header_bytes = config.max_header_bytes;
  shared->idle_timeout = absl::ToChronoNanoseconds(config.idle_timeout);
  shared->read_timeout = absl::ToChronoNanoseconds(config.read_timeout);
  impl->shared = std::move(shared);

  boost::system::error_code ec;
  tcp::resolver resolver(impl->io);
  auto endpoints = resolver.resolve(config.host, std::to_string(config.port),
                                    tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || endpoints.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("http: cannot resolve ", where, ": ", ec ? ec.message() : "no address"));
  }
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();
  tcp::acceptor& acceptor = impl->acceptor;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (!ec) impl->port = acceptor.local_endpoint(ec).port();
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("http: cannot listen on ", where, ": ", ec.message()));
  }

  Impl* raw = impl.get();
  asio::post(raw->accept_strand, [raw] { raw->Accept(); });
  for (int i = 0; i < config.io_threads; ++i) {
    raw->threads.emplace_back([raw] { raw->RunIoThread(); });
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Shutdown(); }

int HttpServer::port() const { return impl_->port; }

size_t HttpServer::open_connections() const {
  absl::MutexLock lock(&impl_->shared->mu);
  return impl_->shared->connections.size();
}

void HttpServer::StopAccepting() {
  TANDEM_CHECK(!impl_->io.get_executor().running_in_this_thread());
  std::lock_guard<std::mutex> lock(impl_->lifecycle_mu);
  if (!impl_->accepting) return;
  impl_->accepting = false;
  impl_->shared->draining.store(true, std::memory_order_relaxed);
  Impl* raw = impl_.get();
  raw->RunOnAcceptStrand([raw] {
    boost::system::error_code ignored;
    raw->acceptor.close(ignored);
    raw->accept_retry.cancel();
  });
  for (auto& connection : raw->Connections()) {
    asio::post(connection->strand(), [connection] { connection->CloseIfIdle(); });
  }
}

void HttpServer::Shutdown() {
  TANDEM_CHECK(!impl_->io.get_executor().running_in_this_thread());
  StopAccepting();
  std::lock_guard<std::mutex> lock(impl_->lifecycle_mu);
  if (impl_->shut_down) return;
  impl_->shut_down = true;

  // Close every connection on its strand and wait, so every pending writer is detached (and its
  // OnClose has run) before the loop stops.
  std::vector<std::shared_ptr<Connection>> connections = impl_->Connections();
  std::mutex mu;
  std::condition_variable cv;
  size_t remaining = connections.size();
  for (auto& connection : connections) {
    asio::post(connection->strand(), [connection, &mu, &cv, &remaining] {
      connection->Close();
      std::lock_guard<std::mutex> done_lock(mu);
      if (--remaining == 0) cv.notify_all();
    });
  }
  {
    std::unique_lock<std::mutex> wait_lock(mu);
    cv.wait(wait_lock, [&] { return remaining == 0; });
  }
  connections.clear();
  impl_->work.reset();
  impl_->io.stop();
  for (std::thread& thread : impl_->threads) thread.join();
  impl_->threads.clear();
}

}  // namespace tandem::server::http
