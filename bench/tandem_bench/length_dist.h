// LengthDist: a distribution of token lengths for synthetic requests, parsed from
//   "N" or "fixed:N"           every request N tokens
//   "uniform:LO:HI"            integers uniform in [LO, HI]
//   "lognormal:MEAN:SIGMA"     lognormal with arithmetic mean MEAN and log-space sigma SIGMA
//                              (mu = ln(MEAN) - SIGMA^2 / 2), rounded, clamped to [1, 16 * MEAN]
// Thread safety: Sample is const but takes the caller's generator.
#ifndef TANDEM_BENCH_TANDEM_BENCH_LENGTH_DIST_H_
#define TANDEM_BENCH_TANDEM_BENCH_LENGTH_DIST_H_

#include <random>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tandem::bench {

class LengthDist {
 public:
  enum class Kind { kFixed, kUniform, kLognormal };

  static absl::StatusOr<LengthDist> Parse(std::string_view spec);

  int Sample(std::mt19937_64& rng) const;
  double Mean() const;
  Kind kind() const { return kind_; }
  std::string ToString() const;

 private:
  LengthDist(Kind kind, double a, double b) : kind_(kind), a_(a), b_(b) {}

  Kind kind_;
  double a_;  // fixed: N; uniform: LO; lognormal: MEAN
  double b_;  // uniform: HI; lognormal: SIGMA
};

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_LENGTH_DIST_H_
