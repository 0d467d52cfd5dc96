// The harness's executor (executor.h): the grid is split into BlocksInFlight() slots, and
// each slot runs its blocks one after another, either as fibers on one host thread (fiber mode)
// or with one pooled std::thread per CUDA thread (OS-thread mode). Both modes share the block
// state (BlockSlot, WarpState) and the warp exchange; they differ in the barrier a thread waits
// at (FiberBarrier or Barrier) and in what runs the threads (FiberBlock or RunThread).
#include "kernels/emu/executor.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/check.h"
#include "kernels/emu/barrier.h"
#include "kernels/emu/fiber.h"

#if TANDEM_EMU_FIBERS
// tandem_emu_switch_context(void** save_sp /* rdi */, void* new_sp /* rsi */): the SysV
// callee-saved state (rbp, rbx, r12-r15, MXCSR, the x87 control word) is pushed on the running
// stack, whose pointer goes to *save_sp; then the same is popped from new_sp's stack and `ret`
// continues where that context switched out (or, for a new one, in the trampoline).
// tandem_emu_fiber_trampoline: a new context's first code, entry(arg) from r13(r12); entry never
// returns (ud2 if it did).
asm(R"(
  .text
  .p2align 4
  .globl tandem_emu_switch_context
  .hidden tandem_emu_switch_context
  .type tandem_emu_switch_context, @function
tandem_emu_switch_context:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size tandem_emu_switch_context, .-tandem_emu_switch_context

  .p2align 4
  .globl tandem_emu_fiber_trampoline
  .hidden tandem_emu_fiber_trampoline
  .type tandem_emu_fiber_trampoline, @function
tandem_emu_fiber_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size tandem_emu_fiber_trampoline, .-tandem_emu_fiber_trampoline
)");
#endif

namespace tandem::emu {
namespace {

constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kSharedAlign = 16;  // operator new's alignment, and CUDA's __align__(16) arrays

std::atomic<int> g_blocks_in_flight{2};
std::atomic<int64_t> g_fiber_stacks{0};

ThreadMode ModeFromEnvironment() {
  const char* env = std::getenv("TANDEM_EMU_THREADS");
  if (env != nullptr && std::strcmp(env, "os") == 0) return ThreadMode::kOsThreads;
  if (env != nullptr && *env != '\0' && std::strcmp(env, "fibers") != 0) {
    std::fprintf(stderr, "emu: TANDEM_EMU_THREADS=%s is neither os nor fibers\n", env);
    std::abort();
  }
  return kFibersAvailable ? ThreadMode::kFibers : ThreadMode::kOsThreads;
}

std::atomic<ThreadMode>& Mode() {
  static std::atomic<ThreadMode> mode{ModeFromEnvironment()};
  return mode;
}

struct FiberThread;

// A barrier among the fibers of one block (all on one host thread, so nothing locks): a fiber
// that arrives before the last one is parked until the phase completes. Counts as Barrier does
// (a fiber that exits drops out); Reset needs no fiber inside.
class FiberBarrier {
 public:
  void Reset(int count) {
    expected_ = count;
    arrived_ = 0;
    waiters_.clear();
  }
  template <typename F>
  void ArriveAndWait(FiberThread& self, const char* what, F&& on_complete);
  template <typename F>
  void ArriveAndDrop(F&& on_complete) {
    --expected_;
    if (arrived_ > 0 && arrived_ == expected_) Complete(on_complete);
  }

 private:
  template <typename F>
  void Complete(F& on_complete);

  int expected_ = 0;
  int arrived_ = 0;
  std::vector<FiberThread*> waiters_;  // capacity kept across phases: no allocation per phase
};

// One warp's exchange area. Operation k of the warp uses buffer k % 2: lanes publish before the
// barrier and read after it; buffer k % 2 is written again only by operation k + 2, after every
// lane has passed barrier k + 1 and so finished reading, and its arrival mask is cleared by
// barrier k + 1's completion.
struct WarpState {
  Barrier barrier;             // OS-thread mode
  FiberBarrier fiber_barrier;  // fiber mode
  uint64_t values[2][32][kWarpWords] = {};
  std::atomic<uint32_t> arrived[2] = {0, 0};
  uint64_t phase = 0;  // only touched by the barrier's completion (one thread, under its lock)

  void CompletePhase() {
    arrived[(phase + 1) & 1].store(0, std::memory_order_relaxed);
    ++phase;
  }
  void Reset(int lanes) {
    barrier.Reset(lanes);
    fiber_barrier.Reset(lanes);
    arrived[0].store(0, std::memory_order_relaxed);
    arrived[1].store(0, std::memory_order_relaxed);
    phase = 0;
  }
};

// One block in flight: a slot runs blocks s, s + n_slots, s + 2 n_slots, ... one after another,
// with the same threads (or the same host thread and fiber stacks).
struct BlockSlot {
  Barrier sync;  // __syncthreads, OS-thread mode
  Barrier done;  // every thread has left the kernel: the slot is reset for its next block
  FiberBarrier fiber_sync;  // __syncthreads, fiber mode
  std::vector<std::unique_ptr<WarpState>> warps;
  std::unique_ptr<unsigned char[]> static_shared;
  std::unique_ptr<unsigned char[]> dynamic_shared;
  size_t dynamic_bytes = 0;
  std::mutex shared_mu;
  std::vector<std::pair<const void*, size_t>> sites ABSL_GUARDED_BY(shared_mu);
  size_t static_used ABSL_GUARDED_BY(shared_mu) = 0;
};

// The launch in progress. Constant while workers run it.
struct Grid {
  dim3 grid;
  dim3 block;
  int threads_per_block = 0;
  int64_t n_blocks = 0;
  int n_slots = 0;
  bool fibers = false;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  std::vector<std::unique_ptr<BlockSlot>> slots;
};

// What the executor knows about a CUDA thread.
struct ThreadState {
  BlockSlot* slot = nullptr;
  WarpState* warp = nullptr;
  FiberThread* fiber = nullptr;  // fiber mode: the fiber running this CUDA thread
  int lane = 0;
  uint64_t warp_ops = 0;  // warp operations this thread did in its current block
  AsyncCopies async_copies;
};
// The CUDA thread the calling host thread runs now (in fiber mode, switched with the fiber).
thread_local ThreadState* t_current = nullptr;

uint3 Unlinear(int64_t i, const dim3& d) {
  uint3 r;
  r.x = static_cast<unsigned>(i % d.x);
  r.y = static_cast<unsigned>((i / d.x) % d.y);
  r.z = static_cast<unsigned>(i / (static_cast<int64_t>(d.x) * d.y));
  return r;
}

// Readies a slot for its next block: barriers to full strength, shared memory poisoned.
void PrepareSlot(BlockSlot& slot, const Grid& g) {
  slot.sync.Reset(g.threads_per_block);
  slot.fiber_sync.Reset(g.threads_per_block);
  for (size_t w = 0; w < slot.warps.size(); ++w) {
    slot.warps[w]->Reset(std::min(32, g.threads_per_block - static_cast<int>(w) * 32));
  }
  std::lock_guard<std::mutex> lock(slot.shared_mu);
  std::memset(slot.static_shared.get(), 0xff, std::max<size_t>(slot.static_used, 1));
  if (slot.dynamic_bytes > 0) std::memset(slot.dynamic_shared.get(), 0xff, slot.dynamic_bytes);
  slot.sites.clear();
  slot.static_used = 0;
}

// ---------------------------------------------------------------------------------------------
// OS-thread mode.

// Runs CUDA thread `t` of every block of slot `s`.
void RunThread(const Grid& g, int s, int t) {
  BlockSlot& slot = *g.slots[s];
  blockDim = g.block;
  gridDim = g.grid;
  threadIdx = Unlinear(t, g.block);
  WarpState* warp = slot.warps[t / 32].get();
  ThreadState state;
  t_current = &state;
  for (int64_t b = s; b < g.n_blocks; b += g.n_slots) {
    blockIdx = Unlinear(b, g.grid);
    state.slot = &slot;
    state.warp = warp;
    state.lane = t % 32;
    state.warp_ops = 0;
    g.body(g.ctx);
    // The thread has exited: later barriers of its block and warp no longer wait for it.
    warp->barrier.ArriveAndDrop([warp] { warp->CompletePhase(); });
    slot.sync.ArriveAndDrop([] {});
    slot.done.ArriveAndWait("the end of a block", [&] { PrepareSlot(slot, g); });
  }
  t_current = nullptr;
}

// ---------------------------------------------------------------------------------------------
// Fiber mode.

// One CUDA thread of the block a FiberBlock runs.
struct FiberThread {
  FiberContext context;
  FiberContext* host = nullptr;  // the scheduler's context, resumed when this fiber waits
  const Grid* grid = nullptr;
  ThreadState state;
  uint3 thread_idx;
  const char* waiting_at = nullptr;  // the barrier it is parked at; nullptr when runnable
  bool exited = false;
  int* live = nullptr;  // the block's count of threads that have not exited

  void Park(const char* what) {
    waiting_at = what;
#if TANDEM_EMU_FIBERS
    SwitchContext(context, *host);
#endif
  }
};

template <typename F>
void FiberBarrier::ArriveAndWait(FiberThread& self, const char* what, F&& on_complete) {
  if (++arrived_ == expected_) {
    Complete(on_complete);
    return;
  }
  waiters_.push_back(&self);
  self.Park(what);  // back once Complete has made it runnable and the scheduler resumed it
}

template <typename F>
void FiberBarrier::Complete(F& on_complete) {
  on_complete();
  arrived_ = 0;
  for (FiberThread* f : waiters_) f->waiting_at = nullptr;
  waiters_.clear();
}

// Runs the blocks of one slot on the calling host thread, each block's CUDA threads as fibers.
// One per host thread (its fiber stacks are reused by every later block and launch).
class FiberBlock {
 public:
  static FiberBlock& ForThisThread() {
    thread_local FiberBlock runner;
    return runner;
  }

  void RunSlot(const Grid& g, int s) {
#if TANDEM_EMU_FIBERS
    BlockSlot& slot = *g.slots[s];
    const int n = g.threads_per_block;
    while (static_cast<int>(stacks_.size()) < n) {
      stacks_.push_back(std::make_unique<FiberStack>());
      g_fiber_stacks.fetch_add(1);
    }
    if (static_cast<int>(threads_.size()) < n) threads_.resize(n);
    InitHostContext(host_);
    blockDim = g.block;
    gridDim = g.grid;
    for (int t = 0; t < n; ++t) {
      FiberThread& f = threads_[t];
      f.host = &host_;
      f.grid = &g;
      f.thread_idx = Unlinear(t, g.block);
      f.live = &live_;
      f.state.slot = &slot;
      f.state.warp = slot.warps[t / 32].get();
      f.state.fiber = &f;
      f.state.lane = t % 32;
    }
    for (int64_t b = s; b < g.n_blocks; b += g.n_slots) {
      blockIdx = Unlinear(b, g.grid);
      for (int t = 0; t < n; ++t) {
        FiberThread& f = threads_[t];
        f.state.warp_ops = 0;
        f.waiting_at = nullptr;
        f.exited = false;
        MakeContext(f.context, *stacks_[t], &FiberMain, &f);
      }
      live_ = n;
      Schedule(g, b, n);
      PrepareSlot(slot, g);
    }
    t_current = nullptr;
#else
    (void)g;
    (void)s;
#endif
  }

 private:
#if TANDEM_EMU_FIBERS
  // Resumes the runnable fibers until all have exited, sweeping them in thread order and then in
  // reverse order alternately (a thread released by a barrier runs only after every thread that
  // was runnable before it in the sweep: writes and reads that a missing __syncthreads leaves
  // unordered come out in both orders).
  void Schedule(const Grid& g, int64_t block, int n) {
    bool forward = true;
    while (live_ > 0) {
      bool ran = false;
      for (int k = 0; k < n; ++k) {
        FiberThread& f = threads_[forward ? k : n - 1 - k];
        if (f.exited || f.waiting_at != nullptr) continue;
        threadIdx = f.thread_idx;
        t_current = &f.state;
        SwitchContext(host_, f.context);
        ran = true;
      }
      if (!ran) Deadlock(g, block, n);
      forward = !forward;
    }
  }

  // Every live fiber waits at a barrier, and barriers complete only when a fiber arrives or
  // exits: none ever will. Says who waits where, then aborts.
  [[noreturn]] void Deadlock(const Grid& g, int64_t block, int n) {
    const uint3 b = Unlinear(block, g.grid);
    std::string where;
    for (int t = 0; t < n;) {
      int end = t + 1;
      while (end < n && threads_[end].exited == threads_[t].exited &&
             threads_[end].waiting_at == threads_[t].waiting_at) {
        ++end;
      }
      where += "  threads " + std::to_string(t) + ".." + std::to_string(end - 1) + ": " +
               (threads_[t].exited ? "exited" : threads_[t].waiting_at) + "\n";
      t = end;
    }
    std::fprintf(stderr,
                 "emu: deadlock in block (%u, %u, %u): each of its %d live threads waits at a "
                 "barrier that cannot complete (threads of a block or warp diverged):\n%s",
                 b.x, b.y, b.z, live_, where.c_str());
    std::abort();
  }

  // A fiber's whole life: the kernel, then leaving its warp's and block's barriers (which may
  // complete them), then back to the scheduler for good.
  static void FiberMain(void* arg) {
    FinishFirstSwitch();
    FiberThread& f = *static_cast<FiberThread*>(arg);
    const Grid& g = *f.grid;
    g.body(g.ctx);
    WarpState* warp = f.state.warp;
    warp->fiber_barrier.ArriveAndDrop([warp] { warp->CompletePhase(); });
    f.state.slot->fiber_sync.ArriveAndDrop([] {});
    f.exited = true;
    --*f.live;
    SwitchContext(f.context, *f.host, /*exiting=*/true);
    std::abort();  // an exited fiber is never resumed
  }
#endif

  FiberContext host_;
  std::vector<std::unique_ptr<FiberStack>> stacks_;
  std::vector<FiberThread> threads_;  // resized only between launches: fibers point into it
  int live_ = 0;
};

// ---------------------------------------------------------------------------------------------
// The pool of host threads.

// Persistent worker threads. In OS-thread mode worker i runs thread i % tpb of slot i / tpb of
// each launch that needs it; in fiber mode worker i runs slot i. Never destroyed (workers sleep
// until the process exits).
class Pool {
 public:
  static Pool& Get() {
    static Pool* pool = new Pool;
    return *pool;
  }

  void Run(Grid& g) {
    std::lock_guard<std::mutex> launch(launch_mu_);
    const int need = g.fibers ? g.n_slots : g.n_slots * g.threads_per_block;
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (static_cast<int>(threads_.size()) < need) {
        const int index = static_cast<int>(threads_.size());
        threads_.emplace_back([this, index] { Worker(index); });
      }
      grid_ = &g;
      need_ = need;
      running_ = need;
      ++launch_;
    }
    start_cv_.notify_all();
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return running_ == 0; });
    grid_ = nullptr;
    need_ = 0;
  }

 private:
  void Worker(int index) {
    uint64_t seen = 0;
    for (;;) {
      Grid* g = nullptr;
      {
        std::unique_lock<std::mutex> lock(mu_);
        start_cv_.wait(lock, [&] { return launch_ != seen; });
        seen = launch_;
        if (index >= need_) continue;
        g = grid_;
      }
      if (g->fibers) {
        FiberBlock::ForThisThread().RunSlot(*g, index);
      } else {
        RunThread(*g, index / g->threads_per_block, index % g->threads_per_block);
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (--running_ == 0) done_cv_.notify_all();
    }
  }

  std::mutex launch_mu_;  // one grid at a time
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  Grid* grid_ ABSL_GUARDED_BY(mu_) = nullptr;
  int need_ ABSL_GUARDED_BY(mu_) = 0;
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t launch_ ABSL_GUARDED_BY(mu_) = 0;
};

ThreadState& Current(const char* what) {
  if (t_current == nullptr) {
    std::fprintf(stderr, "emu: %s called outside a kernel run by the harness\n", what);
    std::abort();
  }
  return *t_current;
}

}  // namespace

bool FibersAvailable() { return kFibersAvailable; }
ThreadMode CurrentThreadMode() { return Mode().load(); }
void SetThreadMode(ThreadMode mode) {
  Mode().store(kFibersAvailable ? mode : ThreadMode::kOsThreads);
}
int64_t FiberStacksMapped() { return g_fiber_stacks.load(); }

void SetBlocksInFlight(int n) {
  TANDEM_CHECK_GE(n, 1);
  g_blocks_in_flight.store(n);
}
int BlocksInFlight() { return g_blocks_in_flight.load(); }

void RunGrid(dim3 grid, dim3 block, size_t dynamic_shared_bytes, void (*body)(void*), void* ctx) {
  const int64_t tpb = static_cast<int64_t>(block.x) * block.y * block.z;
  TANDEM_CHECK(tpb >= 1 && tpb <= kMaxThreadsPerBlock && block.z <= 64);
  TANDEM_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1);
  TANDEM_CHECK(grid.x <= 0x7fffffffu && grid.y <= 65535 && grid.z <= 65535);
  TANDEM_CHECK_LE(dynamic_shared_bytes, kMaxDynamicShared);
  Grid g;
  g.grid = grid;
  g.block = block;
  g.threads_per_block = static_cast<int>(tpb);
  g.n_blocks = static_cast<int64_t>(grid.x) * grid.y * grid.z;
  g.n_slots = static_cast<int>(std::min<int64_t>(BlocksInFlight(), g.n_blocks));
  g.fibers = CurrentThreadMode() == ThreadMode::kFibers;
  g.body = body;
  g.ctx = ctx;
  const int n_warps = static_cast<int>((tpb + 31) / 32);
  for (int s = 0; s < g.n_slots; ++s) {
    auto slot = std::make_unique<BlockSlot>();
    for (int w = 0; w < n_warps; ++w) slot->warps.push_back(std::make_unique<WarpState>());
    slot->static_shared = std::make_unique<unsigned char[]>(kMaxStaticShared);
    slot->dynamic_bytes = dynamic_shared_bytes;
    slot->dynamic_shared =
        std::make_unique<unsigned char[]>(std::max<size_t>(1, dynamic_shared_bytes));
    slot->done.Reset(g.threads_per_block);
    {
      std::lock_guard<std::mutex> lock(slot->shared_mu);
      slot->static_used = kMaxStaticShared;  // poison all of it once
    }
    PrepareSlot(*slot, g);
    g.slots.push_back(std::move(slot));
  }
  Pool::Get().Run(g);
}

void SyncThreads() {
  ThreadState& ts = Current("__syncthreads");
  if (ts.fiber != nullptr) {
    ts.slot->fiber_sync.ArriveAndWait(*ts.fiber, "__syncthreads", [] {});
  } else {
    ts.slot->sync.ArriveAndWait("__syncthreads", [] {});
  }
}

uint32_t WarpExchangeWords(uint32_t mask, const uint64_t* words, int n,
                           uint64_t (*all)[kWarpWords]) {
  TANDEM_CHECK(n >= 1 && n <= kWarpWords);
  ThreadState& ts = Current("a warp shuffle or vote");
  WarpState& w = *ts.warp;
  const int p = static_cast<int>(ts.warp_ops++ & 1);
  std::memcpy(w.values[p][ts.lane], words, sizeof(uint64_t) * n);
  w.arrived[p].fetch_or(1u << ts.lane, std::memory_order_relaxed);
  if (ts.fiber != nullptr) {
    w.fiber_barrier.ArriveAndWait(*ts.fiber, "a warp shuffle or vote", [&w] { w.CompletePhase(); });
  } else {
    w.barrier.ArriveAndWait("a warp shuffle or vote", [&w] { w.CompletePhase(); });
  }
  const uint32_t arrived = w.arrived[p].load(std::memory_order_relaxed);
  if ((arrived & ~mask) != 0) {
    std::fprintf(stderr, "emu: lanes 0x%08x took part in a warp operation with mask 0x%08x\n",
                 arrived, mask);
    std::abort();
  }
  for (int lane = 0; lane < 32; ++lane) {
    std::memcpy(all[lane], w.values[p][lane], sizeof(uint64_t) * n);
  }
  return arrived;
}

uint32_t WarpExchange(uint32_t mask, uint64_t value, uint64_t all[32]) {
  uint64_t words[32][kWarpWords];
  const uint32_t arrived = WarpExchangeWords(mask, &value, 1, words);
  for (int lane = 0; lane < 32; ++lane) all[lane] = words[lane][0];
  return arrived;
}

int LaneId() { return Current("LaneId").lane; }

AsyncCopies& ThreadAsyncCopies() { return Current("cp.async").async_copies; }

void* SharedArray(const void* site, size_t bytes, size_t align) {
  BlockSlot& slot = *Current("a __shared__ declaration").slot;
  TANDEM_CHECK_LE(align, kSharedAlign);
  std::lock_guard<std::mutex> lock(slot.shared_mu);
  for (const auto& [s, offset] : slot.sites) {
    if (s == site) return slot.static_shared.get() + offset;
  }
  const size_t offset = (slot.static_used + kSharedAlign - 1) / kSharedAlign * kSharedAlign;
  if (offset + bytes > kMaxStaticShared) {
    std::fprintf(stderr, "emu: static shared memory of a block exceeds %zu bytes\n",
                 kMaxStaticShared);
    std::abort();
  }
  slot.sites.emplace_back(site, offset);
  slot.static_used = offset + bytes;
  return slot.static_shared.get() + offset;
}

void* DynamicShared() { return Current("dynamic shared memory").slot->dynamic_shared.get(); }

}  // namespace tandem::emu
