// AVX2 (+FMA, F16C) variants of the elementwise ops and KV append. Only intrinsics and plain
// C here, no inline library templates: an out-of-line copy of one compiled with AVX2 enabled
// could be picked by the linker for scalar code too.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/reduce_avx2.h"

namespace tandem::kernels::cpu::internal {
namespace {

int64_t KvRow(const KvCacheView& c, int layer, int block, int head, int offset) {
  return ((static_cast<int64_t>(layer) * c.n_blocks + block) * c.n_kv_heads + head) * c.block_size +
         offset;
}

// gelu(g) * u for 8 lanes (see GeGluRange in ops.h).
__m256 GeGlu8(__m256 g, __m256 u) {
  const __m256 z = _mm256_mul_ps(
      g, _mm256_fmadd_ps(_mm256_set1_ps(kGeluZ3), _mm256_mul_ps(g, g), _mm256_set1_ps(kGeluZ)));
  const __m256 e = ExpAvx2(_mm256_sub_ps(_mm256_setzero_ps(), z));
  // "Not less than" keeps NaN inputs NaN.
  const __m256 keep = _mm256_cmp_ps(z, _mm256_set1_ps(kGeluZeroBelow), _CMP_NLT_UQ);
  const __m256 gelu = _mm256_and_ps(keep, _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.f), e)));
  return _mm256_mul_ps(gelu, u);
}

}  // namespace

void RmsNormRangeAvx2(const float* x, const float* w, int dim, float eps, float* out, int64_t begin,
                      int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const float* xr = x + r * dim;
    float* outr = out + r * dim;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= dim; i += 32) {
      const __m256 a = _mm256_loadu_ps(xr + i), b = _mm256_loadu_ps(xr + i + 8);
      const __m256 c = _mm256_loadu_ps(xr + i + 16), d = _mm256_loadu_ps(xr + i + 24);
      s0 = _mm256_fmadd_ps(a, a, s0);
      s1 = _mm256_fmadd_ps(b, b, s1);
      s2 = _mm256_fmadd_ps(c, c, s2);
      s3 = _mm256_fmadd_ps(d, d, s3);
    }
    for (; i + 8 <= dim; i += 8) {
      const __m256 a = _mm256_loadu_ps(xr + i);
      s0 = _mm256_fmadd_ps(a, a, s0);
    }
    float sum = HorizontalSum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < dim; ++i) sum += xr[i] * xr[i];
    const float inv = 1.f / __builtin_sqrtf(sum / static_cast<float>(dim) + eps);
    const __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= dim; i += 8) {
      const __m256 a = _mm256_mul_ps(_mm256_loadu_ps(xr + i), vinv);
      _mm256_storeu_ps(outr + i, _mm256_mul_ps(a, _mm256_loadu_ps(w + i)));
    }
    for (; i < dim; ++i) outr[i] = xr[i] * inv * w[i];
  }
}

void SwiGluRangeAvx2(const float* gate, const float* up, int dim, float* out, int64_t begin,
                     int64_t end) {
  const __m256 one = _mm256_set1_ps(1.f);
  const int64_t last = end * dim;
  int64_t i = begin * dim;
  for (; i + 8 <= last; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = ExpAvx2(_mm256_sub_ps(_mm256_setzero_ps(), g));
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  if (i < last) {  // tail through a stack copy so the same exp is used for every element
    float g[8] = {0}, u[8] = {0}, o[8];
    const int64_t n = last - i;
    for (int64_t j = 0; j < n; ++j) {
      g[j] = gate[i + j];
      u[j] = up[i + j];
    }
    const __m256 gv = _mm256_loadu_ps(g);
    const __m256 e = ExpAvx2(_mm256_sub_ps(_mm256_setzero_ps(), gv));
    _mm256_storeu_ps(o,
                     _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u)));
    for (int64_t j = 0; j < n; ++j) out[i + j] = o[j];
  }
}

void GeGluRangeAvx2(const float* gate, const float* up, int dim, float* out, int64_t begin,
                    int64_t end) {
  const int64_t last = end * dim;
  int64_t i = begin * dim;
  for (; i + 8 <= last; i += 8) {
    _mm256_storeu_ps(out + i, GeGlu8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
  }
  if (i < last) {  // tail through a stack copy so every element takes the same vector path
    float g[8] = {0}, u[8] = {0}, o[8];
    const int64_t n = last - i;
    for (int64_t j = 0; j < n; ++j) {
      g[j] = gate[i + j];
      u[j] = up[i + j];
    }
    _mm256_storeu_ps(o, GeGlu8(_mm256_loadu_ps(g), _mm256_loadu_ps(u)));
    for (int64_t j = 0; j < n; ++j) out[i + j] = o[j];
  }
}

void AddBiasRangeAvx2(float* x, const float* bias, int dim, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    float* xr = x + r * dim;
    int i = 0;
    for (; i + 8 <= dim; i += 8) {
      _mm256_storeu_ps(xr + i, _mm256_add_ps(_mm256_loadu_ps(xr + i), _mm256_loadu_ps(bias + i)));
    }
    for (; i < dim; ++i) xr[i] += bias[i];
  }
}

void AddRangeAvx2(float* x, const float* y, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < end; ++i) x[i] += y[i];
}

void ScaleRangeAvx2(float* x, float factor, int64_t begin, int64_t end) {
  const __m256 f = _mm256_set1_ps(factor);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), f));
  for (; i < end; ++i) x[i] *= factor;
}

// Requires head_dim % 16 == 0 (checked by the dispatcher).
void KvAppendRangeAvx2(const KvAppendParams& p, int64_t begin, int64_t end) {
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
            for (int i = 0; i < d; i += 8) {
              const __m128i hv = _mm256_cvtps_ph(_mm256_loadu_ps(in + i),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
              _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i), hv);
            }
            break;
          }
          case KvDType::kInt8: {
            __m256 vmin = _mm256_loadu_ps(in), vmax = vmin;
            for (int i = 8; i < d; i += 8) {
              const __m256 a = _mm256_loadu_ps(in + i);
              vmin = _mm256_min_ps(vmin, a);
              vmax = _mm256_max_ps(vmax, a);
            }
            const float mn = HorizontalMin(vmin);
            const float mx = HorizontalMax(vmax);
            // The scalar variant's formula, lane by lane: exact division, then RNE rounding
            // (the MXCSR default) in the float->int conversion.
            const float scale = (mx - mn) / 255.f;
            const __m256 vzero = _mm256_set1_ps(mn);
            const __m256 vscale = _mm256_set1_ps(scale);
            uint8_t* o = static_cast<uint8_t*>(base) + row * d;
            for (int i = 0; i < d; i += 16) {
              __m256i q0 = _mm256_setzero_si256(), q1 = _mm256_setzero_si256();
              if (scale > 0) {
                const __m256 a0 = _mm256_sub_ps(_mm256_loadu_ps(in + i), vzero);
                const __m256 a1 = _mm256_sub_ps(_mm256_loadu_ps(in + i + 8), vzero);
                q0 = _mm256_cvtps_epi32(_mm256_div_ps(a0, vscale));
                q1 = _mm256_cvtps_epi32(_mm256_div_ps(a1, vscale));
              }
              // Saturating packs clamp to [0, 255]; packs work per 128-bit lane, so the
              // permute restores element order.
              const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xd8);
              const __m128i b8 =
                  _mm_packus_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
              _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i), b8);
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
