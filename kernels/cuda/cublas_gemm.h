// CublasGemm: the dense matmul of dense_matmul.h through cuBLAS (GPU build only: tandem_cuda,
// not the harness). libcublas is loaded with dlopen (libcublas.so.13, then libcublas.so) when
// the first dense weight is packed, not linked: cudart is static and a daemon whose models are
// all quantized needs no CUDA library at run time.
//
// y [m, n] = x [m, k] * w [n, k]^T in row-major terms is, in cuBLAS's column-major terms,
// C (n x m, ldc n) = op(A) B with A = w as a k x n matrix (lda k) transposed and B = x as k x m
// (ldb k): cublasGemmEx with f16 or bf16 operands and output and CUBLAS_COMPUTE_32F.
//
// Thread safety: one instance per backend, used by the thread that owns the backend's streams
// (a cuBLAS handle is not shared between host threads).
#ifndef TANDEM_KERNELS_CUDA_CUBLAS_GEMM_H_
#define TANDEM_KERNELS_CUDA_CUBLAS_GEMM_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cuda/dense_matmul.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

class CublasGemm {
 public:
  // Loads libcublas and creates a handle on the current device. Fails with the loader's
  // message when the library or one of its symbols is missing.
  static absl::StatusOr<std::unique_ptr<CublasGemm>> Create();
  ~CublasGemm();
  CublasGemm(const CublasGemm&) = delete;
  CublasGemm& operator=(const CublasGemm&) = delete;

  // Enqueues y = x w^T on `stream`. Aborts on broken preconditions or a cuBLAS error (a launch
  // that fails is a broken invariant, as for the kernels).
  void Run(const DenseMatmulParams& p, Stream stream);

 private:
  struct Api;
  CublasGemm(std::unique_ptr<Api> api, void* handle);
  std::unique_ptr<Api> api_;
  void* handle_;  // cublasHandle_t
};

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_CUBLAS_GEMM_H_
