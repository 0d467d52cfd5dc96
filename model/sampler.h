// Token sampling for one sequence on the host: penalties, greedy or temperature sampling with
// top-k / top-p (nucleus) / min-p truncation, seeded RNG, logprobs.
//
// A Sampler owns one sequence's sampling state: its seed and the token counts the penalties
// need. It reads one row of float logits (vocab entries) per call and returns a token.
//
// Semantics (chosen to match OpenAI / vLLM / Hugging Face where they agree):
//   * repetition_penalty (HF / llama.cpp / vLLM): every distinct token seen in the prompt
//     (AddPromptTokens) or in the output (Accept) has its logit divided by the penalty when
//     positive and multiplied by it when negative (or zero). Applied once per distinct token.
//   * presence_penalty / frequency_penalty (OpenAI): over generated tokens only (Accept), not the
//     prompt: logit -= presence * [count > 0] + frequency * count. Applied after repetition.
//   * temperature == 0 means greedy: argmax of the penalized logits, ties to the lowest id;
//     top-k / top-p / min-p do not apply and no RNG draw is made.
//   * otherwise, in order: divide by temperature; top-k keeps the k largest (ties to lower id);
//     top-p keeps the smallest prefix of the remaining tokens, sorted by probability, whose
//     renormalized mass is >= top_p; min-p keeps tokens with p >= min_p * p_max; the token is
//     drawn from the renormalized survivors: u times their mass, walked in ascending id order,
//     gives the first id whose running sum exceeds it. top-p and min-p therefore see the
//     tempered distribution (as HF and vLLM do).
//   * u is PhiloxUniform(seed, step) (common/philox.h), the step being the number of tokens
//     this sequence generated before: the definition Backend::Sample follows on a device
//     (kernels::SampleParams), so a row drawn there or here uses the same number, and the
//     same token wherever the two agree on the survivors' masses to the last bits.
//   * logprobs are log_softmax of the raw, unmodified logits (no penalties, temperature or
//     truncation), like OpenAI and vLLM's default: they describe the model, not the sampler.
//     They are computed only when params.logprobs is set.
//
// Thread safety: a Sampler is not thread-safe; one sequence is sampled by one thread at a time.
// Different Samplers share nothing.
//
// Invariants: Sample and Accept never allocate: every buffer is sized to the vocabulary at
// construction. The same seed, the same calls and the same logits give the same tokens.
#ifndef TANDEM_MODEL_SAMPLER_H_
#define TANDEM_MODEL_SAMPLER_H_

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace tandem::model {

// Largest top_logprobs a request may ask for (OpenAI's limit).
inline constexpr int kMaxTopLogprobs = 20;

struct SamplingParams {
  float temperature = 1.0f;             // >= 0, finite; 0 = greedy
  int top_k = 0;                        // 0 = off
  float top_p = 1.0f;                   // (0, 1]; 1 = off
  float min_p = 0.0f;                   // [0, 1]; 0 = off
  float repetition_penalty = 1.0f;      // > 0; 1 = off
  float presence_penalty = 0.0f;        // [-2, 2]
  float frequency_penalty = 0.0f;       // [-2, 2]
  uint64_t seed = 0;                    // used when has_seed
  bool has_seed = false;                // false: a seed from std::random_device
  int top_logprobs = 0;                 // [0, 20]; needs logprobs
  bool logprobs = false;                // return the sampled token's logprob (and top_logprobs)
  std::vector<int32_t> stop_token_ids;  // extra stop tokens, each in [0, vocab)
  bool ignore_eos = false;              // EOS does not stop the sequence

  // InvalidArgument naming the offending field when a value is out of range.
  absl::Status Validate(int vocab_size) const;
};

struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0.0f;
};

// What one Sample call returns. A fixed-size array keeps the hot path allocation-free.
struct SampleResult {
  int32_t token = -1;
  // log_softmax(raw logits)[token]; valid only when params.logprobs.
  float logprob = 0.0f;
  // The num_top_logprobs most likely tokens under the raw distribution, most likely first
  // (ties to the lower id). Filled only when params.logprobs and top_logprobs > 0.
  std::array<TokenLogprob, kMaxTopLogprobs> top_logprobs{};
  int num_top_logprobs = 0;
};

class Sampler {
 public:
  // `params` must have passed Validate(vocab_size) (checked). eos_token_id < 0 means the model
  // has no EOS token.
  Sampler(const SamplingParams& params, int vocab_size, int32_t eos_token_id);

  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;
  Sampler(Sampler&&) = default;
  Sampler& operator=(Sampler&&) = default;

  // Records prompt tokens: they count for repetition_penalty only. Ids must be in [0, vocab).
  void AddPromptTokens(std::span<const int32_t> tokens);

  // Samples one token from `logits` ([vocab] floats, vocab == vocab_size()) and records it with
  // Accept. NaN logits are treated as -inf; if no logit is finite the result is token 0.
  SampleResult Sample(const float* logits, int vocab);

  // Records a generated token for the penalties. Sample calls it; call it directly only for
  // tokens chosen elsewhere (e.g. replaying output after the sequence moved to this sampler).
  void Accept(int32_t token);

  // True for EOS (unless ignore_eos) and for params.stop_token_ids.
  bool IsStopToken(int32_t token) const;

  // Applies repetition / presence / frequency penalties in place to `logits` ([vocab]).
  // Sample uses it; public so the exact arithmetic can be tested.
  void ApplyPenalties(std::span<float> logits) const;

  // The seed draws use (params.seed, or the random one), so a sequence that moves to another
  // worker (prefill -> decode) continues the same random stream: the receiver builds a Sampler
  // with the same params, replays the prompt (AddPromptTokens) and output (Accept), then sets
  // the seed. The draw's counter is num_generated(), which the replay restores.
  uint64_t seed() const { return seed_; }
  void set_seed(uint64_t seed) { seed_ = seed; }

  // True when Backend::Sample can draw this sequence's tokens on the device: no penalties
  // (they read the token history, which lives here) and no top_logprobs (the op returns only
  // the sampled token's logprob). The row's device parameters are params()'s temperature,
  // top_k, top_p and min_p, with seed() and num_generated() as the Philox key and counter.
  bool DeviceSamplable() const { return !has_penalties_ && params_.top_logprobs == 0; }
  // Records `token`, drawn on the device, as Sample would have (Accept), and returns it as a
  // SampleResult with `logprob` (log_softmax of the raw logits at the token; read only when
  // params.logprobs).
  SampleResult AcceptDeviceSample(int32_t token, float logprob);

  int vocab_size() const { return vocab_size_; }
  const SamplingParams& params() const { return params_; }
  int num_generated() const { return num_generated_; }

 private:
  struct Candidate {
    float value;  // logit, then exp(logit - max) once probabilities are formed
    int32_t id;
  };

  // Orders candidates most likely first; equal values go to the lower id so every selection
  // is deterministic.
  static bool MoreLikely(const Candidate& a, const Candidate& b) {
    return a.value > b.value || (a.value == b.value && a.id < b.id);
  }
  static bool LowerId(const Candidate& a, const Candidate& b) { return a.id < b.id; }
  // Draws from the entries of w[0, n) that are >= t together with `extra` (entries below t,
  // sorted by id, values equal to w's), walked in ascending id order, given u uniform in
  // [0, their total mass).
  static int32_t DrawAtLeastOr(const float* w, int n, float t, const Candidate* extra, int n_extra,
                               double u);
  // Reorders cand[0, n) so that cand[0, m) is the smallest set of most likely candidates whose
  // values sum to >= target (m = n if none does) and returns m. `total` is the sum of all n
  // values. Expected O(n).
  static int SelectNucleus(Candidate* cand, int n, double target, double total);
  // Leaves the k most likely of w[0, n) in cand[0, k), unordered. 0 < k < n.
  static void SelectTopK(const float* w, int n, int k, Candidate* cand);
  static constexpr int kHeapTopKMax = 256;  // above this nth_element is faster than a heap

  // This step's uniform in [0, 1): PhiloxUniform(seed_, num_generated_).
  double Uniform() const;
  void MarkSeen(int32_t token);
  int32_t SampleFromLogits(const float* logits);
  int32_t SampleNucleusOfVocab(double mass);
  // Uses work_ as scratch.
  void FillLogprobs(const float* logits, SampleResult& result);

  // Constant after construction.
  SamplingParams params_;
  int vocab_size_;
  int32_t eos_token_id_;
  bool has_penalties_;

  // The Philox key of the draws.
  uint64_t seed_ = 0;

  // Token history.
  std::vector<int32_t> output_count_;  // [vocab] times generated
  std::vector<uint8_t> seen_;          // [vocab] 1 if in prompt or output
  std::vector<int32_t> seen_ids_;      // distinct ids with seen_ set, capacity vocab
  int num_generated_ = 0;

  // Scratch, sized at construction.
  std::vector<float> work_;      // [vocab] processed logits
  std::vector<Candidate> cand_;  // [vocab] candidate (value, id) pairs
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_SAMPLER_H_
