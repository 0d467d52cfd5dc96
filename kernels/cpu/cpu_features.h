// CPU feature detection for the CPU backend: which instruction sets this process may use,
// from cpuid plus the OS's consent (XCR0 for AVX/AVX-512 state, and on Linux the
// ARCH_REQ_XCOMP_PERM permission for AMX tile data).
//
// Thread safety: every function may be called from any thread; detection runs once (the
// first call) and is cached. The AMX permission request is made at most once per process.
#ifndef TANDEM_KERNELS_CPU_CPU_FEATURES_H_
#define TANDEM_KERNELS_CPU_CPU_FEATURES_H_

#include <string_view>

#include "absl/status/statusor.h"

namespace tandem::kernels::cpu {

// Instruction-set tiers the CPU kernels are written for, in increasing order.
//   kAvx2:   AVX2 + FMA + F16C.
//   kAvx512: kAvx2 + AVX-512 F/BW/VL/DQ + VNNI (the int8 dot product the GEMM needs).
//   kAmx:    kAvx512 + AMX-TILE + AMX-INT8, with the OS permission to use tile data.
enum class Isa { kScalar, kAvx2, kAvx512, kAmx };

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512vnni = false;
  bool avx512bf16 = false;
  bool amx_tile = false;
  bool amx_int8 = false;
  bool amx_bf16 = false;
  bool os_avx = false;     // XCR0 enables YMM state
  bool os_avx512 = false;  // XCR0 enables opmask + ZMM state
  bool os_amx = false;     // XCR0 enables tile state and the kernel granted permission
};

// Features of this CPU (cached after the first call).
const CpuFeatures& GetCpuFeatures();

// True when every instruction `isa`'s kernels use is available to this process.
bool IsaAvailable(Isa isa);
// The highest available tier.
Isa BestIsa();

const char* IsaName(Isa isa);  // "scalar", "avx2", "avx512", "amx"
// Parses "auto" (= BestIsa()), "scalar", "avx2", "avx512" or "amx". Unknown names are an
// InvalidArgument error; an available-ness check is the caller's (CreateCpuBackend does it).
absl::StatusOr<Isa> ParseIsa(std::string_view name);

// Loads the tile configuration the AMX GEMM uses into the calling thread's tile registers,
// if it is not loaded there yet (the configuration is per thread). Only call when
// IsaAvailable(Isa::kAmx). Defined in matmul_amx.cc.
void EnsureAmxTileConfig();

}  // namespace tandem::kernels::cpu

#endif  // TANDEM_KERNELS_CPU_CPU_FEATURES_H_
