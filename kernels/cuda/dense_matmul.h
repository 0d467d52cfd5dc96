// Dense matmul on the GPU, for GGUF's F32, F16 and BF16 matrices (converted once at load to the
// activation dtype): y = x * w^T with x [m, k], w [n, k] and y [m, n], all of the activation
// dtype (f16 or bf16), products and sums in f32, y rounded once. Definition: kernels/ref Matmul
// on w's values as converted.
//
// Two ways to run it:
//   * DenseMatmulSimt (dense_matmul.cuh): a tiled kernel on CUDA cores, 16 x 16 outputs per
//     block, k in steps of 16 through shared memory. The harness runs it; it is the reference
//     the cuBLAS path is checked against on a GPU (scripts/gpu-check), not the fast path;
//   * CublasGemm (GPU build only, cublas_gemm.h): cublasGemmEx with f32 compute on tensor
//     cores, libcublas loaded with dlopen at the first dense weight, so a daemon whose models
//     are all quantized needs no cuBLAS.
//
// Thread safety: launchers are called by the stream's owning thread (one backend instance).
#ifndef TANDEM_KERNELS_CUDA_DENSE_MATMUL_H_
#define TANDEM_KERNELS_CUDA_DENSE_MATMUL_H_

#include "kernels/backend.h"
#include "kernels/cuda/build_namespace.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

struct DenseMatmulParams {
  const void* x = nullptr;  // [m, k] activation dtype
  const void* w = nullptr;  // [n, k] activation dtype
  void* y = nullptr;        // [m, n] activation dtype; must not alias x or w
  int m = 0;
  int n = 0;
  int k = 0;
  ActivationDType dtype = ActivationDType::kF16;
};

// Aborts on broken preconditions (sizes, null pointers).
void DenseMatmulSimt(const DenseMatmulParams& p, Stream stream);

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_DENSE_MATMUL_H_
