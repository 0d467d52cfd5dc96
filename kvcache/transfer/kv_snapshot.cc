#include "kvcache/transfer/kv_snapshot.h"

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
  v.n_layers = from.n_layers;
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
  for (int layer = 0; layer < v.n_layers; ++layer) {
    TANDEM_RETURN_IF_ERROR(CopyLayerTokens(from, table, v, snap->table_, layer, n_tokens));
  }
  return snap;
}

absl::Status KvSnapshot::WriteTo(const KvManager& dst, const BlockTable& table) const {
  const kernels::KvCacheView& to = dst.view();
  if (to.n_layers != view_.n_layers || to.n_kv_heads != view_.n_kv_heads ||
      to.head_dim != view_.head_dim) {
    return absl::InvalidArgumentError(StrCat(
        "KV of ", view_.n_layers, " layers x ", view_.n_kv_heads, " heads x ", view_.head_dim,
        " does not fit a cache of ", to.n_layers, " x ", to.n_kv_heads, " x ", to.head_dim));
  }
  if (table.num_tokens() < n_tokens()) {
    return absl::InvalidArgumentError(StrCat("the destination table holds ", table.num_tokens(),
                                             " positions, the snapshot ", n_tokens()));
  }
  for (int layer = 0; layer < view_.n_layers; ++layer) {
    TANDEM_RETURN_IF_ERROR(CopyLayerTokens(view_, table_, to, table, layer, n_tokens()));
  }
  return absl::OkStatus();
}

}  // namespace tandem::kvcache
