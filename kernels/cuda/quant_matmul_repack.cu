// Host-side repack of quantized weights into the QuantMatmul kernels' layout (quant_matmul.h).
// Plain host code,
// built into both tandem_cuda and tandem_cuda_emu like every .cu
// here; runs once per weight at load time.
#include <cmath>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "kernels/cuda/quant_matmul.h"
#include "kernels/quant.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {
namespace {

int64_t RoundUp(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

PackedQuantWeight EmptyPacked(int bits, int64_t n, int64_t k, int group) {
  PackedQuantWeight out;
  out.bits = bits;
  out.n = n;
  out.k = k;
  out.n_pad = RoundUp(n, kQmPackTile);
  out.k_pad = RoundUp(k, kQmPackTile);
  out.group = group;
  out.q.assign(static_cast<size_t>(out.n_pad * out.k_pad * bits / 32), 0u);
  out.scales.assign(static_cast<size_t>(out.k_pad / group * out.n_pad), 0u);
  return out;
}

// Puts code q of (row n, column k) where the layout of quant_matmul.h says.
void PutCode(PackedQuantWeight& out, int64_t n, int64_t k, uint32_t q) {
  const int64_t ntile = n / kQmPackTile, c = k / kQmPackTile;
  const int f = static_cast<int>(n % kQmPackTile) / 8, g = static_cast<int>(n % 8);
  const int kt = static_cast<int>(k % kQmPackTile), kk = kt % 16;
  const int step = kt / 16, reg = kk / 8, t = (kk % 8) / 2, upper = kk % 2;
  const int lane_words = out.bits / 2;
  const int64_t lane_base =
      (((ntile * (out.k_pad / kQmPackTile) + c) * 8 + f) * 32 + 4 * g + t) * lane_words;
  if (out.bits == 4) {  // word step / 2, nibble j or j + 4 for pair j = 2 (step % 2) + reg
    const int j = 2 * (step % 2) + reg;
    out.q[static_cast<size_t>(lane_base + step / 2)] |= q << (4 * j + 16 * upper);
  } else {  // word step, byte 2 reg + upper
    out.q[static_cast<size_t>(lane_base + step)] |= q << (16 * reg + 8 * upper);
  }
}

void PutScale(PackedQuantWeight& out, int64_t n, int64_t group_index, uint16_t scale,
              uint16_t bias) {
  out.scales[static_cast<size_t>(group_index * out.n_pad + n)] =
      static_cast<uint32_t>(scale) | static_cast<uint32_t>(bias) << 16;
}

}  // namespace

// Every quantized type tandem reads (the float types go to the dense GEMM).
bool QuantMatmulTypeSupported(DType t) { return IsSupported(t) && BlockElems(t) > 1; }

int QuantMatmulBits(DType t) {
  switch (t) {
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ2_K:
    case DType::kQ3_K:
    case DType::kQ4_K:
      return 4;
    default:
      return 8;
  }
}

int QuantMatmulGroup(DType t) { return IsKQuant(t) ? KSubBlock(t) : kQuantBlock; }

namespace {

// Puts the pair (scale, bias) of (row n, group g), both already fp16; fails, naming the
// tensor, if the bias overflowed fp16 where the scale did not.
absl::Status PutPair(PackedQuantWeight& out, const WeightDesc& w, int64_t n, int64_t g,
                     uint16_t scale, float bias) {
  const uint16_t b = FloatToHalf(bias);
  if (std::isfinite(HalfToFloat(scale)) && !std::isfinite(HalfToFloat(b))) {
    return absl::InvalidArgumentError(absl::StrCat("quantized matmul repack of ", w.name, ": row ",
                                                   n, " group ", g, " has a bias ", bias,
                                                   " that overflows fp16"));
  }
  PutScale(out, n, g, scale, b);
  return absl::OkStatus();
}

// One 32-element block of a Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 row. Every pair is exact: the
// scale is GGUF's d, the bias -8 d, -16 d or -128 d (a power of two times d) or GGUF's m.
absl::Status PutBlock32(PackedQuantWeight& out, const WeightDesc& w, int64_t n, const uint8_t* row,
                        int64_t b) {
  const int64_t k0 = b * kQuantBlock;
  uint8_t q[kQuantBlock];
  uint16_t d = 0;
  float bias = 0;
  switch (w.type) {
    case DType::kQ4_0: {
      const auto& blk = reinterpret_cast<const BlockQ4_0*>(row)[b];
      for (int e = 0; e < 16; ++e) {  // byte e: element e (low nibble), e + 16 (high)
        q[e] = blk.qs[e] & 0xfu;
        q[e + 16] = blk.qs[e] >> 4;
      }
      d = blk.d;
      bias = -8.f * HalfToFloat(d);
      break;
    }
    case DType::kQ4_1: {
      const auto& blk = reinterpret_cast<const BlockQ4_1*>(row)[b];
      for (int e = 0; e < 16; ++e) {
        q[e] = blk.qs[e] & 0xfu;
        q[e + 16] = blk.qs[e] >> 4;
      }
      d = blk.d;
      bias = HalfToFloat(blk.m);
      break;
    }
    case DType::kQ5_0: {
      const auto& blk = reinterpret_cast<const BlockQ5_0*>(row)[b];
      UnpackQ5(blk.qh, blk.qs, q);
      d = blk.d;
      bias = -16.f * HalfToFloat(d);
      break;
    }
    case DType::kQ5_1: {
      const auto& blk = reinterpret_cast<const BlockQ5_1*>(row)[b];
      UnpackQ5(blk.qh, blk.qs, q);
      d = blk.d;
      bias = HalfToFloat(blk.m);
      break;
    }
    default: {  // Q8_0: signed codes stored as q + 128
      const auto& blk = reinterpret_cast<const BlockQ8_0*>(row)[b];
      for (int e = 0; e < kQuantBlock; ++e) q[e] = static_cast<uint8_t>(blk.qs[e] + 128);
      d = blk.d;
      bias = -128.f * HalfToFloat(d);
      break;
    }
  }
  TANDEM_RETURN_IF_ERROR(PutPair(out, w, n, b, d, bias));
  for (int e = 0; e < kQuantBlock; ++e) PutCode(out, n, k0 + e, q[e]);
  return absl::OkStatus();
}

// One 256-element K-quant super-block: x = (d sc) (q - offset) - dmin m per sub-block of 16 or
// 32. The pair is (d sc, -offset (d sc) - dmin m), each rounded to fp16 once: d sc needs up to
// 11 + 8 significant bits, so this costs at most 2^-11 of the scale (and of the bias), where
// the GGUF types' own pairs above are exact (quant_matmul.h).
absl::Status PutSuperBlock(PackedQuantWeight& out, const WeightDesc& w, int64_t n,
                           const uint8_t* row, int64_t b) {
  KQuantValues v;
  UnpackKQuant(w.type, row + b * BlockBytes(w.type), &v);
  const int sub = KSubBlock(w.type);
  const float offset = static_cast<float>(KOffset(w.type));
  const float d = HalfToFloat(v.d), dmin = HalfToFloat(v.dmin);
  for (int i = 0; i < kSuperBlock / sub; ++i) {
    const uint16_t scale = FloatToHalf(d * static_cast<float>(v.sc[i]));
    const float bias = -offset * HalfToFloat(scale) - dmin * static_cast<float>(v.m[i]);
    TANDEM_RETURN_IF_ERROR(PutPair(out, w, n, b * (kSuperBlock / sub) + i, scale, bias));
  }
  for (int e = 0; e < kSuperBlock; ++e) PutCode(out, n, b * kSuperBlock + e, v.q[e]);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PackedQuantWeight> RepackGguf(const WeightDesc& w) {
  if (!QuantMatmulTypeSupported(w.type)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "quantized matmul repack of ", w.name, ": type ", std::string(DTypeName(w.type)),
        " is not one of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K"));
  }
  const int64_t block = BlockElems(w.type);
  if (w.rows <= 0 || w.cols <= 0 || w.cols % block != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantized matmul repack of ", w.name, ": shape [", w.rows, ", ", w.cols,
                     "] (cols must be a positive multiple of ", block, ")"));
  }
  PackedQuantWeight out =
      EmptyPacked(QuantMatmulBits(w.type), w.rows, w.cols, QuantMatmulGroup(w.type));
  const int64_t row_bytes = RowBytes(w.type, w.cols);
  const int64_t blocks = w.cols / block;
  for (int64_t n = 0; n < w.rows; ++n) {
    const auto* row = static_cast<const uint8_t*>(w.data) + n * row_bytes;
    for (int64_t b = 0; b < blocks; ++b) {
      TANDEM_RETURN_IF_ERROR(IsKQuant(w.type) ? PutSuperBlock(out, w, n, row, b)
                                              : PutBlock32(out, w, n, row, b));
    }
  }
  return out;
}

absl::StatusOr<PackedQuantWeight> RepackAwq(const AwqWeightDesc& w) {
  if (w.group != 32 && w.group != 64 && w.group != 128) {
    return absl::InvalidArgumentError(absl::StrCat("quantized matmul repack of ", w.name,
                                                   ": group ", w.group, " is not 32, 64 or 128"));
  }
  if (w.rows <= 0 || w.cols <= 0 || w.cols % w.group != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantized matmul repack of ", w.name, ": shape [", w.rows, ", ", w.cols,
                     "] (cols must be a positive multiple of ", w.group, ")"));
  }
  PackedQuantWeight out = EmptyPacked(4, w.rows, w.cols, w.group);
  const int64_t groups = w.cols / w.group;
  for (int64_t n = 0; n < w.rows; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const uint16_t scale = w.scale[n * groups + g];
      const uint8_t zero = w.zero[n * groups + g];
      if (zero > 15) {
        return absl::InvalidArgumentError(absl::StrCat(
            "quantized matmul repack of ", w.name, ": row ", n, " group ", g, " has zero ", zero));
      }
      // -z s rounded to fp16: the fused bias costs one fp16 rounding (TurboMind's choice too).
      PutScale(out, n, g, scale, FloatToHalf(-static_cast<float>(zero) * HalfToFloat(scale)));
    }
    for (int64_t k = 0; k < w.cols; ++k) {
      const uint8_t q = w.q[n * w.cols + k];
      if (q > 15) {
        return absl::InvalidArgumentError(absl::StrCat(
            "quantized matmul repack of ", w.name, ": row ", n, " column ", k, " has code ", q));
      }
      PutCode(out, n, k, q);
    }
  }
  return out;
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda
