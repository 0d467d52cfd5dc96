// RMSNorm kernels (launcher: kernels/cuda/rms_norm.cu). One block per row: each thread squares
// and sums a strided slice of the row in f32, the block reduces (reduce.cuh), then each thread
// scales its slice. With a residual, the first pass also writes x + residual rounded to T and
// normalizes that rounded value; each thread rereads only elements it wrote itself, so x, out
// and sum_out may alias as rms_norm.h allows without a barrier.
// Thread safety: device code.
#ifndef TANDEM_KERNELS_CUDA_RMS_NORM_CUH_
#define TANDEM_KERNELS_CUDA_RMS_NORM_CUH_

#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/rms_norm.h"
#include "kernels/emu/cuda_compat.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

inline constexpr int kRmsNormMaxThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kRmsNormMaxThreads) RmsNormKernel(RmsNormParams p) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * p.dim;
  const T* x = static_cast<const T*>(p.x) + base;
  T* out = static_cast<T*>(p.out) + base;
  const T* src = x;  // what is normalized
  float sum_sq = 0.f;
  if (p.residual != nullptr) {
    const T* residual = static_cast<const T*>(p.residual) + base;
    T* sum = static_cast<T*>(p.sum_out) + base;
    for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
      const T s = FromFloat<T>(AddRn(ToFloat(x[i]), ToFloat(residual[i])));
      sum[i] = s;
      const float v = ToFloat(s);
      sum_sq += v * v;
    }
    src = sum;
  } else {
    for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
      const float v = ToFloat(x[i]);
      sum_sq += v * v;
    }
  }
  const float total = BlockSum(sum_sq);
  const float inv = DivRn(1.f, sqrtf(total / static_cast<float>(p.dim) + p.eps));
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
    out[i] = FromFloat<T>(ToFloat(src[i]) * inv * p.weight[i]);
  }
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_RMS_NORM_CUH_
