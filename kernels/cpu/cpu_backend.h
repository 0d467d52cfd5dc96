// CpuBackend: kernels::Backend on a set of CPU cores. Memory is 64-byte aligned host memory,
// the stream is synchronous (every op has finished when its call returns), and each op is
// split across a persistent pinned ThreadPool (the engine thread is thread 0).
//
// Matmul keeps quantized weights quantized: PackWeight repacks Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 into
// the 16-row interleaved layout of kernels/cpu/matmul.h, and each call quantizes the
// activations to int8 per 32-element block into scratch owned by the backend (sized for
// max_batch_tokens rows and the widest packed weight; a larger m runs in chunks), then runs
// the int8 GEMM of the configured ISA.
//
// Sample (kernels/cpu/sample.h) splits rows over the pool; each thread has scratch for one row
// of logits, sized by the most rows of any weight packed or adopted (the output projection's
// rows are the vocabulary), 12 bytes per entry and thread.
//
// Thread safety: like every Backend, driven by one thread. PackWeight and AdoptWeight grow
// the scratch, so they must not run concurrently with ops (they run at set-up time). The ops
// of kernels/cpu/ops.h choose their variant process-wide; the constructor sets it from `isa`,
// so two CpuBackends in one process should use the same ISA.
#ifndef TANDEM_KERNELS_CPU_CPU_BACKEND_H_
#define TANDEM_KERNELS_CPU_CPU_BACKEND_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_features.h"

namespace tandem::kernels::cpu {

struct CpuBackendConfig {
  int threads = 1;              // >= 1, including the engine thread
  std::vector<int> cpus;        // empty (no pinning) or one CPU id per thread; the thread driving
                                // the backend is pinned to cpus[0] at its first op
  Isa isa = BestIsa();          // forced tiers must be IsaAvailable
  int max_batch_tokens = 2048;  // activation rows quantized per GEMM pass (scratch size)
  int spin_us = 200;            // how long idle workers poll before sleeping
};

absl::Status ValidateCpuBackendConfig(const CpuBackendConfig& config);
// Errors: an invalid config, a forced ISA this CPU lacks, or (isa = kAmx) an AMX GEMM that
// fails its one-time check against the AVX-512 kernel.
absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const CpuBackendConfig& config);

}  // namespace tandem::kernels::cpu

#endif  // TANDEM_KERNELS_CPU_CPU_BACKEND_H_
