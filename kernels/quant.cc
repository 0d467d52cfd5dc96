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

// Smallest fp16 value >= v (v >= 0, finite): a scale rounded this way still reaches the
// extreme level, so the quantizers below never clamp the value that set the scale.
uint16_t HalfAtLeast(float v) {
  uint16_t h = FloatToHalf(v);
  if (HalfToFloat(h) < v) ++h;
  return h;
}

bool KHasMin(DType t) { return t == DType::kQ2_K || t == DType::kQ4_K || t == DType::kQ5_K; }

// K-quants with minima (Q2_K, Q4_K, Q5_K): x = d sc q - dmin m with q in [0, qmax] and sc, m
// in [0, lmax]. Each sub-block's range [min(0, min x), max x] is covered: first the minima
// (dmin rounded up, m rounded up, so -dmin m <= the sub-block's minimum), then the scales
// (d and sc rounded up, so -dmin m + qmax d sc >= its maximum), then q rounds to nearest.
// Simpler than llama.cpp's iterative search (make_qkx2_quants), and a little less exact.
void QuantizeKWithMin(const float* x, int sub, int qmax, int lmax, KQuantValues* v) {
  const int nsub = kSuperBlock / sub;
  float lo[16], hi[16];
  float max_neg = 0;
  for (int i = 0; i < nsub; ++i) {
    lo[i] = 0.f;
    hi[i] = x[i * sub];
    for (int j = 0; j < sub; ++j) {
      lo[i] = std::min(lo[i], x[i * sub + j]);
      hi[i] = std::max(hi[i], x[i * sub + j]);
    }
    max_neg = std::max(max_neg, -lo[i]);
  }
  v->dmin = HalfAtLeast(max_neg / static_cast<float>(lmax));
  const float dmin = HalfToFloat(v->dmin);
  float base[16], need[16];
  float max_need = 0;
  for (int i = 0; i < nsub; ++i) {
    const float m = dmin > 0 ? std::ceil(-lo[i] / dmin) : 0.f;
    v->m[i] = static_cast<uint8_t>(std::min<float>(m, static_cast<float>(lmax)));
    base[i] = -(dmin * static_cast<float>(v->m[i]));
    need[i] = std::max(0.f, (hi[i] - base[i]) / static_cast<float>(qmax));
    max_need = std::max(max_need, need[i]);
  }
  v->d = HalfAtLeast(max_need / static_cast<float>(lmax));
  const float d = HalfToFloat(v->d);
  for (int i = 0; i < nsub; ++i) {
    const float sc = d > 0 ? std::ceil(need[i] / d) : 0.f;
    v->sc[i] = static_cast<int8_t>(std::min<float>(sc, static_cast<float>(lmax)));
    const float step = d * static_cast<float>(v->sc[i]);
    const float inv = step > 0 ? 1.f / step : 0.f;
    for (int j = 0; j < sub; ++j) {
      const float q = std::nearbyint((x[i * sub + j] - base[i]) * inv);
      v->q[i * sub + j] = static_cast<uint8_t>(std::clamp<float>(q, 0.f, static_cast<float>(qmax)));
    }
  }
}

// Symmetric K-quants (Q3_K, Q6_K): x = d sc (q - off) with q in [0, 2 off - 1] and
// |sc| <= scmax, 16-element sub-blocks. Like Q4_0, a sub-block's value of largest magnitude
// lands on q = 0 (scale = that value / -off); d and |sc| are rounded up so it stays there.
void QuantizeKSymmetric(const float* x, int off, int scmax, KQuantValues* v) {
  constexpr int kSub = 16;
  float scale[16];
  float max_abs = 0;
  for (int i = 0; i < kSuperBlock / kSub; ++i) {
    float amax = 0, maxv = 0;
    for (int j = 0; j < kSub; ++j) {
      if (std::fabs(x[i * kSub + j]) > amax) {
        amax = std::fabs(x[i * kSub + j]);
        maxv = x[i * kSub + j];
      }
    }
    scale[i] = maxv / static_cast<float>(-off);
    max_abs = std::max(max_abs, std::fabs(scale[i]));
  }
  v->d = HalfAtLeast(max_abs / static_cast<float>(scmax));
  const float d = HalfToFloat(v->d);
  for (int i = 0; i < kSuperBlock / kSub; ++i) {
    const float mag = d > 0 ? std::min<float>(std::ceil(std::fabs(scale[i]) / d), scmax) : 0.f;
    v->sc[i] = static_cast<int8_t>(scale[i] < 0 ? -mag : mag);
    const float step = d * static_cast<float>(v->sc[i]);
    const float inv = step != 0 ? 1.f / step : 0.f;
    for (int j = 0; j < kSub; ++j) {
      const float q = std::nearbyint(x[i * kSub + j] * inv) + static_cast<float>(off);
      v->q[i * kSub + j] =
          static_cast<uint8_t>(std::clamp<float>(q, 0.f, static_cast<float>(2 * off - 1)));
    }
  }
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
    case DType::kQ2_K:
    case DType::kQ3_K:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
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
    case DType::kQ2_K:
      return "Q2_K";
    case DType::kQ3_K:
      return "Q3_K";
    case DType::kQ4_K:
      return "Q4_K";
    case DType::kQ5_K:
      return "Q5_K";
    case DType::kQ6_K:
      return "Q6_K";
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
    case DType::kQ2_K:
    case DType::kQ3_K:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      return kSuperBlock;
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
    case DType::kQ2_K:
      return sizeof(BlockQ2_K);
    case DType::kQ3_K:
      return sizeof(BlockQ3_K);
    case DType::kQ4_K:
      return sizeof(BlockQ4_K);
    case DType::kQ5_K:
      return sizeof(BlockQ5_K);
    case DType::kQ6_K:
      return sizeof(BlockQ6_K);
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

// The bit layouts, element k = 0..255 of a super-block:
//  Q4_K, Q5_K: 64-element chunk c = k / 64 lives in qs[32c .. 32c+31], low nibbles for
//    k % 64 < 32, high nibbles for the rest; Q5_K's fifth bit of element 64c + l (l < 32)
//    is bit 2c of qh[l], of 64c + 32 + l bit 2c + 1. The 8 scales and 8 minima are 6-bit:
//    j < 4: sc = scales[j] & 63, m = scales[j + 4] & 63; j >= 4: the low 4 bits in
//    scales[j + 4] (sc low nibble, m high nibble), the top 2 bits in the top 2 bits of
//    scales[j - 4] (sc) and scales[j] (m).
//  Q2_K, Q3_K: 128-element half h = k / 128, then j = k % 128 / 32 and l = k % 32: the low
//    2 bits are bits 2j..2j+1 of qs[32h + l]; Q3_K's high bit is bit 4h + j of hmask[l].
//    Q3_K's scale i (stored as sc + 32 in [0, 63]) has its low nibble in scales[i % 8] at
//    bit 4 (i / 8), its top 2 bits in scales[8 + i % 4] at bit 2 (i / 4).
//  Q6_K: half h = k / 128, j = k % 128 / 32, l = k % 32: the low nibble is in
//    ql[64h + 32 (j % 2) + l] (low nibble for j < 2, high for j >= 2), the top 2 bits are
//    bits 2j..2j+1 of qh[32h + l].
void UnpackKQuant(DType t, const void* block, KQuantValues* v) {
  *v = KQuantValues{};
  switch (t) {
    case DType::kQ4_K:
    case DType::kQ5_K: {
      const uint8_t* scales;
      const uint8_t* qs;
      const uint8_t* qh = nullptr;
      if (t == DType::kQ4_K) {
        const auto* b = static_cast<const BlockQ4_K*>(block);
        v->d = b->d;
        v->dmin = b->dmin;
        scales = b->scales;
        qs = b->qs;
      } else {
        const auto* b = static_cast<const BlockQ5_K*>(block);
        v->d = b->d;
        v->dmin = b->dmin;
        scales = b->scales;
        qs = b->qs;
        qh = b->qh;
      }
      for (int j = 0; j < 8; ++j) {
        if (j < 4) {
          v->sc[j] = static_cast<int8_t>(scales[j] & 63);
          v->m[j] = scales[j + 4] & 63;
        } else {
          v->sc[j] = static_cast<int8_t>((scales[j + 4] & 0xf) | (scales[j - 4] >> 6) << 4);
          v->m[j] = static_cast<uint8_t>((scales[j + 4] >> 4) | (scales[j] >> 6) << 4);
        }
      }
      for (int c = 0; c < 4; ++c) {
        for (int l = 0; l < 32; ++l) {
          uint8_t lo = qs[32 * c + l] & 0xf, hi = qs[32 * c + l] >> 4;
          if (qh != nullptr) {
            lo |= ((qh[l] >> (2 * c)) & 1) << 4;
            hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
          }
          v->q[64 * c + l] = lo;
          v->q[64 * c + 32 + l] = hi;
        }
      }
      return;
    }
    case DType::kQ2_K: {
      const auto* b = static_cast<const BlockQ2_K*>(block);
      v->d = b->d;
      v->dmin = b->dmin;
      for (int i = 0; i < 16; ++i) {
        v->sc[i] = static_cast<int8_t>(b->scales[i] & 0xf);
        v->m[i] = b->scales[i] >> 4;
      }
      for (int k = 0; k < kSuperBlock; ++k) {
        const int h = k / 128, j = k % 128 / 32, l = k % 32;
        v->q[k] = (b->qs[32 * h + l] >> (2 * j)) & 3;
      }
      return;
    }
    case DType::kQ3_K: {
      const auto* b = static_cast<const BlockQ3_K*>(block);
      v->d = b->d;
      for (int i = 0; i < 16; ++i) {
        const int u = ((b->scales[i % 8] >> (4 * (i / 8))) & 0xf) |
                      ((b->scales[8 + i % 4] >> (2 * (i / 4))) & 3) << 4;
        v->sc[i] = static_cast<int8_t>(u - 32);
      }
      for (int k = 0; k < kSuperBlock; ++k) {
        const int h = k / 128, j = k % 128 / 32, l = k % 32;
        v->q[k] = static_cast<uint8_t>(((b->qs[32 * h + l] >> (2 * j)) & 3) |
                                       ((b->hmask[l] >> (4 * h + j)) & 1) << 2);
      }
      return;
    }
    case DType::kQ6_K: {
      const auto* b = static_cast<const BlockQ6_K*>(block);
      v->d = b->d;
      for (int i = 0; i < 16; ++i) v->sc[i] = b->scales[i];
      for (int k = 0; k < kSuperBlock; ++k) {
        const int h = k / 128, j = k % 128 / 32, l = k % 32;
        const uint8_t low = b->ql[64 * h + 32 * (j % 2) + l] >> (4 * (j / 2));
        v->q[k] = static_cast<uint8_t>((low & 0xf) | ((b->qh[32 * h + l] >> (2 * j)) & 3) << 4);
      }
      return;
    }
    default:
      TANDEM_CHECK(false && "not a K-quant type");
  }
}

void PackKQuant(DType t, const KQuantValues& v, void* block) {
  switch (t) {
    case DType::kQ4_K:
    case DType::kQ5_K: {
      uint8_t scales[12] = {};
      for (int j = 0; j < 8; ++j) {
        const int sc = v.sc[j] & 63, m = v.m[j] & 63;
        if (j < 4) {
          scales[j] |= static_cast<uint8_t>(sc);
          scales[j + 4] |= static_cast<uint8_t>(m);
        } else {
          scales[j + 4] = static_cast<uint8_t>((sc & 0xf) | (m & 0xf) << 4);
          scales[j - 4] |= static_cast<uint8_t>((sc >> 4) << 6);
          scales[j] |= static_cast<uint8_t>((m >> 4) << 6);
        }
      }
      uint8_t qs[128], qh[32] = {};
      for (int c = 0; c < 4; ++c) {
        for (int l = 0; l < 32; ++l) {
          const uint8_t lo = v.q[64 * c + l], hi = v.q[64 * c + 32 + l];
          qs[32 * c + l] = static_cast<uint8_t>((lo & 0xf) | (hi & 0xf) << 4);
          qh[l] |=
              static_cast<uint8_t>(((lo >> 4) & 1) << (2 * c) | ((hi >> 4) & 1) << (2 * c + 1));
        }
      }
      if (t == DType::kQ4_K) {
        auto* b = static_cast<BlockQ4_K*>(block);
        b->d = v.d;
        b->dmin = v.dmin;
        std::memcpy(b->scales, scales, 12);
        std::memcpy(b->qs, qs, 128);
      } else {
        auto* b = static_cast<BlockQ5_K*>(block);
        b->d = v.d;
        b->dmin = v.dmin;
        std::memcpy(b->scales, scales, 12);
        std::memcpy(b->qh, qh, 32);
        std::memcpy(b->qs, qs, 128);
      }
      return;
    }
    case DType::kQ2_K: {
      auto* b = static_cast<BlockQ2_K*>(block);
      b->d = v.d;
      b->dmin = v.dmin;
      for (int i = 0; i < 16; ++i)
        b->scales[i] = static_cast<uint8_t>((v.sc[i] & 0xf) | v.m[i] << 4);
      std::memset(b->qs, 0, sizeof(b->qs));
      for (int k = 0; k < kSuperBlock; ++k) {
        const int h = k / 128, j = k % 128 / 32, l = k % 32;
        b->qs[32 * h + l] |= static_cast<uint8_t>((v.q[k] & 3) << (2 * j));
      }
      return;
    }
    case DType::kQ3_K: {
      auto* b = static_cast<BlockQ3_K*>(block);
      b->d = v.d;
      std::memset(b->scales, 0, sizeof(b->scales));
      for (int i = 0; i < 16; ++i) {
        const int u = (v.sc[i] + 32) & 63;
        b->scales[i % 8] |= static_cast<uint8_t>((u & 0xf) << (4 * (i / 8)));
        b->scales[8 + i % 4] |= static_cast<uint8_t>((u >> 4) << (2 * (i / 4)));
      }
      std::memset(b->qs, 0, sizeof(b->qs));
      std::memset(b->hmask, 0, sizeof(b->hmask));
      for (int k = 0; k < kSuperBlock; ++k) {
        const int h = k / 128, j = k % 128 / 32, l = k % 32;
        b->qs[32 * h + l] |= static_cast<uint8_t>((v.q[k] & 3) << (2 * j));
        b->hmask[l] |= static_cast<uint8_t>(((v.q[k] >> 2) & 1) << (4 * h + j));
      }
      return;
    }
    case DType::kQ6_K: {
      auto* b = static_cast<BlockQ6_K*>(block);
      b->d = v.d;
      for (int i = 0; i < 16; ++i) b->scales[i] = v.sc[i];
      std::memset(b->ql, 0, sizeof(b->ql));
      std::memset(b->qh, 0, sizeof(b->qh));
      for (int k = 0; k < kSuperBlock; ++k) {
        const int h = k / 128, j = k % 128 / 32, l = k % 32;
        b->ql[64 * h + 32 * (j % 2) + l] |= static_cast<uint8_t>((v.q[k] & 0xf) << (4 * (j / 2)));
        b->qh[32 * h + l] |= static_cast<uint8_t>(((v.q[k] >> 4) & 3) << (2 * j));
      }
      return;
    }
    default:
      TANDEM_CHECK(false && "not a K-quant type");
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
  if (IsKQuant(t)) {
    // In gguf-py's (and ggml's) order of float operations, so the results agree bit for bit:
    // (d * sc) * (q - offset), minus dmin * m where the type has minima.
    const int sub = KSubBlock(t), off = KOffset(t);
    const bool has_min = KHasMin(t);
    const auto* p = static_cast<const uint8_t*>(row);
    KQuantValues v;
    for (int64_t i = 0; i < cols / kSuperBlock; ++i, out += kSuperBlock) {
      UnpackKQuant(t, p + i * BlockBytes(t), &v);
      const float d = HalfToFloat(v.d), dmin = HalfToFloat(v.dmin);
      for (int s = 0; s < kSuperBlock / sub; ++s) {
        const float dl = d * static_cast<float>(v.sc[s]);
        const float ml = dmin * static_cast<float>(v.m[s]);
        for (int j = 0; j < sub; ++j) {
          const float x = dl * static_cast<float>(v.q[s * sub + j] - off);
          out[s * sub + j] = has_min ? x - ml : x;
        }
      }
    }
    return;
  }
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
    default:  // the K-quants, handled above
      break;
  }
  TANDEM_CHECK(false && "unsupported dtype");
}

void QuantizeRow(DType t, const float* in, int64_t cols, void* row) {
  if (IsKQuant(t)) {
    auto* p = static_cast<uint8_t*>(row);
    KQuantValues v;
    for (int64_t i = 0; i < cols / kSuperBlock; ++i, in += kSuperBlock) {
      v = KQuantValues{};
      switch (t) {
        case DType::kQ2_K:
          QuantizeKWithMin(in, 16, 3, 15, &v);
          break;
        case DType::kQ4_K:
          QuantizeKWithMin(in, 32, 15, 63, &v);
          break;
        case DType::kQ5_K:
          QuantizeKWithMin(in, 32, 31, 63, &v);
          break;
        case DType::kQ3_K:
          QuantizeKSymmetric(in, 4, 31, &v);
          break;
        default:  // kQ6_K
          QuantizeKSymmetric(in, 32, 127, &v);
          break;
      }
      PackKQuant(t, v, p + i * BlockBytes(t));
    }
    return;
  }
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
    default:  // the K-quants, handled above
      break;
  }
  TANDEM_CHECK(false && "unsupported dtype");
}

}  // namespace tandem::kernels
