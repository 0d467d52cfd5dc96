#include "bench/tandem_bench/run_summary.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace tandem::bench {

double Percentile(std::vector<double>& values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double pos = q / 100.0 * (values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  const double frac = pos - lo;
  return values[lo] + (values[hi] - values[lo]) * frac;
}

Distribution Distribute(std::vector<double> values_s) {
  Distribution d;
  d.count = static_cast<int>(values_s.size());
  if (values_s.empty()) return d;
  for (double& v : values_s) v *= 1e3;
  d.mean = std::accumulate(values_s.begin(), values_s.end(), 0.0) / values_s.size();
  d.median = Percentile(values_s, 50);
  d.p90 = Percentile(values_s, 90);
  d.p99 = Percentile(values_s, 99);
  d.min = values_s.front();
  d.max = values_s.back();
  return d;
}

RunSummary Summarize(const std::vector<RequestRecord>& records, double duration_s) {
  RunSummary s;
  s.duration_s = duration_s;
  s.requests = static_cast<int>(records.size());
  std::vector<double> ttft, tpot, itl, e2e;
  int meet_ttft = 0, meet_tpot = 0, meet_e2e = 0;
  double first_send = 0, last_send = 0;
  long cached_of = 0;  // prompt tokens of the requests that reported cached tokens
  for (size_t i = 0; i < records.size(); ++i) {
    const RequestRecord& r = records[i];
    if (i == 0 || r.send_s < first_send) first_send = r.send_s;
    if (i == 0 || r.send_s > last_send) last_send = r.send_s;
    meet_ttft += r.MeetsTtft();
    meet_tpot += r.MeetsTpot();
    meet_e2e += r.MeetsE2e();
    s.good_requests += r.MeetsSlo();
    if (!r.ok()) {
      ++s.errors_by_kind[RequestStatusName(r.status)];
      continue;
    }
    ++s.completed;
    s.input_tokens += r.prompt_tokens;
    s.output_tokens += r.output_tokens;
    if (r.cached_tokens >= 0) {
      ++s.cached_reported;
      s.cached_tokens += r.cached_tokens;
      cached_of += r.prompt_tokens;
    }
    if (r.ttft_s >= 0) ttft.push_back(r.ttft_s);
    // TPOT is defined only with >= 2 output tokens; 0-by-definition values would skew it.
    if (r.output_tokens > 1 && r.ttft_s >= 0) tpot.push_back(r.TpotS());
    itl.insert(itl.end(), r.itl_s.begin(), r.itl_s.end());
    e2e.push_back(r.e2e_s);
  }
  s.failed = s.requests - s.completed;
  if (cached_of > 0) s.cached_share = static_cast<double>(s.cached_tokens) / cached_of;
  if (duration_s > 0) {
    s.request_throughput = s.completed / duration_s;
    s.input_token_throughput = s.input_tokens / duration_s;
    s.output_token_throughput = s.output_tokens / duration_s;
    s.goodput = s.good_requests / duration_s;
  }
  if (s.requests > 0) {
    s.attainment_ttft = static_cast<double>(meet_ttft) / s.requests;
    s.attainment_tpot = static_cast<double>(meet_tpot) / s.requests;
    s.attainment_e2e = static_cast<double>(meet_e2e) / s.requests;
    s.attainment = static_cast<double>(s.good_requests) / s.requests;
  }
  if (s.requests > 1 && last_send > first_send) {
    s.offered_rate = (s.requests - 1) / (last_send - first_send);
  }
  s.ttft = Distribute(std::move(ttft));
  s.tpot = Distribute(std::move(tpot));
  s.itl = Distribute(std::move(itl));
  s.e2e = Distribute(std::move(e2e));
  return s;
}

nlohmann::json ToJson(const Distribution& d) {
  return {{"count", d.count}, {"mean", d.mean}, {"median", d.median}, {"p90", d.p90},
          {"p99", d.p99},     {"min", d.min},   {"max", d.max}};
}

nlohmann::json ToJson(const RunSummary& s) {
  nlohmann::json errors = nlohmann::json::object();
  for (const auto& [k, v] : s.errors_by_kind) errors[k] = v;
  return {
      {"duration_s", s.duration_s},
      {"requests",
       {{"sent", s.requests},
        {"completed", s.completed},
        {"failed", s.failed},
        {"errors", errors}}},
      {"offered_rate", s.offered_rate},
      {"request_throughput", s.request_throughput},
      {"input_tokens", s.input_tokens},
      {"output_tokens", s.output_tokens},
      {"cached_prompt_tokens",
       {{"requests_reporting", s.cached_reported},
        {"tokens", s.cached_tokens},
        {"share", s.cached_share}}},
      {"input_token_throughput", s.input_token_throughput},
      {"output_token_throughput", s.output_token_throughput},
      {"ttft_ms", ToJson(s.ttft)},
      {"tpot_ms", ToJson(s.tpot)},
      {"itl_ms", ToJson(s.itl)},
      {"e2e_ms", ToJson(s.e2e)},
      {"attainment",
       {{"ttft", s.attainment_ttft},
        {"tpot", s.attainment_tpot},
        {"e2e", s.attainment_e2e},
        {"all", s.attainment}}},
      {"good_requests", s.good_requests},
      {"goodput", s.goodput},
  };
}

}  // namespace tandem::bench
