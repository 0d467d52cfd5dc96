// AVX2 (+FMA, F16C) variant of paged attention (algorithm in attention.cc): scores come 8
// positions at a time, one ymm per head. Only intrinsics and plain C here (see
// ops_avx2.cc for why).
#include <immintrin.h>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/reduce_avx2.h"

namespace tandem::kernels::cpu::internal {
namespace {

constexpr int kTile = 8;           // positions per score tile: one ymm of scores
constexpr int kGroupTile = 8;      // query heads sharing one pass over K/V
constexpr int kPrefetchTiles = 4;  // tiles (32 positions) of K/V asked for ahead

template <KvDType kDt>
inline void LoadRow(const void* base, const float* scale_zero, int64_t row, int d, int nv,
                    __m256* out) {
  if constexpr (kDt == KvDType::kF32) {
    const float* f = static_cast<const float*>(base) + row * d;
#pragma GCC unroll 16
    for (int i = 0; i < nv; ++i) out[i] = _mm256_loadu_ps(f + 8 * i);
  } else if constexpr (kDt == KvDType::kF16) {
    const uint16_t* h = static_cast<const uint16_t*>(base) + row * d;
#pragma GCC unroll 16
    for (int i = 0; i < nv; ++i) {
      out[i] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + 8 * i)));
    }
  } else {
    const uint8_t* q = static_cast<const uint8_t*>(base) + row * d;
    const __m256 scale = _mm256_set1_ps(scale_zero[row * 2]);
    const __m256 zero = _mm256_set1_ps(scale_zero[row * 2 + 1]);
#pragma GCC unroll 16
    for (int i = 0; i < nv; ++i) {
      const __m256i w =
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * i)));
      out[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w), scale, zero);
    }
  }
}

// Positions [lo, hi) of the token's window; `split` null writes the normalized result to
// p.out, otherwise the range's softmax state to unit `unit` of *split.
// kNv > 0 fixes head_dim / 8 at compile time; 0 reads it.
template <KvDType kDt, int kNv>
void Attend(const AttentionParams& p, int64_t t, int kv_head, int lo, int hi,
            const AttentionSplits* split, int64_t unit) {
  const KvCacheView& c = p.cache;
  const int d = p.head_dim;
  const int nv = kNv > 0 ? kNv : d / 8;
  const int group = p.n_heads / p.n_kv_heads;
  const int32_t* table =
      p.block_tables + static_cast<int64_t>(p.token_seq[t]) * p.max_blocks_per_seq;
  alignas(32) float q[kGroupTile][kMaxHeadDim];
  alignas(32) float acc[kGroupTile][kMaxHeadDim];
  alignas(32) float s[kGroupTile][kTile];
  const __m256 neg_inf = _mm256_set1_ps(-__builtin_inff());
  const __m256 iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  for (int g0 = 0; g0 < group; g0 += kGroupTile) {
    const int gn = group - g0 < kGroupTile ? group - g0 : kGroupTile;
    float m[kGroupTile];
    float l[kGroupTile];
    const __m256 vscale = _mm256_set1_ps(p.scale);
    for (int g = 0; g < gn; ++g) {
      const float* qh = p.q + (t * p.n_heads + kv_head * group + g0 + g) * d;
      for (int i = 0; i < nv; ++i) {
        _mm256_store_ps(q[g] + 8 * i, _mm256_mul_ps(_mm256_loadu_ps(qh + 8 * i), vscale));
        _mm256_store_ps(acc[g] + 8 * i, _mm256_setzero_ps());
      }
      m[g] = -__builtin_inff();
      l[g] = 0;
    }
    // A window only moves the first position; the tile after a mid-block start ends at the
    // block's end, and from the next block on tiles fall where they do without a window.
    PrefetchKvRows(p, table, kv_head, c.k, c.k_scale_zero, lo, kPrefetchTiles * kTile, hi);
    PrefetchKvRows(p, table, kv_head, c.v, c.v_scale_zero, lo, kPrefetchTiles * kTile, hi);
    int n = 0;
    for (int start = lo; start < hi; start += n) {
      const int ahead = start + kPrefetchTiles * kTile;
      PrefetchKvRows(p, table, kv_head, c.k, c.k_scale_zero, ahead, kTile, hi);
      PrefetchKvRows(p, table, kv_head, c.v, c.v_scale_zero, ahead, kTile, hi);
      const int block = table[start / c.block_size];
      const int offset = start % c.block_size;
      n = hi - start;
      if (n > kTile) n = kTile;
      if (n > c.block_size - offset) n = c.block_size - offset;
      const int64_t row0 =
          ((static_cast<int64_t>(p.layer) * c.n_blocks + block) * c.n_kv_heads + kv_head) *
              c.block_size +
          offset;
      __m256 row[kNv > 0 ? kNv : kMaxHeadDim / 8];
      for (int j = 0; j < n; ++j) {
        LoadRow<kDt>(c.k, c.k_scale_zero, row0 + j, d, nv, row);
        for (int g = 0; g < gn; ++g) {
          __m256 a = _mm256_mul_ps(_mm256_load_ps(q[g]), row[0]);
#pragma GCC unroll 16
          for (int i = 1; i < nv; ++i) a = _mm256_fmadd_ps(_mm256_load_ps(q[g] + 8 * i), row[i], a);
          s[g][j] = HorizontalSum(a);
        }
      }
      const __m256 valid = _mm256_cmp_ps(iota, _mm256_set1_ps(static_cast<float>(n)), _CMP_LT_OQ);
      for (int g = 0; g < gn; ++g) {
        const __m256 sv = _mm256_blendv_ps(neg_inf, _mm256_load_ps(s[g]), valid);
        const float tile_max = HorizontalMax(sv);
        const float m_new = tile_max > m[g] ? tile_max : m[g];
        const float corr = _mm256_cvtss_f32(ExpAvx2(_mm256_set1_ps(m[g] - m_new)));
        const __m256 pv = _mm256_and_ps(valid, ExpAvx2(_mm256_sub_ps(sv, _mm256_set1_ps(m_new))));
        l[g] = l[g] * corr + HorizontalSum(pv);
        _mm256_store_ps(s[g], pv);
        if (corr != 1.f) {
          const __m256 vc = _mm256_set1_ps(corr);
          for (int i = 0; i < nv; ++i) {
            _mm256_store_ps(acc[g] + 8 * i, _mm256_mul_ps(_mm256_load_ps(acc[g] + 8 * i), vc));
          }
        }
        m[g] = m_new;
      }
      for (int j = 0; j < n; ++j) {
        LoadRow<kDt>(c.v, c.v_scale_zero, row0 + j, d, nv, row);
        for (int g = 0; g < gn; ++g) {
          const __m256 pj = _mm256_set1_ps(s[g][j]);
#pragma GCC unroll 16
          for (int i = 0; i < nv; ++i) {
            float* a = acc[g] + 8 * i;
            _mm256_store_ps(a, _mm256_fmadd_ps(pj, row[i], _mm256_load_ps(a)));
          }
        }
      }
    }
    for (int g = 0; g < gn; ++g) {
      if (split != nullptr) {
        const int64_t u = unit * group + g0 + g;
        float* out = split->acc + u * d;
        for (int i = 0; i < nv; ++i) _mm256_storeu_ps(out + 8 * i, _mm256_load_ps(acc[g] + 8 * i));
        split->max[u] = m[g];
        split->sum[u] = l[g];
        continue;
      }
      float* out = p.out + (t * p.n_heads + kv_head * group + g0 + g) * d;
      const __m256 inv = _mm256_set1_ps(1.f / l[g]);
      for (int i = 0; i < nv; ++i) {
        _mm256_storeu_ps(out + 8 * i, _mm256_mul_ps(_mm256_load_ps(acc[g] + 8 * i), inv));
      }
    }
  }
}

using AttendFn = void (*)(const AttentionParams&, int64_t, int, int, int, const AttentionSplits*,
                          int64_t);

template <KvDType kDt>
AttendFn AttendFor(int head_dim) {
  if (head_dim == 64) return &Attend<kDt, 8>;
  if (head_dim == 128) return &Attend<kDt, 16>;
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

// Requires head_dim % 16 == 0 (checked by the dispatcher; 8 would do for this variant).
void AttentionRangeAvx2(const AttentionParams& p, int64_t begin, int64_t end) {
  switch (p.cache.dtype) {
    case KvDType::kF32:
      return AttendRange<KvDType::kF32>(p, begin, end);
    case KvDType::kF16:
      return AttendRange<KvDType::kF16>(p, begin, end);
    case KvDType::kInt8:
      return AttendRange<KvDType::kInt8>(p, begin, end);
  }
}

void AttentionSplitRangeAvx2(const AttentionParams& p, const AttentionSplits& s, int64_t begin,
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
