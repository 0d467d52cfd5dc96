// Sequence: one generation stream inside an engine instance (one choice of one request), and
// the SequenceSink through which the instance reports its tokens to whoever submitted it.
//
// A sequence is a list of tokens (the prompt, then every generated token) of which the first
// num_computed have their K/V in the cache. Each step runs the next chunk of not-yet-computed
// tokens; a chunk that reaches the end of the list yields logits, and a token is sampled and
// appended. Prefill and decode are the same thing seen this way (decode: a chunk of 1), and a
// preempted sequence simply drops its KV (num_computed = 0) and recomputes later.
//
// Thread safety: SequenceRequest is a value moved into the instance. A Sequence belongs to its
// instance's engine thread. SequenceSink methods are called on the engine thread, except
// cancelled(), which the sink's owner may flip from any thread.
#ifndef TANDEM_SCHEDULER_SEQUENCE_H_
#define TANDEM_SCHEDULER_SEQUENCE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kvcache/block_table.h"
#include "model/sampler.h"

namespace tandem::scheduler {

enum class SequenceEnd {
  kStopToken,  // EOS (unless ignore_eos) or one of the stop token ids; not emitted
  kLength,     // max_tokens generated
  kCancelled,  // the sink asked to stop (client gone, or a stop string matched upstream)
  kFailed,     // the instance could not run it (status says why)
  kRejected,   // SLO admission gave up on it before its first token (status: ResourceExhausted
               // with a retry-after); it cost no client anything but the wait
};
const char* SequenceEndName(SequenceEnd end);

// Receives one sequence's output. Implementations must not block: they run on the engine
// thread between steps (except OnAdmitted).
class SequenceSink {
 public:
  virtual ~SequenceSink() = default;
  // SLO admission accepted the sequence with this predicted time to first token (from its
  // arrival). Called on the submitting thread inside Submit, before the engine can call
  // anything else; not called when no prediction was made.
  virtual void OnAdmitted(absl::Duration predicted_ttft) {}
  // The sequence entered its first step (left the queue); the first `cached_tokens` of its
  // prompt came from the prefix cache (0: none, or prefix caching off).
  virtual void OnScheduled(int cached_tokens) = 0;
  // One generated token (never a stop token).
  virtual void OnToken(const model::SampleResult& token) = 0;
  // Called exactly once, last. status is OK unless end == kFailed.
  virtual void OnFinish(SequenceEnd end, const absl::Status& status) = 0;
  // Polled once per step; true makes the instance drop the sequence and free its KV.
  virtual bool cancelled() const = 0;
};

struct SequenceRequest {
  uint64_t id = 0;
  std::vector<int32_t> prompt;     // >= 1 token, ids in the vocabulary
  model::SamplingParams sampling;  // must pass Validate(vocab)
  int max_tokens = 16;             // >= 1
  std::shared_ptr<SequenceSink> sink;
  absl::Time arrival = absl::Now();
  // Latency targets; InfiniteDuration: none. A sequence with neither is best-effort.
  absl::Duration ttft_slo = absl::InfiniteDuration();
  absl::Duration tpot_slo = absl::InfiniteDuration();
};

// The instance's view of one running or waiting sequence.
struct Sequence {
  Sequence(SequenceRequest request, int vocab_size, int32_t eos_id, int block_size)
      : id(request.id),
        prompt_len(static_cast<int>(request.prompt.size())),
        max_tokens(request.max_tokens),
        tokens(std::move(request.prompt)),
        sampler(request.sampling, vocab_size, eos_id),
        table(block_size),
        sink(std::move(request.sink)),
        arrival(request.arrival),
        ttft_slo(request.ttft_slo),
        tpot_slo(request.tpot_slo) {
    sampler.AddPromptTokens(tokens);
  }

  int num_tokens() const { return static_cast<int>(tokens.size()); }
  int num_generated() const { return num_tokens() - prompt_len; }
  int num_uncomputed() const { return num_tokens() - num_computed; }
  bool best_effort() const {
    return ttft_slo == absl::InfiniteDuration() && tpot_slo == absl::InfiniteDuration();
  }
  bool has_token() const { return first_token != absl::InfinitePast(); }
  // When this sequence's next token is due. Before the first token: its TTFT deadline. After:
  // the TPOT schedule first_token + k * tpot_slo, k tokens produced so far (TPOT is an average,
  // so a sequence that ran ahead has slack). Without an SLO, `aging` after the request (or
  // after its last token) stands in for one: best-effort work comes after SLO work but its
  // deadline keeps getting closer, so it never starves.
  absl::Time NextDeadline(absl::Duration aging) const {
    if (!has_token()) {
      return arrival + (ttft_slo == absl::InfiniteDuration() ? aging : ttft_slo);
    }
    if (tpot_slo == absl::InfiniteDuration()) return last_token + aging;
    return first_token + tpot_slo * static_cast<double>(num_generated());
  }

  // Constant after construction.
  const uint64_t id;
  const int prompt_len;
  const int max_tokens;

  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int num_computed = 0;         // tokens whose KV is in the cache
  model::Sampler sampler;
  kvcache::BlockTable table;
  std::shared_ptr<SequenceSink> sink;
  absl::Time arrival;
  absl::Duration ttft_slo;  // InfiniteDuration: none
  absl::Duration tpot_slo;
  // End of the steps that produced the first and the latest token (InfinitePast: none yet).
  absl::Time first_token = absl::InfinitePast();
  absl::Time last_token = absl::InfinitePast();
  bool scheduled_once = false;  // OnScheduled sent
  int preemptions = 0;
  // The Scheduler's step counter when it last gave this sequence a chunk / last preempted it
  // (0: never). They make "already in this step" an O(1) check.
  uint64_t scheduled_step = 0;
  uint64_t preempted_step = 0;
  int scheduled_tokens = 0;  // the size of its chunk in step scheduled_step
  bool running = false;      // holds KV in the scheduler's running set (else waiting)
  // While it waits to start: the tokens the prefix cache held of it when the scheduler first
  // looked (-1: not looked yet), for the admission snapshot. Taken once per wait, not per step.
  int prefix_estimate = -1;
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_SEQUENCE_H_
