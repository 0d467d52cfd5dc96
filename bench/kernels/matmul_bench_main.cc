// tandem-bench-matmul-bench: CpuBackend::Matmul on SmolLM2-135M's shapes for each ISA and
// thread count. m = 1 (decode) reports GB/s of weight bytes read, both "cold" (cycling
// through enough copies of the weight to overflow the caches, as a forward pass does) and
// "hot" (one copy, cache-resident); m > 1 reports GFLOP/s (2 m rows cols per call). Every
// figure is the median of --reps timed passes. Also reports the thread pool's dispatch
// cost (empty ParallelFor).
//
// Time is the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID), not wall time, so that
// the figures mean something on a shared, oversubscribed machine: time the engine thread
// is descheduled does not count, while time it spends waiting for a late worker does (it
// spins). Pass --wall to time with the wall clock instead.
//
//   tandem-bench-matmul-bench [--isa all|scalar,avx2,...] [--threads 1,2] [--m 1,8,32,128,512]
//                             [--reps 7] [--cold_mib 256]
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/quant.h"

ABSL_FLAG(std::vector<std::string>, isa, std::vector<std::string>({"all"}),
          "ISAs to run (all = every available one)");
ABSL_FLAG(std::vector<std::string>, threads, std::vector<std::string>({"1", "2"}), "thread counts");
ABSL_FLAG(std::vector<std::string>, m, std::vector<std::string>({"1", "8", "32", "128", "512"}),
          "activation rows per call");
ABSL_FLAG(int, reps, 7, "timed passes per figure (median reported)");
ABSL_FLAG(int, cold_mib, 256, "bytes of weight copies cycled through for cold m=1 figures");
ABSL_FLAG(bool, wall, false, "time with the wall clock instead of the thread's CPU time");

namespace tandem::bench {
namespace {

using kernels::Backend;
using kernels::DType;
using kernels::cpu::Isa;

struct Shape {
  const char* name;
  DType type;
  int64_t rows;
  int64_t cols;
};

double Now() {
  timespec ts;
  clock_gettime(absl::GetFlag(FLAGS_wall) ? CLOCK_MONOTONIC : CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<uint8_t> RandomWeight(const Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> row(s.cols);
  const int64_t row_bytes = kernels::RowBytes(s.type, s.cols);
  std::vector<uint8_t> out(s.rows * row_bytes);
  for (int64_t r = 0; r < s.rows; ++r) {
    for (auto& v : row) v = dist(rng);
    kernels::QuantizeRow(s.type, row.data(), s.cols, out.data() + r * row_bytes);
  }
  return out;
}

std::vector<int> ParseInts(const std::vector<std::string>& list, const char* what) {
  std::vector<int> out;
  for (const std::string& s : list) {
    int v = 0;
    if (!absl::SimpleAtoi(s, &v) || v < 1) {
      std::fprintf(stderr, "bad --%s entry '%s'\n", what, s.c_str());
      std::exit(2);
    }
    out.push_back(v);
  }
  return out;
}

void BenchDispatch(int threads) {
  kernels::cpu::ThreadPoolOptions options;
  options.threads = threads;
  auto pool = kernels::cpu::ThreadPool::Create(options);
  if (!pool.ok()) return;
  volatile int64_t sink = 0;
  auto body = [&](int64_t b, int64_t e, int) { sink = e - b; };
  std::vector<double> reps;
  for (int rep = 0; rep < 7; ++rep) {
    const int kIters = 2000;
    const double t0 = Now();
    for (int i = 0; i < kIters; ++i) (*pool)->ParallelFor(threads, body);
    reps.push_back((Now() - t0) / kIters * 1e6);
  }
  std::printf("dispatch: ParallelFor over %d threads, empty body: %.2f us (median)\n", threads,
              Median(reps));
}

int Main() {
  std::vector<Isa> isas;
  for (const std::string& s : absl::GetFlag(FLAGS_isa)) {
    if (s == "all") {
      for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAmx}) {
        if (kernels::cpu::IsaAvailable(isa)) isas.push_back(isa);
      }
      continue;
    }
    auto isa = kernels::cpu::ParseIsa(s);
    if (!isa.ok() || !kernels::cpu::IsaAvailable(*isa)) {
      std::fprintf(stderr, "--isa %s is unknown or not available here\n", s.c_str());
      return 2;
    }
    isas.push_back(*isa);
  }
  const std::vector<int> thread_counts = ParseInts(absl::GetFlag(FLAGS_threads), "threads");
  const std::vector<int> ms = ParseInts(absl::GetFlag(FLAGS_m), "m");
  const int reps = std::max(1, absl::GetFlag(FLAGS_reps));
  const int64_t cold_bytes = int64_t{absl::GetFlag(FLAGS_cold_mib)} << 20;
  const int max_m = *std::max_element(ms.begin(), ms.end());

  const std::vector<Shape> shapes = {
      {"attn_q/o 576x576", DType::kQ4_1, 576, 576},
      {"attn_k/v 192x576", DType::kQ4_1, 192, 576},
      {"ffn_gate/up 1536x576", DType::kQ4_1, 1536, 576},
      {"ffn_down 576x1536", DType::kQ4_1, 576, 1536},
      {"output 49152x576", DType::kQ8_0, 49152, 576},
  };
  std::vector<float> x(static_cast<size_t>(max_m) * 1536);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (auto& v : x) v = dist(rng);

  for (int t : thread_counts) BenchDispatch(t);
  std::printf("%-8s %-3s %-22s %5s %12s %12s %12s\n", "isa", "thr", "shape", "m", "us/call",
              "GB/s cold", "GB/s hot|GF/s");
  for (Isa isa : isas) {
    for (int threads : thread_counts) {
      kernels::cpu::CpuBackendConfig config;
      config.isa = isa;
      config.threads = threads;
      auto backend_or = kernels::cpu::CreateCpuBackend(config);
      if (!backend_or.ok()) {
        std::fprintf(stderr, "%s\n", backend_or.status().ToString().c_str());
        return 1;
      }
      Backend& backend = **backend_or;
      for (const Shape& s : shapes) {
        const std::vector<uint8_t> w = RandomWeight(s, 7);
        const double wbytes = static_cast<double>(w.size());
        const int n_copies = static_cast<int>(std::max<int64_t>(1, cold_bytes / w.size()));
        std::vector<std::unique_ptr<kernels::Weight>> copies;
        for (int c = 0; c < n_copies; ++c) {
          auto p = backend.PackWeight({s.type, s.rows, s.cols, w.data(), s.name});
          if (!p.ok()) return 1;
          copies.push_back(std::move(*p));
        }
        std::vector<float> y(static_cast<size_t>(max_m) * s.rows);
        for (int m : ms) {
          // Scalar is slow: fewer calls for big problems.
          const double flops = 2.0 * m * s.rows * s.cols;
          const int calls =
              std::max(1, static_cast<int>(2e8 / flops / (isa == Isa::kScalar ? 20 : 1)));
          std::vector<double> hot, cold;
          for (int rep = 0; rep < reps + 1; ++rep) {
            double t0 = Now();
            for (int c = 0; c < calls; ++c) {
              backend.Matmul(*copies[0], x.data(), m, y.data(), backend.DefaultStream());
            }
            double t1 = Now();
            if (rep > 0) hot.push_back((t1 - t0) / calls);
            if (m == 1 && n_copies > 1) {
              t0 = Now();
              for (const auto& c : copies) {
                backend.Matmul(*c, x.data(), m, y.data(), backend.DefaultStream());
              }
              t1 = Now();
              if (rep > 0) cold.push_back((t1 - t0) / n_copies);
            }
          }
          const double t_hot = Median(hot);
          if (m == 1) {
            std::printf("%-8s %-3d %-22s %5d %12.2f %12.2f %12.2f\n", kernels::cpu::IsaName(isa),
                        threads, s.name, m, t_hot * 1e6,
                        cold.empty() ? 0.0 : wbytes / Median(cold) / 1e9, wbytes / t_hot / 1e9);
          } else {
            std::printf("%-8s %-3d %-22s %5d %12.2f %12s %12.2f\n", kernels::cpu::IsaName(isa),
                        threads, s.name, m, t_hot * 1e6, "", flops / t_hot / 1e9);
          }
          std::fflush(stdout);
        }
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return tandem::bench::Main();
}
