// emu fibers: user-level execution contexts for the CUDA-on-CPU harness, so that every CUDA
// thread of a block can run on one host thread (executor.cc's fiber mode) and a __syncthreads
// costs a few register saves per thread instead of an OS context switch.
//   * FiberStack: an mmap'd stack with a PROT_NONE guard page below it (an overflow faults
//     instead of corrupting a neighbour), kept and reused across blocks and launches.
//   * FiberContext: a suspended context (its saved stack pointer; the callee-saved registers,
//     MXCSR and the x87 control word are on its stack).
//   * MakeContext / SwitchContext: start a context running entry(arg) on a stack; save the
//     running context and resume another. x86-64 SysV only: the switch routine is a few lines
//     of assembly defined in executor.cc (the harness's one source file); elsewhere
//     kFibersAvailable is false and the executor uses OS threads.
//   * AddressSanitizer: each switch is announced with __sanitizer_start_switch_fiber /
//     __sanitizer_finish_switch_fiber, so ASan knows which stack is current (its reports and
//     stack-bound checks stay right) and keeps a fake stack per fiber.
//
// Thread safety: a context runs on the host thread that switched into it, and must only ever be
// resumed by that thread (thread-local variables would otherwise change under it). Nothing here
// locks. Under ThreadSanitizer fibers are not built (kFibersAvailable is false): TSan would need
// its own fiber annotations, and the harness's point there is races between real threads.
#ifndef TANDEM_KERNELS_EMU_FIBER_H_
#define TANDEM_KERNELS_EMU_FIBER_H_

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TANDEM_EMU_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define TANDEM_EMU_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__) && !defined(TANDEM_EMU_TSAN)
#define TANDEM_EMU_TSAN 1
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(TANDEM_EMU_ASAN)
#define TANDEM_EMU_ASAN 1
#endif

#if defined(__x86_64__) && defined(__linux__) && !defined(TANDEM_EMU_TSAN)
#define TANDEM_EMU_FIBERS 1
#else
#define TANDEM_EMU_FIBERS 0
#endif

#if TANDEM_EMU_FIBERS && defined(TANDEM_EMU_ASAN)
#include <pthread.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if TANDEM_EMU_FIBERS
// Defined in executor.cc. Saves the callee-saved registers on the running stack, stores the
// stack pointer in *save_sp, loads new_sp and restores the registers saved there.
extern "C" void tandem_emu_switch_context(void** save_sp, void* new_sp);
// Where a new context starts: calls r13(r12) (MakeContext puts entry and arg there).
extern "C" void tandem_emu_fiber_trampoline();
#endif

namespace tandem::emu {

inline constexpr bool kFibersAvailable = TANDEM_EMU_FIBERS != 0;

class FiberStack {
 public:
  // Kernels keep their registers in small arrays: 256 KiB is ample; ASan's redzones make frames
  // several times larger. Only the pages a fiber touches are ever backed by memory.
#if defined(TANDEM_EMU_ASAN)
  static constexpr size_t kSize = 1024 * 1024;
#else
  static constexpr size_t kSize = 256 * 1024;
#endif

  FiberStack() {
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, kSize + page_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED || mprotect(p, page_, PROT_NONE) != 0) {
      std::fprintf(stderr, "emu: cannot map a fiber stack of %zu bytes\n", kSize);
      std::abort();
    }
    mapping_ = static_cast<unsigned char*>(p);
  }
  ~FiberStack() { munmap(mapping_, kSize + page_); }
  FiberStack(const FiberStack&) = delete;
  FiberStack& operator=(const FiberStack&) = delete;

  unsigned char* bottom() const { return mapping_ + page_; }  // lowest usable address
  unsigned char* top() const { return mapping_ + page_ + kSize; }

 private:
  size_t page_ = 0;
  unsigned char* mapping_ = nullptr;
};

struct FiberContext {
  void* sp = nullptr;  // saved stack pointer while suspended
  // The stack the context runs on, for ASan (a host thread's own stack for the context that
  // runs the scheduler: see InitHostContext).
  const void* stack_bottom = nullptr;
  size_t stack_size = 0;
  void* fake_stack = nullptr;  // ASan's fake stack of the suspended context
};

#if TANDEM_EMU_FIBERS

// Describes the calling host thread's own stack in `ctx` (the context the scheduler runs in).
inline void InitHostContext(FiberContext& ctx) {
#if defined(TANDEM_EMU_ASAN)
  pthread_attr_t attr;
  void* addr = nullptr;
  size_t size = 0;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &addr, &size);
    pthread_attr_destroy(&attr);
  }
  ctx.stack_bottom = addr;
  ctx.stack_size = size;
#else
  (void)ctx;
#endif
}

// Prepares `ctx` so that the next switch into it runs entry(arg) on `stack` from its top. entry
// must never return: it ends with a SwitchContext(..., /*exiting=*/true).
inline void MakeContext(FiberContext& ctx, const FiberStack& stack, void (*entry)(void*),
                        void* arg) {
  // The frame tandem_emu_switch_context pops, from the lowest address: MXCSR and the x87 control
  // word (copied from the caller's), r15, r14, r13 = entry, r12 = arg, rbx, rbp = 0 (the end of
  // the frame-pointer chain), the return address = the trampoline. Popping it leaves the stack
  // pointer 16-byte aligned, so the trampoline's call enters `entry` as the ABI requires.
  auto* top =
      reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(stack.top()) & ~uintptr_t{15});
  uint64_t* frame = top - 10;
  uint32_t mxcsr = 0;
  uint16_t fpucw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  frame[0] = mxcsr | static_cast<uint64_t>(fpucw) << 32;
  frame[1] = 0;                                                         // r15
  frame[2] = 0;                                                         // r14
  frame[3] = reinterpret_cast<uint64_t>(entry);                         // r13
  frame[4] = reinterpret_cast<uint64_t>(arg);                           // r12
  frame[5] = 0;                                                         // rbx
  frame[6] = 0;                                                         // rbp
  frame[7] = reinterpret_cast<uint64_t>(&tandem_emu_fiber_trampoline);  // return address
  frame[8] = 0;
  frame[9] = 0;
  ctx.sp = frame;
  ctx.stack_bottom = stack.bottom();
  ctx.stack_size = FiberStack::kSize;
  ctx.fake_stack = nullptr;
}

// The first thing a context made by MakeContext runs (before touching anything ASan checks).
inline void FinishFirstSwitch() {
#if defined(TANDEM_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
}

// Suspends the running context into `from` and resumes `to`; returns when something switches
// back into `from`. With exiting, `from` is never resumed (ASan releases its fake stack).
inline void SwitchContext(FiberContext& from, FiberContext& to, bool exiting = false) {
#if defined(TANDEM_EMU_ASAN)
  __sanitizer_start_switch_fiber(exiting ? nullptr : &from.fake_stack, to.stack_bottom,
                                 to.stack_size);
#else
  (void)exiting;
#endif
  tandem_emu_switch_context(&from.sp, to.sp);
#if defined(TANDEM_EMU_ASAN)
  __sanitizer_finish_switch_fiber(from.fake_stack, nullptr, nullptr);
#endif
}

#endif  // TANDEM_EMU_FIBERS

}  // namespace tandem::emu

#endif  // TANDEM_KERNELS_EMU_FIBER_H_
