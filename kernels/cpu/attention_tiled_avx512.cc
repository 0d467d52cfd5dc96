// AVX-512 query-tiled attention for prefill (see AttentionTileRange in ops.h). A tile is up
// to kQueryTile consecutive tokens of one sequence; with their GQA group's heads they are up
// to kMaxRows query rows that share every K/V row the tile reads, so each row is loaded and
// dequantized once per tile rather than once per token, and the scores come as a small
// matrix product:
//   1. per 16-position K tile, K staged transposed ([head_dim][16] floats), so that one FMA
//      with a broadcast query element gives 16 scores of a row (no horizontal sums), 8 rows
//      at a time;
//   2. per chunk of kChunk positions and row, the causal (and window) mask, the chunk's max,
//      the rescale of the running sums and the exponentials;
//   3. the chunk's V rows converted once, and each added into the output rows, whose
//      accumulators stay in registers for a block of rows.
// Only intrinsics and plain C here (see ops_avx512.cc for why).
#include <immintrin.h>

// GCC 12's AVX-512 intrinsic headers self-initialize their "undefined" vectors (__Y = __Y),
// which -Wuninitialized reports at every inlined call; the warning is spurious.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/cpu/ops.h"

namespace tandem::kernels::cpu::internal {
namespace {

constexpr int kTile = 16;      // positions per K tile: one zmm of scores per row
constexpr int kChunk = 64;     // positions per softmax update (a multiple of kTile)
constexpr int kMaxRows = 64;   // query rows (tokens x heads) one pass holds
constexpr int kScoreRows = 8;  // rows whose scores one pass over a K tile accumulates

inline int Min(int a, int b) { return a < b ? a : b; }
inline int Max(int a, int b) { return a > b ? a : b; }

// Row `row` of a K or V array as head_dim floats in `out`.
template <KvDType kDt>
inline void StageRow(const void* base, const float* scale_zero, int64_t row, int d, float* out) {
  if constexpr (kDt == KvDType::kF32) {
    const float* f = static_cast<const float*>(base) + row * d;
    for (int i = 0; i < d; i += 16) _mm512_store_ps(out + i, _mm512_loadu_ps(f + i));
  } else if constexpr (kDt == KvDType::kF16) {
    const uint16_t* h = static_cast<const uint16_t*>(base) + row * d;
    for (int i = 0; i < d; i += 16) {
      _mm512_store_ps(out + i,
                      _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i))));
    }
  } else {
    const uint8_t* q = static_cast<const uint8_t*>(base) + row * d;
    const __m512 scale = _mm512_set1_ps(scale_zero[row * 2]);
    const __m512 zero = _mm512_set1_ps(scale_zero[row * 2 + 1]);
    for (int i = 0; i < d; i += 16) {
      const __m512i w =
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i)));
      _mm512_store_ps(out + i, _mm512_fmadd_ps(_mm512_cvtepi32_ps(w), scale, zero));
    }
  }
}

// Transposes the 16 x 16 block a[j][i] (rows 64 bytes apart by `stride` floats) into
// out[i][j] (rows 16 floats apart).
inline void Transpose16(const float* a, int stride, float* out) {
  __m512 r[16], t[16];
  for (int j = 0; j < 16; ++j) r[j] = _mm512_load_ps(a + j * stride);
  // Pairs of rows interleaved by 32 bits, then by 64 bits, then 128-bit lanes twice.
  for (int j = 0; j < 16; j += 2) {
    t[j] = _mm512_unpacklo_ps(r[j], r[j + 1]);
    t[j + 1] = _mm512_unpackhi_ps(r[j], r[j + 1]);
  }
  for (int j = 0; j < 16; j += 4) {
    r[j] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[j]), _mm512_castps_pd(t[j + 2])));
    r[j + 1] =
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[j]), _mm512_castps_pd(t[j + 2])));
    r[j + 2] = _mm512_castpd_ps(
        _mm512_unpacklo_pd(_mm512_castps_pd(t[j + 1]), _mm512_castps_pd(t[j + 3])));
    r[j + 3] = _mm512_castpd_ps(
        _mm512_unpackhi_pd(_mm512_castps_pd(t[j + 1]), _mm512_castps_pd(t[j + 3])));
  }
  // r[4q + c] now holds, in 128-bit lane L, elements c of rows 4q..4q+3 at columns 4L + c.
  for (int q = 0; q < 4; ++q) {
    for (int c = 0; c < 4; ++c) t[4 * q + c] = r[4 * q + c];
  }
  for (int c = 0; c < 4; ++c) {
    // Lanes of (t[c], t[4 + c], t[8 + c], t[12 + c]) hold column blocks 0..3 of row blocks
    // 0..3; output row 4L + c is lane L of each, in row-block order.
    const __m512 a01 = _mm512_shuffle_f32x4(t[c], t[4 + c], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 a23 = _mm512_shuffle_f32x4(t[8 + c], t[12 + c], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 b01 = _mm512_shuffle_f32x4(t[c], t[4 + c], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512 b23 = _mm512_shuffle_f32x4(t[8 + c], t[12 + c], _MM_SHUFFLE(3, 2, 3, 2));
    _mm512_store_ps(out + (0 + c) * 16, _mm512_shuffle_f32x4(a01, a23, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_store_ps(out + (4 + c) * 16, _mm512_shuffle_f32x4(a01, a23, _MM_SHUFFLE(3, 1, 3, 1)));
    _mm512_store_ps(out + (8 + c) * 16, _mm512_shuffle_f32x4(b01, b23, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_store_ps(out + (12 + c) * 16, _mm512_shuffle_f32x4(b01, b23, _MM_SHUFFLE(3, 1, 3, 1)));
  }
}

// The query rows of tokens [t0, t0 + nq) (one sequence, consecutive positions) and heads
// [h0, h0 + hn) of kv_head's group: row r = token (r / hn), head h0 + (r % hn).
template <KvDType kDt, int kNv>
void AttendTile(const AttentionParams& p, int t0, int nq, int kv_head, int h0, int hn) {
  constexpr int kMaxNv = kNv > 0 ? kNv : kMaxHeadDim / 16;
  // Rows whose output accumulators one V pass keeps in registers (16 zmm of them).
  constexpr int kOutRows = kMaxNv >= 16 ? 1 : 16 / kMaxNv;
  const KvCacheView& c = p.cache;
  const int d = kNv > 0 ? 16 * kNv : p.head_dim;
  const int nv = d / 16;
  const int group = p.n_heads / p.n_kv_heads;
  const int rows = nq * hn;
  const int pos0 = p.positions[t0];
  const int32_t* table =
      p.block_tables + static_cast<int64_t>(p.token_seq[t0]) * p.max_blocks_per_seq;
  const int64_t head_rows = static_cast<int64_t>(c.n_kv_heads) * c.block_size;
  const int64_t layer_rows = static_cast<int64_t>(p.layer) * c.n_blocks * head_rows;
  auto cache_row = [&](int pos) {
    return layer_rows + table[pos / c.block_size] * head_rows +
           static_cast<int64_t>(kv_head) * c.block_size + pos % c.block_size;
  };

  alignas(64) float q[kMaxRows][kMaxHeadDim];
  alignas(64) float acc[kMaxRows][kMaxHeadDim];
  alignas(64) float s[kMaxRows][kChunk];
  alignas(64) float k_rows[kTile][kMaxHeadDim];
  alignas(64) float kt[kMaxHeadDim][kTile];
  alignas(64) float v_rows[kChunk][kMaxHeadDim];
  float m[kMaxRows], l[kMaxRows], corr[kMaxRows];
  int row_lo[kMaxRows], row_hi[kMaxRows];  // the row's positions: [row_lo, row_hi)
  const __m512 vscale = _mm512_set1_ps(p.scale);
  for (int r = 0; r < rows; ++r) {
    const int t = t0 + r / hn;
    const float* qh =
        p.q + (static_cast<int64_t>(t) * p.n_heads + kv_head * group + h0 + r % hn) * d;
    for (int i = 0; i < nv; ++i) {
      _mm512_store_ps(q[r] + 16 * i, _mm512_mul_ps(_mm512_loadu_ps(qh + 16 * i), vscale));
      _mm512_store_ps(acc[r] + 16 * i, _mm512_setzero_ps());
    }
    m[r] = -__builtin_inff();
    l[r] = 0;
    row_hi[r] = pos0 + r / hn + 1;
    row_lo[r] = AttentionWindowStart(p, row_hi[r] - 1);
  }
  const int lo = row_lo[0];
  const int hi = row_hi[rows - 1];
  const __m512 neg_inf = _mm512_set1_ps(-__builtin_inff());
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int c0 = lo, c1 = 0; c0 < hi; c0 = c1) {
    c1 = Min(hi, (c0 & ~(kTile - 1)) + kChunk);
    const int cn = c1 - c0;
    // 1. Scores, one K tile at a time (a tile never crosses a block).
    int n = 0;
    for (int start = c0; start < c1; start += n) {
      n = Min(Min(c1 - start, kTile), c.block_size - start % c.block_size);
      const int64_t row0 = cache_row(start);
      for (int j = 0; j < n; ++j) StageRow<kDt>(c.k, c.k_scale_zero, row0 + j, d, k_rows[j]);
      for (int j = n; j < kTile; ++j) {
        for (int i = 0; i < nv; ++i) _mm512_store_ps(k_rows[j] + 16 * i, _mm512_setzero_ps());
      }
      for (int b = 0; b < nv; ++b) Transpose16(k_rows[0] + 16 * b, kMaxHeadDim, kt[16 * b]);
      const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1u);
      for (int r0 = 0; r0 < rows; r0 += kScoreRows) {
        const int rn = Min(rows - r0, kScoreRows);
        // Two chains per row (even and odd elements), added at the end: half the rounding
        // a single 64-term chain would accumulate.
        __m512 a[kScoreRows], b[kScoreRows];
#pragma GCC unroll 8
        for (int r = 0; r < kScoreRows; ++r) a[r] = b[r] = _mm512_setzero_ps();
        if (rn == kScoreRows) {
          for (int i = 0; i < d; i += 2) {
            const __m512 k0 = _mm512_load_ps(kt[i]);
            const __m512 k1 = _mm512_load_ps(kt[i + 1]);
#pragma GCC unroll 8
            for (int r = 0; r < kScoreRows; ++r) {
              a[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r0 + r][i]), k0, a[r]);
              b[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r0 + r][i + 1]), k1, b[r]);
            }
          }
        } else {
          for (int i = 0; i < d; i += 2) {
            const __m512 k0 = _mm512_load_ps(kt[i]);
            const __m512 k1 = _mm512_load_ps(kt[i + 1]);
            for (int r = 0; r < rn; ++r) {
              a[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r0 + r][i]), k0, a[r]);
              b[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r0 + r][i + 1]), k1, b[r]);
            }
          }
        }
        for (int r = 0; r < rn; ++r) {
          _mm512_mask_storeu_ps(s[r0 + r] + (start - c0), mask, _mm512_add_ps(a[r], b[r]));
        }
      }
    }
    // 2. Per row: mask positions outside [row_lo, row_hi), the chunk's max, the rescale of
    // the running sums, the exponentials (0 where masked). A row with no position in the
    // chunk (the chunk is before its window or after it) is left as it was.
    for (int r = 0; r < rows; ++r) {
      const int a = Max(c0, row_lo[r]) - c0;  // valid positions of the chunk: [a, b)
      const int b = Min(c1, row_hi[r]) - c0;
      if (a >= b) {
        corr[r] = 1.f;
        for (int k = 0; k < cn; k += kTile) _mm512_store_ps(s[r] + k, _mm512_setzero_ps());
        continue;
      }
      __m512 mx = neg_inf;
      for (int k = 0; k < cn; k += kTile) {
        const __m512i idx = _mm512_add_epi32(iota, _mm512_set1_epi32(k));
        const __mmask16 valid = _mm512_cmpge_epi32_mask(idx, _mm512_set1_epi32(a)) &
                                _mm512_cmplt_epi32_mask(idx, _mm512_set1_epi32(b));
        const __m512 sv = _mm512_mask_mov_ps(neg_inf, valid, _mm512_load_ps(s[r] + k));
        _mm512_store_ps(s[r] + k, sv);
        mx = _mm512_max_ps(mx, sv);
      }
      const float chunk_max = _mm512_reduce_max_ps(mx);
      const float m_new = chunk_max > m[r] ? chunk_max : m[r];
      corr[r] = _mm512_cvtss_f32(ExpAvx512(_mm512_set1_ps(m[r] - m_new)));
      const __m512 mv = _mm512_set1_ps(m_new);
      __m512 sum = _mm512_setzero_ps();
      for (int k = 0; k < cn; k += kTile) {
        const __m512 sv = _mm512_load_ps(s[r] + k);
        // exp(-inf - m) is clamped, not 0: zero the masked lanes explicitly.
        const __mmask16 valid = _mm512_cmp_ps_mask(sv, neg_inf, _CMP_NEQ_OQ);
        const __m512 e = _mm512_maskz_mov_ps(valid, ExpAvx512(_mm512_sub_ps(sv, mv)));
        _mm512_store_ps(s[r] + k, e);
        sum = _mm512_add_ps(sum, e);
      }
      l[r] = l[r] * corr[r] + _mm512_reduce_add_ps(sum);
      m[r] = m_new;
    }
    // 3. The chunk's V rows, converted once, into every row's accumulators.
    for (int start = c0; start < c1; start += n) {
      n = Min(Min(c1 - start, kTile), c.block_size - start % c.block_size);
      const int64_t row0 = cache_row(start);
      for (int j = 0; j < n; ++j) {
        StageRow<kDt>(c.v, c.v_scale_zero, row0 + j, d, v_rows[start - c0 + j]);
      }
    }
    for (int r0 = 0; r0 < rows; r0 += kOutRows) {
      const int rn = Min(rows - r0, kOutRows);
      __m512 o[kOutRows][kMaxNv];
#pragma GCC unroll 16
      for (int r = 0; r < kOutRows; ++r) {
        if (r >= rn) break;
        const __m512 vc = _mm512_set1_ps(corr[r0 + r]);
#pragma GCC unroll 16
        for (int i = 0; i < nv; ++i)
          o[r][i] = _mm512_mul_ps(_mm512_load_ps(acc[r0 + r] + 16 * i), vc);
      }
      for (int j = 0; j < cn; ++j) {
        __m512 vr[kMaxNv];
#pragma GCC unroll 16
        for (int i = 0; i < nv; ++i) vr[i] = _mm512_load_ps(v_rows[j] + 16 * i);
#pragma GCC unroll 16
        for (int r = 0; r < kOutRows; ++r) {
          if (r >= rn) break;
          const __m512 pj = _mm512_set1_ps(s[r0 + r][j]);
#pragma GCC unroll 16
          for (int i = 0; i < nv; ++i) o[r][i] = _mm512_fmadd_ps(pj, vr[i], o[r][i]);
        }
      }
#pragma GCC unroll 16
      for (int r = 0; r < kOutRows; ++r) {
        if (r >= rn) break;
#pragma GCC unroll 16
        for (int i = 0; i < nv; ++i) _mm512_store_ps(acc[r0 + r] + 16 * i, o[r][i]);
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    const int t = t0 + r / hn;
    float* out = p.out + (static_cast<int64_t>(t) * p.n_heads + kv_head * group + h0 + r % hn) * d;
    const __m512 inv = _mm512_set1_ps(1.f / l[r]);
    for (int i = 0; i < nv; ++i) {
      _mm512_storeu_ps(out + 16 * i, _mm512_mul_ps(_mm512_load_ps(acc[r] + 16 * i), inv));
    }
  }
}

using AttendTileFn = void (*)(const AttentionParams&, int, int, int, int, int);

template <KvDType kDt>
AttendTileFn AttendTileFor(int head_dim) {
  if (head_dim == 64) return &AttendTile<kDt, 4>;
  if (head_dim == 128) return &AttendTile<kDt, 8>;
  return &AttendTile<kDt, 0>;
}

template <KvDType kDt>
void TileRange(const AttentionParams& p, const AttentionTiles& tiles, int64_t begin, int64_t end) {
  const AttendTileFn attend = AttendTileFor<kDt>(p.head_dim);
  const int group = p.n_heads / p.n_kv_heads;
  for (int64_t unit = begin; unit < end; ++unit) {
    const int tile = AttentionTileOfUnit(tiles, unit / p.n_kv_heads);
    const int kv_head = static_cast<int>(unit % p.n_kv_heads);
    const int t0 = tiles.starts[tile];
    const int nq = tiles.starts[tile + 1] - t0;
    // Heads in passes of at most kMaxRows rows.
    const int heads_per_pass = Max(1, Min(group, kMaxRows / nq));
    for (int h0 = 0; h0 < group; h0 += heads_per_pass) {
      attend(p, t0, nq, kv_head, h0, Min(heads_per_pass, group - h0));
    }
  }
}

}  // namespace

void AttentionTileRangeAvx512(const AttentionParams& p, const AttentionTiles& tiles, int64_t begin,
                              int64_t end) {
  switch (p.cache.dtype) {
    case KvDType::kF32:
      return TileRange<KvDType::kF32>(p, tiles, begin, end);
    case KvDType::kF16:
      return TileRange<KvDType::kF16>(p, tiles, begin, end);
    case KvDType::kInt8:
      return TileRange<KvDType::kInt8>(p, tiles, begin, end);
  }
}

}  // namespace tandem::kernels::cpu::internal
