// Launcher of the tiled dense matmul kernel (dense_matmul.h). Built by nvcc into tandem_cuda
// and, unchanged, for the host harness into tandem_cuda_emu.
#include "common/check.h"
#include "kernels/cuda/dense_matmul.cuh"
#include "kernels/cuda/dtype.cuh"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

void DenseMatmulSimt(const DenseMatmulParams& p, Stream stream) {
  TANDEM_CHECK(p.m >= 0 && p.n > 0 && p.k > 0);
  if (p.m == 0) return;
  TANDEM_CHECK(p.x != nullptr && p.w != nullptr && p.y != nullptr);
  TANDEM_CHECK(p.y != p.x && p.y != p.w);
  DispatchActivation(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    Launch(DenseMatmulKernel<T>, dim3(CeilDiv(p.n, kDenseTile), CeilDiv(p.m, kDenseTile)),
           dim3(kDenseTile, kDenseTile), 0, static_cast<cudaStream_t>(stream.handle), p);
  });
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda
