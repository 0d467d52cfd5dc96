// KvLayerQueue: the hand-over between a layer-wise transfer's producer and its pusher, shared
// by both pushers (kv_pusher.h's KvLayerStream, whose layers are encoded payloads, and
// kv_nccl_transport.h's KvNcclLayerStream, whose layers are regions of the cache and the event
// that says they are written). The producer (the prefill engine thread) adds each layer as its
// KV is in the cache, then ends the queue with the commit or a cancellation; the pusher's
// thread takes the items in that order, waiting for the next one up to a deadline.
//
// Thread safety: every method from any thread.
// Invariants: nothing is added after the end (a commit or a cancel); later calls are ignored.
#ifndef TANDEM_KVCACHE_TRANSFER_KV_LAYER_QUEUE_H_
#define TANDEM_KVCACHE_TRANSFER_KV_LAYER_QUEUE_H_

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tandem::kvcache {

// `Layer` is what one layer carries (its fields are the item's for kLayer).
template <typename Layer>
class KvLayerQueue {
 public:
  struct Item : Layer {
    enum Kind { kLayer, kCommit, kCancel } kind = kLayer;
    int32_t first_token = 0;  // kCommit: the token prefill sampled
    uint64_t seed = 0;        // kCommit: the sampler's seed
    std::string reason;       // kCancel
  };

  void Add(Layer layer) {
    Item it;
    static_cast<Layer&>(it) = std::move(layer);
    Put(std::move(it), /*ends=*/false);
  }
  void Commit(int32_t first_token, uint64_t seed) {
    Item it;
    it.kind = Item::kCommit;
    it.first_token = first_token;
    it.seed = seed;
    Put(std::move(it), /*ends=*/true);
  }
  void Cancel(std::string reason) {
    Item it;
    it.kind = Item::kCancel;
    it.reason = std::move(reason);
    Put(std::move(it), /*ends=*/true);
  }

  // The pusher's side: the next item, or nullopt when none came by `until`.
  std::optional<Item> Next(absl::Time until) {
    std::unique_lock<std::mutex> lock(mu_);
    while (items_.empty()) {
      const absl::Duration left = until - absl::Now();
      if (left <= absl::ZeroDuration()) return std::nullopt;
      cv_.wait_for(lock, absl::ToChronoNanoseconds(std::min(left, absl::Seconds(1))));
    }
    Item it = std::move(items_.front());
    items_.pop_front();
    return it;
  }

 private:
  void Put(Item it, bool ends) {
    std::lock_guard<std::mutex> lock(mu_);
    if (ended_) return;
    ended_ = ends;
    items_.push_back(std::move(it));
    cv_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> items_ ABSL_GUARDED_BY(mu_);
  bool ended_ ABSL_GUARDED_BY(mu_) = false;  // a commit or a cancel was added
};

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_TRANSFER_KV_LAYER_QUEUE_H_
