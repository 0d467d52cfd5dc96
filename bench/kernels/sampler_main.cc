// tandem-bench-sampler: one row of logits sampled by the host sampler (model::Sampler, what
// ModelRunner runs with --sampling host) and by the CPU backend's sampling op
// (Backend::Sample, what it runs with --sampling device), side by side, for filter settings
// users send. Logits are normal with sd 3 over the vocabulary (SmolLM2's 49,152 by default),
// sixteen different rows in turn; one thread. Every figure is the median over --reps runs of
// --rows samples, in microseconds per row.
//
//   tandem-bench-sampler [--vocab 49152] [--rows 400] [--reps 5]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/sampler.h"

ABSL_FLAG(int, vocab, 49152, "Vocabulary size (logits per row).");
ABSL_FLAG(int, rows, 400, "Rows sampled per run.");
ABSL_FLAG(int, reps, 5, "Runs per figure (the median is reported).");

namespace {

using Clock = std::chrono::steady_clock;

struct Case {
  const char* name;
  float temperature;
  int top_k;
  float top_p;
  float min_p;
  bool logprobs;
};

template <typename F>
double MedianMicrosPerRow(int reps, int rows, F sample_rows) {
  std::vector<double> runs;
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = Clock::now();
    sample_rows();
    runs.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / rows);
  }
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Host sampler vs the CPU backend's sampling op, per row.");
  absl::ParseCommandLine(argc, argv);
  const int vocab = absl::GetFlag(FLAGS_vocab);
  const int rows = absl::GetFlag(FLAGS_rows);
  const int reps = absl::GetFlag(FLAGS_reps);
  if (vocab < 2 || rows < 1 || reps < 1) {
    std::fprintf(stderr, "--vocab >= 2, --rows >= 1 and --reps >= 1\n");
    return 2;
  }
  constexpr int kDistinct = 16;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(static_cast<size_t>(kDistinct) * vocab);
  for (float& x : logits) x = normal(rng);

  tandem::kernels::cpu::CpuBackendConfig cc;
  cc.threads = 1;
  auto backend = tandem::kernels::cpu::CreateCpuBackend(cc);
  if (!backend.ok()) {
    std::fprintf(stderr, "%s\n", backend.status().ToString().c_str());
    return 1;
  }
  // The op's scratch is sized by a packed weight of vocab rows, as the output projection does.
  std::vector<float> w(vocab, 0.0f);
  auto weight = (*backend)->PackWeight(
      tandem::kernels::WeightDesc{tandem::kernels::DType::kF32, vocab, 1, w.data(), "output"});
  if (!weight.ok()) {
    std::fprintf(stderr, "%s\n", weight.status().ToString().c_str());
    return 1;
  }

  const Case cases[] = {
      {"greedy", 0.0f, 0, 1.0f, 0.0f, false},
      {"temperature 1", 1.0f, 0, 1.0f, 0.0f, false},
      {"top-k 40", 1.0f, 40, 1.0f, 0.0f, false},
      {"top-k 40, top-p 0.9", 1.0f, 40, 0.9f, 0.0f, false},
      {"top-p 0.9", 1.0f, 0, 0.9f, 0.0f, false},
      {"temperature 2, top-p 0.95", 2.0f, 0, 0.95f, 0.0f, false},
      {"temperature 0.7, top-p 0.9, min-p 0.05", 0.7f, 0, 0.9f, 0.05f, false},
      {"top-k 1000", 1.0f, 1000, 1.0f, 0.0f, false},
      {"temperature 1 + logprobs", 1.0f, 0, 1.0f, 0.0f, true},
  };
  std::printf("vocab %d, %d rows per run, median of %d runs, one thread (us per row)\n", vocab,
              rows, reps);
  std::printf("%-40s %10s %10s %8s\n", "case", "host", "op", "op/host");
  int64_t sink = 0;
  for (const Case& c : cases) {
    tandem::model::SamplingParams sp;
    sp.temperature = c.temperature;
    sp.top_k = c.top_k;
    sp.top_p = c.top_p;
    sp.min_p = c.min_p;
    sp.logprobs = c.logprobs;
    sp.seed = 1;
    sp.has_seed = true;
    tandem::model::Sampler sampler(sp, vocab, -1);
    const double host = MedianMicrosPerRow(reps, rows, [&] {
      for (int i = 0; i < rows; ++i) {
        sink +=
            sampler.Sample(logits.data() + static_cast<size_t>(i % kDistinct) * vocab, vocab).token;
      }
    });
    float temperature = c.temperature, top_p = c.top_p, min_p = c.min_p, logprob = 0.0f;
    int32_t top_k = c.top_k, id = 0;
    uint64_t seed = 1, counter = 0;
    const double op = MedianMicrosPerRow(reps, rows, [&] {
      for (int i = 0; i < rows; ++i) {
        tandem::kernels::SampleParams p;
        p.logits = logits.data() + static_cast<size_t>(i % kDistinct) * vocab;
        p.temperature = &temperature;
        p.top_k = &top_k;
        p.top_p = &top_p;
        p.min_p = &min_p;
        p.seed = &seed;
        p.counter = &counter;
        p.out_ids = &id;
        p.out_logprobs = c.logprobs ? &logprob : nullptr;
        p.rows = 1;
        p.vocab = vocab;
        (*backend)->Sample(p, (*backend)->DefaultStream());
        ++counter;
        sink += id;
      }
    });
    std::printf("%-40s %10.1f %10.1f %8.2f\n", c.name, host, op, op / host);
  }
  std::fprintf(stderr, "(checksum %lld)\n", static_cast<long long>(sink));
  return 0;
}
