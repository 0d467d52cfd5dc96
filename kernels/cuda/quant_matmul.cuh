// Weight-only quantized matmul kernels (launcher: kernels/cuda/quant_matmul.cu; weight layout:
// quant_matmul.h), templated on the activation type T (Half, Bf16), the code width kBits (4,
// 8) and the group size kGroup (16, 32, 64, 128).
//   * GEMM (any m): a block of 4 warps computes a 64 x 64 tile of y. k advances in steps of 64
//     through a 3-stage cp.async pipeline (activation tile 64 x 64, weight tile 2 or 4 KiB, the
//     tile's one, two or four rows of scale pairs), so two tiles are in flight while one is
//     used.
//     Warps sit 2 x 2, each owning 32 rows x 32 columns (2 x 4 mma tiles of 16 x 8). Per tile
//     a lane reads its words for each of its 4 column groups of 8 with one vector load from
//     shared memory, and per 32 k dequantizes 8 codes per column group in registers (code *
//     scale + bias by fmaf in f32, rounded to T; with groups of 16 each k16 step has its own
//     pair), which are the B registers of two k16 steps as they stand; A comes from shared memory
//     by ldmatrix.x4 (rows padded to 72 elements: the 8 rows of one 8 x 8 matrix fall in distinct
//     banks). mma.sync m16n8k16 accumulates in f32; y is rounded once.
//   * GEMV (m <= 8, decode): no tensor cores. A warp owns 8 output rows (one packed column
//     group): per 64 k each lane loads its words with one 8- or 16-byte load (256 or 512
//     coalesced bytes per warp), dequantizes 16 weights in f32 (not rounded to T) and
//     multiply-adds them with the m activation rows (32-bit loads of element pairs) in f32;
//     the 4 lanes of a row then add their sums by shuffles.
// Codes become floats without a conversion instruction: 0x4B000000 | q is the float 2^23 + q.
// Thread safety: device code.
#ifndef TANDEM_KERNELS_CUDA_QUANT_MATMUL_CUH_
#define TANDEM_KERNELS_CUDA_QUANT_MATMUL_CUH_

#include "kernels/cuda/quant_matmul.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/emu/cuda_compat.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

inline constexpr int kQmThreads = 128;
inline constexpr int kQmStages = 3;
inline constexpr int kQmTile = kQmPackTile;  // GEMM tile: m, n and k
inline constexpr int kQmARow = kQmTile + 8;  // activation tile row stride, elements
inline constexpr float kTwoPow23 = 8388608.f;

// Rows of scale pairs (groups) per 64-column k tile: 4 for groups of 16, 2 for 32, else 1.
template <int kGroup>
inline constexpr int kQmScaleRows = kGroup <= 16   ? 4
                                    : kGroup == 32 ? 2
                                                   : 1;
// The scale-pair row of a tile that k16 step `step` (0..3) reads.
template <int kGroup>
__device__ __forceinline__ constexpr int QmScaleRow(int step) {
  return kGroup <= 16 ? step : kGroup == 32 ? step / 2 : 0;
}

// uint32 words per lane and column group of one packed tile, and per tile.
template <int kBits>
inline constexpr int kQmLaneWords = kBits / 2;
template <int kBits>
inline constexpr int kQmTileWords = 8 * 32 * kQmLaneWords<kBits>;

// Two adjacent activation elements, loaded as one 32-bit word.
template <typename T>
struct alignas(4) ActPair {
  T lo, hi;
};
// A lane's words of one packed tile, loaded with one vector load.
template <int kBits>
struct alignas(4 * kQmLaneWords<kBits>) QmLaneWords {
  uint32_t w[kQmLaneWords<kBits>];
};

// The code of pair j (= 2 (step % 2) + register) of k half h (steps 2h, 2h + 1), lower
// (upper = 0) or upper k, as a float.
template <int kBits>
__device__ __forceinline__ float QmCode(const QmLaneWords<kBits>& lw, int h, int j, int upper) {
  uint32_t q;
  if constexpr (kBits == 4) {
    q = (lw.w[h] >> (4 * j + 16 * upper)) & 0xfu;
  } else {
    static_assert(kBits == 8, "4- or 8-bit codes");
    q = (lw.w[2 * h + j / 2] >> (16 * (j % 2) + 8 * upper)) & 0xffu;
  }
  return __int_as_float(static_cast<int>(0x4B000000u | q)) - kTwoPow23;
}

__device__ __forceinline__ void QmScaleBias(uint32_t pair, float& scale, float& bias) {
  scale = HalfBitsToFloat(static_cast<uint16_t>(pair & 0xffffu));
  bias = HalfBitsToFloat(static_cast<uint16_t>(pair >> 16));
}

// Per-thread source addresses of the GEMM's cp.async copies, fixed for the whole k loop (kept
// out of the loop so the pipeline carries no address arithmetic across it).
template <typename T>
struct QmGemmSources {
  const T* a[4];      // activation chunk i (row tid / 8 + 16 i, chunk tid % 8) of tile 0, or x
  int a_bytes[4];     // 16 (copy) or 0 (row past m: zero-fill)
  const uint32_t* w;  // this thread's first 16 bytes of the block's first weight tile
  const uint32_t* s;  // this thread's 16 bytes of scale pairs of tile 0 (group row tid / 16)
};

// Issues the cp.async copies of k tile `c` into pipeline stage `stage` (no commit).
template <typename T, int kBits, int kGroup>
__device__ __forceinline__ void QmGemmLoadStage(const QmGemmSources<T>& src, int k, int n_pad,
                                                T* a_tile, uint32_t* w_tile, uint32_t* s_tile,
                                                int stage, int c) {
  const int tid = threadIdx.x;
  // Activations: 64 rows x 8 chunks of 16 bytes; rows past m and columns past k read as zeros.
  const bool k_valid = c * kQmTile + (tid % 8) * 8 < k;
  TANDEM_UNROLL
  for (int i = 0; i < 4; ++i) {
    const bool valid = k_valid && src.a_bytes[i] != 0;
    CpAsyncCg16(a_tile + (stage * kQmTile + tid / 8 + 16 * i) * kQmARow + (tid % 8) * 8,
                valid ? src.a[i] + c * kQmTile : src.a[i], valid ? 16 : 0);
  }
  // Weights: one contiguous tile, 16 bytes per thread per 2 KiB.
  constexpr int kTileWords = kQmTileWords<kBits>;
  TANDEM_UNROLL
  for (int i = 0; i < kTileWords / (4 * kQmThreads); ++i) {
    CpAsyncCg16(w_tile + stage * kTileWords + i * 4 * kQmThreads + tid * 4,
                src.w + static_cast<int64_t>(c) * kTileWords + i * 4 * kQmThreads);
  }
  // Scale pairs: the tile's groups (four of 16, two of 32, or one of 64 or 128), 64 columns
  // each.
  constexpr int kRows = kQmScaleRows<kGroup>;
  if (tid < kRows * 16) {
    CpAsyncCa<16>(s_tile + (stage * kRows + tid / 16) * kQmTile + (tid % 16) * 4,
                  src.s + static_cast<int64_t>(c * kQmTile / kGroup) * n_pad);
  }
}

template <typename T, int kBits, int kGroup>
__global__ void __launch_bounds__(kQmThreads) QmGemmKernel(QuantMatmulParams p) {
  constexpr int kTileWords = kQmTileWords<kBits>;
  TANDEM_SHARED(T, a_tile, kQmStages * kQmTile * kQmARow);
  TANDEM_SHARED(uint32_t, w_tile, kQmStages * kTileWords);
  constexpr int kScaleRows = kQmScaleRows<kGroup>;
  TANDEM_SHARED(uint32_t, s_tile, kQmStages * kScaleRows * kQmTile);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_m = warp % 2, warp_n = warp / 2;
  const int ntile = blockIdx.x;
  const int m0 = blockIdx.y * kQmTile;
  const int kchunks = p.w.k_pad / kQmTile;
  // Warp-uniform: 16-row mma tiles wholly past m are skipped.
  const int rows_left = p.m - m0 - warp_m * 32;
  const int live_mi = rows_left <= 0 ? 0 : rows_left <= 16 ? 1 : 2;

  QmGemmSources<T> src;
  {
    const T* x = static_cast<const T*>(p.x);
    TANDEM_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int gm = m0 + tid / 8 + 16 * i;
      src.a_bytes[i] = gm < p.m ? 16 : 0;
      src.a[i] = gm < p.m ? x + static_cast<int64_t>(gm) * p.w.k + (tid % 8) * 8 : x;
    }
    src.w = p.w.q + static_cast<int64_t>(ntile) * kchunks * kTileWords + tid * 4;
    src.s =
        p.w.scales + static_cast<int64_t>(tid / 16) * p.w.n_pad + ntile * kQmTile + (tid % 16) * 4;
  }

  float acc[2][4][4] = {};
  TANDEM_UNROLL
  for (int s = 0; s < kQmStages - 1; ++s) {
    if (s < kchunks) {
      QmGemmLoadStage<T, kBits, kGroup>(src, p.w.k, p.w.n_pad, a_tile, w_tile, s_tile, s, s);
    }
    CpAsyncCommit();  // empty groups too, so that the wait below counts tiles
  }
  for (int c = 0; c < kchunks; ++c) {
    CpAsyncWait<kQmStages - 2>();  // this thread's copies of tile c have landed
    __syncthreads();  // everyone's have; and every warp is done with tile c - 1's stage
    const int next = c + kQmStages - 1;
    if (next < kchunks) {
      QmGemmLoadStage<T, kBits, kGroup>(src, p.w.k, p.w.n_pad, a_tile, w_tile, s_tile,
                                        next % kQmStages, next);
    }
    CpAsyncCommit();
    const int stage = c % kQmStages;
    if (live_mi == 0) continue;
    QmLaneWords<kBits> words[4];
    TANDEM_UNROLL
    for (int j = 0; j < 4; ++j) {
      words[j] = reinterpret_cast<const QmLaneWords<kBits>*>(
          w_tile + stage * kTileWords)[(warp_n * 4 + j) * 32 + lane];
    }
    TANDEM_UNROLL
    for (int h = 0; h < 2; ++h) {
      uint32_t b[4][4];  // [column group][pair j = 2 step + register]
      TANDEM_UNROLL
      for (int j = 0; j < 4; ++j) {
        // The pairs of this half's two k16 steps (one pair unless groups are of 16).
        float scale[2], bias[2];
        const int col = (warp_n * 4 + j) * 8 + lane / 4;
        QmScaleBias(s_tile[(stage * kScaleRows + QmScaleRow<kGroup>(2 * h)) * kQmTile + col],
                    scale[0], bias[0]);
        if constexpr (kGroup <= 16) {
          QmScaleBias(s_tile[(stage * kScaleRows + QmScaleRow<kGroup>(2 * h + 1)) * kQmTile + col],
                      scale[1], bias[1]);
        } else {
          scale[1] = scale[0];
          bias[1] = bias[0];
        }
        TANDEM_UNROLL
        for (int pj = 0; pj < 4; ++pj) {
          b[j][pj] = PackPair<T>(fmaf(QmCode(words[j], h, pj, 0), scale[pj / 2], bias[pj / 2]),
                                 fmaf(QmCode(words[j], h, pj, 1), scale[pj / 2], bias[pj / 2]));
        }
      }
      TANDEM_UNROLL
      for (int step = 0; step < 2; ++step) {
        TANDEM_UNROLL
        for (int mi = 0; mi < 2; ++mi) {
          if (mi >= live_mi) break;
          uint32_t a[4];
          LdMatrixX4(a, a_tile + (stage * kQmTile + warp_m * 32 + mi * 16 + lane % 16) * kQmARow +
                            h * 32 + step * 16 + (lane / 16) * 8);
          TANDEM_UNROLL
          for (int j = 0; j < 4; ++j) {
            const uint32_t bj[2] = {b[j][step * 2], b[j][step * 2 + 1]};
            MmaM16N8K16<T>(acc[mi][j], a, bj);
          }
        }
      }
    }
  }

  T* y = static_cast<T*>(p.y);
  TANDEM_UNROLL
  for (int mi = 0; mi < 2; ++mi) {
    TANDEM_UNROLL
    for (int j = 0; j < 4; ++j) {
      TANDEM_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int row = m0 + warp_m * 32 + mi * 16 + lane / 4 + 8 * (i / 2);
        const int col = ntile * kQmTile + (warp_n * 4 + j) * 8 + 2 * (lane % 4) + i % 2;
        if (row < p.m && col < p.w.n) {
          y[static_cast<int64_t>(row) * p.w.n + col] = FromFloat<T>(acc[mi][j][i]);
        }
      }
    }
  }
}

template <typename T, int kBits, int kGroup>
__global__ void __launch_bounds__(kQmThreads) QmGemvKernel(QuantMatmulParams p) {
  constexpr int kTileWords = kQmTileWords<kBits>;
  const int lane = threadIdx.x % 32;
  const int fg = blockIdx.x * (kQmThreads / 32) + threadIdx.x / 32;  // 8-row column group
  if (fg * 8 >= p.w.n_pad) return;                                   // whole warps
  const int ntile = fg / 8, f = fg % 8, t = lane % 4;
  const int n = fg * 8 + lane / 4;
  const int kchunks = p.w.k_pad / kQmTile;
  const QmLaneWords<kBits>* words =
      reinterpret_cast<const QmLaneWords<kBits>*>(p.w.q + static_cast<int64_t>(ntile) * kchunks *
                                                              kTileWords) +
      f * 32 + lane;
  const T* x = static_cast<const T*>(p.x);

  float acc[kQmGemvMaxRows] = {};
  for (int c = 0; c < kchunks; ++c) {
    const QmLaneWords<kBits> lw = words[static_cast<int64_t>(c) * (8 * 32)];
    TANDEM_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int k0 = c * kQmTile + h * 32;
      if (k0 >= p.w.k) continue;  // the zero padding of k to 64 (warp-uniform)
      // The pairs of the half's two k16 steps (one pair unless groups are of 16).
      float scale[2], bias[2];
      QmScaleBias(p.w.scales[static_cast<int64_t>(k0 / kGroup) * p.w.n_pad + n], scale[0], bias[0]);
      if constexpr (kGroup <= 16) {
        QmScaleBias(p.w.scales[static_cast<int64_t>(k0 / kGroup + 1) * p.w.n_pad + n], scale[1],
                    bias[1]);
      } else {
        scale[1] = scale[0];
        bias[1] = bias[0];
      }
      TANDEM_UNROLL
      for (int j = 0; j < 4; ++j) {  // pair j: step j / 2 of the half
        const float w_lo = fmaf(QmCode(lw, h, j, 0), scale[j / 2], bias[j / 2]);
        const float w_hi = fmaf(QmCode(lw, h, j, 1), scale[j / 2], bias[j / 2]);
        const int k = k0 + (j / 2) * 16 + (j % 2) * 8 + 2 * t;
        TANDEM_UNROLL
        for (int r = 0; r < kQmGemvMaxRows; ++r) {
          if (r < p.m) {
            const ActPair<T> xp =
                *reinterpret_cast<const ActPair<T>*>(x + static_cast<int64_t>(r) * p.w.k + k);
            acc[r] = fmaf(w_lo, ToFloat(xp.lo), acc[r]);
            acc[r] = fmaf(w_hi, ToFloat(xp.hi), acc[r]);
          }
        }
      }
    }
  }
  T* y = static_cast<T*>(p.y);
  TANDEM_UNROLL
  for (int r = 0; r < kQmGemvMaxRows; ++r) {
    if (r < p.m) {  // warp-uniform
      float v = acc[r];
      v += __shfl_xor_sync(kFullMask, v, 1);
      v += __shfl_xor_sync(kFullMask, v, 2);
      if (t == 0 && n < p.w.n) y[static_cast<int64_t>(r) * p.w.n + n] = FromFloat<T>(v);
    }
  }
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_QUANT_MATMUL_CUH_
