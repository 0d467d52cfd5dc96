// Engine: what server/ talks to, whatever runs the requests behind it: one colocated
// instance (EngineInstance), an in-process prefill/decode pair, or a router's client of remote
// workers. server/ never sees which.
//
// A request is submitted as the sequences of its choices, with its SLOs on each
// SequenceRequest; its tokens and end come back through each sequence's SequenceSink; it is
// cancelled by its sink answering cancelled() (polled every step, so cancelling needs no call
// and no lock here). Load is read with stats().
//
// Thread safety: every method may be called from any thread.
#ifndef TANDEM_SCHEDULER_ENGINE_H_
#define TANDEM_SCHEDULER_ENGINE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "model/model_config.h"
#include "scheduler/sequence.h"

namespace tandem::scheduler {

// A snapshot of an engine's load. For an engine of several instances, counts are sums and
// kv_usage is over all their blocks.
struct InstanceStats {
  int running = 0;        // sequences holding KV
  int waiting = 0;        // submitted, not running (queued or preempted)
  double kv_usage = 0.0;  // share of KV blocks in use
  // Blocks (pages) of the KV cache; with local layer groups (kvcache::KvGroups) a page holds
  // fewer layers, and a token needs one in each group.
  int kv_blocks_free = 0;
  int kv_blocks_total = 0;
  uint64_t steps = 0;
  uint64_t prefill_tokens = 0;  // tokens run in chunks that were not decode tokens
  uint64_t decode_tokens = 0;
  uint64_t preemptions = 0;
  uint64_t decode_deferred = 0;     // decode tokens left out of a step by the TPOT cap
  double latency_correction = 1.0;  // the latency model's online correction factor
  // Prefill-to-decode KV handover (zero for a colocated engine).
  uint64_t handovers = 0;           // sequences moved to a decode instance
  uint64_t handover_bytes = 0;      // KV bytes copied out of prefill caches
  double handover_seconds = 0;      // time spent copying them out
  int decode_arrivals_waiting = 0;  // prefilled sequences waiting for room to decode
  uint64_t decode_joins = 0;        // prefilled sequences that joined a decode running set
  double decode_queue_seconds = 0;  // their total wait, from arrival to joining
  uint64_t nano_steps = 0;          // steps run as two nano-batches (nano_batching)
  // Prefix caching (zero when off).
  uint64_t prefix_queried_tokens = 0;  // prompt tokens of sequences that started
  uint64_t prefix_hit_tokens = 0;      // of those, taken from the prefix cache
  int prefix_cached_blocks = 0;        // blocks in the prefix cache now
};

// What admission said about an accepted request.
struct Admission {
  // Predicted time from submission to the first token of its last choice (ZeroDuration when
  // no prediction was made: no latency model, or admission off).
  absl::Duration predicted_ttft = absl::ZeroDuration();
  bool predicted = false;
};

class Engine {
 public:
  virtual ~Engine() = default;

  // Queues the sequences of one request (its choices), all or none. Errors (no sink is
  // called then): InvalidArgument (empty prompt, bad sampling params, tokens outside the
  // vocabulary), OutOfRange (prompt + max_tokens past the context, or more than a whole KV
  // cache), ResourceExhausted (queue full, or SLO admission said no: the status carries a
  // retry-after, common/retry_after.h), Unavailable (stopped).
  virtual absl::StatusOr<Admission> Submit(std::vector<SequenceRequest> requests) = 0;
  // Fails every queued and running sequence with Unavailable and stops. Idempotent.
  virtual void Stop() = 0;

  virtual InstanceStats stats() const = 0;
  virtual const model::ModelConfig& model_config() const = 0;
  // Tokens one sequence can hold at most (prompt plus output).
  virtual int kv_capacity_tokens() const = 0;
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_ENGINE_H_
