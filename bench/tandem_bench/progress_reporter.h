// ProgressReporter: shows how far a run is, on stderr. On a terminal: one bar redrawn in place
// (at most 10 times a second); otherwise (CI logs, pipes): one line per 10% step, so logs stay
// short. Disabled reporters print nothing.
// Thread safety: none; call from the run's io thread only.
#ifndef TANDEM_BENCH_TANDEM_BENCH_PROGRESS_REPORTER_H_
#define TANDEM_BENCH_TANDEM_BENCH_PROGRESS_REPORTER_H_

#include <chrono>
#include <cstdio>
#include <string>

namespace tandem::bench {

class ProgressReporter {
 public:
  // mode: "auto" (bar on a TTY, 10% lines otherwise), "bar", "lines", "off".
  ProgressReporter(std::string label, const std::string& mode, std::FILE* out = stderr);

  // fraction in [0, 1]; detail is a short status such as "37/100 done, 2 errors".
  void Update(double fraction, const std::string& detail);
  // Ends the bar line (TTY) or prints a last line.
  void Finish(const std::string& detail);

 private:
  std::string label_;
  std::FILE* out_;
  bool enabled_ = true;
  bool bar_ = false;
  int last_decile_ = -1;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_draw_{};
};

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_PROGRESS_REPORTER_H_
