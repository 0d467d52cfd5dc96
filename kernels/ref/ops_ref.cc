#include "kernels/ref/ops_ref.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include "common/check.h"
#include "kernels/quant.h"

namespace tandem::kernels::ref {
namespace {

int64_t RowIndex(const KvCacheView& c, int layer, int block, int head, int offset) {
  return ((static_cast<int64_t>(layer) * c.n_blocks + block) * c.n_kv_heads + head) * c.block_size +
         offset;
}

void RotateRef(float* v, int32_t pos, int rot_dim, float theta, RopeStyle style) {
  const int half = rot_dim / 2;
  for (int i = 0; i < half; ++i) {
    const double angle =
        pos * std::pow(static_cast<double>(theta), -2.0 * i / static_cast<double>(rot_dim));
    const double c = std::cos(angle);
    const double s = std::sin(angle);
    const int a = style == RopeStyle::kNormal ? 2 * i : i;
    const int b = style == RopeStyle::kNormal ? 2 * i + 1 : i + half;
    const double x0 = v[a];
    const double x1 = v[b];
    v[a] = static_cast<float>(x0 * c - x1 * s);
    v[b] = static_cast<float>(x0 * s + x1 * c);
  }
}

}  // namespace

void RmsNormRef(const float* x, const float* w, int rows, int dim, float eps, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<int64_t>(r) * dim;
    float* outr = out + static_cast<int64_t>(r) * dim;
    double sum = 0;
    for (int i = 0; i < dim; ++i) sum += static_cast<double>(xr[i]) * xr[i];
    const double inv = 1.0 / std::sqrt(sum / dim + eps);
    for (int i = 0; i < dim; ++i) outr[i] = static_cast<float>(xr[i] * inv * w[i]);
  }
}

void SwiGluRef(const float* gate, const float* up, int rows, int dim, float* out) {
  const int64_t n = static_cast<int64_t>(rows) * dim;
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

void GeGluRef(const float* gate, const float* up, int rows, int dim, float* out) {
  const int64_t n = static_cast<int64_t>(rows) * dim;
  const double sqrt_2_over_pi = std::sqrt(2.0 / std::numbers::pi);
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    const double u = sqrt_2_over_pi * (g + 0.044715 * g * g * g);
    // 0.5 * (1 + tanh(u)) == 1 / (1 + exp(-2u)); the left side loses all its digits to
    // cancellation once tanh(u) is near -1 (g below about -6 in double).
    out[i] = static_cast<float>(g / (1.0 + std::exp(-2.0 * u)) * up[i]);
  }
}

void AddBiasRef(float* x, const float* bias, int rows, int dim) {
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < dim; ++i) x[static_cast<int64_t>(r) * dim + i] += bias[i];
  }
}

void AddRef(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void ScaleRef(float* x, float factor, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

void GatherRowsRef(const float* x, const int32_t* idx, int n, int dim, float* out) {
  for (int r = 0; r < n; ++r) {
    for (int i = 0; i < dim; ++i) {
      out[static_cast<int64_t>(r) * dim + i] = x[static_cast<int64_t>(idx[r]) * dim + i];
    }
  }
}

void RopeRef(const RopeParams& p) {
  TANDEM_CHECK_EQ(p.rot_dim % 2, 0);
  TANDEM_CHECK_LE(p.rot_dim, p.head_dim);
  for (int t = 0; t < p.n_tokens; ++t) {
    for (int h = 0; h < p.n_heads; ++h) {
      RotateRef(p.q + (static_cast<int64_t>(t) * p.n_heads + h) * p.head_dim, p.positions[t],
                p.rot_dim, p.theta, p.style);
    }
    for (int h = 0; h < p.n_kv_heads; ++h) {
      RotateRef(p.k + (static_cast<int64_t>(t) * p.n_kv_heads + h) * p.head_dim, p.positions[t],
                p.rot_dim, p.theta, p.style);
    }
  }
}

void KvAppendRef(const KvAppendParams& p) {
  const KvCacheView& c = p.cache;
  const int d = c.head_dim;
  for (int t = 0; t < p.n_tokens; ++t) {
    const int slot = p.slots[t];
    TANDEM_CHECK(slot >= 0 && slot < c.n_blocks * c.block_size);
    const int block = slot / c.block_size;
    const int offset = slot % c.block_size;
    for (int h = 0; h < c.n_kv_heads; ++h) {
      const int64_t row = RowIndex(c, p.layer, block, h, offset);
      for (int which = 0; which < 2; ++which) {
        const float* in =
            (which == 0 ? p.k : p.v) + (static_cast<int64_t>(t) * c.n_kv_heads + h) * d;
        void* base = which == 0 ? c.k : c.v;
        switch (c.dtype) {
          case KvDType::kF32:
            for (int i = 0; i < d; ++i) static_cast<float*>(base)[row * d + i] = in[i];
            break;
          case KvDType::kF16:
            for (int i = 0; i < d; ++i) {
              static_cast<uint16_t*>(base)[row * d + i] = FloatToHalf(in[i]);
            }
            break;
          case KvDType::kInt8: {
            const float mn = *std::min_element(in, in + d);
            const float mx = *std::max_element(in, in + d);
            const float scale = (mx - mn) / 255.f;
            for (int i = 0; i < d; ++i) {
              float q = 0;
              if (scale != 0) {
                q = std::nearbyint((in[i] - mn) / scale);
                q = std::min(255.f, std::max(0.f, q));
              }
              static_cast<uint8_t*>(base)[row * d + i] = static_cast<uint8_t>(q);
            }
            float* sz = which == 0 ? c.k_scale_zero : c.v_scale_zero;
            sz[row * 2] = scale;
            sz[row * 2 + 1] = mn;
            break;
          }
        }
      }
    }
  }
}

void KvReadRowRef(const KvCacheView& c, bool is_v, int layer, int block, int head, int offset,
                  float* out) {
  const int d = c.head_dim;
  const int64_t row = RowIndex(c, layer, block, head, offset);
  const void* base = is_v ? c.v : c.k;
  switch (c.dtype) {
    case KvDType::kF32:
      for (int i = 0; i < d; ++i) out[i] = static_cast<const float*>(base)[row * d + i];
      return;
    case KvDType::kF16:
      for (int i = 0; i < d; ++i) {
        out[i] = HalfToFloat(static_cast<const uint16_t*>(base)[row * d + i]);
      }
      return;
    case KvDType::kInt8: {
      const float* sz = is_v ? c.v_scale_zero : c.k_scale_zero;
      const double scale = sz[row * 2];
      const double zero = sz[row * 2 + 1];
      for (int i = 0; i < d; ++i) {
        out[i] = static_cast<float>(static_cast<const uint8_t*>(base)[row * d + i] * scale + zero);
      }
      return;
    }
  }
}

}  // namespace tandem::kernels::ref
