// AVX-512 variants of the elementwise ops and KV append (built with -mavx512f and friends).
// Only intrinsics and plain C here, no inline library templates: an out-of-line copy of one
// compiled with AVX-512 enabled could be picked by the linker for scalar code too.
#include <immintrin.h>

// GCC 12's AVX-512 intrinsic headers self-initialize their "undefined" vectors (__Y = __Y),
// which -Wuninitialized reports at every inlined call; the warning is spurious.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <cstring>

#include "kernels/cpu/ops.h"

namespace tandem::kernels::cpu::internal {
namespace {

__mmask16 TailMask(int64_t n) {  // lanes [0, n) of 16, n in [0, 16]
  return static_cast<__mmask16>((1u << n) - 1u);
}

int64_t KvRow(const KvCacheView& c, int layer, int block, int head, int offset) {
  return ((static_cast<int64_t>(layer) * c.n_blocks + block) * c.n_kv_heads + head) * c.block_size +
         offset;
}

}  // namespace

void RmsNormRangeAvx512(const float* x, const float* w, int dim, float eps, float* out,
                        int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const float* xr = x + r * dim;
    float* outr = out + r * dim;
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 64 <= dim; i += 64) {
      const __m512 a = _mm512_loadu_ps(xr + i), b = _mm512_loadu_ps(xr + i + 16);
      const __m512 c = _mm512_loadu_ps(xr + i + 32), d = _mm512_loadu_ps(xr + i + 48);
      s0 = _mm512_fmadd_ps(a, a, s0);
      s1 = _mm512_fmadd_ps(b, b, s1);
      s2 = _mm512_fmadd_ps(c, c, s2);
      s3 = _mm512_fmadd_ps(d, d, s3);
    }
    for (; i < dim; i += 16) {
      const __m512 a = _mm512_maskz_loadu_ps(TailMask(dim - i < 16 ? dim - i : 16), xr + i);
      s0 = _mm512_fmadd_ps(a, a, s0);
    }
    const float sum =
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    const float inv = 1.f / __builtin_sqrtf(sum / static_cast<float>(dim) + eps);
    const __m512 vinv = _mm512_set1_ps(inv);
    for (i = 0; i < dim; i += 16) {
      const __mmask16 m = TailMask(dim - i < 16 ? dim - i : 16);
      const __m512 a = _mm512_maskz_loadu_ps(m, xr + i);
      const __m512 wv = _mm512_maskz_loadu_ps(m, w + i);
      _mm512_mask_storeu_ps(outr + i, m, _mm512_mul_ps(_mm512_mul_ps(a, vinv), wv));
    }
  }
}

void SwiGluRangeAvx512(const float* gate, const float* up, int dim, float* out, int64_t begin,
                       int64_t end) {
  const __m512 one = _mm512_set1_ps(1.f);
  const int64_t last = end * dim;
  for (int64_t i = begin * dim; i < last; i += 16) {
    const __mmask16 m = TailMask(last - i < 16 ? last - i : 16);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 u = _mm512_maskz_loadu_ps(m, up + i);
    const __m512 e = ExpAvx512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(silu, u));
  }
}

void GeGluRangeAvx512(const float* gate, const float* up, int dim, float* out, int64_t begin,
                      int64_t end) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 cz = _mm512_set1_ps(kGeluZ);
  const __m512 cz3 = _mm512_set1_ps(kGeluZ3);
  const __m512 zero_below = _mm512_set1_ps(kGeluZeroBelow);
  const int64_t last = end * dim;
  for (int64_t i = begin * dim; i < last; i += 16) {
    const __mmask16 m = TailMask(last - i < 16 ? last - i : 16);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 u = _mm512_maskz_loadu_ps(m, up + i);
    const __m512 z = _mm512_mul_ps(g, _mm512_fmadd_ps(cz3, _mm512_mul_ps(g, g), cz));
    const __m512 e = ExpAvx512(_mm512_sub_ps(_mm512_setzero_ps(), z));
    // "Not less than" keeps NaN inputs NaN.
    const __mmask16 keep = _mm512_cmp_ps_mask(z, zero_below, _CMP_NLT_UQ);
    const __m512 gelu = _mm512_maskz_div_ps(keep, g, _mm512_add_ps(one, e));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(gelu, u));
  }
}

void AddBiasRangeAvx512(float* x, const float* bias, int dim, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    float* xr = x + r * dim;
    for (int i = 0; i < dim; i += 16) {
      const __mmask16 m = TailMask(dim - i < 16 ? dim - i : 16);
      const __m512 a = _mm512_maskz_loadu_ps(m, xr + i);
      _mm512_mask_storeu_ps(xr + i, m, _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, bias + i)));
    }
  }
}

void AddRangeAvx512(float* x, const float* y, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; i += 16) {
    const __mmask16 m = TailMask(end - i < 16 ? end - i : 16);
    const __m512 a = _mm512_maskz_loadu_ps(m, x + i);
    _mm512_mask_storeu_ps(x + i, m, _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, y + i)));
  }
}

void ScaleRangeAvx512(float* x, float factor, int64_t begin, int64_t end) {
  const __m512 f = _mm512_set1_ps(factor);
  for (int64_t i = begin; i < end; i += 16) {
    const __mmask16 m = TailMask(end - i < 16 ? end - i : 16);
    _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), f));
  }
}

// Requires head_dim % 16 == 0 (checked by the dispatcher).
void KvAppendRangeAvx512(const KvAppendParams& p, int64_t begin, int64_t end) {
  const KvCacheView& c = p.cache;
  const int d = c.head_dim;
  for (int64_t t = begin; t < end; ++t) {
    const int block = p.slots[t] / c.block_size;
    const int offset = p.slots[t] % c.block_size;
    for (int h = 0; h < c.n_kv_heads; ++h) {
      const int64_t src = (t * c.n_kv_heads + h) * d;
      const int64_t row = KvRow(c, p.layer, block, h, offset);
      for (int which = 0; which < 2; ++which) {
        const float* in = (which == 0 ? p.k : p.v) + src;
        void* base = which == 0 ? c.k : c.v;
        switch (c.dtype) {
          case KvDType::kF32:
            std::memcpy(static_cast<float*>(base) + row * d, in, sizeof(float) * d);
            break;
          case KvDType::kF16: {
            uint16_t* o = static_cast<uint16_t*>(base) + row * d;
            for (int i = 0; i < d; i += 16) {
              const __m256i hv = _mm512_cvtps_ph(_mm512_loadu_ps(in + i),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
              _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + i), hv);
            }
            break;
          }
          case KvDType::kInt8: {
            __m512 vmin = _mm512_loadu_ps(in), vmax = vmin;
            for (int i = 16; i < d; i += 16) {
              const __m512 a = _mm512_loadu_ps(in + i);
              vmin = _mm512_min_ps(vmin, a);
              vmax = _mm512_max_ps(vmax, a);
            }
            const float mn = _mm512_reduce_min_ps(vmin);
            const float mx = _mm512_reduce_max_ps(vmax);
            // The scalar variant's formula, lane by lane: exact division, then RNE rounding
            // (the MXCSR default) in the float->int conversion.
            const float scale = (mx - mn) / 255.f;
            const __m512 vzero = _mm512_set1_ps(mn);
            const __m512 vscale = _mm512_set1_ps(scale);
            uint8_t* o = static_cast<uint8_t*>(base) + row * d;
            for (int i = 0; i < d; i += 16) {
              __m512i q = _mm512_setzero_si512();
              if (scale > 0) {
                const __m512 a = _mm512_loadu_ps(in + i);
                q = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_sub_ps(a, vzero), vscale));
                q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_setzero_si512()),
                                     _mm512_set1_epi32(255));
              }
              _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i), _mm512_cvtepi32_epi8(q));
            }
            float* sz = (which == 0 ? c.k_scale_zero : c.v_scale_zero) + row * 2;
            sz[0] = scale;
            sz[1] = mn;
            break;
          }
        }
      }
    }
  }
}

}  // namespace tandem::kernels::cpu::internal
