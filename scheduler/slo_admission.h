// SLO admission: whether a new request can meet its TTFT SLO on an instance, and whether
// taking it would make requests already queued miss theirs, decided at arrival from the
// instance's LoadSnapshot and its LatencyModel.
//
// The decision simulates the instance's own step policy (Scheduler, kSlo) forward in time:
// each step decodes every sequence that has its first token (capped by the tightest TPOT),
// fills the TPOT slack left with prefill chunks in deadline order, starts a new sequence only
// when the decode step it will join still fits, retires sequences as they reach their token
// limits, and advances the clock by the model's predicted step time. The candidate is
// admitted when its first token lands before its deadline and every SLO request queued ahead
// of or behind it that met its deadline without it still does. The candidate's own first
// token must land within budget_margin of its TTFT SLO (the margin the step budget keeps for
// prediction error); queued requests are held to their deadlines. Predicting with the policy
// itself, not a separate formula, is what keeps admission and batching consistent.
//
// Modes (--slo-admission): kReject decides at arrival (429 with Retry-After on a no);
// kQueue queues everything and drops a request (429) once its deadline can no longer be met
// (Scheduler::CollectExpired); kOff admits everything.
//
// Thread safety: pure functions over values.
#ifndef TANDEM_SCHEDULER_SLO_ADMISSION_H_
#define TANDEM_SCHEDULER_SLO_ADMISSION_H_

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "scheduler/load_snapshot.h"

namespace tandem::scheduler {

enum class AdmissionMode { kReject, kQueue, kOff };
// "reject" / "queue" / "off"; InvalidArgument otherwise.
absl::StatusOr<AdmissionMode> ParseAdmissionMode(std::string_view name);
const char* AdmissionModeName(AdmissionMode mode);

// Rejection reasons, as metric labels.
inline constexpr char kRejectTtft[] = "ttft";             // its own first token would be late
inline constexpr char kRejectTpot[] = "tpot";             // late because decode capacity is full
inline constexpr char kRejectQueued[] = "queued_ttft";    // would make a queued request late
inline constexpr char kRejectExpired[] = "expired";       // kQueue: dropped once hopeless
inline constexpr char kRejectQueueFull[] = "queue_full";  // --max-queue sequences waiting

// Status payload naming the reason of a 429 (bytes: one of the kReject* strings).
inline constexpr char kRejectReasonPayloadUrl[] = "tandem/reject_reason";
// The reason a ResourceExhausted status carries, or "" when none.
std::string RejectReasonOf(const absl::Status& status);

struct AdmissionVerdict {
  bool admit = true;
  const char* reason = "";  // one of the kReject* constants when !admit
  // When the candidates' first tokens are predicted (the latest of them), from `now`;
  // InfiniteDuration when not within the simulated horizon.
  absl::Duration predicted_ttft = absl::ZeroDuration();
  absl::Duration retry_after = absl::ZeroDuration();  // when !admit
};

// Predicted first-token times of simulated work, in the order given, from `now`
// (InfiniteDuration: not within `horizon`).
struct SimulationResult {
  std::vector<absl::Duration> first_token;
  bool waited_for_capacity = false;  // some work waited for decode capacity (TPOT budget)
  int steps = 0;
};

// Runs the step policy forward from snap.step_end over the snapshot's decoding sequences and
// `work` (the snapshot's own prefill work, possibly with candidates added) until every item
// has its first token or `horizon` after `now` has passed.
SimulationResult SimulateSteps(const LoadSnapshot& snap, std::span<const PrefillWork> work,
                               absl::Time now, absl::Duration horizon);

// Admission of `candidates` (the choices of one request: same deadline and SLOs) onto the
// instance described by `snap`. Best-effort candidates are always admitted (they yield to SLO
// work by deadline order instead); without a fitted model everything is admitted.
AdmissionVerdict CheckAdmission(const LoadSnapshot& snap, std::span<const PrefillWork> candidates,
                                absl::Time now);

// The 429 a rejection becomes: ResourceExhausted naming the predicted TTFT and the SLO, with
// the retry delay attached (common/retry_after.h).
absl::Status RejectionStatus(const AdmissionVerdict& verdict, absl::Duration ttft_slo);

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_SLO_ADMISSION_H_
