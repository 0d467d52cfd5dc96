#include "scheduler/slo_admission.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "common/retry_after.h"
#include "common/str_cat.h"

namespace tandem::scheduler {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// A hard stop for pathological snapshots (a model predicting ~0 s steps).
constexpr int kMaxSimulatedSteps = 200000;
// The retry delay is the predicted lateness, within these bounds.
constexpr absl::Duration kMinRetry = absl::Milliseconds(100);
constexpr absl::Duration kMaxRetry = absl::Seconds(60);

double Secs(absl::Duration d) {
  return d == absl::InfiniteDuration() ? kInf : absl::ToDoubleSeconds(d);
}

struct SimDecode {
  int context;
  int remaining;
  double tpot;  // seconds; kInf: none
};

struct SimItem {
  int index;  // into the caller's work
  int remaining;
  int start;
  int generate;
  double tpot;
  bool started;
};

// The largest n in [0, max_n] whose chunk from `start` keeps `shape` within `budget` seconds.
int MaxChunk(const LatencyModel& m, const StepShape& shape, int start, int max_n, double budget) {
  auto fits = [&](int n) {
    StepShape t = shape;
    t.AddPrefill(n, start);
    return m.Predict(t) <= budget;
  };
  if (max_n <= 0) return 0;
  if (budget == kInf || fits(max_n)) return max_n;
  int lo = 0, hi = max_n;
  while (hi - lo > 1) {
    const int mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
}

absl::Duration ClampRetry(absl::Duration d) {
  if (d == absl::InfiniteDuration()) return kMaxRetry;
  return std::clamp(d, kMinRetry, kMaxRetry);
}

}  // namespace

absl::StatusOr<AdmissionMode> ParseAdmissionMode(std::string_view name) {
  if (name == "reject") return AdmissionMode::kReject;
  if (name == "queue") return AdmissionMode::kQueue;
  if (name == "off") return AdmissionMode::kOff;
  return absl::InvalidArgumentError(
      StrCat("unknown SLO admission mode '", name, "' (reject, queue or off)"));
}

const char* AdmissionModeName(AdmissionMode mode) {
  switch (mode) {
    case AdmissionMode::kReject:
      return "reject";
    case AdmissionMode::kQueue:
      return "queue";
    case AdmissionMode::kOff:
      return "off";
  }
  return "?";
}

SimulationResult SimulateSteps(const LoadSnapshot& snap, std::span<const PrefillWork> work,
                               absl::Time now, absl::Duration horizon) {
  const LatencyModel& m = snap.model;
  const double margin = snap.budget_margin;
  SimulationResult r;
  r.first_token.assign(work.size(), absl::InfiniteDuration());
  if (work.empty()) return r;

  std::vector<SimDecode> decoding;
  decoding.reserve(snap.decoding.size() + work.size());
  for (const DecodeWork& d : snap.decoding) {
    decoding.push_back({d.context, d.remaining, Secs(d.tpot_slo)});
  }
  std::vector<SimItem> items;
  items.reserve(work.size());
  int running = static_cast<int>(decoding.size());
  for (size_t i = 0; i < work.size(); ++i) {
    const PrefillWork& w = work[i];
    items.push_back(
        {static_cast<int>(i), w.remaining, w.start, w.generate, Secs(w.tpot_slo), w.running});
    if (w.running) ++running;
  }
  // Earliest deadline first, as the scheduler orders them.
  std::sort(items.begin(), items.end(), [&](const SimItem& a, const SimItem& b) {
    const PrefillWork& wa = work[a.index];
    const PrefillWork& wb = work[b.index];
    return wa.deadline != wb.deadline ? wa.deadline < wb.deadline : wa.id < wb.id;
  });

  double t = std::max(0.0, absl::ToDoubleSeconds(snap.step_end - now));
  const double end = Secs(horizon);
  size_t first_pending = 0;  // items before it are done
  std::vector<int> finishing;
  std::vector<int> ran;  // decoding indices that ran this step
  while (first_pending < items.size() && t <= end && r.steps < kMaxSimulatedSteps) {
    ++r.steps;
    double tightest = kInf;
    for (const SimDecode& d : decoding) tightest = std::min(tightest, d.tpot);
    const double budget = tightest == kInf ? kInf : tightest * margin;
    StepShape shape;
    int tokens_left = snap.max_batch_tokens;
    ran.clear();
    for (size_t i = 0; i < decoding.size() && tokens_left > 0; ++i) {
      StepShape trial = shape;
      trial.AddDecode(decoding[i].context);
      if (!ran.empty() && budget != kInf && m.Predict(trial) > budget) continue;
      shape = trial;
      ran.push_back(static_cast<int>(i));
      --tokens_left;
    }
    finishing.clear();
    for (size_t k = first_pending; k < items.size() && tokens_left > 0; ++k) {
      SimItem& it = items[k];
      if (it.remaining == 0) continue;
      if (!it.started) {
        if (running >= snap.max_num_seqs) break;
        // The decode step it will join: everything running (decoding, and started prefills
        // that will decode) plus itself, within the tightest TPOT it will then run under.
        double future = budget;
        if (it.tpot != kInf) future = std::min(future, it.tpot * margin);
        if (future != kInf && running > 0) {
          StepShape decode;
          for (const SimDecode& d : decoding) decode.AddDecode(d.context + 1);
          for (size_t j = first_pending; j < items.size(); ++j) {
            if (items[j].started && items[j].remaining > 0) {
              decode.AddDecode(items[j].start + items[j].remaining + 1);
            }
          }
          decode.AddDecode(it.start + it.remaining + 1);
          if (m.Predict(decode) > future) {
            r.waited_for_capacity = true;
            break;
          }
        }
      }
      const int n = MaxChunk(m, shape, it.start, std::min(it.remaining, tokens_left), budget);
      if (n == 0) break;
      if (!it.started) {
        it.started = true;
        ++running;
      }
      shape.AddPrefill(n, it.start);
      it.start += n;
      it.remaining -= n;
      tokens_left -= n;
      if (it.remaining == 0) finishing.push_back(static_cast<int>(k));
    }
    if (shape.empty()) break;  // nothing can run: the rest never gets a first token
    const double dt = m.Predict(shape);
    t += std::max(dt, 1e-6);
    // Decode progress and departures.
    for (int i : ran) {
      ++decoding[i].context;
      --decoding[i].remaining;
    }
    size_t kept = 0;
    for (size_t i = 0; i < decoding.size(); ++i) {
      if (decoding[i].remaining > 0) {
        decoding[kept++] = decoding[i];
      } else {
        --running;
      }
    }
    decoding.resize(kept);
    for (int k : finishing) {
      const SimItem& it = items[k];
      r.first_token[it.index] = absl::Seconds(t);
      if (it.generate > 0) {
        decoding.push_back({it.start + 1, it.generate, it.tpot});
      } else {
        --running;
      }
    }
    while (first_pending < items.size() && items[first_pending].remaining == 0) ++first_pending;
  }
  return r;
}

AdmissionVerdict CheckAdmission(const LoadSnapshot& snap, std::span<const PrefillWork> candidates,
                                absl::Time now) {
  AdmissionVerdict v;
  if (candidates.empty() || !snap.model.fitted()) return v;
  std::vector<PrefillWork> work(snap.prefilling.begin(), snap.prefilling.end());
  const size_t n_queued = work.size();
  work.insert(work.end(), candidates.begin(), candidates.end());

  // Far enough to see every SLO deadline involved, and the candidates' first tokens.
  absl::Time last = now;
  for (const PrefillWork& w : work) {
    if (w.deadline != absl::InfiniteFuture()) last = std::max(last, w.deadline);
  }
  const absl::Duration horizon = std::min(last - now + absl::Seconds(1), absl::Seconds(120));
  const SimulationResult with = SimulateSteps(snap, work, now, horizon);
  for (size_t i = n_queued; i < work.size(); ++i) {
    v.predicted_ttft = std::max(v.predicted_ttft, with.first_token[i]);
  }
  if (!candidates[0].slo) return v;  // best-effort: always taken

  // 1. The candidates' own deadline, with the same margin the step budget keeps: a request
  // admitted with its first token predicted right at the deadline misses it half the time.
  absl::Duration late = absl::ZeroDuration();
  for (size_t i = n_queued; i < work.size(); ++i) {
    const absl::Duration allowed = (work[i].deadline - now) * snap.budget_margin;
    late = std::max(late, with.first_token[i] - allowed);
  }
  if (late > absl::ZeroDuration()) {
    v.admit = false;
    v.reason = with.waited_for_capacity ? kRejectTpot : kRejectTtft;
    v.retry_after = ClampRetry(late);
    return v;
  }
  // 2. Queued SLO requests it would push past their deadlines (checked against the same
  // simulation without it, so requests already doomed do not block it).
  std::vector<size_t> missing;
  for (size_t i = 0; i < n_queued; ++i) {
    if (work[i].slo && now + with.first_token[i] > work[i].deadline) missing.push_back(i);
  }
  if (missing.empty()) return v;
  const SimulationResult without =
      SimulateSteps(snap, std::span<const PrefillWork>(work.data(), n_queued), now, horizon);
  for (size_t i : missing) {
    if (now + without.first_token[i] <= work[i].deadline) {
      late = std::max(late, now + with.first_token[i] - work[i].deadline);
    }
  }
  if (late > absl::ZeroDuration()) {
    v.admit = false;
    v.reason = kRejectQueued;
    v.retry_after = ClampRetry(late);
  }
  return v;
}

absl::Status RejectionStatus(const AdmissionVerdict& verdict, absl::Duration ttft_slo) {
  auto ms = [](absl::Duration d) {
    return d == absl::InfiniteDuration() ? std::string("unbounded")
                                         : StrCat(absl::ToInt64Milliseconds(d), " ms");
  };
  std::string why;
  if (std::string_view(verdict.reason) == kRejectQueued) {
    why = "admitting it would make queued requests miss their TTFT SLOs";
  } else if (std::string_view(verdict.reason) == kRejectTpot) {
    why = StrCat("the running requests leave no decode capacity within their TPOT SLOs: ",
                 "predicted time to first token ", ms(verdict.predicted_ttft),
                 " exceeds the TTFT SLO of ", ms(ttft_slo));
  } else if (std::string_view(verdict.reason) == kRejectExpired) {
    why =
        StrCat("its TTFT SLO of ", ms(ttft_slo), " can no longer be met (it waited in the queue)");
  } else {
    why = StrCat("predicted time to first token ", ms(verdict.predicted_ttft),
                 " exceeds the TTFT SLO of ", ms(ttft_slo));
  }
  absl::Status s = WithRetryAfter(
      absl::ResourceExhaustedError(StrCat("the server is at capacity for this SLO: ", why,
                                          "; retry after ", ms(verdict.retry_after))),
      verdict.retry_after);
  s.SetPayload(kRejectReasonPayloadUrl, absl::Cord(verdict.reason));
  return s;
}

std::string RejectReasonOf(const absl::Status& status) {
  auto p = status.GetPayload(kRejectReasonPayloadUrl);
  return p ? std::string(*p) : std::string();
}

}  // namespace tandem::scheduler
