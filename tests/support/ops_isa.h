// Test helpers for the CPU ops' process-wide ISA choice (kernels/cpu/ops.h).
// Thread safety: tests only; IsaGuard changes a process-wide setting.
#ifndef TANDEM_TESTS_SUPPORT_OPS_ISA_H_
#define TANDEM_TESTS_SUPPORT_OPS_ISA_H_

#include <vector>

#include "kernels/cpu/ops.h"

namespace tandem::testing {

// Every OpsIsa this CPU can run.
inline std::vector<kernels::cpu::OpsIsa> SupportedOpsIsas() {
  using kernels::cpu::OpsIsa;
  std::vector<OpsIsa> out;
  for (OpsIsa isa : {OpsIsa::kScalar, OpsIsa::kAvx2, OpsIsa::kAvx512}) {
    if (kernels::cpu::OpsIsaSupported(isa)) out.push_back(isa);
  }
  return out;
}

// Forces an OpsIsa for one scope and restores the previous choice.
class OpsIsaGuard {
 public:
  explicit OpsIsaGuard(kernels::cpu::OpsIsa isa) : saved_(kernels::cpu::GetOpsIsa()) {
    kernels::cpu::SetOpsIsa(isa);
  }
  ~OpsIsaGuard() { kernels::cpu::SetOpsIsa(saved_); }
  OpsIsaGuard(const OpsIsaGuard&) = delete;
  OpsIsaGuard& operator=(const OpsIsaGuard&) = delete;

 private:
  kernels::cpu::OpsIsa saved_;
};

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_SUPPORT_OPS_ISA_H_
