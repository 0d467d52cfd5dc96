#include "kernels/ref/sample_ref.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "common/check.h"

namespace tandem::kernels::ref {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

float Sanitized(float v) { return std::isnan(v) ? -std::numeric_limits<float>::infinity() : v; }

// The first index of the largest entry (NaN read as -inf); 0 when nothing is above -inf.
int32_t ArgmaxRef(const std::vector<float>& l) {
  int32_t best = 0;
  for (int32_t i = 1; i < static_cast<int32_t>(l.size()); ++i) {
    if (l[i] > l[best]) best = i;
  }
  return best;
}

// Unnormalized weights of the survivors of the filters, 0 elsewhere; or -1 in `greedy` with the
// argmax when the row is greedy or has no finite maximum.
void SurvivorWeights(const float* logits, int vocab, const SampleRowParams& rp,
                     std::vector<double>& w, int32_t& greedy) {
  TANDEM_CHECK_GE(vocab, 1);
  std::vector<float> l(vocab);
  for (int i = 0; i < vocab; ++i) l[i] = Sanitized(logits[i]);
  const int32_t arg = ArgmaxRef(l);
  const float max = l[arg];
  w.assign(vocab, 0.0);
  greedy = -1;
  if (rp.temperature == 0.0f || !std::isfinite(max)) {
    greedy = arg;
    return;
  }
  const double t = rp.temperature;
  std::vector<double> p(vocab);
  for (int i = 0; i < vocab; ++i) p[i] = std::exp((double{l[i]} - double{max}) / t);

  // Likelihood order: larger logit first, ties to the lower id.
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });

  const int k = rp.top_k > 0 && rp.top_k < vocab ? rp.top_k : vocab;
  int m = k;
  if (rp.top_p < 1.0f) {
    double mass = 0.0;
    for (int j = 0; j < k; ++j) mass += p[order[j]];
    const double target = double{rp.top_p} * mass;
    double cum = 0.0;
    for (m = 0; m < k;) {
      cum += p[order[m++]];
      if (cum >= target) break;
    }
  }
  const double min_p_log =
      rp.min_p > 0.0f ? double{rp.temperature} * std::log(double{rp.min_p}) : -kInf;
  for (int j = 0; j < m; ++j) {
    const int32_t i = order[j];
    if (double{l[i]} - double{max} >= min_p_log && p[i] > 0.0) w[i] = p[i];
  }
}

}  // namespace

void SampleProbsRef(const float* logits, int vocab, const SampleRowParams& rp, double* probs) {
  std::vector<double> w;
  int32_t greedy;
  SurvivorWeights(logits, vocab, rp, w, greedy);
  if (greedy >= 0) {
    std::fill(probs, probs + vocab, 0.0);
    probs[greedy] = 1.0;
    return;
  }
  const double total = std::accumulate(w.begin(), w.end(), 0.0);
  for (int i = 0; i < vocab; ++i) probs[i] = w[i] / total;
}

int32_t SampleRowRef(const float* logits, int vocab, const SampleRowParams& rp, float u) {
  std::vector<double> w;
  int32_t greedy;
  SurvivorWeights(logits, vocab, rp, w, greedy);
  if (greedy >= 0) return greedy;
  const double total = std::accumulate(w.begin(), w.end(), 0.0);
  const double target = double{u} * total;
  double cum = 0.0;
  int32_t last = -1;
  for (int32_t i = 0; i < vocab; ++i) {
    if (w[i] <= 0.0) continue;
    cum += w[i];
    last = i;
    if (target < cum) return i;
  }
  return last;  // u * total rounded up to the whole sum
}

double LogSoftmaxRef(const float* logits, int vocab, int32_t id) {
  if (std::isnan(logits[id])) return -kInf;
  double max = -kInf;
  for (int i = 0; i < vocab; ++i) max = std::max(max, double{Sanitized(logits[i])});
  if (!std::isfinite(max)) return double{logits[id]} == max ? 0.0 : -kInf;
  double sum = 0.0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(double{Sanitized(logits[i])} - max);
  return double{logits[id]} - (max + std::log(sum));
}

void SampleRef(const SampleParams& p) {
  for (int r = 0; r < p.rows; ++r) {
    const float* row = p.logits + static_cast<int64_t>(r) * p.vocab;
    const SampleRowParams rp{p.temperature[r], p.top_k[r], p.top_p[r], p.min_p[r]};
    const int32_t id = SampleRowRef(row, p.vocab, rp, PhiloxUniform(p.seed[r], p.counter[r]));
    p.out_ids[r] = id;
    if (p.out_logprobs != nullptr) {
      p.out_logprobs[r] = static_cast<float>(LogSoftmaxRef(row, p.vocab, id));
    }
  }
}

}  // namespace tandem::kernels::ref
