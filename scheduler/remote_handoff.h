// RemoteHandoff: the PrefillHandoff of a prefill worker (tandemd --role=prefill). Each
// sequence it runs was routed to a decode worker by the router; once the sequence's first
// token is out, its KV is copied out of the prefill cache (kvcache::KvSnapshot, so the blocks
// are free at once) and pushed to that worker's KV address as the sequence's transfer, by one
// kvcache::KvPusher per decode worker. The sequence itself does not travel: the decode worker
// builds its own from the router's request and the commit's first token and sampler state.
// Whoever routed the sequence hears how its transfer ended.
//
// With a data plane (config.direct_planes: NCCL between GPUs, the byte plane between CPU
// workers), the transfer is direct instead (kvcache::KvNcclPusher, kv_nccl_transport.h): no
// copy out of the cache; each layer goes from the prefill cache's blocks straight into the
// blocks the decode worker reserved, after the event the step recorded behind that layer's KV
// append. The sequence's blocks stay held (one reference each, kvcache::KvManager::AddRef)
// from its layer 0 until the push is done, whatever happens to the sequence meanwhile; the
// references go back on the engine thread (EngineInstance::Post), or in Detach, which first
// ends every direct push, since no plane may read the cache once its instance stops.
//
// Thread safety: Route, Forget, queued and Stop from any thread; SendKv, Commit, OnLayer and
// Drop on the prefill engine thread; Attach and Detach as PrefillHandoff says; the `done`
// callbacks on a pusher's thread.
#ifndef TANDEM_SCHEDULER_REMOTE_HANDOFF_H_
#define TANDEM_SCHEDULER_REMOTE_HANDOFF_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kvcache/transfer/kv_data_plane.h"
#include "kvcache/transfer/kv_nccl_transport.h"
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
  // Non-null: direct transfers over this data plane (see above; `connect` still makes the
  // control connection). The decode side must run a kvcache::KvNcclReceiver of the same plane
  // kind, with the same cache layout (block size, KV dtype); wire_dtype must be unset. Must
  // outlive the handoff.
  kvcache::KvDataPlaneFactory* direct_planes = nullptr;
  // Direct: from the decode side's ReserveOk to the last layer sent; past it the plane is
  // aborted and the transfer fails.
  absl::Duration transfer_timeout = absl::Seconds(30);
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
  // Blocks of the prefill cache that direct transfers hold (taken at their layer 0, not yet
  // returned). Any thread.
  int held_blocks() const { return held_blocks_.load(); }
  // Transfers that wait for room on a decode worker: those of a pusher whose Reserve was
  // refused for lack of room (the one in flight and the ones queued behind it).
  int waiting_for_room() const;
  // Fails queued transfers and ends the connections. Idempotent.
  void Stop();
  kvcache::KvPusherStats stats() const;

  // PrefillHandoff, on the prefill engine thread.
  absl::Status SendKv(const Sequence& seq, kvcache::KvManager& kv) override;
  void Commit(std::unique_ptr<Sequence> seq) override;
  absl::Status CanAccept() const override;
  bool streams_layers() const override { return config_.layer_wise; }
  void OnLayer(int layer, std::span<Sequence* const> completing, kvcache::KvManager& kv,
               kernels::Event ready) override;
  void Drop(const Sequence& seq) override;
  void Attach(EngineInstance& instance) override;
  void Detach(kvcache::KvManager& kv) override;

 private:
  struct Route_ {
    std::string address;
    Done done;
  };

  // The pusher of a decode worker's KV address, made at first use (mu_ held).
  kvcache::KvPusher* PusherLocked(const std::string& address) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  kvcache::KvNcclPusher* DirectPusherLocked(const std::string& address,
                                            const kvcache::KvManager& kv)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Direct: starts the transfer of seq's first n_tokens positions if it was routed (holding
  // its blocks); null if not.
  std::shared_ptr<kvcache::KvNcclLayerStream> StartDirect(const Sequence& seq, int n_tokens,
                                                          kvcache::KvManager& kv);
  // Direct: queues seq's regions of `layer` (the stream's positions); an error fails the
  // hand-off (stream_errors_).
  void AddDirectLayer(const Sequence& seq, int layer, const kvcache::KvManager& kv,
                      kernels::Event ready, kvcache::KvNcclLayerStream& stream);
  // A direct transfer is done with these blocks (a pusher's thread): their references go
  // back on the engine thread.
  void Release(std::vector<int32_t> blocks);
  // Returns the references Release collected (the engine thread, or Detach).
  void ReturnReleased(kvcache::KvManager& kv);

  const RemoteHandoffConfig config_;
  // Prefill engine thread only.
  std::unique_ptr<kvcache::KvSnapshot> pending_;  // SendKv -> Commit (push-after-prefill)
  // Layer-wise transfers under way, by sequence id: OnLayer -> Commit or Drop.
  std::map<uint64_t, std::shared_ptr<kvcache::KvLayerStream>> streams_;
  // Direct transfers under way, by sequence id: OnLayer (or SendKv) -> Commit or Drop.
  std::map<uint64_t, std::shared_ptr<kvcache::KvNcclLayerStream>> direct_;
  // Layer-wise transfers that could not encode a layer: the hand-off fails with it.
  std::map<uint64_t, absl::Status> stream_errors_;
  std::string payload_;  // OnLayer's scratch

  // Held by Stop and Detach while they stop pushers (taken before mu_).
  std::mutex stop_mu_;
  mutable std::mutex mu_;
  std::map<uint64_t, Route_> routes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<kvcache::KvPusher>> pushers_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<kvcache::KvNcclPusher>> direct_pushers_
      ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  bool detached_ ABSL_GUARDED_BY(mu_) = false;  // no direct push starts after Detach

  // Direct: references to return, and the instance whose engine thread returns them. Held
  // while posting, so Detach knows no Post is under way once it cleared instance_.
  std::mutex release_mu_;
  EngineInstance* instance_ ABSL_GUARDED_BY(release_mu_) = nullptr;
  std::vector<int32_t> released_ ABSL_GUARDED_BY(release_mu_);
  std::atomic<int> held_blocks_{0};
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_REMOTE_HANDOFF_H_
