// Rotary position embedding on the GPU (kernels/cuda/rope.cuh holds the kernel). Takes
// backend.h's RopeParams as they are: q and k point at elements of the activation dtype.
// Definition: kernels/ref RopeRef.
// Thread safety: launchers are called by the stream's owning thread (one backend instance).
#ifndef TANDEM_KERNELS_CUDA_ROPE_H_
#define TANDEM_KERNELS_CUDA_ROPE_H_

#include "kernels/backend.h"
#include "kernels/cuda/build_namespace.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

// Rotates p.q [n_tokens, n_heads, head_dim] and p.k [n_tokens, n_kv_heads, head_dim] in place,
// elements of `dtype`. One block per token. Aborts on broken preconditions (odd rot_dim,
// rot_dim > head_dim).
void Rope(const RopeParams& p, ActivationDType dtype, Stream stream);

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_ROPE_H_
