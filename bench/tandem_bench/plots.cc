#include "bench/tandem_bench/plots.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <sstream>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/tandem_bench/result_writer.h"
#include "common/check.h"
#include "common/str_cat.h"

namespace tandem::bench {
namespace {

// "x cdf" rows of the sorted values (milliseconds).
std::string CdfData(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  std::string out;
  for (size_t i = 0; i < ms.size(); ++i) {
    out += absl::StrFormat("%.3f %.5f\n", ms[i], static_cast<double>(i + 1) / ms.size());
  }
  return out;
}

std::string QuoteShell(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

}  // namespace

std::string FindGnuplot() {
  const char* path = std::getenv("PATH");
  if (!path) return "";
  for (absl::string_view dir : absl::StrSplit(path, ':')) {
    if (dir.empty()) continue;
    std::string candidate = StrCat(std::string(dir), "/gnuplot");
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

absl::StatusOr<std::string> DrawPlots(const std::string& dir, const std::vector<PlotSeries>& series,
                                      double target, double ttft_slo_ms, double tpot_slo_ms) {
  if (series.empty()) return std::string("no plots: no runs");
  // The libgd png terminal: present in gnuplot-nox (pngcairo is not).
  std::string gp = "set terminal png size 900,600 noenhanced\nset grid\nset key bottom right\n";
  if (series.size() > 1) {
    std::string att = "# rate attainment_all attainment_ttft attainment_tpot\n";
    for (const PlotSeries& s : series) {
      att += absl::StrFormat("%.5f %.5f %.5f %.5f\n", s.rate, s.attainment, s.attainment_ttft,
                             s.attainment_tpot);
    }
    TANDEM_RETURN_IF_ERROR(WriteTextFile(dir + "/attainment.dat", att));
    gp += absl::StrFormat(
        "set output 'attainment_vs_rate.png'\nset title 'SLO attainment vs request rate'\n"
        "set xlabel 'request rate (req/s)'\nset ylabel 'attainment'\nset yrange [0:1.05]\n"
        "set key bottom left\n"
        "plot 'attainment.dat' using 1:2 with linespoints lw 2 title 'TTFT and TPOT', "
        "'' using 1:3 with linespoints title 'TTFT', '' using 1:4 with linespoints title 'TPOT', "
        "%.3f with lines dt 2 lc rgb 'gray' title 'target'\nset key bottom right\n"
        "set autoscale y\n",
        target);
  }
  std::string ttft_plot, tpot_plot;
  for (size_t i = 0; i < series.size(); ++i) {
    std::vector<double> ttft, tpot;
    for (const RequestRecord& r : series[i].records) {
      if (!r.ok()) continue;
      if (r.ttft_s >= 0) ttft.push_back(r.ttft_s * 1e3);
      if (r.output_tokens > 1) tpot.push_back(r.TpotS() * 1e3);
    }
    const std::string t_file = StrCat("ttft_", i, ".dat"), p_file = StrCat("tpot_", i, ".dat");
    TANDEM_RETURN_IF_ERROR(WriteTextFile(StrCat(dir, "/", t_file), CdfData(ttft)));
    TANDEM_RETURN_IF_ERROR(WriteTextFile(StrCat(dir, "/", p_file), CdfData(tpot)));
    if (!ttft.empty()) {
      ttft_plot += StrCat(ttft_plot.empty() ? "" : ", ", "'", t_file,
                          "' using 1:2 with lines lw 2 title '", series[i].label, "'");
    }
    if (!tpot.empty()) {
      tpot_plot += StrCat(tpot_plot.empty() ? "" : ", ", "'", p_file,
                          "' using 1:2 with lines lw 2 title '", series[i].label, "'");
    }
  }
  auto slo_line = [](double ms) {
    return ms > 0 ? absl::StrFormat("set arrow from %.3f, graph 0 to %.3f, graph 1 nohead dt 2\n",
                                    ms, ms)
                  : std::string();
  };
  if (!ttft_plot.empty()) {
    gp += StrCat("set output 'ttft_cdf.png'\nset title 'TTFT CDF'\nset xlabel 'TTFT (ms)'\n",
                 "set ylabel 'fraction of requests'\nunset arrow\n", slo_line(ttft_slo_ms), "plot ",
                 ttft_plot, "\n");
  }
  if (!tpot_plot.empty()) {
    gp += StrCat("set output 'tpot_cdf.png'\nset title 'TPOT CDF'\nset xlabel 'TPOT (ms)'\n",
                 "set ylabel 'fraction of requests'\nunset arrow\n", slo_line(tpot_slo_ms), "plot ",
                 tpot_plot, "\n");
  }
  TANDEM_RETURN_IF_ERROR(WriteTextFile(dir + "/plots.gp", gp));
  const std::string gnuplot = FindGnuplot();
  if (gnuplot.empty()) {
    return StrCat("plots: gnuplot not found on PATH, PNGs skipped (install gnuplot-nox, then run ",
                  "`cd ", dir, " && gnuplot plots.gp`)");
  }
  const std::string cmd =
      StrCat("cd ", QuoteShell(dir), " && ", QuoteShell(gnuplot), " plots.gp 2> plots.log");
  const int rc = std::system(cmd.c_str());
  if (rc != 0) return StrCat("plots: gnuplot failed (see ", dir, "/plots.log)");
  return StrCat("plots: ", series.size() > 1 ? "attainment_vs_rate.png, " : "",
                "ttft_cdf.png, tpot_cdf.png in ", dir);
}

}  // namespace tandem::bench
