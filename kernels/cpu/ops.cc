// Dispatch of the CPU ops to their ISA variants, the process-wide ISA choice, the scalar
// variants, and the ops that have one implementation for every ISA (RoPE, row gather).
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "common/check.h"
#include "kernels/quant.h"

namespace tandem::kernels::cpu {
namespace {

std::atomic<OpsIsa>& IsaState() {
  static std::atomic<OpsIsa> isa{BestOpsIsa()};
  return isa;
}

void CheckRange(int64_t begin, int64_t end) {
  TANDEM_CHECK_LE(0, begin);
  TANDEM_CHECK_LE(begin, end);
}

int64_t KvRowIndex(const KvCacheView& c, int layer, int block, int head, int offset,
                   int row_elems) {
  return (((static_cast<int64_t>(layer) * c.n_blocks + block) * c.n_kv_heads + head) *
              c.block_size +
          offset) *
         row_elems;
}

// cos/sin of pos * inv_freq[i]: the angle is formed in double because at positions in the
// thousands a float angle is already off by ~1e-4 rad.
void RopeAngles(int32_t pos, const double* inv_freq, int half, float* cos_t, float* sin_t) {
  for (int i = 0; i < half; ++i) {
    const double a = static_cast<double>(pos) * inv_freq[i];
    cos_t[i] = static_cast<float>(std::cos(a));
    sin_t[i] = static_cast<float>(std::sin(a));
  }
}

void RotateHead(float* v, const float* cos_t, const float* sin_t, int half, RopeStyle style) {
  if (style == RopeStyle::kNormal) {
    for (int i = 0; i < half; ++i) {
      const float x0 = v[2 * i];
      const float x1 = v[2 * i + 1];
      v[2 * i] = x0 * cos_t[i] - x1 * sin_t[i];
      v[2 * i + 1] = x0 * sin_t[i] + x1 * cos_t[i];
    }
  } else {
    for (int i = 0; i < half; ++i) {
      const float x0 = v[i];
      const float x1 = v[i + half];
      v[i] = x0 * cos_t[i] - x1 * sin_t[i];
      v[i + half] = x0 * sin_t[i] + x1 * cos_t[i];
    }
  }
}

}  // namespace

bool OpsIsaSupported(OpsIsa isa) {
  // Needed when this runs before libgcc's own constructor (e.g. from a static initializer).
  __builtin_cpu_init();
  switch (isa) {
    case OpsIsa::kScalar:
      return true;
    case OpsIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case OpsIsa::kAvx512:
      // The *_avx512.cc files are also built with VNNI/BF16 enabled, but their float code
      // uses no instruction from those extensions, so F/BW/VL/DQ are what it needs.
      return OpsIsaSupported(OpsIsa::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq");
  }
  return false;
}

OpsIsa BestOpsIsa() {
  if (OpsIsaSupported(OpsIsa::kAvx512)) return OpsIsa::kAvx512;
  if (OpsIsaSupported(OpsIsa::kAvx2)) return OpsIsa::kAvx2;
  return OpsIsa::kScalar;
}

void SetOpsIsa(OpsIsa isa) {
  TANDEM_CHECK(OpsIsaSupported(isa));
  IsaState().store(isa, std::memory_order_relaxed);
}

OpsIsa GetOpsIsa() { return IsaState().load(std::memory_order_relaxed); }

const char* OpsIsaName(OpsIsa isa) {
  switch (isa) {
    case OpsIsa::kScalar:
      return "scalar";
    case OpsIsa::kAvx2:
      return "avx2";
    case OpsIsa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------------------
// Dispatchers.

void RmsNormRange(const float* x, const float* w, int dim, float eps, float* out, int64_t begin,
                  int64_t end) {
  TANDEM_CHECK_GT(dim, 0);
  CheckRange(begin, end);
  switch (GetOpsIsa()) {
    case OpsIsa::kAvx512:
      return internal::RmsNormRangeAvx512(x, w, dim, eps, out, begin, end);
    case OpsIsa::kAvx2:
      return internal::RmsNormRangeAvx2(x, w, dim, eps, out, begin, end);
    case OpsIsa::kScalar:
      break;
  }
  internal::RmsNormRangeScalar(x, w, dim, eps, out, begin, end);
}

void SwiGluRange(const float* gate, const float* up, int dim, float* out, int64_t begin,
                 int64_t end) {
  TANDEM_CHECK_GT(dim, 0);
  CheckRange(begin, end);
  switch (GetOpsIsa()) {
    case OpsIsa::kAvx512:
      return internal::SwiGluRangeAvx512(gate, up, dim, out, begin, end);
    case OpsIsa::kAvx2:
      return internal::SwiGluRangeAvx2(gate, up, dim, out, begin, end);
    case OpsIsa::kScalar:
      break;
  }
  internal::SwiGluRangeScalar(gate, up, dim, out, begin, end);
}

void GeGluRange(const float* gate, const float* up, int dim, float* out, int64_t begin,
                int64_t end) {
  TANDEM_CHECK_GT(dim, 0);
  CheckRange(begin, end);
  switch (GetOpsIsa()) {
    case OpsIsa::kAvx512:
      return internal::GeGluRangeAvx512(gate, up, dim, out, begin, end);
    case OpsIsa::kAvx2:
      return internal::GeGluRangeAvx2(gate, up, dim, out, begin, end);
    case OpsIsa::kScalar:
      break;
  }
  internal::GeGluRangeScalar(gate, up, dim, out, begin, end);
}

void AddBiasRange(float* x, const float* bias, int dim, int64_t begin, int64_t end) {
  TANDEM_CHECK_GT(dim, 0);
  CheckRange(begin, end);
  switch (GetOpsIsa()) {
    case OpsIsa::kAvx512:
      return internal::AddBiasRangeAvx512(x, bias, dim, begin, end);
    case OpsIsa::kAvx2:
      return internal::AddBiasRangeAvx2(x, bias, dim, begin, end);
    case OpsIsa::kScalar:
      break;
  }
  internal::AddBiasRangeScalar(x, bias, dim, begin, end);
}

void AddRange(float* x, const float* y, int64_t begin, int64_t end) {
  CheckRange(begin, end);
  switch (GetOpsIsa()) {
    case OpsIsa::kAvx512:
      return internal::AddRangeAvx512(x, y, begin, end);
    case OpsIsa::kAvx2:
      return internal::AddRangeAvx2(x, y, begin, end);
    case OpsIsa::kScalar:
      break;
  }
  internal::AddRangeScalar(x, y, begin, end);
}

void ScaleRange(float* x, float factor, int64_t begin, int64_t end) {
  CheckRange(begin, end);
  switch (GetOpsIsa()) {
    case OpsIsa::kAvx512:
      return internal::ScaleRangeAvx512(x, factor, begin, end);
    case OpsIsa::kAvx2:
      return internal::ScaleRangeAvx2(x, factor, begin, end);
    case OpsIsa::kScalar:
      break;
  }
  internal::ScaleRangeScalar(x, factor, begin, end);
}

void GatherRowsRange(const float* x, const int32_t* idx, int dim, float* out, int64_t begin,
                     int64_t end) {
  TANDEM_CHECK_GT(dim, 0);
  CheckRange(begin, end);
  // memcpy is already vectorized by libc; there is nothing for an ISA variant to add.
  for (int64_t r = begin; r < end; ++r) {
    TANDEM_CHECK_GE(idx[r], 0);
    std::memcpy(out + r * dim, x + static_cast<int64_t>(idx[r]) * dim, sizeof(float) * dim);
  }
}

void RopeRange(const RopeParams& p, int64_t begin, int64_t end) {
  CheckRange(begin, end);
  TANDEM_CHECK_LE(end, p.n_tokens);
  TANDEM_CHECK_GT(p.head_dim, 0);
  TANDEM_CHECK_LE(p.head_dim, kMaxHeadDim);
  TANDEM_CHECK_GT(p.rot_dim, 0);
  TANDEM_CHECK_LE(p.rot_dim, p.head_dim);
  TANDEM_CHECK_EQ(p.rot_dim % 2, 0);
  // One implementation for every ISA: per token the work is rot_dim/2 sin/cos pairs shared by
  // all heads, then a few multiplies per element; it is a rounding error next to the matmuls.
  const int half = p.rot_dim / 2;
  double inv_freq[kMaxHeadDim / 2];
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(static_cast<double>(p.theta), -2.0 * i / p.rot_dim);
  }
  float cos_t[kMaxHeadDim / 2];
  float sin_t[kMaxHeadDim / 2];
  for (int64_t t = begin; t < end; ++t) {
    RopeAngles(p.positions[t], inv_freq, half, cos_t, sin_t);
    for (int h = 0; h < p.n_heads; ++h) {
      RotateHead(p.q + (t * p.n_heads + h) * p.head_dim, cos_t, sin_t, half, p.style);
    }
    for (int h = 0; h < p.n_kv_heads; ++h) {
      RotateHead(p.k + (t * p.n_kv_heads + h) * p.head_dim, cos_t, sin_t, half, p.style);
    }
  }
}

void KvAppendRange(const KvAppendParams& p, int64_t begin, int64_t end) {
  const KvCacheView& c = p.cache;
  CheckRange(begin, end);
  TANDEM_CHECK_LE(end, p.n_tokens);
  TANDEM_CHECK_GE(p.layer, 0);
  TANDEM_CHECK_LT(p.layer, c.n_layers);
  TANDEM_CHECK_GT(c.head_dim, 0);
  TANDEM_CHECK_LE(c.head_dim, kMaxHeadDim);
  TANDEM_CHECK_GT(c.block_size, 0);
  if (c.dtype == KvDType::kInt8) {
    TANDEM_CHECK(c.k_scale_zero != nullptr && c.v_scale_zero != nullptr);
  }
  const int64_t n_slots = static_cast<int64_t>(c.n_blocks) * c.block_size;
  for (int64_t t = begin; t < end; ++t) {
    TANDEM_CHECK_GE(p.slots[t], 0);
    TANDEM_CHECK_LT(p.slots[t], n_slots);
  }
  if (c.head_dim % 16 == 0) {
    switch (GetOpsIsa()) {
      case OpsIsa::kAvx512:
        return internal::KvAppendRangeAvx512(p, begin, end);
      case OpsIsa::kAvx2:
        return internal::KvAppendRangeAvx2(p, begin, end);
      case OpsIsa::kScalar:
        break;
    }
  }
  internal::KvAppendRangeScalar(p, begin, end);
}

// ---------------------------------------------------------------------------------------
// Scalar variants: the fallback on CPUs without AVX2 and the baseline the tests force.

namespace internal {

void RmsNormRangeScalar(const float* x, const float* w, int dim, float eps, float* out,
                        int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const float* xr = x + r * dim;
    float* outr = out + r * dim;
    double sum = 0;
    for (int i = 0; i < dim; ++i) sum += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(sum / dim + eps));
    for (int i = 0; i < dim; ++i) outr[i] = xr[i] * inv * w[i];
  }
}

void SwiGluRangeScalar(const float* gate, const float* up, int dim, float* out, int64_t begin,
                       int64_t end) {
  for (int64_t i = begin * dim; i < end * dim; ++i) {
    const float g = gate[i];
    out[i] = g / (1.f + std::exp(-g)) * up[i];
  }
}

void GeGluRangeScalar(const float* gate, const float* up, int dim, float* out, int64_t begin,
                      int64_t end) {
  for (int64_t i = begin * dim; i < end * dim; ++i) {
    const float g = gate[i];
    const float z = g * (kGeluZ + kGeluZ3 * (g * g));
    // exp overflows to inf for z < -88.7: g / inf is the 0 that gelu tends to.
    out[i] = g / (1.f + std::exp(-z)) * up[i];
  }
}

void AddBiasRangeScalar(float* x, const float* bias, int dim, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    float* xr = x + r * dim;
    for (int i = 0; i < dim; ++i) xr[i] += bias[i];
  }
}

void AddRangeScalar(float* x, const float* y, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) x[i] += y[i];
}

void ScaleRangeScalar(float* x, float factor, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) x[i] *= factor;
}

void KvAppendRangeScalar(const KvAppendParams& p, int64_t begin, int64_t end) {
  const KvCacheView& c = p.cache;
  const int d = c.head_dim;
  for (int64_t t = begin; t < end; ++t) {
    const int block = p.slots[t] / c.block_size;
    const int offset = p.slots[t] % c.block_size;
    for (int h = 0; h < c.n_kv_heads; ++h) {
      const int64_t src = (t * c.n_kv_heads + h) * d;
      const int64_t dst = KvRowIndex(c, p.layer, block, h, offset, d);
      for (int which = 0; which < 2; ++which) {
        const float* in = (which == 0 ? p.k : p.v) + src;
        void* base = which == 0 ? c.k : c.v;
        switch (c.dtype) {
          case KvDType::kF32:
            std::memcpy(static_cast<float*>(base) + dst, in, sizeof(float) * d);
            break;
          case KvDType::kF16: {
            uint16_t* o = static_cast<uint16_t*>(base) + dst;
            for (int i = 0; i < d; ++i) o[i] = FloatToHalf(in[i]);
            break;
          }
          case KvDType::kInt8: {
            float mn = in[0], mx = in[0];
            for (int i = 1; i < d; ++i) {
              mn = std::min(mn, in[i]);
              mx = std::max(mx, in[i]);
            }
            // Same float formula in every variant and the reference, so the stored bytes are
            // identical: IEEE division and round-to-nearest-even are exact operations.
            const float scale = (mx - mn) / 255.f;
            uint8_t* o = static_cast<uint8_t*>(base) + dst;
            for (int i = 0; i < d; ++i) {
              const float qf = scale > 0 ? std::nearbyint((in[i] - mn) / scale) : 0.f;
              o[i] = static_cast<uint8_t>(std::clamp(qf, 0.f, 255.f));
            }
            float* sz = (which == 0 ? c.k_scale_zero : c.v_scale_zero) +
                        KvRowIndex(c, p.layer, block, h, offset, 2);
            sz[0] = scale;
            sz[1] = mn;
            break;
          }
        }
      }
    }
  }
}

}  // namespace internal
}  // namespace tandem::kernels::cpu
