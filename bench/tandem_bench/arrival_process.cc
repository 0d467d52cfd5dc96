#include "bench/tandem_bench/arrival_process.h"

#include <cmath>

#include "absl/status/status.h"
#include "common/str_cat.h"

namespace tandem::bench {

absl::StatusOr<ArrivalProcess> ArrivalProcess::Create(const ArrivalConfig& config) {
  if (!(config.rate > 0)) {
    return absl::InvalidArgumentError(
        StrCat("request rate must be > 0 (or inf), got ", config.rate));
  }
  if (!(config.burstiness > 0) || std::isinf(config.burstiness)) {
    return absl::InvalidArgumentError(
        StrCat("burstiness must be finite and > 0, got ", config.burstiness));
  }
  return ArrivalProcess(config);
}

ArrivalProcess::ArrivalProcess(const ArrivalConfig& config)
    : config_(config),
      rng_(config.seed),
      gamma_(config.burstiness,
             std::isinf(config.rate) ? 1.0 : 1.0 / (config.rate * config.burstiness)) {}

double ArrivalProcess::NextGap() {
  if (std::isinf(config_.rate)) return 0;
  return gamma_(rng_);
}

std::vector<double> ArrivalProcess::SendOffsets(int n, bool rescale) {
  std::vector<double> offsets(n > 0 ? n : 0);
  double t = 0;
  for (int i = 0; i < n; ++i) {
    t += NextGap();
    offsets[i] = t;
  }
  if (rescale && n > 0 && !std::isinf(config_.rate) && t > 0) {
    const double scale = (n / config_.rate) / t;
    for (double& o : offsets) o *= scale;
  }
  return offsets;
}

}  // namespace tandem::bench
