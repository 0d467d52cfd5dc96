// KvSnapshot: a host copy of one sequence's KV, positions [0, n_tokens) of every layer, taken
// from one instance's cache and written into another's. It is the payload of a KV handover:
// the in-process handover keeps it in memory between the prefill and the decode engine
// threads; the shared-memory and TCP transports (not built yet) will frame the same bytes.
//
// Layout: the source's dtype, as one block of n_tokens positions per layer
// ([n_layers, n_kv_heads, n_tokens, head_dim] for K and for V, plus the int8 scale/zero
// pairs), so taking it is one run of memcpys and writing it re-pages and converts to the
// destination's block size and dtype (kvcache/kv_copy.h).
//
// Thread safety: a value. Take reads the source cache (its owner's engine thread, or while
// that thread is known not to write those blocks); WriteTo likewise for the destination.
#ifndef TANDEM_KVCACHE_TRANSFER_KV_SNAPSHOT_H_
#define TANDEM_KVCACHE_TRANSFER_KV_SNAPSHOT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kvcache/block_table.h"
#include "kvcache/kv_manager.h"
#include "kvcache/transfer/kv_frame.h"

namespace tandem::kvcache {

// Writes a LayerFrame's positions [f.first, f.n_tokens) into layer f.layer of (dst, table),
// re-paging and converting; with layer groups (`groups`, KvGroups; empty: one group), into the
// layer's group and slot, a local group's only from the window of position f.n_tokens on. The
// frame must be well formed (as FrameParser returns it). InvalidArgument (nothing written) when
// its layer, heads or head size do not fit dst, the table holds fewer positions, or the frame
// starts after the first position this cache's next step reads of that layer. The receiving
// side of every transport calls it from its own thread: dst's memory must be host memory and
// `table`'s blocks written by no one else meanwhile.
absl::Status WriteLayerPayload(const LayerFrame& f, const kernels::KvCacheView& dst,
                               const KvGroups& groups, const BlockTable& table);

// The LayerFrame payload of positions [*first, n_tokens) of `layer` of the sequence whose
// blocks `table` holds in `kv` (re-paged to one block, converted to `dtype`): what a layer-wise
// push sends right after the prefill step appended that layer. *first is 0, or for a layer of
// a local group the window of position n_tokens (all the table keeps). The blocks must hold
// n_tokens positions (the table's count may not say so yet, mid-step). Replaces *out. Host
// memory only.
absl::Status EncodeLayerPayload(const KvManager& kv, const BlockTable& table, int layer,
                                int n_tokens, kernels::KvDType dtype, int* first, std::string* out);

class KvSnapshot {
 public:
  // Copies positions [0, n_tokens) of `table` in `src` (of a local layer group's layers, the
  // window of position n_tokens: first(layer)). InvalidArgument when the table holds fewer
  // positions or n_tokens < 1.
  static absl::StatusOr<std::unique_ptr<KvSnapshot>> Take(const KvManager& src,
                                                          const BlockTable& table, int n_tokens);
  // Writes every position into `table` of `dst` (which must hold n_tokens positions; heads and
  // head size must match the source's, and a layer must hold every position dst's next step
  // reads of it: InvalidArgument otherwise, nothing written then); a local layer group's
  // positions only from the window of position n_tokens on.
  absl::Status WriteTo(const KvManager& dst, const BlockTable& table) const;

  // The payload of `layer`'s LayerFrame (kv_frame.h) in `dtype`, positions [first(layer),
  // n_tokens): the snapshot's own bytes when dtype is its dtype, else converted as
  // CopyLayerTokens converts (an int8 wire quantizes as an int8 cache would). Replaces *out.
  // CHECKs layer.
  void LayerPayload(int layer, kernels::KvDType dtype, std::string* out) const;
  // The first position the snapshot holds of `layer` (0 but for a local layer group's).
  int first(int layer) const { return first_[layer]; }

  int n_tokens() const { return view_.block_size; }
  int n_layers() const { return view_.n_layers; }
  int n_kv_heads() const { return view_.n_kv_heads; }
  int head_dim() const { return view_.head_dim; }
  kernels::KvDType dtype() const { return view_.dtype; }
  size_t bytes() const { return k_.size() + v_.size() + 4 * (ks_.size() + vs_.size()); }

 private:
  KvSnapshot() : table_(1) {}

  kernels::KvCacheView view_;  // one block of n_tokens positions over the arrays below
  BlockTable table_;           // that block, id 0
  std::vector<uint8_t> k_, v_;
  std::vector<float> ks_, vs_;  // int8 only
  std::vector<int> first_;      // [n_layers]
};

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_TRANSFER_KV_SNAPSHOT_H_
