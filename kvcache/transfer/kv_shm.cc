#include "kvcache/transfer/kv_shm.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <thread>
#include <utility>

#include "common/str_cat.h"

namespace tandem::kvcache {
namespace {

constexpr char kShmPrefix[] = "shm:";
constexpr char kAbstractPrefix[] = "tandem-kv/";
constexpr uint32_t kHelloMagic = 0x53564b54;  // "TKVS"
constexpr uint32_t kVersion = 1;
constexpr size_t kMinRingBytes = size_t{4} << 10;
constexpr size_t kMaxRingBytes = size_t{1} << 30;
// The writer publishes at least this often within one Write, so the reader starts copying
// out while a large layer is still being copied in.
constexpr size_t kPublishBytes = size_t{256} << 10;
// The listener waits this long for a new connection's hello before dropping it.
constexpr absl::Duration kHelloTimeout = absl::Seconds(2);
constexpr size_t kCacheLine = 64;
// A Write that makes no progress for this long fails (a peer alive but stuck, e.g. stopped),
// as over TCP (kv_tcp.h).
constexpr absl::Duration kStallTimeout = absl::Seconds(10);

// One direction. head and tail count bytes ever written and read (they never wrap; the ring
// offset is the count modulo the ring size). Each field sits on its own cache line: the
// writer stores head and reads tail, the reader the other way round.
struct RingControl {
  alignas(kCacheLine) uint64_t head;  // stored by the writer
  alignas(kCacheLine) uint64_t tail;  // stored by the reader
  // Set by the reader before it sleeps on the ring's "data" eventfd; the writer that clears
  // it signals that eventfd.
  alignas(kCacheLine) uint32_t reader_sleeping;
  // Set by the writer before it sleeps on the "space" eventfd; cleared (and signalled) by the
  // reader.
  alignas(kCacheLine) uint32_t writer_sleeping;
};

// The start of the segment; ring r's bytes follow at kDataOffset + r * ring_bytes.
struct SegmentHeader {
  uint32_t magic;
  uint32_t version;
  uint64_t ring_bytes;
  RingControl ring[2];  // [0]: connecting side -> listening side, [1]: the other way
};
constexpr size_t kDataOffset = 4096;
static_assert(sizeof(SegmentHeader) <= kDataOffset);
static_assert(std::atomic_ref<uint64_t>::is_always_lock_free &&
              std::atomic_ref<uint32_t>::is_always_lock_free);

size_t SegmentBytes(size_t ring_bytes) { return kDataOffset + 2 * ring_bytes; }

// The hello, the only message on the socket: the segment and eventfds ride along
// (SCM_RIGHTS), in the order of kFd*.
struct Hello {
  uint32_t magic;
  uint32_t version;
  uint64_t ring_bytes;
};
enum : int { kFdSegment = 0, kFdData0, kFdSpace0, kFdData1, kFdSpace1, kHelloFds };

std::string Errno(const std::string& what) { return StrCat(what, ": ", std::strerror(errno)); }

int PollMs(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return 0;
  if (d > absl::Seconds(3600)) return 3600 * 1000;
  return static_cast<int>(absl::ToInt64Milliseconds(d + absl::Microseconds(999)));
}

int PollRetry(pollfd* fds, nfds_t n, int ms) {
  int r;
  do {
    r = poll(fds, n, ms);
  } while (r < 0 && errno == EINTR);
  return r;
}

void CloseAll(const int* fds, int n) {
  for (int i = 0; i < n; ++i) {
    if (fds[i] >= 0) close(fds[i]);
  }
}

bool IsPowerOfTwo(size_t x) { return x != 0 && (x & (x - 1)) == 0; }

// NAME of "shm:NAME" -> the socket address. '/'-leading names are paths; the others go in the
// abstract namespace and must be short and plain.
absl::Status SocketAddress(const std::string& name, sockaddr_un* sa, socklen_t* len) {
  *sa = {};
  sa->sun_family = AF_UNIX;
  if (!name.empty() && name[0] == '/') {
    if (name.size() >= sizeof(sa->sun_path)) {
      return absl::InvalidArgumentError(
          StrCat("KV shm socket path '", name, "' is longer than ", sizeof(sa->sun_path) - 1));
    }
    std::memcpy(sa->sun_path, name.data(), name.size());
    *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + 1);
    return absl::OkStatus();
  }
  const bool plain = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
  const size_t n = sizeof(kAbstractPrefix) - 1 + name.size();
  if (!plain || 1 + n > sizeof(sa->sun_path)) {
    return absl::InvalidArgumentError(
        StrCat("KV shm name '", name,
               "': use letters, digits, '.', '_' and '-' (at most 90), or an absolute path"));
  }
  std::memcpy(sa->sun_path + 1, kAbstractPrefix, sizeof(kAbstractPrefix) - 1);
  std::memcpy(sa->sun_path + 1 + sizeof(kAbstractPrefix) - 1, name.data(), name.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
  return absl::OkStatus();
}

bool IsEventFd(int fd) {
  char target[64];
  const std::string link = StrCat("/proc/self/fd/", fd);
  const ssize_t n = readlink(link.c_str(), target, sizeof(target) - 1);
  return n > 0 && std::string_view(target, static_cast<size_t>(n)) == "anon_inode:[eventfd]";
}

void Signal(int efd) {
  const uint64_t one = 1;
  // Nonblocking; the count cannot reach its limit, and a lost signal of a gone peer is moot.
  (void)!write(efd, &one, sizeof(one));
}

void Drain(int efd) {
  uint64_t count;
  (void)!read(efd, &count, sizeof(count));
}

// Both ends of a connection; `side` 0 connected, 1 accepted. Side s writes ring s and reads
// ring 1 - s.
class ShmConnection : public KvConnection {
 public:
  // Takes the socket, the mapping and the four eventfds (kFdData0..kFdSpace1 order).
  ShmConnection(int side, int sock, void* base, size_t ring_bytes, const std::array<int, 4>& efds,
                std::string peer)
      : sock_(sock),
        base_(static_cast<char*>(base)),
        ring_bytes_(ring_bytes),
        mask_(ring_bytes - 1),
        efds_(efds),
        out_(Header().ring[side]),
        in_(Header().ring[1 - side]),
        out_data_(base_ + kDataOffset + side * ring_bytes),
        in_data_(base_ + kDataOffset + (1 - side) * ring_bytes),
        out_data_efd_(efds[2 * side]),
        out_space_efd_(efds[2 * side + 1]),
        in_data_efd_(efds[2 * (1 - side)]),
        in_space_efd_(efds[2 * (1 - side) + 1]),
        peer_(std::move(peer)) {}

  ~ShmConnection() override {
    munmap(base_, SegmentBytes(ring_bytes_));
    close(sock_);
    CloseAll(efds_.data(), static_cast<int>(efds_.size()));
  }

  absl::Status Write(std::string_view bytes) override {
    if (shut_.load()) return Closed();
    if (PeerGone(0)) return Gone();
    absl::Time last_progress = absl::Now();
    while (!bytes.empty()) {
      if (shut_.load()) return Closed();
      const uint64_t tail = Load(out_.tail, std::memory_order_acquire);
      const uint64_t used = head_ - tail;
      if (used > ring_bytes_) return Broken();
      if (used == ring_bytes_) {
        if (absl::Status s = WaitForSpace(last_progress + kStallTimeout); !s.ok()) return s;
        continue;
      }
      last_progress = absl::Now();
      const size_t n =
          std::min({static_cast<size_t>(ring_bytes_ - used), bytes.size(), kPublishBytes});
      const size_t at = head_ & mask_;
      const size_t first = std::min(n, ring_bytes_ - at);
      std::memcpy(out_data_ + at, bytes.data(), first);
      std::memcpy(out_data_, bytes.data() + first, n - first);
      head_ += n;
      Store(out_.head, head_, std::memory_order_release);
      // Paired with the reader's fence between setting reader_sleeping and reading head:
      // either it sees the new head or this sees it asleep.
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (Load32(out_.reader_sleeping) != 0 && Exchange32(out_.reader_sleeping, 0) != 0) {
        Signal(out_data_efd_);
      }
      bytes.remove_prefix(n);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<size_t> Read(char* buf, size_t n, absl::Duration timeout) override {
    const absl::Time until = absl::Now() + timeout;
    while (true) {
      if (shut_.load()) return Closed();
      uint64_t head = Load(in_.head, std::memory_order_acquire);
      const uint64_t avail = head - tail_;
      if (avail > ring_bytes_) return Broken();
      if (avail > 0 && n > 0) {
        const size_t k = static_cast<size_t>(std::min<uint64_t>(avail, n));
        const size_t at = tail_ & mask_;
        const size_t first = std::min(k, ring_bytes_ - at);
        std::memcpy(buf, in_data_ + at, first);
        std::memcpy(buf + first, in_data_, k - first);
        tail_ += k;
        Store(in_.tail, tail_, std::memory_order_release);
        std::atomic_thread_fence(std::memory_order_seq_cst);  // as in Write
        if (Load32(in_.writer_sleeping) != 0 && Exchange32(in_.writer_sleeping, 0) != 0) {
          Signal(in_space_efd_);
        }
        return k;
      }
      // Nothing left to read: only now does a gone peer end the stream (what it wrote
      // before going is read first, as from a TCP socket).
      if (peer_gone_.load()) return Gone();
      const absl::Duration left = until - absl::Now();
      if (left <= absl::ZeroDuration() || n == 0) return size_t{0};
      Store32(in_.reader_sleeping, 1);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (Load(in_.head, std::memory_order_acquire) != head) {
        Store32(in_.reader_sleeping, 0);
        continue;
      }
      pollfd p[2] = {{in_data_efd_, POLLIN, 0}, {sock_, POLLIN | POLLRDHUP, 0}};
      if (PollRetry(p, 2, PollMs(left)) < 0) {
        return absl::UnavailableError(Errno("KV shm connection: poll"));
      }
      Store32(in_.reader_sleeping, 0);
      if (p[0].revents & POLLIN) Drain(in_data_efd_);
      if (p[1].revents != 0) peer_gone_.store(true);
    }
  }

  void Shutdown() override {
    shut_.store(true);
    // Wakes this side's polls (a socket shut down both ways polls as hung up) and tells the
    // peer's.
    shutdown(sock_, SHUT_RDWR);
  }

  std::string peer() const override { return peer_; }

 private:
  SegmentHeader& Header() { return *reinterpret_cast<SegmentHeader*>(base_); }
  static uint64_t Load(uint64_t& x, std::memory_order o) { return std::atomic_ref(x).load(o); }
  static void Store(uint64_t& x, uint64_t v, std::memory_order o) {
    std::atomic_ref(x).store(v, o);
  }
  static uint32_t Load32(uint32_t& x) { return std::atomic_ref(x).load(std::memory_order_relaxed); }
  static void Store32(uint32_t& x, uint32_t v) { std::atomic_ref(x).store(v); }
  static uint32_t Exchange32(uint32_t& x, uint32_t v) { return std::atomic_ref(x).exchange(v); }

  // Sleeps until the reader frees space, the peer goes, Shutdown or `until` (Unavailable).
  absl::Status WaitForSpace(absl::Time until) {
    Store32(out_.writer_sleeping, 1);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (head_ - Load(out_.tail, std::memory_order_acquire) < ring_bytes_) {
      Store32(out_.writer_sleeping, 0);
      return absl::OkStatus();
    }
    const absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::UnavailableError(StrCat("KV connection to ", peer_, ": no progress writing for ",
                                           absl::FormatDuration(kStallTimeout)));
    }
    pollfd p[2] = {{out_space_efd_, POLLIN, 0}, {sock_, POLLIN | POLLRDHUP, 0}};
    if (PollRetry(p, 2, PollMs(left)) < 0) {
      return absl::UnavailableError(Errno("KV shm connection: poll"));
    }
    Store32(out_.writer_sleeping, 0);
    if (p[0].revents & POLLIN) Drain(out_space_efd_);
    if (shut_.load()) return Closed();
    if (p[1].revents != 0) {
      peer_gone_.store(true);
      return Gone();
    }
    return absl::OkStatus();
  }

  // Whether the peer has ended the connection (closed, shut down, exited or was killed),
  // waiting at most `ms`. Nothing but the hello is ever sent on the socket, so any event on
  // it is the end.
  bool PeerGone(int ms) {
    if (peer_gone_.load()) return true;
    pollfd p{sock_, POLLIN | POLLRDHUP, 0};
    if (PollRetry(&p, 1, ms) > 0 && p.revents != 0) peer_gone_.store(true);
    return peer_gone_.load();
  }

  absl::Status Closed() const {
    return absl::UnavailableError(StrCat("KV connection to ", peer_, " was shut down"));
  }
  absl::Status Gone() const {
    if (shut_.load()) return Closed();
    return absl::UnavailableError(StrCat("KV connection to ", peer_, " closed by the peer"));
  }
  absl::Status Broken() {
    Shutdown();
    return absl::UnavailableError(
        StrCat("KV connection to ", peer_, ": the shared ring's indices are corrupt"));
  }

  // Constant after construction; the fds and the mapping are released by the destructor
  // only, so no other thread sees them reused.
  const int sock_;
  char* const base_;
  const size_t ring_bytes_;
  const size_t mask_;
  const std::array<int, 4> efds_;
  RingControl& out_;  // in shared memory: accessed through atomic_ref only
  RingControl& in_;
  char* const out_data_;
  char* const in_data_;
  const int out_data_efd_, out_space_efd_, in_data_efd_, in_space_efd_;
  const std::string peer_;

  // The writing thread only: the head this side publishes (never read back from the shared
  // segment, which the peer could scribble on).
  uint64_t head_ = 0;
  // The reading thread only: likewise the tail.
  uint64_t tail_ = 0;

  std::atomic<bool> shut_{false};
  std::atomic<bool> peer_gone_{false};
};

// Receives and checks a new connection's hello; on success the connection owns `sock`.
absl::StatusOr<std::unique_ptr<KvConnection>> Welcome(int sock, const std::string& address) {
  pollfd p{sock, POLLIN, 0};
  if (PollRetry(&p, 1, PollMs(kHelloTimeout)) <= 0) {
    return absl::DeadlineExceededError("KV shm peer sent no hello in time");
  }
  Hello hello{};
  iovec iov{&hello, sizeof(hello)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kHelloFds)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t got;
  do {
    got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (got < 0 && errno == EINTR);
  if (got < 0) msg.msg_controllen = 0;  // left as it was: nothing to parse
  std::array<int, kHelloFds> fds;
  fds.fill(-1);
  int nfds = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (nfds < kHelloFds) {
        fds[nfds++] = fd;
      } else {
        close(fd);
      }
    }
  }
  auto fail = [&](const std::string& why) {
    CloseAll(fds.data(), kHelloFds);
    return absl::InvalidArgumentError(StrCat("KV shm peer: ", why));
  };
  if (got != static_cast<ssize_t>(sizeof(hello)) || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
    return fail("bad hello");
  }
  if (hello.magic != kHelloMagic || hello.version != kVersion) {
    return fail(StrCat("hello of another protocol or version (", hello.version, ")"));
  }
  if (!IsPowerOfTwo(hello.ring_bytes) || hello.ring_bytes < kMinRingBytes ||
      hello.ring_bytes > kMaxRingBytes) {
    return fail(StrCat("bad ring size ", hello.ring_bytes));
  }
  if (nfds != kHelloFds) return fail(StrCat(nfds, " fds in the hello, not ", kHelloFds));
  const size_t bytes = SegmentBytes(hello.ring_bytes);
  struct stat st {};
  const int seals = fcntl(fds[kFdSegment], F_GET_SEALS);
  if (fstat(fds[kFdSegment], &st) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<size_t>(st.st_size) != bytes || seals < 0 || !(seals & F_SEAL_SHRINK)) {
    return fail("the segment is not a memfd of the right size sealed against shrinking");
  }
  for (int i = kFdData0; i < kHelloFds; ++i) {
    if (!IsEventFd(fds[i])) return fail("not an eventfd");
    fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
  }
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[kFdSegment], 0);
  if (base == MAP_FAILED) return fail(Errno("mmap"));
  close(fds[kFdSegment]);  // the mapping keeps the segment
  std::string peer = address;
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    peer = StrCat(address, " (pid ", cred.pid, ")");
  }
  return std::unique_ptr<KvConnection>(new ShmConnection(
      1, sock, base, hello.ring_bytes,
      {fds[kFdData0], fds[kFdSpace0], fds[kFdData1], fds[kFdSpace1]}, std::move(peer)));
}

class ShmListener : public KvListener {
 public:
  ShmListener(int fd, int wake, std::string address, std::string path, ino_t ino)
      : fd_(fd), wake_(wake), address_(std::move(address)), path_(std::move(path)), ino_(ino) {}
  ~ShmListener() override {
    close(fd_);
    close(wake_);
    // Only the file this listener made: another may have replaced it since.
    struct stat st {};
    if (!path_.empty() && stat(path_.c_str(), &st) == 0 && st.st_ino == ino_) {
      unlink(path_.c_str());
    }
  }

  absl::StatusOr<std::unique_ptr<KvConnection>> Accept(absl::Duration timeout) override {
    const absl::Time until = absl::Now() + timeout;
    while (true) {
      if (shut_.load()) return absl::UnavailableError("KV listener was shut down");
      const absl::Duration left = until - absl::Now();
      pollfd p[2] = {{fd_, POLLIN, 0}, {wake_, POLLIN, 0}};
      if (PollRetry(p, 2, PollMs(left)) < 0) {
        return absl::UnavailableError(Errno("KV shm listener: poll"));
      }
      if (shut_.load()) return absl::UnavailableError("KV listener was shut down");
      if (p[0].revents & POLLIN) {
        const int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c >= 0) {
          absl::StatusOr<std::unique_ptr<KvConnection>> conn = Welcome(c, address_);
          if (conn.ok()) return conn;
          close(c);  // a peer that does not speak the protocol: wait for the next
        } else if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
          return absl::UnavailableError(Errno("KV shm listener: accept"));
        }
      }
      if (left <= absl::ZeroDuration()) return std::unique_ptr<KvConnection>();
    }
  }

  void Shutdown() override {
    shut_.store(true);
    Signal(wake_);
  }
  std::string address() const override { return address_; }

 private:
  const int fd_;
  const int wake_;  // an eventfd Shutdown makes readable, waking Accept
  const std::string address_;
  const std::string path_;  // the socket file, or empty in the abstract namespace
  const ino_t ino_;
  std::atomic<bool> shut_{false};
};

// Binds and listens on `name`; EADDRINUSE comes back as errno.
int BindListen(const std::string& name, absl::Status* status) {
  sockaddr_un sa;
  socklen_t len;
  if (*status = SocketAddress(name, &sa, &len); !status->ok()) {
    errno = 0;
    return -1;
  }
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    *status = absl::UnavailableError(Errno("socket"));
    return -1;
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0 || listen(fd, 64) != 0) {
    const int e = errno;
    *status = absl::UnavailableError(Errno(StrCat("cannot listen for KV on shm:", name)));
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

// Whether something answers on `name` (a stale socket file refuses).
bool Answers(const std::string& name) {
  sockaddr_un sa;
  socklen_t len;
  if (!SocketAddress(name, &sa, &len).ok()) return false;
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return true;
  const int r = connect(fd, reinterpret_cast<sockaddr*>(&sa), len);
  const bool answers = r == 0 || errno == EAGAIN;
  close(fd);
  return answers;
}

}  // namespace

bool IsShmAddress(const std::string& address) { return address.rfind(kShmPrefix, 0) == 0; }

absl::StatusOr<std::unique_ptr<KvListener>> ListenShm(const std::string& name) {
  std::string chosen = name;
  absl::Status status;
  int fd = -1;
  if (name.empty()) {
    // A fresh abstract name: this process's id and a counter, skipping any taken.
    static std::atomic<uint64_t> counter{0};
    for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
      chosen = StrCat(getpid(), "-", counter.fetch_add(1));
      fd = BindListen(chosen, &status);
      if (fd < 0 && errno != EADDRINUSE) break;
    }
  } else {
    fd = BindListen(name, &status);
    if (fd < 0 && errno == EADDRINUSE && name[0] == '/' && !Answers(name)) {
      unlink(name.c_str());  // left by a listener that died
      fd = BindListen(name, &status);
    }
  }
  if (fd < 0) return status;
  ino_t ino = 0;
  if (chosen[0] == '/') {
    struct stat st {};
    if (stat(chosen.c_str(), &st) == 0) ino = st.st_ino;
  }
  const int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    close(fd);
    return absl::UnavailableError(Errno("eventfd"));
  }
  return std::unique_ptr<KvListener>(
      new ShmListener(fd, wake, StrCat(kShmPrefix, chosen), chosen[0] == '/' ? chosen : "", ino));
}

absl::StatusOr<std::unique_ptr<KvConnection>> ConnectShm(const std::string& address,
                                                         absl::Duration timeout,
                                                         const std::string& secret,
                                                         size_t ring_bytes) {
  if (!IsShmAddress(address)) {
    return absl::InvalidArgumentError(StrCat("KV peer address '", address, "' is not shm:NAME"));
  }
  if (!IsPowerOfTwo(ring_bytes) || ring_bytes < kMinRingBytes || ring_bytes > kMaxRingBytes) {
    return absl::InvalidArgumentError(
        StrCat("KV shm ring of ", ring_bytes, " bytes: a power of two from 4 KiB to 1 GiB"));
  }
  const std::string name = address.substr(sizeof(kShmPrefix) - 1);
  sockaddr_un sa;
  socklen_t len;
  if (absl::Status s = SocketAddress(name, &sa, &len); !s.ok()) return s;
  const absl::Time until = absl::Now() + timeout;

  // Everything made here is closed on the way out, but what the connection takes over.
  std::array<int, kHelloFds> fds;
  fds.fill(-1);
  int sock = -1;
  void* base = MAP_FAILED;
  const size_t bytes = SegmentBytes(ring_bytes);
  auto fail = [&](absl::Status s) {
    CloseAll(fds.data(), kHelloFds);
    if (sock >= 0) close(sock);
    if (base != MAP_FAILED) munmap(base, bytes);
    return s;
  };

  sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (sock < 0) return fail(absl::UnavailableError(Errno("socket")));
  while (connect(sock, reinterpret_cast<sockaddr*>(&sa), len) != 0) {
    // EAGAIN: the listener's backlog is full; it may drain before the timeout.
    if (errno == EINTR || (errno == EAGAIN && absl::Now() < until)) {
      if (errno == EAGAIN) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    return fail(absl::UnavailableError(Errno(StrCat("cannot connect to KV peer ", address))));
  }

  fds[kFdSegment] = memfd_create("tandem-kv", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fds[kFdSegment] < 0) return fail(absl::UnavailableError(Errno("memfd_create")));
  if (ftruncate(fds[kFdSegment], static_cast<off_t>(bytes)) != 0 ||
      fcntl(fds[kFdSegment], F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return fail(absl::UnavailableError(Errno("KV shm segment")));
  }
  base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[kFdSegment], 0);
  if (base == MAP_FAILED) return fail(absl::UnavailableError(Errno("mmap")));
  auto* header = new (base) SegmentHeader{};
  header->magic = kHelloMagic;
  header->version = kVersion;
  header->ring_bytes = ring_bytes;
  for (int i = kFdData0; i < kHelloFds; ++i) {
    fds[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fds[i] < 0) return fail(absl::UnavailableError(Errno("eventfd")));
  }

  Hello hello{kHelloMagic, kVersion, ring_bytes};
  iovec iov{&hello, sizeof(hello)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kHelloFds)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * kHelloFds);
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * kHelloFds);
  while (sendmsg(sock, &msg, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof(hello))) {
    if (errno == EINTR) continue;
    if (errno == EAGAIN && absl::Now() < until) {
      pollfd p{sock, POLLOUT, 0};
      PollRetry(&p, 1, PollMs(until - absl::Now()));
      continue;
    }
    return fail(absl::UnavailableError(Errno(StrCat("KV peer ", address, ": hello"))));
  }
  close(fds[kFdSegment]);  // the peer has its own now, and the mapping keeps ours
  std::unique_ptr<KvConnection> conn(
      new ShmConnection(0, sock, base, ring_bytes,
                        {fds[kFdData0], fds[kFdSpace0], fds[kFdData1], fds[kFdSpace1]}, address));
  if (!secret.empty()) {
    if (absl::Status s = conn->Write(AuthPreamble(secret)); !s.ok()) return s;
  }
  return conn;
}

}  // namespace tandem::kvcache
