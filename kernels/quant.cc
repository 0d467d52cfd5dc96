#include "kernels/quant.h"

#include <algorithm>
#include <cmath>

#include "common/check.h"

namespace tandem::kernels {
namespace {

// Inverse of UnpackQ5: low nibbles into qs in Q4_0's order, fifth bits into qh.
void PackQ5(const uint8_t q[32], uint8_t qh[4], uint8_t qs[16]) {
  uint32_t h = 0;
  for (int j = 0; j < 16; ++j) {
    qs[j] = static_cast<uint8_t>((q[j] & 0xf) | (q[j + 16] & 0xf) << 4);
    h |= static_cast<uint32_t>(q[j] >> 4) << j;
    h |= static_cast<uint32_t>(q[j + 16] >> 4) << (j + 16);
  }
  std::memcpy(qh, &h, 4);
}

// The smallest and largest of one block's 32 values (Q4_1's and Q5_1's range).
void BlockMinMax(const float* x, float* mn, float* mx) {
  *mn = *mx = x[0];
  for (int j = 1; j < kQuantBlock; ++j) {
    *mn = std::min(*mn, x[j]);
    *mx = std::max(*mx, x[j]);
  }
}

// The value of largest magnitude among one block's 32 (the first of equals), sign kept: Q4_0's
// and Q5_0's scale is it over the format's most negative level.
float BlockSignedMax(const float* x) {
  float amax = 0, maxv = 0;
  for (int j = 0; j < kQuantBlock; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      maxv = x[j];
    }
  }
  return maxv;
}

}  // namespace

bool IsSupported(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ8_0:
      return true;
  }
  return false;
}

std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kQ4_0:
      return "Q4_0";
    case DType::kQ4_1:
      return "Q4_1";
    case DType::kQ5_0:
      return "Q5_0";
    case DType::kQ5_1:
      return "Q5_1";
    case DType::kQ8_0:
      return "Q8_0";
  }
  return "unknown";
}

int64_t BlockElems(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
      return 1;
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ8_0:
      return kQuantBlock;
  }
  TANDEM_CHECK(false && "unsupported dtype");
}

int64_t BlockBytes(DType t) {
  switch (t) {
    case DType::kF32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kQ4_0:
      return sizeof(BlockQ4_0);
    case DType::kQ4_1:
      return sizeof(BlockQ4_1);
    case DType::kQ5_0:
      return sizeof(BlockQ5_0);
    case DType::kQ5_1:
      return sizeof(BlockQ5_1);
    case DType::kQ8_0:
      return sizeof(BlockQ8_0);
  }
  TANDEM_CHECK(false && "unsupported dtype");
}

void UnpackQ5(const uint8_t qh[4], const uint8_t qs[16], uint8_t q[32]) {
  uint32_t h;
  std::memcpy(&h, qh, 4);
  for (int j = 0; j < 16; ++j) {
    q[j] = static_cast<uint8_t>((qs[j] & 0xf) | ((h >> j) & 1) << 4);
    q[j + 16] = static_cast<uint8_t>((qs[j] >> 4) | ((h >> (j + 16)) & 1) << 4);
  }
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalize
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    // Infinity, or NaN made quiet with its payload kept (what vcvtph2ps does).
    bits = sign | 0x7f800000u | (mant != 0 ? 0x400000u : 0) | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t abs = x & 0x7fffffff;
  if (abs >= 0x7f800000u) {  // inf, or NaN made quiet keeping the payload's top bits
    if (abs == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00);
    return static_cast<uint16_t>(sign | 0x7e00 | ((abs >> 13) & 0x3ff));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00);  // overflow to inf
  if (abs < 0x38800000u) {  // result is subnormal or zero
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - e;  // 14 + (112 - e) + 1 ... into 10-bit mantissa
    uint32_t half_m = m >> (shift - 0);
    // Round to nearest even on the bits shifted out.
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_m & 1))) ++half_m;
    return static_cast<uint16_t>(sign | half_m);
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  const uint32_t rem = r & 0x1fff;
  r >>= 13;
  if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) ++r;
  return static_cast<uint16_t>(sign | r);
}

uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

void DequantizeRow(DType t, const void* row, int64_t cols, float* out) {
  switch (t) {
    case DType::kF32:
      std::memcpy(out, row, cols * 4);
      return;
    case DType::kF16: {
      const auto* h = static_cast<const uint16_t*>(row);
      for (int64_t i = 0; i < cols; ++i) out[i] = HalfToFloat(h[i]);
      return;
    }
    case DType::kBF16: {
      const auto* h = static_cast<const uint16_t*>(row);
      for (int64_t i = 0; i < cols; ++i) out[i] = Bf16ToFloat(h[i]);
      return;
    }
    case DType::kQ4_0: {
      const auto* b = static_cast<const BlockQ4_0*>(row);
      for (int64_t i = 0; i < cols / kQuantBlock; ++i, out += kQuantBlock) {
        const float d = HalfToFloat(b[i].d);
        for (int j = 0; j < 16; ++j) {
          out[j] = ((b[i].qs[j] & 0xf) - 8) * d;
          out[j + 16] = ((b[i].qs[j] >> 4) - 8) * d;
        }
      }
      return;
    }
    case DType::kQ4_1: {
      const auto* b = static_cast<const BlockQ4_1*>(row);
      for (int64_t i = 0; i < cols / kQuantBlock; ++i, out += kQuantBlock) {
        const float d = HalfToFloat(b[i].d);
        const float m = HalfToFloat(b[i].m);
        for (int j = 0; j < 16; ++j) {
          out[j] = (b[i].qs[j] & 0xf) * d + m;
          out[j + 16] = (b[i].qs[j] >> 4) * d + m;
        }
      }
      return;
    }
    case DType::kQ5_0: {
      const auto* b = static_cast<const BlockQ5_0*>(row);
      uint8_t q[32];
      for (int64_t i = 0; i < cols / kQuantBlock; ++i, out += kQuantBlock) {
        const float d = HalfToFloat(b[i].d);
        UnpackQ5(b[i].qh, b[i].qs, q);
        for (int j = 0; j < 32; ++j) out[j] = (q[j] - 16) * d;
      }
      return;
    }
    case DType::kQ5_1: {
      const auto* b = static_cast<const BlockQ5_1*>(row);
      uint8_t q[32];
      for (int64_t i = 0; i < cols / kQuantBlock; ++i, out += kQuantBlock) {
        const float d = HalfToFloat(b[i].d);
        const float m = HalfToFloat(b[i].m);
        UnpackQ5(b[i].qh, b[i].qs, q);
        for (int j = 0; j < 32; ++j) out[j] = q[j] * d + m;
      }
      return;
    }
    case DType::kQ8_0: {
      const auto* b = static_cast<const BlockQ8_0*>(row);
      for (int64_t i = 0; i < cols / kQuantBlock; ++i, out += kQuantBlock) {
        const float d = HalfToFloat(b[i].d);
        for (int j = 0; j < 32; ++j) out[j] = b[i].qs[j] * d;
      }
      return;
    }
  }
  TANDEM_CHECK(false && "unsupported dtype");
}

void QuantizeRow(DType t, const float* in, int64_t cols, void* row) {
  switch (t) {
    case DType::kF32:
      std::memcpy(row, in, cols * 4);
      return;
    case DType::kF16: {
      auto* h = static_cast<uint16_t*>(row);
      for (int64_t i = 0; i < cols; ++i) h[i] = FloatToHalf(in[i]);
      return;
    }
    case DType::kBF16: {
      auto* h = static_cast<uint16_t*>(row);
      for (int64_t i = 0; i < cols; ++i) h[i] = FloatToBf16(in[i]);
      return;
    }
    case DType::kQ4_0: {
      auto* b = static_cast<BlockQ4_0*>(row);
      for (int64_t i = 0; i < cols / kQuantBlock; ++i, in += kQuantBlock) {
        const float maxv = BlockSignedMax(in);
        const float d = maxv / -8;
        const float id = d != 0 ? 1.f / d : 0.f;
        b[i].d = FloatToHalf(d);
        for (int j = 0; j < 16; ++j) {
          const int q0 = std::min(15, static_cast<int>(in[j] * id + 8.5f));
          const int q1 = std::min(15, static_cast<int>(in[j + 16] * id + 8.5f));
          b[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
        }
      }
      return;
    }
    case DType::kQ4_1: {
      auto* b = static_cast<BlockQ4_1*>(row);
      for (int64_t i = 0; i < cols / kQuantBlock; ++i, in += kQuantBlock) {
        float mn, mx;
        BlockMinMax(in, &mn, &mx);
        const float d = (mx - mn) / 15;
        const float id = d != 0 ? 1.f / d : 0.f;
        b[i].d = FloatToHalf(d);
        b[i].m = FloatToHalf(mn);
        for (int j = 0; j < 16; ++j) {
          const int q0 = std::min(15, static_cast<int>((in[j] - mn) * id + 0.5f));
          const int q1 = std::min(15, static_cast<int>((in[j + 16] - mn) * id + 0.5f));
          b[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
        }
      }
      return;
    }
    // The Q5 formats follow ggml's quantize_row_q5_{0,1}_ref, truncating casts included.
    case DType::kQ5_0: {
      auto* b = static_cast<BlockQ5_0*>(row);
      for (int64_t i = 0; i < cols / kQuantBlock; ++i, in += kQuantBlock) {
        const float maxv = BlockSignedMax(in);
        const float d = maxv / -16;
        const float id = d != 0 ? 1.f / d : 0.f;
        b[i].d = FloatToHalf(d);
        uint8_t q[32];
        // The extreme element lands on q = 0; the other side may reach 32, clamped to 31.
        for (int j = 0; j < 32; ++j) q[j] = std::min(31, static_cast<int>(in[j] * id + 16.5f));
        PackQ5(q, b[i].qh, b[i].qs);
      }
      return;
    }
    case DType::kQ5_1: {
      auto* b = static_cast<BlockQ5_1*>(row);
      for (int64_t i = 0; i < cols / kQuantBlock; ++i, in += kQuantBlock) {
        float mn, mx;
        BlockMinMax(in, &mn, &mx);
        const float d = (mx - mn) / 31;
        const float id = d != 0 ? 1.f / d : 0.f;
        b[i].d = FloatToHalf(d);
        b[i].m = FloatToHalf(mn);
        uint8_t q[32];
        // ggml does not clamp here: (mx - mn) * id is 31 plus a few ulps at most, so the
        // clamp never changes a value; it only keeps a fifth bit from spilling.
        for (int j = 0; j < 32; ++j) {
          q[j] = std::min(31, static_cast<int>((in[j] - mn) * id + 0.5f));
        }
        PackQ5(q, b[i].qh, b[i].qs);
      }
      return;
    }
    case DType::kQ8_0: {
      auto* b = static_cast<BlockQ8_0*>(row);
      for (int64_t i = 0; i < cols / kQuantBlock; ++i, in += kQuantBlock) {
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(in[j]));
        const float d = amax / 127;
        const float id = d != 0 ? 1.f / d : 0.f;
        b[i].d = FloatToHalf(d);
        for (int j = 0; j < 32; ++j) b[i].qs[j] = static_cast<int8_t>(std::lround(in[j] * id));
      }
      return;
    }
  }
  TANDEM_CHECK(false && "unsupported dtype");
}

}  // namespace tandem::kernels
