#include "kernels/backend_factory.h"

#include "common/str_cat.h"

namespace tandem::kernels {

absl::Status BackendConfig::Validate() const {
  if (device == "cpu") return cpu::ValidateCpuBackendConfig(cpu);
  if (device.rfind("cuda", 0) == 0) {
    return absl::UnimplementedError(
        StrCat("device '", device, "': this build of tandem has no CUDA backend"));
  }
  return absl::InvalidArgumentError(StrCat("unknown device '", device, "' (cpu or cuda:N)"));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendConfig& config) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  return cpu::CreateCpuBackend(config.cpu);
}

}  // namespace tandem::kernels
