// The shared-memory transport of the KV handover, for a prefill and a decode process on the
// same host: KvConnection and KvListener (kv_connection.h) whose bytes go through memory both
// processes map, copied once into it by the writer and once out by the reader, with no
// syscall per byte. A KV layer is hundreds of KB to MBs; over loopback TCP each crosses the
// kernel's socket buffers twice more.
//
// Each connection is:
//   - a Unix domain socket (SOCK_SEQPACKET), used only to meet and to notice the peer's end:
//     the connecting side sends one hello with the segment and the eventfds (SCM_RIGHTS) and
//     nothing travels on it after that. The peer's exit, crash or kill -9 closes it, and the
//     kernel tells the other side at once (POLLHUP);
//   - a sealed memfd segment holding two single-producer/single-consumer byte rings, one per
//     direction, each with its head and tail as atomics on their own cache lines;
//   - per ring, two eventfds: the writer signals "data" when the reader said it sleeps, the
//     reader signals "space" when the writer said it sleeps; and one local eventfd per side
//     that Shutdown makes readable for good, so a Shutdown wakes every thread blocked on the
//     connection. A blocked Read or Write polls its eventfd, the socket and that one.
//
// Addresses are "shm:NAME". NAME without a '/' names a socket in the abstract namespace
// ("@tandem-kv/NAME": nothing on disk, gone with the listener, reachable from any process in
// the same network namespace, so from another container of the same pod too); NAME with a
// '/' is a filesystem path, removed when the listener is destroyed (and a stale one left by a
// killed listener is replaced). Peers are reported as "shm:NAME", which IsLoopbackPeer
// accepts: like loopback TCP, only processes on this host can connect.
//
// The listener trusts nothing the connecting process sends: the segment must be a memfd
// sealed against shrinking (so it cannot be cut under the mapping), of the size the hello
// says; the fds must be eventfds; ring indices that do not add up end the connection.
//
// As over TCP (kv_tcp.h), a Write that makes no progress for 10 s (a peer alive but stuck)
// fails with Unavailable.
//
// Thread safety: as KvConnection / KvListener (kv_connection.h).
#ifndef TANDEM_KVCACHE_TRANSFER_KV_SHM_H_
#define TANDEM_KVCACHE_TRANSFER_KV_SHM_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvcache/transfer/kv_connection.h"

namespace tandem::kvcache {

// Each direction's ring. A power of two; 4 MiB holds a few layers of a long prompt, so the
// writer seldom waits for the reader.
inline constexpr size_t kShmDefaultRingBytes = size_t{4} << 20;

// Listens on "shm:NAME" (see above; an empty name picks a unique one: address() says which).
// InvalidArgument for a name that cannot be a socket address, Unavailable when it is taken.
absl::StatusOr<std::unique_ptr<KvListener>> ListenShm(const std::string& name);

// Connects to "shm:NAME", giving up after `timeout`: Unavailable when nobody listens there,
// InvalidArgument for an address that is not "shm:NAME" or a ring size that is not a power of
// two from 4 KiB to 1 GiB. With a secret, the connection opens with AuthPreamble(secret).
absl::StatusOr<std::unique_ptr<KvConnection>> ConnectShm(const std::string& address,
                                                         absl::Duration timeout,
                                                         const std::string& secret = "",
                                                         size_t ring_bytes = kShmDefaultRingBytes);

// True for "shm:..." addresses (the others are TCP's host:port).
bool IsShmAddress(const std::string& address);

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_TRANSFER_KV_SHM_H_
