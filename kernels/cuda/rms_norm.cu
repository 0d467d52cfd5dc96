// Launcher of the RMSNorm kernels (rms_norm.h). Built by nvcc into tandem_cuda and, unchanged,
// for the host harness into tandem_cuda_emu.
#include <algorithm>

#include "common/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/rms_norm.cuh"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

void RmsNorm(const RmsNormParams& p, Stream stream) {
  TANDEM_CHECK_GE(p.rows, 0);
  TANDEM_CHECK_GT(p.dim, 0);
  if (p.rows == 0) return;
  TANDEM_CHECK(p.x != nullptr && p.weight != nullptr && p.out != nullptr);
  if (p.residual != nullptr) TANDEM_CHECK(p.sum_out != nullptr && p.sum_out != p.out);
  // A warp multiple (BlockSum needs whole warps), no more threads than elements beyond that.
  const int threads = std::min(kRmsNormMaxThreads, (p.dim + 31) / 32 * 32);
  DispatchActivation(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    Launch(RmsNormKernel<T>, dim3(static_cast<unsigned>(p.rows)), dim3(threads), 0,
           static_cast<cudaStream_t>(stream.handle), p);
  });
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda
