// SwiGLU / GeGLU kernel (launcher: kernels/cuda/glu.cu): elementwise over rows * dim with a
// grid-stride loop, f32 math. Large |x| needs no clamping: expf overflows to inf and
// x / inf is a zero of x's sign, the limit of both functions for x -> -inf.
// Thread safety: device code.
#ifndef TANDEM_KERNELS_CUDA_GLU_CUH_
#define TANDEM_KERNELS_CUDA_GLU_CUH_

#include "kernels/cuda/glu.h"
#include "kernels/emu/cuda_compat.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

inline constexpr int kGluThreads = 256;
inline constexpr float kTwoSqrt2OverPi = 1.5957691216057308f;  // 2 sqrt(2 / pi)

template <typename T, GluKind kKind>
__global__ void __launch_bounds__(kGluThreads) GluKernel(GluParams p) {
  const T* gate = static_cast<const T*>(p.gate);
  const T* up = static_cast<const T*>(p.up);
  T* out = static_cast<T*>(p.out);
  const int64_t n = static_cast<int64_t>(p.rows) * p.dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float g = ToFloat(gate[i]);
    const float u = ToFloat(up[i]);
    float z = g;
    if constexpr (kKind == GluKind::kGeGlu) z = kTwoSqrt2OverPi * (g + 0.044715f * g * g * g);
    out[i] = FromFloat<T>(g / (1.f + expf(-z)) * u);
  }
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_GLU_CUH_
