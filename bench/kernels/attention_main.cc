// tandem-bench-attention: the CPU backend's paged attention for one decode token per
// sequence, on SmolLM2-135M's shapes by default (30 layers, 9 query heads, 3 KV heads,
// head_dim 64, blocks of 16), for each ops ISA, KV dtype and context length. A "step" runs
// the op once per layer, as a decode step does; the figure is microseconds per step and per
// context position, and the K/V bytes read per second.
//
// The K and V arrays come from the CPU backend's allocator (on huge pages, as the KV cache).
// "cold" evicts the caches before every step by reading a buffer larger than the L3 (in a
// real step the weights streamed since the previous one have done that); "hot" does not, so
// it shows the arithmetic alone. The blocks of a sequence are scattered over the pool, as
// after a while of serving. Every figure is the median of --reps steps.
//
// With --threads T > 1 each step runs on a pool of T threads both ways CpuBackend could:
// "items" hands the (token, kv_head) items to the threads (3 items on 2 threads: one thread
// does two), "split" cuts each item's context into AttentionSplitCount(p, T) ranges and
// merges (what CpuBackend does; kernels/cpu/ops.h). The splits column says how many.
//
//   tandem-bench-attention [--isa all|scalar,avx2,avx512] [--kv_cache_dtype f16,int8,f32]
//                          [--context 128,512,2048] [--threads 1] [--reps 31] [--flush_mib 64]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "common/check.h"
#include "kernels/backend.h"
#include "kernels/cpu/host_memory.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"

ABSL_FLAG(std::vector<std::string>, isa, std::vector<std::string>({"all"}),
          "ops ISAs to run: all (every supported one) or a list of scalar, avx2, avx512");
ABSL_FLAG(std::vector<std::string>, kv_cache_dtype, std::vector<std::string>({"f16"}),
          "KV cache types: f16, int8, f32");
ABSL_FLAG(std::vector<std::string>, context, std::vector<std::string>({"128", "512", "2048"}),
          "context lengths (positions attended per query)");
ABSL_FLAG(std::vector<std::string>, threads, std::vector<std::string>({"1"}),
          "thread counts; above 1, each step runs both unsplit and split");
ABSL_FLAG(int, reps, 31, "timed steps per figure (the median is reported)");
ABSL_FLAG(int, flush_mib, 64, "bytes read between cold steps to evict the caches");
ABSL_FLAG(int, layers, 30, "layers per step");
ABSL_FLAG(int, heads, 9, "query heads");
ABSL_FLAG(int, kv_heads, 3, "KV heads");
ABSL_FLAG(int, head_dim, 64, "head dimension");
ABSL_FLAG(int, block_size, 16, "positions per KV block");

namespace tandem::bench {
namespace {

using kernels::AttentionParams;
using kernels::KvDType;
using kernels::cpu::OpsIsa;

struct Options {
  int layers, heads, kv_heads, head_dim, block_size, reps, flush_mib;
};

// A KV cache holding one sequence of `context` positions (plus the query's own) in blocks
// scattered over a pool four times larger, filled with random values.
class Cache {
 public:
  Cache(const Options& o, KvDType dtype, int context) : o_(o), dtype_(dtype) {
    n_seq_blocks_ = (context + o.block_size) / o.block_size;
    n_blocks_ = 4 * n_seq_blocks_;
    const size_t rows = static_cast<size_t>(o.layers) * n_blocks_ * o.kv_heads * o.block_size;
    const size_t bytes = rows * o.head_dim * kernels::KvElemBytes(dtype);
    std::mt19937 rng(7);
    k_ = HostBytes(bytes);
    v_ = HostBytes(bytes);
    if (dtype == KvDType::kF16) {  // halves in [0.5, 1) with random signs, never NaN
      for (size_t i = 0; i + 1 < bytes; i += 2) {
        const uint16_t h = 0x3800 | (rng() & 0x83ff);
        k_[i] = static_cast<uint8_t>(h), k_[i + 1] = static_cast<uint8_t>(h >> 8);
        const uint16_t g = 0x3800 | (rng() & 0x83ff);
        v_[i] = static_cast<uint8_t>(g), v_[i + 1] = static_cast<uint8_t>(g >> 8);
      }
    } else if (dtype == KvDType::kF32) {
      std::uniform_real_distribution<float> u(-1.f, 1.f);
      for (size_t i = 0; i < bytes; i += 4) {
        const float a = u(rng), b = u(rng);
        std::memcpy(&k_[i], &a, 4);
        std::memcpy(&v_[i], &b, 4);
      }
    } else {
      for (size_t i = 0; i < bytes; ++i) k_[i] = static_cast<uint8_t>(rng());
      for (size_t i = 0; i < bytes; ++i) v_[i] = static_cast<uint8_t>(rng());
      k_sz_.assign(rows * 2, 0.01f);
      v_sz_.assign(rows * 2, -0.5f);
    }
    // The sequence's blocks: a random choice of pool blocks, in random order.
    std::vector<int32_t> pool(n_blocks_);
    for (int i = 0; i < n_blocks_; ++i) pool[i] = i;
    std::shuffle(pool.begin(), pool.end(), rng);
    table_.assign(pool.begin(), pool.begin() + n_seq_blocks_);
    q_.assign(static_cast<size_t>(o.heads) * o.head_dim, 0.f);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (float& x : q_) x = nd(rng);
    out_.assign(q_.size(), 0.f);
    pos_ = context;
  }

  // One decode step: the op over every layer; on `pool`, with `splits` ranges per item (1:
  // the items alone).
  void Step(kernels::cpu::ThreadPool* pool = nullptr, int splits = 1) {
    AttentionParams p;
    p.q = q_.data();
    p.out = out_.data();
    p.token_seq = &seq_;
    p.positions = &pos_;
    p.block_tables = table_.data();
    p.n_tokens = 1;
    p.n_seqs = 1;
    p.max_blocks_per_seq = n_seq_blocks_;
    p.n_heads = o_.heads;
    p.n_kv_heads = o_.kv_heads;
    p.head_dim = o_.head_dim;
    p.scale = 1.f / std::sqrt(static_cast<float>(o_.head_dim));
    p.cache.dtype = dtype_;
    p.cache.n_layers = o_.layers;
    p.cache.n_blocks = n_blocks_;
    p.cache.block_size = o_.block_size;
    p.cache.n_kv_heads = o_.kv_heads;
    p.cache.head_dim = o_.head_dim;
    p.cache.k = k_.get();
    p.cache.v = v_.get();
    p.cache.k_scale_zero = k_sz_.empty() ? nullptr : k_sz_.data();
    p.cache.v_scale_zero = v_sz_.empty() ? nullptr : v_sz_.data();
    const int64_t items = kernels::cpu::AttentionItems(p);
    kernels::cpu::AttentionSplits s;
    if (splits > 1) {
      const int64_t heads = items * splits * (o_.heads / o_.kv_heads);
      split_scratch_.resize(static_cast<size_t>(heads) * (o_.head_dim + 2));
      s.n_splits = splits;
      s.acc = split_scratch_.data();
      s.max = s.acc + heads * o_.head_dim;
      s.sum = s.max + heads;
    }
    for (int l = 0; l < o_.layers; ++l) {
      p.layer = l;
      if (pool == nullptr) {
        kernels::cpu::AttentionRange(p, 0, items);
      } else if (splits <= 1) {
        pool->ParallelFor(
            items, 1, [&](int64_t b, int64_t e, int) { kernels::cpu::AttentionRange(p, b, e); });
      } else {
        pool->ParallelFor(items * splits, 1, [&](int64_t b, int64_t e, int) {
          kernels::cpu::AttentionSplitRange(p, s, b, e);
        });
        kernels::cpu::AttentionMergeRange(p, s, 0, items);
      }
    }
  }

  // The split count CpuBackend would use on `threads` threads.
  int SplitsFor(int threads) const {
    AttentionParams p;
    p.positions = &pos_;
    p.n_tokens = 1;
    p.n_heads = o_.heads;
    p.n_kv_heads = o_.kv_heads;
    return kernels::cpu::AttentionSplitCount(p, threads);
  }

  // K and V bytes one step reads.
  double StepBytes() const {
    const double row = o_.head_dim * kernels::KvElemBytes(dtype_) + (k_sz_.empty() ? 0 : 8);
    return 2.0 * row * (pos_ + 1) * o_.kv_heads * o_.layers;
  }

 private:
  Options o_;
  KvDType dtype_;
  int n_seq_blocks_ = 0, n_blocks_ = 0;
  // From the CPU backend's allocator, on huge pages as the engine's KV cache is.
  struct FreeHost {
    size_t bytes;
    void operator()(uint8_t* p) const { kernels::cpu::FreeHostBuffer(p, bytes); }
  };
  using HostPtr = std::unique_ptr<uint8_t[], FreeHost>;
  static HostPtr HostBytes(size_t bytes) {
    HostPtr p(static_cast<uint8_t*>(kernels::cpu::AllocateHostBuffer(bytes)), FreeHost{bytes});
    TANDEM_CHECK(p != nullptr);
    return p;
  }
  HostPtr k_, v_;
  std::vector<float> k_sz_, v_sz_, q_, out_, split_scratch_;
  std::vector<int32_t> table_;
  int32_t seq_ = 0, pos_ = 0;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Microseconds per step, median over o.reps steps.
double TimeSteps(Cache& cache, const Options& o, bool cold, const std::vector<uint8_t>& flush,
                 kernels::cpu::ThreadPool* pool, int splits) {
  std::vector<double> us;
  cache.Step(pool, splits);  // warm-up (and first touch of the pages)
  for (int r = 0; r < o.reps; ++r) {
    if (cold) {
      uint64_t sum = 0;
      for (size_t i = 0; i < flush.size(); i += 64) sum += flush[i];
      asm volatile("" : : "r"(sum));
    }
    const auto t0 = std::chrono::steady_clock::now();
    cache.Step(pool, splits);
    const auto t1 = std::chrono::steady_clock::now();
    us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  return Median(us);
}

int Run() {
  Options o{absl::GetFlag(FLAGS_layers),     absl::GetFlag(FLAGS_heads),
            absl::GetFlag(FLAGS_kv_heads),   absl::GetFlag(FLAGS_head_dim),
            absl::GetFlag(FLAGS_block_size), absl::GetFlag(FLAGS_reps),
            absl::GetFlag(FLAGS_flush_mib)};
  if (o.layers < 1 || o.heads < 1 || o.kv_heads < 1 || o.heads % o.kv_heads != 0 ||
      o.head_dim < 1 || o.head_dim > kernels::cpu::kMaxHeadDim || o.block_size < 1 || o.reps < 1 ||
      o.flush_mib < 0) {
    std::fprintf(stderr, "tandem-bench-attention: bad shape or --reps/--flush_mib\n");
    return 2;
  }
  std::vector<OpsIsa> isas;
  for (const std::string& name : absl::GetFlag(FLAGS_isa)) {
    bool found = false;
    for (OpsIsa isa : {OpsIsa::kScalar, OpsIsa::kAvx2, OpsIsa::kAvx512}) {
      if (name == "all" || name == kernels::cpu::OpsIsaName(isa)) {
        found = true;
        if (kernels::cpu::OpsIsaSupported(isa)) isas.push_back(isa);
      }
    }
    if (!found) {
      std::fprintf(stderr, "tandem-bench-attention: unknown --isa '%s'\n", name.c_str());
      return 2;
    }
  }
  std::vector<KvDType> dtypes;
  for (const std::string& name : absl::GetFlag(FLAGS_kv_cache_dtype)) {
    if (name == "f16") {
      dtypes.push_back(KvDType::kF16);
    } else if (name == "f32") {
      dtypes.push_back(KvDType::kF32);
    } else if (name == "int8") {
      dtypes.push_back(KvDType::kInt8);
    } else {
      std::fprintf(stderr, "tandem-bench-attention: unknown --kv_cache_dtype '%s'\n", name.c_str());
      return 2;
    }
  }
  std::vector<int> contexts;
  for (const std::string& s : absl::GetFlag(FLAGS_context)) {
    int c = 0;
    if (!absl::SimpleAtoi(s, &c) || c < 1) {
      std::fprintf(stderr, "tandem-bench-attention: bad --context '%s'\n", s.c_str());
      return 2;
    }
    contexts.push_back(c);
  }
  std::vector<int> thread_counts;
  for (const std::string& s : absl::GetFlag(FLAGS_threads)) {
    int t = 0;
    if (!absl::SimpleAtoi(s, &t) || t < 1) {
      std::fprintf(stderr, "tandem-bench-attention: bad --threads '%s'\n", s.c_str());
      return 2;
    }
    thread_counts.push_back(t);
  }
  std::vector<uint8_t> flush(static_cast<size_t>(o.flush_mib) << 20, 1);
  std::printf("shape: %d layers, %d heads, %d kv heads, head_dim %d, block %d; median of %d\n",
              o.layers, o.heads, o.kv_heads, o.head_dim, o.block_size, o.reps);
  std::printf("%-7s %-5s %8s %7s %6s %5s %12s %10s %8s\n", "isa", "kv", "context", "threads",
              "splits", "cache", "us/step", "ns/pos", "GB/s");
  for (int threads : thread_counts) {
    std::unique_ptr<kernels::cpu::ThreadPool> pool;
    if (threads > 1) {
      kernels::cpu::ThreadPoolOptions po;
      po.threads = threads;
      auto created = kernels::cpu::ThreadPool::Create(po);
      if (!created.ok()) {
        std::fprintf(stderr, "tandem-bench-attention: %s\n", created.status().ToString().c_str());
        return 2;
      }
      pool = std::move(created).value();
    }
    for (OpsIsa isa : isas) {
      kernels::cpu::SetOpsIsa(isa);
      for (KvDType dtype : dtypes) {
        for (int context : contexts) {
          Cache cache(o, dtype, context);
          std::vector<int> split_counts = {1};
          if (threads > 1 && cache.SplitsFor(threads) > 1) {
            split_counts.push_back(cache.SplitsFor(threads));
          }
          for (int splits : split_counts) {
            for (bool cold : {true, false}) {
              const double us = TimeSteps(cache, o, cold, flush, pool.get(), splits);
              std::printf("%-7s %-5s %8d %7d %6d %5s %12.1f %10.1f %8.2f\n",
                          kernels::cpu::OpsIsaName(isa),
                          dtype == KvDType::kF16   ? "f16"
                          : dtype == KvDType::kF32 ? "f32"
                                                   : "int8",
                          context, threads, splits, cold ? "cold" : "hot", us,
                          1e3 * us / (context + 1), cache.StepBytes() / us / 1e3);
            }
          }
        }
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "tandem-bench-attention [--isa all] [--kv_cache_dtype f16] [--context 128,512,2048]");
  absl::ParseCommandLine(argc, argv);
  return tandem::bench::Run();
}
