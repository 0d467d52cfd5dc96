#include "kernels/ref/matmul_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace tandem::kernels::ref {
namespace {

bool QuantizedType(DType t) {
  return t == DType::kQ4_0 || t == DType::kQ4_1 || t == DType::kQ5_0 || t == DType::kQ5_1 ||
         t == DType::kQ8_0 || IsKQuant(t);
}

void MatmulDouble(DType type, const void* w, int64_t rows, int64_t cols,
                  const std::vector<double>& x, int64_t m, float* y) {
  const int64_t row_bytes = RowBytes(type, cols);
  std::vector<float> wr(cols);
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeRow(type, static_cast<const uint8_t*>(w) + r * row_bytes, cols, wr.data());
    for (int64_t i = 0; i < m; ++i) {
      double acc = 0;
      for (int64_t k = 0; k < cols; ++k) acc += static_cast<double>(wr[k]) * x[i * cols + k];
      y[i * rows + r] = static_cast<float>(acc);
    }
  }
}

}  // namespace

void Matmul(DType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t m,
            float* y) {
  MatmulDouble(type, w, rows, cols, std::vector<double>(x, x + m * cols), m, y);
}

void QuantizeActivationRow(const float* x, int64_t cols, int8_t* q, float* d) {
  for (int64_t b = 0; b < cols / kQuantBlock; ++b) {
    float amax = 0.f;
    for (int j = 0; j < kQuantBlock; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    d[b] = amax / 127.f;
    const float id = amax != 0.f ? 1.f / d[b] : 0.f;
    for (int j = 0; j < kQuantBlock; ++j) {
      q[b * 32 + j] = static_cast<int8_t>(std::nearbyint(x[b * 32 + j] * id));
    }
  }
}

void MatmulQuantizedActs(DType type, const void* w, int64_t rows, int64_t cols, const float* x,
                         int64_t m, float* y) {
  if (!QuantizedType(type)) return Matmul(type, w, rows, cols, x, m, y);
  const int64_t nb = cols / kQuantBlock;
  std::vector<int8_t> q(cols);
  std::vector<float> d(nb);
  std::vector<double> xq(m * cols);
  for (int64_t i = 0; i < m; ++i) {
    QuantizeActivationRow(x + i * cols, cols, q.data(), d.data());
    for (int64_t k = 0; k < cols; ++k) xq[i * cols + k] = static_cast<double>(q[k]) * d[k / 32];
  }
  MatmulDouble(type, w, rows, cols, xq, m, y);
}

}  // namespace tandem::kernels::ref
