// RunSummary: the aggregate of one run's RequestRecords: latency distributions (mean, median,
// p90, p99 of TTFT, TPOT, ITL and E2E over successful requests; ITL pooled over all of their
// gaps), throughput, error counts, SLO attainment and goodput. Percentiles interpolate
// linearly between the two nearest ranks (numpy's default), so they match vLLM's tables.
// Attainment divides by every request sent, failed ones included (they count as misses).
// Thread safety: plain values and pure functions.
#ifndef TANDEM_BENCH_TANDEM_BENCH_RUN_SUMMARY_H_
#define TANDEM_BENCH_TANDEM_BENCH_RUN_SUMMARY_H_

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/tandem_bench/request_record.h"

namespace tandem::bench {

struct Distribution {
  int count = 0;
  double mean = 0, median = 0, p90 = 0, p99 = 0, min = 0, max = 0;  // milliseconds
};

// Linear-interpolation percentile, q in [0, 100]; 0 for an empty input. Sorts `values`.
double Percentile(std::vector<double>& values, double q);
// Summary of `values_s` (seconds) in milliseconds.
Distribution Distribute(std::vector<double> values_s);

struct RunSummary {
  double duration_s = 0;                      // first send -> last response finished
  int requests = 0;                           // sent
  int completed = 0;                          // ok
  int failed = 0;                             // requests - completed
  std::map<std::string, int> errors_by_kind;  // RequestStatusName -> count
  long input_tokens = 0;                      // over completed requests
  long output_tokens = 0;                     // over completed requests
  // Completed requests whose server reported cached prompt tokens
  // (usage.prompt_tokens_details.cached_tokens), those tokens, and their share of those
  // requests' prompt tokens.
  int cached_reported = 0;
  long cached_tokens = 0;
  double cached_share = 0;
  double request_throughput = 0;       // completed / duration
  double input_token_throughput = 0;   // tokens / s
  double output_token_throughput = 0;  // tokens / s
  Distribution ttft, tpot, itl, e2e;
  // Share of all sent requests meeting each objective (1 when the objective is unset).
  double attainment_ttft = 0, attainment_tpot = 0, attainment_e2e = 0, attainment = 0;
  int good_requests = 0;    // meeting every objective
  double goodput = 0;       // good_requests / duration (good requests per second)
  double offered_rate = 0;  // requests / (last send - first send), 0 when undefined
};

// `duration_s` is the run's wall time (first send -> last completion).
RunSummary Summarize(const std::vector<RequestRecord>& records, double duration_s);

nlohmann::json ToJson(const Distribution& d);
nlohmann::json ToJson(const RunSummary& s);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_RUN_SUMMARY_H_
