// Launcher of the RoPE kernel (rope.h). Built by nvcc into tandem_cuda and, unchanged, for the
// host harness into tandem_cuda_emu.
#include "common/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/rope.cuh"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

void Rope(const RopeParams& p, ActivationDType dtype, Stream stream) {
  TANDEM_CHECK_GE(p.n_tokens, 0);
  TANDEM_CHECK_EQ(p.rot_dim % 2, 0);
  TANDEM_CHECK(p.rot_dim >= 0 && p.rot_dim <= p.head_dim);
  TANDEM_CHECK(p.n_heads >= 0 && p.n_kv_heads >= 0);
  if (p.n_tokens == 0 || p.rot_dim == 0 || p.n_heads + p.n_kv_heads == 0) return;
  TANDEM_CHECK(p.positions != nullptr);
  TANDEM_CHECK(p.n_heads == 0 || p.q != nullptr);
  TANDEM_CHECK(p.n_kv_heads == 0 || p.k != nullptr);
  DispatchActivation(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    Launch(RopeKernel<T>, dim3(static_cast<unsigned>(p.n_tokens)), dim3(kRopeThreads),
           p.rot_dim * sizeof(float), static_cast<cudaStream_t>(stream.handle), p);
  });
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda
