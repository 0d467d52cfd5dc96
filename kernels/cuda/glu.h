// Gated activations of the feed-forward block on the GPU (kernels/cuda/glu.cuh holds the
// kernel): SwiGLU (Llama) and GeGLU (Gemma). Definitions: kernels/ref SwiGluRef, GeGluRef.
// Thread safety: launchers are called by the stream's owning thread (one backend instance).
#ifndef TANDEM_KERNELS_CUDA_GLU_H_
#define TANDEM_KERNELS_CUDA_GLU_H_

#include "kernels/backend.h"
#include "kernels/cuda/build_namespace.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

enum class GluKind {
  kSwiGlu,  // silu(gate) * up = gate / (1 + exp(-gate)) * up
  kGeGlu,   // gelu_tanh(gate) * up = gate / (1 + exp(-z)) * up, z = 2 sqrt(2/pi) (g + 0.044715 g^3)
};

struct GluParams {
  const void* gate = nullptr;  // [rows, dim] activation dtype
  const void* up = nullptr;    // [rows, dim] activation dtype
  void* out = nullptr;         // [rows, dim] activation dtype; may alias gate or up
  int rows = 0;
  int dim = 0;
  GluKind kind = GluKind::kSwiGlu;
  ActivationDType dtype = ActivationDType::kF32;
};

// Elementwise, grid-stride. Aborts on broken preconditions (negative sizes, null pointers).
void Glu(const GluParams& p, Stream stream);

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_GLU_H_
