#include "bench/tandem_bench/goodput_sweep.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/check.h"
#include "common/str_cat.h"

namespace tandem::bench {

absl::StatusOr<SweepSpec> ParseSweep(std::string_view text) {
  SweepSpec spec;
  if (text == "auto") {
    spec.automatic = true;
    return spec;
  }
  for (absl::string_view part : absl::StrSplit(absl::string_view(text.data(), text.size()), ',')) {
    double r = 0;
    if (!absl::SimpleAtod(part, &r) || !(r > 0) || std::isinf(r)) {
      return absl::InvalidArgumentError(
          StrCat("bad --sweep '", text, "': want auto or a list of rates > 0, e.g. 0.5,1,2"));
    }
    spec.rates.push_back(r);
  }
  std::sort(spec.rates.begin(), spec.rates.end());
  return spec;
}

double GoodputOfPoints(const std::vector<SweepPoint>& points, double target) {
  double best = 0;
  for (const SweepPoint& p : points) {
    if (p.attainment >= target) best = std::max(best, p.rate);
  }
  return best;
}

absl::StatusOr<SweepOutcome> BisectGoodput(const BisectConfig& c, const MeasureFn& measure) {
  if (!(c.start_rate > 0) || !(c.min_rate > 0) || c.max_rate < c.start_rate || !(c.rel_tol > 0) ||
      c.max_runs < 2) {
    return absl::InvalidArgumentError("bad bisection settings (rates > 0, tolerance > 0)");
  }
  SweepOutcome out;
  auto run = [&](double rate) -> absl::StatusOr<bool> {
    TANDEM_ASSIGN_OR_RETURN(double att, measure(rate));
    out.points.push_back({rate, att});
    return att >= c.target;
  };
  double lo = 0, hi = 0;  // lo meets the target, hi does not (0 = not found yet)
  TANDEM_ASSIGN_OR_RETURN(bool ok, run(c.start_rate));
  if (ok) {
    lo = c.start_rate;
    while (hi == 0) {
      if (static_cast<int>(out.points.size()) >= c.max_runs || lo * 2 > c.max_rate) {
        out.goodput_rate = lo;
        out.bounded = false;
        return out;
      }
      TANDEM_ASSIGN_OR_RETURN(ok, run(lo * 2));
      if (ok)
        lo *= 2;
      else
        hi = lo * 2;
    }
  } else {
    hi = c.start_rate;
    while (lo == 0) {
      if (hi / 2 < c.min_rate || static_cast<int>(out.points.size()) >= c.max_runs) {
        out.goodput_rate = 0;
        return out;
      }
      TANDEM_ASSIGN_OR_RETURN(ok, run(hi / 2));
      if (ok)
        lo = hi / 2;
      else
        hi /= 2;
    }
  }
  while (hi / lo > 1 + c.rel_tol && static_cast<int>(out.points.size()) < c.max_runs) {
    const double mid = std::sqrt(lo * hi);  // geometric: the bracket spans a ratio
    TANDEM_ASSIGN_OR_RETURN(ok, run(mid));
    if (ok)
      lo = mid;
    else
      hi = mid;
  }
  out.goodput_rate = lo;
  return out;
}

}  // namespace tandem::bench
