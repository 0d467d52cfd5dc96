// The CPU backend's GEMM for y[m, rows] = x[m, cols] * W^T: the packed weight layout, the
// on-the-fly int8 quantization of activations, and one range kernel per ISA. CpuBackend
// owns the scratch buffers and the thread split; everything here works on given ranges.
//
// Quantized weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, and the K-quants further down) stay
// quantized; PackWeight repacks them
// (the values are the same, only reordered) so that one 64-byte load feeds 16 output rows:
//   rows are cut into groups of kGroupRows = 16 (the last one padded with zero rows); a
//   group stores the row's 32-element blocks in spans of kSpanBlocks = 2: the span's qs
//   tiles, then the 16 rows' fp16 scales d of each of its blocks, then (Q4_1, Q5_1) their
//   fp16 minima m (a row with an odd block count ends on a half-empty span):
//     qs tile, Q4:  4 vectors of 64 bytes; vector p, bytes 4r..4r+3 = GGUF qs[4p..4p+3] of
//                   row r (low nibbles: elements 4p..4p+3, high nibbles: 16+4p..16+4p+3)
//     qs tile, 8-bit (Q8_0, Q5_0, Q5_1): 8 vectors of 64 bytes; vector p, bytes 4r..4r+3 =
//                   elements 4p..4p+3 of row r as unsigned bytes: Q8_0 q + 128; Q5_0
//                   (q - 16) + 128, exactly Q8_0's bytes for the value q - 16; Q5_1 q itself
//                   (0..31)
//     d: [2][16] fp16 (one 64-byte line), m: [2][16] fp16 (another)
// so a span is a whole number of lines (Q4_0 9, Q4_1 10, Q8_0 and Q5_0 17, Q5_1 18) and
// decode reads each group as one sequential stream, which the hardware prefetchers follow.
// (With all d, then all m after the tiles, three interleaved streams per group, a Zen 5
// core read a 576-column Q4_1 weight at ~22 GB/s against ~34 GB/s this way.)
// So after unpacking nibbles, every 32-bit lane of a vector holds 4 consecutive elements of
// one row, and an int8 dot product (vpdpbusd / maddubs) against the 4 matching activation
// bytes broadcast to all lanes leaves each lane with its own row's sum: 16 rows come out
// of one register with no horizontal reduction, and the 16 scales of a block load as one
// vector. Weights are unsigned (nibbles, or the 8-bit tile's bytes) and activations signed,
// which is the operand order of vpdpbusd; the constant offsets (-8 for Q4_0, -128 for Q8_0
// and Q5_0) are undone per activation block with an integer bias = offset * sum(qx).
//
// Q5 weights take 8 bits per weight once packed (8.5 and 9 with scales and minima),
// against 5.5 (Q5_0) and 6 (Q5_1) in the file, because the repack is then lossless and
// reuses the int8 dot-product kernels as they are: Q5_0 runs Q8_0's kernels on Q8_0's
// bytes; Q5_1 is Q8_0's tile with Q4_1's minimum term. Keeping 5 bits would take a Q4 tile
// plus a 64-byte plane of the 16 rows' fifth bits per block, OR-ed in as 0x10 after the
// nibble unpack (AVX-512: a 64-bit mask per vector and _mm512_mask_or_epi8; AVX2: a byte
// shuffle), a follow-up if Q5 models matter (a third fewer bytes for decode to stream).
//
// Activations are quantized per 32-element block like GGUF's Q8 formats: d = max|x| / 127,
// q = round-to-nearest-even(x / d); we keep d in fp32, plus s = d * sum(q) for the minimum
// term of Q4_1 and Q5_1: sum_j (q_j d + m)(qx_j dx) = d dx sum(q_j qx_j) + m dx sum(qx_j).
//
// K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K; cols a multiple of 256) use the same lane
// layout and integer dot products, with GGUF's integer sub-block scales kept as they are:
// every K type is read as x = (d sc) (q - off) - dmin m with unsigned q (Q3_K's q = low
// bits | high bit << 2 in [0, 7], off 4; Q6_K's q in [0, 63], off 32; Q2_K, Q4_K, Q5_K off 0).
// A 32-element block's tile holds q as bit planes of 64-byte vectors: a B-bit plane is B
// vectors, and quad k (elements 4k..4k+3) of row r sits in bytes 4r..4r+3 of vector k % B at
// bit B * (k / B). The base plane holds q's low bits, a high plane right after it the rest:
//     Q4_K: 4-bit base (exactly the nibble tile above); Q5_K: 4 + 1; Q6_K: 4 + 2;
//     Q2_K: 2-bit base; Q3_K: 2 + 1.
// Unpacking quad k is a 16-bit shift and a byte mask per plane (no field crosses a byte),
// then an OR. A group is a run of super-blocks of sb_bytes (a multiple of 64) each:
//     8 tiles (blocks 8s .. 8s+7), then d: [16] fp16, dmin: [16] fp16 (types with minima),
//     sc: [n_sub][16] int8, m: [n_sub][16] uint8 (Q4_K, Q5_K; Q2_K keeps GGUF's byte
//     sc | m << 4 in sc), padding
// so decode reads one sequential stream. Bits per weight once packed (GGUF's in brackets):
//     Q2_K 2.625 (2.625), Q3_K 3.625 (3.4375), Q4_K 4.625 (4.5), Q5_K 5.625 (5.5),
//     Q6_K 6.625 (6.5625).
// d sc is not representable in fp16, so it is never folded into per-block fp16 scales: the
// kernels widen the 16 rows' sc (one 16-byte load) and multiply by d in fp32, where the
// product is exact (11-bit significand times |sc| <= 128). Per 32-element activation block:
//   32-element sub-blocks (Q4_K, Q5_K): acc += (d sc) dx dot - (dmin m) s, s as above;
//   16-element sub-blocks (Q2_K, Q3_K, Q6_K): the block's two halves are separate integer
//     chains, each started at -off * (that half's sum of qx), and scaled by their own sc;
//     Q2_K adds -(dmin m_h) dx sum_h per half. The half sums come from QuantizeActs
//     (offset kActHalfSums packs both, as int16, into the block's bias slot), so no extra
//     activation buffer is needed and every ISA computes them bit-identically.
// int32 bounds: a chain is at most 16 * 63 * 127 + 32 * 16 * 127 < 2^18 (Q6_K). AVX2 sums
// maddubs results in int16 before widening: each is at most 2 * qmax * 127, so 4 fit for
// qmax <= 31 and 2 for Q6_K (2 * 2 * 63 * 127 = 32004). No integer product of sc and a dot
// product is formed (scales are applied in fp32 per block). AMX runs the K types on the
// AVX-512 kernel (their scales change every 16 or 32 elements, between tile products).
//
// Float weights (F32, F16, BF16) stay row-major as GGUF stores them and are computed in
// fp32 against fp32 activations.
//
// Thread safety: all functions are pure apart from writing their output range; concurrent
// calls on disjoint ranges are safe.
#ifndef TANDEM_KERNELS_CPU_MATMUL_H_
#define TANDEM_KERNELS_CPU_MATMUL_H_

#include <cstdint>

#include "kernels/cpu/cpu_features.h"
#include "kernels/quant.h"

namespace tandem::kernels::cpu {

inline constexpr int kGroupRows = 16;
inline constexpr int kSpanBlocks = 2;  // blocks per span of the non-K layout

inline bool IsQuantized(DType t) {
  return t == DType::kQ4_0 || t == DType::kQ4_1 || t == DType::kQ5_0 || t == DType::kQ5_1 ||
         t == DType::kQ8_0 || IsKQuant(t);
}
// Packed with one byte per weight (else two nibbles per byte); see the header comment.
constexpr bool HasByteTile(DType t) {
  return t == DType::kQ8_0 || t == DType::kQ5_0 || t == DType::kQ5_1;
}
// Packed with per-block minima m (x = q d + m).
constexpr bool HasMin(DType t) { return t == DType::kQ4_1 || t == DType::kQ5_1; }
// K-quants with minima (x = d sc q - dmin m), and those with 16-element sub-blocks.
constexpr bool HasKMin(DType t) {
  return t == DType::kQ2_K || t == DType::kQ4_K || t == DType::kQ5_K;
}
constexpr bool HasKSub16(DType t) {
  return t == DType::kQ2_K || t == DType::kQ3_K || t == DType::kQ6_K;
}
// A K-quant's q as bit planes (see the header comment): the low KBaseBits(t) bits (4: the
// nibble tile; 2 for Q2_K, Q3_K) and KHighBits(t) more above them (0, 1 or 2).
constexpr int KBaseBits(DType t) { return t == DType::kQ2_K || t == DType::kQ3_K ? 2 : 4; }
constexpr int KHighBits(DType t) {
  return t == DType::kQ6_K ? 2 : t == DType::kQ5_K || t == DType::kQ3_K ? 1 : 0;
}
// The non-K layout's sizes and offsets (see the header comment), one definition for the
// packing code and the kernels (which call them with a compile-time type): bytes of a qs
// tile; of a span (kSpanBlocks qs tiles, their d and (Q4_1, Q5_1) m); and block b's qs tile,
// its 16 rows' d and their m, as offsets from the group's start.
constexpr int64_t QsBytes(DType t) { return HasByteTile(t) ? 512 : 256; }
constexpr int64_t SpanBytes(DType t) {
  return kSpanBlocks * QsBytes(t) + (HasMin(t) ? 2 : 1) * kSpanBlocks * kGroupRows * 2;
}
constexpr int64_t TileOffset(DType t, int64_t b) {
  return b / kSpanBlocks * SpanBytes(t) + b % kSpanBlocks * QsBytes(t);
}
constexpr int64_t DOffset(DType t, int64_t b) {
  return b / kSpanBlocks * SpanBytes(t) + kSpanBlocks * QsBytes(t) +
         b % kSpanBlocks * kGroupRows * 2;
}
constexpr int64_t MOffset(DType t, int64_t b) {
  return DOffset(t, b) + kSpanBlocks * kGroupRows * 2;
}
// Where the parts of a packed quantized weight live; see the header comment.
struct PackedLayout {
  DType type = DType::kQ4_0;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t nb = 0;           // blocks per row = cols / 32
  int64_t n_groups = 0;     // ceil(rows / 16)
  int64_t qs_bytes = 0;     // bytes of one block's qs tile: 256 (Q4), 512 (8-bit); K:
                            // 64 * (KBaseBits + KHighBits)
  int64_t group_bytes = 0;  // stride between groups, a multiple of 64
  // Non-K types: a group is ceil(nb / kSpanBlocks) spans of SpanBytes(type) (a multiple of
  // 64); block b's qs tile, its 16 rows' d and (Q4_1, Q5_1) their m sit at these offsets
  // from the group's start.
  int64_t tile_offset(int64_t b) const { return TileOffset(type, b); }
  int64_t d_offset(int64_t b) const { return DOffset(type, b); }
  int64_t m_offset(int64_t b) const { return MOffset(type, b); }
  // K-quants only: a group is n_sb super-blocks of sb_bytes each, a super-block 8 qs tiles
  // then its scales at these offsets (from the super-block's start).
  int64_t n_sb = 0;          // super-blocks per row = cols / 256
  int64_t sb_bytes = 0;      // a multiple of 64
  int64_t kd_offset = 0;     // d: [16] fp16
  int64_t kdmin_offset = 0;  // dmin: [16] fp16 (Q2_K, Q4_K, Q5_K)
  int64_t ksc_offset = 0;    // sc: [n_sub][16] int8 (Q2_K: uint8 sc | m << 4)
  int64_t km_offset = 0;     // m: [n_sub][16] uint8 (Q4_K, Q5_K; Q2_K: = ksc_offset)
  int64_t total_bytes() const { return n_groups * group_bytes; }
};

PackedLayout MakePackedLayout(DType type, int64_t rows, int64_t cols);
// Repacks GGUF rows ([rows, RowBytes(type, cols)]) into `out` (layout.total_bytes(), 64-byte
// aligned).
void PackQuantized(const PackedLayout& layout, const void* gguf_rows, uint8_t* out);
// Dequantizes row `row` of a packed weight into out[cols].
void DequantizePackedRow(const PackedLayout& layout, const uint8_t* packed, int64_t row,
                         float* out);

// Activations quantized per 32-element block. Buffers hold at least m + kGroupRows rows (the
// AMX kernel reads whole 16-row tiles; rows past m are never used in results).
struct QuantizedActs {
  int8_t* q = nullptr;      // [m, cols]
  float* d = nullptr;       // [m, nb] block scales
  float* s = nullptr;       // [m, nb] d * sum(q) (the minimum term of Q4_1, Q5_1)
  int32_t* bias = nullptr;  // [m, nb] offset * sum(q), offset = ActOffset(type, isa); or
                            // for offset == kActHalfSums, the block's two 16-element sums
                            // of q as int16: elements 0..15 low half, 16..31 high half
  int64_t cols = 0;
  int64_t nb = 0;
};

// The offset that asks QuantizeActs for the half-block sums (K-quants with 16-element
// sub-blocks: Q2_K, Q3_K, Q6_K). |sum| <= 16 * 127 fits int16.
inline constexpr int32_t kActHalfSums = INT32_MIN;

// The constant the kernel of `isa` must add per unit of sum(qx) for weights of `type`, or
// kActHalfSums.
int32_t ActOffset(DType type, Isa isa);

// Quantizes rows [begin, end) of x[., cols]. Every ISA produces bit-identical results.
void QuantizeActs(Isa isa, const float* x, int32_t offset, const QuantizedActs& a, int64_t begin,
                  int64_t end);

// y[i, 16 g + r] for x rows i in [m0, m1) and row groups g in [g0, g1); y has row stride
// ldy (>= rows). Rows of the padded last group past layout.rows are not written.
struct QuantGemmArgs {
  const PackedLayout* layout;
  const uint8_t* packed;
  const QuantizedActs* acts;
  float* y;
  int64_t ldy;
};
void QuantGemm(Isa isa, const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1);

// Float weights: y[i, r] for i in [m0, m1), output rows r in [r0, r1); w is [rows, cols]
// row-major of type F32, F16 or BF16; x is [m, cols] fp32.
struct FloatGemmArgs {
  DType type;
  const void* w;
  int64_t cols;
  const float* x;
  float* y;
  int64_t ldy;
};
void FloatGemm(Isa isa, const FloatGemmArgs& args, int64_t m0, int64_t m1, int64_t r0, int64_t r1);

namespace internal {
void QuantizeActsScalar(const float* x, int32_t offset, const QuantizedActs& a, int64_t begin,
                        int64_t end);
void QuantizeActsAvx2(const float* x, int32_t offset, const QuantizedActs& a, int64_t begin,
                      int64_t end);
void QuantizeActsAvx512(const float* x, int32_t offset, const QuantizedActs& a, int64_t begin,
                        int64_t end);
void QuantGemmScalar(const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1);
void QuantGemmAvx2(const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1);
void QuantGemmAvx512(const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1);
// Needs m1 - m0 to be a multiple of 16 (callers give the tail to QuantGemmAvx512).
void QuantGemmAmx(const QuantGemmArgs& args, int64_t m0, int64_t m1, int64_t g0, int64_t g1);
void FloatGemmScalar(const FloatGemmArgs& args, int64_t m0, int64_t m1, int64_t r0, int64_t r1);
void FloatGemmAvx2(const FloatGemmArgs& args, int64_t m0, int64_t m1, int64_t r0, int64_t r1);
void FloatGemmAvx512(const FloatGemmArgs& args, int64_t m0, int64_t m1, int64_t r0, int64_t r1);
}  // namespace internal

}  // namespace tandem::kernels::cpu

#endif  // TANDEM_KERNELS_CPU_MATMUL_H_
