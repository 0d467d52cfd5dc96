// The NCCL plane in a build without NCCL (kvcache/CMakeLists.txt compiles this file instead of
// kv_nccl_plane.cc): it only says why there is none.
#include "kvcache/transfer/kv_nccl_plane.h"

namespace tandem::kvcache {

bool NcclPlaneBuilt() { return false; }

absl::StatusOr<std::unique_ptr<KvDataPlaneFactory>> MakeNcclDataPlaneFactory(
    const NcclPlaneConfig&) {
  return absl::FailedPreconditionError(
      "this tandem was built without NCCL (CMake found no CUDA toolkit with nccl.h and "
      "libnccl): the nccl KV transport is unavailable; use tcp or shm");
}

}  // namespace tandem::kvcache
