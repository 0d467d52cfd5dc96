// The portability layer every CUDA kernel source of tandem includes (kernels/cuda/*.cuh, *.cu).
// One source, two builds:
//   * nvcc (tandem_cuda): CUDA itself. The macros below become __shared__ arrays and <<<>>>.
//   * the host (tandem_cuda_emu, compiled with TANDEM_CUDA_EMU defined, no CUDA toolkit needed):
//     CUDA's names (__global__, threadIdx, __syncthreads, __shfl_xor_sync, atomicAdd, ...) map
//     onto the CUDA-on-CPU harness (kernels/emu/executor.h), which runs every CUDA thread of a
//     block as a thread of its own (a fiber, or an OS thread), so the kernel's code itself is
//     what the tests check.
// Kernel code uses, beyond plain CUDA:
//   * TANDEM_SHARED(type, name, count): a static __shared__ array `type name[count]` (use
//     `count`, not sizeof(name), which differs between the builds);
//   * TANDEM_DYNAMIC_SHARED(type, name): `type* name` at the start of the launch's dynamic
//     shared memory (16-byte aligned);
//   * TANDEM_UNROLL before a loop: `#pragma unroll` under nvcc, nothing on the host;
//   * Half / Bf16 with ToFloat and FromFloat<T> (round to nearest even; host and device, so
//     test code can convert too), HalfBitsToFloat (GGUF's fp16 scales), DivRn / MulRn / AddRn
//     (IEEE operations nvcc may not fuse or approximate), AtomicMaxFloat, TANDEM_DEVICE_CHECK;
//   * Launch(kernel, grid, block, shared_bytes, stream, args...), the one way kernels start;
//   * tensor-core and async-copy instructions, inline PTX under nvcc and software versions in
//     the harness with the same signatures and the PTX ISA's exact fragment layouts (each
//     lane's registers hold the elements the ISA documents for that lane), so the harness runs
//     the same fragment code: MmaM16N8K16<T> (mma.sync.aligned.m16n8k16.row.col.f32.T.T.f32,
//     T = Half or Bf16), LdMatrixX4 / X2 (and Trans) (ldmatrix.sync.aligned.m8n8.x4/x2.b16),
//     CpAsyncCa<bytes> / CpAsyncCg16 with CpAsyncCommit and CpAsyncWait<n>
//     (cp.async.{ca,cg}.shared.global, commit_group, wait_group), PackPair<T> (two floats to
//     one register of T pairs, round to nearest even).
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with g = lane / 4 and
// t = lane % 4, the lower k (or column) of a pair in the low 16 bits of a register:
//   A (16 x 16, row): a[0] = (row g, k 2t..2t+1), a[1] = (row g + 8, k 2t..2t+1),
//                     a[2] = (row g, k 2t+8..2t+9), a[3] = (row g + 8, k 2t+8..2t+9);
//   B (16 x 8, col):  b[0] = (k 2t..2t+1, col g), b[1] = (k 2t+8..2t+9, col g);
//   C/D (16 x 8 f32): c[0..1] = (row g, col 2t..2t+1), c[2..3] = (row g + 8, col 2t..2t+1).
//   ldmatrix: lane 8i + r gives the address of row r of matrix i (16 contiguous bytes, 16-byte
//   aligned); register i of lane l holds row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 of
//   matrix i (.trans: rows 2 (l % 4) and 2 (l % 4) + 1 of column l / 4).
// In the harness an mma or ldmatrix is one warp exchange (a barrier of the warp), and cp.async
// is deferred: a copy happens when a CpAsyncWait retires its group, so a kernel that reads a
// tile before waiting for it reads the previous contents (poison at first), as a GPU may.
// Warps are 32 consecutive linear thread ids.
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
#define TANDEM_UNROLL _Pragma("unroll")
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

// Two floats as one register of T pairs (lo in the low 16 bits), rounded to nearest even.
template <typename T>
__device__ __forceinline__ uint32_t PackPair(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t PackPair<Half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t PackPair<Bf16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// d += a * b: mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, the whole warp.
template <typename T>
__device__ __forceinline__ void MmaM16N8K16(float (&d)[4], const uint32_t (&a)[4],
                                            const uint32_t (&b)[2]);
template <>
__device__ __forceinline__ void MmaM16N8K16<Half>(float (&d)[4], const uint32_t (&a)[4],
                                                  const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void MmaM16N8K16<Bf16>(float (&d)[4], const uint32_t (&a)[4],
                                                  const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ unsigned SharedAddress(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// ldmatrix.sync.aligned.m8n8.{x4,x2}[.trans].shared.b16; `row` is this lane's row address.
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(row)));
}
__device__ __forceinline__ void LdMatrixX2(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(SharedAddress(row)));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(row)));
}
__device__ __forceinline__ void LdMatrixX2Trans(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(SharedAddress(row)));
}

// cp.async of kBytes (4, 8 or 16) from global to shared memory, cached in L1 (.ca), or 16
// bytes cached in L2 only (.cg, for data read once per block, like weight tiles). Only the
// first src_bytes are read; the rest of the destination is zero-filled (src_bytes = 0: zeros,
// the source is not read but must be a valid address). Both addresses aligned to the size.
template <int kBytes>
__device__ __forceinline__ void CpAsyncCa(void* dst, const void* src, int src_bytes = kBytes) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async size");
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(SharedAddress(dst)),
               "l"(src), "n"(kBytes), "r"(src_bytes));
}
__device__ __forceinline__ void CpAsyncCg16(void* dst, const void* src, int src_bytes = 16) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SharedAddress(dst)),
               "l"(src), "r"(src_bytes));
}
// Closes the calling thread's group of cp.async operations issued since the last commit.
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most kPending of the calling thread's committed groups are still in flight.
// The copies are visible to the calling thread only; other threads need a __syncthreads after.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

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
#include <deque>
#include <tuple>
#include <type_traits>
#include <vector>

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
#define TANDEM_UNROLL

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

namespace tandem::emu {
// ldmatrix .x<kNum>[.trans] in software: one exchange of the row addresses, then each lane
// reads its elements from shared memory (a __syncthreads before it, as on a GPU, orders the
// other threads' writes).
template <int kNum, bool kTrans>
void LdMatrix(uint32_t* r, const void* row) {
  TANDEM_CHECK_EQ(reinterpret_cast<uintptr_t>(row) % 16, 0u);
  const uint64_t mine = reinterpret_cast<uintptr_t>(row);
  uint64_t all[32][kWarpWords];
  const uint32_t arrived = WarpExchangeWords(0xffffffffu, &mine, 1, all);
  TANDEM_CHECK_EQ(arrived, 0xffffffffu);
  const int lane = LaneId();
  auto at = [&](int matrix, int r8, int c8) {
    return reinterpret_cast<const uint16_t*>(static_cast<uintptr_t>(all[matrix * 8 + r8][0]))[c8];
  };
  for (int i = 0; i < kNum; ++i) {
    uint32_t lo, hi;
    if (kTrans) {
      lo = at(i, 2 * (lane % 4), lane / 4);
      hi = at(i, 2 * (lane % 4) + 1, lane / 4);
    } else {
      lo = at(i, lane / 4, 2 * (lane % 4));
      hi = at(i, lane / 4, 2 * (lane % 4) + 1);
    }
    r[i] = lo | hi << 16;
  }
}

// cp.async in software, on the calling CUDA thread's queue (executor.h's AsyncCopies). Copies a
// block leaves pending when its thread exits are dropped (Launch), as its shared memory is gone.
inline void QueueAsyncCopy(void* dst, const void* src, int bytes, int src_bytes) {
  TANDEM_CHECK(src_bytes >= 0 && src_bytes <= bytes);
  TANDEM_CHECK_EQ(reinterpret_cast<uintptr_t>(dst) % bytes, 0u);
  TANDEM_CHECK_EQ(reinterpret_cast<uintptr_t>(src) % bytes, 0u);
  ThreadAsyncCopies().open.push_back({dst, src, bytes, src_bytes});
}
inline void CommitAsyncCopies() {
  AsyncCopies& copies = ThreadAsyncCopies();
  copies.committed.push_back(std::move(copies.open));
  copies.open.clear();
}
inline void WaitAsyncCopies(int pending) {
  auto& groups = ThreadAsyncCopies().committed;
  while (static_cast<int>(groups.size()) > pending) {
    for (const AsyncCopy& c : groups.front()) {
      std::memcpy(c.dst, c.src, c.src_bytes);
      std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
    }
    groups.pop_front();
  }
}
inline void DropAsyncCopies() {
  AsyncCopies& copies = ThreadAsyncCopies();
  copies.open.clear();
  copies.committed.clear();
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

template <typename T>
uint32_t PackPair(float lo, float hi) {
  static_assert(std::is_same_v<T, Half> || std::is_same_v<T, Bf16>, "PackPair of Half or Bf16");
  return static_cast<uint32_t>(FromFloat<T>(lo).bits) | static_cast<uint32_t>(FromFloat<T>(hi).bits)
                                                            << 16;
}

// mma.sync m16n8k16 in software: the warp publishes its A and B registers in one exchange and
// each lane computes its four elements of D from the rows and columns the layouts above put
// where. Products of two f16 or bf16 values are exact in double and the 16-term sum with C
// rounds there at 2^-53, so D is, to far below f32's precision, the exact result rounded once
// to f32 (a tensor core may truncate its internal sum; tests allow for f32 accumulation error
// either way).
template <typename T>
void MmaM16N8K16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(std::is_same_v<T, Half> || std::is_same_v<T, Bf16>, "mma of Half or Bf16");
  const uint64_t mine[3] = {a[0] | static_cast<uint64_t>(a[1]) << 32,
                            a[2] | static_cast<uint64_t>(a[3]) << 32,
                            b[0] | static_cast<uint64_t>(b[1]) << 32};
  uint64_t all[32][::tandem::emu::kWarpWords];
  const uint32_t arrived = ::tandem::emu::WarpExchangeWords(0xffffffffu, mine, 3, all);
  TANDEM_CHECK_EQ(arrived, 0xffffffffu);  // .aligned: every lane of the warp executes it
  auto element = [](uint32_t reg, int k) {
    const uint16_t bits = static_cast<uint16_t>(reg >> (16 * (k & 1)));
    return static_cast<double>(std::is_same_v<T, Half> ? HalfToFloat(bits) : Bf16ToFloat(bits));
  };
  auto a_at = [&](int row, int k) {  // register (row / 8) + 2 (k / 8) of lane (row % 8) 4 + ...
    const int reg = row / 8 + 2 * (k / 8);
    const uint64_t word = all[(row % 8) * 4 + (k % 8) / 2][reg / 2];
    return element(static_cast<uint32_t>(word >> (32 * (reg % 2))), k);
  };
  auto b_at = [&](int k, int col) {
    const uint64_t word = all[col * 4 + (k % 8) / 2][2];
    return element(static_cast<uint32_t>(word >> (32 * (k / 8))), k);
  };
  const int lane = ::tandem::emu::LaneId();
  for (int i = 0; i < 4; ++i) {
    const int row = lane / 4 + 8 * (i / 2);
    const int col = 2 * (lane % 4) + i % 2;
    double sum = d[i];
    for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
    d[i] = static_cast<float>(sum);
  }
}

inline void LdMatrixX4(uint32_t (&r)[4], const void* row) {
  ::tandem::emu::LdMatrix<4, false>(r, row);
}
inline void LdMatrixX2(uint32_t (&r)[2], const void* row) {
  ::tandem::emu::LdMatrix<2, false>(r, row);
}
inline void LdMatrixX4Trans(uint32_t (&r)[4], const void* row) {
  ::tandem::emu::LdMatrix<4, true>(r, row);
}
inline void LdMatrixX2Trans(uint32_t (&r)[2], const void* row) {
  ::tandem::emu::LdMatrix<2, true>(r, row);
}
template <int kBytes>
void CpAsyncCa(void* dst, const void* src, int src_bytes = kBytes) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async size");
  ::tandem::emu::QueueAsyncCopy(dst, src, kBytes, src_bytes);
}
inline void CpAsyncCg16(void* dst, const void* src, int src_bytes = 16) {
  ::tandem::emu::QueueAsyncCopy(dst, src, 16, src_bytes);
}
inline void CpAsyncCommit() { ::tandem::emu::CommitAsyncCopies(); }
template <int kPending>
void CpAsyncWait() {
  ::tandem::emu::WaitAsyncCopies(kPending);
}

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
        ::tandem::emu::DropAsyncCopies();
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
