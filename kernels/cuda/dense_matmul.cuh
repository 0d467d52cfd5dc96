// The tiled dense matmul kernel (launcher: kernels/cuda/dense_matmul.cu; definition:
// dense_matmul.h). A block of 16 x 16 threads computes a 16 x 16 tile of y: per step of 16 k,
// each thread loads one element of the x tile and one of the w tile into shared memory (zero
// past the edges), then multiply-adds its row of x with its column of w in f32.
// Thread safety: device code.
#ifndef TANDEM_KERNELS_CUDA_DENSE_MATMUL_CUH_
#define TANDEM_KERNELS_CUDA_DENSE_MATMUL_CUH_

#include "kernels/cuda/dense_matmul.h"
#include "kernels/emu/cuda_compat.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

inline constexpr int kDenseTile = 16;

template <typename T>
__global__ void __launch_bounds__(kDenseTile* kDenseTile) DenseMatmulKernel(DenseMatmulParams p) {
  TANDEM_SHARED(float, xs, kDenseTile* kDenseTile);  // [row][k]
  TANDEM_SHARED(float, ws, kDenseTile* kDenseTile);  // [col][k]
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int row = blockIdx.y * kDenseTile + ty;  // of x and y
  const int col = blockIdx.x * kDenseTile + tx;  // of y (row of w)
  const int w_row = blockIdx.x * kDenseTile + ty;
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  float acc = 0.f;
  for (int k0 = 0; k0 < p.k; k0 += kDenseTile) {
    const int k = k0 + tx;
    xs[ty * kDenseTile + tx] =
        row < p.m && k < p.k ? ToFloat(x[static_cast<int64_t>(row) * p.k + k]) : 0.f;
    ws[ty * kDenseTile + tx] =
        w_row < p.n && k < p.k ? ToFloat(w[static_cast<int64_t>(w_row) * p.k + k]) : 0.f;
    __syncthreads();
    TANDEM_UNROLL
    for (int kk = 0; kk < kDenseTile; ++kk) {
      acc = fmaf(xs[ty * kDenseTile + kk], ws[tx * kDenseTile + kk], acc);
    }
    __syncthreads();
  }
  if (row < p.m && col < p.n) {
    static_cast<T*>(p.y)[static_cast<int64_t>(row) * p.n + col] = FromFloat<T>(acc);
  }
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_DENSE_MATMUL_CUH_
