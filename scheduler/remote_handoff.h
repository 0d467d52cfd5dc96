// RemoteHandoff: the PrefillHandoff of a prefill worker (tandemd --role=prefill). Each
// sequence it runs was routed to a decode worker by the router; once the sequence's first
// token is out, its KV is copied out of the prefill cache (kvcache::KvSnapshot, so the blocks
// are free at once) and pushed to that worker's KV address as the sequence's transfer, by one
// kvcache::KvPusher per decode worker. The sequence itself does not travel: the decode worker
// builds its own from the router's request and the commit's first token and sampler state.
// Whoever routed the sequence hears how its transfer ended.
//
// Thread safety: Route, Forget, queued and Stop from any thread; SendKv/Commit on the prefill
// engine thread; the `done` callbacks on a pusher's thread.
#ifndef TANDEM_SCHEDULER_REMOTE_HANDOFF_H_
#define TANDEM_SCHEDULER_REMOTE_HANDOFF_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kvcache/transfer/kv_pusher.h"
#include "kvcache/transfer/kv_snapshot.h"
#include "scheduler/engine_instance.h"

namespace tandem::scheduler {

struct RemoteHandoffConfig {
  // Connects to a decode worker's KV address ("host:port"); the transport (TCP by default).
  std::function<absl::StatusOr<std::unique_ptr<kvcache::KvConnection>>(const std::string&)> connect;
  // The dtype of KV on the wire (nullopt: the prefill cache's).
  std::optional<kernels::KvDType> wire_dtype;
  // How long a transfer waits for room on the decode worker.
  absl::Duration reserve_timeout = absl::Seconds(30);
  // Layer-wise push: each layer of a completing prompt leaves as soon as the prefill step
  // has appended it, while later layers compute (the transfer's Reserve goes out at layer 0).
  // false: the whole KV is copied out and pushed after the step (push-after-prefill).
  bool layer_wise = true;
};

class RemoteHandoff : public PrefillHandoff {
 public:
  // Called once per routed sequence that reached its first token and was handed off: OK once
  // its KV is committed on the decode worker, else why not; Cancelled when a layer-wise push
  // was called off because the sequence ended on the prefill side (its sink reports that
  // end). On a pusher's thread.
  using Done = std::function<void(const absl::Status&)>;

  explicit RemoteHandoff(RemoteHandoffConfig config);
  ~RemoteHandoff() override;  // Stop()

  // Sequence `id` (its SequenceRequest::id, the router's transfer id) goes to the decode
  // worker at `decode_kv_address` once prefilled; `done` hears how the transfer ended.
  void Route(uint64_t id, std::string decode_kv_address, Done done);
  // The sequence ended before its hand-off (at its first token, failed, cancelled).
  void Forget(uint64_t id);
  // Transfers queued and not yet sent, over every decode worker.
  int queued() const;
  // Transfers that wait for room on a decode worker: those of a pusher whose Reserve was
  // refused for lack of room (the one in flight and the ones queued behind it).
  int waiting_for_room() const;
  // Fails queued transfers and ends the connections. Idempotent.
  void Stop();
  kvcache::KvPusherStats stats() const;

  // PrefillHandoff, on the prefill engine thread.
  absl::Status SendKv(const Sequence& seq, const kvcache::KvManager& kv) override;
  void Commit(std::unique_ptr<Sequence> seq) override;
  absl::Status CanAccept() const override;
  bool streams_layers() const override { return config_.layer_wise; }
  void OnLayer(int layer, std::span<Sequence* const> completing,
               const kvcache::KvManager& kv) override;
  void Drop(const Sequence& seq) override;

 private:
  struct Route_ {
    std::string address;
    Done done;
  };

  // The pusher of a decode worker's KV address, made at first use (mu_ held).
  kvcache::KvPusher* PusherLocked(const std::string& address) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RemoteHandoffConfig config_;
  // Prefill engine thread only.
  std::unique_ptr<kvcache::KvSnapshot> pending_;  // SendKv -> Commit (push-after-prefill)
  // Layer-wise transfers under way, by sequence id: OnLayer -> Commit or Drop.
  std::map<uint64_t, std::shared_ptr<kvcache::KvLayerStream>> streams_;
  // Layer-wise transfers that could not encode a layer: the hand-off fails with it.
  std::map<uint64_t, absl::Status> stream_errors_;
  std::string payload_;  // OnLayer's scratch

  mutable std::mutex mu_;
  std::map<uint64_t, Route_> routes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<kvcache::KvPusher>> pushers_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_REMOTE_HANDOFF_H_
