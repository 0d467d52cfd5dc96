// AVX-512 variant of paged attention. Same result as attention.cc's algorithm, arranged
// for throughput: the context is cut into chunks of kChunk positions, and each chunk is
// done in three passes (scores for every head of the GQA group, then the softmax update,
// then the weighted V rows) so that no long dependency chain runs per 16-position tile;
// see Attend. K tiles are staged once per tile (F16 via vcvtph2ps, int8 with one FMA per
// 16 values: q * scale + zero); V rows are converted once and feed several heads.
// Only intrinsics and plain C here (see ops_avx512.cc for why).
#include <immintrin.h>

// GCC 12's AVX-512 intrinsic headers self-initialize their "undefined" vectors (__Y = __Y),
// which -Wuninitialized reports at every inlined call; the warning is spurious.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/cpu/ops.h"

namespace tandem::kernels::cpu::internal {
namespace {

constexpr int kTile = 16;          // positions per score tile: one zmm of scores
constexpr int kGroupTile = 8;      // query heads sharing one pass over K/V
constexpr int kChunk = 128;        // positions per softmax chunk (a multiple of kTile)
constexpr int kPrefetchTiles = 2;  // tiles of K/V asked for ahead, into L1
// Tiles of K and V asked for ahead into L2 only. On Zen 5 a decode step at 4,096 positions
// waits on line fills with only the near prefetches (the L1 miss buffers stay full); these
// earlier L2 requests made the op ~1.3x faster and decode 1.08x (1 thread) / 1.13x (2)
// (bench/RESULTS.md); 4-8 tiles measured alike.
constexpr int kFarTiles = 6;

inline int Min(int a, int b) { return a < b ? a : b; }

// Rows [row0, row0 + n) of a K or V array as kTile rows of floats, rows n.. zero: full F32
// tiles are read in place (the rows of one block are contiguous); F16 and int8 rows, and
// partial F32 tiles, are converted once into `buf`, where every query head of the group then
// reads them from L1.
template <KvDType kDt>
inline const float* StageRows(const void* base, const float* scale_zero, int64_t row0, int n, int d,
                              float* buf) {
  if constexpr (kDt == KvDType::kF32) {
    const float* f = static_cast<const float*>(base) + row0 * d;
    if (n == kTile) return f;
    for (int i = 0; i < n * d; i += 16) _mm512_store_ps(buf + i, _mm512_loadu_ps(f + i));
  } else if constexpr (kDt == KvDType::kF16) {
    const uint16_t* h = static_cast<const uint16_t*>(base) + row0 * d;
    for (int i = 0; i < n * d; i += 16) {
      _mm512_store_ps(buf + i,
                      _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i))));
    }
  } else {
    const uint8_t* q = static_cast<const uint8_t*>(base) + row0 * d;
    for (int j = 0; j < n; ++j) {
      const __m512 scale = _mm512_set1_ps(scale_zero[(row0 + j) * 2]);
      const __m512 zero = _mm512_set1_ps(scale_zero[(row0 + j) * 2 + 1]);
      for (int i = j * d; i < (j + 1) * d; i += 16) {
        const __m512i w =
            _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i)));
        _mm512_store_ps(buf + i, _mm512_fmadd_ps(_mm512_cvtepi32_ps(w), scale, zero));
      }
    }
  }
  for (int i = n * d; i < kTile * d; i += 16) _mm512_store_ps(buf + i, _mm512_setzero_ps());
  return buf;
}

// Lane j of the result is the sum of the 16 lanes of a[j]: a transpose folded into an add
// tree, ~3 instructions per position instead of a horizontal reduction each.
__attribute__((always_inline)) inline __m512 TransposeSum16(const __m512* a) {
  __m512 t[8];
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) {  // per 128-bit lane: [a0, a1, a0, a1] partial sums
    t[k] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * k], a[2 * k + 1]),
                         _mm512_unpackhi_ps(a[2 * k], a[2 * k + 1]));
  }
  __m512 u[4];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {  // per 128-bit lane: [a0, a1, a2, a3]
    u[k] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * k], t[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(t[2 * k], t[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  __m512 w[2];
#pragma GCC unroll 2
  for (int k = 0; k < 2; ++k) {  // 128-bit lanes: [a0-3, a0-3, a4-7, a4-7], halves of sums
    w[k] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// Vectors [0, nv) of row `row` of a K or V array, as floats.
template <KvDType kDt, int kMaxNv>
__attribute__((always_inline)) inline void LoadRow(const void* base, const float* scale_zero,
                                                   int64_t row, int d, int nv, __m512* out) {
  if constexpr (kDt == KvDType::kF32) {
    const float* f = static_cast<const float*>(base) + row * d;
#pragma GCC unroll 16
    for (int i = 0; i < nv; ++i) out[i] = _mm512_loadu_ps(f + 16 * i);
  } else if constexpr (kDt == KvDType::kF16) {
    const uint16_t* h = static_cast<const uint16_t*>(base) + row * d;
#pragma GCC unroll 16
    for (int i = 0; i < nv; ++i) {
      out[i] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + 16 * i)));
    }
  } else {
    const uint8_t* q = static_cast<const uint8_t*>(base) + row * d;
    const __m512 scale = _mm512_set1_ps(scale_zero[row * 2]);
    const __m512 zero = _mm512_set1_ps(scale_zero[row * 2 + 1]);
#pragma GCC unroll 16
    for (int i = 0; i < nv; ++i) {
      const __m512i w =
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16 * i)));
      out[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(w), scale, zero);
    }
  }
}

// One item: the query heads of kv_head for token t. The context is walked in chunks of
// kChunk positions, each in three throughput-bound passes instead of one latency-bound
// online softmax per 16-position tile:
//   1. scores of every head of the group for the chunk's tiles (K staged once per tile,
//      16 dot products folded by TransposeSum16), kept in `s`;
//   2. per head, the chunk's maximum, the rescale factor of the running sums, and the
//      exponentials, written back over the scores;
//   3. each V row loaded (and converted) once and added into the accumulators of up to
//      kHeadsPerPass heads, which stay in registers.
// Positions [lo, hi) of the token's window; `split` null writes the normalized result to
// p.out, otherwise the range's softmax state to unit `unit` of *split.
// kNv > 0 fixes head_dim = 16 * kNv at compile time; 0 reads it.
template <KvDType kDt, int kNv>
void Attend(const AttentionParams& p, int64_t t, int kv_head, int lo, int hi,
            const AttentionSplits* split, int64_t unit) {
  constexpr int kMaxNv = kNv > 0 ? kNv : kMaxHeadDim / 16;
  // Pass 3 keeps kHeadsPerPass x kMaxNv accumulators plus a V row in the 32 zmm registers.
  constexpr int kHeadsPerPass = kMaxNv >= 20 ? 1 : 20 / kMaxNv;
  const KvCacheView& c = p.cache;
  const int d = kNv > 0 ? 16 * kNv : p.head_dim;
  const int nv = d / 16;
  const int group = p.n_heads / p.n_kv_heads;
  const int32_t* table =
      p.block_tables + static_cast<int64_t>(p.token_seq[t]) * p.max_blocks_per_seq;
  const int64_t head_rows = static_cast<int64_t>(c.n_kv_heads) * c.block_size;
  const int64_t layer_rows = static_cast<int64_t>(p.layer) * c.n_blocks * head_rows;
  // First cache row of positions [start, start + n) and n, limited to one block and one tile.
  auto tile_at = [&](int start, int end, int* n) {
    const int offset = start % c.block_size;
    *n = Min(Min(end - start, kTile), c.block_size - offset);
    return layer_rows + table[start / c.block_size] * head_rows +
           static_cast<int64_t>(kv_head) * c.block_size + offset;
  };
  alignas(64) float q[kGroupTile][kMaxHeadDim];
  alignas(64) float acc[kGroupTile][kMaxHeadDim];
  alignas(64) float s[kGroupTile][kChunk];
  alignas(64) float k_buf[kTile * kMaxHeadDim];
  const __m512 neg_inf = _mm512_set1_ps(-__builtin_inff());
  for (int g0 = 0; g0 < group; g0 += kGroupTile) {
    const int gn = Min(group - g0, kGroupTile);
    float m[kGroupTile];
    float l[kGroupTile];
    float corr[kGroupTile];
    const __m512 vscale = _mm512_set1_ps(p.scale);
    for (int g = 0; g < gn; ++g) {
      const float* qh = p.q + (t * p.n_heads + kv_head * group + g0 + g) * d;
      for (int i = 0; i < nv; ++i) {
        _mm512_store_ps(q[g] + 16 * i, _mm512_mul_ps(_mm512_loadu_ps(qh + 16 * i), vscale));
        _mm512_store_ps(acc[g] + 16 * i, _mm512_setzero_ps());
      }
      m[g] = -__builtin_inff();
      l[g] = 0;
    }
    // With a window the walk starts at its first position, mid-block in general. The first
    // chunk ends kChunk positions after the kTile boundary at or before it, so every later
    // chunk starts on a multiple of kTile and cuts no tile a block boundary would not: the
    // mid-block start costs at most one extra partial tile per item, not one per chunk. With
    // first == 0 the chunks are [0, 128), [128, 256), ... as without a window.
    PrefetchKvRows(p, table, kv_head, c.k, c.k_scale_zero, lo, kPrefetchTiles * kTile, hi);
    for (int c0 = lo, c1 = 0; c0 < hi; c0 = c1) {
      c1 = Min(hi, (c0 & ~(kTile - 1)) + kChunk);
      // 1. Scores.
      int n = 0;
      for (int start = c0; start < c1; start += n) {
        PrefetchKvRows(p, table, kv_head, c.k, c.k_scale_zero, start + kPrefetchTiles * kTile,
                       kTile, hi);
        // This tile's V rows, which pass 3 reads after the chunk's scores and softmax: asked
        // for now, they arrive while the compute of passes 1 and 2 runs.
        PrefetchKvRows(p, table, kv_head, c.v, c.v_scale_zero, start, kTile, c1);
        PrefetchKvRows(p, table, kv_head, c.k, c.k_scale_zero, start + kFarTiles * kTile, kTile, hi,
                       /*to_l2=*/true);
        PrefetchKvRows(p, table, kv_head, c.v, c.v_scale_zero, start + kFarTiles * kTile, kTile, hi,
                       /*to_l2=*/true);
        const int64_t row0 = tile_at(start, c1, &n);
        const float* kt = StageRows<kDt>(c.k, c.k_scale_zero, row0, n, d, k_buf);
        const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1u);
        for (int g = 0; g < gn; ++g) {
          __m512 qv[kMaxNv];
#pragma GCC unroll 16
          for (int i = 0; i < nv; ++i) qv[i] = _mm512_load_ps(q[g] + 16 * i);
          __m512 dots[kTile];
#pragma GCC unroll 16
          for (int j = 0; j < kTile; ++j) {
            dots[j] = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kt + j * d));
#pragma GCC unroll 16
            for (int i = 1; i < nv; ++i) {
              dots[j] = _mm512_fmadd_ps(qv[i], _mm512_loadu_ps(kt + j * d + 16 * i), dots[j]);
            }
          }
          _mm512_mask_storeu_ps(s[g] + (start - c0), mask, TransposeSum16(dots));
        }
      }
      // 2. Softmax statistics and exponentials.
      const int cn = c1 - c0;
      for (int g = 0; g < gn; ++g) {
        __m512 mx = neg_inf;
        for (int k = 0; k < cn; k += kTile) {
          const int left = cn - k;
          const __mmask16 mask =
              left >= kTile ? __mmask16(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
          mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(neg_inf, mask, s[g] + k));
        }
        const float chunk_max = _mm512_reduce_max_ps(mx);
        const float m_new = chunk_max > m[g] ? chunk_max : m[g];
        corr[g] = _mm512_cvtss_f32(ExpAvx512(_mm512_set1_ps(m[g] - m_new)));
        const __m512 mv = _mm512_set1_ps(m_new);
        __m512 sum = _mm512_setzero_ps();
        for (int k = 0; k < cn; k += kTile) {
          const int left = cn - k;
          const __mmask16 mask =
              left >= kTile ? __mmask16(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
          const __m512 e =
              _mm512_maskz_mov_ps(mask, ExpAvx512(_mm512_sub_ps(_mm512_loadu_ps(s[g] + k), mv)));
          _mm512_storeu_ps(s[g] + k, e);
          sum = _mm512_add_ps(sum, e);
        }
        l[g] = l[g] * corr[g] + _mm512_reduce_add_ps(sum);
        m[g] = m_new;
      }
      // 3. Weighted V rows.
      for (int h0 = 0; h0 < gn; h0 += kHeadsPerPass) {
        const int hn = Min(gn - h0, kHeadsPerPass);
        __m512 av[kHeadsPerPass][kMaxNv];
#pragma GCC unroll 8
        for (int h = 0; h < kHeadsPerPass; ++h) {
          if (h >= hn) break;
          const __m512 vc = _mm512_set1_ps(corr[h0 + h]);
#pragma GCC unroll 16
          for (int i = 0; i < nv; ++i) {
            av[h][i] = _mm512_mul_ps(_mm512_load_ps(acc[h0 + h] + 16 * i), vc);
          }
        }
        for (int start = c0; start < c1; start += n) {
          const int64_t row0 = tile_at(start, c1, &n);
          for (int j = 0; j < n; ++j) {
            __m512 vr[kMaxNv];
            LoadRow<kDt, kMaxNv>(c.v, c.v_scale_zero, row0 + j, d, nv, vr);
            const int sj = start - c0 + j;
#pragma GCC unroll 8
            for (int h = 0; h < kHeadsPerPass; ++h) {
              if (h >= hn) break;
              const __m512 pj = _mm512_set1_ps(s[h0 + h][sj]);
#pragma GCC unroll 16
              for (int i = 0; i < nv; ++i) av[h][i] = _mm512_fmadd_ps(pj, vr[i], av[h][i]);
            }
          }
        }
#pragma GCC unroll 8
        for (int h = 0; h < kHeadsPerPass; ++h) {
          if (h >= hn) break;
#pragma GCC unroll 16
          for (int i = 0; i < nv; ++i) _mm512_store_ps(acc[h0 + h] + 16 * i, av[h][i]);
        }
      }
    }
    for (int g = 0; g < gn; ++g) {
      if (split != nullptr) {
        const int64_t u = unit * group + g0 + g;
        float* out = split->acc + u * d;
        for (int i = 0; i < nv; ++i)
          _mm512_storeu_ps(out + 16 * i, _mm512_load_ps(acc[g] + 16 * i));
        split->max[u] = m[g];
        split->sum[u] = l[g];
        continue;
      }
      float* out = p.out + (t * p.n_heads + kv_head * group + g0 + g) * d;
      const __m512 inv = _mm512_set1_ps(1.f / l[g]);
      for (int i = 0; i < nv; ++i) {
        _mm512_storeu_ps(out + 16 * i, _mm512_mul_ps(_mm512_load_ps(acc[g] + 16 * i), inv));
      }
    }
  }
}

using AttendFn = void (*)(const AttentionParams&, int64_t, int, int, int, const AttentionSplits*,
                          int64_t);

template <KvDType kDt>
AttendFn AttendFor(int head_dim) {
  if (head_dim == 64) return &Attend<kDt, 4>;
  if (head_dim == 128) return &Attend<kDt, 8>;
  return &Attend<kDt, 0>;
}

template <KvDType kDt>
void AttendRange(const AttentionParams& p, int64_t begin, int64_t end) {
  const AttendFn attend = AttendFor<kDt>(p.head_dim);
  for (int64_t item = begin; item < end; ++item) {
    const AttentionWalk w = AttentionItemWalk(p, item);
    attend(p, w.t, w.kv_head, w.lo, w.hi, nullptr, 0);
  }
}

template <KvDType kDt>
void AttendSplitRange(const AttentionParams& p, const AttentionSplits& s, int64_t begin,
                      int64_t end) {
  const AttendFn attend = AttendFor<kDt>(p.head_dim);
  for (int64_t unit = begin; unit < end; ++unit) {
    const AttentionWalk w = AttentionUnitWalk(p, s, unit);
    attend(p, w.t, w.kv_head, w.lo, w.hi, &s, unit);
  }
}

}  // namespace

// Requires head_dim % 16 == 0 (checked by the dispatcher).
void AttentionRangeAvx512(const AttentionParams& p, int64_t begin, int64_t end) {
  switch (p.cache.dtype) {
    case KvDType::kF32:
      return AttendRange<KvDType::kF32>(p, begin, end);
    case KvDType::kF16:
      return AttendRange<KvDType::kF16>(p, begin, end);
    case KvDType::kInt8:
      return AttendRange<KvDType::kInt8>(p, begin, end);
  }
}

void AttentionSplitRangeAvx512(const AttentionParams& p, const AttentionSplits& s, int64_t begin,
                               int64_t end) {
  switch (p.cache.dtype) {
    case KvDType::kF32:
      return AttendSplitRange<KvDType::kF32>(p, s, begin, end);
    case KvDType::kF16:
      return AttendSplitRange<KvDType::kF16>(p, s, begin, end);
    case KvDType::kInt8:
      return AttendSplitRange<KvDType::kInt8>(p, s, begin, end);
  }
}

}  // namespace tandem::kernels::cpu::internal
