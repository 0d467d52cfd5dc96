// KvDataPlane: the data plane of the direct KV transport (kv_nccl_transport.h), where a
// sequence's KV goes block to block from the prefill cache into the decode side's reserved
// blocks, apart from the control frames (kv_frame.h) that stay on the KvConnection. Two
// implementations behind one interface: NCCL between GPUs (kv_nccl_plane.h, built only with
// CUDA and NCCL), and a byte plane over a second TCP connection (here), which is what the tests
// run on machines without a GPU, so that the pusher, receiver, watchdog and lease logic above
// the plane is the same code in both.
//
// A plane joins two peers, the sender (rank 0, the prefill side, which offers it) and the
// receiver (rank 1, the decode side, which joins with the offer's bootstrap bytes: for NCCL
// the ncclUniqueId). Operations run in the order they were queued, and the n-th Send of one
// side is matched with the n-th Recv of the other, region by region (NCCL's point-to-point
// semantics): both sides must queue the same list of region sizes, which is why the direct
// path needs the same layout on both sides (KvDirectLayout).
//
// Thread safety: Send, Recv and Wait from one thread (the transfer's); Abort from any thread,
// at any time, also while that thread is blocked in the plane. Factories: any thread.
//
// Invariants:
// - Once Abort has returned, the plane touches none of the regions queued on it, ever: a
//   caller may free (or hand to another sequence) the blocks behind them.
// - After its first error a plane is failed for good: every later call returns that error.
#ifndef TANDEM_KVCACHE_TRANSFER_KV_DATA_PLANE_H_
#define TANDEM_KVCACHE_TRANSFER_KV_DATA_PLANE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/backend.h"
#include "kvcache/block_table.h"
#include "kvcache/kv_cache.h"

namespace tandem::kvcache {

// A run of bytes in a cache's memory (device memory for the NCCL plane, host memory for the
// byte plane).
struct KvRegion {
  void* ptr = nullptr;
  size_t bytes = 0;
};

class KvDataPlane {
 public:
  virtual ~KvDataPlane() = default;
  // Queues the sending of `regions`, in order, as one group (one ncclGroupStart/End), to start
  // once `ready` has happened (the event recorded after the layer's KV append on the compute
  // stream; a null handle: at once; the byte plane ignores it, the CPU backend's events having
  // happened when recorded). The regions must stay valid and unwritten until Wait returns OK
  // or Abort returns. Returns the plane's error once failed.
  virtual absl::Status Send(std::span<const KvRegion> regions, kernels::Event ready) = 0;
  // Queues the receiving of the peer's matching Send into `regions`, in order, as one group.
  // The regions must stay valid until Wait returns OK or Abort returns.
  virtual absl::Status Recv(std::span<const KvRegion> regions) = 0;
  // Waits for everything queued so far, at most until `until`: OK when done, DeadlineExceeded
  // when not yet (the plane stays usable), else the plane's error (Unavailable for a peer that
  // is gone, DataLoss for a peer whose Send did not match the Recv).
  virtual absl::Status Wait(absl::Time until) = 0;
  // Ends the plane (NCCL: ncclCommAbort) with `why`, which later calls return; what was queued
  // is dropped and blocked calls return. Idempotent; any thread. See Invariants.
  virtual void Abort(const absl::Status& why) = 0;
};

// The sending side's half-made plane: bootstrap() goes to the peer, which calls Join with it
// while this side calls Connect.
class KvDataPlaneOffer {
 public:
  virtual ~KvDataPlaneOffer() = default;
  virtual const std::string& bootstrap() const = 0;
  // The plane, once the peer joined; DeadlineExceeded when it did not by `until`.
  virtual absl::StatusOr<std::unique_ptr<KvDataPlane>> Connect(absl::Time until) = 0;
};

class KvDataPlaneFactory {
 public:
  virtual ~KvDataPlaneFactory() = default;
  // "nccl" or "bytes": the two sides of a connection must be of the same kind.
  virtual std::string_view kind() const = 0;
  // The sending side (rank 0): a new plane to offer to one peer.
  virtual absl::StatusOr<std::unique_ptr<KvDataPlaneOffer>> Offer() = 0;
  // The receiving side (rank 1): the plane of a peer's offer, once both joined by `until`.
  // InvalidArgument for bootstrap bytes that do not parse.
  virtual absl::StatusOr<std::unique_ptr<KvDataPlane>> Join(std::string_view bootstrap,
                                                            absl::Time until) = 0;
};

// The byte plane: every Send is written to a TCP connection (a small header, then the regions'
// bytes), every Recv reads into its regions, on a thread of the plane's own. The offering
// side listens on `host` (port 0) for the one peer whose first bytes are the offer's random
// token. Host memory only.
std::unique_ptr<KvDataPlaneFactory> MakeByteDataPlaneFactory(std::string host = "127.0.0.1");

// What a block-to-block transfer needs both caches to share: the same bytes per block of each
// array, and the same positions kept per layer (so that both sides list the same blocks).
struct KvDirectLayout {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int block_size = 0;
  kernels::KvDType dtype = kernels::KvDType::kF16;
  // [n_layers]: the window a layer's group keeps (KvGroups::window of its group), 0 for a
  // layer that keeps the whole context.
  std::vector<int> kept_window;
  bool operator==(const KvDirectLayout&) const = default;
};

// The layout of a cache of `n_layers` model layers with this view and grouping (KvGroups;
// empty: one group, a layer per view layer).
KvDirectLayout DirectLayoutOf(const kernels::KvCacheView& view, const KvGroups& groups,
                              int n_layers);
// OK when a sender of `sender`'s layout can fill a cache of `receiver`'s block to block, else
// FailedPrecondition naming the first difference (and that the byte transports convert).
absl::Status CheckDirectLayout(const KvDirectLayout& sender, const KvDirectLayout& receiver);
// For the hello of kv_nccl_transport.cc: a fixed little-endian encoding, and its parser
// (InvalidArgument for bytes that are not one layout).
void EncodeDirectLayout(const KvDirectLayout& l, std::string* out);
absl::StatusOr<KvDirectLayout> DecodeDirectLayout(std::string_view bytes);

// The regions of model layer `layer` of a sequence of n_tokens positions whose blocks `table`
// holds in a cache of this view and grouping: for each block of the layer's group holding a
// position from the group's first kept one (KvGroups::FirstKept) to n_tokens - 1, in position
// order, its K run; then those blocks' V runs; for int8 then their K and V (scale, zero) runs.
// Whole blocks: the last one's positions past n_tokens travel too (the receiver's are its
// lease's own, written later by decode). Replaces *out. InvalidArgument when the layer is out
// of range or the table lacks a block (or names one outside the cache).
absl::Status DirectLayerRegions(const kernels::KvCacheView& view, const KvGroups& groups,
                                const BlockTable& table, int layer, int n_tokens,
                                std::vector<KvRegion>* out);

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_TRANSFER_KV_DATA_PLANE_H_
