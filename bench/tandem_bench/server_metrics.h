// Server-side counters, for cross-checking the client's numbers. The server's Prometheus text
// (GET /metrics) is read before and after the measured run; the counters' increase is compared
// with what the client counted. Known counters (summed over label sets):
//   tandem (tandemd):   tandem:request_success_total   requests completed
//                       tandem:prompt_tokens_total     prompt tokens processed
//                       tandem:generation_tokens_total tokens generated
//                       tandem:prefix_cache_hit_tokens_total  prompt tokens the prefix cache
//                                                             gave (usage's cached_tokens)
//   llama.cpp server:   llamacpp:prompt_tokens_total, llamacpp:tokens_predicted_total
//                       (only with llama-server --metrics)
// A server whose /metrics has none of these is not cross-checked (and the report says so).
// Thread safety: pure functions.
#ifndef TANDEM_BENCH_TANDEM_BENCH_SERVER_METRICS_H_
#define TANDEM_BENCH_TANDEM_BENCH_SERVER_METRICS_H_

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::bench {

// Metric name (labels stripped) -> sum of its samples. Comments and malformed lines skipped.
std::map<std::string, double> ParsePrometheusText(std::string_view text);

// "tandem", "llamacpp" or "" from the metric names present.
std::string DetectServerKind(const std::map<std::string, double>& metrics);

struct CrossCheckRow {
  // "requests completed", "prompt tokens", "output tokens", "cached prompt tokens"
  std::string quantity;
  std::string metric;  // server counter name
  double client = 0;   // counted by tandem-bench over the measured run
  double server = 0;   // counter increase over the measured run
};

struct ClientCounts {
  double completed_requests = 0;  // ok requests
  double prompt_tokens = 0;
  double output_tokens = 0;
  double cached_tokens = 0;  // usage.prompt_tokens_details.cached_tokens, summed
};

// Rows for the counters present in both snapshots of a known server kind.
std::vector<CrossCheckRow> CrossCheck(const std::map<std::string, double>& before,
                                      const std::map<std::string, double>& after,
                                      const ClientCounts& client);

std::string FormatCrossCheck(const std::string& kind, const std::vector<CrossCheckRow>& rows);
nlohmann::json CrossCheckJson(const std::string& kind, const std::vector<CrossCheckRow>& rows);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_SERVER_METRICS_H_
