// AVX-512 variant of paged attention (algorithm in attention.cc). Scores come 16 positions
// at a time, one zmm per head, so the online-softmax update of a tile is a few vector ops.
// F16 rows convert with vcvtph2ps, int8 rows with one FMA per 16 values (q * scale + zero).
// Only intrinsics and plain C here (see ops_avx512.cc for why).
#include <immintrin.h>

// GCC 12's AVX-512 intrinsic headers self-initialize their "undefined" vectors (__Y = __Y),
// which -Wuninitialized reports at every inlined call; the warning is spurious.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/cpu/ops.h"

namespace tandem::kernels::cpu::internal {
namespace {

constexpr int kTile = 16;      // positions per score tile: one zmm of scores
constexpr int kGroupTile = 8;  // query heads sharing one pass over K/V

template <KvDType kDt>
inline void LoadRow(const void* base, const float* scale_zero, int64_t row, int d, int nv,
                    __m512* out) {
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
      const __m512i w = _mm512_cvtepu8_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16 * i)));
      out[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(w), scale, zero);
    }
  }
}

// kNv > 0 fixes head_dim / 16 at compile time so K/V rows stay in registers; 0 reads it.
template <KvDType kDt, int kNv>
void Attend(const AttentionParams& p, int64_t t, int kv_head) {
  const KvCacheView& c = p.cache;
  const int d = p.head_dim;
  const int nv = kNv > 0 ? kNv : d / 16;
  const int group = p.n_heads / p.n_kv_heads;
  const int pos = p.positions[t];
  const int32_t* table =
      p.block_tables + static_cast<int64_t>(p.token_seq[t]) * p.max_blocks_per_seq;
  alignas(64) float q[kGroupTile][kMaxHeadDim];
  alignas(64) float acc[kGroupTile][kMaxHeadDim];
  alignas(64) float s[kGroupTile][kTile];
  const __m512 neg_inf = _mm512_set1_ps(-__builtin_inff());
  for (int g0 = 0; g0 < group; g0 += kGroupTile) {
    const int gn = group - g0 < kGroupTile ? group - g0 : kGroupTile;
    float m[kGroupTile];
    float l[kGroupTile];
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
    int n = 0;
    for (int start = 0; start <= pos; start += n) {
      const int block = table[start / c.block_size];
      const int offset = start % c.block_size;
      n = pos + 1 - start;
      if (n > kTile) n = kTile;
      if (n > c.block_size - offset) n = c.block_size - offset;
      const int64_t row0 =
          ((static_cast<int64_t>(p.layer) * c.n_blocks + block) * c.n_kv_heads + kv_head) *
              c.block_size +
          offset;
      __m512 row[kNv > 0 ? kNv : kMaxHeadDim / 16];
      for (int j = 0; j < n; ++j) {
        LoadRow<kDt>(c.k, c.k_scale_zero, row0 + j, d, nv, row);
        for (int g = 0; g < gn; ++g) {
          __m512 a = _mm512_mul_ps(_mm512_load_ps(q[g]), row[0]);
#pragma GCC unroll 16
          for (int i = 1; i < nv; ++i) a = _mm512_fmadd_ps(_mm512_load_ps(q[g] + 16 * i), row[i], a);
          s[g][j] = _mm512_reduce_add_ps(a);
        }
      }
      const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1u);
      for (int g = 0; g < gn; ++g) {
        const __m512 sv = _mm512_mask_loadu_ps(neg_inf, mask, s[g]);
        const float tile_max = _mm512_reduce_max_ps(sv);
        const float m_new = tile_max > m[g] ? tile_max : m[g];
        const float corr = _mm512_cvtss_f32(ExpAvx512(_mm512_set1_ps(m[g] - m_new)));
        const __m512 pv = _mm512_maskz_mov_ps(mask, ExpAvx512(_mm512_sub_ps(sv, _mm512_set1_ps(m_new))));
        l[g] = l[g] * corr + _mm512_reduce_add_ps(pv);
        _mm512_store_ps(s[g], pv);
        if (corr != 1.f) {
          const __m512 vc = _mm512_set1_ps(corr);
          for (int i = 0; i < nv; ++i) {
            _mm512_store_ps(acc[g] + 16 * i, _mm512_mul_ps(_mm512_load_ps(acc[g] + 16 * i), vc));
          }
        }
        m[g] = m_new;
      }
      for (int j = 0; j < n; ++j) {
        LoadRow<kDt>(c.v, c.v_scale_zero, row0 + j, d, nv, row);
        for (int g = 0; g < gn; ++g) {
          const __m512 pj = _mm512_set1_ps(s[g][j]);
#pragma GCC unroll 16
          for (int i = 0; i < nv; ++i) {
            float* a = acc[g] + 16 * i;
            _mm512_store_ps(a, _mm512_fmadd_ps(pj, row[i], _mm512_load_ps(a)));
          }
        }
      }
    }
    for (int g = 0; g < gn; ++g) {
      float* out = p.out + (t * p.n_heads + kv_head * group + g0 + g) * d;
      const __m512 inv = _mm512_set1_ps(1.f / l[g]);
      for (int i = 0; i < nv; ++i) {
        _mm512_storeu_ps(out + 16 * i, _mm512_mul_ps(_mm512_load_ps(acc[g] + 16 * i), inv));
      }
    }
  }
}

template <KvDType kDt>
void AttendRange(const AttentionParams& p, int64_t begin, int64_t end) {
  void (*attend)(const AttentionParams&, int64_t, int) = &Attend<kDt, 0>;
  if (p.head_dim == 64) attend = &Attend<kDt, 4>;
  if (p.head_dim == 128) attend = &Attend<kDt, 8>;
  for (int64_t item = begin; item < end; ++item) {
    attend(p, item / p.n_kv_heads, static_cast<int>(item % p.n_kv_heads));
  }
}

}  // namespace

// Requires head_dim % 16 == 0 (checked by the dispatcher).
void AttentionRangeAvx512(const AttentionParams& p, int64_t begin, int64_t end) {
  switch (p.cache.dtype) {
    case KvDType::kF32: return AttendRange<KvDType::kF32>(p, begin, end);
    case KvDType::kF16: return AttendRange<KvDType::kF16>(p, begin, end);
    case KvDType::kInt8: return AttendRange<KvDType::kInt8>(p, begin, end);
  }
}

}  // namespace tandem::kernels::cpu::internal
