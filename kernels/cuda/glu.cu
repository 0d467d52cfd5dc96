// Launcher of the SwiGLU / GeGLU kernel (glu.h). Built by nvcc into tandem_cuda and, unchanged,
// for the host harness into tandem_cuda_emu.
#include <algorithm>

#include "common/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/glu.cuh"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

// Enough blocks to fill any current GPU several times over; the grid-stride loop covers the
// rest (and keeps the host harness from running millions of tiny blocks).
constexpr int64_t kGluMaxBlocks = 4096;

void Glu(const GluParams& p, Stream stream) {
  TANDEM_CHECK(p.rows >= 0 && p.dim >= 0);
  const int64_t n = static_cast<int64_t>(p.rows) * p.dim;
  if (n == 0) return;
  TANDEM_CHECK(p.gate != nullptr && p.up != nullptr && p.out != nullptr);
  const unsigned blocks =
      static_cast<unsigned>(std::min(kGluMaxBlocks, (n + kGluThreads - 1) / kGluThreads));
  DispatchActivation(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto* kernel =
        p.kind == GluKind::kSwiGlu ? GluKernel<T, GluKind::kSwiGlu> : GluKernel<T, GluKind::kGeGlu>;
    Launch(kernel, dim3(blocks), dim3(kGluThreads), 0, static_cast<cudaStream_t>(stream.handle), p);
  });
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda
