// Launcher of the KV append kernel (kv_append.h). Built by nvcc into tandem_cuda and, unchanged,
// for the host harness into tandem_cuda_emu.
#include "common/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/kv_append.cuh"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

void KvAppend(const KvAppendParams& p, ActivationDType dtype, Stream stream) {
  const KvCacheView& c = p.cache;
  TANDEM_CHECK_GE(p.n_tokens, 0);
  TANDEM_CHECK(c.n_kv_heads > 0 && c.head_dim > 0 && c.block_size > 0 && c.n_blocks > 0);
  TANDEM_CHECK(p.layer >= 0 && p.layer < c.n_layers);
  if (p.n_tokens == 0) return;
  TANDEM_CHECK(p.k != nullptr && p.v != nullptr && p.slots != nullptr);
  TANDEM_CHECK(c.k != nullptr && c.v != nullptr);
  if (c.dtype == KvDType::kInt8)
    TANDEM_CHECK(c.k_scale_zero != nullptr && c.v_scale_zero != nullptr);
  const auto s = static_cast<cudaStream_t>(stream.handle);
  const dim3 grid(static_cast<unsigned>(p.n_tokens));
  DispatchActivation(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    switch (c.dtype) {
      case KvDType::kF32:
        return Launch(KvAppendKernel<T, KvDType::kF32>, grid, dim3(kKvAppendThreads), 0, s, p);
      case KvDType::kF16:
        return Launch(KvAppendKernel<T, KvDType::kF16>, grid, dim3(kKvAppendThreads), 0, s, p);
      case KvDType::kInt8:
        return Launch(KvAppendKernel<T, KvDType::kInt8>, grid, dim3(kKvAppendThreads), 0, s, p);
    }
  });
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda
