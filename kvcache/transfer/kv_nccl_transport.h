// The NCCL KV transport (the direct, block-to-block path): a prefill side (KvNcclPusher) and a
// decode side (KvNcclReceiver) that move a sequence's KV from the prefill cache's blocks
// straight into the blocks the decode side reserved, over a KvDataPlane (kv_data_plane.h: NCCL
// between GPUs, kv_nccl_plane.h; a byte plane over TCP, which the tests run), while the control
// stays on a KvConnection with the frames of kv_frame.h: Reserve, ReserveOk, Commit, Abort
// (Layer frames do not occur: the data plane carries the layers).
//
// A connection opens (after the cluster secret's AuthPreamble) with a hello from the pusher:
//   "TKVN" | version u8 (1) | kind length u8 | kind ("nccl" / "bytes") |
//   layout length u32 | the prefill cache's KvDirectLayout | bootstrap length u32 | bootstrap
// where the bootstrap is the data plane's offer (for NCCL the 128-byte ncclUniqueId, made by
// the pusher per connection: one communicator per prefill/decode pair). The receiver answers
//   "TKVN" | status code u32 (0: accepted) | message length u32 | message
// after checking the kind and that the layouts match block for block (CheckDirectLayout: the
// same block size, dtype, heads, head size, and positions kept per layer, so both sides list
// the same blocks); a refusal ends the connection and fails the push with that message. Both
// sides then join the plane, and transfers run one at a time on the connection:
//   pusher: Reserve -> (ReserveOk) -> per layer, in layer order, Send of the layer's regions
//           after its ready event -> Wait for every send -> Commit.
//   receiver: on Reserve, leases blocks (KvReceiveTarget) and queues a Recv per layer into the
//           lease's regions, then answers ReserveOk; on Commit, waits for every Recv, then
//           hands the lease to the target.
//
// Failure: a transfer that ends without its Commit (a peer Abort, a cancelled stream, a lost
// connection, an error of the plane, its deadline) aborts the data plane before anything else
// (KvDataPlane::Abort, ncclCommAbort for NCCL), so no queued send or receive touches a block
// afterwards; then the receiver frees the lease (KvReceiveTarget::Abort) and the pusher reports
// `done`, after which the source blocks may be freed. The connection and its plane are not used
// again (receives queued for the rest of the transfer could otherwise match the next transfer's
// sends: the garbling vLLM's NCCL connector had); the next push connects and joins a new one.
// Deadlines are kept by a KvWatchdog on each side, which aborts the plane and shuts the
// connection down, so a call blocked in the plane or on a stalled peer returns.
//
// Thread safety: as KvPusher / KvReceiver (Push, Stop, stats from any thread; the target is
// called from the receiver's connection threads).
#ifndef TANDEM_KVCACHE_TRANSFER_KV_NCCL_TRANSPORT_H_
#define TANDEM_KVCACHE_TRANSFER_KV_NCCL_TRANSPORT_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/backend.h"
#include "kvcache/transfer/kv_connection.h"
#include "kvcache/transfer/kv_data_plane.h"
#include "kvcache/transfer/kv_frame.h"
#include "kvcache/transfer/kv_layer_queue.h"
#include "kvcache/transfer/kv_nccl_watchdog.h"
#include "kvcache/transfer/kv_receiver.h"

namespace tandem::kvcache {

// One layer of a direct push: its regions in the prefill cache and the event after which they
// hold the layer's KV.
struct KvNcclLayer {
  int layer = 0;
  std::vector<KvRegion> regions;
  kernels::Event ready;
};

// One transfer's source, layer by layer, as the prefill step produces it: after each layer's
// KV append, the engine thread adds that layer's regions in its cache (DirectLayerRegions) and
// the event it recorded on the compute stream; then the commit, or a cancel when the sequence
// ended there. Layers must come in order 0, 1, ...: each side queues its operations in that
// order. The regions must stay allocated and unwritten until the push's `done` has run.
//
// Thread safety: every method from any thread.
class KvNcclLayerStream : public KvLayerQueue<KvNcclLayer> {
 public:
  KvNcclLayerStream(int n_tokens, int n_layers) : n_tokens_(n_tokens), n_layers_(n_layers) {}

  // Then Commit or Cancel (KvLayerQueue); the pusher takes the items with Next.
  void AddLayer(int layer, std::vector<KvRegion> regions, kernels::Event ready) {
    Add(KvNcclLayer{layer, std::move(regions), ready});
  }

  int n_tokens() const { return n_tokens_; }
  int n_layers() const { return n_layers_; }

 private:
  const int n_tokens_, n_layers_;
};

struct KvNcclPush {
  uint64_t transfer_id = 0;  // unique among this pusher's transfers
  std::shared_ptr<KvNcclLayerStream> stream;
  // Reserving gives up at this time (the peer had no room until then).
  absl::Time deadline = absl::InfiniteFuture();
  // Called once: OK once Commit was written (every layer's sends done), else why not. When it
  // runs, the data plane reads no region of the stream any more.
  std::function<void(const absl::Status&)> done;
};

struct KvNcclPusherConfig {
  KvDirectLayout layout;  // the prefill cache's
  // From ReserveOk to the last send done (capped by the lease's own expiry): past it, the
  // watchdog aborts the plane.
  absl::Duration transfer_timeout = absl::Seconds(30);
  // For the hello's answer and the plane's join.
  absl::Duration connect_timeout = absl::Seconds(10);
  // How long a stream may go without a layer before its producer counts as lost.
  absl::Duration producer_timeout = absl::Seconds(60);
};

struct KvNcclStats {
  uint64_t committed = 0;
  uint64_t failed = 0;     // pusher: pushes that failed; receiver: transfers aborted after lease
  uint64_t cancelled = 0;  // pusher: streams their producer called off
  uint64_t refused = 0;    // receiver: Reserves answered with an Abort (no room, layout)
  uint64_t bytes = 0;      // KV of the committed transfers (their regions, every layer)
  uint64_t reserve_retries = 0;
  uint64_t connections = 0;     // made (pusher) or accepted (receiver)
  uint64_t refused_peers = 0;   // connections whose hello (or secret) was refused
  uint64_t planes = 0;          // data planes joined
  uint64_t planes_aborted = 0;  // data planes ended by a failure
  uint64_t watchdog_fired = 0;  // deadlines the watchdog enforced
};

class KvNcclPusher {
 public:
  using Connect = std::function<absl::StatusOr<std::unique_ptr<KvConnection>>()>;
  // `planes` must outlive the pusher.
  KvNcclPusher(Connect connect, KvDataPlaneFactory& planes, KvNcclPusherConfig config);
  ~KvNcclPusher();  // Stop()
  KvNcclPusher(const KvNcclPusher&) = delete;
  KvNcclPusher& operator=(const KvNcclPusher&) = delete;

  // Queues a transfer. After Stop, fails it at once with Unavailable.
  void Push(KvNcclPush push);
  // Pushes queued and not started.
  int queued() const { return queued_.load(); }
  // Whether the push in flight waits for room on the peer (its Reserve was refused and is
  // being retried): then every queued push waits behind it.
  bool waiting_for_room() const { return waiting_for_room_.load(); }
  KvNcclStats stats() const;
  // Aborts the plane and ends the connection (the transfer in flight fails), fails every
  // queued push with Unavailable and joins the thread. Idempotent.
  void Stop();

 private:
  void Loop();
  absl::Status Send(const KvNcclPush& p);
  // Connects, says hello and joins the plane (conn_, plane_ set on success).
  absl::Status Open();
  // Reads frames until one of `transfer_id` arrives (others are stale and dropped).
  absl::StatusOr<Frame> Await(uint64_t transfer_id, absl::Time until);
  // Aborts the plane and drops the connection: after a failed transfer, nothing of it is
  // reused.
  void Teardown(const absl::Status& why);

  // Constant after construction.
  const Connect connect_;
  KvDataPlaneFactory& planes_;
  const KvNcclPusherConfig config_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<KvNcclPush> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Pusher thread only, but Stop ends them from its thread: guarded for the pointers.
  std::shared_ptr<KvConnection> conn_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<KvDataPlane> plane_ ABSL_GUARDED_BY(mu_);

  // Pusher thread only.
  std::optional<FrameParser> parser_;
  std::string out_;

  KvWatchdog watchdog_;
  std::atomic<int> queued_{0};
  std::atomic<bool> waiting_for_room_{false};
  std::atomic<uint64_t> committed_{0}, failed_{0}, cancelled_{0}, bytes_{0}, retries_{0},
      connects_{0}, refused_{0}, planes_made_{0}, planes_aborted_{0};
  std::thread thread_;
};

struct KvNcclReceiverConfig {
  KvDirectLayout layout;  // the decode cache's
  // From ReserveOk to Commit with every receive done; past it the transfer is aborted.
  absl::Duration transfer_timeout = absl::Seconds(30);
  // For the hello and the plane's join.
  absl::Duration connect_timeout = absl::Seconds(10);
  // As KvReceiverConfig: non-empty, every connection must open with AuthPreamble(secret);
  // empty, loopback peers only.
  std::string secret;
  std::function<void(const absl::Status&)> on_refused_peer;
};

class KvNcclReceiver {
 public:
  // Serves `listener` until Stop. `target` and `planes` must outlive the receiver. The target's
  // reservations must be of config.layout's cache (else each Reserve is refused).
  static std::unique_ptr<KvNcclReceiver> Start(std::unique_ptr<KvListener> listener,
                                               KvReceiveTarget& target, KvDataPlaneFactory& planes,
                                               const KvNcclReceiverConfig& config);
  ~KvNcclReceiver();  // Stop()
  KvNcclReceiver(const KvNcclReceiver&) = delete;
  KvNcclReceiver& operator=(const KvNcclReceiver&) = delete;

  // Stops accepting, aborts every plane and open transfer (the target hears of each), joins
  // every thread. Idempotent.
  void Stop();
  std::string address() const { return address_; }
  KvNcclStats stats() const;
  int open_transfers() const { return open_.load(); }

 private:
  struct Conn;
  KvNcclReceiver(std::unique_ptr<KvListener> listener, KvReceiveTarget& target,
                 KvDataPlaneFactory& planes, const KvNcclReceiverConfig& config);
  void AcceptLoop();
  void Serve(Conn* c);

  // Constant after construction.
  const KvNcclReceiverConfig config_;
  KvReceiveTarget& target_;
  KvDataPlaneFactory& planes_;
  const std::string address_;
  std::unique_ptr<KvListener> listener_;

  std::mutex mu_;
  std::list<Conn> conns_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  KvWatchdog watchdog_;
  std::atomic<int> open_{0};
  std::atomic<uint64_t> connections_{0}, committed_{0}, aborted_{0}, refused_{0}, bytes_{0},
      refused_peers_{0}, planes_made_{0}, planes_aborted_{0};
  std::thread accept_thread_;
};

// The hello, for tests: what a pusher with `layout` and a plane of `kind` sends first.
std::string EncodeNcclHello(std::string_view kind, const KvDirectLayout& layout,
                            std::string_view bootstrap);

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_TRANSFER_KV_NCCL_TRANSPORT_H_
