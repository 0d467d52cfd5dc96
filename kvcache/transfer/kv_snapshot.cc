#include "kvcache/transfer/kv_snapshot.h"

#include <algorithm>
#include <cstring>
#include <string_view>
#include <vector>

#include "common/check.h"
#include "common/str_cat.h"
#include "kvcache/block_pool.h"
#include "kvcache/kv_copy.h"

namespace tandem::kvcache {

absl::StatusOr<std::unique_ptr<KvSnapshot>> KvSnapshot::Take(const KvManager& src,
                                                             const BlockTable& table,
                                                             int n_tokens) {
  if (n_tokens < 1 || n_tokens > table.num_tokens()) {
    return absl::InvalidArgumentError(
        StrCat("a KV snapshot of ", n_tokens, " tokens from a table holding ", table.num_tokens()));
  }
  const kernels::KvCacheView& from = src.view();
  std::unique_ptr<KvSnapshot> snap(new KvSnapshot());
  kernels::KvCacheView& v = snap->view_;
  v.dtype = from.dtype;
  v.n_layers = src.config().n_layers;
  v.n_blocks = 1;
  v.block_size = n_tokens;
  v.n_kv_heads = from.n_kv_heads;
  v.head_dim = from.head_dim;
  const size_t elems = static_cast<size_t>(v.n_layers) * v.n_kv_heads * n_tokens * v.head_dim;
  snap->k_.resize(elems * kernels::KvElemBytes(v.dtype));
  snap->v_.resize(elems * kernels::KvElemBytes(v.dtype));
  v.k = snap->k_.data();
  v.v = snap->v_.data();
  if (v.dtype == kernels::KvDType::kInt8) {
    const size_t pairs = static_cast<size_t>(v.n_layers) * v.n_kv_heads * n_tokens * 2;
    snap->ks_.resize(pairs);
    snap->vs_.resize(pairs);
    v.k_scale_zero = snap->ks_.data();
    v.v_scale_zero = snap->vs_.data();
  }
  // The one block of its own view.
  BlockPool one(1);
  snap->table_ = BlockTable(n_tokens);
  TANDEM_CHECK_OK(snap->table_.Reserve(one, n_tokens));
  snap->table_.SetNumTokens(n_tokens);
  snap->first_.resize(v.n_layers);
  for (int layer = 0; layer < v.n_layers; ++layer) {
    // A local layer group's table holds only the window of position n_tokens.
    const LayerDestination d = LayerDestinationOf(src.groups(), table, layer, n_tokens);
    snap->first_[layer] = d.first;
    TANDEM_RETURN_IF_ERROR(CopyLayerTokens(LayerSlice(from, d.slot), d.table, LayerSlice(v, layer),
                                           snap->table_, 0, n_tokens, d.first));
  }
  return snap;
}

absl::Status KvSnapshot::WriteTo(const KvManager& dst, const BlockTable& table) const {
  const kernels::KvCacheView& to = dst.view();
  const int to_layers = dst.config().n_layers;
  if (to_layers != view_.n_layers || to.n_kv_heads != view_.n_kv_heads ||
      to.head_dim != view_.head_dim) {
    return absl::InvalidArgumentError(StrCat(
        "KV of ", view_.n_layers, " layers x ", view_.n_kv_heads, " heads x ", view_.head_dim,
        " does not fit a cache of ", to_layers, " x ", to.n_kv_heads, " x ", to.head_dim));
  }
  if (table.num_tokens() < n_tokens()) {
    return absl::InvalidArgumentError(StrCat("the destination table holds ", table.num_tokens(),
                                             " positions, the snapshot ", n_tokens()));
  }
  for (int layer = 0; layer < view_.n_layers; ++layer) {
    const LayerDestination d = LayerDestinationOf(dst.groups(), table, layer, n_tokens());
    if (first_[layer] > dst.groups().FirstRead(layer, n_tokens())) {
      return absl::InvalidArgumentError(StrCat("KV layer ", layer, " holds positions from ",
                                               first_[layer], " on; the destination reads from ",
                                               dst.groups().FirstRead(layer, n_tokens())));
    }
  }
  for (int layer = 0; layer < view_.n_layers; ++layer) {
    const LayerDestination d = LayerDestinationOf(dst.groups(), table, layer, n_tokens());
    TANDEM_RETURN_IF_ERROR(CopyLayerTokens(LayerSlice(view_, layer), table_, LayerSlice(to, d.slot),
                                           d.table, 0, n_tokens(),
                                           std::max(d.first, first_[layer])));
  }
  return absl::OkStatus();
}

namespace {

// Host arrays of one layer of n_tokens positions in one block, and the view over them.
struct OneLayer {
  OneLayer(kernels::KvDType dtype, int n_kv_heads, int n_tokens, int head_dim)
      : table(BlockTable::Adopt(n_tokens, {0}, n_tokens)) {
    view.dtype = dtype;
    view.n_layers = 1;
    view.n_blocks = 1;
    view.block_size = n_tokens;
    view.n_kv_heads = n_kv_heads;
    view.head_dim = head_dim;
    const size_t rows = static_cast<size_t>(n_kv_heads) * n_tokens;
    k.resize(rows * head_dim * kernels::KvElemBytes(dtype));
    v.resize(k.size());
    view.k = k.data();
    view.v = v.data();
    if (dtype == kernels::KvDType::kInt8) {
      ks.resize(rows * 2);
      vs.resize(rows * 2);
      view.k_scale_zero = ks.data();
      view.v_scale_zero = vs.data();
    }
  }
  kernels::KvCacheView view;
  BlockTable table;
  std::vector<uint8_t> k, v;
  std::vector<float> ks, vs;
};

void AppendBytes(const void* p, size_t n, std::string* out) {
  out->append(static_cast<const char*>(p), n);
}

// Appends positions [first, n) of a one-block view of n positions ([n_kv_heads, n, ...] per
// array) in the LayerFrame payload order: K, V, then the int8 K and V pairs, each head's run.
void AppendPositions(const kernels::KvCacheView& c, int first, std::string* out) {
  const int n = c.block_size;
  const size_t row = static_cast<size_t>(c.head_dim) * kernels::KvElemBytes(c.dtype);
  for (const void* base : {static_cast<const void*>(c.k), static_cast<const void*>(c.v)}) {
    for (int h = 0; h < c.n_kv_heads; ++h) {
      AppendBytes(static_cast<const char*>(base) + (static_cast<size_t>(h) * n + first) * row,
                  (n - first) * row, out);
    }
  }
  if (c.dtype != kernels::KvDType::kInt8) return;
  for (const float* base : {c.k_scale_zero, c.v_scale_zero}) {
    for (int h = 0; h < c.n_kv_heads; ++h) {
      AppendBytes(base + (static_cast<size_t>(h) * n + first) * 2, (n - first) * 2 * sizeof(float),
                  out);
    }
  }
}

// The inverse: positions [first, n) of the one-block view `c` from a payload in that order
// (LayerPayloadBytes of n - first positions long, CHECKed). Positions before first are left.
void ScatterPositions(std::string_view payload, int first, const kernels::KvCacheView& c) {
  const int n = c.block_size;
  const size_t row = static_cast<size_t>(c.head_dim) * kernels::KvElemBytes(c.dtype);
  TANDEM_CHECK_EQ(payload.size(), LayerPayloadBytes(c.dtype, c.n_kv_heads, n - first, c.head_dim));
  const char* p = payload.data();
  for (void* base : {c.k, c.v}) {
    for (int h = 0; h < c.n_kv_heads; ++h) {
      std::memcpy(static_cast<char*>(base) + (static_cast<size_t>(h) * n + first) * row, p,
                  (n - first) * row);
      p += (n - first) * row;
    }
  }
  if (c.dtype != kernels::KvDType::kInt8) return;
  // Copied, not cast: the pairs sit at any byte offset of the payload.
  for (float* base : {c.k_scale_zero, c.v_scale_zero}) {
    for (int h = 0; h < c.n_kv_heads; ++h) {
      std::memcpy(base + (static_cast<size_t>(h) * n + first) * 2, p,
                  (n - first) * 2 * sizeof(float));
      p += (n - first) * 2 * sizeof(float);
    }
  }
}

}  // namespace

void KvSnapshot::LayerPayload(int layer, kernels::KvDType dtype, std::string* out) const {
  const kernels::KvCacheView src = LayerSlice(view_, layer);
  const int first = first_[layer];
  out->clear();
  out->reserve(LayerPayloadBytes(dtype, view_.n_kv_heads, n_tokens() - first, view_.head_dim));
  if (dtype == view_.dtype) {
    AppendPositions(src, first, out);
    return;
  }
  OneLayer conv(dtype, view_.n_kv_heads, n_tokens(), view_.head_dim);
  TANDEM_CHECK_OK(CopyLayerTokens(src, table_, conv.view, conv.table, 0, n_tokens(), first));
  AppendPositions(conv.view, first, out);
}

absl::Status EncodeLayerPayload(const KvManager& kv, const BlockTable& table, int layer,
                                int n_tokens, kernels::KvDType dtype, int* first,
                                std::string* out) {
  const kernels::KvCacheView& view = kv.view();
  if (layer < 0 || layer >= kv.config().n_layers || n_tokens < 1 ||
      static_cast<int64_t>(table.blocks().size()) * view.block_size < n_tokens) {
    return absl::InvalidArgumentError(StrCat("KV layer ", layer, " of ", n_tokens, " positions in ",
                                             table.blocks().size(), " blocks"));
  }
  const LayerDestination d = LayerDestinationOf(kv.groups(), table, layer, n_tokens);
  OneLayer conv(dtype, view.n_kv_heads, n_tokens, view.head_dim);
  TANDEM_RETURN_IF_ERROR(CopyLayerTokens(LayerSlice(view, d.slot), d.table, conv.view, conv.table,
                                         0, n_tokens, d.first));
  out->clear();
  out->reserve(LayerPayloadBytes(dtype, view.n_kv_heads, n_tokens - d.first, view.head_dim));
  AppendPositions(conv.view, d.first, out);
  *first = d.first;
  return absl::OkStatus();
}

absl::Status WriteLayerPayload(const LayerFrame& f, const kernels::KvCacheView& dst,
                               const KvGroups& groups, const BlockTable& table) {
  const int n_layers =
      groups.n_groups() > 0 ? static_cast<int>(groups.group_of.size()) : dst.n_layers;
  if (f.layer < 0 || f.layer >= n_layers || f.n_kv_heads != dst.n_kv_heads ||
      f.head_dim != dst.head_dim) {
    return absl::InvalidArgumentError(StrCat(
        "KV layer ", f.layer, " of ", f.n_kv_heads, " heads x ", f.head_dim,
        " does not fit a cache of ", n_layers, " layers x ", dst.n_kv_heads, " x ", dst.head_dim));
  }
  if (table.num_tokens() < f.n_tokens) {
    return absl::InvalidArgumentError(StrCat("the destination table holds ", table.num_tokens(),
                                             " positions, the layer ", f.n_tokens));
  }
  const int reads = groups.n_groups() > 0 ? groups.FirstRead(f.layer, f.n_tokens) : 0;
  if (f.first > reads) {
    return absl::InvalidArgumentError(StrCat("KV layer ", f.layer, " starts at position ", f.first,
                                             "; this cache reads it from ", reads));
  }
  // Copied out of the frame: its scale pairs sit at any byte offset, and kernels read
  // aligned floats.
  OneLayer src(f.dtype, f.n_kv_heads, f.n_tokens, f.head_dim);
  ScatterPositions(f.payload, f.first, src.view);
  const LayerDestination d = LayerDestinationOf(groups, table, f.layer, f.n_tokens);
  return CopyLayerTokens(src.view, src.table, LayerSlice(dst, d.slot), d.table, 0, f.n_tokens,
                         std::max(f.first, d.first));
}

}  // namespace tandem::kvcache
