// tandem-bench-nano: one step run monolithic (ModelRunner::Execute on all the threads) beside
// the same step run as two nano-batches on two thread groups of half the threads each
// (ModelRunner::ExecuteNano), on the same runner, KV and weights. bench/nano/run drives it.
// With --device cuda:N the groups are two streams on the GPU pipelined by events (model_runner.h)
// and --threads does not apply; scripts/gpu-check runs that.
//
//   tandem-bench-nano --model M.gguf [--device cpu] [--threads 2] [--decode 8,32,64]
//                     [--context 256] [--mixed_prefill 256 --mixed_decode 16] [--reps 5] [--pin]
//                     [--json]
//
// Shapes: decode batches of --decode sequences at --context, and one prefill-heavy mixed step
// (a --mixed_prefill-token chunk at position 0 beside --mixed_decode decodes). Placement: a
// decode batch alternates its sequences over the two groups (halves); the mixed step puts the
// prompt chunk on group 0 and the decodes on group 1 (what the planner's greedy balance gives
// when the chunk costs more than the decodes together). Each figure is the median of --reps
// timed steps after two warm-up steps, the modes interleaved so drift hits them alike; also
// timed: the whole step on group 0 alone (the planner's "group" latency model profiles that).
// The KV of the contexts is never computed (the cache's zero pages stand in, as in the engine's
// profile): attention reads the same bytes whatever they hold.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kvcache/block_table.h"
#include "model/gguf_file.h"
#include "model/model_runner.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, model, "", "GGUF model file (required)");
ABSL_FLAG(std::string, device, "cpu", "cpu, or cuda:N in a build with the CUDA backend");
ABSL_FLAG(int, threads, 2, "threads of the monolithic step; the groups take half each");
ABSL_FLAG(std::vector<std::string>, decode, std::vector<std::string>({"8", "32", "64"}),
          "decode batch sizes");
ABSL_FLAG(int, context, 256, "context of each decode token");
ABSL_FLAG(int, mixed_prefill, 256, "prompt tokens of the mixed step (0: no mixed step)");
ABSL_FLAG(int, mixed_decode, 16, "decode tokens of the mixed step");
ABSL_FLAG(int, reps, 5, "timed repetitions per figure (the median is reported)");
ABSL_FLAG(bool, pin, false, "pin thread i to CPU i");
ABSL_FLAG(bool, json, false, "print one JSON object per shape instead of the table");

namespace tandem {
namespace {

struct Shape {
  std::string name;
  int decode = 0;
  int prefill = 0;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Run() {
  const std::string path = absl::GetFlag(FLAGS_model);
  if (path.empty()) {
    std::fprintf(stderr, "tandem-bench-nano: --model is required\n");
    return 2;
  }
  auto file = model::GgufFile::Open(path);
  if (!file.ok()) {
    std::fprintf(stderr, "tandem-bench-nano: %s\n", file.status().ToString().c_str());
    return 1;
  }
  const int threads = absl::GetFlag(FLAGS_threads);
  const int context = absl::GetFlag(FLAGS_context);
  std::vector<Shape> shapes;
  int max_decode = absl::GetFlag(FLAGS_mixed_decode);
  for (const std::string& s : absl::GetFlag(FLAGS_decode)) {
    int n = 0;
    if (!absl::SimpleAtoi(s, &n) || n < 1) {
      std::fprintf(stderr, "tandem-bench-nano: bad --decode entry '%s'\n", s.c_str());
      return 2;
    }
    shapes.push_back({absl::StrCat("decode ", n, " @", context), n, 0});
    max_decode = std::max(max_decode, n);
  }
  const int mixed_prefill = absl::GetFlag(FLAGS_mixed_prefill);
  if (mixed_prefill > 0) {
    const int d = absl::GetFlag(FLAGS_mixed_decode);
    shapes.push_back({absl::StrCat("prefill ", mixed_prefill, " + decode ", d, " @", context), d,
                      mixed_prefill});
  }

  model::ModelRunnerConfig config;
  config.backend.device = absl::GetFlag(FLAGS_device);
  config.backend.cpu.threads = threads;
  // Both modes bring the logits to the host, as ExecuteNano does (a GPU would keep them on the
  // device for sampling in the monolithic step otherwise).
  config.sampling = model::SamplingPlace::kHost;
  if (absl::GetFlag(FLAGS_pin)) {
    for (int i = 0; i < threads; ++i) config.backend.cpu.cpus.push_back(i);
  }
  config.model.max_batch_tokens = std::max(512, mixed_prefill + max_decode);
  config.model.max_logit_rows = max_decode + 1;
  config.model.max_seqs = max_decode + 1;
  config.kv_cache_bytes = size_t{1} << 30;
  config.nano_groups = 2;
  auto runner = model::ModelRunner::Create(config, **file);
  if (!runner.ok()) {
    std::fprintf(stderr, "tandem-bench-nano: %s\n", runner.status().ToString().c_str());
    return 1;
  }
  model::ModelRunner& r = **runner;
  const int block = config.model.block_size;

  if (!absl::GetFlag(FLAGS_json)) {
    std::printf("%-34s %12s %12s %12s %8s\n", "step (threads: whole / 2 groups)", "mono ms",
                "nano ms", "group0 ms", "nano/mono");
  }
  for (const Shape& shape : shapes) {
    std::vector<kvcache::BlockTable> tables;
    std::vector<std::vector<int32_t>> tokens;
    std::vector<int> starts, batch_of, alone;
    for (int i = 0; i < shape.decode; ++i) {
      tables.emplace_back(block);
      tokens.push_back({static_cast<int32_t>(100 + i)});
      starts.push_back(context - 1);
      batch_of.push_back(shape.prefill > 0 ? 1 : i % 2);
    }
    if (shape.prefill > 0) {
      tables.emplace_back(block);
      std::vector<int32_t> p(shape.prefill);
      for (int i = 0; i < shape.prefill; ++i) p[i] = 100 + (i * 7919) % 20000;
      tokens.push_back(std::move(p));
      starts.push_back(0);
      batch_of.push_back(0);
    }
    alone.assign(batch_of.size(), 0);
    for (size_t i = 0; i < tables.size(); ++i) {
      const absl::Status s =
          r.kv().Append(tables[i], starts[i] + static_cast<int>(tokens[i].size()));
      if (!s.ok()) {
        std::fprintf(stderr, "tandem-bench-nano: %s\n", s.ToString().c_str());
        return 1;
      }
    }
    // mode 0: monolithic; 1: nano-batched; 2: all on group 0.
    auto step = [&](int mode) {
      r.BeginStep();
      for (size_t i = 0; i < tables.size(); ++i) r.AddChunk(tables[i], tokens[i], starts[i], true);
      const auto t0 = std::chrono::steady_clock::now();
      const absl::Status s = mode == 0 ? r.Execute() : r.ExecuteNano(mode == 1 ? batch_of : alone);
      const double sec =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!s.ok()) {
        std::fprintf(stderr, "tandem-bench-nano: %s\n", s.ToString().c_str());
        std::exit(1);
      }
      return sec;
    };
    for (int w = 0; w < 2; ++w) {
      for (int mode = 0; mode < 3; ++mode) step(mode);
    }
    std::vector<double> times[3];
    for (int rep = 0; rep < absl::GetFlag(FLAGS_reps); ++rep) {
      for (int mode = 0; mode < 3; ++mode) times[mode].push_back(step(mode));
    }
    const double mono = Median(times[0]) * 1e3, nano = Median(times[1]) * 1e3,
                 group0 = Median(times[2]) * 1e3;
    if (absl::GetFlag(FLAGS_json)) {
      nlohmann::json j = {
          {"shape", shape.name},      {"threads", threads},       {"device", config.backend.device},
          {"decode", shape.decode},   {"prefill", shape.prefill}, {"context", context},
          {"mono_ms", mono},          {"nano_ms", nano},          {"group0_ms", group0},
          {"mono_runs_ms", times[0]}, {"nano_runs_ms", times[1]}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%-34s %12.2f %12.2f %12.2f %8.3f\n", shape.name.c_str(), mono, nano, group0,
                  nano / mono);
    }
    std::fflush(stdout);
    for (auto& t : tables) r.kv().Free(t);
  }
  return 0;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("monolithic vs nano-batched steps (see bench/nano/run)");
  absl::ParseCommandLine(argc, argv);
  return tandem::Run();
}
