// LatencyModel: predicted wall time of one engine step from the step's shape, the number every
// SLO decision is made from (admission, the decode cap, prefill chunk sizes, later the
// disaggregated dispatcher and the nano-batch planner). Backend-neutral: it sees only the
// shape of a step and how long it took, never tensors or devices.
//
//   t = c0 + c1 * prefill_tokens + c2 * prefill_pairs + c3 * decode_seqs + c4 * decode_context
//
// c0 is the fixed cost of a step (weights streamed once, launch overhead), c1 the per-token
// cost of the GEMMs for prompt tokens, c2 the prompt's attention (query-key pairs), c3 a
// decode token with its logits row and sampling, c4 the decode attention over the context.
// DistServe fits the same terms for its two phases (REFERENCE.md).
//
// Fitted once by least squares on profiled steps (relative error, coefficients >= 0), then
// corrected online: every measured step moves a multiplicative correction toward
// measured / fitted, so a machine that slows down (another process on the cores, thermal
// limits) or speeds up is followed within tens of steps without refitting.
//
// Thread safety: a value type, not synchronized. The engine thread owns the live model and
// publishes copies for readers on other threads.
#ifndef TANDEM_SCHEDULER_LATENCY_MODEL_H_
#define TANDEM_SCHEDULER_LATENCY_MODEL_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tandem::scheduler {

// What a step runs, as the latency model sees it.
struct StepShape {
  int prefill_tokens = 0;      // tokens of chunks that are not a single decode token
  double prefill_pairs = 0;    // attention (query, key) pairs of those chunks
  int decode_seqs = 0;         // decode tokens: one per sequence, each with a logits row
  int64_t decode_context = 0;  // positions those decode tokens attend to, summed

  // Adds a prefill chunk of n tokens starting at position `start`: token i attends to
  // start + i + 1 positions.
  void AddPrefill(int n, int start) {
    prefill_tokens += n;
    prefill_pairs += static_cast<double>(n) * start + 0.5 * n * (n + 1.0);
  }
  // Adds one decode token at position `context - 1` (it attends to `context` positions).
  void AddDecode(int context) {
    ++decode_seqs;
    decode_context += context;
  }
  bool empty() const { return prefill_tokens == 0 && decode_seqs == 0; }
};

// One measured step.
struct StepSample {
  StepShape shape;
  double seconds = 0;
};

struct LatencyModelOptions {
  double correction_rate = 0.05;  // EWMA weight of one step in the online correction
  double max_correction = 4.0;    // the correction stays in [1 / max, max]
};

class LatencyModel {
 public:
  static constexpr int kNumCoefficients = 5;
  using Coefficients = std::array<double, kNumCoefficients>;  // c0 .. c4 above, seconds

  LatencyModel() = default;
  LatencyModel(const Coefficients& c, const LatencyModelOptions& options = {});

  // Least-squares fit of relative error over `samples`, coefficients constrained >= 0.
  // InvalidArgument with fewer samples than coefficients or a non-positive time.
  static absl::StatusOr<LatencyModel> Fit(const std::vector<StepSample>& samples,
                                          const LatencyModelOptions& options = {});

  // Predicted seconds (correction applied). A model that was never fitted predicts 0.
  double Predict(const StepShape& shape) const;
  absl::Duration PredictDuration(const StepShape& shape) const {
    return absl::Seconds(Predict(shape));
  }
  // The fitted part alone (no correction).
  double PredictFitted(const StepShape& shape) const;

  // Feeds one measured step to the online correction; returns the relative error of the
  // prediction made before it, (predicted - measured) / measured.
  double Observe(const StepShape& shape, double measured_seconds);

  bool fitted() const { return fitted_; }
  const Coefficients& coefficients() const { return c_; }
  double correction() const { return correction_; }
  uint64_t observed_steps() const { return observed_; }
  // Median relative error of the fit over its profile samples (0 when built from numbers).
  double fit_error() const { return fit_error_; }

  // JSON with the coefficients, the correction and `key` (what the profile was taken on:
  // model, device, threads; a file with another key is refused on load).
  std::string ToJson(const std::string& key) const;
  static absl::StatusOr<LatencyModel> FromJson(const std::string& json,
                                               const std::string& expected_key,
                                               const LatencyModelOptions& options = {});
  absl::Status Save(const std::string& path, const std::string& key) const;
  // NotFound when the file does not exist; FailedPrecondition when its key differs;
  // InvalidArgument when it does not parse.
  static absl::StatusOr<LatencyModel> Load(const std::string& path, const std::string& expected_key,
                                           const LatencyModelOptions& options = {});

 private:
  LatencyModelOptions options_;
  Coefficients c_{};
  bool fitted_ = false;
  double correction_ = 1.0;
  uint64_t observed_ = 0;
  double fit_error_ = 0;
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_LATENCY_MODEL_H_
