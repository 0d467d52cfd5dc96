#include "model/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/exp_non_positive.h"
#include "common/philox.h"

namespace tandem::model {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The whole-vocabulary passes below are written as plain elementwise loops or with explicit
// independent accumulators so the compiler vectorizes them without -ffast-math, and so their
// results do not depend on the instruction set.

// -O2 vectorizes only loops that need no scalar peel or epilogue, so the elementwise passes run
// in fixed blocks of kBlock with a scalar tail.
constexpr int kBlock = 16;

// The passes are also compiled for AVX2 and AVX-512 and picked at load time (GCC/Clang function
// multiversioning): about 3x faster than baseline SSE2 on a 49k vocabulary. Every variant does
// the same IEEE operations in the same order (no FMA contraction under -std=c++20, explicit
// lanes for sums), so results do not depend on the machine.
// Not under ThreadSanitizer: the clones' ifunc resolvers run during relocation, before the
// TSan runtime is up, and crash the process (the baseline variant computes the same values).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) && \
    !defined(__SANITIZE_THREAD__)
#define TANDEM_SAMPLER_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TANDEM_SAMPLER_MULTIVERSION
#endif

inline float Sanitized(float v) { return v == v ? v : kNegInf; }

// out[i] = in[i] * scale, NaN -> -inf (keeps every later comparison a strict weak order).
TANDEM_SAMPLER_MULTIVERSION void ScaleAndSanitize(const float* __restrict in, float scale,
                                                  float* __restrict out, int n) {
  int i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    for (int j = 0; j < kBlock; ++j) out[i + j] = Sanitized(in[i + j] * scale);
  }
  for (; i < n; ++i) out[i] = Sanitized(in[i] * scale);
}

TANDEM_SAMPLER_MULTIVERSION float MaxOf(const float* v, int n) {
  constexpr int kLanes = 16;
  float lane[kLanes];
  for (float& l : lane) l = kNegInf;
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lane[j] = v[i + j] > lane[j] ? v[i + j] : lane[j];
  }
  float m = kNegInf;
  for (float l : lane) m = l > m ? l : m;
  for (; i < n; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

inline float ExpAbove(float x, float floor) {
  const float e = ExpNonPositive(x);
  const int32_t keep = -static_cast<int32_t>(e >= floor);
  return std::bit_cast<float>(std::bit_cast<int32_t>(e) & keep);
}

// v[i] = exp(v[i] - shift), zeroed below `floor`. v[i] <= shift. In place: one pointer needs no
// alias check, which -O2's vectorizer will not emit.
TANDEM_SAMPLER_MULTIVERSION void ExpShifted(float* v, float shift, float floor, int n) {
  int i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    for (int j = 0; j < kBlock; ++j) v[i + j] = ExpAbove(v[i + j] - shift, floor);
  }
  for (; i < n; ++i) v[i] = ExpAbove(v[i] - shift, floor);
}

TANDEM_SAMPLER_MULTIVERSION double SumOf(const float* v, int n) {
  constexpr int kLanes = 8;
  double lane[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lane[j] += v[i + j];
  }
  double sum = 0.0;
  for (double l : lane) sum += l;
  for (; i < n; ++i) sum += v[i];
  return sum;
}

// The start of the first kBlock-entry block at or after `begin` holding an entry > t, or of the
// partial block at the end (fewer than kBlock entries, left to the caller). Lets the scalar scans
// below (argmax, top-k, top-N) skip the many blocks with nothing of interest, vectorized.
TANDEM_SAMPLER_MULTIVERSION int SkipBlocksNotAbove(const float* v, int begin, int n, float t) {
  int i = begin;
  for (; i + kBlock <= n; i += kBlock) {
    int hit = 0;
    for (int j = 0; j < kBlock; ++j) hit |= v[i + j] > t;
    if (hit) return i;
  }
  return i;
}

// As SkipBlocksNotAbove, for a block holding an entry in [lo, hi).
TANDEM_SAMPLER_MULTIVERSION int SkipBlocksNotInRange(const float* v, int begin, int n, float lo,
                                                     float hi) {
  int i = begin;
  for (; i + kBlock <= n; i += kBlock) {
    int hit = 0;
    for (int j = 0; j < kBlock; ++j) hit |= (v[i + j] >= lo) & (v[i + j] < hi);
    if (hit) return i;
  }
  return i;
}

struct MassCount {
  double mass;  // sum of the entries >= t
  int count;    // how many there are
};

TANDEM_SAMPLER_MULTIVERSION MassCount MassCountAtLeast(const float* v, int n, float t) {
  constexpr int kLanes = 8;
  double mass[kLanes] = {};
  int32_t count[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const int32_t in = v[i + j] >= t;
      mass[j] += std::bit_cast<float>(std::bit_cast<int32_t>(v[i + j]) & -in);
      count[j] += in;
    }
  }
  MassCount r{0.0, 0};
  for (int j = 0; j < kLanes; ++j) {
    r.mass += mass[j];
    r.count += count[j];
  }
  for (; i < n; ++i) {
    if (v[i] >= t) {
      r.mass += v[i];
      ++r.count;
    }
  }
  return r;
}

// MassCountAtLeast for two thresholds in one pass.
TANDEM_SAMPLER_MULTIVERSION void MassCountAtLeast2(const float* v, int n, float ta, float tb,
                                                   MassCount& at_a, MassCount& at_b) {
  constexpr int kLanes = 8;
  double mass_a[kLanes] = {}, mass_b[kLanes] = {};
  int32_t count_a[kLanes] = {}, count_b[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const int32_t bits = std::bit_cast<int32_t>(v[i + j]);
      const int32_t in_a = v[i + j] >= ta, in_b = v[i + j] >= tb;
      mass_a[j] += std::bit_cast<float>(bits & -in_a);
      mass_b[j] += std::bit_cast<float>(bits & -in_b);
      count_a[j] += in_a;
      count_b[j] += in_b;
    }
  }
  at_a = {0.0, 0};
  at_b = {0.0, 0};
  for (int j = 0; j < kLanes; ++j) {
    at_a.mass += mass_a[j];
    at_a.count += count_a[j];
    at_b.mass += mass_b[j];
    at_b.count += count_b[j];
  }
  for (; i < n; ++i) {
    if (v[i] >= ta) at_a.mass += v[i], ++at_a.count;
    if (v[i] >= tb) at_b.mass += v[i], ++at_b.count;
  }
}

// Draws from the entries >= t of v (non-negative masses), in index order, given u uniform in
// [0, their sum): whole chunks are skipped by their vectorized sums.
int32_t DrawAtLeast(const float* v, int n, float t, double u) {
  constexpr int kChunk = 256;
  double cum = 0.0;
  int begin = 0;
  for (; begin + kChunk < n; begin += kChunk) {
    const double chunk = MassCountAtLeast(v + begin, kChunk, t).mass;
    if (u < cum + chunk) break;
    cum += chunk;
  }
  int32_t last = -1;
  for (int i = begin; i < n; ++i) {
    if (!(v[i] >= t)) continue;
    cum += v[i];
    last = i;
    if (u < cum) return i;
  }
  // u landed past the end through rounding (chunked sums differ from the caller's in the last
  // bits): the last entry that qualifies.
  if (last < 0) {
    for (last = n - 1; last > 0 && !(v[last] >= t); --last) {
    }
  }
  return last;
}

// Index of the largest value, ties to the lowest index; NaN never wins; 0 when nothing is
// larger than -inf. A vectorized max, then a search for its first occurrence.
int32_t Argmax(const float* v, int n) {
  const float m = MaxOf(v, n);
  if (!(m > kNegInf)) return 0;
  // v > below  <=>  v >= m  <=>  v == m, as m is the maximum.
  const float below = std::nextafter(m, kNegInf);
  int32_t i = SkipBlocksNotAbove(v, 0, n, below);
  while (v[i] != m) ++i;
  return i;
}

absl::Status Invalid(absl::string_view field, absl::string_view rule, double got) {
  return absl::InvalidArgumentError(absl::StrCat(field, " must be ", rule, ", got ", got));
}

}  // namespace

absl::Status SamplingParams::Validate(int vocab_size) const {
  if (vocab_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("vocab_size must be > 0, got ", vocab_size));
  }
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    return Invalid("temperature", "a finite number >= 0 (0 = greedy)", temperature);
  }
  if (top_k < 0) return Invalid("top_k", ">= 0 (0 disables it)", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) return Invalid("top_p", "in (0, 1]", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f)) return Invalid("min_p", "in [0, 1]", min_p);
  if (!(std::isfinite(repetition_penalty) && repetition_penalty > 0.0f)) {
    return Invalid("repetition_penalty", "a finite number > 0 (1 disables it)", repetition_penalty);
  }
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) {
    return Invalid("presence_penalty", "in [-2, 2]", presence_penalty);
  }
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
    return Invalid("frequency_penalty", "in [-2, 2]", frequency_penalty);
  }
  if (top_logprobs < 0 || top_logprobs > kMaxTopLogprobs) {
    return Invalid("top_logprobs", absl::StrCat("in [0, ", kMaxTopLogprobs, "]"), top_logprobs);
  }
  if (top_logprobs > 0 && !logprobs) {
    return absl::InvalidArgumentError("top_logprobs requires logprobs to be true");
  }
  for (int32_t id : stop_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stop_token_ids: token id ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params, int vocab_size, int32_t eos_token_id)
    : params_(params),
      vocab_size_(vocab_size),
      eos_token_id_(eos_token_id),
      has_penalties_(params.repetition_penalty != 1.0f || params.presence_penalty != 0.0f ||
                     params.frequency_penalty != 0.0f) {
  const absl::Status valid = params.Validate(vocab_size);
  TANDEM_CHECK(valid.ok());
  if (params.has_seed) {
    seed_ = params.seed;
  } else {
    std::random_device rd;
    seed_ = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  // Without penalties the history is never read: skip its ~5 bytes per vocab entry.
  if (has_penalties_) {
    output_count_.assign(vocab_size, 0);
    seen_.assign(vocab_size, 0);
    seen_ids_.reserve(vocab_size);
  }
  work_.resize(vocab_size);
  if (params.temperature > 0.0f) cand_.resize(vocab_size);
}

double Sampler::Uniform() const {
  return PhiloxUniform(seed_, static_cast<uint64_t>(num_generated_));
}

void Sampler::MarkSeen(int32_t token) {
  if (!seen_[token]) {
    seen_[token] = 1;
    seen_ids_.push_back(token);  // capacity is vocab, never reallocates
  }
}

void Sampler::AddPromptTokens(std::span<const int32_t> tokens) {
  for (int32_t t : tokens) {
    TANDEM_CHECK(t >= 0 && t < vocab_size_);
    if (has_penalties_) MarkSeen(t);
  }
}

void Sampler::Accept(int32_t token) {
  TANDEM_CHECK(token >= 0 && token < vocab_size_);
  ++num_generated_;
  if (has_penalties_) {
    ++output_count_[token];
    MarkSeen(token);
  }
}

bool Sampler::IsStopToken(int32_t token) const {
  if (!params_.ignore_eos && eos_token_id_ >= 0 && token == eos_token_id_) return true;
  return std::find(params_.stop_token_ids.begin(), params_.stop_token_ids.end(), token) !=
         params_.stop_token_ids.end();
}

void Sampler::ApplyPenalties(std::span<float> logits) const {
  TANDEM_CHECK_EQ(static_cast<int>(logits.size()), vocab_size_);
  if (!has_penalties_) return;
  const float rep = params_.repetition_penalty;
  for (int32_t id : seen_ids_) {
    float& l = logits[id];
    if (rep != 1.0f) l = l > 0.0f ? l / rep : l * rep;
    const int32_t count = output_count_[id];
    if (count > 0) {
      l -= params_.presence_penalty + params_.frequency_penalty * static_cast<float>(count);
    }
  }
}

SampleResult Sampler::Sample(const float* logits, int vocab) {
  TANDEM_CHECK_EQ(vocab, vocab_size_);
  SampleResult result;
  if (params_.temperature == 0.0f) {
    if (has_penalties_) {
      std::copy(logits, logits + vocab, work_.begin());
      ApplyPenalties(work_);
      result.token = Argmax(work_.data(), vocab);
    } else {
      result.token = Argmax(logits, vocab);
    }
  } else {
    result.token = SampleFromLogits(logits);
  }
  if (params_.logprobs) FillLogprobs(logits, result);
  Accept(result.token);
  return result;
}

SampleResult Sampler::AcceptDeviceSample(int32_t token, float logprob) {
  SampleResult result;
  result.token = token;
  if (params_.logprobs) result.logprob = logprob;
  Accept(token);
  return result;
}

// Probabilities are kept unnormalized as e_i = exp(l_i - max): the most likely token has e = 1
// exactly, which makes min-p's threshold simply min_p, and only the survivors' sum is needed
// for the draw.
int32_t Sampler::SampleFromLogits(const float* logits) {
  const int n_vocab = vocab_size_;
  float* w = work_.data();
  ScaleAndSanitize(logits, 1.0f / params_.temperature, w, n_vocab);
  if (has_penalties_) {
    // Penalties act on the raw logits, before temperature: scale the touched entries again.
    const float inv_t = 1.0f / params_.temperature;
    for (int32_t id : seen_ids_) w[id] = logits[id];
    ApplyPenalties(work_);
    for (int32_t id : seen_ids_) w[id] = std::isnan(w[id] * inv_t) ? kNegInf : w[id] * inv_t;
  }
  const float max_v = MaxOf(w, n_vocab);
  // All -inf: no distribution. +inf: the infinite logits take all the mass; pick the first.
  if (!std::isfinite(max_v)) return Argmax(w, n_vocab);

  const bool use_top_k = params_.top_k > 0 && params_.top_k < n_vocab;
  const bool use_top_p = params_.top_p < 1.0f;
  const float min_e = params_.min_p;  // p_i >= min_p * p_max  <=>  e_i >= min_p

  if (!use_top_k && !use_top_p) {
    // Only min-p (or nothing): form e_i in place, sum the survivors, draw in id order.
    ExpShifted(w, max_v, min_e, n_vocab);
    const double u = Uniform() * SumOf(w, n_vocab);
    // Skip whole chunks by their (vectorized) sums, then walk the chunk that holds u.
    constexpr int kChunk = 256;
    double cum = 0.0;
    int begin = 0;
    for (; begin + kChunk < n_vocab; begin += kChunk) {
      const double chunk = SumOf(w + begin, kChunk);
      if (u < cum + chunk) break;
      cum += chunk;
    }
    int32_t last = 0;
    for (int i = begin; i < n_vocab; ++i) {
      if (w[i] <= 0.0f) continue;
      cum += w[i];
      last = i;
      if (u < cum) return i;
    }
    // u landed past the end through rounding (the chunked sums differ from the total in the
    // last bits): the last token with mass.
    if (w[last] <= 0.0f) last = Argmax(w, n_vocab);
    return last;
  }

  Candidate* cand = cand_.data();
  int n = 0;          // candidates in cand[0, n)
  double mass = 0.0;  // sum of e over the distribution top-p renormalizes (after top-k)
  if (use_top_k) {
    const int k = params_.top_k;
    SelectTopK(w, n_vocab, k, cand);
    for (int i = 0; i < k; ++i) {
      const float e = ExpNonPositive(cand[i].value - max_v);
      mass += e;
      if (e >= min_e && e > 0.0f) cand[n++] = {e, cand[i].id};  // min-p, compacting
    }
  } else {
    // Only top-p (and maybe min-p) over the whole vocabulary.
    ExpShifted(w, max_v, 0.0f, n_vocab);
    return SampleNucleusOfVocab(SumOf(w, n_vocab));
  }
  // min-p and top-p each keep a prefix of the candidates in likelihood order, so the result
  // is the shorter prefix: when the min-p survivors hold less than top_p of the mass, they are
  // it; otherwise the nucleus lies inside them.
  if (use_top_p) {
    const double target = params_.top_p * mass;
    double kept = 0.0;
    for (int i = 0; i < n; ++i) kept += cand[i].value;
    if (kept >= target) n = SelectNucleus(cand, n, target, kept);
  }

  // The draw walks the survivors in ascending id order, as every backend's does.
  std::sort(cand, cand + n, &Sampler::LowerId);
  double total = 0.0;
  for (int i = 0; i < n; ++i) total += cand[i].value;
  const double u = Uniform() * total;
  double cum = 0.0;
  int32_t last = cand[0].id;
  for (int i = 0; i < n; ++i) {
    cum += cand[i].value;
    last = cand[i].id;
    if (u < cum) return cand[i].id;
  }
  return last;
}

// Top-p over the whole vocabulary; w holds e_i = exp(l_i - max), `mass` their sum. Sorting or
// quickselecting ~49k (value, id) pairs costs hundreds of microseconds when the nucleus is
// large (high temperature), so the cut is found on the values in place: bisect a threshold t
// (over float bit patterns, which order positive floats) with vectorized passes that sum the
// mass at or above t, until the tokens between two thresholds lo < hi are few. Every token at
// or above hi is in the nucleus; the boundary lies among the few in [lo, hi), which go through
// SelectNucleus. min-p's threshold is the lowest lo allowed.
int32_t Sampler::SampleNucleusOfVocab(double mass) {
  const int n_vocab = vocab_size_;
  const float* w = work_.data();
  const double target = params_.top_p * mass;
  // ExpNonPositive gives 0 or at least 2^-126, so this lo takes every token with mass.
  float lo = params_.min_p > 0.0f ? params_.min_p : 0x1.0p-126f;
  MassCount at_lo = MassCountAtLeast(w, n_vocab, lo);
  if (at_lo.mass < target) {
    // min-p keeps less than the nucleus: its survivors are the result.
    return DrawAtLeast(w, n_vocab, lo, Uniform() * at_lo.mass);
  }
  float hi = std::nextafter(1.0f, 2.0f);  // above every e
  MassCount at_hi{0.0, 0};
  // A first cut that brackets most distributions well: peaked ones hold top_p above it in a few
  // tokens, flat ones hold all their tokens above it.
  if (constexpr float kFirstCut = 0x1.0p-10f; kFirstCut > lo) {
    const MassCount at_cut = MassCountAtLeast(w, n_vocab, kFirstCut);
    if (at_cut.mass >= target) {
      lo = kFirstCut;
      at_lo = at_cut;
    } else {
      hi = kFirstCut;
      at_hi = at_cut;
    }
  }
  // Narrow [lo, hi) until it holds few enough tokens for SelectNucleus (a few microseconds per
  // thousand), each step being one pass over the vocabulary. A step guesses where the boundary
  // is (assuming the band's tokens spread evenly over its values, so mass density grows
  // linearly) and measures two thresholds around the guess meant to bracket ~kBandMax/4 tokens;
  // when the guess misses, the next step bisects the float bit patterns instead, which always
  // halves the range.
  constexpr int kBandMax = 512;
  bool bisect = false;
  while (at_lo.count - at_hi.count > kBandMax) {
    const uint32_t lo_bits = std::bit_cast<uint32_t>(lo), hi_bits = std::bit_cast<uint32_t>(hi);
    if (hi_bits - lo_bits <= 2) break;  // [lo, hi) holds a couple of values shared by many
    float ta = lo, tb = hi;
    if (!bisect) {
      // Model: the band's tokens spread evenly over log(e) (logits evenly over the band), so
      // the mass at or above t grows linearly as t falls: interpolate linearly in value, and
      // size the window in log space.
      const double frac = (target - at_hi.mass) / (at_lo.mass - at_hi.mass);
      const double guess = double{hi} - frac * (double{hi} - lo);
      const double half_log_width =
          std::log(double{hi} / lo) * (kBandMax / 8.0) / (at_lo.count - at_hi.count);
      ta = static_cast<float>(guess * std::exp(-half_log_width));
      tb = static_cast<float>(guess * std::exp(half_log_width));
    }
    // Keep lo < ta < tb < hi; a degenerate guess becomes a bisection.
    const uint32_t mid_bits = lo_bits + (hi_bits - lo_bits) / 2;
    if (bisect || !(ta > lo && ta < hi)) ta = std::bit_cast<float>(mid_bits);
    if (bisect || !(tb > ta && tb < hi)) tb = std::bit_cast<float>(mid_bits + 1);
    MassCount at_a, at_b;
    MassCountAtLeast2(w, n_vocab, ta, tb, at_a, at_b);
    if (at_b.mass >= target) {
      lo = tb;
      at_lo = at_b;
    } else if (at_a.mass >= target) {
      lo = ta;
      at_lo = at_a;
      hi = tb;
      at_hi = at_b;
    } else {
      hi = ta;
      at_hi = at_a;
    }
    // A guess that did not land the boundary between ta and tb makes the next step a bisection.
    bisect = !bisect && !(at_a.mass >= target && at_b.mass < target);
  }
  // The band [lo, hi): collect it and find how much of it the nucleus needs.
  Candidate* cand = cand_.data();
  int n = 0;
  for (int i = 0; i < n_vocab;) {
    i = SkipBlocksNotInRange(w, i, n_vocab, lo, hi);
    for (const int end = std::min(i + kBlock, n_vocab); i < end; ++i) {
      // Branch-free compaction: the write is unconditional, the count moves only on a hit.
      cand[n] = {w[i], i};
      n += (w[i] >= lo) & (w[i] < hi);
    }
  }
  double band_total = 0.0;
  for (int i = 0; i < n; ++i) band_total += cand[i].value;
  n = SelectNucleus(cand, n, target - at_hi.mass, band_total);
  double band_mass = 0.0;
  for (int i = 0; i < n; ++i) band_mass += cand[i].value;

  // The survivors: every token at or above hi, and the band's n in cand[0, n), drawn from in
  // ascending id order as every backend's draw is.
  std::sort(cand, cand + n, &Sampler::LowerId);
  return DrawAtLeastOr(w, n_vocab, hi, cand, n, Uniform() * (at_hi.mass + band_mass));
}

int32_t Sampler::DrawAtLeastOr(const float* w, int n, float t, const Candidate* extra, int n_extra,
                               double u) {
  constexpr int kChunk = 256;
  double cum = 0.0;
  int begin = 0;
  int e = 0;  // extra[e, n_extra) have ids >= begin
  for (; begin + kChunk < n; begin += kChunk) {
    double chunk = MassCountAtLeast(w + begin, kChunk, t).mass;
    int e_end = e;
    for (; e_end < n_extra && extra[e_end].id < begin + kChunk; ++e_end) {
      chunk += extra[e_end].value;
    }
    if (u < cum + chunk) break;
    cum += chunk;
    e = e_end;
  }
  int32_t last = -1;
  for (int i = begin; i < n; ++i) {
    float mass;
    if (w[i] >= t) {
      mass = w[i];
    } else if (e < n_extra && extra[e].id == i) {
      mass = extra[e++].value;
    } else {
      continue;
    }
    cum += mass;
    last = i;
    if (u < cum) return i;
  }
  // u landed past the end through rounding (chunked sums differ from the caller's in the last
  // bits): the last survivor.
  if (last < 0) {
    for (int i = n - 1; i >= 0 && last < 0; --i) {
      if (w[i] >= t) last = i;
    }
    if (n_extra > 0) last = std::max(last, extra[n_extra - 1].id);
  }
  return std::max(last, 0);
}

void Sampler::SelectTopK(const float* w, int n, int k, Candidate* cand) {
  if (k > kHeapTopKMax) {
    for (int i = 0; i < n; ++i) cand[i] = {w[i], i};
    std::nth_element(cand, cand + k - 1, cand + n, &Sampler::MoreLikely);
    return;
  }
  // Small k: a heap of the k best so far whose front is the least likely of them. Almost every
  // entry fails one comparison against the front, so this is one cheap pass.
  for (int i = 0; i < k; ++i) cand[i] = {w[i], i};
  std::make_heap(cand, cand + k, &Sampler::MoreLikely);
  for (int i = k; i < n;) {
    i = SkipBlocksNotAbove(w, i, n, cand[0].value);
    for (const int end = std::min(i + kBlock, n); i < end; ++i) {
      // Ids rise through the scan, so an equal value never displaces an earlier (lower) id.
      if (w[i] > cand[0].value) {
        std::pop_heap(cand, cand + k, &Sampler::MoreLikely);
        cand[k - 1] = {w[i], i};
        std::push_heap(cand, cand + k, &Sampler::MoreLikely);
      }
    }
  }
}

int Sampler::SelectNucleus(Candidate* cand, int n, double target, double total) {
  // Weighted quickselect. Invariant: cand[0, lo) are in the nucleus and more likely than
  // everything after them; `need` is the mass still missing; the boundary lies in [lo, hi),
  // whose entries sum to `range_mass`.
  int lo = 0, hi = n;
  double need = target;
  double range_mass = total;
  constexpr int kSortBelow = 64;
  constexpr int kSamples = 64;
  while (hi - lo > kSortBelow) {
    const int m = hi - lo;
    Candidate pivot;
    if (m >= 16 * kSamples) {
      // Pivot near the boundary, estimated from evenly spaced samples (ids, and so positions,
      // are unrelated to likelihood): each pass then leaves little on the boundary's side.
      Candidate sample[kSamples];
      double sample_mass = 0.0;
      for (int j = 0; j < kSamples; ++j) {
        sample[j] = cand[lo + static_cast<int64_t>(m) * (2 * j + 1) / (2 * kSamples)];
        sample_mass += sample[j].value;
      }
      std::sort(sample, sample + kSamples, &Sampler::MoreLikely);
      const double want = range_mass > 0.0 ? need / range_mass * sample_mass : 0.0;
      double cum = 0.0;
      int j = 0;
      while (j < kSamples - 1 && cum + sample[j].value < want) cum += sample[j++].value;
      pivot = sample[j];
    } else {
      Candidate a = cand[lo], b = cand[lo + m / 2], c = cand[hi - 1];
      if (MoreLikely(b, a)) std::swap(a, b);
      if (MoreLikely(c, b)) std::swap(b, c);
      if (MoreLikely(b, a)) std::swap(a, b);
      pivot = b;  // median of three
    }
    // Partition [lo, hi) into strictly-more-likely-than-pivot | the rest, summing the former.
    // Branch-free (Lomuto with an unconditional swap): the comparison is a coin flip near the
    // boundary and mispredicted branches cost more than the extra stores.
    int mid = lo;
    double upper = 0.0;
    for (int i = lo; i < hi; ++i) {
      const Candidate c = cand[i];
      const bool more = (c.value > pivot.value) | ((c.value == pivot.value) & (c.id < pivot.id));
      cand[i] = cand[mid];
      cand[mid] = c;
      mid += more;
      upper += static_cast<double>(c.value) * more;
    }
    if (upper >= need) {
      hi = mid;  // the boundary is among the more likely ones
      range_mass = upper;
      continue;
    }
    need -= upper;
    // The pivot is the most likely of [mid, hi): it joins the nucleus next.
    int p = mid;
    while (cand[p].id != pivot.id) ++p;
    std::swap(cand[p], cand[mid]);
    need -= cand[mid].value;
    range_mass -= upper + cand[mid].value;
    lo = mid + 1;
    if (need <= 0.0) return lo;
  }
  std::sort(cand + lo, cand + hi, &Sampler::MoreLikely);
  for (int i = lo; i < hi; ++i) {
    need -= cand[i].value;
    if (need <= 0.0) return i + 1;
  }
  return n;
}

void Sampler::FillLogprobs(const float* logits, SampleResult& result) {
  const int n_vocab = vocab_size_;
  float* scratch = work_.data();  // free again once the token is drawn
  ScaleAndSanitize(logits, 1.0f, scratch, n_vocab);
  const float max_v = MaxOf(scratch, n_vocab);
  double log_z = max_v;  // degenerate rows: the max entries get 0, the rest -inf
  if (std::isfinite(max_v)) {
    ExpShifted(scratch, max_v, 0.0f, n_vocab);
    log_z = max_v + std::log(SumOf(scratch, n_vocab));
  }
  const auto logprob = [&](int32_t id) -> float {
    const float l = logits[id];
    if (std::isnan(l)) return kNegInf;
    if (!std::isfinite(log_z)) return l == max_v ? 0.0f : kNegInf;
    return static_cast<float>(l - log_z);
  };
  result.logprob = logprob(result.token);

  // Top-N by streaming insertion into a sorted array: N <= 20, and almost every entry fails the
  // first comparison against the current N-th best.
  const int want = std::min(params_.top_logprobs, n_vocab);
  auto& top = result.top_logprobs;
  int have = 0;
  for (int i = 0; want > 0 && i < n_vocab;) {
    if (have == want) i = SkipBlocksNotAbove(logits, i, n_vocab, top[want - 1].logprob);
    for (const int end = std::min(i + kBlock, n_vocab); i < end; ++i) {
      const float l = logits[i];
      if (std::isnan(l)) continue;
      // Scanning in id order, a later equal value never displaces an earlier one.
      if (have == want && !(l > top[want - 1].logprob)) continue;
      int pos = have < want ? have++ : want - 1;
      while (pos > 0 && l > top[pos - 1].logprob) {
        top[pos] = top[pos - 1];
        --pos;
      }
      top[pos] = {i, l};
    }
  }
  for (int i = 0; i < have; ++i) top[i].logprob = logprob(top[i].token);
  result.num_top_logprobs = have;
}

}  // namespace tandem::model
