// AVX2 kernels of matmul.h (compiled with -mavx2 -mfma -mf16c; run only when
// IsaAvailable(Isa::kAvx2)). A 16-row group is processed as two 8-row halves, the low and
// high 32 bytes of each 64-byte vector of the packed layout.
#include <immintrin.h>

#include <algorithm>

#include "common/check.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/reduce_avx2.h"

namespace tandem::kernels::cpu::internal {
namespace {

using AliasI32 = int32_t __attribute__((may_alias));

// Prefetch distance and hint as in matmul_avx512.cc (where they are measured).
constexpr int64_t kPrefetchBytes = 12288;

inline __m256i Bcast4(const int8_t* p) {
  return _mm256_set1_epi32(*reinterpret_cast<const AliasI32*>(p));
}

// MR activation rows against half `h` (rows 8h..8h+7) of a 16-row weight group.
template <DType kType, int MR>
void HalfGroupTile(const PackedLayout& l, const uint8_t* group, int h, const QuantizedActs& a,
                   int64_t i0, float* y, int64_t ldy, int n_store) {
  constexpr bool kByteTile = HasByteTile(kType);
  constexpr bool kMin = HasMin(kType);
  constexpr int64_t kSpan = SpanBytes(kType);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256 acc[MR];
  for (int r = 0; r < MR; ++r) acc[r] = _mm256_setzero_ps();
  const int8_t* xq0 = a.q + i0 * a.cols;
  const int64_t nb = l.nb;
  for (int64_t b = 0; b < nb; ++b) {
    // Block b's tile, d and m (matmul.h), and this half's 8 rows of each.
    const uint8_t* tile = group + TileOffset(kType, b) + 32 * h;
    const auto* dh = reinterpret_cast<const uint16_t*>(group + DOffset(kType, b)) + 8 * h;
    const auto* mh = reinterpret_cast<const uint16_t*>(group + MOffset(kType, b)) + 8 * h;
    if (h == 0 && b % kSpanBlocks == 0) {  // a span at a time, as in matmul_avx512.cc
      for (int64_t o = 0; o < kSpan; o += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(tile + kPrefetchBytes + o), _MM_HINT_T0);
      }
    }
    __m256i s[MR];
    if constexpr (kType == DType::kQ8_0) {
      for (int r = 0; r < MR; ++r) s[r] = _mm256_setzero_si256();
      const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
#pragma GCC unroll 8
      for (int p = 0; p < 8; ++p) {
        // Back to signed, then |w| (unsigned) times x carrying w's sign: maddubs's pair
        // sums stay below 2 * 128 * 127 and never saturate.
        const __m256i ws = _mm256_xor_si256(
            _mm256_load_si256(reinterpret_cast<const __m256i*>(tile + 64 * p)), flip);
        const __m256i aw = _mm256_abs_epi8(ws);
#pragma GCC unroll 4
        for (int r = 0; r < MR; ++r) {
          const __m256i xs = _mm256_sign_epi8(Bcast4(xq0 + r * a.cols + b * 32 + 4 * p), ws);
          s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xs), ones16));
        }
      }
    } else if constexpr (kByteTile) {
      // Q5_1: unsigned q in [0, 31] goes straight into maddubs. Pair sums are at most
      // 2 * 31 * 127, so four of them fit in int16: each half of the tile sums there, then
      // widens to int32.
#pragma GCC unroll 2
      for (int half = 0; half < 2; ++half) {
        __m256i s16[MR];
        for (int r = 0; r < MR; ++r) s16[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int p = 4 * half; p < 4 * half + 4; ++p) {
          const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(tile + 64 * p));
#pragma GCC unroll 4
          for (int r = 0; r < MR; ++r) {
            const int8_t* xb = xq0 + r * a.cols + b * 32;
            s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(w, Bcast4(xb + 4 * p)));
          }
        }
        for (int r = 0; r < MR; ++r) {
          const __m256i s32 = _mm256_madd_epi16(s16[r], ones16);
          s[r] = half == 0 ? s32 : _mm256_add_epi32(s[r], s32);
        }
      }
    } else {
      // Nibble x int8 pair sums are at most 2 * 15 * 127, so eight of them fit in int16.
      __m256i s16[MR];
      for (int r = 0; r < MR; ++r) s16[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tile + 64 * p));
        const __m256i lo = _mm256_and_si256(v, low4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
#pragma GCC unroll 4
        for (int r = 0; r < MR; ++r) {
          const int8_t* xb = xq0 + r * a.cols + b * 32;
          s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(lo, Bcast4(xb + 4 * p)));
          s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(hi, Bcast4(xb + 16 + 4 * p)));
        }
      }
      for (int r = 0; r < MR; ++r) s[r] = _mm256_madd_epi16(s16[r], ones16);
    }
    const __m256 dv = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(dh)));
    __m256 mv = _mm256_setzero_ps();
    if constexpr (kMin) {
      mv = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(mh)));
    }
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      const int64_t i = i0 + r;
      __m256i si = s[r];
      if (a.bias[i * nb + b] != 0) si = _mm256_add_epi32(si, _mm256_set1_epi32(a.bias[i * nb + b]));
      const __m256 scale = _mm256_mul_ps(dv, _mm256_set1_ps(a.d[i * nb + b]));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(si), scale, acc[r]);
      if constexpr (kMin) acc[r] = _mm256_fmadd_ps(mv, _mm256_set1_ps(a.s[i * nb + b]), acc[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    float* yr = y + (i0 + r) * ldy + 8 * h;
    if (n_store >= 8) {
      _mm256_storeu_ps(yr, acc[r]);
    } else {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, acc[r]);
      std::copy(tmp, tmp + n_store, yr);
    }
  }
}

// Quad k (elements 4k..4k+3) of the 8 rows of a K-quant tile's half that `tile` points to
// (see matmul.h; UnpackKTile in matmul_avx512.cc explains the shifts).
template <DType kType>
inline __m256i UnpackKQuad(const uint8_t* tile, int k) {
  constexpr int kB = KBaseBits(kType), kH = KHighBits(kType);
  const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tile + 64 * (k % kB)));
  __m256i w =
      _mm256_and_si256(_mm256_srli_epi16(v, kB * (k / kB)), _mm256_set1_epi8((1 << kB) - 1));
  if constexpr (kH != 0) {
    const __m256i hv =
        _mm256_load_si256(reinterpret_cast<const __m256i*>(tile + 64 * (kB + k % kH)));
    const int shift = kB - kH * (k / kH);
    const __m256i hs = shift > 0   ? _mm256_slli_epi16(hv, shift)
                       : shift < 0 ? _mm256_srli_epi16(hv, -shift)
                                   : hv;
    w = _mm256_or_si256(
        w, _mm256_and_si256(hs, _mm256_set1_epi8(static_cast<char>(((1 << kH) - 1) << kB))));
  }
  return w;
}

// K-quants (see matmul.h and KGroupTile in matmul_avx512.cc): MR activation rows against
// half `h` of a 16-row group.
template <DType kType, int MR>
void KHalfGroupTile(const PackedLayout& l, const uint8_t* group, int h, const QuantizedActs& a,
                    int64_t i0, float* y, int64_t ldy, int n_store) {
  constexpr bool kMin = HasKMin(kType);
  constexpr bool kSub16 = HasKSub16(kType);
  constexpr int32_t kOff = KOffset(kType);
  // maddubs pair sums are at most 2 * qmax * 127 (Q6_K: 16002), so 2 (Q6_K) or 4 (the
  // others; capped at a 16-element half) of them fit in int16.
  constexpr int kWiden = kType == DType::kQ6_K ? 2 : 4;
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256 acc[MR];
  for (int r = 0; r < MR; ++r) acc[r] = _mm256_setzero_ps();
  const int8_t* xq0 = a.q + i0 * a.cols;
  const int64_t nb = l.nb;
  for (int64_t sbi = 0; sbi < l.n_sb; ++sbi) {
    const uint8_t* sb = group + sbi * l.sb_bytes;
    const __m256 dv =
        _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(sb + l.kd_offset) + h));
    __m256 dminv = _mm256_setzero_ps();
    if constexpr (kMin) {
      dminv = _mm256_cvtph_ps(
          _mm_load_si128(reinterpret_cast<const __m128i*>(sb + l.kdmin_offset) + h));
    }
    if (h == 0) {  // one stream per super-block, one prefetch per line as in GroupTile
      for (int64_t o = 0; o < l.sb_bytes; o += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(sb + kPrefetchBytes + o), _MM_HINT_T0);
      }
    }
    for (int j = 0; j < 8; ++j) {
      const int64_t b = sbi * 8 + j;
      const uint8_t* tile = sb + j * l.qs_bytes + 32 * h;
      // s_a[r]: elements 0..15 of the block, s_b[r]: 16..31, as int32 per row; kWiden
      // maddubs results are summed in int16 before widening.
      __m256i s_a[MR], s_b[MR], s16[MR];
      for (int r = 0; r < MR; ++r) s_a[r] = s_b[r] = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) {
        const __m256i wk = UnpackKQuad<kType>(tile, k);
#pragma GCC unroll 4
        for (int r = 0; r < MR; ++r) {
          const __m256i t = _mm256_maddubs_epi16(wk, Bcast4(xq0 + r * a.cols + b * 32 + 4 * k));
          s16[r] = k % kWiden == 0 ? t : _mm256_add_epi16(s16[r], t);
          if (k % kWiden == kWiden - 1) {
            __m256i& chain = k < 4 ? s_a[r] : s_b[r];
            chain = _mm256_add_epi32(chain, _mm256_madd_epi16(s16[r], ones16));
          }
        }
      }
      if constexpr (!kSub16) {
        for (int r = 0; r < MR; ++r) s_a[r] = _mm256_add_epi32(s_a[r], s_b[r]);
      }
      if constexpr (!kSub16) {
        const __m128i scb = _mm_loadl_epi64(
            reinterpret_cast<const __m128i*>(sb + l.ksc_offset + kGroupRows * j + 8 * h));
        const __m256 scale = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(scb)));
        const __m128i mb = _mm_loadl_epi64(
            reinterpret_cast<const __m128i*>(sb + l.km_offset + kGroupRows * j + 8 * h));
        const __m256 mv = _mm256_mul_ps(dminv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mb)));
        for (int r = 0; r < MR; ++r) {
          const int64_t i = i0 + r;
          acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s_a[r]),
                                   _mm256_mul_ps(scale, _mm256_set1_ps(a.d[i * nb + b])), acc[r]);
          acc[r] = _mm256_fnmadd_ps(mv, _mm256_set1_ps(a.s[i * nb + b]), acc[r]);
        }
      } else {
        const uint8_t* scp = sb + l.ksc_offset + 2 * kGroupRows * j + 8 * h;
        const __m128i ba = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(scp));
        const __m128i bb = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(scp + kGroupRows));
        __m256i sc_a, sc_b;
        __m256 m_a = _mm256_setzero_ps(), m_b = _mm256_setzero_ps();
        if constexpr (kMin) {  // Q2_K: GGUF's byte sc | m << 4
          const __m256i low4 = _mm256_set1_epi32(0xf);
          const __m256i pa = _mm256_cvtepu8_epi32(ba), pb = _mm256_cvtepu8_epi32(bb);
          sc_a = _mm256_and_si256(pa, low4);
          sc_b = _mm256_and_si256(pb, low4);
          m_a = _mm256_mul_ps(dminv, _mm256_cvtepi32_ps(_mm256_srli_epi32(pa, 4)));
          m_b = _mm256_mul_ps(dminv, _mm256_cvtepi32_ps(_mm256_srli_epi32(pb, 4)));
        } else {
          sc_a = _mm256_cvtepi8_epi32(ba);
          sc_b = _mm256_cvtepi8_epi32(bb);
        }
        const __m256 scale_a = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(sc_a));
        const __m256 scale_b = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(sc_b));
        for (int r = 0; r < MR; ++r) {
          const int64_t i = i0 + r;
          const int32_t sums = a.bias[i * nb + b];
          const int32_t sum_a = static_cast<int16_t>(sums & 0xffff), sum_b = sums >> 16;
          const float dx = a.d[i * nb + b];
          const __m256 dxv = _mm256_set1_ps(dx);
          const __m256i ia = _mm256_add_epi32(s_a[r], _mm256_set1_epi32(-kOff * sum_a));
          const __m256i ib = _mm256_add_epi32(s_b[r], _mm256_set1_epi32(-kOff * sum_b));
          acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia), _mm256_mul_ps(scale_a, dxv), acc[r]);
          acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ib), _mm256_mul_ps(scale_b, dxv), acc[r]);
          if constexpr (kMin) {
            acc[r] = _mm256_fnmadd_ps(m_a, _mm256_set1_ps(dx * static_cast<float>(sum_a)), acc[r]);
            acc[r] = _mm256_fnmadd_ps(m_b, _mm256_set1_ps(dx * static_cast<float>(sum_b)), acc[r]);
          }
        }
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    float* yr = y + (i0 + r) * ldy + 8 * h;
    if (n_store >= 8) {
      _mm256_storeu_ps(yr, acc[r]);
    } else {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, acc[r]);
      std::copy(tmp, tmp + n_store, yr);
    }
  }
}

template <DType kType, int MR>
void HalfTile(const PackedLayout& l, const uint8_t* group, int h, const QuantizedActs& a,
              int64_t i0, float* y, int64_t ldy, int n_store) {
  if constexpr (IsKQuant(kType)) {
    KHalfGroupTile<kType, MR>(l, group, h, a, i0, y, ldy, n_store);
  } else {
    HalfGroupTile<kType, MR>(l, group, h, a, i0, y, ldy, n_store);
  }
}

template <DType kType>
void QuantGemmTyped(const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
  const PackedLayout& l = *args.layout;
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* group = args.packed + g * l.group_bytes;
    const int n_valid = static_cast<int>(std::min<int64_t>(kGroupRows, l.rows - g * kGroupRows));
    float* y = args.y + g * kGroupRows;
    for (int h = 0; h < 2; ++h) {
      const int n_store = std::min(8, n_valid - 8 * h);
      if (n_store <= 0) break;
      int64_t i = m0;
      for (; i + 4 <= m1; i += 4) {
        HalfTile<kType, 4>(l, group, h, *args.acts, i, y, args.ldy, n_store);
      }
      for (; i < m1; ++i) HalfTile<kType, 1>(l, group, h, *args.acts, i, y, args.ldy, n_store);
    }
  }
}

inline __m256 LoadFloat8(DType type, const void* base, int64_t k) {
  switch (type) {
    case DType::kF32:
      return _mm256_loadu_ps(static_cast<const float*>(base) + k);
    case DType::kF16:
      return _mm256_cvtph_ps(_mm_loadu_si128(
          reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + k)));
    default: {  // kBF16
      const __m128i h =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + k));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
  }
}

inline float LoadFloat1(DType type, const void* base, int64_t k) {
  switch (type) {
    case DType::kF32:
      return static_cast<const float*>(base)[k];
    case DType::kF16:
      return HalfToFloat(static_cast<const uint16_t*>(base)[k]);
    default:
      return Bf16ToFloat(static_cast<const uint16_t*>(base)[k]);
  }
}

}  // namespace

void QuantizeActsAvx2(const float* x, int32_t offset, const QuantizedActs& a, int64_t begin,
                      int64_t end) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t i = begin; i < end; ++i) {
    const float* xr = x + i * a.cols;
    int8_t* q = a.q + i * a.cols;
    for (int64_t b = 0; b < a.nb; ++b) {
      __m256 v[4];
      __m256 mx = _mm256_setzero_ps();
      for (int j = 0; j < 4; ++j) {
        v[j] = _mm256_loadu_ps(xr + b * 32 + 8 * j);
        mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[j]));
      }
      const float amax = HorizontalMax(mx);
      const float d = amax / 127.f;
      const float id = amax != 0.f ? 1.f / d : 0.f;
      const __m256 idv = _mm256_set1_ps(id);
      __m256i qi[4];
      for (int j = 0; j < 4; ++j) qi[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], idv));
      const __m256i sum4 =
          _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
      const __m256i p01 = _mm256_packs_epi32(qi[0], qi[1]);
      const __m256i p23 = _mm256_packs_epi32(qi[2], qi[3]);
      const __m256i p = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), order);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * 32), p);
      int32_t sum, bias;
      if (offset == kActHalfSums) {
        const int32_t sum_a = HorizontalSum(_mm256_add_epi32(qi[0], qi[1]));
        const int32_t sum_b = HorizontalSum(_mm256_add_epi32(qi[2], qi[3]));
        sum = sum_a + sum_b;
        bias = static_cast<int32_t>((static_cast<uint32_t>(sum_a) & 0xffff) |
                                    static_cast<uint32_t>(sum_b) << 16);
      } else {
        sum = HorizontalSum(sum4);
        bias = offset * sum;
      }
      a.d[i * a.nb + b] = d;
      a.s[i * a.nb + b] = d * static_cast<float>(sum);
      a.bias[i * a.nb + b] = bias;
    }
  }
}

void QuantGemmAvx2(const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
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

void FloatGemmAvx2(const FloatGemmArgs& args, int64_t m0, int64_t m1, int64_t r0, int64_t r1) {
  const int64_t cols = args.cols;
  const int64_t row_bytes = RowBytes(args.type, cols);
  const int64_t vec_end = cols / 8 * 8;
  for (int64_t r = r0; r < r1; ++r) {
    const void* wr = static_cast<const uint8_t*>(args.w) + r * row_bytes;
    int64_t i = m0;
    for (; i < m1; i += 2) {
      const int n = static_cast<int>(std::min<int64_t>(2, m1 - i));
      __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
      const float* x0 = args.x + i * cols;
      const float* x1 = n > 1 ? x0 + cols : x0;
      for (int64_t k = 0; k < vec_end; k += 8) {
        const __m256 wv = LoadFloat8(args.type, wr, k);
        acc0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + k), acc0);
        acc1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x1 + k), acc1);
      }
      float t0 = HorizontalSum(acc0), t1 = HorizontalSum(acc1);
      for (int64_t k = vec_end; k < cols; ++k) {
        const float wk = LoadFloat1(args.type, wr, k);
        t0 += wk * x0[k];
        t1 += wk * x1[k];
      }
      args.y[i * args.ldy + r] = t0;
      if (n > 1) args.y[(i + 1) * args.ldy + r] = t1;
    }
  }
}

}  // namespace tandem::kernels::cpu::internal
