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

// How far ahead in a group's stream to prefetch, with _MM_HINT_T0 (into every level). On
// Zen 4, in the earlier layout (scales apart from the tiles), no prefetch or a short
// distance gave ~10 GB/s per core and 8-32 KB ahead ~14-15 GB/s. On Zen 5 (bench/RESULTS.md),
// with the span layout, a replica of the decode loop reads ~31 GB/s with the hardware
// prefetchers alone and ~33-36 (the plain streaming-read rate) 12 KB ahead; in the engine,
// decode b1 runs ~1.2x faster with T0 (or NTA) than with T1, and 6-12 KB are alike. NTA is
// not used: lines it brings skip L2 on eviction, and prefill reuses a group's lines.
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
  constexpr int64_t kSpan = SpanBytes(kType);
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  __m512 acc[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
  const int8_t* xq0 = a.q + i0 * a.cols;
  const int64_t nb = l.nb;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* tile = group + TileOffset(kType, b);
    const auto* dh = reinterpret_cast<const uint16_t*>(group + DOffset(kType, b));
    const auto* mh = reinterpret_cast<const uint16_t*>(group + MOffset(kType, b));
    // Decode (MR = 1) is bound by how fast weights stream in from DRAM: the group is one
    // sequential stream, asked for kPrefetchBytes ahead a span at a time (a span starts
    // with its first block's tile).
    if (b % kSpanBlocks == 0) {
#pragma GCC unroll 18
      for (int64_t o = 0; o < kSpan; o += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(tile + kPrefetchBytes + o), _MM_HINT_T0);
      }
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
    const __m512 dv = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(dh)));
    __m512 mv = _mm512_setzero_ps();
    if constexpr (kMin) {
      mv = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(mh)));
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

// The 8 vectors of a K-quant tile (see matmul.h): w[k] holds quad k (elements 4k..4k+3) of
// each of the 16 rows. Bit-plane fields are shifted in 16-bit lanes and masked per byte:
// no field crosses a byte, so the bits the 16-bit shift carries over are masked away.
template <DType kType>
inline void UnpackKTile(const uint8_t* tile, __m512i w[8]) {
  constexpr int kB = KBaseBits(kType), kH = KHighBits(kType);
  const __m512i base_mask = _mm512_set1_epi8((1 << kB) - 1);
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) {
    const __m512i v = _mm512_load_si512(tile + 64 * (k % kB));
    w[k] = _mm512_and_si512(_mm512_srli_epi16(v, kB * (k / kB)), base_mask);
  }
  if constexpr (kH != 0) {
    const __m512i high_mask = _mm512_set1_epi8(static_cast<char>(((1 << kH) - 1) << kB));
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {
      const __m512i v = _mm512_load_si512(tile + 64 * (kB + k % kH));
      const int shift = kB - kH * (k / kH);  // from the field's bit to bit kB
      const __m512i h = shift > 0   ? _mm512_slli_epi16(v, shift)
                        : shift < 0 ? _mm512_srli_epi16(v, -shift)
                                    : v;
      w[k] = _mm512_ternarylogic_epi32(w[k], h, high_mask, 0xf8);  // w | (h & mask)
    }
  }
}

// K-quants (see matmul.h): MR activation rows against one 16-row group. Per super-block
// the 16 rows' d (and dmin) load once; per 32-element block the sub-block scales sc (and
// minima m) of the 16 rows are one 16-byte load each, widened and multiplied by d in fp32,
// where d * sc is exact (an 11-bit significand times an integer below 2^8). The integer dot
// products are the Q4/Q8 kernels' (vpdpbusd, unsigned q against signed activations); the
// 16-element sub-block types keep the two halves of a block in separate chains, each
// started at -offset * (the activation half's sum), so |chain| <= 16 * 63 * 127 + 32 *
// 16 * 127 < 2^18.
template <DType kType, int MR>
void KGroupTile(const PackedLayout& l, const uint8_t* group, const QuantizedActs& a, int64_t i0,
                float* y, int64_t ldy, __mmask16 store_mask) {
  constexpr bool kMin = HasKMin(kType);
  constexpr bool kSub16 = HasKSub16(kType);
  constexpr int32_t kOff = KOffset(kType);
  __m512 acc[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
  const int8_t* xq0 = a.q + i0 * a.cols;
  const int64_t nb = l.nb;
  for (int64_t sbi = 0; sbi < l.n_sb; ++sbi) {
    const uint8_t* sb = group + sbi * l.sb_bytes;
    const __m512 dv =
        _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(sb + l.kd_offset)));
    __m512 dminv = _mm512_setzero_ps();
    if constexpr (kMin) {
      dminv =
          _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(sb + l.kdmin_offset)));
    }
    // One stream (tiles and scales interleaved per super-block), prefetched ahead as in
    // GroupTile, one line per 64 bytes.
    for (int64_t o = 0; o < l.sb_bytes; o += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(sb + kPrefetchBytes + o), _MM_HINT_T0);
    }
    for (int j = 0; j < 8; ++j) {
      const int64_t b = sbi * 8 + j;
      __m512i w[8];
      UnpackKTile<kType>(sb + j * l.qs_bytes, w);
      if constexpr (!kSub16) {
        const __m128i scb = _mm_load_si128(reinterpret_cast<const __m128i*>(sb + l.ksc_offset) + j);
        const __m512 scale = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(scb)));
        const __m128i mb = _mm_load_si128(reinterpret_cast<const __m128i*>(sb + l.km_offset) + j);
        const __m512 mv = _mm512_mul_ps(dminv, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(mb)));
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
          const int64_t i = i0 + r;
          const int8_t* xb = xq0 + r * a.cols + b * kQuantBlock;
          __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], Bcast4(xb));
          __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], Bcast4(xb + 4));
          s0 = _mm512_dpbusd_epi32(s0, w[2], Bcast4(xb + 8));
          s1 = _mm512_dpbusd_epi32(s1, w[3], Bcast4(xb + 12));
          s0 = _mm512_dpbusd_epi32(s0, w[4], Bcast4(xb + 16));
          s1 = _mm512_dpbusd_epi32(s1, w[5], Bcast4(xb + 20));
          s0 = _mm512_dpbusd_epi32(s0, w[6], Bcast4(xb + 24));
          s1 = _mm512_dpbusd_epi32(s1, w[7], Bcast4(xb + 28));
          const __m512i sum = _mm512_add_epi32(s0, s1);
          acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum),
                                   _mm512_mul_ps(scale, _mm512_set1_ps(a.d[i * nb + b])), acc[r]);
          acc[r] = _mm512_fnmadd_ps(mv, _mm512_set1_ps(a.s[i * nb + b]), acc[r]);
        }
      } else {
        const auto* scp = reinterpret_cast<const __m128i*>(sb + l.ksc_offset) + 2 * j;
        __m512i sc_a, sc_b;
        __m512 m_a = _mm512_setzero_ps(), m_b = _mm512_setzero_ps();
        if constexpr (kMin) {  // Q2_K: GGUF's byte sc | m << 4
          const __m512i low4 = _mm512_set1_epi32(0xf);
          const __m512i pa = _mm512_cvtepu8_epi32(_mm_load_si128(scp));
          const __m512i pb = _mm512_cvtepu8_epi32(_mm_load_si128(scp + 1));
          sc_a = _mm512_and_si512(pa, low4);
          sc_b = _mm512_and_si512(pb, low4);
          m_a = _mm512_mul_ps(dminv, _mm512_cvtepi32_ps(_mm512_srli_epi32(pa, 4)));
          m_b = _mm512_mul_ps(dminv, _mm512_cvtepi32_ps(_mm512_srli_epi32(pb, 4)));
        } else {
          sc_a = _mm512_cvtepi8_epi32(_mm_load_si128(scp));
          sc_b = _mm512_cvtepi8_epi32(_mm_load_si128(scp + 1));
        }
        const __m512 scale_a = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(sc_a));
        const __m512 scale_b = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(sc_b));
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
          const int64_t i = i0 + r;
          const int8_t* xb = xq0 + r * a.cols + b * kQuantBlock;
          const int32_t sums = a.bias[i * nb + b];
          const int32_t sum_a = static_cast<int16_t>(sums & 0xffff), sum_b = sums >> 16;
          __m512i sa = _mm512_set1_epi32(-kOff * sum_a);
          __m512i sbv = _mm512_set1_epi32(-kOff * sum_b);
          sa = _mm512_dpbusd_epi32(sa, w[0], Bcast4(xb));
          sbv = _mm512_dpbusd_epi32(sbv, w[4], Bcast4(xb + 16));
          sa = _mm512_dpbusd_epi32(sa, w[1], Bcast4(xb + 4));
          sbv = _mm512_dpbusd_epi32(sbv, w[5], Bcast4(xb + 20));
          sa = _mm512_dpbusd_epi32(sa, w[2], Bcast4(xb + 8));
          sbv = _mm512_dpbusd_epi32(sbv, w[6], Bcast4(xb + 24));
          sa = _mm512_dpbusd_epi32(sa, w[3], Bcast4(xb + 12));
          sbv = _mm512_dpbusd_epi32(sbv, w[7], Bcast4(xb + 28));
          const float dx = a.d[i * nb + b];
          const __m512 dxv = _mm512_set1_ps(dx);
          acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sa), _mm512_mul_ps(scale_a, dxv), acc[r]);
          acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sbv), _mm512_mul_ps(scale_b, dxv), acc[r]);
          if constexpr (kMin) {
            acc[r] = _mm512_fnmadd_ps(m_a, _mm512_set1_ps(dx * static_cast<float>(sum_a)), acc[r]);
            acc[r] = _mm512_fnmadd_ps(m_b, _mm512_set1_ps(dx * static_cast<float>(sum_b)), acc[r]);
          }
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) _mm512_mask_storeu_ps(y + (i0 + r) * ldy, store_mask, acc[r]);
}

// Activation rows per tile: 6 x (2 int chains + 1 fp32 accumulator) + 8 weight vectors +
// scales fit the 32 zmm registers.
constexpr int kTile = 6;

template <DType kType, int MR>
void Tile(const PackedLayout& l, const uint8_t* group, const QuantizedActs& a, int64_t i0, float* y,
          int64_t ldy, __mmask16 store_mask) {
  if constexpr (IsKQuant(kType)) {
    KGroupTile<kType, MR>(l, group, a, i0, y, ldy, store_mask);
  } else {
    GroupTile<kType, MR>(l, group, a, i0, y, ldy, store_mask);
  }
}

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
      Tile<kType, kTile>(l, group, *args.acts, i, y, args.ldy, mask);
    }
    switch (m1 - i) {
      case 5:
        Tile<kType, 5>(l, group, *args.acts, i, y, args.ldy, mask);
        break;
      case 4:
        Tile<kType, 4>(l, group, *args.acts, i, y, args.ldy, mask);
        break;
      case 3:
        Tile<kType, 3>(l, group, *args.acts, i, y, args.ldy, mask);
        break;
      case 2:
        Tile<kType, 2>(l, group, *args.acts, i, y, args.ldy, mask);
        break;
      case 1:
        Tile<kType, 1>(l, group, *args.acts, i, y, args.ldy, mask);
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
      int32_t sum, bias;
      if (offset == kActHalfSums) {
        const int32_t sum_a = _mm512_reduce_add_epi32(q0), sum_b = _mm512_reduce_add_epi32(q1);
        sum = sum_a + sum_b;
        bias = static_cast<int32_t>((static_cast<uint32_t>(sum_a) & 0xffff) |
                                    static_cast<uint32_t>(sum_b) << 16);
      } else {
        sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        bias = offset * sum;
      }
      a.d[i * a.nb + b] = d;
      a.s[i * a.nb + b] = d * static_cast<float>(sum);
      a.bias[i * a.nb + b] = bias;
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
    case DType::kQ4_K:
      return QuantGemmTyped<DType::kQ4_K>(args, m0, m1, g0, g1);
    case DType::kQ6_K:
      return QuantGemmTyped<DType::kQ6_K>(args, m0, m1, g0, g1);
    case DType::kQ5_K:
      return QuantGemmTyped<DType::kQ5_K>(args, m0, m1, g0, g1);
    case DType::kQ3_K:
      return QuantGemmTyped<DType::kQ3_K>(args, m0, m1, g0, g1);
    case DType::kQ2_K:
      return QuantGemmTyped<DType::kQ2_K>(args, m0, m1, g0, g1);
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
