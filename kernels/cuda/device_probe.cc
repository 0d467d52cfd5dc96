#include "kernels/cuda/device_probe.h"

#include <cuda_runtime_api.h>

#include "common/str_cat.h"

namespace tandem::kernels::cuda {

absl::StatusOr<std::string> ProbeCudaDevice(int ordinal) {
  int count = 0;
  if (const cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess) {
    return absl::FailedPreconditionError(
        StrCat("no usable CUDA GPU: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
  }
  if (ordinal < 0 || ordinal >= count) {
    return absl::FailedPreconditionError(
        StrCat("no CUDA GPU ", ordinal, ": this machine has ", count));
  }
  cudaDeviceProp prop{};
  if (const cudaError_t e = cudaGetDeviceProperties(&prop, ordinal); e != cudaSuccess) {
    return absl::FailedPreconditionError(
        StrCat("CUDA GPU ", ordinal, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
  }
  return std::string(prop.name);
}

}  // namespace tandem::kernels::cuda
