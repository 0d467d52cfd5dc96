// Host-side repack of quantized weights into the QuantMatmul kernels' layout (quant_matmul.h).
// Plain host code,
// built into both tandem_cuda and tandem_cuda_emu like every .cu
// here; runs once per weight at load time.
#include <cmath>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
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

bool QuantMatmulTypeSupported(DType t) {
  return t == DType::kQ4_0 || t == DType::kQ4_1 || t == DType::kQ8_0;
}

absl::StatusOr<PackedQuantWeight> RepackGguf(const WeightDesc& w) {
  if (!QuantMatmulTypeSupported(w.type)) {
    return absl::InvalidArgumentError(absl::StrCat("quantized matmul repack of ", w.name, ": type ",
                                                   std::string(DTypeName(w.type)),
                                                   " is not Q4_0, Q4_1 or Q8_0"));
  }
  if (w.rows <= 0 || w.cols <= 0 || w.cols % kQuantBlock != 0) {
    return absl::InvalidArgumentError(absl::StrCat("quantized matmul repack of ", w.name,
                                                   ": shape [", w.rows, ", ", w.cols,
                                                   "] (cols must be a positive multiple of 32)"));
  }
  PackedQuantWeight out = EmptyPacked(w.type == DType::kQ8_0 ? 8 : 4, w.rows, w.cols, kQuantBlock);
  const int64_t row_bytes = RowBytes(w.type, w.cols);
  const int64_t blocks = w.cols / kQuantBlock;
  for (int64_t n = 0; n < w.rows; ++n) {
    const auto* row = static_cast<const uint8_t*>(w.data) + n * row_bytes;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t k0 = b * kQuantBlock;
      if (w.type == DType::kQ4_1) {
        const auto* blk = reinterpret_cast<const BlockQ4_1*>(row) + b;
        PutScale(out, n, b, blk->d, blk->m);
        for (int e = 0; e < 16; ++e) {  // byte e: element e (low nibble), e + 16 (high)
          PutCode(out, n, k0 + e, blk->qs[e] & 0xfu);
          PutCode(out, n, k0 + e + 16, blk->qs[e] >> 4);
        }
        continue;
      }
      // Q4_0 and Q8_0: x = (code - offset) d, bias -offset d, exact in fp16 unless it overflows.
      const bool q8 = w.type == DType::kQ8_0;
      const uint16_t d = q8 ? reinterpret_cast<const BlockQ8_0*>(row)[b].d
                            : reinterpret_cast<const BlockQ4_0*>(row)[b].d;
      const float offset = q8 ? 128.f : 8.f;
      const uint16_t bias = FloatToHalf(-offset * HalfToFloat(d));
      if (std::isfinite(HalfToFloat(d)) && !std::isfinite(HalfToFloat(bias))) {
        return absl::InvalidArgumentError(absl::StrCat(
            "quantized matmul repack of ", w.name, ": row ", n, " block ", b, " has a scale ",
            HalfToFloat(d), " whose bias -", offset, " d overflows fp16"));
      }
      PutScale(out, n, b, d, bias);
      if (q8) {
        const auto* blk = reinterpret_cast<const BlockQ8_0*>(row) + b;
        for (int e = 0; e < kQuantBlock; ++e) {
          PutCode(out, n, k0 + e, static_cast<uint32_t>(blk->qs[e] + 128));
        }
      } else {
        const auto* blk = reinterpret_cast<const BlockQ4_0*>(row) + b;
        for (int e = 0; e < 16; ++e) {
          PutCode(out, n, k0 + e, blk->qs[e] & 0xfu);
          PutCode(out, n, k0 + e + 16, blk->qs[e] >> 4);
        }
      }
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
