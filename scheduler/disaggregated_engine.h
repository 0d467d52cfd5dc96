// DisaggregatedEngine: an Engine of prefill instances and decode instances in one process,
// each on its own device (on a CPU, its own cores), sharing one copy of the weights (DistServe's
// split, PAPERS.md). A request is admitted and prefilled by a prefill instance; once its first
// token is sampled, its KV is copied out (kvcache::KvSnapshot) and the sequence itself, sampler
// state and sink included, moves to a decode instance, which imports the KV into blocks of its
// own (block sizes and KV dtypes may differ) and decodes it to the end. Prefill steps never
// stall decode steps, so TPOT no longer pays for other requests' prompts.
//
// With several instances of a role: a request goes to the prefill instance that predicts its
// first token soonest (EngineInstance::PredictFirstToken: its own queue, and only what its
// prefix cache lacks of the prompt), predictions within 10% counting as equal; then to the
// one with the least work (running plus waiting sequences), then the most of the prompt
// cached; and to the next if that one's admission refuses it; a
// prefilled sequence goes to the decode instance with the fewest sequences running or waiting
// to join, then the most free KV.
//
// Three transports carry the KV. kInProcess hands the snapshot itself to the decode instance,
// which gives it blocks once it has room. kTcp and kShm run the protocol of separate processes
// over loopback TCP or shared memory (kvcache/transfer: a KvPusher per decode instance on the
// prefill side, a KvReceiver and KvArrivals for each decode instance): the decode instance
// leases blocks first, the layers are written into them as they arrive, and the commit brings
// the first token and the sampler state. All copy KV out of the prefill cache first, so its
// blocks are free at once. Layer-by-layer push during the prefill step is the cluster roles'
// (RemoteHandoff), not built here (see docs/disaggregation.md).
//
// Thread safety: every Engine method may be called from any thread. Each prefill instance's
// handoff runs on its engine thread.
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
  // One config per instance, at least one of each role. Roles, names and handoff are set by the
  // engine; everything else (device and cores, batch limits, KV size and dtype, SLO settings)
  // per instance.
  std::vector<EngineInstanceConfig> prefill;
  std::vector<EngineInstanceConfig> decode;
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

class DisaggregatedEngine : public Engine {
 public:
  // Loads the weights once (onto the first decode instance's device), then starts every
  // instance.
  static absl::StatusOr<std::unique_ptr<DisaggregatedEngine>> Create(
      const DisaggregatedEngineConfig& config, const model::GgufFile& file);
  ~DisaggregatedEngine() override;  // Stop()

  absl::StatusOr<Admission> Submit(std::vector<SequenceRequest> requests) override;
  void Stop() override;
  InstanceStats stats() const override;
  const model::ModelConfig& model_config() const override {
    return decode_[0]->inst->model_config();
  }
  int kv_capacity_tokens() const override;

  int num_prefill() const { return static_cast<int>(prefill_.size()); }
  int num_decode() const { return static_cast<int>(decode_.size()); }
  EngineInstance& prefill(int i = 0) { return *prefill_[i]->inst; }
  EngineInstance& decode(int i = 0) { return *decode_[i]->inst; }
  HandoverStats handover_stats() const;
  KvTransportKind transport() const { return transport_; }
  // kTcp and kShm only (null otherwise): decode instance i's receiver and the pusher to it.
  const kvcache::KvReceiver* receiver(int i = 0) const { return decode_[i]->receiver.get(); }
  const kvcache::KvPusher* pusher(int i = 0) const { return decode_[i]->pusher.get(); }

 private:
  // A decode instance and, for kTcp and kShm, its receiving end and the pusher that feeds it
  // (shared by every prefill instance).
  struct DecodeSide {
    std::unique_ptr<EngineInstance> inst;
    std::unique_ptr<KvArrivals> arrivals;
    std::unique_ptr<kvcache::KvReceiver> receiver;
    std::unique_ptr<kvcache::KvPusher> pusher;
    // Sequences sent its way that have not reached the instance yet (pushes queued or in
    // flight, arrivals not paired): with its running and waiting ones, its load.
    int queued() const;
  };
  // A prefill instance and its handoff, which runs on its engine thread.
  class PrefillSide : public PrefillHandoff {
   public:
    explicit PrefillSide(DisaggregatedEngine* owner) : owner_(owner) {}
    absl::Status SendKv(const Sequence& seq, kvcache::KvManager& kv) override;
    void Commit(std::unique_ptr<Sequence> seq) override;
    // Refuses while prefilled sequences wait for room on every decode instance.
    absl::Status CanAccept() const override;

    std::unique_ptr<EngineInstance> inst;

   private:
    DisaggregatedEngine* owner_;
    // SendKv's snapshot, taken by the Commit that follows it.
    std::unique_ptr<kvcache::KvSnapshot> pending_;
  };

  DisaggregatedEngine() = default;
  // The decode side a prefilled sequence goes to now.
  DecodeSide& PickDecode();
  void Handover(DecodeSide& d, std::unique_ptr<Sequence> seq,
                std::unique_ptr<kvcache::KvSnapshot> kv);

  // Decode instances are created first and stopped last: a prefill step may hand a sequence
  // over until every prefill instance has stopped. Stop ends, in order: prefill instances,
  // pushers, receivers, arrivals, decode instances.
  std::vector<std::unique_ptr<DecodeSide>> decode_;
  std::vector<std::unique_ptr<PrefillSide>> prefill_;
  KvTransportKind transport_ = KvTransportKind::kInProcess;
  std::optional<kernels::KvDType> wire_dtype_;
  absl::Duration reserve_timeout_;
  std::atomic<uint64_t> next_transfer_{1};
  std::atomic<uint64_t> next_prefill_{0};  // where Submit's search starts among equals

  std::atomic<uint64_t> handed_{0}, handed_bytes_{0};
  std::atomic<double> handover_seconds_{0};
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_DISAGGREGATED_ENGINE_H_
