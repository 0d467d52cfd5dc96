// AVX-512 VNNI kernels of matmul.h (compiled with -mavx512* flags; run only when
// IsaAvailable(Isa::kAvx512)).
#include <immintrin.h>

// GCC 12 reports its own AVX-512 intrinsics (_mm512_undefined_*) as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>

#include "common/check.h"
#include "kernels/cpu/matmul.h"

namespace tandem::kernels::cpu::internal {
namespace {

using AliasI32 = int32_t __attribute__((may_alias));

// How far ahead in the qs stream to prefetch into L2 (scales: 1/8 of it, their stream is
// 8x thinner). Measured on Zen 4 streaming a 120 MB Q4_1 weight: no prefetch or a short
// distance gives ~10 GB/s per core, 8-32 KB ahead into L2 gives ~14-15 GB/s (Q8_0: 11 ->
// 18 GB/s, about the plain streaming-read rate): hardware prefetchers stop at 4 KB pages,
// this runs a few pages ahead of them. _MM_HINT_T1 at the same distances did not help.
constexpr int64_t kPrefetchBytes = 12288;

inline __m512i Bcast4(const int8_t* p) {
  return _mm512_set1_epi32(*reinterpret_cast<const AliasI32*>(p));
}

// MR activation rows against one 16-row weight group, over all blocks. Each unpacked
// weight vector is reused by MR rows, which is what makes prefill compute-bound.
template <DType kType, int MR>
void GroupTile(const PackedLayout& l, const uint8_t* group, const QuantizedActs& a, int64_t i0,
               float* y, int64_t ldy, __mmask16 store_mask) {
  constexpr bool kByteTile = HasByteTile(kType);
  constexpr bool kMin = HasMin(kType);
  const auto* dh = reinterpret_cast<const uint16_t*>(group + l.d_offset);
  const auto* mh = reinterpret_cast<const uint16_t*>(group + l.m_offset);
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  __m512 acc[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
  const int8_t* xq0 = a.q + i0 * a.cols;
  const int64_t nb = l.nb;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* tile = group + b * l.qs_bytes;
    // Decode (MR = 1) is bound by how fast weights stream in from DRAM (see
    // kPrefetchBytes; the group's scales are separate streams, fetched ahead too).
#pragma GCC unroll 8
    for (int p = 0; p < (kByteTile ? 8 : 4); ++p) {
      _mm_prefetch(reinterpret_cast<const char*>(tile + kPrefetchBytes + 64 * p), _MM_HINT_T1);
    }
    _mm_prefetch(reinterpret_cast<const char*>(dh + b * 16) + kPrefetchBytes / 8, _MM_HINT_T1);
    if constexpr (kMin) {
      _mm_prefetch(reinterpret_cast<const char*>(mh + b * 16) + kPrefetchBytes / 8, _MM_HINT_T1);
    }
    __m512i w[8];
    if constexpr (kByteTile) {
#pragma GCC unroll 8
      for (int p = 0; p < 8; ++p) w[p] = _mm512_load_si512(tile + 64 * p);
    } else {
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const __m512i v = _mm512_load_si512(tile + 64 * p);
        w[p] = _mm512_and_si512(v, low4);
        w[p + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
      }
    }
    const __m512 dv =
        _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(dh + b * 16)));
    __m512 mv = _mm512_setzero_ps();
    if constexpr (kMin) {
      mv = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(mh + b * 16)));
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const int64_t i = i0 + r;
      const int8_t* xb = xq0 + r * a.cols + b * kQuantBlock;
      // Vector k holds elements 4k..4k+3 of each row (see matmul.h), so it meets the
      // activation's dword k broadcast to every lane. Two chains halve the latency.
      // The weights' offset correction starts the chain instead of being added after.
      const __m512i init = kMin ? _mm512_setzero_si512() : _mm512_set1_epi32(a.bias[i * nb + b]);
      __m512i s0 = _mm512_dpbusd_epi32(init, w[0], Bcast4(xb));
      __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], Bcast4(xb + 4));
      s0 = _mm512_dpbusd_epi32(s0, w[2], Bcast4(xb + 8));
      s1 = _mm512_dpbusd_epi32(s1, w[3], Bcast4(xb + 12));
      s0 = _mm512_dpbusd_epi32(s0, w[4], Bcast4(xb + 16));
      s1 = _mm512_dpbusd_epi32(s1, w[5], Bcast4(xb + 20));
      s0 = _mm512_dpbusd_epi32(s0, w[6], Bcast4(xb + 24));
      s1 = _mm512_dpbusd_epi32(s1, w[7], Bcast4(xb + 28));
      const __m512i s = _mm512_add_epi32(s0, s1);
      const __m512 scale = _mm512_mul_ps(dv, _mm512_set1_ps(a.d[i * nb + b]));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[r]);
      if constexpr (kMin) acc[r] = _mm512_fmadd_ps(mv, _mm512_set1_ps(a.s[i * nb + b]), acc[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) _mm512_mask_storeu_ps(y + (i0 + r) * ldy, store_mask, acc[r]);
}

// Activation rows per tile: 6 x (2 int chains + 1 fp32 accumulator) + 8 weight vectors +
// scales fit the 32 zmm registers.
constexpr int kTile = 6;

template <DType kType>
void QuantGemmTyped(const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
  const PackedLayout& l = *args.layout;
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* group = args.packed + g * l.group_bytes;
    const int64_t n_valid = std::min<int64_t>(kGroupRows, l.rows - g * kGroupRows);
    const __mmask16 mask = static_cast<__mmask16>((1u << n_valid) - 1);
    float* y = args.y + g * kGroupRows;
    int64_t i = m0;
    for (; i + kTile <= m1; i += kTile) {
      GroupTile<kType, kTile>(l, group, *args.acts, i, y, args.ldy, mask);
    }
    switch (m1 - i) {
      case 5:
        GroupTile<kType, 5>(l, group, *args.acts, i, y, args.ldy, mask);
        break;
      case 4:
        GroupTile<kType, 4>(l, group, *args.acts, i, y, args.ldy, mask);
        break;
      case 3:
        GroupTile<kType, 3>(l, group, *args.acts, i, y, args.ldy, mask);
        break;
      case 2:
        GroupTile<kType, 2>(l, group, *args.acts, i, y, args.ldy, mask);
        break;
      case 1:
        GroupTile<kType, 1>(l, group, *args.acts, i, y, args.ldy, mask);
        break;
      default:
        break;
    }
  }
}

inline __m512 LoadFloat16(DType type, const void* base, int64_t k, __mmask16 mask) {
  switch (type) {
    case DType::kF32:
      return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(base) + k);
    case DType::kF16:
      return _mm512_cvtph_ps(
          _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + k));
    default: {  // kBF16
      const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + k);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
  }
}

template <int MR>
void FloatRowTile(const FloatGemmArgs& args, const void* wr, int64_t i0, int64_t r) {
  __m512 acc[MR];
  for (int j = 0; j < MR; ++j) acc[j] = _mm512_setzero_ps();
  const int64_t cols = args.cols;
  for (int64_t k = 0; k < cols; k += 16) {
    const __mmask16 mask =
        cols - k >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (cols - k)) - 1);
    const __m512 wv = LoadFloat16(args.type, wr, k, mask);
    for (int j = 0; j < MR; ++j) {
      acc[j] =
          _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mask, args.x + (i0 + j) * cols + k), acc[j]);
    }
  }
  for (int j = 0; j < MR; ++j) args.y[(i0 + j) * args.ldy + r] = _mm512_reduce_add_ps(acc[j]);
}

}  // namespace

void QuantizeActsAvx512(const float* x, int32_t offset, const QuantizedActs& a, int64_t begin,
                        int64_t end) {
  const __m512 sign = _mm512_set1_ps(-0.f);
  for (int64_t i = begin; i < end; ++i) {
    const float* xr = x + i * a.cols;
    int8_t* q = a.q + i * a.cols;
    for (int64_t b = 0; b < a.nb; ++b) {
      const __m512 v0 = _mm512_loadu_ps(xr + b * 32);
      const __m512 v1 = _mm512_loadu_ps(xr + b * 32 + 16);
      const __m512 mx = _mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1));
      const float amax = _mm512_reduce_max_ps(mx);
      const float d = amax / 127.f;
      const float id = amax != 0.f ? 1.f / d : 0.f;
      const __m512 idv = _mm512_set1_ps(id);
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, idv));
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, idv));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * 32), _mm512_cvtepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * 32 + 16), _mm512_cvtepi32_epi8(q1));
      const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
      a.d[i * a.nb + b] = d;
      a.s[i * a.nb + b] = d * static_cast<float>(sum);
      a.bias[i * a.nb + b] = offset * sum;
    }
  }
}

void QuantGemmAvx512(const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
  switch (args.layout->type) {
    case DType::kQ4_0:
      return QuantGemmTyped<DType::kQ4_0>(args, m0, m1, g0, g1);
    case DType::kQ4_1:
      return QuantGemmTyped<DType::kQ4_1>(args, m0, m1, g0, g1);
    case DType::kQ5_1:
      return QuantGemmTyped<DType::kQ5_1>(args, m0, m1, g0, g1);
    case DType::kQ8_0:
    case DType::kQ5_0:  // packed as Q8_0's bytes
      return QuantGemmTyped<DType::kQ8_0>(args, m0, m1, g0, g1);
    default:
      TANDEM_CHECK(false && "not a quantized type");
  }
}

void FloatGemmAvx512(const FloatGemmArgs& args, int64_t m0, int64_t m1, int64_t r0, int64_t r1) {
  const int64_t row_bytes = RowBytes(args.type, args.cols);
  for (int64_t r = r0; r < r1; ++r) {
    const void* wr = static_cast<const uint8_t*>(args.w) + r * row_bytes;
    int64_t i = m0;
    for (; i + 4 <= m1; i += 4) FloatRowTile<4>(args, wr, i, r);
    for (; i < m1; ++i) FloatRowTile<1>(args, wr, i, r);
  }
}

}  // namespace tandem::kernels::cpu::internal
