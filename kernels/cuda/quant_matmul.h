// Weight-only quantized matmul on the GPU, W4A16 and W8A16 (kernels/cuda/quant_matmul.cuh holds
// the kernels): y = x * dequantize(w)^T, with x and y in f16 or bf16 and w an [n, k] matrix of
// codes quantized in groups along k:
//   * 4-bit: GGUF Q4_0 (x = (q - 8) d) and Q4_1 (x = q d + m), group 32; Q4_K (group 32),
//     Q2_K and Q3_K (group 16), whose codes fit 4 bits; AWQ-style unsigned codes with a
//     per-group fp16 scale and integer zero (x = (q - z) s), group 32, 64 or 128;
//   * 8-bit: GGUF Q8_0 (x = q d, q signed), Q5_0 (x = (q - 16) d), Q5_1 (x = q d + m) and Q5_K,
//     group 32; Q6_K, group 16. The 5- and 6-bit codes take a byte each here: no 5/6-bit
//     layout yet, so those tensors stream 9 bits per weight instead of GGUF's 5.5 to 6.6.
// Definition: kernels/ref Matmul on the dequantized weights (DequantizeRow), except that the
// GEMM rounds each dequantized weight to the activation dtype before its mma
// (quant_matmul.cuh).
//
// Weights are repacked once on the host (RepackGguf, RepackAwq) into the order the kernels
// read. Every code is stored unsigned (Q8_0's q + 128) and every group carries one fused pair
// (scale, bias), x = code * scale + bias:
//   q:      [n_pad / 64, k_pad / 64, 8, 32, W] uint32, W = bits / 2 words (2 for 4-bit, 4 for
//           8-bit). Tile (n / 64, k / 64) is contiguous (2 or 4 KiB), so a block streams its
//           weights along k. Inside it, [f][lane][W] are the words that lane `lane` needs for
//           the mma B fragments of rows 8f..8f+7 over the tile's four k16 steps s = 0..3
//           (the m16n8k16 B layout: lane = 4 g + t holds row 8f + g and, per step, register
//           r = 0, 1 holds k = 16 s + 8 r + 2 t and that k + 1):
//             4-bit: word h covers steps 2h and 2h + 1; pair j = 2 (s % 2) + r has its lower k
//                    in nibble j (bits 4j..4j+3) and its upper k in nibble j + 4 (bits
//                    16+4j..), so both halves of a register come from one shift;
//             8-bit: word s covers step s; bytes 0, 1 are register 0's k and k + 1, bytes 2,
//                    3 register 1's.
//   scales: [k_pad / group, n_pad] uint32, the pair (scale, bias) of (row n, group) as fp16,
//           scale in the low half. bias = -zero * scale: -8 d for Q4_0, -16 d for Q5_0, GGUF's
//           m for Q4_1 and Q5_1, -128 d for Q8_0 (all exact in fp16), -z s rounded to fp16 for
//           AWQ. A K-quant sub-block (x = (d sc) (q - offset) - dmin m) has the pair
//           (d sc, -offset (d sc) - dmin m), each rounded to fp16 once (d sc has up to 19
//           significant bits): a relative error <= 2^-11 of each, the size of the GEMM's own
//           rounding of every dequantized weight to f16 (bf16's is 2^-8).
//   n_pad and k_pad are n and k rounded up to 64; padded rows and columns have code 0 and
//   pair (0, 0), so they dequantize to exactly 0.
// Bits per weight: Q4_0 and Q4_1 4.5 and 5 (GGUF's own), Q4_K 5 (GGUF 4.5), Q2_K and Q3_K 6,
// Q8_0, Q5_0, Q5_1 and Q5_K 9, Q6_K 10 (GGUF 6.56), AWQ 4 + 32 / group.
//
// Thread safety: launchers are called by the stream's owning thread (one backend instance);
// the repack functions are pure.
#ifndef TANDEM_KERNELS_CUDA_QUANT_MATMUL_H_
#define TANDEM_KERNELS_CUDA_QUANT_MATMUL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cuda/build_namespace.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

inline constexpr int kQmPackTile = 64;    // n and k of one packed tile
inline constexpr int kQmGemvMaxRows = 8;  // the GEMV path takes m <= this

// A weight in the repacked layout above, on the host.
struct PackedQuantWeight {
  int bits = 0;                  // 4 or 8
  int64_t n = 0;                 // rows (output features)
  int64_t k = 0;                 // columns (input features), a multiple of 32 and of group
  int64_t n_pad = 0;             // n rounded up to kQmPackTile
  int64_t k_pad = 0;             // k rounded up to kQmPackTile
  int group = 0;                 // 16, 32, 64 or 128
  std::vector<uint32_t> q;       // [n_pad / 64, k_pad / 64, 8, 32, bits / 2]
  std::vector<uint32_t> scales;  // [k_pad / group, n_pad] fp16 (scale, bias) pairs
};

// An AWQ-style weight, unpacked: one code per byte. (AWQ checkpoints pack 8 codes per int32 in
// their own interleaved order; turning those tensors into this view is the loader's job.)
struct AwqWeightDesc {
  int64_t rows = 0;
  int64_t cols = 0;                 // a multiple of group
  int group = 128;                  // 32, 64 or 128
  const uint8_t* q = nullptr;       // [rows, cols] codes in [0, 15]
  const uint16_t* scale = nullptr;  // [rows, cols / group] fp16 bits
  const uint8_t* zero = nullptr;    // [rows, cols / group] in [0, 15]
  std::string name;                 // for error messages
};

// True for the GGUF types RepackGguf takes: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q2_K
// to Q6_K.
bool QuantMatmulTypeSupported(DType t);
// The code width (4 or 8) and group (16 or 32) RepackGguf gives a supported type.
int QuantMatmulBits(DType t);
int QuantMatmulGroup(DType t);
// Repacks a GGUF weight ([rows, RowBytes] as stored). Fails, naming the tensor, on an
// unsupported type, cols not a multiple of the type's block (32, or 256 for K-quants), or a
// bias that overflows fp16 where its scale does not.
absl::StatusOr<PackedQuantWeight> RepackGguf(const WeightDesc& w);
// Repacks an AWQ-style weight. Fails, naming the tensor, on a group other than 32/64/128, cols
// not a multiple of it, or a code or zero past 15.
absl::StatusOr<PackedQuantWeight> RepackAwq(const AwqWeightDesc& w);

// The device copy of a PackedQuantWeight.
struct QuantWeights {
  const uint32_t* q = nullptr;       // [n_pad / 64, k_pad / 64, 8, 32, bits / 2]
  const uint32_t* scales = nullptr;  // [k_pad / group, n_pad]
  int bits = 4;
  int n = 0;
  int k = 0;
  int n_pad = 0;
  int k_pad = 0;
  int group = 32;  // 16, 32, 64 or 128; k must be a multiple of 32 as well
};

enum class QuantMatmulPath {
  kAuto,  // GEMV for m <= kQmGemvMaxRows, else GEMM
  kGemm,  // tensor cores (mma.sync m16n8k16), any m
  kGemv,  // CUDA cores, m <= kQmGemvMaxRows
};

struct QuantMatmulParams {
  const void* x = nullptr;  // [m, w.k] activation dtype, 16-byte aligned
  void* y = nullptr;        // [m, w.n] activation dtype; must not alias x
  int m = 0;
  QuantWeights w;
  ActivationDType dtype = ActivationDType::kF16;  // kF16 or kBF16
  QuantMatmulPath path = QuantMatmulPath::kAuto;
};

// Aborts on broken preconditions (sizes, null or misaligned pointers, f32 activations).
void QuantMatmul(const QuantMatmulParams& p, Stream stream);

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_QUANT_MATMUL_H_
