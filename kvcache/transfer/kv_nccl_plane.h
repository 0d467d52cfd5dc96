// The NCCL data plane of the direct KV transport (KvDataPlane, kv_data_plane.h): one
// communicator of two ranks per prefill/decode connection (rank 0 the prefill side, which makes
// the ncclUniqueId and sends it in the connection's hello, kv_nccl_transport.h; rank 1 the
// decode side), a dedicated CUDA stream per plane, and per Send/Recv one ncclGroupStart/End of
// ncclSend/ncclRecv, one per region (a block's K, V or int8 scale run), straight between the
// two caches' device memory. A Send first makes the plane's stream wait on the event the
// compute stream recorded after that layer's KV append (kernels::Backend::RecordEvent: a
// cudaEvent_t on the CUDA backend), so the copy never reads a block before it is written,
// while later layers keep computing.
//
// The communicator is non-blocking (ncclConfig_t::blocking = 0): no call here waits on the
// peer, every wait polls (ncclCommGetAsyncError, cudaEventQuery) against a deadline, and
// Abort (ncclCommAbort, then the stream drained) ends the plane from any thread; the
// transport's watchdog calls it when a transfer passes its deadline or the peer is gone.
//
// Built only when CMake finds NCCL beside the CUDA toolkit (kvcache/CMakeLists.txt); otherwise
// MakeNcclDataPlaneFactory says so. Not run on a GPU yet: it compiles and links in CI, and the
// logic above it runs in the tests over the byte plane.
//
// Thread safety: as KvDataPlane / KvDataPlaneFactory.
#ifndef TANDEM_KVCACHE_TRANSFER_KV_NCCL_PLANE_H_
#define TANDEM_KVCACHE_TRANSFER_KV_NCCL_PLANE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kvcache/transfer/kv_data_plane.h"

namespace tandem::kvcache {

struct NcclPlaneConfig {
  int device = 0;  // the CUDA device whose cache the plane reads or writes
};

// Whether this build has the NCCL plane.
bool NcclPlaneBuilt();

// The NCCL plane's factory. FailedPrecondition with one line a user can act on when this build
// has no NCCL, or when the CUDA runtime finds no GPU `config.device`.
absl::StatusOr<std::unique_ptr<KvDataPlaneFactory>> MakeNcclDataPlaneFactory(
    const NcclPlaneConfig& config);

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_TRANSFER_KV_NCCL_PLANE_H_
