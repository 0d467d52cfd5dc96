// Tensor element types and quantized block formats shared by every backend and the GGUF
// reader. The block layouts are GGUF's (see REFERENCE.md): blocks of 32 along a row.
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
  kBF16 = 30,
};

inline constexpr int kQuantBlock = 32;  // elements per quantized block

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
void QuantizeRow(DType t, const float* in, int64_t cols, void* row);

}  // namespace tandem::kernels

#endif  // TANDEM_KERNELS_QUANT_H_
