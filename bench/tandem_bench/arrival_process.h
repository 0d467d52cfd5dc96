// ArrivalProcess: when requests are sent. Inter-arrival gaps are gamma distributed with
// shape = burstiness and scale = 1 / (rate * burstiness), so the mean gap is 1 / rate and the
// coefficient of variation is 1 / sqrt(burstiness); burstiness 1 is a Poisson process. An
// infinite rate sends everything at once (with --max-concurrency: a closed loop).
// Deterministic for a given seed (std::mt19937_64 and libstdc++'s gamma_distribution).
// Thread safety: none; one owner.
#ifndef TANDEM_BENCH_TANDEM_BENCH_ARRIVAL_PROCESS_H_
#define TANDEM_BENCH_TANDEM_BENCH_ARRIVAL_PROCESS_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/statusor.h"

namespace tandem::bench {

struct ArrivalConfig {
  double rate = 1.0;        // requests per second; +inf sends all at time 0
  double burstiness = 1.0;  // gamma shape; 1 = Poisson, < 1 burstier, > 1 more regular
  uint64_t seed = 0;
};

class ArrivalProcess {
 public:
  // Fails on rate <= 0 or burstiness <= 0 (or NaN).
  static absl::StatusOr<ArrivalProcess> Create(const ArrivalConfig& config);

  // The next gap in seconds (0 for an infinite rate).
  double NextGap();

  // Send offsets (seconds from the start) of `n` requests: the running sum of gaps. With
  // `rescale` the offsets are scaled so the last one lands at exactly n / rate, as vLLM's
  // benchmark does (the achieved rate then equals the requested one, whatever the draw).
  std::vector<double> SendOffsets(int n, bool rescale);

  const ArrivalConfig& config() const { return config_; }

 private:
  explicit ArrivalProcess(const ArrivalConfig& config);

  ArrivalConfig config_;
  std::mt19937_64 rng_;
  std::gamma_distribution<double> gamma_;
};

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_ARRIVAL_PROCESS_H_
