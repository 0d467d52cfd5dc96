#include "server/cluster/placement.h"

#include <algorithm>
#include <optional>
#include <tuple>

#include "common/check.h"
#include "scheduler/latency_model.h"

namespace tandem::server::cluster {
namespace {

namespace v1 = tandem::v1;

std::optional<scheduler::LatencyModel> ModelOf(const WorkerInfo& w) {
  const auto& c = w.load.latency_coefficients();
  if (c.size() != scheduler::LatencyModel::kNumCoefficients) return std::nullopt;
  scheduler::LatencyModel::Coefficients k{};
  for (int i = 0; i < scheduler::LatencyModel::kNumCoefficients; ++i) k[i] = c[i];
  return scheduler::LatencyModel(k);
}

double Correction(const WorkerInfo& w) {
  const double c = w.load.latency_correction();
  return c > 0.1 ? c : 1.0;
}

int64_t FreeTokens(const WorkerInfo& w) {
  return static_cast<int64_t>(w.load.kv_blocks_free()) * std::max(1, w.load.kv_block_size());
}

bool Idle(const WorkerInfo& w) { return w.in_flight == 0 && w.load.running() == 0; }

}  // namespace

double PredictTtftSeconds(const WorkerInfo& w, int prompt, int cached) {
  const std::optional<scheduler::LatencyModel> m = ModelOf(w);
  if (!m) return -1;
  cached = std::clamp(cached, 0, prompt);
  scheduler::StepShape shape;
  shape.AddPrefill(static_cast<int>(std::min<int64_t>(w.prefill_tokens + prompt - cached, 1 << 30)),
                   cached);
  return m->PredictFitted(shape) * Correction(w);
}

double PredictTpotSeconds(const WorkerInfo& w, int need) {
  const std::optional<scheduler::LatencyModel> m = ModelOf(w);
  if (!m) return -1;
  scheduler::StepShape shape;
  const int seqs = std::max(w.in_flight, w.load.running()) + 1;
  for (int i = 0; i < seqs; ++i) shape.AddDecode(need);
  return m->PredictFitted(shape) * Correction(w);
}

const WorkerInfo* PickWorker(const std::vector<const WorkerInfo*>& workers, v1::WorkerRole role,
                             int prompt, int need, std::span<const int> cached) {
  TANDEM_CHECK(cached.empty() || cached.size() == workers.size());
  std::vector<const WorkerInfo*> candidates;
  std::vector<int> hit;  // per candidate
  bool all_modelled = true;
  for (size_t i = 0; i < workers.size(); ++i) {
    const WorkerInfo* w = workers[i];
    if (w->role != role || w->load.draining()) continue;
    if (w->suspect_since >= w->last_seen) continue;
    if (w->kv_capacity_tokens > 0 && need > w->kv_capacity_tokens) continue;
    candidates.push_back(w);
    hit.push_back(cached.empty() ? 0 : cached[i]);
    all_modelled &= ModelOf(*w).has_value();
  }
  if (candidates.empty()) return nullptr;
  std::vector<double> scores;
  double best_score = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const WorkerInfo* w = candidates[i];
    double score = !all_modelled                     ? w->in_flight
                   : role == v1::WORKER_ROLE_PREFILL ? PredictTtftSeconds(*w, prompt, hit[i])
                                                     : PredictTpotSeconds(*w, need);
    // A decode worker whose free KV (as of its last heartbeat) cannot hold the sequence goes
    // last: it would only keep it waiting.
    if (role == v1::WORKER_ROLE_DECODE && w->load.kv_block_size() > 0 && FreeTokens(*w) < need) {
      score += 1e9;
    }
    best_score = scores.empty() ? score : std::min(best_score, score);
    scores.push_back(score);
  }
  // Predictions within kPredictionSlack of the best do not tell workers apart: of those, the
  // least loaded, then the most cached prefix, then the most free KV, then the best prediction.
  const double band = all_modelled ? best_score * (1 + kPredictionSlack) : best_score;
  const auto key = [&](size_t k) {  // larger is better, compared in order
    return std::make_tuple(-candidates[k]->in_flight, hit[k], FreeTokens(*candidates[k]),
                           -scores[k]);
  };
  const WorkerInfo* best = nullptr;
  size_t chosen = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const WorkerInfo* w = candidates[i];
    if (scores[i] > band) continue;
    if (best == nullptr || key(i) > key(chosen)) {
      best = w;
      chosen = i;
    }
  }
  if (!all_modelled || best == nullptr || Idle(*best)) return best;
  // Exploration (see kProvenSteps): an idle worker whose model no step has checked yet.
  const WorkerInfo* explore = nullptr;
  double explore_score = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const WorkerInfo* w = candidates[i];
    if (!Idle(*w) || w->load.steps() >= kProvenSteps) continue;
    // Never away from a cached prefix: that costs the prompt its hit, a sure loss for a guess.
    if (hit[i] < hit[chosen]) continue;
    if (role == v1::WORKER_ROLE_DECODE && w->load.kv_block_size() > 0 && FreeTokens(*w) < need) {
      continue;
    }
    if (explore == nullptr || scores[i] < explore_score) {
      explore = w;
      explore_score = scores[i];
    }
  }
  return explore != nullptr ? explore : best;
}

}  // namespace tandem::server::cluster
