// The TCP transport of the KV handover: KvConnection and KvListener over stream sockets
// (IPv4 or IPv6, TCP_NODELAY, writes that never raise SIGPIPE). Between any two hosts. A
// connection whose writes make no progress for 10 s, or whose data goes unacknowledged that
// long (TCP_USER_TIMEOUT: a partition, a dead host), fails with Unavailable; idle connections
// are probed (TCP keepalive after 5 s, 3 probes 2 s apart), so nothing waits on a lost peer.
//
// Thread safety: as KvConnection / KvListener (kv_connection.h).
#ifndef TANDEM_KVCACHE_TRANSFER_KV_TCP_H_
#define TANDEM_KVCACHE_TRANSFER_KV_TCP_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvcache/transfer/kv_connection.h"

namespace tandem::kvcache {

// Listens on host:port (port 0: the kernel picks one; address() says which). Unavailable when
// the address cannot be bound, InvalidArgument when it does not parse.
absl::StatusOr<std::unique_ptr<KvListener>> ListenTcp(const std::string& host, int port);

// Connects to "host:port" ("[v6]:port" for IPv6), giving up after `timeout`: Unavailable when
// the peer refuses or does not answer, InvalidArgument for a malformed address. With a
// secret, the connection opens with AuthPreamble(secret) (kv_connection.h).
absl::StatusOr<std::unique_ptr<KvConnection>> ConnectTcp(const std::string& address,
                                                         absl::Duration timeout,
                                                         const std::string& secret = "");

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_TRANSFER_KV_TCP_H_
