// ThreadPool: a persistent, optionally pinned pool of N threads (the calling thread counts
// as thread 0) that runs one data-parallel loop at a time. Built for the CPU backend, where
// one op of a forward pass lasts tens of microseconds, so a dispatch must cost well under a
// microsecond when the workers are awake: no allocation per call (the loop body is passed
// as a non-owning RangeFn), workers spin for a while after each loop before sleeping on a
// futex, and the split is static (contiguous chunks), which also keeps each thread on the
// same weight rows from call to call (warm caches).
//
// Thread safety: ParallelFor is called by one thread at a time (the backend's engine
// thread) and must not be called from inside a loop body. The first ParallelFor from a
// thread pins that thread to cpus[0] when a pin list was given.
#ifndef TANDEM_KERNELS_CPU_THREAD_POOL_H_
#define TANDEM_KERNELS_CPU_THREAD_POOL_H_

#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace tandem::kernels::cpu {

// A non-owning reference to a callable `void(int64_t begin, int64_t end, int thread)`. The
// callable must outlive the call it is passed to (it is a temporary lambda in practice).
class RangeFn {
 public:
  template <typename F,
            typename = std::enable_if_t<!std::is_same_v<std::remove_cvref_t<F>, RangeFn>>>
  RangeFn(F&& f)  // NOLINT(google-explicit-constructor): passed as a lambda at call sites
      : obj_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* obj, int64_t begin, int64_t end, int thread) {
          (*static_cast<std::remove_reference_t<F>*>(obj))(begin, end, thread);
        }) {}
  void operator()(int64_t begin, int64_t end, int thread) const { call_(obj_, begin, end, thread); }

 private:
  void* obj_;
  void (*call_)(void*, int64_t, int64_t, int);
};

// The CPU ids this process may run on (its affinity mask), ascending.
absl::StatusOr<std::vector<int>> AllowedCpus();

struct ThreadPoolOptions {
  int threads = 1;        // >= 1, including the calling thread
  std::vector<int> cpus;  // empty (no pinning) or one CPU id per thread, cpus[0] = caller
  int spin_us = 200;      // how long an idle worker polls before sleeping
};

class ThreadPool {
 public:
  // Errors: threads < 1, a pin list of the wrong length, or a CPU id this process may not
  // run on.
  static absl::StatusOr<std::unique_ptr<ThreadPool>> Create(const ThreadPoolOptions& options);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(begin, end, thread) over contiguous chunks covering [0, n_items), at most one
  // chunk per thread and max(1, n_items / min_chunk) chunks, so every chunk has at least
  // min_chunk items when there is more than one (small loops use fewer threads; a loop
  // under 2 * min_chunk items runs inline on the caller). Returns when every chunk is done.
  void ParallelFor(int64_t n_items, int64_t min_chunk, RangeFn fn);
  void ParallelFor(int64_t n_items, RangeFn fn) { ParallelFor(n_items, 1, fn); }

 private:
  explicit ThreadPool(const ThreadPoolOptions& options);
  void WorkerLoop(int index);
  void PinCallerIfNeeded();

  // Constant after construction.
  const int n_threads_;
  const std::vector<int> cpus_;
  const int spin_us_;
  std::vector<std::thread> workers_;

  // Engine (calling) thread only.
  pthread_t pinned_caller_{};
  bool caller_pinned_ = false;

  // The current loop: written by the caller before generation_ is bumped, read by workers
  // after they observe the bump; not rewritten until pending_ reaches 0.
  struct Job {
    const RangeFn* fn = nullptr;
    int64_t n_items = 0;
    int n_chunks = 0;
  } job_;
  alignas(64) std::atomic<uint32_t> generation_{0};  // bumped once per loop (futex word)
  alignas(64) std::atomic<int> pending_{0};          // workers yet to finish this loop
  alignas(64) std::atomic<int> sleepers_{0};         // workers blocked in futex_wait
  std::atomic<bool> stop_{false};
};

}  // namespace tandem::kernels::cpu

#endif  // TANDEM_KERNELS_CPU_THREAD_POOL_H_
