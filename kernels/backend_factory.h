// CreateBackend: the one place a device name becomes a kernels::Backend, so the model runner
// and the tools never name a backend class. "cpu" is always built; "cuda:N" only in a build with
// the CUDA backend (an Unimplemented error says so otherwise; FailedPrecondition, in one line,
// when the GPU cannot be used: no driver, no such GPU, older than sm_80).
//
// Thread safety: any thread; each call makes a new backend.
#ifndef TANDEM_KERNELS_BACKEND_FACTORY_H_
#define TANDEM_KERNELS_BACKEND_FACTORY_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

namespace tandem::kernels {

struct BackendConfig {
  std::string device = "cpu";  // "cpu" or "cuda:N"
  cpu::CpuBackendConfig cpu;   // device "cpu": threads, pinned cores, ISA
  // device "cuda:N": the activations' dtype, kF16 or kBF16; unset: f16 here, and the model's
  // choice through model::ModelRunner (ModelConfig::DefaultActivations: bf16 for Gemma 3).
  std::optional<ActivationDType> cuda_activations;

  absl::Status Validate() const;
  // N of a device "cuda:N"; -1 for any other name.
  int cuda_ordinal() const;
};

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendConfig& config);

}  // namespace tandem::kernels

#endif  // TANDEM_KERNELS_BACKEND_FACTORY_H_
