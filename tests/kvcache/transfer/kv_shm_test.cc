// The shared-memory transport on its own (the KV protocol over it is in kv_transport_test):
// a byte-exact stream through rings that wrap many times under back-pressure, a peer killed
// or gone while the other side is blocked, Shutdown waking blocked threads, time-outs,
// nothing left behind (fds, mappings, socket files), and connections that do not speak the
// protocol.
#include "kvcache/transfer/kv_shm.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace tandem::kvcache {
namespace {

struct Pair {
  std::unique_ptr<KvListener> listener;
  std::unique_ptr<KvConnection> client;  // the connecting side
  std::unique_ptr<KvConnection> server;  // the accepting side
};

Pair Connected(size_t ring_bytes = kShmDefaultRingBytes) {
  Pair p;
  auto l = ListenShm("");
  EXPECT_TRUE(l.ok()) << l.status();
  p.listener = std::move(*l);
  auto c = ConnectShm(p.listener->address(), absl::Seconds(5), "", ring_bytes);
  EXPECT_TRUE(c.ok()) << c.status();
  p.client = std::move(*c);
  auto s = p.listener->Accept(absl::Seconds(5));
  EXPECT_TRUE(s.ok() && *s != nullptr) << s.status();
  p.server = std::move(*s);
  return p;
}

int OpenFds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

int SegmentMappings() {
  std::ifstream maps("/proc/self/maps");
  int n = 0;
  for (std::string line; std::getline(maps, line);) {
    n += line.find("memfd:tandem-kv") != std::string::npos;
  }
  return n;
}

// Reads until `n` bytes came or the stream ends.
absl::StatusOr<std::string> ReadAll(KvConnection& c, size_t n) {
  std::string out;
  std::vector<char> buf(1 << 16);
  while (out.size() < n) {
    auto got = c.Read(buf.data(), std::min(buf.size(), n - out.size()), absl::Seconds(10));
    if (!got.ok()) return got.status();
    if (*got == 0) return absl::DeadlineExceededError("stalled");
    out.append(buf.data(), *got);
  }
  return out;
}

// Reads until the stream ends; how long that took.
absl::StatusOr<absl::Duration> ReadToEnd(KvConnection& c) {
  const absl::Time t0 = absl::Now();
  std::vector<char> buf(1 << 20);
  while (absl::Now() - t0 < absl::Seconds(10)) {
    auto got = c.Read(buf.data(), buf.size(), absl::Seconds(1));
    if (!got.ok()) {
      if (!absl::IsUnavailable(got.status())) return got.status();
      return absl::Now() - t0;
    }
  }
  return absl::DeadlineExceededError("the stream never ended");
}

// 64 MiB of pseudo-random bytes, written in chunks of random sizes (1 B to 1 MiB) through a
// 64 KiB ring to a reader that reads random sizes and now and then sleeps: the ring wraps
// about a thousand times, the writer waits for room again and again, and every byte arrives
// in order.
TEST(KvShmTest, ByteExactStreamThroughAWrappingRingUnderBackPressure) {
  Pair p = Connected(64 << 10);
  constexpr size_t kTotal = size_t{64} << 20;
  auto bytes_at = [](uint64_t seed, size_t n) {
    std::string s(n, '\0');
    std::mt19937_64 rng(seed);
    for (size_t i = 0; i < n; i += 8) {
      const uint64_t x = rng();
      std::memcpy(&s[i], &x, std::min<size_t>(8, n - i));
    }
    return s;
  };
  const std::string data = bytes_at(7, kTotal);
  std::thread writer([&] {
    std::mt19937 rng(1);
    size_t at = 0;
    while (at < kTotal) {
      const size_t n = std::min<size_t>(kTotal - at, 1 + rng() % (1 << 20));
      ASSERT_TRUE(p.client->Write(std::string_view(data).substr(at, n)).ok());
      at += n;
    }
  });
  std::string got;
  got.reserve(kTotal);
  std::mt19937 rng(2);
  std::vector<char> buf(1 << 20);
  while (got.size() < kTotal) {
    const size_t want = 1 + rng() % buf.size();
    auto n = p.server->Read(buf.data(), want, absl::Seconds(10));
    ASSERT_TRUE(n.ok()) << n.status();
    ASSERT_GT(*n, 0u);
    ASSERT_LE(*n, want);
    got.append(buf.data(), *n);
    if (rng() % 64 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  writer.join();
  ASSERT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data) << "first difference at "
                           << std::mismatch(got.begin(), got.end(), data.begin()).first -
                                  got.begin();
  // And the other way, on the same connection.
  ASSERT_TRUE(p.server->Write("pong").ok());
  auto pong = ReadAll(*p.client, 4);
  ASSERT_TRUE(pong.ok()) << pong.status();
  EXPECT_EQ(*pong, "pong");
}

TEST(KvShmTest, ReadTimesOutWithZeroAndSeesTheEndAfterTheData) {
  Pair p = Connected();
  char buf[16];
  const absl::Time t0 = absl::Now();
  auto n = p.server->Read(buf, sizeof(buf), absl::Milliseconds(100));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 0u);
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(90));
  ASSERT_TRUE(p.client->Write("last words").ok());
  p.client.reset();  // closed: what it wrote is still read, then the end
  auto words = ReadAll(*p.server, 10);
  ASSERT_TRUE(words.ok()) << words.status();
  EXPECT_EQ(*words, "last words");
  auto end = p.server->Read(buf, sizeof(buf), absl::Seconds(5));
  EXPECT_TRUE(absl::IsUnavailable(end.status())) << end.status();
  EXPECT_TRUE(absl::IsUnavailable(p.server->Write("x")));
}

TEST(KvShmTest, ShutdownWakesABlockedReadAndABlockedWrite) {
  Pair p = Connected(64 << 10);
  // The client never reads: the server's Write fills the ring and blocks; its Read has
  // nothing to read.
  auto write = std::async(std::launch::async,
                          [&] { return p.server->Write(std::string(size_t{8} << 20, 'x')); });
  auto read = std::async(std::launch::async, [&]() -> absl::Status {
    char buf[64];
    return p.server->Read(buf, sizeof(buf), absl::Seconds(60)).status();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_EQ(write.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  ASSERT_EQ(read.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  const absl::Time t0 = absl::Now();
  p.server->Shutdown();
  ASSERT_EQ(write.wait_for(std::chrono::seconds(2)), std::future_status::ready);
  ASSERT_EQ(read.wait_for(std::chrono::seconds(2)), std::future_status::ready);
  EXPECT_LT(absl::Now() - t0, absl::Milliseconds(500));
  EXPECT_TRUE(absl::IsUnavailable(write.get()));
  EXPECT_TRUE(absl::IsUnavailable(read.get()));
  // Later calls fail too, and the peer sees the end once it has read what was written.
  char buf[8];
  EXPECT_TRUE(absl::IsUnavailable(p.server->Read(buf, sizeof(buf), absl::Seconds(1)).status()));
  EXPECT_TRUE(absl::IsUnavailable(p.server->Write("x")));
  auto ended = ReadToEnd(*p.client);
  EXPECT_TRUE(ended.ok()) << ended.status();
  EXPECT_TRUE(absl::IsUnavailable(p.client->Write("x")));
}

TEST(KvShmTest, ShutdownOfAListenerWakesAccept) {
  auto l = ListenShm("");
  ASSERT_TRUE(l.ok()) << l.status();
  auto accept =
      std::async(std::launch::async, [&] { return (*l)->Accept(absl::Seconds(60)).status(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  (*l)->Shutdown();
  ASSERT_EQ(accept.wait_for(std::chrono::seconds(2)), std::future_status::ready);
  EXPECT_TRUE(absl::IsUnavailable(accept.get()));
}

// A child process connects and writes without end; SIGKILL mid-write: the reader gets what
// was written, then Unavailable, at once.
TEST(KvShmTest, AWriterKilledMidWriteEndsTheStreamPromptly) {
  auto l = ListenShm("");
  ASSERT_TRUE(l.ok()) << l.status();
  const std::string address = (*l)->address();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto c = ConnectShm(address, absl::Seconds(5));
    if (!c.ok()) _exit(1);
    const std::string chunk(1 << 20, 'k');
    while ((*c)->Write(chunk).ok()) {
    }
    _exit(2);
  }
  auto conn = (*l)->Accept(absl::Seconds(10));
  ASSERT_TRUE(conn.ok() && *conn != nullptr) << conn.status();
  EXPECT_TRUE(IsLoopbackPeer((*conn)->peer())) << (*conn)->peer();
  EXPECT_NE((*conn)->peer().find(std::to_string(child)), std::string::npos) << (*conn)->peer();
  auto some = ReadAll(**conn, 16 << 20);  // the child is writing, and blocked on a full ring
  ASSERT_TRUE(some.ok()) << some.status();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_EQ(kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status));
  auto took = ReadToEnd(**conn);
  ASSERT_TRUE(took.ok()) << took.status();
  EXPECT_LT(*took, absl::Milliseconds(500));
}

// A Read blocked on a quiet peer returns Unavailable as soon as that peer is killed.
TEST(KvShmTest, AReadBlockedOnAQuietPeerSeesItKilled) {
  auto l = ListenShm("");
  ASSERT_TRUE(l.ok()) << l.status();
  const std::string address = (*l)->address();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto c = ConnectShm(address, absl::Seconds(5));
    if (!c.ok()) _exit(1);
    pause();
    _exit(0);
  }
  auto conn = (*l)->Accept(absl::Seconds(10));
  ASSERT_TRUE(conn.ok() && *conn != nullptr) << conn.status();
  auto read = std::async(std::launch::async, [&]() -> absl::Status {
    char buf[64];
    return (*conn)->Read(buf, sizeof(buf), absl::Seconds(30)).status();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_EQ(read.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  const absl::Time t0 = absl::Now();
  ASSERT_EQ(kill(child, SIGKILL), 0);
  ASSERT_EQ(read.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_LT(absl::Now() - t0, absl::Milliseconds(500));
  const absl::Status s = read.get();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
}

// The server writes far more than the ring holds to a child that never reads and then exits:
// the blocked Write fails with Unavailable as soon as the child is gone.
TEST(KvShmTest, AWriteBlockedOnAReaderThatExitsFails) {
  auto l = ListenShm("");
  ASSERT_TRUE(l.ok()) << l.status();
  const std::string address = (*l)->address();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto c = ConnectShm(address, absl::Seconds(5), "", 64 << 10);
    if (!c.ok()) _exit(1);
    usleep(300 * 1000);
    _exit(0);  // never reads
  }
  auto conn = (*l)->Accept(absl::Seconds(10));
  ASSERT_TRUE(conn.ok() && *conn != nullptr) << conn.status();
  const absl::Time t0 = absl::Now();
  const absl::Status s = (*conn)->Write(std::string(size_t{16} << 20, 'w'));
  const absl::Duration took = absl::Now() - t0;
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_LT(took, absl::Seconds(2));
}

TEST(KvShmTest, NothingIsLeftBehind) {
  const int fds0 = OpenFds(), maps0 = SegmentMappings();
  {
    auto l = ListenShm("");
    ASSERT_TRUE(l.ok()) << l.status();
    std::vector<std::unique_ptr<KvConnection>> conns;
    for (int i = 0; i < 3; ++i) {
      auto c = ConnectShm((*l)->address(), absl::Seconds(5));
      ASSERT_TRUE(c.ok()) << c.status();
      auto s = (*l)->Accept(absl::Seconds(5));
      ASSERT_TRUE(s.ok() && *s != nullptr);
      ASSERT_TRUE((*c)->Write("hello").ok());
      ASSERT_TRUE(ReadAll(**s, 5).ok());
      conns.push_back(std::move(*c));
      conns.push_back(std::move(*s));
    }
    // Per connection and side: a socket and four eventfds, and one mapping of the segment.
    EXPECT_EQ(OpenFds(), fds0 + 2 + 3 * 2 * 5);
    EXPECT_EQ(SegmentMappings(), maps0 + 3 * 2);
    // One connected and never accepted: its hello's fds are freed with the listener.
    ASSERT_TRUE(ConnectShm((*l)->address(), absl::Seconds(5)).ok());
  }
  EXPECT_EQ(OpenFds(), fds0);
  EXPECT_EQ(SegmentMappings(), maps0);
}

TEST(KvShmTest, ASocketPathIsRemovedWithItsListenerAndAStaleOneReplaced) {
  const std::string path = "/tmp/tandem-kv-shm-test-" + std::to_string(getpid()) + ".sock";
  struct stat st {};
  {
    auto l = ListenShm(path);
    ASSERT_TRUE(l.ok()) << l.status();
    EXPECT_EQ((*l)->address(), "shm:" + path);
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    // Taken while it listens.
    EXPECT_TRUE(absl::IsUnavailable(ListenShm(path).status()));
    auto c = ConnectShm((*l)->address(), absl::Seconds(5));
    ASSERT_TRUE(c.ok()) << c.status();
    auto s = (*l)->Accept(absl::Seconds(5));
    ASSERT_TRUE(s.ok() && *s != nullptr);
  }
  EXPECT_NE(stat(path.c_str(), &st), 0);
  // A file left by a listener that died (bound, never unlinked) does not block the next.
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strcpy(sa.sun_path, path.c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  close(fd);
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  auto l = ListenShm(path);
  ASSERT_TRUE(l.ok()) << l.status();
  l->reset();
  EXPECT_NE(stat(path.c_str(), &st), 0);
}

// A connection that sends junk (or nothing) instead of a hello is dropped; the next is served.
TEST(KvShmTest, APeerThatDoesNotSpeakTheProtocolIsDropped) {
  auto l = ListenShm("junk-test-" + std::to_string(getpid()));
  ASSERT_TRUE(l.ok()) << l.status();
  const std::string name = (*l)->address().substr(4);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  const std::string abstract = "tandem-kv/" + name;
  std::memcpy(sa.sun_path + 1, abstract.data(), abstract.size());
  const socklen_t len = offsetof(sockaddr_un, sun_path) + 1 + abstract.size();
  const int junk = socket(AF_UNIX, SOCK_SEQPACKET, 0);
  ASSERT_EQ(connect(junk, reinterpret_cast<sockaddr*>(&sa), len), 0);
  ASSERT_EQ(send(junk, "GET / HTTP/1.0\r\n", 16, 0), 16);
  auto none = (*l)->Accept(absl::Milliseconds(300));
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, nullptr);
  char b;
  EXPECT_EQ(recv(junk, &b, 1, 0), 0);  // the listener hung up on it
  close(junk);
  auto c = ConnectShm((*l)->address(), absl::Seconds(5));
  ASSERT_TRUE(c.ok()) << c.status();
  auto s = (*l)->Accept(absl::Seconds(5));
  ASSERT_TRUE(s.ok() && *s != nullptr) << s.status();
}

// A hello as ConnectShm sends it, but with a segment that is not sealed: the peer could shrink
// it under the listener's mapping (SIGBUS there), so the listener refuses it. The same hello
// with the seal is taken.
TEST(KvShmTest, AnUnsealedSegmentIsRefused) {
  auto l = ListenShm("unsealed-test-" + std::to_string(getpid()));
  ASSERT_TRUE(l.ok()) << l.status();
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  const std::string abstract = "tandem-kv/" + (*l)->address().substr(4);
  std::memcpy(sa.sun_path + 1, abstract.data(), abstract.size());
  const socklen_t len = offsetof(sockaddr_un, sun_path) + 1 + abstract.size();
  // Connects and sends the hello; the socket.
  auto hello_with = [&](bool sealed) {
    const int sock = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    EXPECT_EQ(connect(sock, reinterpret_cast<sockaddr*>(&sa), len), 0);
    constexpr uint64_t kRing = 64 << 10;
    int fds[5];
    fds[0] = memfd_create("tandem-kv", MFD_ALLOW_SEALING);
    EXPECT_EQ(ftruncate(fds[0], 4096 + 2 * kRing), 0);
    if (sealed) {
      EXPECT_EQ(fcntl(fds[0], F_ADD_SEALS, F_SEAL_SHRINK), 0);
    }
    for (int i = 1; i < 5; ++i) fds[i] = eventfd(0, 0);
    struct {
      uint32_t magic = 0x53564b54, version = 1;
      uint64_t ring_bytes = kRing;
    } hello;
    iovec iov{&hello, sizeof(hello)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(fds))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(fds));
    std::memcpy(CMSG_DATA(c), fds, sizeof(fds));
    EXPECT_EQ(sendmsg(sock, &msg, 0), static_cast<ssize_t>(sizeof(hello)));
    for (int fd : fds) close(fd);
    return sock;
  };
  const int unsealed = hello_with(false);
  const int fds0 = OpenFds();
  auto none = (*l)->Accept(absl::Milliseconds(300));
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, nullptr);
  char b;
  EXPECT_EQ(recv(unsealed, &b, 1, 0), 0);  // hung up on
  EXPECT_EQ(OpenFds(), fds0);              // and the fds it received are closed again
  close(unsealed);
  const int sealed = hello_with(true);
  auto taken = (*l)->Accept(absl::Seconds(5));
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_NE(*taken, nullptr);
  close(sealed);
}

TEST(KvShmTest, AddressesAreChecked) {
  EXPECT_TRUE(absl::IsInvalidArgument(ConnectShm("127.0.0.1:80", absl::Seconds(1)).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ConnectShm("shm:no spaces", absl::Seconds(1)).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ListenShm("a/b").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ListenShm(std::string(200, 'x')).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ConnectShm("shm:x", absl::Seconds(1), "", 5000).status()));
  const absl::Status nobody = ConnectShm("shm:nobody-listens-here", absl::Seconds(1)).status();
  EXPECT_TRUE(absl::IsUnavailable(nobody)) << nobody;
  EXPECT_NE(nobody.message().find("shm:nobody-listens-here"), std::string::npos) << nobody;
  auto l = ListenShm("twice-" + std::to_string(getpid()));
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_TRUE(absl::IsUnavailable(ListenShm("twice-" + std::to_string(getpid())).status()));
  EXPECT_TRUE(IsShmAddress((*l)->address()));
  EXPECT_FALSE(IsShmAddress("127.0.0.1:5000"));
  // IsLoopbackPeer: shm peers, and TCP's as before.
  EXPECT_TRUE(IsLoopbackPeer("shm:x (pid 1)"));
  EXPECT_TRUE(IsLoopbackPeer("127.0.0.1:4000"));
  EXPECT_TRUE(IsLoopbackPeer("[::1]:4000"));
  EXPECT_FALSE(IsLoopbackPeer("10.0.0.7:4000"));
  EXPECT_FALSE(IsLoopbackPeer("[fe80::1]:4000"));
}

}  // namespace
}  // namespace tandem::kvcache
