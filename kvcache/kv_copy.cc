#include "kvcache/kv_copy.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "kernels/ref/ops_ref.h"

namespace tandem::kvcache {
namespace {

using kernels::KvCacheView;
using kernels::KvDType;

// Index of the row (head_dim values of one head of one position) in the layout
// [n_layers, n_blocks, n_kv_heads, block_size].
int64_t RowIndex(const KvCacheView& c, int layer, int block, int head, int offset) {
  return ((static_cast<int64_t>(layer) * c.n_blocks + block) * c.n_kv_heads + head) * c.block_size +
         offset;
}

void CheckSlot(const KvCacheView& c, int layer, int32_t slot) {
  TANDEM_CHECK(layer >= 0 && layer < c.n_layers);
  TANDEM_CHECK(slot >= 0 && slot < static_cast<int64_t>(c.n_blocks) * c.block_size);
}

absl::Status CheckSide(const char* side, const KvCacheView& c, const BlockTable& table, int layer,
                       int n_tokens, int first) {
  if (layer < 0 || layer >= c.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV copy: layer ", layer, " outside the ", side, "'s ", c.n_layers));
  }
  if (table.block_size() != c.block_size) {
    return absl::InvalidArgumentError(absl::StrCat("KV copy: ", side, " table has blocks of ",
                                                   table.block_size(), ", its cache ",
                                                   c.block_size));
  }
  const int64_t held = static_cast<int64_t>(table.blocks().size()) * c.block_size;
  if (held < n_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("KV copy: ", side, " table holds ", held,
                                                   " positions, ", n_tokens, " needed"));
  }
  const int used = (n_tokens + c.block_size - 1) / c.block_size;
  for (int i = first / c.block_size; i < used; ++i) {
    const int32_t b = table.blocks()[i];
    if (b < 0 || b >= c.n_blocks) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV copy: ", side, " block ", b, " outside its cache's ", c.n_blocks));
    }
  }
  if (c.k == nullptr || c.v == nullptr ||
      (c.dtype == KvDType::kInt8 && (c.k_scale_zero == nullptr || c.v_scale_zero == nullptr))) {
    return absl::InvalidArgumentError(absl::StrCat("KV copy: ", side, " cache has no memory"));
  }
  return absl::OkStatus();
}

// Copies `n_rows` consecutive rows of K and V (and their int8 scale pairs) as bytes; both
// views have the same dtype.
void CopyRows(const KvCacheView& src, int64_t src_row, const KvCacheView& dst, int64_t dst_row,
              int64_t n_rows) {
  const size_t row_bytes = static_cast<size_t>(src.head_dim) * kernels::KvElemBytes(src.dtype);
  const size_t bytes = n_rows * row_bytes;
  std::memcpy(static_cast<char*>(dst.k) + dst_row * row_bytes,
              static_cast<const char*>(src.k) + src_row * row_bytes, bytes);
  std::memcpy(static_cast<char*>(dst.v) + dst_row * row_bytes,
              static_cast<const char*>(src.v) + src_row * row_bytes, bytes);
  if (src.dtype == KvDType::kInt8) {
    const size_t sz_bytes = n_rows * 2 * sizeof(float);
    std::memcpy(dst.k_scale_zero + dst_row * 2, src.k_scale_zero + src_row * 2, sz_bytes);
    std::memcpy(dst.v_scale_zero + dst_row * 2, src.v_scale_zero + src_row * 2, sz_bytes);
  }
}

// Same dtype: walks positions in runs that stay inside one block on both sides. With equal
// block sizes every run is a whole block (but the last), and a whole block of a layer is one
// contiguous range over its heads, so it moves in one memcpy.
void CopySameDType(const KvCacheView& src, const BlockTable& src_table, const KvCacheView& dst,
                   const BlockTable& dst_table, int layer, int n_tokens, int first) {
  const int sbs = src.block_size;
  const int dbs = dst.block_size;
  for (int p = first; p < n_tokens;) {
    const int so = p % sbs;
    const int d_off = p % dbs;
    const int run = std::min({sbs - so, dbs - d_off, n_tokens - p});
    const int sb = src_table.blocks()[p / sbs];
    const int db = dst_table.blocks()[p / dbs];
    if (run == sbs && run == dbs) {
      CopyRows(src, RowIndex(src, layer, sb, 0, 0), dst, RowIndex(dst, layer, db, 0, 0),
               static_cast<int64_t>(src.n_kv_heads) * run);
    } else {
      for (int h = 0; h < src.n_kv_heads; ++h) {
        CopyRows(src, RowIndex(src, layer, sb, h, so), dst, RowIndex(dst, layer, db, h, d_off),
                 run);
      }
    }
    p += run;
  }
}

}  // namespace

LayerDestination LayerDestinationOf(const KvGroups& groups, const BlockTable& table, int layer,
                                    int n_tokens) {
  LayerDestination d;
  if (groups.n_groups() == 0) {
    d.slot = layer;
    d.table = BlockTable::Adopt(table.block_size(), table.blocks(), table.num_tokens());
    return d;
  }
  TANDEM_CHECK(layer >= 0 && layer < static_cast<int>(groups.group_of.size()));
  const int g = groups.group_of[layer];
  d.slot = groups.slot_of[layer];
  d.first = groups.FirstKept(layer, n_tokens);
  TANDEM_CHECK_LT(g, table.num_groups());
  d.table = BlockTable::Adopt(table.block_size(), table.group(g), table.num_tokens());
  return d;
}

KvCacheView LayerSlice(const KvCacheView& c, int layer) {
  TANDEM_CHECK(layer >= 0 && layer < c.n_layers);
  const int64_t rows = RowIndex(c, layer, 0, 0, 0);  // rows of the layers before it
  const int64_t elems = rows * c.head_dim;
  const size_t elem_bytes = kernels::KvElemBytes(c.dtype);
  KvCacheView s = c;
  s.n_layers = 1;
  if (c.k != nullptr) s.k = static_cast<uint8_t*>(c.k) + elems * elem_bytes;
  if (c.v != nullptr) s.v = static_cast<uint8_t*>(c.v) + elems * elem_bytes;
  if (c.k_scale_zero != nullptr) s.k_scale_zero = c.k_scale_zero + rows * 2;
  if (c.v_scale_zero != nullptr) s.v_scale_zero = c.v_scale_zero + rows * 2;
  return s;
}

void ReadTokenKv(const KvCacheView& c, int layer, int32_t slot, float* k, float* v) {
  CheckSlot(c, layer, slot);
  const int block = slot / c.block_size;
  const int offset = slot % c.block_size;
  for (int h = 0; h < c.n_kv_heads; ++h) {
    const int64_t at = static_cast<int64_t>(h) * c.head_dim;
    kernels::ref::KvReadRowRef(c, /*is_v=*/false, layer, block, h, offset, k + at);
    kernels::ref::KvReadRowRef(c, /*is_v=*/true, layer, block, h, offset, v + at);
  }
}

void WriteTokenKv(const KvCacheView& c, int layer, int32_t slot, const float* k, const float* v) {
  CheckSlot(c, layer, slot);
  // The reference defines the bytes every KvAppend variant stores (they are tested bit for
  // bit against it), so reusing it keeps one quantization formula in the code base.
  kernels::KvAppendParams p;
  p.k = k;
  p.v = v;
  p.slots = &slot;
  p.n_tokens = 1;
  p.layer = layer;
  p.cache = c;
  kernels::ref::KvAppendRef(p);
}

absl::Status CopyLayerTokens(const KvCacheView& src, const BlockTable& src_table,
                             const KvCacheView& dst, const BlockTable& dst_table, int layer,
                             int n_tokens, int first) {
  if (src.n_kv_heads != dst.n_kv_heads || src.head_dim != dst.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("KV copy: source has ", src.n_kv_heads,
                                                   " KV heads of ", src.head_dim, ", destination ",
                                                   dst.n_kv_heads, " of ", dst.head_dim));
  }
  if (n_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV copy: n_tokens ", n_tokens, " < 0"));
  }
  if (first < 0 || first > n_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV copy: first position ", first, " outside [0, ", n_tokens, "]"));
  }
  TANDEM_RETURN_IF_ERROR(CheckSide("source", src, src_table, layer, n_tokens, first));
  TANDEM_RETURN_IF_ERROR(CheckSide("destination", dst, dst_table, layer, n_tokens, first));
  if (src.dtype == dst.dtype) {
    CopySameDType(src, src_table, dst, dst_table, layer, n_tokens, first);
    return absl::OkStatus();
  }
  const size_t width = static_cast<size_t>(src.n_kv_heads) * src.head_dim;
  std::vector<float> k(width);
  std::vector<float> v(width);
  for (int p = first; p < n_tokens; ++p) {
    ReadTokenKv(src, layer, src_table.SlotFor(p), k.data(), v.data());
    WriteTokenKv(dst, layer, dst_table.SlotFor(p), k.data(), v.data());
  }
  return absl::OkStatus();
}

}  // namespace tandem::kvcache
