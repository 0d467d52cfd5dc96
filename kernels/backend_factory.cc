#include "kernels/backend_factory.h"

#include <charconv>

#include "common/str_cat.h"
#if TANDEM_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/device_probe.h"
#endif

namespace tandem::kernels {
namespace {

// The ordinal of a "cuda:N" device name, or -1.
int CudaOrdinal(const std::string& device) {
  int ordinal = -1;
  const char* begin = device.data() + 5;
  const char* end = device.data() + device.size();
  if (device.size() < 6 || device.rfind("cuda:", 0) != 0 ||
      std::from_chars(begin, end, ordinal).ptr != end || ordinal < 0) {
    return -1;
  }
  return ordinal;
}

}  // namespace

int BackendConfig::cuda_ordinal() const { return CudaOrdinal(device); }

absl::Status BackendConfig::Validate() const {
  if (device == "cpu") return cpu::ValidateCpuBackendConfig(cpu);
  if (device.rfind("cuda", 0) == 0) {
    const int ordinal = CudaOrdinal(device);
    if (ordinal < 0) {
      return absl::InvalidArgumentError(
          StrCat("unknown device '", device, "' (cpu or cuda:N, N a GPU number)"));
    }
#if TANDEM_HAVE_CUDA
    absl::StatusOr<std::string> gpu = cuda::ProbeCudaDevice(ordinal);
    if (!gpu.ok()) {
      return absl::FailedPreconditionError(
          StrCat("device '", device, "': ", gpu.status().message()));
    }
    return absl::OkStatus();
#else
    return absl::UnimplementedError(StrCat(
        "device '", device, "': this build of tandem has no CUDA backend (built without nvcc)"));
#endif
  }
  return absl::InvalidArgumentError(StrCat("unknown device '", device, "' (cpu or cuda:N)"));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendConfig& config) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
#if TANDEM_HAVE_CUDA
  if (config.device != "cpu") {
    cuda::CudaBackendConfig cc;
    cc.device = CudaOrdinal(config.device);
    cc.activations = config.cuda_activations.value_or(ActivationDType::kF16);
    absl::StatusOr<std::unique_ptr<Backend>> be = cuda::CreateCudaBackend(cc);
    if (!be.ok()) {
      return absl::Status(be.status().code(),
                          StrCat("device '", config.device, "': ", be.status().message()));
    }
    return be;
  }
#endif
  return cpu::CreateCpuBackend(config.cpu);
}

}  // namespace tandem::kernels
