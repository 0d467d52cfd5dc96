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

}  // namespace

PackedLayout MakePackedLayout(DType type, int64_t rows, int64_t cols) {
  TANDEM_CHECK(IsQuantized(type));
  TANDEM_CHECK_EQ(cols % kQuantBlock, 0);
  PackedLayout l;
  l.type = type;
  l.rows = rows;
  l.cols = cols;
  l.nb = cols / kQuantBlock;
  l.n_groups = (rows + kGroupRows - 1) / kGroupRows;
  l.qs_bytes = HasByteTile(type) ? 512 : 256;
  l.d_offset = l.nb * l.qs_bytes;
  l.m_offset = l.d_offset + l.nb * kGroupRows * 2;
  const int64_t end = HasMin(type) ? l.m_offset + l.nb * kGroupRows * 2 : l.m_offset;
  l.group_bytes = RoundUp(end, 64);
  return l;
}

void PackQuantized(const PackedLayout& l, const void* gguf_rows, uint8_t* out) {
  const auto* src = static_cast<const uint8_t*>(gguf_rows);
  const int64_t row_bytes = RowBytes(l.type, l.cols);
  const int n_vec = HasByteTile(l.type) ? 8 : 4;
  std::memset(out, 0, l.total_bytes());
  for (int64_t g = 0; g < l.n_groups; ++g) {
    uint8_t* group = out + g * l.group_bytes;
    auto* d = reinterpret_cast<uint16_t*>(group + l.d_offset);
    auto* m = reinterpret_cast<uint16_t*>(group + l.m_offset);
    for (int r = 0; r < kGroupRows; ++r) {
      const int64_t row = g * kGroupRows + r;
      if (row >= l.rows) break;  // padding rows stay zero: d = 0 makes them contribute 0
      for (int64_t b = 0; b < l.nb; ++b) {
        const SrcBlock s = ReadSrcBlock(l.type, src, row_bytes, row, b);
        uint8_t* tile = group + b * l.qs_bytes;
        for (int p = 0; p < n_vec; ++p) {
          for (int e = 0; e < 4; ++e) tile[64 * p + 4 * r + e] = s.bytes[4 * p + e];
        }
        d[b * kGroupRows + r] = s.d;
        if (HasMin(l.type)) m[b * kGroupRows + r] = s.m;
      }
    }
  }
}

void DequantizePackedRow(const PackedLayout& l, const uint8_t* packed, int64_t row, float* out) {
  TANDEM_CHECK(row >= 0 && row < l.rows);
  const int64_t g = row / kGroupRows;
  const int r = static_cast<int>(row % kGroupRows);
  const uint8_t* group = packed + g * l.group_bytes;
  const auto* d = reinterpret_cast<const uint16_t*>(group + l.d_offset);
  const auto* m = reinterpret_cast<const uint16_t*>(group + l.m_offset);
  for (int64_t b = 0; b < l.nb; ++b, out += kQuantBlock) {
    const uint8_t* tile = group + b * l.qs_bytes;
    const float scale = HalfToFloat(d[b * kGroupRows + r]);
    if (HasByteTile(l.type)) {
      // Q5_1 as DequantizeRow computes it (q * d + m), the others as (q + offset) * d.
      const bool has_min = HasMin(l.type);
      const float min = has_min ? HalfToFloat(m[b * kGroupRows + r]) : 0.f;
      for (int p = 0; p < 8; ++p) {
        for (int e = 0; e < 4; ++e) {
          const int byte = tile[64 * p + 4 * r + e];
          out[4 * p + e] = has_min ? byte * scale + min : (byte - 128) * scale;
        }
      }
      continue;
    }
    const float min = HasMin(l.type) ? HalfToFloat(m[b * kGroupRows + r]) : 0.f;
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
      int32_t sum = 0;
      for (int j = 0; j < kQuantBlock; ++j) {
        // nearbyint rounds half to even like cvtps2dq under the default MXCSR.
        const int v = static_cast<int>(std::nearbyint(xr[b * 32 + j] * id));
        q[b * 32 + j] = static_cast<int8_t>(v);
        sum += v;
      }
      a.d[i * a.nb + b] = d;
      a.s[i * a.nb + b] = d * static_cast<float>(sum);
      a.bias[i * a.nb + b] = offset * sum;
    }
  }
}

void QuantGemmScalar(const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
  const PackedLayout& l = *args.layout;
  const QuantizedActs& a = *args.acts;
  const bool byte_tile = HasByteTile(l.type);
  const bool has_min = HasMin(l.type);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* group = args.packed + g * l.group_bytes;
    const auto* dh = reinterpret_cast<const uint16_t*>(group + l.d_offset);
    const auto* mh = reinterpret_cast<const uint16_t*>(group + l.m_offset);
    const int n_valid = static_cast<int>(std::min<int64_t>(kGroupRows, l.rows - g * kGroupRows));
    for (int64_t i = m0; i < m1; ++i) {
      const int8_t* xq = a.q + i * a.cols;
      float acc[kGroupRows] = {};
      float acc_min[kGroupRows] = {};
      for (int64_t b = 0; b < l.nb; ++b) {
        const uint8_t* tile = group + b * l.qs_bytes;
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
          const float scale = HalfToFloat(dh[b * kGroupRows + r]) * dx;
          acc[r] = std::fma(static_cast<float>(dot), scale, acc[r]);
          if (has_min) {
            acc_min[r] =
                std::fma(HalfToFloat(mh[b * kGroupRows + r]), a.s[i * a.nb + b], acc_min[r]);
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
