// KvPusher: the prefill side of a KV handover between processes. It sends the KV of prefilled
// sequences to one decode peer over a KvConnection, one transfer after another in the order
// they were pushed, by the protocol of kv_frame.h: Reserve (retried with backoff while the
// peer has no room, until the push's deadline), then one Layer per layer, then Commit with the
// first token and the sampler state. The engine thread only queues a push; the copy out of the
// prefill cache is already made (a KvSnapshot), so the prefill blocks are free before the
// transfer starts.
//
// Connections are made lazily by the `connect` function (the transport: TCP, shared memory)
// and made again after a loss; a lost connection fails the transfer in flight, never the
// queued ones.
//
// Thread safety: Push, queued, stats and Stop from any thread; `done` callbacks run on the
// pusher's thread (or on Stop's caller for pushes that never started).
#ifndef TANDEM_KVCACHE_TRANSFER_KV_PUSHER_H_
#define TANDEM_KVCACHE_TRANSFER_KV_PUSHER_H_

#include <array>
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
#include "kvcache/transfer/kv_snapshot.h"

namespace tandem::kvcache {

struct KvPush {
  uint64_t transfer_id = 0;  // unique among this pusher's transfers
  std::shared_ptr<const KvSnapshot> kv;
  kernels::KvDType wire_dtype = kernels::KvDType::kF16;  // what travels (kv's or converted)
  int32_t first_token = 0;
  std::array<uint64_t, 4> rng_state{};
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
  KvPusherStats stats() const;
  // Ends the connection (the transfer in flight fails, and the peer frees its lease), fails
  // every queued push with Unavailable and joins the thread. Idempotent.
  void Stop();

 private:
  void Loop();
  absl::Status Send(const KvPush& p);
  // Reads frames until one of `transfer_id` arrives (others are stale and dropped).
  absl::StatusOr<Frame> Await(uint64_t transfer_id, absl::Time until);

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
  std::atomic<uint64_t> committed_{0}, failed_{0}, bytes_{0}, retries_{0}, connects_{0};
  std::atomic<double> seconds_{0};  // one writer: the pusher thread
  std::thread thread_;
};

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_TRANSFER_KV_PUSHER_H_
