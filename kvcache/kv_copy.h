// KV copy between two paged caches, token by token: the data path of a KV handover between
// instances (prefill to decode) whose block sizes and KV dtypes may differ. Positions keep
// their index: position p of the source sequence becomes position p of the destination,
// wherever each table puts it.
//
// Host memory only: every pointer of both views must be readable and writable by the CPU
// (a CPU backend's cache, or a host staging copy of a device cache).
//
// Conversions: float to float rounds as KvAppend does (f16: nearest even); int8 sources are
// dequantized (x = q * scale + zero) and an int8 destination is quantized by the kernels'
// own reference KvAppend, so a transferred row is bit-identical to the row the destination
// would have stored from the same floats. Same-dtype copies move bytes (scales included) and
// never requantize, so int8 to int8 is exact at any block sizes.
//
// Thread safety: pure functions of their arguments; concurrent calls must not write the same
// destination rows. Source and destination rows must not overlap.
#ifndef TANDEM_KVCACHE_KV_COPY_H_
#define TANDEM_KVCACHE_KV_COPY_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/backend.h"
#include "kvcache/block_table.h"
#include "kvcache/kv_cache.h"

namespace tandem::kvcache {

// Copies the K/V of positions [first, n_tokens) of layer `layer` from (src, src_table) to
// (dst, dst_table). Other positions of the destination, other layers and other blocks are not
// written, and the tables' entries of blocks wholly before `first` are not read (a local layer
// group's table: -1 there). InvalidArgument (and nothing written) when n_kv_heads or head_dim
// differ, the layer is out of either cache's range, a table's block size is not its cache's, a
// table holds fewer than n_tokens positions or names a block outside its cache, first is
// outside [0, n_tokens], or a view lacks memory. Same dtype and block size: one memcpy per block
// (per head for a partial last block). Same dtype, other block sizes: one memcpy per run of
// positions that stays inside one block on both sides, per head. Different dtypes: per token,
// through float.
absl::Status CopyLayerTokens(const kernels::KvCacheView& src, const BlockTable& src_table,
                             const kernels::KvCacheView& dst, const BlockTable& dst_table,
                             int layer, int n_tokens, int first = 0);

// Where positions [0, n_tokens) of model layer `layer` go in a table of a cache whose layers
// are grouped by `groups` (kvcache::KvGroups; empty: one group, layer == slot): the layer's
// index in the cache's view, the first position the layer's group keeps (a local group: the
// window of position n_tokens, the next to compute; else 0), and a one-group table addressing
// that group's blocks (it only addresses them: never released). CHECKs layer.
struct LayerDestination {
  int slot = 0;
  int first = 0;
  BlockTable table{1};
};
LayerDestination LayerDestinationOf(const KvGroups& groups, const BlockTable& table, int layer,
                                    int n_tokens);

// The one-layer view of `layer` of `c` (same memory; n_layers == 1). CHECKs layer.
kernels::KvCacheView LayerSlice(const kernels::KvCacheView& c, int layer);

// The K and V of the token in `slot` of `layer`, dequantized to float:
// k and v [n_kv_heads, head_dim]. CHECKs layer and slot.
void ReadTokenKv(const kernels::KvCacheView& c, int layer, int32_t slot, float* k, float* v);
// Stores one token's K and V (float, [n_kv_heads, head_dim] each) into `slot` of `layer` in
// c's dtype, exactly as kernels::Backend::KvAppend would. CHECKs layer and slot.
void WriteTokenKv(const kernels::KvCacheView& c, int layer, int32_t slot, const float* k,
                  const float* v);

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_KV_COPY_H_
