// KvConnection and KvListener: the byte streams a KV handover runs over, one interface for
// every transport between processes (TCP, kv_tcp.h; shared memory on one host, kv_shm.h). The
// protocol on top (kv_frame.h) and both of its ends (KvPusher on the prefill side, KvReceiver on
// the decode side) see only these two classes, so a transport is a pair of implementations.
//
// Thread safety: one thread reads and one thread writes a connection at a time; Shutdown may
// be called from any thread, and wakes both. A listener's Accept runs on one thread; its
// Shutdown on any.
#ifndef TANDEM_KVCACHE_TRANSFER_KV_CONNECTION_H_
#define TANDEM_KVCACHE_TRANSFER_KV_CONNECTION_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tandem::kvcache {

class KvConnection {
 public:
  virtual ~KvConnection() = default;
  // Writes all of `bytes`, blocking while the peer is slow to read. Unavailable once the peer
  // is gone or after Shutdown.
  virtual absl::Status Write(std::string_view bytes) = 0;
  // Reads what has arrived, up to `n` bytes, waiting at most `timeout` for the first: the
  // count read (>= 1), 0 when nothing came in time, Unavailable at the peer's end of stream,
  // on a connection error, or after Shutdown.
  virtual absl::StatusOr<size_t> Read(char* buf, size_t n, absl::Duration timeout) = 0;
  // Ends the connection both ways: blocked and later reads and writes fail with Unavailable,
  // and the peer sees the end of the stream.
  virtual void Shutdown() = 0;
  // The peer, for logs ("127.0.0.1:40112", "shm:NAME (pid 4242)").
  virtual std::string peer() const = 0;
};

class KvListener {
 public:
  virtual ~KvListener() = default;
  // The next connection, waiting at most `timeout`: nullptr when none came in time,
  // Unavailable after Shutdown.
  virtual absl::StatusOr<std::unique_ptr<KvConnection>> Accept(absl::Duration timeout) = 0;
  virtual void Shutdown() = 0;
  // Where peers connect: "host:port" for TCP, "shm:NAME" for shared memory.
  virtual std::string address() const = 0;
};

// Peer authentication, before any frame. A receiver with a secret reads, as a connection's
// first bytes, "TKVA", the secret's length (u32, little-endian) and the secret, and ends the
// connection unless they match; a sender to it writes AuthPreamble(secret) first. A receiver
// without a secret serves loopback peers only (IsLoopbackPeer).
std::string AuthPreamble(std::string_view secret);
// Reads and checks the preamble within `timeout`: OK, or Unauthenticated / Unavailable.
absl::Status CheckAuthPreamble(KvConnection& conn, std::string_view secret, absl::Duration timeout);
// "127.x.y.z:port", "[::1]:port", and any shared-memory peer ("shm:..."): only a process on
// this host can reach a shm listener.
bool IsLoopbackPeer(std::string_view peer);

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_TRANSFER_KV_CONNECTION_H_
