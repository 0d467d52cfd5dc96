// LoadSnapshot: one engine instance's pending work as plain values, what SLO admission
// simulates from. The engine thread fills it (Scheduler::ExportLoad) at the start of every
// step, describing the state once that step completes; admission reads a copy on the
// submitting thread. The later disaggregated dispatcher builds the same value from a worker's
// heartbeat.
//
// Thread safety: a value.
#ifndef TANDEM_SCHEDULER_LOAD_SNAPSHOT_H_
#define TANDEM_SCHEDULER_LOAD_SNAPSHOT_H_

#include <cstdint>
#include <vector>

#include "absl/time/time.h"
#include "scheduler/latency_model.h"

namespace tandem::scheduler {

// A sequence that has produced its first token and decodes one token per step.
struct DecodeWork {
  int context = 0;    // positions its next decode token attends to
  int remaining = 0;  // tokens it may still generate (max_tokens - generated), >= 1
  absl::Duration tpot_slo = absl::InfiniteDuration();
};

// A sequence still to be prefilled (new, or part way through its prompt).
struct PrefillWork {
  uint64_t id = 0;
  int remaining = 0;  // prompt tokens without KV, >= 1
  int start = 0;      // position of the first of them
  int generate = 0;   // tokens it may generate after its first (max_tokens - 1 - generated)
  absl::Time deadline = absl::InfiniteFuture();  // next-token deadline (EDF key)
  absl::Duration tpot_slo = absl::InfiniteDuration();
  bool slo = false;      // false: best-effort (deadline is arrival + aging, never "missed")
  bool running = false;  // already holds KV (counts against max_num_seqs)
};

struct LoadSnapshot {
  absl::Time step_end;  // when the state below holds (end of the step in flight)
  std::vector<DecodeWork> decoding;
  std::vector<PrefillWork> prefilling;  // any order
  int max_num_seqs = 0;
  int max_batch_tokens = 0;
  double budget_margin = 0.9;
  LatencyModel model;
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_LOAD_SNAPSHOT_H_
