// DisaggregatedEngine: an Engine of a prefill instance and a decode instance in one process,
// each on its own device (on a CPU, its own cores), sharing one copy of the weights (DistServe's
// split, PAPERS.md). A request is admitted and prefilled by the prefill instance; once its
// first token is sampled, its KV is copied out (kvcache::KvSnapshot) and the sequence itself,
// sampler state and sink included, moves to the decode instance, which imports the KV into
// blocks of its own (block sizes and KV dtypes may differ) and decodes it to the end. Prefill
// steps never stall decode steps, so TPOT no longer pays for other requests' prompts.
//
// The in-process handover copies KV twice (out of the prefill cache, into the decode cache);
// the decode side takes arrivals in order as it has room. Not built yet: decode-side
// reservations before the push (KvManager leases), layer-by-layer push, and more than one
// instance per role (see docs/disaggregation.md).
//
// Thread safety: every Engine method may be called from any thread. The handoff runs on the
// prefill engine thread.
#ifndef TANDEM_SCHEDULER_DISAGGREGATED_ENGINE_H_
#define TANDEM_SCHEDULER_DISAGGREGATED_ENGINE_H_

#include <atomic>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kvcache/transfer/kv_snapshot.h"
#include "model/gguf_file.h"
#include "scheduler/engine.h"
#include "scheduler/engine_instance.h"

namespace tandem::scheduler {

struct DisaggregatedEngineConfig {
  // Roles, names and handoff are set by the engine; everything else (device and cores, batch
  // limits, KV size and dtype, SLO settings) per instance.
  EngineInstanceConfig prefill;
  EngineInstanceConfig decode;
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
  std::unique_ptr<EngineInstance> prefill_;

  // Prefill engine thread only: SendKv's snapshot, taken by the Commit that follows it.
  std::unique_ptr<kvcache::KvSnapshot> pending_;

  std::atomic<uint64_t> handed_{0}, handed_bytes_{0};
  std::atomic<double> handover_seconds_{0};
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_DISAGGREGATED_ENGINE_H_
