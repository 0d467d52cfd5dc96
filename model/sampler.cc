#include "model/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace tandem::model {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// exp(x) for x <= 0, the only range sampling needs (x = logit - max). exp(-inf) and anything
// below float's normal range is exactly 0, so masked tokens get no mass. Cody-Waite range
// reduction x = n*ln2 + r, |r| <= ln2/2, and a degree-6 Taylor polynomial for e^r: relative
// error ~2e-7, about 2 ulp. Branch-free so the loops calling it vectorize, unlike std::exp
// which costs ~4 ns per call and dominated a 49k-entry sample.
inline float ExpNonPositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  // Selects are bit masks: a ?: here is control flow that stops the loops vectorizing.
  const int32_t keep = -static_cast<int32_t>(x >= -87.0f);  // all ones, or 0 (also for NaN)
  const float xc = std::bit_cast<float>(std::bit_cast<int32_t>(x) & keep);
  // Round to nearest by adding and removing 1.5 * 2^23 (plain SSE2 has no round instruction).
  constexpr float kRound = 12582912.0f;
  const float n = (xc * kLog2e + kRound) - kRound;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 0]
  const float result = p * std::bit_cast<float>(bits);
  return std::bit_cast<float>(std::bit_cast<int32_t>(result) & keep);
}

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
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
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
    Seed(params.seed);
  } else {
    std::random_device rd;
    Seed((static_cast<uint64_t>(rd()) << 32) ^ rd());
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

void Sampler::Seed(uint64_t seed) {
  uint64_t s = seed;
  for (uint64_t& word : rng_) word = SplitMix64(s);
}

uint64_t Sampler::NextRandom() {
  const uint64_t result = Rotl(rng_[1] * 5, 7) * 9;
  const uint64_t t = rng_[1] << 17;
  rng_[2] ^= rng_[0];
  rng_[3] ^= rng_[1];
  rng_[1] ^= rng_[2];
  rng_[0] ^= rng_[3];
  rng_[2] ^= t;
  rng_[3] = Rotl(rng_[3], 45);
  return result;
}

double Sampler::NextUniform() { return static_cast<double>(NextRandom() >> 11) * 0x1.0p-53; }

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
    const double u = NextUniform() * SumOf(w, n_vocab);
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
    ExpShifted(w, max_v, 0.0f, n_vocab);
    mass = SumOf(w, n_vocab);
    // The nucleus is a prefix of the likelihood order, so if the tokens with e >= t already
    // hold top_p of the mass, it lies among them: try a cut that keeps peaked distributions'
    // candidate lists short before taking every token.
    const double target = params_.top_p * mass;
    for (float t : {0x1.0p-10f, 0.0f}) {
      n = 0;
      double collected = 0.0;
      const float cut = std::max(t, min_e);
      // e >= cut && e > 0  <=>  e > below
      const float below = cut > 0.0f ? std::nextafter(cut, kNegInf) : 0.0f;
      for (int i = 0; i < n_vocab;) {
        i = SkipBlocksNotAbove(w, i, n_vocab, below);
        for (const int end = std::min(i + kBlock, n_vocab); i < end; ++i) {
          if (w[i] > below) {
            cand[n++] = {w[i], i};
            collected += w[i];
          }
        }
      }
      if (collected >= target || cut == min_e) break;
    }
  }
  // min-p and top-p each keep a prefix of the candidates in likelihood order, so the result
  // is the shorter prefix: when the min-p survivors hold less than top_p of the mass, they are
  // it; otherwise the nucleus lies inside them.
  if (use_top_p) {
    const double target = params_.top_p * mass;
    double kept = 0.0;
    for (int i = 0; i < n; ++i) kept += cand[i].value;
    if (kept >= target) n = SelectNucleus(cand, n, target);
  }

  double total = 0.0;
  for (int i = 0; i < n; ++i) total += cand[i].value;
  const double u = NextUniform() * total;
  double cum = 0.0;
  int32_t last = cand[0].id;
  for (int i = 0; i < n; ++i) {
    cum += cand[i].value;
    last = cand[i].id;
    if (u < cum) return cand[i].id;
  }
  return last;
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

int Sampler::SelectNucleus(Candidate* cand, int n, double target) {
  // Weighted quickselect. Invariant: cand[0, lo) are in the nucleus and more likely than
  // everything after them; `need` is the mass still missing; the boundary lies in [lo, hi).
  int lo = 0, hi = n;
  double need = target;
  constexpr int kSortBelow = 64;
  while (hi - lo > kSortBelow) {
    // Median of three as the pivot.
    Candidate a = cand[lo], b = cand[lo + (hi - lo) / 2], c = cand[hi - 1];
    if (MoreLikely(b, a)) std::swap(a, b);
    if (MoreLikely(c, b)) std::swap(b, c);
    if (MoreLikely(b, a)) std::swap(a, b);
    const Candidate pivot = b;
    // Partition [lo, hi) into strictly-more-likely-than-pivot | the rest, summing the former.
    int mid = lo;
    double upper = 0.0;
    for (int i = lo; i < hi; ++i) {
      if (MoreLikely(cand[i], pivot)) {
        upper += cand[i].value;
        std::swap(cand[i], cand[mid++]);
      }
    }
    if (upper >= need) {
      hi = mid;  // the boundary is among the more likely ones
      continue;
    }
    need -= upper;
    // The pivot is the most likely of [mid, hi): it joins the nucleus next.
    int p = mid;
    while (cand[p].id != pivot.id) ++p;
    std::swap(cand[p], cand[mid]);
    need -= cand[mid].value;
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
