#include "kvcache/transfer/kv_tcp.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include "common/str_cat.h"

namespace tandem::kvcache {
namespace {

// A write that makes no progress for this long, or data the peer does not acknowledge for this
// long, ends the connection.
constexpr absl::Duration kStallTimeout = absl::Seconds(10);

int PollMs(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return 0;
  if (d > absl::Seconds(3600)) return 3600 * 1000;
  return static_cast<int>(absl::ToInt64Milliseconds(d + absl::Microseconds(999)));
}

std::string Errno(const char* what) { return StrCat(what, ": ", std::strerror(errno)); }

std::string SockName(const sockaddr_storage& a) {
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&a), sizeof(a), host, sizeof(host), port,
                  sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "?";
  }
  if (a.ss_family == AF_INET6) return StrCat("[", host, "]:", port);
  return StrCat(host, ":", port);
}

// "host:port" or "[v6]:port".
absl::Status SplitAddress(const std::string& address, std::string* host, std::string* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size() || colon == 0) {
    return absl::InvalidArgumentError(StrCat("KV peer address '", address, "' is not host:port"));
  }
  *host = address.substr(0, colon);
  *port = address.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  return absl::OkStatus();
}

class TcpConnection : public KvConnection {
 public:
  TcpConnection(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {
    const int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    // A peer that vanishes (power off, partition) is noticed: unacknowledged data fails the
    // connection after kStallTimeout, and an idle one is probed.
    const unsigned user_timeout_ms =
        static_cast<unsigned>(absl::ToInt64Milliseconds(kStallTimeout));
    setsockopt(fd_, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof(user_timeout_ms));
    setsockopt(fd_, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    const int idle = 5, interval = 2, count = 3;
    setsockopt(fd_, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd_, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
    setsockopt(fd_, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
  }
  ~TcpConnection() override { close(fd_); }

  absl::Status Write(std::string_view bytes) override {
    absl::Time last_progress = absl::Now();
    while (!bytes.empty()) {
      if (shut_.load()) return Closed();
      const ssize_t n = send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        bytes.remove_prefix(static_cast<size_t>(n));
        last_progress = absl::Now();
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        return absl::UnavailableError(Errno(StrCat("KV connection to ", peer_, ": send").c_str()));
      }
      // The peer reads slowly, or not at all: wait for room, but not forever.
      const absl::Duration left = last_progress + kStallTimeout - absl::Now();
      if (left <= absl::ZeroDuration()) {
        return absl::UnavailableError(StrCat("KV connection to ", peer_,
                                             ": no progress writing for ",
                                             absl::FormatDuration(kStallTimeout)));
      }
      pollfd p{fd_, POLLOUT, 0};
      if (poll(&p, 1, PollMs(std::min(left, absl::Milliseconds(200)))) < 0 && errno != EINTR) {
        return absl::UnavailableError(Errno("KV connection: poll"));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<size_t> Read(char* buf, size_t n, absl::Duration timeout) override {
    if (shut_.load()) return Closed();
    pollfd p{fd_, POLLIN, 0};
    int r;
    do {
      r = poll(&p, 1, PollMs(timeout));
    } while (r < 0 && errno == EINTR);
    if (r < 0) return absl::UnavailableError(Errno("KV connection: poll"));
    if (shut_.load()) return Closed();
    if (r == 0) return size_t{0};
    ssize_t got;
    do {
      got = recv(fd_, buf, n, 0);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
      return absl::UnavailableError(Errno(StrCat("KV connection to ", peer_, ": recv").c_str()));
    }
    if (got == 0) {
      return absl::UnavailableError(StrCat("KV connection to ", peer_, " closed by the peer"));
    }
    return static_cast<size_t>(got);
  }

  void Shutdown() override {
    shut_.store(true);
    shutdown(fd_, SHUT_RDWR);  // wakes a poll or send blocked on it
  }

  std::string peer() const override { return peer_; }

 private:
  absl::Status Closed() const {
    return absl::UnavailableError(StrCat("KV connection to ", peer_, " was shut down"));
  }

  const int fd_;  // closed by the destructor only, so no other thread sees it reused
  const std::string peer_;
  std::atomic<bool> shut_{false};
};

class TcpListener : public KvListener {
 public:
  TcpListener(int fd, std::string address) : fd_(fd), address_(std::move(address)) {}
  ~TcpListener() override { close(fd_); }

  absl::StatusOr<std::unique_ptr<KvConnection>> Accept(absl::Duration timeout) override {
    // Polled in slices, so that Shutdown (which cannot wake a poll on a listening socket
    // portably) is seen within one slice.
    const absl::Time until = absl::Now() + timeout;
    while (true) {
      if (shut_.load()) return absl::UnavailableError("KV listener was shut down");
      const absl::Duration left = until - absl::Now();
      pollfd p{fd_, POLLIN, 0};
      const int r = poll(&p, 1, PollMs(std::min(left, absl::Milliseconds(50))));
      if (r < 0 && errno != EINTR) return absl::UnavailableError(Errno("KV listener: poll"));
      if (r > 0) {
        sockaddr_storage peer{};
        socklen_t len = sizeof(peer);
        const int c = accept4(fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
        if (c >= 0) return std::unique_ptr<KvConnection>(new TcpConnection(c, SockName(peer)));
        if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
          return absl::UnavailableError(Errno("KV listener: accept"));
        }
      }
      if (left <= absl::ZeroDuration()) return std::unique_ptr<KvConnection>();
    }
  }

  void Shutdown() override { shut_.store(true); }
  std::string address() const override { return address_; }

 private:
  const int fd_;
  const std::string address_;
  std::atomic<bool> shut_{false};
};

}  // namespace

absl::StatusOr<std::unique_ptr<KvListener>> ListenTcp(const std::string& host, int port) {
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(StrCat("KV listen port ", port, " is outside 0-65535"));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port_s = StrCat(port);
  if (int e = getaddrinfo(host.c_str(), port_s.c_str(), &hints, &res); e != 0) {
    return absl::InvalidArgumentError(StrCat("KV listen address '", host, "': ", gai_strerror(e)));
  }
  std::string last = "no address";
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last = Errno("socket");
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 64) != 0) {
      last = Errno("bind/listen");
      close(fd);
      continue;
    }
    freeaddrinfo(res);
    sockaddr_storage bound{};
    socklen_t len = sizeof(bound);
    getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
    return std::unique_ptr<KvListener>(new TcpListener(fd, SockName(bound)));
  }
  freeaddrinfo(res);
  return absl::UnavailableError(StrCat("cannot listen for KV on ", host, ":", port, ": ", last));
}

absl::StatusOr<std::unique_ptr<KvConnection>> ConnectTcp(const std::string& address,
                                                         absl::Duration timeout,
                                                         const std::string& secret) {
  std::string host, port;
  if (absl::Status s = SplitAddress(address, &host, &port); !s.ok()) return s;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (int e = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); e != 0) {
    return absl::InvalidArgumentError(StrCat("KV peer address '", address, "': ", gai_strerror(e)));
  }
  std::string last = "no address";
  const absl::Time until = absl::Now() + timeout;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    const int fd =
        socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) {
      last = Errno("socket");
      continue;
    }
    int r = connect(fd, a->ai_addr, a->ai_addrlen);
    if (r != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int pr;
      do {
        pr = poll(&p, 1, PollMs(until - absl::Now()));
      } while (pr < 0 && errno == EINTR);
      int err = 0;
      socklen_t len = sizeof(err);
      if (pr == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
        r = 0;
      } else {
        errno = pr == 0 ? ETIMEDOUT : (err != 0 ? err : errno);
      }
    }
    if (r != 0) {
      last = Errno("connect");
      close(fd);
      continue;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    freeaddrinfo(res);
    std::unique_ptr<KvConnection> conn(new TcpConnection(fd, address));
    if (!secret.empty()) {
      if (absl::Status s = conn->Write(AuthPreamble(secret)); !s.ok()) return s;
    }
    return conn;
  }
  freeaddrinfo(res);
  return absl::UnavailableError(StrCat("cannot connect to KV peer ", address, ": ", last));
}

}  // namespace tandem::kvcache
