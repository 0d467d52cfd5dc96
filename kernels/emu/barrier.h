// emu::Barrier: the barrier behind the CUDA-on-CPU harness's __syncthreads and warp operations
// in OS-thread mode (executor.h; fiber mode has its own, in executor.cc). Each emulated CUDA
// thread is a real std::thread there, so a barrier is a real wait: a mutex, a condition variable
// and a generation count (ASan and TSan see every handoff as a mutex acquire/release). A thread
// that leaves the kernel "drops" from the barriers of its block and warp, as an exited thread stops
// counting on a GPU.
//
// Thread safety: every method may be called concurrently by the threads that share the barrier,
// except Reset, which needs every participant to be outside the barrier.
// Invariants: 0 <= arrived_ < expected_ between phases; a phase completes only when at least
// one thread waits in it, so `on_complete` never runs for a phase nobody entered.
#ifndef TANDEM_KERNELS_EMU_BARRIER_H_
#define TANDEM_KERNELS_EMU_BARRIER_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace tandem::emu {

class Barrier {
 public:
  // A thread that waits longer than this at one barrier has diverged from the rest of its block
  // or warp (a __syncthreads or warp operation that not every live thread reaches): undefined
  // behaviour on a GPU, a hang here, so the harness aborts with a message instead.
  static constexpr std::chrono::seconds kStallLimit{120};

  explicit Barrier(int count = 0) : expected_(count) {}
  Barrier(const Barrier&) = delete;
  Barrier& operator=(const Barrier&) = delete;

  // Starts over with `count` participants. No thread may be inside the barrier.
  void Reset(int count) {
    std::lock_guard<std::mutex> lock(mu_);
    expected_ = count;
    arrived_ = 0;
  }

  // Waits until every participant has arrived (or dropped). The last one to arrive runs
  // on_complete() while the others are still held, then releases them.
  template <typename F>
  void ArriveAndWait(const char* what, F&& on_complete) {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t gen = generation_;
    if (++arrived_ == expected_) {
      CompleteLocked(on_complete);
      return;
    }
    const auto deadline = std::chrono::steady_clock::now() + kStallLimit;
    while (generation_ == gen) {
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && generation_ == gen) {
        std::fprintf(stderr,
                     "emu: a thread waited %lld s at %s (%d of %d arrived): threads of a block or "
                     "warp diverged\n",
                     static_cast<long long>(kStallLimit.count()), what, arrived_, expected_);
        std::abort();
      }
    }
  }

  // Leaves the barrier for good: this phase and later ones no longer wait for the caller. If
  // the others were only waiting for it, the phase completes (on_complete runs).
  template <typename F>
  void ArriveAndDrop(F&& on_complete) {
    std::lock_guard<std::mutex> lock(mu_);
    --expected_;
    if (arrived_ > 0 && arrived_ == expected_) CompleteLocked(on_complete);
  }

 private:
  template <typename F>
  void CompleteLocked(F& on_complete) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    on_complete();
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  int expected_ ABSL_GUARDED_BY(mu_);
  int arrived_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tandem::emu

#endif  // TANDEM_KERNELS_EMU_BARRIER_H_
