#include "bench/tandem_bench/server_metrics.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"

namespace tandem::bench {

std::map<std::string, double> ParsePrometheusText(std::string_view text) {
  std::map<std::string, double> out;
  std::istringstream in{std::string(text)};
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    size_t name_end = line.find_first_of("{ \t");
    if (name_end == std::string::npos || name_end == 0) continue;
    std::string name = line.substr(0, name_end);
    size_t value_start = name_end;
    if (line[name_end] == '{') {
      const size_t close = line.find('}', name_end);
      if (close == std::string::npos) continue;
      value_start = close + 1;
    }
    std::istringstream rest(line.substr(value_start));
    std::string value_text;
    rest >> value_text;
    double v = 0;
    if (!absl::SimpleAtod(value_text, &v) || !std::isfinite(v)) continue;
    out[name] += v;
  }
  return out;
}

std::string DetectServerKind(const std::map<std::string, double>& m) {
  for (const auto& [name, v] : m) {
    if (name.rfind("tandem:", 0) == 0) return "tandem";
  }
  for (const auto& [name, v] : m) {
    if (name.rfind("llamacpp:", 0) == 0) return "llamacpp";
  }
  return "";
}

std::vector<CrossCheckRow> CrossCheck(const std::map<std::string, double>& before,
                                      const std::map<std::string, double>& after,
                                      const ClientCounts& client) {
  struct Known {
    const char* metric;
    const char* quantity;
    double client;
  };
  const Known known[] = {
      {"tandem:request_success_total", "requests completed", client.completed_requests},
      {"tandem:prompt_tokens_total", "prompt tokens", client.prompt_tokens},
      {"tandem:generation_tokens_total", "output tokens", client.output_tokens},
      {"tandem:prefix_cache_hit_tokens_total", "cached prompt tokens", client.cached_tokens},
      {"llamacpp:prompt_tokens_total", "prompt tokens", client.prompt_tokens},
      {"llamacpp:tokens_predicted_total", "output tokens", client.output_tokens},
  };
  std::vector<CrossCheckRow> rows;
  for (const Known& k : known) {
    auto a = after.find(k.metric);
    if (a == after.end()) continue;
    auto b = before.find(k.metric);
    const double base = b == before.end() ? 0 : b->second;
    rows.push_back({k.quantity, k.metric, k.client, a->second - base});
  }
  return rows;
}

std::string FormatCrossCheck(const std::string& kind, const std::vector<CrossCheckRow>& rows) {
  if (rows.empty()) {
    return "Server cross-check: skipped (no known counters in the server's /metrics)\n";
  }
  std::string out =
      absl::StrFormat("Server cross-check (%s /metrics, increase over the run):\n", kind);
  out += absl::StrFormat("  %-20s %12s %12s %9s  %s\n", "quantity", "client", "server", "diff",
                         "counter");
  for (const CrossCheckRow& r : rows) {
    const double diff = r.server - r.client;
    const double pct = r.client != 0 ? 100.0 * diff / r.client : 0;
    out += absl::StrFormat("  %-20s %12.0f %12.0f %+8.1f%%  %s\n", r.quantity, r.client, r.server,
                           pct, r.metric);
  }
  return out;
}

nlohmann::json CrossCheckJson(const std::string& kind, const std::vector<CrossCheckRow>& rows) {
  nlohmann::json j = {{"server_kind", kind}, {"rows", nlohmann::json::array()}};
  for (const CrossCheckRow& r : rows) {
    j["rows"].push_back({{"quantity", r.quantity},
                         {"metric", r.metric},
                         {"client", r.client},
                         {"server", r.server}});
  }
  return j;
}

}  // namespace tandem::bench
