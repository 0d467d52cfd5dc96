// Elementwise kernels (launcher: kernels/cuda/elementwise.cu): Add / AddBias / Scale and Convert
// are grid-stride loops over the flat index, one element per thread per step (scalar loads:
// consecutive threads read consecutive elements, so each warp's access is coalesced);
// GatherRows is one block per output row. Math is one IEEE f32 operation per element (AddRn /
// MulRn, which nvcc may not fuse or approximate) rounded once to T; each thread reads only the
// elements it writes, so in-place updates and y aliasing x need no barrier.
// Thread safety: device code.
#ifndef TANDEM_KERNELS_CUDA_ELEMENTWISE_CUH_
#define TANDEM_KERNELS_CUDA_ELEMENTWISE_CUH_

#include "kernels/cuda/elementwise.h"
#include "kernels/emu/cuda_compat.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

inline constexpr int kElementwiseThreads = 256;
inline constexpr int kGatherRowsMaxThreads = 256;

template <typename T, ElementwiseOp kOp>
__global__ void __launch_bounds__(kElementwiseThreads) ElementwiseKernel(ElementwiseParams p) {
  T* x = static_cast<T*>(p.x);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n;
       i += stride) {
    const float v = ToFloat(x[i]);
    float r;
    if constexpr (kOp == ElementwiseOp::kAdd) {
      r = AddRn(v, ToFloat(static_cast<const T*>(p.y)[i]));
    } else if constexpr (kOp == ElementwiseOp::kAddBias) {
      r = AddRn(v, p.bias[i % p.dim]);
    } else {
      r = MulRn(v, p.factor);
    }
    x[i] = FromFloat<T>(r);
  }
}

template <typename T>
__global__ void __launch_bounds__(kGatherRowsMaxThreads) GatherRowsKernel(GatherRowsParams p) {
  const int32_t row = p.idx[blockIdx.x];
  TANDEM_DEVICE_CHECK(row >= 0 && row < p.x_rows);
  const T* src = static_cast<const T*>(p.x) + static_cast<int64_t>(row) * p.dim;
  T* dst = static_cast<T*>(p.out) + static_cast<int64_t>(blockIdx.x) * p.dim;
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) dst[i] = src[i];
}

template <typename In, typename Out>
__global__ void __launch_bounds__(kElementwiseThreads) ConvertKernel(ConvertParams p) {
  const In* in = static_cast<const In*>(p.in);
  Out* out = static_cast<Out*>(p.out);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n;
       i += stride) {
    out[i] = FromFloat<Out>(ToFloat(in[i]));
  }
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_ELEMENTWISE_CUH_
