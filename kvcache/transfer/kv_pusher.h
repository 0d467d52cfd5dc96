// KvPusher: the prefill side of a KV handover between processes. It sends the KV of prefilled
// sequences to one decode peer over a KvConnection, one transfer after another in the order
// they were pushed, by the protocol of kv_frame.h: Reserve (retried with backoff while the
// peer has no room, until the push's deadline), then one Layer per layer, then Commit with the
// first token and the sampler state. The engine thread only queues a push; the copy out of the
// prefill cache is already made (a KvSnapshot), so the prefill blocks are free before the
// transfer starts.
//
// Connections are made lazily by the `connect` function (the transport: TCP, shared memory)
// and made again after a loss, or after a peer that did not answer in time (a stalled link
// may never report an error); a lost connection fails the transfer in flight, never the
// queued ones.
//
// Thread safety: Push, queued, stats and Stop from any thread; `done` callbacks run on the
// pusher's thread (or on Stop's caller for pushes that never started).
#ifndef TANDEM_KVCACHE_TRANSFER_KV_PUSHER_H_
#define TANDEM_KVCACHE_TRANSFER_KV_PUSHER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/backend.h"
#include "kvcache/transfer/kv_connection.h"
#include "kvcache/transfer/kv_layer_queue.h"
#include "kvcache/transfer/kv_snapshot.h"

namespace tandem::kvcache {

// One layer of a layer-wise push: positions [first, n_tokens) of `layer` (LayerFrame's
// payload layout).
struct KvPayloadLayer {
  int layer = 0;
  int first = 0;
  std::string payload;
};

// The layers of one transfer as the prefill step produces them (layer-wise push): the engine
// thread adds each layer's payload as soon as that layer's KV is in its cache, then the
// commit once the first token is sampled, or cancels the stream when the sequence ends
// there. The pusher sends each layer as it comes, so the transfer runs while later layers
// still compute.
//
// Thread safety: every method from any thread.
class KvLayerStream : public KvLayerQueue<KvPayloadLayer> {
 public:
  // The layout every layer has (n_tokens positions of n_kv_heads x head_dim, in dtype).
  KvLayerStream(int n_tokens, int n_layers, int n_kv_heads, int head_dim, kernels::KvDType dtype)
      : n_tokens_(n_tokens),
        n_layers_(n_layers),
        n_kv_heads_(n_kv_heads),
        head_dim_(head_dim),
        dtype_(dtype) {}

  // `payload` holds positions [first, n_tokens) of `layer` (LayerFrame's layout). Then
  // Commit or Cancel (KvLayerQueue); the pusher takes the items with Next.
  void AddLayer(int layer, int first, std::string payload) {
    Add(KvPayloadLayer{layer, first, std::move(payload)});
  }

  int n_tokens() const { return n_tokens_; }
  int n_layers() const { return n_layers_; }
  int n_kv_heads() const { return n_kv_heads_; }
  int head_dim() const { return head_dim_; }
  kernels::KvDType dtype() const { return dtype_; }

 private:
  const int n_tokens_, n_layers_, n_kv_heads_, head_dim_;
  const kernels::KvDType dtype_;
};

struct KvPush {
  uint64_t transfer_id = 0;  // unique among this pusher's transfers
  // The KV: a snapshot taken after the prefill (push-after-prefill; first_token and
  // seed below are the commit's), or a stream of layers (layer-wise push; the stream
  // brings the commit). Exactly one.
  std::shared_ptr<const KvSnapshot> kv;
  std::shared_ptr<KvLayerStream> stream;
  kernels::KvDType wire_dtype = kernels::KvDType::kF16;  // what travels (kv's or converted)
  int32_t first_token = 0;
  uint64_t seed = 0;
  // Reserving gives up at this time (the peer had no room until then).
  absl::Time deadline = absl::InfiniteFuture();
  // Called once: OK when Commit was written, else why the transfer failed (ResourceExhausted
  // or DeadlineExceeded when the peer never had room, Unavailable for a lost connection or a
  // stopped pusher, the peer's abort otherwise).
  std::function<void(const absl::Status&)> done;
};

struct KvPusherStats {
  uint64_t committed = 0;
  uint64_t failed = 0;
  uint64_t cancelled = 0;        // streams their producer called off (the sequence ended there)
  uint64_t bytes = 0;            // frame bytes written
  uint64_t reserve_retries = 0;  // Reserves the peer refused for lack of room
  uint64_t connects = 0;
  double seconds = 0;  // committed pushes: from Reserve written to Commit written
};

class KvPusher {
 public:
  using Connect = std::function<absl::StatusOr<std::unique_ptr<KvConnection>>()>;
  explicit KvPusher(Connect connect);
  ~KvPusher();  // Stop()
  KvPusher(const KvPusher&) = delete;
  KvPusher& operator=(const KvPusher&) = delete;

  // Queues a transfer. After Stop, fails it at once with Unavailable.
  void Push(KvPush push);
  // Pushes queued and not started.
  int queued() const { return queued_.load(); }
  // Whether the push in flight waits for room on the peer (its Reserve was refused and is
  // being retried): then every queued push waits behind it.
  bool waiting_for_room() const { return waiting_for_room_.load(); }
  KvPusherStats stats() const;
  // Ends the connection (the transfer in flight fails, and the peer frees its lease), fails
  // every queued push with Unavailable and joins the thread. Idempotent.
  void Stop();

 private:
  void Loop();
  absl::Status Send(const KvPush& p);
  // Reads frames until one of `transfer_id` arrives (others are stale and dropped).
  absl::StatusOr<Frame> Await(uint64_t transfer_id, absl::Time until);
  // After ReserveOk: the layers and the commit, from the snapshot or the stream.
  absl::Status SendLayers(const KvPush& p, const std::function<absl::Status(const Frame&)>& write);

  // Constant after construction.
  const Connect connect_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<KvPush> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Pusher thread only, but Stop shuts it down from its thread: guarded for the pointer.
  std::shared_ptr<KvConnection> conn_ ABSL_GUARDED_BY(mu_);

  // Pusher thread only.
  std::optional<FrameParser> parser_;  // of the current connection
  std::string out_;

  std::atomic<int> queued_{0};
  std::atomic<bool> waiting_for_room_{false};
  std::atomic<uint64_t> committed_{0}, failed_{0}, cancelled_{0}, bytes_{0}, retries_{0},
      connects_{0};
  std::atomic<double> seconds_{0};  // one writer: the pusher thread
  std::thread thread_;
};

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_TRANSFER_KV_PUSHER_H_
