// Placement: which worker a router gives a sequence's phase. A prefill worker by predicted
// TTFT, a decode worker by room in its KV and predicted TPOT, on the latency models the
// workers send with their heartbeats (scheduler::LatencyModel, profiled on each worker's own
// device); least loaded (fewest sequences this router has on it) while any candidate has no
// model, since predictions from some workers and counts from others do not compare.
//
// Thread safety: pure functions.
#ifndef TANDEM_SERVER_CLUSTER_PLACEMENT_H_
#define TANDEM_SERVER_CLUSTER_PLACEMENT_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tandem/v1/cluster.pb.h"

namespace tandem::server::cluster {

// One registered worker, as the router sees it.
struct WorkerInfo {
  uint64_t id = 0;
  tandem::v1::WorkerRole role = tandem::v1::WORKER_ROLE_UNSPECIFIED;
  std::string name;
  std::string control_address;
  std::string kv_address;
  int kv_capacity_tokens = 0;
  tandem::v1::WorkerLoad load;  // its last heartbeat
  absl::Time last_seen;
  // When a call to it last failed to connect or lost its connection (InfinitePast: never).
  // Placement skips it until a heartbeat comes after that.
  absl::Time suspect_since = absl::InfinitePast();
  int in_flight = 0;  // sequences this router has on it now
  // Prefill: prompt tokens of those sequences not yet past their prefill.
  int64_t prefill_tokens = 0;
  // Requests of this router that ended (stop or length) with an SLO for this worker's phase,
  // and those that met it: TTFT (arrival to first token) for a prefill worker, TPOT for a
  // decode worker.
  uint64_t slo_judged = 0;
  uint64_t slo_met = 0;
};

// The worker of `role` among `workers` for a sequence of `prompt` prompt tokens and `need`
// tokens in all, or nullptr when none can take it. Skipped: other roles, draining, suspected
// (suspect_since not older than last_seen), and a context `need` past kv_capacity_tokens.
// Among the rest, the least predicted TTFT (prefill: one step of the prompt tokens already
// queued there plus what this prompt's cached prefix leaves, `cached[i]` tokens for
// workers[i] (none when `cached` is empty), after that prefix) or TPOT (decode: a step of its
// sequences plus this one, each at `need` tokens of context), with a decode worker whose free KV
// cannot hold `need` last. Predictions within kPredictionSlack of the least count as equal: of
// those, the fewest sequences in flight wins, then the most cached prefix, then the most free KV.
// Without models on every candidate: the fewest in flight, then the most cached prefix, then the
// most free KV. Exploration: when that choice is busy (sequences of this router in flight), an idle
// candidate whose model is still unchecked (fewer than kProvenSteps engine steps run) and that
// has room takes the sequence instead, the best predicted of such first, unless its cache holds
// less of the prompt than the choice's does. A model profiled under another worker's load can
// come out several times too slow; the online correction would fix it, but only from steps
// the worker runs, which placement by prediction alone never gives it. The cost is bounded: a
// worker is explored for its first kProvenSteps steps only (the correction, an EWMA of weight
// 0.05, is then within 4% of what the steps measured).
inline constexpr uint64_t kProvenSteps = 64;
// The latency models fit their profiles to 10-25% (median error, logged at each worker's
// start), and workers profiled side by side on a busy host differ by more than their devices
// do; a prediction this close to the best one does not make a worker the better choice.
inline constexpr double kPredictionSlack = 0.10;

const WorkerInfo* PickWorker(const std::vector<const WorkerInfo*>& workers,
                             tandem::v1::WorkerRole role, int prompt, int need,
                             std::span<const int> cached = {});

// The predictions themselves, in seconds (nullopt-like -1 when the worker sent no model).
// `cached`: the prompt's leading tokens the worker's prefix cache holds.
double PredictTtftSeconds(const WorkerInfo& w, int prompt, int cached = 0);
double PredictTpotSeconds(const WorkerInfo& w, int need);

}  // namespace tandem::server::cluster

#endif  // TANDEM_SERVER_CLUSTER_PLACEMENT_H_
