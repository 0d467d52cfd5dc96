// KV append on the GPU (kernels/cuda/kv_append.cuh holds the kernel): writes each token's K and
// V rows into its slot of the paged cache. Takes backend.h's KvAppendParams as they are (k and v
// point at elements of the activation dtype). Definition: kernels/ref KvAppendRef, bit for bit:
// F32 and F16 (round to nearest even) caches, and int8 asymmetric per (token, head) row with
// scale = (max - min) / 255, zero = min, q = rint((x - zero) / scale) clamped to [0, 255], all
// single IEEE f32 operations.
// Thread safety: launchers are called by the stream's owning thread (one backend instance).
#ifndef TANDEM_KERNELS_CUDA_KV_APPEND_H_
#define TANDEM_KERNELS_CUDA_KV_APPEND_H_

#include "kernels/backend.h"
#include "kernels/cuda/build_namespace.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

// One block per token. A slot out of range is a broken invariant: the kernel traps (aborts on
// the host). Aborts on broken preconditions (layer out of range, missing int8 scale arrays).
void KvAppend(const KvAppendParams& p, ActivationDType dtype, Stream stream);

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_KV_APPEND_H_
