// Scheduler: continuous batching with chunked prefill for one engine instance. Each step it
// picks which tokens of which sequences run: first one token for every sequence that is
// decoding, then the next chunk of any sequence still prefilling, then new sequences from the
// queue (first come, first served) while the step's token budget, max_num_seqs and the KV
// cache allow. When a decoding sequence needs a KV block and none is free, the most recently
// admitted running sequence is preempted: its blocks are freed and it goes back to the head of
// the queue to be recomputed (its sampler state is kept, so its output is unchanged).
//
// KV access: only through kvcache::BlockPool::CanAllocate (query) and BlockTable::Reserve /
// Release; Reserve (BlockPool::Allocate underneath) is the one call that mutates the pool.
//
// Thread safety: engine thread only. Must not touch tensors, sockets or sinks' consumers.
// Invariants: a sequence is in exactly one of waiting and running; a waiting sequence holds no
// blocks; num_computed <= table capacity for every sequence.
#ifndef TANDEM_SCHEDULER_SCHEDULER_H_
#define TANDEM_SCHEDULER_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "kvcache/block_pool.h"
#include "scheduler/sequence.h"

namespace tandem::scheduler {

struct SchedulerConfig {
  int max_num_seqs = 128;     // sequences running at once (holding KV)
  int max_batch_tokens = 512;  // tokens per step: decode tokens plus prefill chunks

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

  // Empties the lists, keeping their capacity.
  void Clear();
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, kvcache::BlockPool& pool);

  // Appends a new sequence to the queue.
  void Add(std::unique_ptr<Sequence> seq);
  // Plans one step and reserves the KV blocks it needs, replacing what `out` held. Empty when
  // nothing can run.
  void Schedule(SchedulerOutput* out);
  // Records that a step ran: every chunk's tokens now have KV.
  void Complete(const SchedulerOutput& out);
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
  // Frees seq's KV and moves it (running) to the head of the queue.
  void Preempt(Sequence* seq);
  // Reserves blocks so seq can hold `n_tokens` tokens; false when the pool is short.
  bool Reserve(Sequence* seq, int n_tokens);

  const SchedulerConfig config_;
  kvcache::BlockPool& pool_;
  std::vector<std::unique_ptr<Sequence>> running_;  // admission order
  std::deque<std::unique_ptr<Sequence>> waiting_;   // FCFS; preempted ones at the front
  uint64_t step_ = 0;             // Schedule calls so far; stamps Sequence::*_step
  std::vector<Sequence*> order_;  // Schedule's scratch: one pass's running sequences
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_SCHEDULER_H_
