// StreamReadBandwidth: the memory bandwidth a plain streaming read reaches on this machine,
// the denominator of the decode roofline (a batch-1 decode step must read every weight
// once, so weight bytes / this bandwidth bounds its speed). Shared by tandem-bench-membw
// and tandem-bench-engine so both report the same figure.
//
// The kernel reads each thread's contiguous slice of one buffer with 64-byte (AVX-512) or
// 32-byte (AVX2) aligned loads into four independent integer accumulators, so neither
// arithmetic latency nor a store stream limits it: only the loads do. The result is folded
// into a value the caller keeps, so the compiler cannot drop the loads.
//
// Thread safety: StreamReadBuffer is used by one caller at a time; a measurement starts its
// own threads and joins them before it returns.
// Header-only on purpose: bench/ builds one executable per *_main.cc, with no shared library.
#ifndef TANDEM_BENCH_ENGINE_STREAM_READ_H_
#define TANDEM_BENCH_ENGINE_STREAM_READ_H_

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/host_memory.h"

namespace tandem::bench {

enum class StreamIsa { kScalar, kAvx2, kAvx512 };

inline StreamIsa BestStreamIsa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return StreamIsa::kAvx512;
  if (__builtin_cpu_supports("avx2")) return StreamIsa::kAvx2;
  return StreamIsa::kScalar;
}

inline const char* StreamIsaName(StreamIsa isa) {
  switch (isa) {
    case StreamIsa::kAvx512:
      return "avx512";
    case StreamIsa::kAvx2:
      return "avx2";
    case StreamIsa::kScalar:
      return "scalar";
  }
  return "?";
}

namespace stream_internal {

// Each kernel reads [p, p + bytes); bytes is a multiple of 256.
__attribute__((target("avx512f"))) inline uint64_t ReadAvx512(const uint8_t* p, size_t bytes) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < bytes; i += 256) {
    a0 = _mm512_add_epi64(a0, _mm512_load_si512(p + i));
    a1 = _mm512_add_epi64(a1, _mm512_load_si512(p + i + 64));
    a2 = _mm512_add_epi64(a2, _mm512_load_si512(p + i + 128));
    a3 = _mm512_add_epi64(a3, _mm512_load_si512(p + i + 192));
  }
  a0 = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, a0);
  uint64_t sum = 0;
  for (uint64_t lane : lanes) sum += lane;
  return sum;
}

__attribute__((target("avx2"))) inline uint64_t ReadAvx2(const uint8_t* p, size_t bytes) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < bytes; i += 128) {
    a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), a0);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

inline uint64_t ReadScalar(const uint8_t* p, size_t bytes) {
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  for (size_t i = 0; i < bytes; i += 32) {
    uint64_t v[4];
    std::memcpy(v, p + i, sizeof(v));
    a0 += v[0];
    a1 += v[1];
    a2 += v[2];
    a3 += v[3];
  }
  return a0 + a1 + a2 + a3;
}

inline uint64_t Read(StreamIsa isa, const uint8_t* p, size_t bytes) {
  switch (isa) {
    case StreamIsa::kAvx512:
      return ReadAvx512(p, bytes);
    case StreamIsa::kAvx2:
      return ReadAvx2(p, bytes);
    case StreamIsa::kScalar:
      break;
  }
  return ReadScalar(p, bytes);
}

}  // namespace stream_internal

// A page-aligned buffer, written once so every page is backed by memory before timing. It
// comes from the CPU backend's allocator, on huge pages as the weights and the KV cache are
// (kernels/cpu/host_memory.h): the roofline is the best streaming rate the machine gives the
// engine's own buffers, not a rate 4 KiB pages' TLB misses hold down.
class StreamReadBuffer {
 public:
  explicit StreamReadBuffer(size_t bytes) : bytes_(bytes / 4096 * 4096) {
    data_ = static_cast<uint8_t*>(kernels::cpu::AllocateHostBuffer(bytes_));
    if (data_ != nullptr) {
      // Pseudo-random words, so no two pages are alike: identical pages could be merged
      // (KSM, or the hypervisor's page sharing) into one cached page and inflate the figure.
      uint64_t x = 0x9E3779B97F4A7C15ull;
      for (size_t i = 0; i + 8 <= bytes_; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::memcpy(data_ + i, &x, 8);
      }
    }
  }
  ~StreamReadBuffer() { kernels::cpu::FreeHostBuffer(data_, bytes_); }
  StreamReadBuffer(const StreamReadBuffer&) = delete;
  StreamReadBuffer& operator=(const StreamReadBuffer&) = delete;

  bool ok() const { return data_ != nullptr; }
  size_t bytes() const { return bytes_; }

  // One pass over the whole buffer split into `threads` equal slices, one per thread, all
  // released at once. Returns GB/s (1e9 bytes per second) from release to the last finish.
  double MeasureOnce(StreamIsa isa, int threads) {
    threads = std::max(1, threads);
    const size_t slice = bytes_ / threads / 256 * 256;
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<uint64_t> sums(threads, 0);
    std::vector<std::thread> workers;
    auto body = [&](int t) {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      sums[t] = stream_internal::Read(isa, data_ + t * slice, slice);
    };
    for (int t = 1; t < threads; ++t) workers.emplace_back(body, t);
    while (ready.load() != threads - 1) {
    }
    const auto t0 = std::chrono::steady_clock::now();
    go.store(true, std::memory_order_release);
    ready.fetch_add(1);
    sums[0] = stream_internal::Read(isa, data_, slice);
    for (std::thread& w : workers) w.join();
    const auto t1 = std::chrono::steady_clock::now();
    for (uint64_t s : sums) sink_ ^= s;
    const double secs = std::chrono::duration<double>(t1 - t0).count();
    return static_cast<double>(slice) * threads / secs / 1e9;
  }

  // Median GB/s over `reps` passes, after one untimed warm-up pass.
  double MedianGbps(StreamIsa isa, int threads, int reps) {
    MeasureOnce(isa, threads);
    std::vector<double> v;
    for (int r = 0; r < std::max(1, reps); ++r) v.push_back(MeasureOnce(isa, threads));
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  }

  // Folded result of every pass; print or test it so the loads stay live.
  uint64_t sink() const { return sink_; }

 private:
  size_t bytes_;
  uint8_t* data_ = nullptr;
  uint64_t sink_ = 0;
};

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_ENGINE_STREAM_READ_H_
