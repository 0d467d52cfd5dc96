// RMSNorm on the GPU, optionally fused with the residual add that precedes it in every layer
// (kernels/cuda/rms_norm.cuh holds the kernel). Definition: kernels/ref RmsNormRef, and for
// the fused form AddRef then RmsNormRef, with the sum rounded to the activation dtype in
// between (it is the residual stream the next layer reads), so fused == unfused bit for bit
// in the sum and within rounding in the output.
// Thread safety: launchers are called by the stream's owning thread (one backend instance).
#ifndef TANDEM_KERNELS_CUDA_RMS_NORM_H_
#define TANDEM_KERNELS_CUDA_RMS_NORM_H_

#include "kernels/backend.h"
#include "kernels/cuda/build_namespace.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

struct RmsNormParams {
  const void* x = nullptr;         // [rows, dim] activation dtype
  const void* residual = nullptr;  // [rows, dim] or null; when set, x + residual is normalized
  void* sum_out = nullptr;         // [rows, dim] with residual: x + residual (activation dtype);
                                   // may alias x or residual, never out
  const float* weight = nullptr;   // [dim] f32
  void* out = nullptr;             // [rows, dim] x / rms(x) * weight; may alias x or residual
  int rows = 0;
  int dim = 0;
  float eps = 1e-5f;
  ActivationDType dtype = ActivationDType::kF32;
};

// One block per row. Aborts on broken preconditions (dim <= 0, null pointers, sum_out == out).
void RmsNorm(const RmsNormParams& p, Stream stream);

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_RMS_NORM_H_
