// The CUDA-on-CPU harness's executor: runs a kernel's grid on host threads so that the same
// kernel source that nvcc compiles for the GPU runs, unchanged, in the tests of a machine
// without one. Kernel sources never include this header directly: they include
// kernels/emu/cuda_compat.h, which maps CUDA's names onto it when built for the host.
//
// Model (what a kernel may rely on, as on a GPU):
//   * every CUDA thread of a block is a thread of its own, so __syncthreads is a real barrier
//     and a thread that returns early stops counting in it, like an exited GPU thread;
//   * warps are consecutive groups of 32 linear thread ids; shuffles and votes exchange values
//     through a per-warp barrier, and every live lane of the warp must take part (partial-mask
//     operations by a subset of a warp's live lanes are not emulated: they stall and abort);
//   * blocks run in any order, up to BlocksInFlight() at once, each on its own host thread, so
//     blocks may only communicate through atomics, as on a GPU (and those run truly
//     concurrently); a launch returns when the whole grid is done (the host stream is
//     synchronous);
//   * shared memory is per block, poisoned with 0xff bytes (NaN as float) at each block's start,
//     so a kernel that reads shared memory before writing it sees garbage here too.
//
// How a CUDA thread runs (ThreadMode):
//   * kFibers, the default: a block's CUDA threads are fibers (kernels/emu/fiber.h) on the one
//     host thread that runs the block. A fiber runs until it waits at a barrier or exits; the
//     block's scheduler then resumes the others, sweeping the runnable ones in thread order and
//     in reverse order alternately, so a missing __syncthreads shows as wrong results, the same
//     way on every run. When every live fiber of a block waits at a barrier that cannot
//     complete (threads diverged), the harness prints who waits where and aborts at once.
//   * kOsThreads: every CUDA thread is a std::thread (from a pool that grows to the largest
//     launch and is reused) and barriers are mutexes and condition variables; a thread that
//     waits longer than Barrier::kStallLimit at one aborts. Always the mode under
//     ThreadSanitizer (fibers are not built there: TSan's point is to see the block's threads
//     race, and a missing __syncthreads shows as a race), and on hosts other than x86-64 Linux.
//   Elsewhere the environment variable TANDEM_EMU_THREADS=os (or =fibers), read at the first
//   launch, picks the mode for debugging (a harness knob, not a server setting, so it is read
//   here rather than in server/); SetThreadMode overrides it for tests.
//
// Thread safety: RunGrid may be called from any thread; launches are serialized (one grid at a
// time in the process). The thread-local builtins below describe the calling CUDA thread and are
// meaningful only inside a kernel run by RunGrid.
#ifndef TANDEM_KERNELS_EMU_EXECUTOR_H_
#define TANDEM_KERNELS_EMU_EXECUTOR_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

// CUDA's vector types, in the global namespace as CUDA declares them.
struct uint3 {
  unsigned int x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
};

// CUDA's built-in variables. Thread-local: the executor sets them before it calls the kernel in
// a host thread, and in fiber mode sets threadIdx again each time it resumes a fiber (a block's
// fibers share one host thread and never move to another). (STYLE.md rules out thread-local
// context in library code; this is the one place where the thing emulated is exactly that.)
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
inline constexpr int warpSize = 32;

namespace tandem::emu {

// Largest static shared memory per block (CUDA's 48 KiB) and dynamic shared memory per block
// (an H100's 227 KiB opt-in limit).
inline constexpr size_t kMaxStaticShared = 48 * 1024;
inline constexpr size_t kMaxDynamicShared = 227 * 1024;

// Runs body(ctx) once per CUDA thread of grid x block, returning when all are done. Aborts with
// a message on a configuration a GPU refuses (more than 1024 threads per block, grid.y or
// grid.z above 65535, too much dynamic shared memory).
void RunGrid(dim3 grid, dim3 block, size_t dynamic_shared_bytes, void (*body)(void*), void* ctx);

enum class ThreadMode { kFibers, kOsThreads };

// Whether fiber mode is built (false under ThreadSanitizer and off x86-64 Linux).
bool FibersAvailable();
// The mode of the next launches: TANDEM_EMU_THREADS's, else kFibers where available.
ThreadMode CurrentThreadMode();
// For tests: picks the mode of the next launches (kFibers where unavailable: kOsThreads).
void SetThreadMode(ThreadMode mode);
// For tests: how many fiber stacks the process has mapped so far (stacks are kept and reused,
// so this grows only with the largest blocks x BlocksInFlight() launched).
int64_t FiberStacksMapped();

// How many blocks run at once (default 2: blocks overlap, as on a GPU, without multiplying the
// host threads by much). For tests.
void SetBlocksInFlight(int n);
int BlocksInFlight();

// __syncthreads for the calling CUDA thread.
void SyncThreads();

// One warp-wide exchange: publishes `value` for the calling lane, waits for every live lane of
// its warp, copies all 32 lanes' published values into all[32] and returns the mask of lanes
// that took part (lanes that exited, or do not exist in a partial last warp, are absent and
// their all[] entries are meaningless). Aborts if a taking-part lane is not in `mask`.
uint32_t WarpExchange(uint32_t mask, uint64_t value, uint64_t all[32]);

// Up to kWarpWords 64-bit words per lane in one exchange (one barrier), for the software
// tensor-core instructions: an mma.sync publishes its A and B registers at once. all[lane][i] is
// word i of `lane`; otherwise as WarpExchange.
inline constexpr int kWarpWords = 4;
uint32_t WarpExchangeWords(uint32_t mask, const uint64_t* words, int n,
                           uint64_t (*all)[kWarpWords]);

// The calling thread's lane (0..31) within its warp.
int LaneId();

// The calling CUDA thread's deferred cp.async copies (cuda_compat.h): a copy is queued in the
// open group, a commit closes the group, and a wait performs the oldest groups' copies. Per CUDA
// thread (per fiber in fiber mode), not per host thread.
struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes;
  int src_bytes;
};
struct AsyncCopies {
  std::vector<AsyncCopy> open;
  std::deque<std::vector<AsyncCopy>> committed;
};
AsyncCopies& ThreadAsyncCopies();

// The block's static shared array declared at `site` (one address per declaration, the same
// for every thread of the block, reused when the declaration runs again in a loop).
void* SharedArray(const void* site, size_t bytes, size_t align);
// The block's dynamic shared memory (the launch's dynamic_shared_bytes, 16-byte aligned).
void* DynamicShared();

}  // namespace tandem::emu

#endif  // TANDEM_KERNELS_EMU_EXECUTOR_H_
