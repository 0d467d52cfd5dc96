#include "bench/tandem_bench/result_writer.h"

#include <fstream>

#include "absl/strings/str_format.h"
#include "common/str_cat.h"

namespace tandem::bench {
namespace {

std::string CsvQuote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"')
      out += "\"\"";
    else if (c == '\n' || c == '\r')
      out += ' ';
    else
      out += c;
  }
  return out + "\"";
}

std::string Ms(double s) { return absl::StrFormat("%.3f", s * 1e3); }

}  // namespace

std::string RequestsCsv(const std::vector<RequestRecord>& records) {
  std::string out =
      "index,send_s,status,http_status,ttft_ms,tpot_ms,e2e_ms,prompt_tokens,output_tokens,"
      "token_chunks,usage_reported,slo_ttft_ms,slo_tpot_ms,met_slo,itl_ms,error,cached_tokens\n";
  for (const RequestRecord& r : records) {
    std::string itl;
    for (size_t i = 0; i < r.itl_s.size(); ++i) {
      if (i) itl += ';';
      itl += Ms(r.itl_s[i]);
    }
    out += StrCat(r.index, ",", absl::StrFormat("%.6f", r.send_s), ",", RequestStatusName(r.status),
                  ",", r.http_status, ",", r.ttft_s >= 0 ? Ms(r.ttft_s) : "", ",", Ms(r.TpotS()),
                  ",", Ms(r.e2e_s), ",", r.prompt_tokens, ",", r.output_tokens, ",", r.token_chunks,
                  ",", r.usage_reported ? 1 : 0, ",", r.slo.ttft_ms ? StrCat(*r.slo.ttft_ms) : "",
                  ",", r.slo.tpot_ms ? StrCat(*r.slo.tpot_ms) : "", ",", r.MeetsSlo() ? 1 : 0, ",",
                  itl, ",", CsvQuote(r.error), ",",
                  r.cached_tokens >= 0 ? StrCat(r.cached_tokens) : "", "\n");
  }
  return out;
}

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(StrCat("cannot write '", path, "'"));
  out << text;
  out.close();
  if (!out) return absl::DataLossError(StrCat("error writing '", path, "'"));
  return absl::OkStatus();
}

std::string FormatSummaryTable(const std::string& title, const RunSummary& s,
                               const std::string& slo, double target) {
  std::string out = StrCat("==================== ", title, " ====================\n");
  auto line = [&out](const std::string& k, const std::string& v) {
    out += absl::StrFormat("%-36s %s\n", k, v);
  };
  line("Requests sent:", StrCat(s.requests));
  line("Requests completed:", StrCat(s.completed));
  std::string errs;
  for (const auto& [k, v] : s.errors_by_kind) errs += StrCat(errs.empty() ? "" : ", ", k, " ", v);
  line("Requests failed:", StrCat(s.failed, errs.empty() ? "" : StrCat(" (", errs, ")")));
  line("Duration (s):", absl::StrFormat("%.2f", s.duration_s));
  line("Offered rate (req/s):", absl::StrFormat("%.3f", s.offered_rate));
  line("Request throughput (req/s):", absl::StrFormat("%.3f", s.request_throughput));
  line("Input tokens / throughput (tok/s):",
       absl::StrFormat("%d / %.1f", s.input_tokens, s.input_token_throughput));
  line("Output tokens / throughput (tok/s):",
       absl::StrFormat("%d / %.1f", s.output_tokens, s.output_token_throughput));
  if (s.cached_reported > 0) {
    line("Cached prompt tokens (share):",
         absl::StrFormat("%d (%.1f%% of %d requests' prompts)", s.cached_tokens,
                         100 * s.cached_share, s.cached_reported));
  }
  out += absl::StrFormat("%-10s %7s %10s %10s %10s %10s\n", "(ms)", "n", "mean", "median", "p90",
                         "p99");
  auto dist = [&out](const char* name, const Distribution& d) {
    out += absl::StrFormat("%-10s %7d %10.2f %10.2f %10.2f %10.2f\n", name, d.count, d.mean,
                           d.median, d.p90, d.p99);
  };
  dist("TTFT", s.ttft);
  dist("TPOT", s.tpot);
  dist("ITL", s.itl);
  dist("E2E", s.e2e);
  line("SLO:", slo.empty() ? "none" : slo);
  line("Attainment TTFT / TPOT / E2E:",
       absl::StrFormat("%.1f%% / %.1f%% / %.1f%%", 100 * s.attainment_ttft, 100 * s.attainment_tpot,
                       100 * s.attainment_e2e));
  line("Attainment (all SLOs):",
       absl::StrFormat("%.1f%% (target %.0f%%: %s)", 100 * s.attainment, 100 * target,
                       s.attainment >= target ? "met" : "missed"));
  line("Goodput (good req/s):", absl::StrFormat("%.3f", s.goodput));
  return out;
}

std::string FormatSweepTable(const std::vector<SweepRow>& rows, double goodput_rate, double target,
                             bool bounded) {
  std::string out =
      absl::StrFormat("%9s %9s %8s %8s %8s %10s %11s %11s %6s\n", "rate", "thr(r/s)", "att.TTFT",
                      "att.TPOT", "att.all", "good(r/s)", "TTFT p90ms", "TPOT p90ms", "errors");
  for (const SweepRow& r : rows) {
    const RunSummary& s = r.summary;
    out += absl::StrFormat("%9.3f %9.3f %7.1f%% %7.1f%% %7.1f%% %10.3f %11.1f %11.1f %6d\n", r.rate,
                           s.request_throughput, 100 * s.attainment_ttft, 100 * s.attainment_tpot,
                           100 * s.attainment, s.goodput, s.ttft.p90, s.tpot.p90, s.failed);
  }
  if (goodput_rate > 0) {
    out += absl::StrFormat("Goodput: %.3f req/s (highest rate with attainment >= %.0f%%)%s\n",
                           goodput_rate, 100 * target,
                           bounded ? "" : " -- not bounded: the highest rate tried still met it");
  } else {
    out += absl::StrFormat("Goodput: 0 (no rate tried reached attainment %.0f%%)\n", 100 * target);
  }
  return out;
}

}  // namespace tandem::bench
