// Warp and block reductions shared by the kernels of kernels/cuda (device code; included by
// kernel headers only). Blocks that call the block reductions have a multiple of 32 threads,
// all of which call them (they contain __syncthreads).
// Thread safety: device functions; each call is collective over its warp or block.
#ifndef TANDEM_KERNELS_CUDA_REDUCE_CUH_
#define TANDEM_KERNELS_CUDA_REDUCE_CUH_

#include "kernels/emu/cuda_compat.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

inline constexpr unsigned kFullMask = 0xffffffffu;

// Butterfly reductions: every lane ends with the warp's result. The order of additions is
// fixed by the lane ids, so results are deterministic for a given block shape.
__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = 16; offset > 0; offset /= 2)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}
__device__ __forceinline__ float WarpMin(float v) {
  for (int offset = 16; offset > 0; offset /= 2)
    v = fminf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// The sum of v over the block, returned to every thread. The warps' partial sums are added in
// warp order by every thread, so all threads get the identical value.
__device__ __forceinline__ float BlockSum(float v) {
  TANDEM_SHARED(float, partial, 32);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int n_warps = static_cast<int>(blockDim.x) / 32;
  v = WarpSum(v);
  if (threadIdx.x % 32 == 0) partial[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < n_warps; ++w) total += partial[w];
  __syncthreads();  // `partial` may be reused by the next call
  return total;
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_REDUCE_CUH_
