#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/check.h"

namespace tandem::kernels::cpu {
namespace {

int64_t RoundUp(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// Block b of row `row` as the bytes of its packed tile (16 for Q4, 32 for 8-bit tiles; see
// matmul.h) and its d and m in half bits.
struct SrcBlock {
  uint8_t bytes[32];
  uint16_t d;
  uint16_t m;
};

SrcBlock ReadSrcBlock(DType type, const uint8_t* rows, int64_t row_bytes, int64_t row, int64_t b) {
  const uint8_t* base = rows + row * row_bytes + b * BlockBytes(type);
  SrcBlock s{};
  switch (type) {
    case DType::kQ4_0: {
      const auto* blk = reinterpret_cast<const BlockQ4_0*>(base);
      std::memcpy(s.bytes, blk->qs, 16);
      s.d = blk->d;
      break;
    }
    case DType::kQ4_1: {
      const auto* blk = reinterpret_cast<const BlockQ4_1*>(base);
      std::memcpy(s.bytes, blk->qs, 16);
      s.d = blk->d;
      s.m = blk->m;
      break;
    }
    case DType::kQ5_0: {
      // q - 16 in [-16, 15] stored as Q8_0 stores an int8: plus 128.
      const auto* blk = reinterpret_cast<const BlockQ5_0*>(base);
      UnpackQ5(blk->qh, blk->qs, s.bytes);
      for (uint8_t& v : s.bytes) v = static_cast<uint8_t>(v - 16 + 128);
      s.d = blk->d;
      break;
    }
    case DType::kQ5_1: {
      const auto* blk = reinterpret_cast<const BlockQ5_1*>(base);
      UnpackQ5(blk->qh, blk->qs, s.bytes);
      s.d = blk->d;
      s.m = blk->m;
      break;
    }
    case DType::kQ8_0: {
      const auto* blk = reinterpret_cast<const BlockQ8_0*>(base);
      for (int j = 0; j < 32; ++j) s.bytes[j] = static_cast<uint8_t>(blk->qs[j]) ^ 0x80;
      s.d = blk->d;
      break;
    }
    default:
      TANDEM_CHECK(false && "not a quantized type");
  }
  return s;
}

// K-quant tiles (see matmul.h): quad k (elements 4k..4k+3) of row r sits in byte 4r + e of
// vector k % B of a B-bit plane, at bit B * (k / B); the base plane holds q's low bits, the
// high plane (if any) the bits above, right after it.
template <typename Fn>
void ForEachKField(DType type, Fn&& fn) {
  const int kb = KBaseBits(type), kh = KHighBits(type);
  for (int k = 0; k < 8; ++k) {
    fn(k, /*vec=*/k % kb, /*shift=*/kb * (k / kb), /*bits=*/kb, /*pos=*/0);
    if (kh != 0) fn(k, kb + k % kh, kh * (k / kh), kh, kb);
  }
}

// Writes the 32 values q[0..31] of row r into a K-quant tile.
void WriteKTile(DType type, const uint8_t* q, int r, uint8_t* tile) {
  ForEachKField(type, [&](int k, int vec, int shift, int bits, int pos) {
    for (int e = 0; e < 4; ++e) {
      const int field = (q[4 * k + e] >> pos) & ((1 << bits) - 1);
      tile[64 * vec + 4 * r + e] |= static_cast<uint8_t>(field << shift);
    }
  });
}

// The inverse: row r's 32 values of a K-quant tile.
void ReadKTile(DType type, const uint8_t* tile, int r, uint8_t* q) {
  std::memset(q, 0, 32);
  ForEachKField(type, [&](int k, int vec, int shift, int bits, int pos) {
    for (int e = 0; e < 4; ++e) {
      const int field = (tile[64 * vec + 4 * r + e] >> shift) & ((1 << bits) - 1);
      q[4 * k + e] = static_cast<uint8_t>(q[4 * k + e] | field << pos);
    }
  });
}

void PackKQuantized(const PackedLayout& l, const uint8_t* src, uint8_t* out) {
  const int64_t row_bytes = RowBytes(l.type, l.cols);
  const int n_sub = kSuperBlock / KSubBlock(l.type);
  KQuantValues v;
  for (int64_t g = 0; g < l.n_groups; ++g) {
    for (int r = 0; r < kGroupRows; ++r) {
      const int64_t row = g * kGroupRows + r;
      if (row >= l.rows) break;  // padding rows stay zero: d = 0 makes them contribute 0
      for (int64_t s = 0; s < l.n_sb; ++s) {
        UnpackKQuant(l.type, src + row * row_bytes + s * BlockBytes(l.type), &v);
        uint8_t* sb = out + g * l.group_bytes + s * l.sb_bytes;
        for (int j = 0; j < 8; ++j) WriteKTile(l.type, v.q + 32 * j, r, sb + j * l.qs_bytes);
        reinterpret_cast<uint16_t*>(sb + l.kd_offset)[r] = v.d;
        if (HasKMin(l.type)) reinterpret_cast<uint16_t*>(sb + l.kdmin_offset)[r] = v.dmin;
        for (int i = 0; i < n_sub; ++i) {
          if (l.type == DType::kQ2_K) {  // GGUF's byte, sc | m << 4
            sb[l.ksc_offset + 16 * i + r] = static_cast<uint8_t>(v.sc[i] | v.m[i] << 4);
            continue;
          }
          sb[l.ksc_offset + 16 * i + r] = static_cast<uint8_t>(v.sc[i]);
          if (HasKMin(l.type)) sb[l.km_offset + 16 * i + r] = v.m[i];
        }
      }
    }
  }
}

// Row r of super-block `sb` back into KQuantValues (q, sc, m, d, dmin).
void ReadKSuperBlock(const PackedLayout& l, const uint8_t* sb, int r, KQuantValues* v) {
  const int n_sub = kSuperBlock / KSubBlock(l.type);
  for (int j = 0; j < 8; ++j) ReadKTile(l.type, sb + j * l.qs_bytes, r, v->q + 32 * j);
  v->d = reinterpret_cast<const uint16_t*>(sb + l.kd_offset)[r];
  v->dmin = HasKMin(l.type) ? reinterpret_cast<const uint16_t*>(sb + l.kdmin_offset)[r] : 0;
  for (int i = 0; i < n_sub; ++i) {
    const uint8_t byte = sb[l.ksc_offset + 16 * i + r];
    if (l.type == DType::kQ2_K) {
      v->sc[i] = static_cast<int8_t>(byte & 0xf);
      v->m[i] = byte >> 4;
    } else {
      v->sc[i] = static_cast<int8_t>(byte);
      v->m[i] = HasKMin(l.type) ? sb[l.km_offset + 16 * i + r] : 0;
    }
  }
}

PackedLayout MakeKLayout(DType type, int64_t rows, int64_t cols) {
  TANDEM_CHECK_EQ(cols % kSuperBlock, 0);
  PackedLayout l;
  l.type = type;
  l.rows = rows;
  l.cols = cols;
  l.nb = cols / kQuantBlock;
  l.n_groups = (rows + kGroupRows - 1) / kGroupRows;
  l.qs_bytes = 64 * (KBaseBits(type) + KHighBits(type));
  l.n_sb = cols / kSuperBlock;
  const int64_t n_sub = kSuperBlock / KSubBlock(type);
  int64_t off = 8 * l.qs_bytes;
  l.kd_offset = off;
  off += 2 * kGroupRows;
  if (HasKMin(type)) {
    l.kdmin_offset = off;
    off += 2 * kGroupRows;
  }
  l.ksc_offset = off;
  off += n_sub * kGroupRows;
  if (type == DType::kQ2_K) {
    l.km_offset = l.ksc_offset;  // sc and m share GGUF's byte
  } else if (HasKMin(type)) {
    l.km_offset = off;
    off += n_sub * kGroupRows;
  }
  l.sb_bytes = RoundUp(off, 64);
  l.group_bytes = l.n_sb * l.sb_bytes;
  return l;
}

}  // namespace

PackedLayout MakePackedLayout(DType type, int64_t rows, int64_t cols) {
  TANDEM_CHECK(IsQuantized(type));
  if (IsKQuant(type)) return MakeKLayout(type, rows, cols);
  TANDEM_CHECK_EQ(cols % kQuantBlock, 0);
  PackedLayout l;
  l.type = type;
  l.rows = rows;
  l.cols = cols;
  l.nb = cols / kQuantBlock;
  l.n_groups = (rows + kGroupRows - 1) / kGroupRows;
  l.qs_bytes = QsBytes(type);
  l.group_bytes = (l.nb + kSpanBlocks - 1) / kSpanBlocks * SpanBytes(type);
  return l;
}

void PackQuantized(const PackedLayout& l, const void* gguf_rows, uint8_t* out) {
  const auto* src = static_cast<const uint8_t*>(gguf_rows);
  const int64_t row_bytes = RowBytes(l.type, l.cols);
  const int n_vec = HasByteTile(l.type) ? 8 : 4;
  std::memset(out, 0, l.total_bytes());
  if (IsKQuant(l.type)) return PackKQuantized(l, src, out);
  for (int64_t g = 0; g < l.n_groups; ++g) {
    uint8_t* group = out + g * l.group_bytes;
    for (int r = 0; r < kGroupRows; ++r) {
      const int64_t row = g * kGroupRows + r;
      if (row >= l.rows) break;  // padding rows stay zero: d = 0 makes them contribute 0
      for (int64_t b = 0; b < l.nb; ++b) {
        const SrcBlock s = ReadSrcBlock(l.type, src, row_bytes, row, b);
        uint8_t* tile = group + l.tile_offset(b);
        for (int p = 0; p < n_vec; ++p) {
          for (int e = 0; e < 4; ++e) tile[64 * p + 4 * r + e] = s.bytes[4 * p + e];
        }
        reinterpret_cast<uint16_t*>(group + l.d_offset(b))[r] = s.d;
        if (HasMin(l.type)) reinterpret_cast<uint16_t*>(group + l.m_offset(b))[r] = s.m;
      }
    }
  }
}

void DequantizePackedRow(const PackedLayout& l, const uint8_t* packed, int64_t row, float* out) {
  TANDEM_CHECK(row >= 0 && row < l.rows);
  const int64_t g = row / kGroupRows;
  const int r = static_cast<int>(row % kGroupRows);
  const uint8_t* group = packed + g * l.group_bytes;
  if (IsKQuant(l.type)) {
    // DequantizeRow's formula and order of operations, so the results are identical.
    const int sub = KSubBlock(l.type), off = KOffset(l.type);
    KQuantValues v;
    for (int64_t s = 0; s < l.n_sb; ++s, out += kSuperBlock) {
      ReadKSuperBlock(l, group + s * l.sb_bytes, r, &v);
      const float d = HalfToFloat(v.d), dmin = HalfToFloat(v.dmin);
      for (int i = 0; i < kSuperBlock / sub; ++i) {
        const float dl = d * static_cast<float>(v.sc[i]);
        const float ml = dmin * static_cast<float>(v.m[i]);
        for (int j = 0; j < sub; ++j) {
          const float x = dl * static_cast<float>(v.q[i * sub + j] - off);
          out[i * sub + j] = HasKMin(l.type) ? x - ml : x;
        }
      }
    }
    return;
  }
  for (int64_t b = 0; b < l.nb; ++b, out += kQuantBlock) {
    const uint8_t* tile = group + l.tile_offset(b);
    const auto* m = reinterpret_cast<const uint16_t*>(group + l.m_offset(b));
    const float scale = HalfToFloat(reinterpret_cast<const uint16_t*>(group + l.d_offset(b))[r]);
    if (HasByteTile(l.type)) {
      // Q5_1 as DequantizeRow computes it (q * d + m), the others as (q + offset) * d.
      const bool has_min = HasMin(l.type);
      const float min = has_min ? HalfToFloat(m[r]) : 0.f;
      for (int p = 0; p < 8; ++p) {
        for (int e = 0; e < 4; ++e) {
          const int byte = tile[64 * p + 4 * r + e];
          out[4 * p + e] = has_min ? byte * scale + min : (byte - 128) * scale;
        }
      }
      continue;
    }
    const float min = HasMin(l.type) ? HalfToFloat(m[r]) : 0.f;
    const int off = l.type == DType::kQ4_0 ? -8 : 0;
    for (int p = 0; p < 4; ++p) {
      for (int e = 0; e < 4; ++e) {
        const uint8_t byte = tile[64 * p + 4 * r + e];
        out[4 * p + e] = ((byte & 0xf) + off) * scale + min;
        out[16 + 4 * p + e] = ((byte >> 4) + off) * scale + min;
      }
    }
  }
}

int32_t ActOffset(DType type, Isa isa) {
  switch (type) {
    case DType::kQ4_0:
      return -8;
    case DType::kQ4_1:
    case DType::kQ5_1:
      return 0;
    case DType::kQ8_0:
    case DType::kQ5_0:  // packed as Q8_0's bytes
      // AVX2's maddubs would saturate on q + 128, so that kernel flips the weights back to
      // signed and needs no offset.
      return isa == Isa::kAvx2 ? 0 : -128;
    case DType::kQ4_K:
    case DType::kQ5_K:  // the minimum term uses s
      return 0;
    case DType::kQ2_K:
    case DType::kQ3_K:
    case DType::kQ6_K:
      return kActHalfSums;
    default:
      TANDEM_CHECK(false && "not a quantized type");
  }
  return 0;
}

void QuantizeActs(Isa isa, const float* x, int32_t offset, const QuantizedActs& a, int64_t begin,
                  int64_t end) {
  switch (isa) {
    case Isa::kAmx:
    case Isa::kAvx512:
      return internal::QuantizeActsAvx512(x, offset, a, begin, end);
    case Isa::kAvx2:
      return internal::QuantizeActsAvx2(x, offset, a, begin, end);
    case Isa::kScalar:
      return internal::QuantizeActsScalar(x, offset, a, begin, end);
  }
}

void QuantGemm(Isa isa, const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
  switch (isa) {
    case Isa::kAmx: {
      // The K-quants have no AMX kernel: their sub-block scales would have to be applied
      // per 16 or 32 elements between tile products anyway.
      if (IsKQuant(args.layout->type)) return internal::QuantGemmAvx512(args, m0, m1, g0, g1);
      // Tiles of 16 activation rows go to AMX; a ragged tail is cheaper on VNNI.
      const int64_t full_end = m0 + (m1 - m0) / kGroupRows * kGroupRows;
      if (full_end > m0) internal::QuantGemmAmx(args, m0, full_end, g0, g1);
      if (full_end < m1) internal::QuantGemmAvx512(args, full_end, m1, g0, g1);
      return;
    }
    case Isa::kAvx512:
      return internal::QuantGemmAvx512(args, m0, m1, g0, g1);
    case Isa::kAvx2:
      return internal::QuantGemmAvx2(args, m0, m1, g0, g1);
    case Isa::kScalar:
      return internal::QuantGemmScalar(args, m0, m1, g0, g1);
  }
}

void FloatGemm(Isa isa, const FloatGemmArgs& args, int64_t m0, int64_t m1, int64_t r0, int64_t r1) {
  switch (isa) {
    case Isa::kAmx:
    case Isa::kAvx512:
      return internal::FloatGemmAvx512(args, m0, m1, r0, r1);
    case Isa::kAvx2:
      return internal::FloatGemmAvx2(args, m0, m1, r0, r1);
    case Isa::kScalar:
      return internal::FloatGemmScalar(args, m0, m1, r0, r1);
  }
}

namespace internal {

void QuantizeActsScalar(const float* x, int32_t offset, const QuantizedActs& a, int64_t begin,
                        int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float* xr = x + i * a.cols;
    int8_t* q = a.q + i * a.cols;
    for (int64_t b = 0; b < a.nb; ++b) {
      float amax = 0.f;
      for (int j = 0; j < kQuantBlock; ++j) amax = std::max(amax, std::fabs(xr[b * 32 + j]));
      const float d = amax / 127.f;
      const float id = amax != 0.f ? 1.f / d : 0.f;
      int32_t half[2] = {0, 0};
      for (int j = 0; j < kQuantBlock; ++j) {
        // nearbyint rounds half to even like cvtps2dq under the default MXCSR.
        const int v = static_cast<int>(std::nearbyint(xr[b * 32 + j] * id));
        q[b * 32 + j] = static_cast<int8_t>(v);
        half[j / 16] += v;
      }
      const int32_t sum = half[0] + half[1];
      a.d[i * a.nb + b] = d;
      a.s[i * a.nb + b] = d * static_cast<float>(sum);
      a.bias[i * a.nb + b] = offset == kActHalfSums
                                 ? static_cast<int32_t>((static_cast<uint32_t>(half[0]) & 0xffff) |
                                                        static_cast<uint32_t>(half[1]) << 16)
                                 : offset * sum;
    }
  }
}

// K-quants: per 32-element block b and row r, with the block's integer dot products
// dot_a (elements 0..15) and dot_b (16..31),
//   32-element sub-blocks:  acc += (d sc) dx (dot_a + dot_b) - (dmin m) s
//   16-element sub-blocks:  acc += (d sc_a) dx (dot_a - off sum_a) + (d sc_b) dx (...)
//                                  - (dmin m_a) dx sum_a - (dmin m_b) dx sum_b
// with sum_a, sum_b the activation's half-block sums (QuantizedActs::bias).
static void KGemmScalar(const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
  const PackedLayout& l = *args.layout;
  const QuantizedActs& a = *args.acts;
  const bool has_min = HasKMin(l.type);
  const bool sub16 = HasKSub16(l.type);
  const int32_t off = KOffset(l.type);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* group = args.packed + g * l.group_bytes;
    const int n_valid = static_cast<int>(std::min<int64_t>(kGroupRows, l.rows - g * kGroupRows));
    for (int64_t i = m0; i < m1; ++i) {
      const int8_t* xq = a.q + i * a.cols;
      float acc[kGroupRows] = {};
      for (int64_t s = 0; s < l.n_sb; ++s) {
        const uint8_t* sb = group + s * l.sb_bytes;
        const auto* dh = reinterpret_cast<const uint16_t*>(sb + l.kd_offset);
        const auto* dminh = reinterpret_cast<const uint16_t*>(sb + l.kdmin_offset);
        const auto* sc = reinterpret_cast<const int8_t*>(sb + l.ksc_offset);
        const uint8_t* m = sb + l.km_offset;
        for (int j = 0; j < 8; ++j) {
          const int64_t b = s * 8 + j;
          const int8_t* xb = xq + b * kQuantBlock;
          const float dx = a.d[i * a.nb + b];
          const int32_t packed_sums = a.bias[i * a.nb + b];
          const int32_t sum_a = static_cast<int16_t>(packed_sums & 0xffff);
          const int32_t sum_b = packed_sums >> 16;
          for (int r = 0; r < n_valid; ++r) {
            uint8_t q[32];
            ReadKTile(l.type, sb + j * l.qs_bytes, r, q);
            int32_t dot_a = 0, dot_b = 0;
            for (int e = 0; e < 16; ++e) {
              dot_a += q[e] * xb[e];
              dot_b += q[16 + e] * xb[16 + e];
            }
            const float d = HalfToFloat(dh[r]);
            const float dmin = has_min ? HalfToFloat(dminh[r]) : 0.f;
            if (!sub16) {
              const float scale = d * static_cast<float>(sc[16 * j + r]) * dx;
              acc[r] = std::fma(static_cast<float>(dot_a + dot_b), scale, acc[r]);
              const float ml = dmin * static_cast<float>(m[16 * j + r]);
              acc[r] = std::fma(-ml, a.s[i * a.nb + b], acc[r]);
              continue;
            }
            const int ia = 32 * j + r, ib = 32 * j + 16 + r;  // sub-blocks 2j, 2j + 1
            // Q2_K (the only 16-element type with minima) packs sc | m << 4.
            const int sc_a = has_min ? m[ia] & 0xf : sc[ia];
            const int sc_b = has_min ? m[ib] & 0xf : sc[ib];
            const int m_a = has_min ? m[ia] >> 4 : 0, m_b = has_min ? m[ib] >> 4 : 0;
            const float scale_a = d * static_cast<float>(sc_a) * dx;
            const float scale_b = d * static_cast<float>(sc_b) * dx;
            acc[r] = std::fma(static_cast<float>(dot_a - off * sum_a), scale_a, acc[r]);
            acc[r] = std::fma(static_cast<float>(dot_b - off * sum_b), scale_b, acc[r]);
            if (has_min) {
              acc[r] = std::fma(-(dmin * static_cast<float>(m_a)), dx * static_cast<float>(sum_a),
                                acc[r]);
              acc[r] = std::fma(-(dmin * static_cast<float>(m_b)), dx * static_cast<float>(sum_b),
                                acc[r]);
            }
          }
        }
      }
      float* yr = args.y + i * args.ldy + g * kGroupRows;
      for (int r = 0; r < n_valid; ++r) yr[r] = acc[r];
    }
  }
}

void QuantGemmScalar(const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
  const PackedLayout& l = *args.layout;
  const QuantizedActs& a = *args.acts;
  if (IsKQuant(l.type)) return KGemmScalar(args, m0, m1, g0, g1);
  const bool byte_tile = HasByteTile(l.type);
  const bool has_min = HasMin(l.type);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* group = args.packed + g * l.group_bytes;
    const int n_valid = static_cast<int>(std::min<int64_t>(kGroupRows, l.rows - g * kGroupRows));
    for (int64_t i = m0; i < m1; ++i) {
      const int8_t* xq = a.q + i * a.cols;
      float acc[kGroupRows] = {};
      float acc_min[kGroupRows] = {};
      for (int64_t b = 0; b < l.nb; ++b) {
        const uint8_t* tile = group + l.tile_offset(b);
        const auto* dh = reinterpret_cast<const uint16_t*>(group + l.d_offset(b));
        const auto* mh = reinterpret_cast<const uint16_t*>(group + l.m_offset(b));
        const int8_t* xb = xq + b * kQuantBlock;
        const float dx = a.d[i * a.nb + b];
        for (int r = 0; r < n_valid; ++r) {
          int32_t dot = 0;
          if (byte_tile) {
            for (int p = 0; p < 8; ++p) {
              for (int e = 0; e < 4; ++e) dot += tile[64 * p + 4 * r + e] * xb[4 * p + e];
            }
          } else {
            for (int p = 0; p < 4; ++p) {
              for (int e = 0; e < 4; ++e) {
                const uint8_t byte = tile[64 * p + 4 * r + e];
                dot += (byte & 0xf) * xb[4 * p + e] + (byte >> 4) * xb[16 + 4 * p + e];
              }
            }
          }
          dot += a.bias[i * a.nb + b];
          const float scale = HalfToFloat(dh[r]) * dx;
          acc[r] = std::fma(static_cast<float>(dot), scale, acc[r]);
          if (has_min) {
            acc_min[r] = std::fma(HalfToFloat(mh[r]), a.s[i * a.nb + b], acc_min[r]);
          }
        }
      }
      float* yr = args.y + i * args.ldy + g * kGroupRows;
      for (int r = 0; r < n_valid; ++r) yr[r] = acc[r] + acc_min[r];
    }
  }
}

void FloatGemmScalar(const FloatGemmArgs& args, int64_t m0, int64_t m1, int64_t r0, int64_t r1) {
  const int64_t cols = args.cols;
  const int64_t row_bytes = RowBytes(args.type, cols);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = static_cast<const uint8_t*>(args.w) + r * row_bytes;
    for (int64_t i = m0; i < m1; ++i) {
      const float* xr = args.x + i * cols;
      float acc = 0.f;
      switch (args.type) {
        case DType::kF32: {
          const auto* w = reinterpret_cast<const float*>(wr);
          for (int64_t k = 0; k < cols; ++k) acc = std::fma(w[k], xr[k], acc);
          break;
        }
        case DType::kF16: {
          const auto* w = reinterpret_cast<const uint16_t*>(wr);
          for (int64_t k = 0; k < cols; ++k) acc = std::fma(HalfToFloat(w[k]), xr[k], acc);
          break;
        }
        case DType::kBF16: {
          const auto* w = reinterpret_cast<const uint16_t*>(wr);
          for (int64_t k = 0; k < cols; ++k) acc = std::fma(Bf16ToFloat(w[k]), xr[k], acc);
          break;
        }
        default:
          TANDEM_CHECK(false && "not a float type");
      }
      args.y[i * args.ldy + r] = acc;
    }
  }
}

}  // namespace internal
}  // namespace tandem::kernels::cpu
