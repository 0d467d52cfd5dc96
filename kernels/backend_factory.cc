#include "kernels/backend_factory.h"

#include <charconv>

#include "common/str_cat.h"
#if TANDEM_HAVE_CUDA
#include "kernels/cuda/device_probe.h"
#endif

namespace tandem::kernels {

absl::Status BackendConfig::Validate() const {
  if (device == "cpu") return cpu::ValidateCpuBackendConfig(cpu);
  if (device.rfind("cuda", 0) == 0) {
    // cuda:N, N a device ordinal.
    int ordinal = -1;
    const char* begin = device.data() + 5;
    const char* end = device.data() + device.size();
    if (device.size() < 6 || device[4] != ':' || std::from_chars(begin, end, ordinal).ptr != end ||
        ordinal < 0) {
      return absl::InvalidArgumentError(
          StrCat("unknown device '", device, "' (cpu or cuda:N, N a GPU number)"));
    }
#if TANDEM_HAVE_CUDA
    absl::StatusOr<std::string> gpu = cuda::ProbeCudaDevice(ordinal);
    if (!gpu.ok()) {
      return absl::FailedPreconditionError(
          StrCat("device '", device, "': ", gpu.status().message()));
    }
    return absl::UnimplementedError(StrCat("device '", device, "' (", *gpu,
                                           "): the CUDA kernels are built (kernels/cuda) but no "
                                           "CUDA backend runs a model with them yet"));
#else
    return absl::UnimplementedError(StrCat(
        "device '", device, "': this build of tandem has no CUDA backend (built without nvcc)"));
#endif
  }
  return absl::InvalidArgumentError(StrCat("unknown device '", device, "' (cpu or cuda:N)"));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendConfig& config) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  return cpu::CreateCpuBackend(config.cpu);
}

}  // namespace tandem::kernels
