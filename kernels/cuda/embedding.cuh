// Embedding gather kernel (launcher: kernels/cuda/embedding.cu). One block per id; threads
// stride over the row's columns and decode each element from its GGUF block on their own
// (no shared memory: a row is read once). Every supported type dequantizes exactly in f32
// (q * d and (q - 8) * d are exact products of an 8-bit and an 11-bit significand; Q4_1's
// q * d + m rounds once, fused or not, since q * d is exact), so the GPU, the harness and
// DequantizeRow agree bit for bit before the rounding to the activation dtype.
// Thread safety: device code.
#ifndef TANDEM_KERNELS_CUDA_EMBEDDING_CUH_
#define TANDEM_KERNELS_CUDA_EMBEDDING_CUH_

#include "kernels/cuda/embedding.h"
#include "kernels/cuda/quant_matmul.cuh"
#include "kernels/emu/cuda_compat.h"
#include "kernels/quant.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

inline constexpr int kEmbeddingThreads = 128;

// Element j of a row of type kType.
template <DType kType>
__device__ __forceinline__ float DecodeElement(const unsigned char* row, int j) {
  if constexpr (kType == DType::kF32) {
    return reinterpret_cast<const float*>(row)[j];
  } else if constexpr (kType == DType::kF16) {
    return HalfBitsToFloat(reinterpret_cast<const uint16_t*>(row)[j]);
  } else if constexpr (kType == DType::kBF16) {
    return ToFloat(reinterpret_cast<const Bf16*>(row)[j]);
  } else if constexpr (kType == DType::kQ8_0) {
    const auto& b = reinterpret_cast<const BlockQ8_0*>(row)[j / kQuantBlock];
    return static_cast<float>(b.qs[j % kQuantBlock]) * HalfBitsToFloat(b.d);
  } else if constexpr (kType == DType::kQ4_0) {
    const auto& b = reinterpret_cast<const BlockQ4_0*>(row)[j / kQuantBlock];
    const int e = j % kQuantBlock;  // low nibbles hold elements 0..15, high nibbles 16..31
    const int q = e < 16 ? (b.qs[e] & 0xf) : (b.qs[e - 16] >> 4);
    return static_cast<float>(q - 8) * HalfBitsToFloat(b.d);
  } else {
    static_assert(kType == DType::kQ4_1, "unsupported embedding table type");
    const auto& b = reinterpret_cast<const BlockQ4_1*>(row)[j / kQuantBlock];
    const int e = j % kQuantBlock;
    const int q = e < 16 ? (b.qs[e] & 0xf) : (b.qs[e - 16] >> 4);
    return static_cast<float>(q) * HalfBitsToFloat(b.d) + HalfBitsToFloat(b.m);
  }
}

template <typename T, DType kType>
__global__ void __launch_bounds__(kEmbeddingThreads)
    EmbeddingKernel(EmbeddingParams p, int64_t row_bytes) {
  const int32_t id = p.ids[blockIdx.x];
  TANDEM_DEVICE_CHECK(id >= 0 && id < p.table_rows);
  const unsigned char* row = static_cast<const unsigned char*>(p.table) + id * row_bytes;
  T* out = static_cast<T*>(p.out) + static_cast<int64_t>(blockIdx.x) * p.cols;
  for (int j = threadIdx.x; j < p.cols; j += blockDim.x) {
    out[j] = FromFloat<T>(DecodeElement<kType>(row, j));
  }
}

// The packed layout (quant_matmul.h): element (row id, column k) is code q of lane 4 g + t's
// words in column group f of tile (id / 64, k / 64), with its group's (scale, bias) pair.
template <typename T, int kBits>
__global__ void __launch_bounds__(kEmbeddingThreads)
    PackedEmbeddingKernel(PackedEmbeddingParams p) {
  const int32_t id = p.ids[blockIdx.x];
  TANDEM_DEVICE_CHECK(id >= 0 && id < p.table.n);
  constexpr int kWords = kQmLaneWords<kBits>;
  const int f = id % kQmPackTile / 8, g = id % 8;
  const uint32_t* tiles = p.table.q + static_cast<int64_t>(id / kQmPackTile) *
                                          (p.table.k_pad / kQmPackTile) * kQmTileWords<kBits>;
  T* out = static_cast<T*>(p.out) + static_cast<int64_t>(blockIdx.x) * p.table.k;
  for (int k = threadIdx.x; k < p.table.k; k += blockDim.x) {
    const int step = k % kQmPackTile / 16, kk = k % 16;
    const int lane = 4 * g + kk % 8 / 2, reg = kk / 8, upper = kk % 2;
    const uint32_t* words = tiles + static_cast<int64_t>(k / kQmPackTile) * kQmTileWords<kBits> +
                            (f * 32 + lane) * kWords;
    uint32_t q;
    if constexpr (kBits == 4) {
      q = words[step / 2] >> (4 * (2 * (step % 2) + reg) + 16 * upper) & 0xfu;
    } else {
      q = words[step] >> (16 * reg + 8 * upper) & 0xffu;
    }
    float scale, bias;
    QmScaleBias(p.table.scales[static_cast<int64_t>(k / p.table.group) * p.table.n_pad + id], scale,
                bias);
    out[k] = FromFloat<T>(fmaf(static_cast<float>(q), scale, bias));
  }
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_EMBEDDING_CUH_
