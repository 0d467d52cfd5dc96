// AMX-INT8 kernel of matmul.h (compiled with -mamx-tile -mamx-int8; run only when
// IsaAvailable(Isa::kAmx)). One TDPBSUD per (16 activation rows, 16 weight rows, block):
//   A (tile 1) = 16 activation rows x one block of 32 signed bytes, read in place from the
//                quantized activations (row stride = cols);
//   B (tile 2) = 8 rows of 64 bytes: row k holds elements 4k..4k+3 of each of the 16 weight
//                rows, which is exactly the packed layout's vector k (8-bit tiles of Q8_0,
//                Q5_0, Q5_1: read in place; Q4: the unpacked nibbles, staged in a 512-byte
//                buffer);
//   C (tile 0) = 16 x 16 int32 dot products, scaled per (row, block) with AVX-512 since
//                every block has its own scales.
// Exercised on the Intel Xeon (Sapphire Rapids class) that some sessions run on; the Zen 4/5
// machines have no AMX and never reach it. The scale/accumulate half is the same math as the
// AVX-512 kernel.
#include <immintrin.h>

// GCC 12 reports its own AVX-512 intrinsics (_mm512_undefined_*) as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cstdint>

#include "common/check.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/matmul.h"

namespace tandem::kernels::cpu {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64);

#define TANDEM_TILE_C 0
#define TANDEM_TILE_A 1
#define TANDEM_TILE_B 2

template <DType kType>
void AmxTyped(const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
  constexpr bool kByteTile = HasByteTile(kType);
  constexpr bool kMin = HasMin(kType);
  TANDEM_CHECK_EQ((m1 - m0) % kGroupRows, 0);
  EnsureAmxTileConfig();
  const PackedLayout& l = *args.layout;
  const QuantizedActs& a = *args.acts;
  const int64_t nb = l.nb;
  alignas(64) uint8_t wbuf[512];
  alignas(64) int32_t cbuf[kGroupRows * kGroupRows];
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* group = args.packed + g * l.group_bytes;
    const int64_t n_valid = std::min<int64_t>(kGroupRows, l.rows - g * kGroupRows);
    const __mmask16 mask = static_cast<__mmask16>((1u << n_valid) - 1);
    for (int64_t i0 = m0; i0 < m1; i0 += kGroupRows) {
      __m512 acc[kGroupRows];
      for (int r = 0; r < kGroupRows; ++r) acc[r] = _mm512_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* tile = group + l.tile_offset(b);
        const auto* dh = reinterpret_cast<const uint16_t*>(group + l.d_offset(b));
        const auto* mh = reinterpret_cast<const uint16_t*>(group + l.m_offset(b));
        const uint8_t* bsrc = tile;
        if constexpr (!kByteTile) {
          for (int p = 0; p < 4; ++p) {
            const __m512i v = _mm512_load_si512(tile + 64 * p);
            _mm512_store_si512(wbuf + 64 * p, _mm512_and_si512(v, low4));
            _mm512_store_si512(wbuf + 64 * (p + 4),
                               _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
          }
          bsrc = wbuf;
        }
        _tile_loadd(TANDEM_TILE_B, bsrc, 64);
        _tile_loadd(TANDEM_TILE_A, a.q + i0 * a.cols + b * kQuantBlock, a.cols);
        _tile_zero(TANDEM_TILE_C);
        _tile_dpbsud(TANDEM_TILE_C, TANDEM_TILE_A, TANDEM_TILE_B);
        _tile_stored(TANDEM_TILE_C, cbuf, 64);
        const __m512 dv = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(dh)));
        __m512 mv = _mm512_setzero_ps();
        if constexpr (kMin) {
          mv = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(mh)));
        }
        for (int r = 0; r < kGroupRows; ++r) {
          const int64_t i = i0 + r;
          __m512i c = _mm512_load_si512(cbuf + kGroupRows * r);
          if constexpr (!kMin) c = _mm512_add_epi32(c, _mm512_set1_epi32(a.bias[i * nb + b]));
          const __m512 scale = _mm512_mul_ps(dv, _mm512_set1_ps(a.d[i * nb + b]));
          acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), scale, acc[r]);
          if constexpr (kMin) acc[r] = _mm512_fmadd_ps(mv, _mm512_set1_ps(a.s[i * nb + b]), acc[r]);
        }
      }
      float* y = args.y + g * kGroupRows;
      for (int r = 0; r < kGroupRows; ++r) {
        _mm512_mask_storeu_ps(y + (i0 + r) * args.ldy, mask, acc[r]);
      }
    }
  }
}

}  // namespace

void EnsureAmxTileConfig() {
  thread_local bool loaded = false;
  if (loaded) return;
  TileConfig cfg{};
  cfg.palette_id = 1;
  cfg.rows[TANDEM_TILE_C] = 16;  // 16 activation rows x 16 int32
  cfg.colsb[TANDEM_TILE_C] = 64;
  cfg.rows[TANDEM_TILE_A] = 16;  // 16 activation rows x 32 int8 (one block)
  cfg.colsb[TANDEM_TILE_A] = 32;
  cfg.rows[TANDEM_TILE_B] = 8;  // 8 element quads x 16 weight rows x 4 bytes
  cfg.colsb[TANDEM_TILE_B] = 64;
  // Not _tile_loadconfig: GCC 12 treats its operand as a pointer it does not read through,
  // and at -O2 dead-store elimination dropped every store above but palette_id, so the tiles
  // were configured with zero rows and the first tileloadd raised #UD (seen on an Intel Xeon
  // with AMX). The "m" operand makes the whole 64-byte struct an input of the instruction.
  asm volatile("ldtilecfg %0" : : "m"(cfg));
  loaded = true;
}

namespace internal {

void QuantGemmAmx(const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
  switch (args.layout->type) {
    case DType::kQ4_0:
      return AmxTyped<DType::kQ4_0>(args, m0, m1, g0, g1);
    case DType::kQ4_1:
      return AmxTyped<DType::kQ4_1>(args, m0, m1, g0, g1);
    case DType::kQ5_1:
      return AmxTyped<DType::kQ5_1>(args, m0, m1, g0, g1);
    case DType::kQ8_0:
    case DType::kQ5_0:  // packed as Q8_0's bytes
      return AmxTyped<DType::kQ8_0>(args, m0, m1, g0, g1);
    case DType::kQ2_K:
    case DType::kQ3_K:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:  // no AMX kernel; see QuantGemm in matmul.cc
      return QuantGemmAvx512(args, m0, m1, g0, g1);
    default:
      TANDEM_CHECK(false && "not a quantized type");
  }
}

}  // namespace internal
}  // namespace tandem::kernels::cpu
