// PNG plots drawn with gnuplot (Debian: gnuplot-nox): SLO attainment vs request rate for a
// sweep, and the TTFT and TPOT CDFs (one curve per rate). The data files (.dat) and the
// gnuplot script (plots.gp) are always written beside the PNGs, so plots can be redrawn by hand;
// without gnuplot on PATH the PNGs are skipped with a clear message.
// Thread safety: pure functions; DrawPlots runs gnuplot as a child process.
#ifndef TANDEM_BENCH_TANDEM_BENCH_PLOTS_H_
#define TANDEM_BENCH_TANDEM_BENCH_PLOTS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/tandem_bench/request_record.h"

namespace tandem::bench {

struct PlotSeries {
  std::string label;  // e.g. "2.00 req/s"
  double rate = 0;
  double attainment = 0;
  double attainment_ttft = 0;
  double attainment_tpot = 0;
  std::vector<RequestRecord> records;
};

// Full path of gnuplot on PATH, or "" when absent.
std::string FindGnuplot();

// Writes the .dat files and plots.gp into `dir`; runs gnuplot when found. Returns a
// human-readable line saying what was drawn (or why not).
absl::StatusOr<std::string> DrawPlots(const std::string& dir, const std::vector<PlotSeries>& series,
                                      double target, double ttft_slo_ms, double tpot_slo_ms);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_PLOTS_H_
