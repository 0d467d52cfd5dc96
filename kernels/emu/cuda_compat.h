// The portability layer every CUDA kernel source of tandem includes (kernels/cuda/*.cuh, *.cu).
// One source, two builds:
//   * nvcc (tandem_cuda): CUDA itself. The macros below become __shared__ arrays and <<<>>>.
//   * the host (tandem_cuda_emu, compiled with TANDEM_CUDA_EMU defined, no CUDA toolkit needed):
//     CUDA's names (__global__, threadIdx, __syncthreads, __shfl_xor_sync, atomicAdd, ...) map
//     onto the CUDA-on-CPU harness (kernels/emu/executor.h), which runs every CUDA thread of a
//     block on its own host thread, so the kernel's code itself is what the tests check.
// Kernel code uses, beyond plain CUDA:
//   * TANDEM_SHARED(type, name, count): a static __shared__ array `type name[count]` (use
//     `count`, not sizeof(name), which differs between the builds);
//   * TANDEM_DYNAMIC_SHARED(type, name): `type* name` at the start of the launch's dynamic
//     shared memory (16-byte aligned);
//   * Half / Bf16 with ToFloat and FromFloat<T> (round to nearest even; host and device, so
//     test code can convert too), HalfBitsToFloat (GGUF's fp16 scales), DivRn / MulRn / AddRn
//     (IEEE operations nvcc may not fuse or approximate), AtomicMaxFloat, TANDEM_DEVICE_CHECK;
//   * Launch(kernel, grid, block, shared_bytes, stream, args...), the one way kernels start.
// Warps are 32 consecutive linear thread ids. Later kernels add software versions of their
// mma.sync / ldmatrix / cp.async wrappers here, beside the hardware ones, with the same
// signatures, so the harness runs the same fragment code.
//
// Thread safety: see kernels/emu/executor.h (host) and CUDA's rules (device).
#ifndef TANDEM_KERNELS_EMU_CUDA_COMPAT_H_
#define TANDEM_KERNELS_EMU_CUDA_COMPAT_H_

#include <cstddef>
#include <cstdint>
#include <utility>

#include "common/check.h"
#include "kernels/cuda/build_namespace.h"

#if defined(TANDEM_CUDA_EMU) && defined(__CUDACC__)
#error "TANDEM_CUDA_EMU is the host build of the kernels; nvcc builds the real one"
#endif

#if !defined(TANDEM_CUDA_EMU)
// ---------------------------------------------------------------------------------------------
// The GPU build.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define TANDEM_SHARED(type, name, count) __shared__ __align__(16) type name[count]
#define TANDEM_DYNAMIC_SHARED(type, name)                              \
  extern __shared__ __align__(16) unsigned char tandem_dynamic_smem[]; \
  type* name = reinterpret_cast<type*>(tandem_dynamic_smem)
// A broken invariant inside a kernel: the launch fails with cudaErrorLaunchFailure (the host's
// next CUDA call reports it) rather than writing out of bounds.
#define TANDEM_DEVICE_CHECK(cond) \
  do {                            \
    if (!(cond)) __trap();        \
  } while (0)

#define TANDEM_CUDA_CHECK(expr)                                              \
  do {                                                                       \
    const cudaError_t tandem_cuda_err_ = (expr);                             \
    if (tandem_cuda_err_ != cudaSuccess)                                     \
      ::tandem::internal::CheckFailed(__FILE__, __LINE__, #expr,             \
                                      cudaGetErrorString(tandem_cuda_err_)); \
  } while (0)

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

using Half = __half;
using Bf16 = __nv_bfloat16;

__host__ __device__ __forceinline__ float ToFloat(float x) { return x; }
__host__ __device__ __forceinline__ float ToFloat(Half x) { return __half2float(x); }
__host__ __device__ __forceinline__ float ToFloat(Bf16 x) { return __bfloat162float(x); }
template <typename T>
__host__ __device__ __forceinline__ T FromFloat(float x);
template <>
__host__ __device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__host__ __device__ __forceinline__ Half FromFloat<Half>(float x) {
  return __float2half_rn(x);
}
template <>
__host__ __device__ __forceinline__ Bf16 FromFloat<Bf16>(float x) {
  return __float2bfloat16_rn(x);
}

// fp16 bits as stored in GGUF block scales.
__device__ __forceinline__ float HalfBitsToFloat(uint16_t bits) {
  return __half2float(__ushort_as_half(bits));
}

__device__ __forceinline__ float DivRn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float MulRn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float AddRn(float a, float b) { return __fadd_rn(a, b); }

// Starts `kernel` on `stream` and checks that the launch was accepted.
template <typename... Params, typename... Args>
void Launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
            cudaStream_t stream, Args&&... args) {
  // Past 48 KiB a kernel must opt in to dynamic shared memory (the harness allows up to
  // emu::kMaxDynamicShared without it); set it here so that both builds accept the same launches.
  if (shared_bytes > 48 * 1024) {
    TANDEM_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shared_bytes)));
  }
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  TANDEM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#else
// ---------------------------------------------------------------------------------------------
// The host build: CUDA's names on the harness.
#include <math.h>  // expf, sqrtf, rintf, ... in the global namespace, as device code calls them

#include <atomic>
#include <cmath>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "kernels/emu/executor.h"
#include "kernels/quant.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

// A lambda's static is one object per declaration (and per template instance): the site key.
#define TANDEM_SHARED(type, name, count)                      \
  type* name = static_cast<type*>(::tandem::emu::SharedArray( \
      [] {                                                    \
        static const char tandem_site = 0;                    \
        return &tandem_site;                                  \
      }(),                                                    \
      sizeof(type) * (count), alignof(type)))
#define TANDEM_DYNAMIC_SHARED(type, name) \
  type* name = static_cast<type*>(::tandem::emu::DynamicShared())
#define TANDEM_DEVICE_CHECK(cond) TANDEM_CHECK(cond)

struct CUstream_st;
using cudaStream_t = CUstream_st*;

inline void __syncthreads() { ::tandem::emu::SyncThreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  uint64_t all[32];
  ::tandem::emu::WarpExchange(mask, 0, all);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

namespace tandem::emu {
template <typename T>
uint64_t ToBits(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                "shuffle of a type over 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
T FromBits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}
// The value lane `src` published, or the caller's own when `src` did not take part (undefined
// on a GPU).
template <typename T>
T ShuffleFrom(unsigned mask, T var, int src, bool in_range) {
  uint64_t all[32];
  const uint32_t arrived = WarpExchange(mask, ToBits(var), all);
  if (!in_range || src < 0 || src > 31 || !(arrived >> src & 1)) return var;
  return FromBits<T>(all[src]);
}
}  // namespace tandem::emu

// Shuffles with CUDA's semantics, width a power of two <= 32: lanes form groups of `width`.
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  const int lane = ::tandem::emu::LaneId();
  const int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
  return ::tandem::emu::ShuffleFrom(mask, var, src, true);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  const int lane = ::tandem::emu::LaneId();
  const int src = lane ^ lane_mask;
  // A lane may read from its own or an earlier group, not a later one.
  return ::tandem::emu::ShuffleFrom(mask, var, src, src < ((lane / width) + 1) * width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  const int lane = ::tandem::emu::LaneId();
  const int in_group = (lane & (width - 1)) + static_cast<int>(delta);
  return ::tandem::emu::ShuffleFrom(mask, var, lane + static_cast<int>(delta), in_group < width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  const int lane = ::tandem::emu::LaneId();
  const int in_group = (lane & (width - 1)) - static_cast<int>(delta);
  return ::tandem::emu::ShuffleFrom(mask, var, lane - static_cast<int>(delta), in_group >= 0);
}
// Votes over the warp's live lanes.
inline unsigned __ballot_sync(unsigned mask, int pred) {
  uint64_t all[32];
  const uint32_t arrived = ::tandem::emu::WarpExchange(mask, pred != 0, all);
  unsigned bits = 0;
  for (int i = 0; i < 32; ++i) {
    if ((arrived >> i & 1) && all[i] != 0) bits |= 1u << i;
  }
  return bits & mask;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
  uint64_t all[32];
  const uint32_t arrived = ::tandem::emu::WarpExchange(mask, pred != 0, all);
  for (int i = 0; i < 32; ++i) {
    if ((arrived >> i & 1) && all[i] == 0) return 0;
  }
  return 1;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __float_as_int(float x) {
  return ::tandem::emu::FromBits<int>(::tandem::emu::ToBits(x));
}
inline float __int_as_float(int x) {
  return ::tandem::emu::FromBits<float>(::tandem::emu::ToBits(x));
}

// Atomics: CUDA's are relaxed; these are sequentially consistent, which is stronger and lets
// ThreadSanitizer order what a kernel orders with __threadfence.
template <typename T>
T atomicAdd(T* address, T val) {
  return std::atomic_ref<T>(*address).fetch_add(val);
}
template <typename T>
T atomicSub(T* address, T val) {
  return std::atomic_ref<T>(*address).fetch_sub(val);
}
template <typename T>
T atomicExch(T* address, T val) {
  return std::atomic_ref<T>(*address).exchange(val);
}
template <typename T>
T atomicCAS(T* address, T compare, T val) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, val);
  return compare;  // the old value either way
}
template <typename T>
T atomicMax(T* address, T val) {
  static_assert(std::is_integral_v<T>, "CUDA has no atomicMax on floats: use AtomicMaxFloat");
  std::atomic_ref<T> a(*address);
  T old = a.load();
  while (old < val && !a.compare_exchange_weak(old, val)) {
  }
  return old;
}
template <typename T>
T atomicMin(T* address, T val) {
  static_assert(std::is_integral_v<T>, "CUDA has no atomicMin on floats");
  std::atomic_ref<T> a(*address);
  T old = a.load();
  while (old > val && !a.compare_exchange_weak(old, val)) {
  }
  return old;
}

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

// Same size and alignment as __half / __nv_bfloat16; the value is the IEEE bits.
struct Half {
  uint16_t bits;
};
struct Bf16 {
  uint16_t bits;
};

inline float ToFloat(float x) { return x; }
inline float ToFloat(Half x) { return HalfToFloat(x.bits); }
inline float ToFloat(Bf16 x) { return Bf16ToFloat(x.bits); }
template <typename T>
T FromFloat(float x);
template <>
inline float FromFloat<float>(float x) {
  return x;
}
template <>
inline Half FromFloat<Half>(float x) {
  return Half{FloatToHalf(x)};
}
template <>
inline Bf16 FromFloat<Bf16>(float x) {
  return Bf16{FloatToBf16(x)};
}

inline float HalfBitsToFloat(uint16_t bits) { return HalfToFloat(bits); }

// The host build has -ffp-contract=off, so plain operators are single IEEE operations.
inline float DivRn(float a, float b) { return a / b; }
inline float MulRn(float a, float b) { return a * b; }
inline float AddRn(float a, float b) { return a + b; }

// Runs `kernel` over the grid in the harness; returns when it is done (the host "stream" is
// synchronous and `stream` is ignored). Arguments convert to the kernel's parameter types
// once, as a real launch copies them; every CUDA thread gets its own copy.
template <typename... Params, typename... Args>
void Launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
            cudaStream_t /*stream*/, Args&&... args) {
  struct Ctx {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  } ctx{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  ::tandem::emu::RunGrid(
      grid, block, shared_bytes,
      [](void* p) {
        auto* c = static_cast<const Ctx*>(p);
        std::apply(c->kernel, c->params);
      },
      &ctx);
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_CUDA_EMU

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

// max(*address, val) for floats (CUDA has no atomicMax on float), by compare-and-swap on the
// bits; returns the old value. NaN never wins.
__device__ __forceinline__ float AtomicMaxFloat(float* address, float val) {
  int* bits = reinterpret_cast<int*>(address);
  int old = atomicAdd(bits, 0);  // an atomic read
  while (__int_as_float(old) < val) {
    const int seen = atomicCAS(bits, old, __float_as_int(val));
    if (seen == old) break;
    old = seen;
  }
  return __int_as_float(old);
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_EMU_CUDA_COMPAT_H_
