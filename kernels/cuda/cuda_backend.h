// CudaBackend: kernels::Backend on the kernels of kernels/cuda, so that LlamaModel's forward pass
// runs through them unchanged. One source, two builds, like the kernels:
//   * the GPU build (tandem_cuda, nvcc found): device memory from cudaMalloc, a stream per
//     Stream, CUDA events; weights repacked once and uploaded; ops are kernel launches that
//     return at once (only Synchronize / SynchronizeEvent and CopyToHost wait);
//   * the harness build (tandem_cuda_emu, TANDEM_CUDA_EMU): the same ops run by the CUDA-on-CPU
//     harness (kernels/emu) on host memory, every launch finished when it returns; the tests
//     run a whole model through it (tests/cuda/forward_test.cc).
// Activations are f16 or bf16 (the quantized GEMM takes nothing else); norms' weights and
// biases stay f32; logits leave through ToF32.
//
// Weights: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and K-quant (Q2_K..Q6_K) matrices are repacked for
// QuantMatmul (quant_matmul.h); a token table (WeightUse kGather / kBoth) of F32, F16, BF16,
// Q4_0, Q4_1 or Q8_0 also keeps its GGUF rows for EmbeddingGather (bit-exact), one of another
// quantized type is gathered from the packed layout (EmbeddingGatherPacked). F32, F16 and BF16
// matrices are converted to the activation dtype (a value past f16's range is refused with the
// tensor's name) and multiplied by cuBLAS (cublas_gemm.h) on a GPU, DenseMatmulSimt in the
// harness.
//
// Thread safety: as kernels::Backend (one driving thread per instance). Weights are immutable
// after PackWeight and may be shared by instances on the same device (AdoptWeight).
// Must not: know about requests, sequences or scheduling (backend.h).
#ifndef TANDEM_KERNELS_CUDA_CUDA_BACKEND_H_
#define TANDEM_KERNELS_CUDA_CUDA_BACKEND_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cuda/build_namespace.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

struct CudaBackendConfig {
  int device = 0;  // the GPU's ordinal (GPU build; the harness has one "device")
  ActivationDType activations = ActivationDType::kF16;  // kF16 or kBF16

  absl::Status Validate() const;
};

// The device kind, Name() up to its first space: "cuda:N" on a GPU, "cuda-emu" in the harness
// (weights packed by one are refused by the other: they live in different memories).
//
// GPU build: FailedPrecondition when device `config.device` cannot be used (no driver, no such
// GPU, compute capability under 8.0: mma.sync on f16/bf16 and cp.async need sm_80).
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendConfig& config);

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_CUDA_BACKEND_H_
