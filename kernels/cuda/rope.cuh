// RoPE kernel (launcher: kernels/cuda/rope.cu). One block per token. The token's rot_dim / 2
// angles are formed in double, as in the reference (a float angle at position 8000 is already
// ~5e-4 rad off), once per token into dynamic shared memory as float cos/sin, and shared by all
// heads; the rotation itself is f32.
// Thread safety: device code.
#ifndef TANDEM_KERNELS_CUDA_ROPE_CUH_
#define TANDEM_KERNELS_CUDA_ROPE_CUH_

#include "kernels/cuda/rope.h"
#include "kernels/emu/cuda_compat.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

inline constexpr int kRopeThreads = 128;

// Dynamic shared memory: rot_dim floats (cos of each pair, then sin).
template <typename T>
__global__ void __launch_bounds__(kRopeThreads) RopeKernel(RopeParams p) {
  TANDEM_DYNAMIC_SHARED(float, cos_sin);
  const int half = p.rot_dim / 2;
  const int t = blockIdx.x;
  const int32_t pos = p.positions[t];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const double angle =
        pos * pow(static_cast<double>(p.theta), -2.0 * i / static_cast<double>(p.rot_dim));
    cos_sin[i] = static_cast<float>(cos(angle));
    cos_sin[half + i] = static_cast<float>(sin(angle));
  }
  __syncthreads();
  const int heads = p.n_heads + p.n_kv_heads;
  for (int j = threadIdx.x; j < heads * half; j += blockDim.x) {
    const int h = j / half;
    const int i = j % half;
    T* v = h < p.n_heads
               ? reinterpret_cast<T*>(p.q) + (static_cast<int64_t>(t) * p.n_heads + h) * p.head_dim
               : reinterpret_cast<T*>(p.k) +
                     (static_cast<int64_t>(t) * p.n_kv_heads + (h - p.n_heads)) * p.head_dim;
    const int a = p.style == RopeStyle::kNormal ? 2 * i : i;
    const int b = p.style == RopeStyle::kNormal ? 2 * i + 1 : i + half;
    const float x0 = ToFloat(v[a]);
    const float x1 = ToFloat(v[b]);
    const float c = cos_sin[i];
    const float s = cos_sin[half + i];
    v[a] = FromFloat<T>(x0 * c - x1 * s);
    v[b] = FromFloat<T>(x0 * s + x1 * c);
  }
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_ROPE_CUH_
