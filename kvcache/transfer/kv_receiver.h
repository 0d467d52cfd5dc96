// KvReceiver: the decode side of a KV handover between processes. It accepts connections from
// prefill senders on a KvListener and runs the protocol of kv_frame.h for every transfer on
// them: on Reserve it asks its KvReceiveTarget for blocks under a lease and answers ReserveOk
// (or an Abort whose code says whether to retry); it writes each Layer straight into the
// lease's blocks, re-paging and converting to the cache's block size and dtype; on Commit it
// hands the lease to the target. A transfer that goes wrong in any way (an Abort from the
// peer, a frame out of order or of the wrong layout, a transfer past its deadline, a lost
// connection, a corrupt byte stream) is aborted: its lease goes back to the target at once,
// the peer is told when it can still hear, and no other transfer pays for it (a corrupt
// stream ends that connection's transfers only: after a bad frame its bytes cannot be
// trusted).
//
// Thread safety: Start, Stop and the accessors from any thread. One thread accepts and one
// thread serves each connection; the target is called from those threads (several at once).
#ifndef TANDEM_KVCACHE_TRANSFER_KV_RECEIVER_H_
#define TANDEM_KVCACHE_TRANSFER_KV_RECEIVER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/backend.h"
#include "kvcache/block_table.h"
#include "kvcache/kv_cache.h"
#include "kvcache/transfer/kv_connection.h"
#include "kvcache/transfer/kv_frame.h"

namespace tandem::kvcache {

// Blocks reserved for one transfer, and where they live.
struct KvReservation {
  uint64_t lease_id = 0;
  kernels::KvCacheView view;  // the destination cache; host memory
  KvGroups groups;            // its layer groups (empty: one group, a layer per view layer)
  // The lease's blocks holding the transfer's n_tokens positions (every group's). It only
  // addresses them: the lease holds the references, and the table is never released.
  BlockTable table{1};
};

// What a KvReceiver needs of the instance it fills (the decode engine).
class KvReceiveTarget {
 public:
  virtual ~KvReceiveTarget() = default;
  // Blocks for r.n_tokens positions of r's layout, leased until `expires`. ResourceExhausted
  // when there is no room now (the sender may retry); InvalidArgument when the layout does
  // not match this cache.
  virtual absl::StatusOr<KvReservation> Reserve(const ReserveFrame& r, absl::Time expires) = 0;
  // Every layer of the transfer is in the lease's blocks: the target owns the lease from now.
  virtual void Commit(const ReserveFrame& r, const KvReservation& lease, const CommitFrame& c) = 0;
  // The transfer ended without a commit: the target frees the lease (lease_id 0: none was
  // made).
  virtual void Abort(uint64_t transfer_id, uint64_t lease_id, const absl::Status& why) = 0;
};

struct KvReceiverConfig {
  // From ReserveOk to Commit; a transfer past it is aborted and its lease freed.
  absl::Duration transfer_timeout = absl::Seconds(30);
  // The largest frame accepted (a layer of the longest sequence at the widest dtype).
  size_t max_frame_bytes = size_t{1} << 30;
  // Non-empty: every connection must open with AuthPreamble(secret). Empty: loopback peers
  // only (kv_connection.h).
  std::string secret;
  // Told why a connection was refused (for the log); on its connection's thread. May be empty.
  std::function<void(const absl::Status&)> on_refused_peer;
};

struct KvReceiverStats {
  uint64_t connections = 0;    // accepted since start
  uint64_t committed = 0;      // transfers
  uint64_t aborted = 0;        // transfers that had a lease and lost it
  uint64_t refused = 0;        // Reserves answered with an Abort (no room, bad layout)
  uint64_t bytes = 0;          // frame bytes received
  uint64_t refused_peers = 0;  // connections ended unauthenticated
};

class KvReceiver {
 public:
  // Serves `listener` until Stop. `target` must outlive the receiver.
  static std::unique_ptr<KvReceiver> Start(std::unique_ptr<KvListener> listener,
                                           KvReceiveTarget& target,
                                           const KvReceiverConfig& config = {});
  ~KvReceiver();  // Stop()
  KvReceiver(const KvReceiver&) = delete;
  KvReceiver& operator=(const KvReceiver&) = delete;

  // Stops accepting, ends every connection and aborts every open transfer (the target hears
  // of each), and joins every thread. Idempotent.
  void Stop();

  std::string address() const { return address_; }
  KvReceiverStats stats() const;
  // Transfers reserved and not yet committed or aborted, over all connections.
  int open_transfers() const { return open_.load(); }

 private:
  struct Conn;
  KvReceiver(std::unique_ptr<KvListener> listener, KvReceiveTarget& target,
             const KvReceiverConfig& config);
  void AcceptLoop();
  void Serve(Conn* c);

  // Constant after construction.
  const KvReceiverConfig config_;
  KvReceiveTarget& target_;
  const std::string address_;
  std::unique_ptr<KvListener> listener_;

  std::mutex mu_;
  std::list<Conn> conns_ ABSL_GUARDED_BY(mu_);  // stable addresses; finished ones reaped
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  std::atomic<int> open_{0};
  std::atomic<uint64_t> connections_{0}, committed_{0}, aborted_{0}, refused_{0}, bytes_{0},
      refused_peers_{0};
  std::thread accept_thread_;
};

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_TRANSFER_KV_RECEIVER_H_
