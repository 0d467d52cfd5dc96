// SloSpec: the latency objectives one request is judged against (TTFT, TPOT, optional E2E),
// parsed from `--slo ttft:MS,tpot:MS[,e2e:MS]` or from a dataset row.
// Thread safety: plain values and pure functions.
#ifndef TANDEM_BENCH_TANDEM_BENCH_SLO_H_
#define TANDEM_BENCH_TANDEM_BENCH_SLO_H_

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tandem::bench {

struct SloSpec {
  std::optional<double> ttft_ms;  // time to first token, client send to first token chunk
  std::optional<double> tpot_ms;  // (e2e - ttft) / (output_tokens - 1)
  std::optional<double> e2e_ms;   // client send to last byte

  bool empty() const { return !ttft_ms && !tpot_ms && !e2e_ms; }
  std::string ToString() const;  // "ttft:250,tpot:100" (the form ParseSlo reads)
};

// Parses "ttft:MS,tpot:MS[,e2e:MS]" (any subset, any order; values > 0). Empty text gives an
// empty spec.
absl::StatusOr<SloSpec> ParseSlo(std::string_view text);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_SLO_H_
