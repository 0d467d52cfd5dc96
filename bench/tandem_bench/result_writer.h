// Result files and tables of tandem-bench:
//   requests.csv   one row per request: send time, status, HTTP status, TTFT, TPOT, E2E (ms),
//                  tokens in/out, token chunks, SLO met, every ITL (ms, ';'-separated), error
//   summary.json   config + RunSummary (+ server cross-check) of one run
//   sweep.json     every rate measured, its summary, and the goodput rate
//   the readable tables printed on stdout
// Thread safety: pure functions (files are written by the calling thread).
#ifndef TANDEM_BENCH_TANDEM_BENCH_RESULT_WRITER_H_
#define TANDEM_BENCH_TANDEM_BENCH_RESULT_WRITER_H_

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "bench/tandem_bench/request_record.h"
#include "bench/tandem_bench/run_summary.h"

namespace tandem::bench {

std::string RequestsCsv(const std::vector<RequestRecord>& records);
absl::Status WriteTextFile(const std::string& path, const std::string& text);

// The readable table of one run (vLLM-like layout), `slo` describing the run's SLO.
std::string FormatSummaryTable(const std::string& title, const RunSummary& s,
                               const std::string& slo, double target);

struct SweepRow {
  double rate = 0;
  RunSummary summary;
};
// One line per rate: rate, throughput, attainment (TTFT, TPOT, both), goodput, p90s.
std::string FormatSweepTable(const std::vector<SweepRow>& rows, double goodput_rate, double target,
                             bool bounded);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_RESULT_WRITER_H_
