// Goodput search over request rates. Goodput (as a rate) is the highest request rate whose
// SLO attainment is >= the target (0.9 by default), as DistServe defines it.
//   - ParseSweep reads `--sweep 1,2,4` (explicit rates) or `--sweep auto`.
//   - GoodputOfPoints: the highest measured rate that meets the target.
//   - BisectGoodput: starting at `start_rate`, doubles while the target is met (halves while it
//     is not) to bracket the threshold, then bisects the bracket until hi / lo <= 1 + rel_tol.
//     It assumes attainment falls as the rate grows (as DistServe's bisection does).
// The measurement is a callback, so the search is tested against a pure function.
// Thread safety: pure functions (the callback runs on the caller's thread).
#ifndef TANDEM_BENCH_TANDEM_BENCH_GOODPUT_SWEEP_H_
#define TANDEM_BENCH_TANDEM_BENCH_GOODPUT_SWEEP_H_

#include <functional>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace tandem::bench {

struct SweepSpec {
  bool automatic = false;
  std::vector<double> rates;  // explicit rates, ascending (empty when automatic)
};
absl::StatusOr<SweepSpec> ParseSweep(std::string_view text);

struct SweepPoint {
  double rate = 0;
  double attainment = 0;
};

struct BisectConfig {
  double start_rate = 1.0;
  double min_rate = 1.0 / 64;  // stop halving below this: goodput 0
  double max_rate = 256;       // stop doubling above this: goodput = the last rate met
  double target = 0.9;
  double rel_tol = 0.05;
  int max_runs = 20;
};

struct SweepOutcome {
  std::vector<SweepPoint> points;  // in the order measured
  double goodput_rate = 0;         // 0 when no rate met the target
  bool bounded = true;             // false when even max_rate met the target
};

// The highest rate among `points` with attainment >= target (0 if none).
double GoodputOfPoints(const std::vector<SweepPoint>& points, double target);

using MeasureFn = std::function<absl::StatusOr<double>(double rate)>;  // -> attainment
absl::StatusOr<SweepOutcome> BisectGoodput(const BisectConfig& config, const MeasureFn& measure);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_GOODPUT_SWEEP_H_
