#include "kernels/cpu/sample.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <utility>

#include "common/check.h"
#include "common/exp_non_positive.h"
#include "kernels/ref/sample_ref.h"

namespace tandem::kernels::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

size_t RoundUp64(size_t n) { return (n + 63) / 64 * 64; }

inline float Sanitized(float v) { return v == v ? v : kNegInf; }

using ::tandem::ExpNonPositive;

// The passes over the vocabulary run in fixed blocks of kBlock with a scalar tail: -O2 only
// vectorizes loops that need no peel or epilogue.
constexpr int kBlock = 16;

// The largest entry, NaN skipped (-inf when there is none).
float MaxOf(const float* v, int n) {
  float lane[kBlock];
  for (float& l : lane) l = kNegInf;
  int i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    for (int j = 0; j < kBlock; ++j) lane[j] = v[i + j] > lane[j] ? v[i + j] : lane[j];
  }
  float m = kNegInf;
  for (float l : lane) m = l > m ? l : m;
  for (; i < n; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// e[i] = exp((l[i] - max) * inv_t); NaN gives 0.
void ExpPass(const float* __restrict l, float max, float inv_t, float* __restrict e, int n) {
  int i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    for (int j = 0; j < kBlock; ++j) e[i + j] = ExpNonPositive((l[i + j] - max) * inv_t);
  }
  for (; i < n; ++i) e[i] = ExpNonPositive((l[i] - max) * inv_t);
}

// min-p keeps double(l) - double(max) >= min_p_log (see SampleParams). That is monotone in l,
// so it holds exactly for the floats l >= the returned one: one float comparison per token
// makes the same decision as the reference's double arithmetic.
float MinPFloor(float max, double min_p_log) {
  if (min_p_log == -std::numeric_limits<double>::infinity()) return kNegInf;
  const auto passes = [&](float l) { return double{l} - double{max} >= min_p_log; };
  float f = static_cast<float>(
      std::max(double{max} + min_p_log, double{std::numeric_limits<float>::lowest()}));
  while (passes(f) && f > kNegInf) f = std::nextafter(f, kNegInf);
  while (!passes(f)) f = std::nextafter(f, max);  // max itself passes: min_p_log <= 0
  return f;
}

// Zeroes e[i] unless token i is at least as likely as `cut` and l[i] >= floor (NaN never is).
void KeepSurvivors(const float* __restrict l, const SampleCandidate& cut, float floor,
                   float* __restrict e, int n) {
  const float cut_l = cut.logit;
  const int32_t cut_id = cut.id;
  const auto keep = [&](float v, int32_t id, float w) {
    const int32_t k = ((v > cut_l) | ((v == cut_l) & (id <= cut_id))) & (v >= floor);
    return std::bit_cast<float>(std::bit_cast<int32_t>(w) & -k);
  };
  int i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    for (int j = 0; j < kBlock; ++j) e[i + j] = keep(l[i + j], i + j, e[i + j]);
  }
  for (; i < n; ++i) e[i] = keep(l[i], i, e[i]);
}

double SumOf(const float* v, int n) {
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

inline bool MoreLikely(const SampleCandidate& a, const SampleCandidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// Leaves the k most likely of logits[0, n) in cand[0, k), unordered. 0 < k < n.
void SelectTopK(const float* logits, int n, int k, SampleCandidate* cand) {
  constexpr int kHeapMax = 256;  // above this nth_element beats a heap
  if (k > kHeapMax) {
    for (int i = 0; i < n; ++i) cand[i] = {Sanitized(logits[i]), i};
    std::nth_element(cand, cand + k - 1, cand + n, &MoreLikely);
    return;
  }
  // A heap of the k best so far whose front is the least likely of them; ids rise through the
  // scan, so an equal logit never displaces an earlier (lower) id.
  for (int i = 0; i < k; ++i) cand[i] = {Sanitized(logits[i]), i};
  std::make_heap(cand, cand + k, &MoreLikely);
  for (int i = k; i < n;) {
    // Skip whole blocks with nothing above the front (a vectorized test; NaN never is).
    for (; i + kBlock <= n; i += kBlock) {
      int hit = 0;
      for (int j = 0; j < kBlock; ++j) hit |= logits[i + j] > cand[0].logit;
      if (hit) break;
    }
    for (const int end = std::min(i + kBlock, n); i < end; ++i) {
      const float l = Sanitized(logits[i]);
      if (l > cand[0].logit) {
        std::pop_heap(cand, cand + k, &MoreLikely);
        cand[k - 1] = {l, i};
        std::push_heap(cand, cand + k, &MoreLikely);
      }
    }
  }
}

// Reorders cand[0, n) so that cand[0, m) is the smallest set of most likely candidates whose
// weights e[id] sum to >= target, and returns m (n when none does). Weighted quickselect,
// expected O(n); only the last few dozen candidates are sorted.
int SelectNucleus(SampleCandidate* cand, int n, const float* e, double target) {
  int lo = 0, hi = n;
  double need = target;     // mass still missing once cand[0, lo) is in
  double range_mass = 0.0;  // mass of cand[lo, hi)
  for (int i = 0; i < n; ++i) range_mass += e[cand[i].id];
  constexpr int kSortBelow = 32;
  constexpr int kSamples = 64;
  while (hi - lo > kSortBelow) {
    const int m = hi - lo;
    SampleCandidate pivot;
    if (m >= 16 * kSamples) {
      // A pivot near the boundary, estimated from evenly spaced samples (positions are
      // unrelated to likelihood), so each pass leaves little on the boundary's side.
      SampleCandidate sample[kSamples];
      double sample_mass = 0.0;
      for (int j = 0; j < kSamples; ++j) {
        sample[j] = cand[lo + static_cast<int64_t>(m) * (2 * j + 1) / (2 * kSamples)];
        sample_mass += e[sample[j].id];
      }
      std::sort(sample, sample + kSamples, &MoreLikely);
      const double want = range_mass > 0.0 ? need / range_mass * sample_mass : 0.0;
      double cum = 0.0;
      int j = 0;
      while (j < kSamples - 1 && cum + e[sample[j].id] < want) cum += e[sample[j++].id];
      pivot = sample[j];
    } else {
      SampleCandidate a = cand[lo], b = cand[lo + m / 2], c = cand[hi - 1];
      if (MoreLikely(b, a)) std::swap(a, b);
      if (MoreLikely(c, b)) std::swap(b, c);
      if (MoreLikely(b, a)) std::swap(a, b);
      pivot = b;  // median of three
    }
    SampleCandidate* split = std::partition(
        cand + lo, cand + hi, [&](const SampleCandidate& x) { return MoreLikely(x, pivot); });
    const int mid = static_cast<int>(split - cand);
    double upper = 0.0;
    for (int i = lo; i < mid; ++i) upper += e[cand[i].id];
    if (upper >= need) {
      hi = mid;  // the boundary is among the more likely ones
      range_mass = upper;
      continue;
    }
    need -= upper;
    // The pivot is the most likely of [mid, hi): it joins next.
    int q = mid;
    while (cand[q].id != pivot.id) ++q;
    std::swap(cand[q], cand[mid]);
    need -= e[cand[mid].id];
    range_mass -= upper + e[cand[mid].id];
    lo = mid + 1;
    if (need <= 0.0) return lo;
  }
  std::sort(cand + lo, cand + hi, &MoreLikely);
  for (int i = lo; i < hi; ++i) {
    need -= e[cand[i].id];
    if (need <= 0.0) return i + 1;
  }
  return hi;  // rounding left the sum a hair short: all of [lo, hi)
}

SampleCandidate LeastLikely(const SampleCandidate* cand, int n) {
  SampleCandidate least = cand[0];
  for (int i = 1; i < n; ++i) {
    if (MoreLikely(least, cand[i])) least = cand[i];
  }
  return least;
}

struct RowResult {
  int32_t id;
  float max;  // the largest logit (NaN skipped)
};

RowResult SampleRow(const float* logits, int vocab, float temperature, int32_t top_k, float top_p,
                    float min_p, float u, const SampleScratch& s) {
  const float max = MaxOf(logits, vocab);
  int32_t arg = 0;  // the first maximum; 0 when nothing is above -inf
  if (max > kNegInf) {
    while (logits[arg] != max) ++arg;
  }
  // Greedy; or no finite maximum: all -inf (id 0), or +inf, which takes all the mass.
  if (temperature == 0.0f || !std::isfinite(max)) return {arg, max};

  float* e = s.e;
  const float inv_t = 1.0f / temperature;
  if (std::isfinite(inv_t)) {
    ExpPass(logits, max, inv_t, e, vocab);
  } else {
    // A subnormal temperature: only the maximum keeps any mass (0 * inf would be NaN).
    for (int i = 0; i < vocab; ++i) e[i] = logits[i] == max ? 1.0f : 0.0f;
  }
  const float floor = MinPFloor(max, min_p > 0.0f ? double{temperature} * std::log(double{min_p})
                                                  : -std::numeric_limits<double>::infinity());

  // The survivors of top-k and top-p are the candidates at least as likely as `cut`.
  SampleCandidate cut{kNegInf, std::numeric_limits<int32_t>::max()};
  SampleCandidate* cand = s.cand;
  const bool use_top_k = top_k > 0 && top_k < vocab;
  const bool use_top_p = top_p < 1.0f;
  if (use_top_k) {
    SelectTopK(logits, vocab, top_k, cand);
    int n = top_k;
    if (use_top_p) {
      double mass = 0.0;  // top-p renormalizes the mass after top-k, before min-p
      n = 0;
      for (int i = 0; i < top_k; ++i) {
        mass += e[cand[i].id];
        if (cand[i].logit >= floor) cand[n++] = cand[i];
      }
      n = SelectNucleus(cand, n, e, double{top_p} * mass);
    }
    cut = LeastLikely(cand, n);
  } else if (use_top_p) {
    const double target = double{top_p} * SumOf(e, vocab);
    // Most nuclei lie within a few temperatures of the maximum: when the tokens there already
    // hold the target mass, only they are candidates.
    const float near = max - 8.0f * temperature;
    const float near_floor = std::max(near, floor);
    double near_mass = 0.0;
    for (int i = 0; i < vocab; ++i) {
      if (logits[i] >= near_floor) near_mass += e[i];  // NaN never is
    }
    const bool only_near = near_mass >= target;
    int n = 0;
    for (int i = 0; i < vocab; ++i) {
      const float l = Sanitized(logits[i]);
      if (only_near ? l >= near_floor : (e[i] > 0.0f && l >= floor)) cand[n++] = {l, i};
    }
    n = SelectNucleus(cand, n, e, target);
    cut = LeastLikely(cand, n);
  }

  if (use_top_k || use_top_p || floor > kNegInf) KeepSurvivors(logits, cut, floor, e, vocab);
  const double total = SumOf(e, vocab);
  const double x = double{u} * total;
  // Skip whole chunks by their sums, then walk the chunk that holds x.
  constexpr int kChunk = 256;
  double cum = 0.0;
  int begin = 0;
  for (; begin + kChunk < vocab; begin += kChunk) {
    const double chunk = SumOf(e + begin, kChunk);
    if (x < cum + chunk) break;
    cum += chunk;
  }
  for (int i = begin; i < vocab; ++i) {
    if (e[i] <= 0.0f) continue;
    cum += e[i];
    if (x < cum) return {i, max};
  }
  // x landed past the end through rounding: the last token with mass (the maximum always has
  // e = 1, so there is one).
  for (int i = vocab - 1; i >= 0; --i) {
    if (e[i] > 0.0f) return {i, max};
  }
  return {arg, max};
}

float Logprob(const float* logits, int vocab, float max, int32_t id, float* scratch) {
  const float l = logits[id];
  if (std::isnan(l)) return kNegInf;
  if (!std::isfinite(max)) return l == max ? 0.0f : kNegInf;
  ExpPass(logits, max, 1.0f, scratch, vocab);
  const double log_z = double{max} + std::log(SumOf(scratch, vocab));
  return static_cast<float>(double{l} - log_z);
}

}  // namespace

size_t SampleScratchBytes(int vocab) {
  return RoundUp64(sizeof(float) * vocab) + RoundUp64(sizeof(SampleCandidate) * vocab);
}

SampleScratch SampleScratchAt(void* mem, int vocab) {
  auto* bytes = static_cast<uint8_t*>(mem);
  return SampleScratch{reinterpret_cast<float*>(bytes),
                       reinterpret_cast<SampleCandidate*>(bytes + RoundUp64(sizeof(float) * vocab)),
                       vocab};
}

void SampleRows(const SampleParams& p, int64_t begin, int64_t end, const SampleScratch& scratch) {
  TANDEM_CHECK_LE(p.vocab, scratch.vocab);
  for (int64_t r = begin; r < end; ++r) {
    const float t = p.temperature[r], top_p = p.top_p[r], min_p = p.min_p[r];
    const int32_t top_k = p.top_k[r];
    TANDEM_CHECK(t >= 0.0f && std::isfinite(t));
    TANDEM_CHECK_GE(top_k, 0);
    TANDEM_CHECK(top_p > 0.0f && top_p <= 1.0f);
    TANDEM_CHECK(min_p >= 0.0f && min_p <= 1.0f);
    const float* row = p.logits + r * p.vocab;
    const float u = ref::PhiloxUniform(p.seed[r], p.counter[r]);
    const RowResult res = SampleRow(row, p.vocab, t, top_k, top_p, min_p, u, scratch);
    p.out_ids[r] = res.id;
    if (p.out_logprobs != nullptr) {
      p.out_logprobs[r] = Logprob(row, p.vocab, res.max, res.id, scratch.e);
    }
  }
}

}  // namespace tandem::kernels::cpu
