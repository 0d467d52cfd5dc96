// Tensor element types and quantized block formats shared by every backend and the GGUF
// reader. The block layouts are GGUF's (see REFERENCE.md): blocks of 32 along a row, or for
// the K-quants super-blocks of 256 (QK_K) cut into sub-blocks of 32 or 16 with their own
// small integer scales.
// Thread safety: pure functions and constants only.
#ifndef TANDEM_KERNELS_QUANT_H_
#define TANDEM_KERNELS_QUANT_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace tandem::kernels {

// Values are GGUF's type ids so a tensor's type converts by cast.
enum class DType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};

inline constexpr int kQuantBlock = 32;   // elements per quantized block
inline constexpr int kSuperBlock = 256;  // elements per K-quant super-block (GGUF's QK_K)

struct BlockQ4_0 {  // x = (q - 8) * d
  uint16_t d;       // fp16 scale
  uint8_t qs[16];   // byte j: low nibble element j, high nibble element j + 16
};
struct BlockQ4_1 {  // x = q * d + m
  uint16_t d;       // fp16 scale
  uint16_t m;       // fp16 minimum
  uint8_t qs[16];
};
// The 5-bit formats store Q4's nibbles plus a fifth bit per element: bit j of qh (read as a
// little-endian uint32) is the fifth bit of element j, so q_j = nibble_j | bit_j << 4 in
// [0, 31].
struct BlockQ5_0 {  // x = (q - 16) * d
  uint16_t d;       // fp16 scale
  uint8_t qh[4];    // fifth bits of elements 0..31
  uint8_t qs[16];   // low 4 bits, in Q4_0's order
};
struct BlockQ5_1 {  // x = q * d + m
  uint16_t d;       // fp16 scale
  uint16_t m;       // fp16 minimum
  uint8_t qh[4];
  uint8_t qs[16];
};
struct BlockQ8_0 {  // x = q * d
  uint16_t d;
  int8_t qs[32];
};
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24);

// K-quants (llama.cpp's ggml-common.h). Every one decodes as, for element k of the 256,
//   x_k = (d * sc[k / sub]) * (q_k - offset) - dmin * m[k / sub]
// with the fields below unpacked into KQuantValues (UnpackKQuant); the bit layouts are
// described there, in quant.cc.
struct BlockQ2_K {     // sub = 16; q in [0, 3]; sc, m in [0, 15]
  uint8_t scales[16];  // sub-block i: low nibble sc, high nibble m
  uint8_t qs[64];      // 2-bit quants
  uint16_t d;          // fp16 scale of the scales
  uint16_t dmin;       // fp16 scale of the minima
};
struct BlockQ3_K {     // sub = 16; q = low 2 bits | high bit << 2 in [0, 7], offset 4
  uint8_t hmask[32];   // high bits
  uint8_t qs[64];      // low 2 bits
  uint8_t scales[12];  // 16 6-bit scales, stored as sc + 32
  uint16_t d;          // fp16
};
struct BlockQ4_K {     // sub = 32; q in [0, 15]; sc, m in [0, 63]
  uint16_t d;          // fp16 scale of the scales
  uint16_t dmin;       // fp16 scale of the minima
  uint8_t scales[12];  // 8 6-bit scales and 8 6-bit minima
  uint8_t qs[128];     // nibbles
};
struct BlockQ5_K {  // sub = 32; q = nibble | high bit << 4 in [0, 31]; sc, m in [0, 63]
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];  // as Q4_K
  uint8_t qh[32];      // fifth bits
  uint8_t qs[128];     // low nibbles
};
struct BlockQ6_K {    // sub = 16; q = nibble | 2 high bits << 4 in [0, 63], offset 32
  uint8_t ql[128];    // low nibbles
  uint8_t qh[64];     // high 2 bits
  int8_t scales[16];  // sc in [-128, 127]
  uint16_t d;         // fp16
};
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210);

// One K-quant super-block with its bit fields unpacked (see the formula above). Fields a
// type does not have are zero: dmin and m for Q3_K and Q6_K, sc[8..15] and m[8..15] for the
// 32-element sub-blocks of Q4_K and Q5_K.
struct KQuantValues {
  uint16_t d = 0;     // fp16 bits
  uint16_t dmin = 0;  // fp16 bits
  int8_t sc[16] = {};
  uint8_t m[16] = {};
  uint8_t q[kSuperBlock] = {};  // unsigned, offset not yet subtracted
};

constexpr bool IsKQuant(DType t) {
  return t == DType::kQ2_K || t == DType::kQ3_K || t == DType::kQ4_K || t == DType::kQ5_K ||
         t == DType::kQ6_K;
}
// Elements per sub-block (32 or 16) and the offset subtracted from q (0, 4 or 32).
constexpr int KSubBlock(DType t) { return t == DType::kQ4_K || t == DType::kQ5_K ? 32 : 16; }
constexpr int KOffset(DType t) { return t == DType::kQ6_K ? 32 : t == DType::kQ3_K ? 4 : 0; }
// Unpacks one GGUF super-block of K-quant type t, and the inverse. Out of line, like UnpackQ5.
void UnpackKQuant(DType t, const void* block, KQuantValues* v);
void PackKQuant(DType t, const KQuantValues& v, void* block);

// The 5-bit values q[0..31] (each in [0, 31]) of a Q5_0 or Q5_1 block, in element order.
// Out of line: an inline copy compiled into an AVX-512 file could be the one the linker keeps.
void UnpackQ5(const uint8_t qh[4], const uint8_t qs[16], uint8_t q[32]);

// True for the types tandem reads and computes with.
bool IsSupported(DType t);
std::string_view DTypeName(DType t);
// Elements per block (1 for float types) and bytes per block.
int64_t BlockElems(DType t);
int64_t BlockBytes(DType t);
// Bytes of one row of `cols` elements; cols must be a multiple of BlockElems(t).
inline int64_t RowBytes(DType t, int64_t cols) { return cols / BlockElems(t) * BlockBytes(t); }

// IEEE half and bfloat16 conversions (scalar; vector paths live in kernels/cpu).
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
inline float Bf16ToFloat(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t FloatToBf16(float f);

// Dequantizes one row of `cols` elements of type `t` into `out`.
void DequantizeRow(DType t, const void* row, int64_t cols, float* out);
// Quantizes `cols` floats into one row of type `t` (used by tests and the model generator).
// The 32-block types follow ggml's reference quantizers byte for byte; the K-quants use a
// simpler search of tandem's own (see quant.cc), so their bytes differ from llama.cpp's.
void QuantizeRow(DType t, const float* in, int64_t cols, void* row);

}  // namespace tandem::kernels

#endif  // TANDEM_KERNELS_QUANT_H_
