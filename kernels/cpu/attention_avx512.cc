// AVX-512 variant of paged attention (algorithm in attention.cc). A tile of 16 positions is
// staged once (F16 via vcvtph2ps, int8 with one FMA per 16 values: q * scale + zero), then
// each query head of the group takes it in turn with its q and accumulator in registers:
// 16 dot products folded into one zmm of scores, an online-softmax update of a few vector
// ops, and 16 FMAs of V rows per accumulator vector.
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

// kNv > 0 fixes head_dim = 16 * kNv at compile time so a head's q and accumulator stay in
// registers; 0 reads it.
template <KvDType kDt, int kNv>
void Attend(const AttentionParams& p, int64_t t, int kv_head) {
  constexpr int kMaxNv = kNv > 0 ? kNv : kMaxHeadDim / 16;
  const KvCacheView& c = p.cache;
  const int d = kNv > 0 ? 16 * kNv : p.head_dim;
  const int nv = d / 16;
  const int group = p.n_heads / p.n_kv_heads;
  const int pos = p.positions[t];
  const int32_t* table =
      p.block_tables + static_cast<int64_t>(p.token_seq[t]) * p.max_blocks_per_seq;
  alignas(64) float q[kGroupTile][kMaxHeadDim];
  alignas(64) float acc[kGroupTile][kMaxHeadDim];
  alignas(64) float k_buf[kTile * kMaxHeadDim];
  alignas(64) float v_buf[kTile * kMaxHeadDim];
  alignas(64) float probs[kTile];
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
      const float* kt = StageRows<kDt>(c.k, c.k_scale_zero, row0, n, d, k_buf);
      const float* vt = StageRows<kDt>(c.v, c.v_scale_zero, row0, n, d, v_buf);
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
        const __m512 sv = _mm512_mask_mov_ps(neg_inf, mask, TransposeSum16(dots));
        const float tile_max = _mm512_reduce_max_ps(sv);
        const float m_new = tile_max > m[g] ? tile_max : m[g];
        const float corr = _mm512_cvtss_f32(ExpAvx512(_mm512_set1_ps(m[g] - m_new)));
        const __m512 pv =
            _mm512_maskz_mov_ps(mask, ExpAvx512(_mm512_sub_ps(sv, _mm512_set1_ps(m_new))));
        l[g] = l[g] * corr + _mm512_reduce_add_ps(pv);
        m[g] = m_new;
        _mm512_store_ps(probs, pv);
        __m512 av[kMaxNv];
        const __m512 vc = _mm512_set1_ps(corr);
#pragma GCC unroll 16
        for (int i = 0; i < nv; ++i) av[i] = _mm512_mul_ps(_mm512_load_ps(acc[g] + 16 * i), vc);
        for (int j = 0; j < n; ++j) {
          const __m512 pj = _mm512_set1_ps(probs[j]);
#pragma GCC unroll 16
          for (int i = 0; i < nv; ++i) {
            av[i] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vt + j * d + 16 * i), av[i]);
          }
        }
#pragma GCC unroll 16
        for (int i = 0; i < nv; ++i) _mm512_store_ps(acc[g] + 16 * i, av[i]);
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
    case KvDType::kF32:
      return AttendRange<KvDType::kF32>(p, begin, end);
    case KvDType::kF16:
      return AttendRange<KvDType::kF16>(p, begin, end);
    case KvDType::kInt8:
      return AttendRange<KvDType::kInt8>(p, begin, end);
  }
}

}  // namespace tandem::kernels::cpu::internal
