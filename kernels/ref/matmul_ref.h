// Scalar references for the GEMM (kernels/cpu/matmul.h): slow, obviously correct, used by
// tests and benchmarks only. Weights are GGUF row-major ([rows, RowBytes(type, cols)]).
// Thread safety: pure functions.
#ifndef TANDEM_KERNELS_REF_MATMUL_REF_H_
#define TANDEM_KERNELS_REF_MATMUL_REF_H_

#include <cstdint>

#include "kernels/quant.h"

namespace tandem::kernels::ref {

// y[m, rows] = x[m, cols] * dequantize(w)^T, accumulated in double with fp32 activations.
void Matmul(DType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t m,
            float* y);

// Quantizes one activation row the way the CPU kernels do: per 32-element block,
// d = max|x| / 127 and q = round-half-even(x / d) (q = 0 for an all-zero block).
void QuantizeActivationRow(const float* x, int64_t cols, int8_t* q, float* d);

// Like Matmul, but for quantized weight types the activations first go through
// QuantizeActivationRow, so the result differs from the CPU kernels only by rounding in
// their fp32 accumulation. For float weight types it equals Matmul.
void MatmulQuantizedActs(DType type, const void* w, int64_t rows, int64_t cols, const float* x,
                         int64_t m, float* y);

}  // namespace tandem::kernels::ref

#endif  // TANDEM_KERNELS_REF_MATMUL_REF_H_
