// tandem-bench: a goodput load generator for any OpenAI-compatible server (tandemd,
// llama.cpp's llama-server, vLLM, SGLang). See docs/benchmarks.md for flags, metric
// definitions and outputs. Flags may be spelled with dashes or underscores
// (--request-rate == --request_rate).
#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "bench/tandem_bench/arrival_process.h"
#include "bench/tandem_bench/dataset.h"
#include "bench/tandem_bench/goodput_sweep.h"
#include "bench/tandem_bench/http_fetch.h"
#include "bench/tandem_bench/load_runner.h"
#include "bench/tandem_bench/plots.h"
#include "bench/tandem_bench/result_writer.h"
#include "bench/tandem_bench/run_summary.h"
#include "bench/tandem_bench/server_metrics.h"
#include "bench/tandem_bench/token_counter.h"
#include "common/check.h"
#include "common/flag_names.h"
#include "common/str_cat.h"

ABSL_FLAG(std::string, url, "http://127.0.0.1:8000", "server root, http://HOST:PORT");
ABSL_FLAG(std::string, api_key, "", "sent as 'Authorization: Bearer KEY'");
ABSL_FLAG(std::string, model, "", "model name in requests (default: first of GET /v1/models)");
ABSL_FLAG(std::string, endpoint, "completions", "completions (/v1/completions) or chat");
ABSL_FLAG(double, request_rate, std::numeric_limits<double>::infinity(),
          "mean requests per second (inf: all at once, or a closed loop with --max-concurrency)");
ABSL_FLAG(double, burstiness, 1.0, "gamma shape of inter-arrival gaps; 1 = Poisson");
ABSL_FLAG(int, max_concurrency, 0, "most requests in flight (0 = unlimited)");
ABSL_FLAG(int, num_prompts, 100, "requests per run (with --duration: distinct prompts cycled)");
ABSL_FLAG(double, duration, 0, "run for this many seconds instead of --num-prompts requests");
ABSL_FLAG(int, warmup, 1, "warm-up requests before measuring (not counted)");
ABSL_FLAG(uint64_t, seed, 0, "seed of the dataset sampling and arrivals");
ABSL_FLAG(bool, rescale_arrivals, true,
          "scale arrival times so the last send lands at N / rate (as vLLM does)");
ABSL_FLAG(std::string, dataset, "synthetic", "synthetic, sharegpt or jsonl");
ABSL_FLAG(std::string, dataset_path, "", "file for --dataset sharegpt or jsonl");
ABSL_FLAG(std::string, input_len, "128",
          "synthetic prompt tokens: N, uniform:LO:HI or lognormal:MEAN:SIGMA");
ABSL_FLAG(std::string, output_len, "128", "output tokens (max_tokens), same forms as --input-len");
ABSL_FLAG(int, shared_prefix_tokens, 0,
          "synthetic: every prompt starts with one of --prefix-groups shared prefixes of this "
          "many tokens (0: none), for measuring prefix caching");
ABSL_FLAG(int, prefix_groups, 1, "synthetic with --shared-prefix-tokens: distinct prefixes");
ABSL_FLAG(int, sharegpt_output_len, 0, "force max_tokens for ShareGPT requests (0: the reply's)");
ABSL_FLAG(std::string, corpus, "",
          "text file synthetic prompts are cut from "
          "(default: bench/data/corpus.txt)");
ABSL_FLAG(std::string, tokenizer, "auto",
          "how prompt tokens are counted: server (/tokenize), words, auto");
ABSL_FLAG(bool, ignore_eos, true, "send ignore_eos so the server generates max_tokens tokens");
ABSL_FLAG(std::string, extra_body, "", "JSON object merged into every request body");
ABSL_FLAG(std::string, slo, "", "SLOs, e.g. ttft:250,tpot:100[,e2e:5000] (milliseconds)");
ABSL_FLAG(double, attainment, 0.9, "SLO attainment target for goodput");
ABSL_FLAG(std::string, sweep, "", "rates to run in turn (e.g. 0.5,1,2) or auto (bisection)");
ABSL_FLAG(double, sweep_start, 1.0, "--sweep auto: first rate");
ABSL_FLAG(double, sweep_max, 64.0, "--sweep auto: highest rate tried");
ABSL_FLAG(double, sweep_precision, 0.05, "--sweep auto: stop when hi / lo <= 1 + this");
ABSL_FLAG(double, timeout, 600, "per-request timeout, seconds (send to last byte)");
ABSL_FLAG(std::string, result_dir, "", "write requests.csv, summary.json, plots here");
ABSL_FLAG(std::string, progress, "auto", "auto (bar on a terminal), bar, lines, off");
ABSL_FLAG(bool, plots, true, "draw PNG plots with gnuplot into --result-dir");
ABSL_FLAG(std::string, label, "", "a name for this run (in summary.json and table titles)");

namespace tandem::bench {
namespace {

struct Context {
  LoadConfig load;
  std::vector<BenchRequest> requests;
  std::string result_dir;
  std::string server_kind;
  double target = 0.9;
};

struct RateRun {
  double rate = 0;
  RunResult result;
  RunSummary summary;
  nlohmann::json cross_check;
};

absl::Status MakeDirs(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(StrCat("cannot create '", dir, "': ", ec.message()));
  return absl::OkStatus();
}

std::string FindCorpus() {
  std::string flag = absl::GetFlag(FLAGS_corpus);
  if (!flag.empty()) return flag;
  if (std::filesystem::exists("bench/data/corpus.txt")) return "bench/data/corpus.txt";
  return StrCat(TANDEM_BENCH_DATA_DIR, "/corpus.txt");
}

absl::StatusOr<std::map<std::string, double>> ScrapeMetrics(const LoadConfig& c) {
  TANDEM_ASSIGN_OR_RETURN(HttpResponse r,
                          HttpFetch(c.server, "GET", "/metrics", "", c.api_key, 10));
  if (r.status != 200) return absl::UnavailableError(StrCat("GET /metrics: HTTP ", r.status));
  return ParsePrometheusText(r.body);
}

// One measured run at `rate`, with the server's counters read around it.
absl::StatusOr<RateRun> RunAtRate(const Context& ctx, double rate, const std::string& title) {
  TANDEM_ASSIGN_OR_RETURN(
      ArrivalProcess arrivals,
      ArrivalProcess::Create({rate, absl::GetFlag(FLAGS_burstiness), absl::GetFlag(FLAGS_seed)}));
  const double duration = absl::GetFlag(FLAGS_duration);
  const size_t n_req = ctx.requests.size();
  ScheduleFn schedule;
  int expected = 0;
  if (duration > 0) {
    if (std::isinf(rate) && ctx.load.max_concurrency <= 0) {
      return absl::InvalidArgumentError("--duration with an infinite rate needs --max-concurrency");
    }
    auto state = std::make_shared<std::pair<ArrivalProcess, std::pair<size_t, double>>>(
        std::move(arrivals), std::pair<size_t, double>{0, 0.0});
    schedule = [state, n_req]() -> std::optional<Scheduled> {
      auto& [proc, pos] = *state;
      pos.second += proc.NextGap();
      return Scheduled{pos.first++ % n_req, pos.second};
    };
  } else {
    schedule = ScheduleFromOffsets(
        arrivals.SendOffsets(static_cast<int>(n_req), absl::GetFlag(FLAGS_rescale_arrivals)),
        n_req);
    expected = static_cast<int>(n_req);
  }
  std::map<std::string, double> before;
  if (!ctx.server_kind.empty()) {
    auto m = ScrapeMetrics(ctx.load);
    if (m.ok()) before = *m;
  }
  ProgressReporter progress(title, absl::GetFlag(FLAGS_progress));
  LoadRunner runner(ctx.load);
  RateRun out;
  out.rate = rate;
  TANDEM_ASSIGN_OR_RETURN(out.result,
                          runner.Run(ctx.requests, schedule, duration, expected, &progress));
  out.summary = Summarize(out.result.records, out.result.duration_s);
  if (!ctx.server_kind.empty()) {
    auto after = ScrapeMetrics(ctx.load);
    if (after.ok()) {
      ClientCounts cc;
      cc.completed_requests = out.summary.completed;
      cc.prompt_tokens = static_cast<double>(out.summary.input_tokens);
      cc.output_tokens = static_cast<double>(out.summary.output_tokens);
      cc.cached_tokens = static_cast<double>(out.summary.cached_tokens);
      auto rows = CrossCheck(before, *after, cc);
      std::printf("%s", FormatCrossCheck(ctx.server_kind, rows).c_str());
      out.cross_check = CrossCheckJson(ctx.server_kind, rows);
    } else {
      std::printf("Server cross-check: GET /metrics failed after the run: %s\n",
                  std::string(after.status().message()).c_str());
    }
  }
  return out;
}

nlohmann::json ConfigJson(const Context& ctx) {
  return {
      {"label", absl::GetFlag(FLAGS_label)},
      {"url", absl::GetFlag(FLAGS_url)},
      {"model", ctx.load.model},
      {"endpoint", absl::GetFlag(FLAGS_endpoint)},
      {"burstiness", absl::GetFlag(FLAGS_burstiness)},
      {"max_concurrency", ctx.load.max_concurrency},
      {"num_prompts", static_cast<int>(ctx.requests.size())},
      {"duration_s", absl::GetFlag(FLAGS_duration)},
      {"seed", absl::GetFlag(FLAGS_seed)},
      {"dataset", absl::GetFlag(FLAGS_dataset)},
      {"dataset_path", absl::GetFlag(FLAGS_dataset_path)},
      {"input_len", absl::GetFlag(FLAGS_input_len)},
      {"output_len", absl::GetFlag(FLAGS_output_len)},
      {"shared_prefix_tokens", absl::GetFlag(FLAGS_shared_prefix_tokens)},
      {"prefix_groups", absl::GetFlag(FLAGS_prefix_groups)},
      {"slo", ctx.load.slo.ToString()},
      {"attainment_target", ctx.target},
      {"ignore_eos", ctx.load.ignore_eos},
      {"timeout_s", ctx.load.timeout_s},
  };
}

absl::Status WriteRunFiles(const Context& ctx, const std::string& dir, const RateRun& run) {
  TANDEM_RETURN_IF_ERROR(MakeDirs(dir));
  TANDEM_RETURN_IF_ERROR(WriteTextFile(dir + "/requests.csv", RequestsCsv(run.result.records)));
  nlohmann::json j = ConfigJson(ctx);
  j["request_rate"] = std::isinf(run.rate) ? nlohmann::json("inf") : nlohmann::json(run.rate);
  nlohmann::json s = ToJson(run.summary);
  s["config"] = j;
  if (!run.cross_check.is_null()) s["server_cross_check"] = run.cross_check;
  return WriteTextFile(dir + "/summary.json", s.dump(2) + "\n");
}

std::string RateName(double rate) {
  return std::isinf(rate) ? "inf" : absl::StrFormat("%.4g", rate);
}

absl::StatusOr<std::vector<BenchRequest>> LoadRequests(const ServerUrl& server,
                                                       const std::string& api_key,
                                                       const std::string& model) {
  std::string note;
  TANDEM_ASSIGN_OR_RETURN(
      std::unique_ptr<TokenCounter> counter,
      MakeTokenCounter(absl::GetFlag(FLAGS_tokenizer), server, api_key, model, &note));
  if (!note.empty()) std::fprintf(stderr, "tandem-bench: %s\n", note.c_str());
  std::fprintf(stderr, "tandem-bench: counting prompt tokens with: %s\n", counter->Name().c_str());
  const std::string kind = absl::GetFlag(FLAGS_dataset);
  const int n = absl::GetFlag(FLAGS_num_prompts);
  if (n < 1) return absl::InvalidArgumentError("--num-prompts must be >= 1");
  if (kind == "synthetic") {
    SyntheticConfig sc;
    sc.num_requests = n;
    TANDEM_ASSIGN_OR_RETURN(sc.input, LengthDist::Parse(absl::GetFlag(FLAGS_input_len)));
    TANDEM_ASSIGN_OR_RETURN(sc.output, LengthDist::Parse(absl::GetFlag(FLAGS_output_len)));
    sc.seed = absl::GetFlag(FLAGS_seed);
    sc.shared_prefix_tokens = absl::GetFlag(FLAGS_shared_prefix_tokens);
    sc.prefix_groups = absl::GetFlag(FLAGS_prefix_groups);
    TANDEM_ASSIGN_OR_RETURN(std::vector<std::string> words, LoadCorpusWords(FindCorpus()));
    return SynthesizeRequests(sc, std::move(words), counter.get());
  }
  if (absl::GetFlag(FLAGS_shared_prefix_tokens) != 0) {
    return absl::InvalidArgumentError("--shared-prefix-tokens is for --dataset synthetic");
  }
  const std::string path = absl::GetFlag(FLAGS_dataset_path);
  if (path.empty())
    return absl::InvalidArgumentError(StrCat("--dataset ", kind, " needs --dataset-path"));
  if (kind == "sharegpt") {
    const int forced = absl::GetFlag(FLAGS_sharegpt_output_len);
    return LoadShareGpt(path, n, absl::GetFlag(FLAGS_seed), counter.get(),
                        forced > 0 ? std::optional<int>(forced) : std::nullopt);
  }
  if (kind == "jsonl") {
    TANDEM_ASSIGN_OR_RETURN(LengthDist out, LengthDist::Parse(absl::GetFlag(FLAGS_output_len)));
    return LoadJsonl(path, n, static_cast<int>(out.Mean()), counter.get());
  }
  return absl::InvalidArgumentError(
      StrCat("--dataset '", kind, "': want synthetic, sharegpt or jsonl"));
}

absl::StatusOr<int> Main() {
  Context ctx;
  TANDEM_ASSIGN_OR_RETURN(ctx.load.server, ParseServerUrl(absl::GetFlag(FLAGS_url)));
  ctx.load.api_key = absl::GetFlag(FLAGS_api_key);
  const std::string endpoint = absl::GetFlag(FLAGS_endpoint);
  if (endpoint == "chat") {
    ctx.load.endpoint = Endpoint::kChat;
  } else if (endpoint != "completions") {
    return absl::InvalidArgumentError(
        StrCat("--endpoint '", endpoint, "': want completions or chat"));
  }
  ctx.load.timeout_s = absl::GetFlag(FLAGS_timeout);
  ctx.load.max_concurrency = absl::GetFlag(FLAGS_max_concurrency);
  ctx.load.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  TANDEM_ASSIGN_OR_RETURN(ctx.load.slo, ParseSlo(absl::GetFlag(FLAGS_slo)));
  ctx.target = absl::GetFlag(FLAGS_attainment);
  if (!(ctx.target > 0 && ctx.target <= 1)) {
    return absl::InvalidArgumentError("--attainment must be in (0, 1]");
  }
  if (const std::string extra = absl::GetFlag(FLAGS_extra_body); !extra.empty()) {
    ctx.load.extra_body = nlohmann::json::parse(extra, nullptr, false);
    if (!ctx.load.extra_body.is_object()) {
      return absl::InvalidArgumentError("--extra-body must be a JSON object");
    }
  }
  ctx.load.model = absl::GetFlag(FLAGS_model);
  if (ctx.load.model.empty()) {
    auto r = HttpFetch(ctx.load.server, "GET", "/v1/models", "", ctx.load.api_key, 10);
    if (!r.ok()) {
      return absl::UnavailableError(StrCat("cannot reach the server at ", absl::GetFlag(FLAGS_url),
                                           ": ", std::string(r.status().message())));
    }
    nlohmann::json j = nlohmann::json::parse(r->body, nullptr, false);
    if (r->status == 200 && j.is_object() && j.contains("data") && j["data"].is_array() &&
        !j["data"].empty() && j["data"][0].contains("id") && j["data"][0]["id"].is_string()) {
      ctx.load.model = j["data"][0]["id"].get<std::string>();
    } else {
      return absl::InvalidArgumentError("GET /v1/models named no model; pass --model");
    }
  }
  TANDEM_ASSIGN_OR_RETURN(ctx.requests,
                          LoadRequests(ctx.load.server, ctx.load.api_key, ctx.load.model));
  long in_tokens = 0;
  for (const BenchRequest& r : ctx.requests) in_tokens += r.prompt_tokens;
  std::fprintf(stderr, "tandem-bench: %zu requests, mean prompt %.1f tokens, model '%s'\n",
               ctx.requests.size(), static_cast<double>(in_tokens) / ctx.requests.size(),
               ctx.load.model.c_str());

  // Is it tandem (or llama.cpp with --metrics)? Then counters are cross-checked.
  if (auto m = ScrapeMetrics(ctx.load); m.ok()) ctx.server_kind = DetectServerKind(*m);

  if (const int warm = absl::GetFlag(FLAGS_warmup); warm > 0) {
    LoadRunner runner(ctx.load);
    std::vector<double> offsets(warm, 0.0);
    TANDEM_ASSIGN_OR_RETURN(
        RunResult w,
        runner.Run(ctx.requests, ScheduleFromOffsets(offsets, ctx.requests.size()), 0, 0, nullptr));
    int ok = 0;
    for (const auto& r : w.records) ok += r.ok();
    if (ok == 0) {
      return absl::UnavailableError(
          StrCat("every warm-up request failed; first error: ", w.records.front().error));
    }
    std::fprintf(stderr, "tandem-bench: warm-up: %d/%d ok\n", ok, warm);
  }

  ctx.result_dir = absl::GetFlag(FLAGS_result_dir);
  const std::string sweep_text = absl::GetFlag(FLAGS_sweep);
  const std::string slo_text = ctx.load.slo.ToString();
  std::vector<RateRun> runs;
  auto measure = [&](double rate) -> absl::StatusOr<RateRun*> {
    const std::string title = StrCat("rate ", RateName(rate));
    TANDEM_ASSIGN_OR_RETURN(RateRun run, RunAtRate(ctx, rate, title));
    std::printf("%s", FormatSummaryTable(StrCat(absl::GetFlag(FLAGS_label), " ", title),
                                         run.summary, slo_text, ctx.target)
                          .c_str());
    std::fflush(stdout);
    if (!ctx.result_dir.empty()) {
      const std::string dir =
          sweep_text.empty() ? ctx.result_dir : StrCat(ctx.result_dir, "/rate-", RateName(rate));
      TANDEM_RETURN_IF_ERROR(WriteRunFiles(ctx, dir, run));
    }
    runs.push_back(std::move(run));
    return &runs.back();
  };

  if (sweep_text.empty()) {
    TANDEM_ASSIGN_OR_RETURN(RateRun * run, measure(absl::GetFlag(FLAGS_request_rate)));
    const RateRun r = *run;
    if (!ctx.result_dir.empty() && absl::GetFlag(FLAGS_plots)) {
      std::vector<PlotSeries> series(1);
      series[0] = {StrCat(RateName(r.rate), " req/s"),
                   r.rate,
                   r.summary.attainment,
                   r.summary.attainment_ttft,
                   r.summary.attainment_tpot,
                   r.result.records};
      TANDEM_ASSIGN_OR_RETURN(std::string msg, DrawPlots(ctx.result_dir, series, ctx.target,
                                                         ctx.load.slo.ttft_ms.value_or(0),
                                                         ctx.load.slo.tpot_ms.value_or(0)));
      std::fprintf(stderr, "tandem-bench: %s\n", msg.c_str());
    }
    return r.summary.completed == 0 ? 3 : 0;
  }

  TANDEM_ASSIGN_OR_RETURN(SweepSpec spec, ParseSweep(sweep_text));
  if (ctx.load.slo.empty()) {
    bool any = false;
    for (const auto& r : ctx.requests) any |= r.slo.has_value();
    if (!any) return absl::InvalidArgumentError("--sweep needs SLOs: pass --slo ttft:MS,tpot:MS");
  }
  SweepOutcome outcome;
  if (spec.automatic) {
    BisectConfig bc;
    bc.start_rate = absl::GetFlag(FLAGS_sweep_start);
    bc.max_rate = absl::GetFlag(FLAGS_sweep_max);
    bc.rel_tol = absl::GetFlag(FLAGS_sweep_precision);
    bc.target = ctx.target;
    bc.min_rate = bc.start_rate / 64;
    TANDEM_ASSIGN_OR_RETURN(outcome, BisectGoodput(bc, [&](double rate) -> absl::StatusOr<double> {
                              TANDEM_ASSIGN_OR_RETURN(RateRun * run, measure(rate));
                              return run->summary.attainment;
                            }));
  } else {
    for (double rate : spec.rates) {
      TANDEM_ASSIGN_OR_RETURN(RateRun * run, measure(rate));
      outcome.points.push_back({rate, run->summary.attainment});
    }
    outcome.goodput_rate = GoodputOfPoints(outcome.points, ctx.target);
    outcome.bounded = outcome.points.empty() || outcome.points.back().attainment < ctx.target;
  }
  std::vector<size_t> order(runs.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return runs[a].rate < runs[b].rate; });
  std::vector<SweepRow> rows;
  nlohmann::json points = nlohmann::json::array();
  std::vector<PlotSeries> series;
  for (size_t i : order) {
    rows.push_back({runs[i].rate, runs[i].summary});
    nlohmann::json p = ToJson(runs[i].summary);
    p["request_rate"] = runs[i].rate;
    if (!runs[i].cross_check.is_null()) p["server_cross_check"] = runs[i].cross_check;
    points.push_back(p);
    series.push_back({absl::StrFormat("%.3g req/s", runs[i].rate), runs[i].rate,
                      runs[i].summary.attainment, runs[i].summary.attainment_ttft,
                      runs[i].summary.attainment_tpot, runs[i].result.records});
  }
  const std::string table =
      FormatSweepTable(rows, outcome.goodput_rate, ctx.target, outcome.bounded);
  std::printf("==================== sweep %s ====================\n%s",
              absl::GetFlag(FLAGS_label).c_str(), table.c_str());
  if (!ctx.result_dir.empty()) {
    TANDEM_RETURN_IF_ERROR(MakeDirs(ctx.result_dir));
    nlohmann::json j = {{"config", ConfigJson(ctx)},
                        {"mode", spec.automatic ? "auto" : "list"},
                        {"goodput_rate", outcome.goodput_rate},
                        {"bounded", outcome.bounded},
                        {"points", points}};
    TANDEM_RETURN_IF_ERROR(WriteTextFile(ctx.result_dir + "/sweep.json", j.dump(2) + "\n"));
    TANDEM_RETURN_IF_ERROR(WriteTextFile(ctx.result_dir + "/sweep.txt", table));
    if (absl::GetFlag(FLAGS_plots)) {
      TANDEM_ASSIGN_OR_RETURN(std::string msg, DrawPlots(ctx.result_dir, series, ctx.target,
                                                         ctx.load.slo.ttft_ms.value_or(0),
                                                         ctx.load.slo.tpot_ms.value_or(0)));
      std::fprintf(stderr, "tandem-bench: %s\n", msg.c_str());
    }
  }
  return 0;
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "tandem-bench --url http://HOST:PORT [--request-rate R] [--num-prompts N] "
      "[--slo ttft:MS,tpot:MS] [--sweep auto|R1,R2,...] [--result-dir DIR]\n"
      "A goodput load generator for OpenAI-compatible servers; see docs/benchmarks.md.");
  // absl flags are identifiers; accept --foo-bar as --foo_bar (the name part only).
  std::vector<std::string> args = tandem::UnderscoreFlagNames(argc, argv);
  std::vector<char*> cargs;
  for (std::string& a : args) cargs.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(cargs.size()), cargs.data());
  absl::StatusOr<int> rc = tandem::bench::Main();
  if (!rc.ok()) {
    std::fprintf(stderr, "tandem-bench: %s\n", std::string(rc.status().message()).c_str());
    return 2;
  }
  return *rc;
}
