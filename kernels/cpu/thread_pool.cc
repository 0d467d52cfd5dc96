#include "kernels/cpu/thread_pool.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace tandem::kernels::cpu {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

void FutexWait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
}

void FutexWakeAll(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

bool PinThread(pthread_t thread, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(thread, sizeof(set), &set) == 0;
}

// Chunk t of n items split into k contiguous chunks.
inline int64_t ChunkBegin(int64_t n, int k, int t) { return n * t / k; }

}  // namespace

absl::StatusOr<std::vector<int>> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) {
    return absl::InternalError("sched_getaffinity failed");
  }
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}

absl::StatusOr<std::unique_ptr<ThreadPool>> ThreadPool::Create(const ThreadPoolOptions& options) {
  if (options.threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("thread pool needs at least 1 thread, got ", options.threads));
  }
  if (!options.cpus.empty()) {
    if (static_cast<int>(options.cpus.size()) != options.threads) {
      return absl::InvalidArgumentError(absl::StrCat("pin list has ", options.cpus.size(),
                                                     " CPUs for ", options.threads, " threads"));
    }
    absl::StatusOr<std::vector<int>> allowed = AllowedCpus();
    if (!allowed.ok()) return allowed.status();
    std::vector<int> seen;
    for (int cpu : options.cpus) {
      if (std::find(allowed->begin(), allowed->end(), cpu) == allowed->end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("CPU ", cpu, " is not available to this process"));
      }
      if (std::find(seen.begin(), seen.end(), cpu) != seen.end()) {
        return absl::InvalidArgumentError(absl::StrCat("CPU ", cpu, " is listed twice"));
      }
      seen.push_back(cpu);
    }
  }
  if (options.spin_us < 0) return absl::InvalidArgumentError("spin_us must be >= 0");
  auto pool = std::unique_ptr<ThreadPool>(new ThreadPool(options));
  for (int i = 1; i < pool->n_threads_; ++i) {
    if (!pool->cpus_.empty() && !PinThread(pool->workers_[i - 1].native_handle(), pool->cpus_[i])) {
      return absl::InternalError(absl::StrCat("could not pin a worker to CPU ", pool->cpus_[i]));
    }
  }
  return pool;
}

ThreadPool::ThreadPool(const ThreadPoolOptions& options)
    : n_threads_(options.threads), cpus_(options.cpus), spin_us_(options.spin_us) {
  workers_.reserve(n_threads_ - 1);
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_seq_cst);
  FutexWakeAll(&generation_);
  for (auto& t : workers_) t.join();
}

void ThreadPool::PinCallerIfNeeded() {
  if (cpus_.empty()) return;
  const pthread_t self = pthread_self();
  if (caller_pinned_ && pthread_equal(self, pinned_caller_)) return;
  // The CPU id was validated by Create; a failure here means the process's cpuset shrank
  // since, and running unpinned is the useful fallback.
  PinThread(self, cpus_[0]);
  pinned_caller_ = self;
  caller_pinned_ = true;
}

void ThreadPool::ParallelFor(int64_t n_items, int64_t min_chunk, RangeFn fn) {
  if (n_items <= 0) return;
  PinCallerIfNeeded();
  min_chunk = std::max<int64_t>(min_chunk, 1);
  const int n_chunks =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads_, n_items / min_chunk)));
  if (n_chunks <= 1) {
    fn(0, n_items, 0);
    return;
  }
  job_.fn = &fn;
  job_.n_items = n_items;
  job_.n_chunks = n_chunks;
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  // seq_cst pairs with the worker's sleepers_ increment: either we see it and wake, or the
  // worker sees the new generation and does not sleep.
  generation_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) FutexWakeAll(&generation_);

  fn(0, ChunkBegin(n_items, n_chunks, 1), 0);

  // Spin while the workers are plausibly running; past ~20 us a worker has probably lost
  // its core (oversubscribed machine), and spinning on would keep it from getting one.
  int spins = 0;
  std::chrono::steady_clock::time_point spin_start;
  bool yielding = false;
  while (pending_.load(std::memory_order_acquire) != 0) {
    if (yielding) {
      sched_yield();
      continue;
    }
    CpuRelax();
    if (++spins == 64) {
      spin_start = std::chrono::steady_clock::now();
    } else if (spins > 64 && (spins & 63) == 0 &&
               std::chrono::steady_clock::now() - spin_start > std::chrono::microseconds(20)) {
      yielding = true;
    }
  }
}

void ThreadPool::WorkerLoop(int index) {
  uint32_t seen = 0;
  const auto spin_budget = std::chrono::microseconds(spin_us_);
  for (;;) {
    uint32_t gen = generation_.load(std::memory_order_acquire);
    if (gen == seen) {
      const auto start = std::chrono::steady_clock::now();
      int polls = 0;
      while ((gen = generation_.load(std::memory_order_acquire)) == seen) {
        CpuRelax();
        if ((++polls & 63) == 0 && std::chrono::steady_clock::now() - start > spin_budget) {
          break;
        }
      }
      while (gen == seen) {
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        if (generation_.load(std::memory_order_seq_cst) == seen) FutexWait(&generation_, seen);
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
        gen = generation_.load(std::memory_order_acquire);
      }
    }
    seen = gen;
    if (stop_.load(std::memory_order_relaxed)) return;
    const Job job = job_;
    if (index < job.n_chunks) {
      (*job.fn)(ChunkBegin(job.n_items, job.n_chunks, index),
                ChunkBegin(job.n_items, job.n_chunks, index + 1), index);
    }
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace tandem::kernels::cpu
