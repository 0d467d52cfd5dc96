// Scheduler: continuous batching with chunked prefill for one engine instance. Each step it
// picks which tokens of which sequences run, under the step's token budget, max_num_seqs and
// the KV cache, by one of two policies:
//   kSlo (default): decode tokens first, earliest next-token deadline first, capped so the
//     step's predicted time (LatencyModel) stays within the tightest TPOT of the sequences
//     decoding; then prefill chunks, earliest deadline first (EDF: TTFT deadline, or for
//     best-effort work arrival + aging), each chunk as large as the TPOT slack left allows.
//     A new sequence starts only if the decode step it will join still fits the budget.
//     Without a fitted model the budget is unbounded (token budget only).
//   kFcfs: every decoding sequence, then running prefills, then new sequences first come,
//     first served, under the token budget alone (the policy before SLOs).
// When a decoding sequence needs a KV block and none is free, the most recently admitted
// running sequence is preempted: its blocks are freed and it goes back to the queue to be
// recomputed (its sampler state is kept, so its output is unchanged).
//
// KV access: only through kvcache::KvManager: CanAppend (query), Append and Free. Append is
// the one call that takes blocks from the shared pool. With prefix caching on, a sequence that
// starts (or restarts after preemption) first takes the cached blocks of its longest cached
// prefix (MatchPrefix: at least its last token is always computed, for its logits), and every
// step registers the whole blocks it completed (CacheFullBlocks).
//
// Thread safety: engine thread only. Must not touch tensors, sockets or sinks' consumers.
// Invariants: a sequence is in exactly one of waiting and running; a waiting sequence holds no
// blocks; num_computed <= table capacity for every sequence.
#ifndef TANDEM_SCHEDULER_SCHEDULER_H_
#define TANDEM_SCHEDULER_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvcache/kv_manager.h"
#include "scheduler/latency_model.h"
#include "scheduler/load_snapshot.h"
#include "scheduler/sequence.h"

namespace tandem::scheduler {

enum class SchedulePolicy { kSlo, kFcfs };
// "slo" / "fcfs"; InvalidArgument otherwise.
absl::StatusOr<SchedulePolicy> ParseSchedulePolicy(std::string_view name);

struct SchedulerConfig {
  int max_num_seqs = 128;      // sequences running at once (holding KV)
  int max_batch_tokens = 512;  // tokens per step: decode tokens plus prefill chunks
  SchedulePolicy policy = SchedulePolicy::kSlo;
  // kSlo: the share of the tightest running TPOT SLO one step may take (the rest absorbs
  // prediction error), and how far in the future a best-effort sequence's deadline is set.
  double budget_margin = 0.9;
  absl::Duration best_effort_aging = absl::Seconds(5);

  // InvalidArgument unless both >= 1 and max_batch_tokens >= max_num_seqs (every running
  // sequence must be able to decode in the same step).
  absl::Status Validate() const;
};

// One sequence's share of a step: tokens [start, start + num_tokens) of seq->tokens.
struct ScheduledChunk {
  Sequence* seq = nullptr;
  int start = 0;             // == seq->num_computed when scheduled
  int num_tokens = 0;        // >= 1
  bool want_logits = false;  // the chunk reaches the end of seq->tokens: sample after it
};

// The plain value a step hands the instance (vLLM's SchedulerOutput idea). The caller owns it
// and passes the same one to every Schedule, so its vectors keep their capacity across steps.
struct SchedulerOutput {
  std::vector<ScheduledChunk> chunks;  // batch order; decode tokens first
  std::vector<Sequence*> preempted;    // lost their KV this step; back in the queue
  std::vector<Sequence*> failed;       // can never fit the KV cache; removed, caller finishes them
  int num_tokens = 0;                  // sum of chunks' num_tokens
  int num_decode = 0;                  // chunks of exactly the sequence's last token
  int num_deferred = 0;                // kSlo: decoding sequences left out by the TPOT cap
  StepShape shape;                     // what the step runs, for the latency model
  // kSlo: the step-time cap (the tightest TPOT times budget_margin); InfiniteDuration when
  // no SLO sequence is decoding or no model is set.
  absl::Duration budget = absl::InfiniteDuration();

  // Empties the lists, keeping their capacity.
  void Clear();
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, kvcache::KvManager& kv);

  // The model kSlo plans with (not owned; may be null or unfitted: no time budget then).
  void set_latency_model(const LatencyModel* model) { model_ = model; }

  // Appends a new sequence to the queue.
  void Add(std::unique_ptr<Sequence> seq);
  // Adds a sequence that arrives with its KV (the decode side of a disaggregated pair): its
  // table holds this instance's blocks for its first num_computed tokens, and exactly one
  // token, the first one sampled by the prefill side, is left to run. It joins the running
  // set and decodes from the next step. Requires CanAddRunning().
  void AddRunning(std::unique_ptr<Sequence> seq);
  bool CanAddRunning() const { return num_running() < config_.max_num_seqs; }
  // Whether `seq` may join the running set now: a free slot and, under kSlo with a fitted
  // model, a decode step of every running sequence and it that fits the tightest TPOT it will
  // run under (the rule new sequences start by; alone it always may).
  bool CanAddRunning(const Sequence& seq) const;
  // Plans one step starting at `now` and reserves the KV blocks it needs, replacing what
  // `out` held. Empty when nothing can run.
  void Schedule(SchedulerOutput* out, absl::Time now = absl::Now());
  // Records that a step ran, ending at `now`: every chunk's tokens now have KV, and chunks
  // that wanted logits stamp the sequence's token times.
  void Complete(const SchedulerOutput& out, absl::Time now = absl::Now());
  // Describes the load as it will be once the step `in_flight` (the last Schedule's output)
  // completes at `step_end`: what SLO admission simulates from. Fills `snap`'s work lists.
  void ExportLoad(const SchedulerOutput& in_flight, absl::Time step_end, LoadSnapshot* snap) const;
  // Sequences that have produced no token and whose TTFT deadline can no longer be met even
  // if they were prefilled ahead of everything else from `now` (admission mode "queue").
  // Best-effort sequences never expire. Appends to *out; removes nothing.
  void CollectExpired(absl::Time now, std::vector<Sequence*>* out) const;
  // Takes a sequence out (finished, cancelled or failed) and frees its blocks.
  std::unique_ptr<Sequence> Remove(Sequence* seq);

  bool empty() const { return running_.empty() && waiting_.empty(); }
  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  // Every sequence, running first, then waiting (for shutdown and tests).
  std::vector<Sequence*> All() const;
  // Calls fn on every sequence in All()'s order without copying the list (for the
  // per-step cancellation sweep). fn must not add or remove sequences.
  void ForEach(absl::FunctionRef<void(Sequence*)> fn) const;
  const SchedulerConfig& config() const { return config_; }

 private:
  void ScheduleFcfs(SchedulerOutput* out);
  void ScheduleSlo(SchedulerOutput* out, absl::Time now);
  // Appends a chunk of n tokens of s to out.
  void AddChunk(SchedulerOutput* out, Sequence* s, int n);
  // Reserves KV for s to run n more tokens, preempting the most recently admitted running
  // sequences not yet in this step when short. False when it still does not fit (s itself is
  // then preempted, or reported failed when it runs alone).
  bool ReserveOrPreempt(SchedulerOutput* out, Sequence* s, int n);
  // kSlo: the step cap from the sequences decoding (InfiniteDuration: none).
  absl::Duration StepBudget() const;
  bool Fits(const StepShape& shape, absl::Duration budget) const;
  // kSlo: whether a decode step of every running sequence and `seq` (its decode token at
  // `context`) fits the tightest TPOT it would run under. The rule new sequences start by and
  // arrivals join by.
  bool DecodeFitsWith(const Sequence& seq, int context) const;
  // The largest n in [0, max_n] whose prefill chunk from `start` keeps `shape` within budget.
  int MaxPrefillTokens(const StepShape& shape, int start, int max_n, absl::Duration budget) const;
  // Frees seq's KV and moves it (running) to the head of the queue.
  void Preempt(Sequence* seq);
  // Reserves blocks so seq can hold `n_tokens` tokens; false when the cache is short.
  bool Reserve(Sequence* seq, int n_tokens);
  // A waiting sequence about to start: shares the cached blocks of its prefix into its table
  // and counts them computed. Unstart undoes it when it does not start after all.
  void StartFromCache(Sequence* seq);
  void Unstart(Sequence* seq);

  const SchedulerConfig config_;
  kvcache::KvManager& kv_;
  const LatencyModel* model_ = nullptr;
  std::vector<std::unique_ptr<Sequence>> running_;  // admission order
  std::deque<std::unique_ptr<Sequence>> waiting_;   // FCFS; preempted ones at the front
  uint64_t step_ = 0;             // Schedule calls so far; stamps Sequence::*_step
  std::vector<Sequence*> order_;  // Schedule's scratch: one pass's running sequences
  std::vector<Sequence*> cands_;  // ScheduleSlo's scratch: prefill candidates in EDF order
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_SCHEDULER_H_
