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

void AttendScalar(const AttentionParams& p, int64_t t, int kv_head) {
  const KvCacheView& c = p.cache;
  const int d = p.head_dim;
  const int group = p.n_heads / p.n_kv_heads;
  const int pos = p.positions[t];
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
    for (int start = AttentionWindowStart(p, pos); start <= pos; start += n) {
      // A tile stays inside one block, whose rows are contiguous; it ends early at a block
      // boundary.
      const int block = table[start / c.block_size];
      const int offset = start % c.block_size;
      n = std::min({kTile, pos + 1 - start, c.block_size - offset});
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

namespace internal {

void AttentionRangeScalar(const AttentionParams& p, int64_t begin, int64_t end) {
  for (int64_t item = begin; item < end; ++item) {
    AttendScalar(p, item / p.n_kv_heads, static_cast<int>(item % p.n_kv_heads));
  }
}

}  // namespace internal
}  // namespace tandem::kernels::cpu
