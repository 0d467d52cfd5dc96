// Whether a CUDA GPU can be used, asked of the CUDA runtime (host code; built only when CMake
// finds the CUDA toolkit, TANDEM_HAVE_CUDA). `tandemd --device cuda:N` calls it at start, so a
// machine without a GPU (or without a driver) gets one line saying so instead of a failure deep
// in the first allocation.
// Thread safety: any thread.
#ifndef TANDEM_KERNELS_CUDA_DEVICE_PROBE_H_
#define TANDEM_KERNELS_CUDA_DEVICE_PROBE_H_

#include <string>

#include "absl/status/statusor.h"

namespace tandem::kernels::cuda {

// The name of CUDA device `ordinal` (e.g. "NVIDIA H100 80GB HBM3") when the runtime reaches it;
// FailedPrecondition naming the runtime's error (no driver, no device) or the devices there are.
absl::StatusOr<std::string> ProbeCudaDevice(int ordinal);

}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_DEVICE_PROBE_H_
