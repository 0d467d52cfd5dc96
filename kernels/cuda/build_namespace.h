// The inline namespace that keeps the two builds of kernels/cuda apart: launchers compiled by
// nvcc (tandem_cuda) live in tandem::kernels::cuda::gpu, the same sources compiled for the
// CUDA-on-CPU harness (tandem_cuda_emu, TANDEM_CUDA_EMU defined) in tandem::kernels::cuda::host.
// Callers write tandem::kernels::cuda::RmsNorm either way; a binary that links both libraries
// gets two distinct sets of symbols instead of an ODR violation.
// Thread safety: macros only.
#ifndef TANDEM_KERNELS_CUDA_BUILD_NAMESPACE_H_
#define TANDEM_KERNELS_CUDA_BUILD_NAMESPACE_H_

#if defined(TANDEM_CUDA_EMU)
#define TANDEM_CUDA_BUILD host
#else
#define TANDEM_CUDA_BUILD gpu
#endif

#endif  // TANDEM_KERNELS_CUDA_BUILD_NAMESPACE_H_
