// Paged causal attention: the dispatcher (argument and block-table checks) and the scalar
// variant. All variants share one algorithm: for each (token, kv_head) item, the query
// heads of that GQA group walk the token's context block by block in tiles of positions;
// each tile's K rows give scores for every head of the group, an online softmax rescales
// the running sums when the maximum grows, and each V row is added into every head's
// accumulator. K and V rows are each read (and dequantized) once per group tile. A sliding
// window only moves where the walk starts (AttentionWindowStart): positions and blocks before
// it are never touched, so a token costs O(window), and window == 0 runs the same loop as
// before windows existed.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/quant.h"

namespace tandem::kernels::cpu {
namespace {

constexpr int kTile = 16;      // positions per score tile
constexpr int kGroupTile = 8;  // query heads processed together over one K/V pass

// Checks the parameters and the block-table entries every item in [begin, end) will read
// (with a window, only the window's blocks), so a corrupt batch fails loudly instead of
// reading outside the cache.
void CheckAttention(const AttentionParams& p, int64_t begin, int64_t end) {
  const KvCacheView& c = p.cache;
  TANDEM_CHECK_LE(0, begin);
  TANDEM_CHECK_LE(begin, end);
  TANDEM_CHECK_GT(p.n_kv_heads, 0);
  TANDEM_CHECK_EQ(p.n_heads % p.n_kv_heads, 0);
  TANDEM_CHECK_LE(end, AttentionItems(p));
  TANDEM_CHECK_GT(p.head_dim, 0);
  TANDEM_CHECK_LE(p.head_dim, kMaxHeadDim);
  TANDEM_CHECK_EQ(c.head_dim, p.head_dim);
  TANDEM_CHECK_EQ(c.n_kv_heads, p.n_kv_heads);
  TANDEM_CHECK_GE(p.layer, 0);
  TANDEM_CHECK_LT(p.layer, c.n_layers);
  TANDEM_CHECK_GT(c.block_size, 0);
  TANDEM_CHECK_GE(p.window, 0);
  if (c.dtype == KvDType::kInt8) {
    TANDEM_CHECK(c.k_scale_zero != nullptr && c.v_scale_zero != nullptr);
  }
  if (begin == end) return;
  const int64_t first = begin / p.n_kv_heads;
  const int64_t last = (end - 1) / p.n_kv_heads;
  for (int64_t t = first; t <= last; ++t) {
    const int seq = p.token_seq[t];
    const int pos = p.positions[t];
    TANDEM_CHECK_GE(seq, 0);
    TANDEM_CHECK_LT(seq, p.n_seqs);
    TANDEM_CHECK_GE(pos, 0);
    const int n_blocks = pos / c.block_size + 1;
    TANDEM_CHECK_LE(n_blocks, p.max_blocks_per_seq);
    const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
    for (int b = AttentionWindowStart(p, pos) / c.block_size; b < n_blocks; ++b) {
      TANDEM_CHECK_GE(table[b], 0);
      TANDEM_CHECK_LT(table[b], c.n_blocks);
    }
  }
}

// Dequantized row `row` (in rows of head_dim) of a K or V array.
void LoadRow(const KvCacheView& c, const void* base, const float* scale_zero, int64_t row,
             float* out) {
  const int d = c.head_dim;
  switch (c.dtype) {
    case KvDType::kF32:
      std::memcpy(out, static_cast<const float*>(base) + row * d, sizeof(float) * d);
      return;
    case KvDType::kF16: {
      const uint16_t* h = static_cast<const uint16_t*>(base) + row * d;
      for (int i = 0; i < d; ++i) out[i] = HalfToFloat(h[i]);
      return;
    }
    case KvDType::kInt8: {
      const uint8_t* q = static_cast<const uint8_t*>(base) + row * d;
      const float scale = scale_zero[row * 2];
      const float zero = scale_zero[row * 2 + 1];
      for (int i = 0; i < d; ++i) out[i] = static_cast<float>(q[i]) * scale + zero;
      return;
    }
  }
}

// Positions [lo, hi) of the token's window; `split` null writes the normalized result to
// p.out, otherwise the range's softmax state to unit `unit` of *split.
void AttendScalar(const AttentionParams& p, int64_t t, int kv_head, int lo, int hi,
                  const AttentionSplits* split, int64_t unit) {
  const KvCacheView& c = p.cache;
  const int d = p.head_dim;
  const int group = p.n_heads / p.n_kv_heads;
  const int32_t* table =
      p.block_tables + static_cast<int64_t>(p.token_seq[t]) * p.max_blocks_per_seq;
  float q[kGroupTile][kMaxHeadDim];
  float acc[kGroupTile][kMaxHeadDim];
  float row[kMaxHeadDim];
  float s[kGroupTile][kTile];
  for (int g0 = 0; g0 < group; g0 += kGroupTile) {
    const int gn = std::min(kGroupTile, group - g0);
    float m[kGroupTile];
    float l[kGroupTile];
    for (int g = 0; g < gn; ++g) {
      const float* qh = p.q + (t * p.n_heads + kv_head * group + g0 + g) * d;
      for (int i = 0; i < d; ++i) q[g][i] = qh[i] * p.scale;
      std::fill(acc[g], acc[g] + d, 0.f);
      m[g] = -std::numeric_limits<float>::infinity();
      l[g] = 0;
    }
    int n = 0;
    for (int start = lo; start < hi; start += n) {
      // A tile stays inside one block, whose rows are contiguous; it ends early at a block
      // boundary.
      const int block = table[start / c.block_size];
      const int offset = start % c.block_size;
      n = std::min({kTile, hi - start, c.block_size - offset});
      const int64_t row0 =
          ((static_cast<int64_t>(p.layer) * c.n_blocks + block) * c.n_kv_heads + kv_head) *
              c.block_size +
          offset;
      for (int j = 0; j < n; ++j) {
        LoadRow(c, c.k, c.k_scale_zero, row0 + j, row);
        for (int g = 0; g < gn; ++g) {
          float dot = 0;
          for (int i = 0; i < d; ++i) dot += q[g][i] * row[i];
          s[g][j] = dot;
        }
      }
      for (int g = 0; g < gn; ++g) {
        float tile_max = s[g][0];
        for (int j = 1; j < n; ++j) tile_max = std::max(tile_max, s[g][j]);
        const float m_new = std::max(m[g], tile_max);
        const float corr = std::exp(m[g] - m_new);
        float sum = 0;
        for (int j = 0; j < n; ++j) {
          s[g][j] = std::exp(s[g][j] - m_new);
          sum += s[g][j];
        }
        l[g] = l[g] * corr + sum;
        if (corr != 1.f) {
          for (int i = 0; i < d; ++i) acc[g][i] *= corr;
        }
        m[g] = m_new;
      }
      for (int j = 0; j < n; ++j) {
        LoadRow(c, c.v, c.v_scale_zero, row0 + j, row);
        for (int g = 0; g < gn; ++g) {
          for (int i = 0; i < d; ++i) acc[g][i] += s[g][j] * row[i];
        }
      }
    }
    for (int g = 0; g < gn; ++g) {
      if (split != nullptr) {
        const int64_t u = unit * group + g0 + g;
        std::copy(acc[g], acc[g] + d, split->acc + u * d);
        split->max[u] = m[g];
        split->sum[u] = l[g];
        continue;
      }
      float* out = p.out + (t * p.n_heads + kv_head * group + g0 + g) * d;
      const float inv = 1.f / l[g];
      for (int i = 0; i < d; ++i) out[i] = acc[g][i] * inv;
    }
  }
}

}  // namespace

void AttentionRange(const AttentionParams& p, int64_t begin, int64_t end) {
  CheckAttention(p, begin, end);
  if (p.head_dim % 16 == 0) {
    switch (GetOpsIsa()) {
      case OpsIsa::kAvx512:
        return internal::AttentionRangeAvx512(p, begin, end);
      case OpsIsa::kAvx2:
        return internal::AttentionRangeAvx2(p, begin, end);
      case OpsIsa::kScalar:
        break;
    }
  }
  internal::AttentionRangeScalar(p, begin, end);
}

int AttentionQueryTiles(const AttentionParams& p, int32_t* starts) {
  int n = 0;
  starts[0] = 0;
  for (int t = 1; t <= p.n_tokens; ++t) {
    if (t == p.n_tokens || p.token_seq[t] != p.token_seq[t - 1] ||
        p.positions[t] != p.positions[t - 1] + 1 || t - starts[n] == kQueryTile) {
      starts[++n] = t;
    }
  }
  return n;
}

bool AttentionTilesPay(const AttentionParams& p) {
  return GetOpsIsa() == OpsIsa::kAvx512 && p.head_dim % 16 == 0;
}

void AttentionTileRange(const AttentionParams& p, const AttentionTiles& tiles, int64_t begin,
                        int64_t end) {
  TANDEM_CHECK_LE(0, begin);
  TANDEM_CHECK_LE(begin, end);
  TANDEM_CHECK_LE(end, static_cast<int64_t>(tiles.n_tiles) * p.n_kv_heads);
  for (int64_t unit = begin; unit < end; ++unit) {
    const int tile = AttentionTileOfUnit(tiles, unit / p.n_kv_heads);
    const int kv_head = static_cast<int>(unit % p.n_kv_heads);
    const int t0 = tiles.starts[tile], t1 = tiles.starts[tile + 1];
    TANDEM_CHECK_LT(t0, t1);
    TANDEM_CHECK_LE(t1 - t0, kQueryTile);
    CheckAttention(p, static_cast<int64_t>(t0) * p.n_kv_heads,
                   static_cast<int64_t>(t1) * p.n_kv_heads);
    for (int t = t0 + 1; t < t1; ++t) {
      TANDEM_CHECK_EQ(p.token_seq[t], p.token_seq[t0]);
      TANDEM_CHECK_EQ(p.positions[t], p.positions[t0] + (t - t0));
    }
    if (t1 - t0 > 1 && AttentionTilesPay(p)) {
      internal::AttentionTileRangeAvx512(p, tiles, unit, unit + 1);
      continue;
    }
    // One token, or no tiled kernel for this ISA: the tile's items one by one.
    for (int t = t0; t < t1; ++t) {
      const int64_t item = static_cast<int64_t>(t) * p.n_kv_heads + kv_head;
      AttentionRange(p, item, item + 1);
    }
  }
}

int AttentionSplitCount(const AttentionParams& p, int threads) {
  const int64_t items = AttentionItems(p);
  if (threads <= 1 || items == 0 || items >= 4 * static_cast<int64_t>(threads)) return 1;
  int longest = 0;
  for (int t = 0; t < p.n_tokens; ++t) {
    longest = std::max(longest, p.positions[t] + 1 - AttentionWindowStart(p, p.positions[t]));
  }
  // items * splits >= 4 * threads and a multiple of threads, so that the pool's contiguous
  // static split hands every thread the same number of equal units.
  const int splits = threads * static_cast<int>((4 + items - 1) / items);
  const int most = longest / kMinSplitPositions;
  return most >= 2 ? std::min(splits, most) : 1;
}

int64_t AttentionSplitScratchFloats(int threads, int max_tokens, int n_heads, int head_dim,
                                    int max_context) {
  // With k KV heads a step of n tokens has n * k items, and the split count falls as items
  // grow: one KV head is the worst case. Splits need fewer than 4 * threads items.
  const int most = max_context / kMinSplitPositions;
  if (threads <= 1 || most < 2) return 0;
  int64_t heads = 0;
  for (int n = 1; n < 4 * threads && n <= max_tokens; ++n) {
    const int splits = std::min(threads * ((4 + n - 1) / n), most);
    heads = std::max(heads, static_cast<int64_t>(n) * n_heads * splits);
  }
  return heads * (head_dim + 2);
}

void AttentionSplitBounds(const AttentionParams& p, int pos, int n_splits, int split, int* lo,
                          int* hi) {
  const int first = AttentionWindowStart(p, pos);
  const int64_t n = pos + 1 - first;
  // Boundary k of n_splits + 1: first, then first + n * k / n_splits rounded down to a
  // multiple of 16 (never below first), then pos + 1.
  auto boundary = [&](int k) {
    if (k <= 0) return first;
    if (k >= n_splits) return pos + 1;
    const int b = static_cast<int>(first + n * k / n_splits) & ~15;
    return std::max(b, first);
  };
  *lo = boundary(split);
  *hi = boundary(split + 1);
}

AttentionWalk AttentionUnitWalk(const AttentionParams& p, const AttentionSplits& s, int64_t unit) {
  AttentionWalk w = AttentionItemWalk(p, unit / s.n_splits);
  AttentionSplitBounds(p, w.hi - 1, s.n_splits, static_cast<int>(unit % s.n_splits), &w.lo, &w.hi);
  return w;
}

void AttentionSplitRange(const AttentionParams& p, const AttentionSplits& s, int64_t begin,
                         int64_t end) {
  TANDEM_CHECK_GE(s.n_splits, 1);
  TANDEM_CHECK(s.acc != nullptr && s.max != nullptr && s.sum != nullptr);
  TANDEM_CHECK_LE(0, begin);
  TANDEM_CHECK_LE(begin, end);
  if (begin == end) return;
  CheckAttention(p, begin / s.n_splits, (end - 1) / s.n_splits + 1);
  if (p.head_dim % 16 == 0) {
    switch (GetOpsIsa()) {
      case OpsIsa::kAvx512:
        return internal::AttentionSplitRangeAvx512(p, s, begin, end);
      case OpsIsa::kAvx2:
        return internal::AttentionSplitRangeAvx2(p, s, begin, end);
      case OpsIsa::kScalar:
        break;
    }
  }
  internal::AttentionSplitRangeScalar(p, s, begin, end);
}

void AttentionMergeRange(const AttentionParams& p, const AttentionSplits& s, int64_t begin,
                         int64_t end) {
  TANDEM_CHECK_LE(0, begin);
  TANDEM_CHECK_LE(begin, end);
  TANDEM_CHECK_LE(end, AttentionItems(p));
  const int d = p.head_dim;
  const int group = p.n_heads / p.n_kv_heads;
  const int n = s.n_splits;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t t = item / p.n_kv_heads;
    const int kv_head = static_cast<int>(item % p.n_kv_heads);
    for (int g = 0; g < group; ++g) {
      // Unit (item, k)'s state for head g is at index (item * n + k) * group + g.
      auto at = [&](int k) { return (item * n + k) * group + g; };
      float m = -std::numeric_limits<float>::infinity();
      for (int k = 0; k < n; ++k) m = std::max(m, s.max[at(k)]);
      float* out = p.out + (t * p.n_heads + kv_head * group + g) * d;
      std::fill(out, out + d, 0.f);
      float l = 0;
      for (int k = 0; k < n; ++k) {
        if (s.sum[at(k)] == 0) continue;  // an empty range (its max is -inf)
        const float w = std::exp(s.max[at(k)] - m);
        l += w * s.sum[at(k)];
        const float* acc = s.acc + at(k) * d;
        for (int i = 0; i < d; ++i) out[i] += w * acc[i];
      }
      const float inv = 1.f / l;
      for (int i = 0; i < d; ++i) out[i] *= inv;
    }
  }
}

namespace internal {

void AttentionRangeScalar(const AttentionParams& p, int64_t begin, int64_t end) {
  for (int64_t item = begin; item < end; ++item) {
    const AttentionWalk w = AttentionItemWalk(p, item);
    AttendScalar(p, w.t, w.kv_head, w.lo, w.hi, nullptr, 0);
  }
}

void AttentionSplitRangeScalar(const AttentionParams& p, const AttentionSplits& s, int64_t begin,
                               int64_t end) {
  for (int64_t unit = begin; unit < end; ++unit) {
    const AttentionWalk w = AttentionUnitWalk(p, s, unit);
    AttendScalar(p, w.t, w.kv_head, w.lo, w.hi, &s, unit);
  }
}

}  // namespace internal
}  // namespace tandem::kernels::cpu
