// DisaggregatedEngine: an Engine of a prefill instance and a decode instance in one process,
// each on its own device (on a CPU, its own cores), sharing one copy of the weights (DistServe's
// split, PAPERS.md). A request is admitted and prefilled by the prefill instance; once its
// first token is sampled, its KV is copied out (kvcache::KvSnapshot) and the sequence itself,
// sampler state and sink included, moves to the decode instance, which imports the KV into
// blocks of its own (block sizes and KV dtypes may differ) and decodes it to the end. Prefill
// steps never stall decode steps, so TPOT no longer pays for other requests' prompts.
//
// Three transports carry the KV. kInProcess hands the snapshot itself to the decode instance,
// which gives it blocks once it has room. kTcp and kShm run the protocol of separate processes
// over loopback TCP or shared memory (kvcache/transfer: a KvPusher on the prefill side, a
// KvReceiver and KvArrivals on the decode side): the decode instance leases blocks first, the
// layers are written into them as they arrive, and the commit brings the first token and the
// sampler state. All copy KV out of the prefill cache first, so its blocks are free at once. Not
// built yet: layer-by-layer push during the prefill step, and more than one instance per role (see
// docs/disaggregation.md).
//
// Thread safety: every Engine method may be called from any thread. The handoff runs on the
// prefill engine thread.
#ifndef TANDEM_SCHEDULER_DISAGGREGATED_ENGINE_H_
#define TANDEM_SCHEDULER_DISAGGREGATED_ENGINE_H_

#include <atomic>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "kvcache/transfer/kv_pusher.h"
#include "kvcache/transfer/kv_receiver.h"
#include "kvcache/transfer/kv_snapshot.h"
#include "model/gguf_file.h"
#include "scheduler/engine.h"
#include "scheduler/engine_instance.h"
#include "scheduler/kv_arrivals.h"

namespace tandem::scheduler {

enum class KvTransportKind { kInProcess, kTcp, kShm };
const char* KvTransportName(KvTransportKind k);  // "inproc", "tcp", "shm"

struct DisaggregatedEngineConfig {
  // Roles, names and handoff are set by the engine; everything else (device and cores, batch
  // limits, KV size and dtype, SLO settings) per instance.
  EngineInstanceConfig prefill;
  EngineInstanceConfig decode;
  KvTransportKind transport = KvTransportKind::kInProcess;
  // kTcp, kShm: the dtype of KV on the wire (nullopt: the prefill cache's). int8 quantizes per
  // token per head, as an int8 cache does.
  std::optional<kernels::KvDType> wire_dtype;
  // kTcp, kShm: how long a transfer may wait for room on the decode side before its request fails.
  absl::Duration reserve_timeout = absl::Seconds(30);
};

struct HandoverStats {
  uint64_t sequences = 0;  // handed from prefill to decode
  uint64_t bytes = 0;      // KV bytes copied out of the prefill cache
  double seconds = 0;      // time spent copying out, on the prefill engine thread
};

class DisaggregatedEngine : public Engine, private PrefillHandoff {
 public:
  // Loads the weights once (onto the prefill instance's device), then starts both instances.
  static absl::StatusOr<std::unique_ptr<DisaggregatedEngine>> Create(
      const DisaggregatedEngineConfig& config, const model::GgufFile& file);
  ~DisaggregatedEngine() override;  // Stop()

  absl::StatusOr<Admission> Submit(std::vector<SequenceRequest> requests) override;
  void Stop() override;
  InstanceStats stats() const override;
  const model::ModelConfig& model_config() const override { return prefill_->model_config(); }
  int kv_capacity_tokens() const override;

  EngineInstance& prefill() { return *prefill_; }
  EngineInstance& decode() { return *decode_; }
  HandoverStats handover_stats() const;
  KvTransportKind transport() const { return transport_; }
  // kTcp and kShm only (null otherwise).
  const kvcache::KvReceiver* receiver() const { return receiver_.get(); }
  const kvcache::KvPusher* pusher() const { return pusher_.get(); }

 private:
  DisaggregatedEngine() = default;
  // PrefillHandoff, on the prefill engine thread.
  absl::Status SendKv(const Sequence& seq, const kvcache::KvManager& kv) override;
  void Commit(std::unique_ptr<Sequence> seq) override;
  // Refuses while prefilled sequences wait for room on the decode instance.
  absl::Status CanAccept() const override;

  // The decode instance is created first and stopped last: a prefill step may hand a
  // sequence over until the prefill instance has stopped.
  std::unique_ptr<EngineInstance> decode_;
  // kTcp, kShm: the decode side's receiver and pairing, and the prefill side's sender. Stopped in
  // the order sender, receiver, arrivals, between the two instances.
  std::unique_ptr<KvArrivals> arrivals_;
  std::unique_ptr<kvcache::KvReceiver> receiver_;
  std::unique_ptr<EngineInstance> prefill_;
  std::unique_ptr<kvcache::KvPusher> pusher_;
  KvTransportKind transport_ = KvTransportKind::kInProcess;
  kernels::KvDType wire_dtype_ = kernels::KvDType::kF16;
  bool wire_dtype_set_ = false;
  absl::Duration reserve_timeout_;
  uint64_t next_transfer_ = 1;  // prefill engine thread only

  // Prefill engine thread only: SendKv's snapshot, taken by the Commit that follows it.
  std::unique_ptr<kvcache::KvSnapshot> pending_;

  std::atomic<uint64_t> handed_{0}, handed_bytes_{0};
  std::atomic<double> handover_seconds_{0};
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_DISAGGREGATED_ENGINE_H_
