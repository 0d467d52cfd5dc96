// Scalar references for the non-matmul ops (RMSNorm, SwiGLU, GeGLU, bias, add, scale, row
// gather, RoPE, KV append) with whole-batch signatures mirroring kernels::Backend. They define what
// each op computes; backends are tested against them. Plain C++, double where accumulation or
// angles lose precision, no speed concerns.
// Thread safety: pure functions of their arguments.
#ifndef TANDEM_KERNELS_REF_OPS_REF_H_
#define TANDEM_KERNELS_REF_OPS_REF_H_

#include <cstdint>

#include "kernels/backend.h"

namespace tandem::kernels::ref {

// out[rows, dim] = x / sqrt(mean(x^2) + eps) * w; out may alias x.
void RmsNormRef(const float* x, const float* w, int rows, int dim, float eps, float* out);
// out[rows, dim] = gate / (1 + exp(-gate)) * up.
void SwiGluRef(const float* gate, const float* up, int rows, int dim, float* out);
// out[rows, dim] = gelu(gate) * up, gelu(x) = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
// (GELU's tanh approximation: ggml_gelu, PyTorch's gelu(approximate="tanh")), in double.
void GeGluRef(const float* gate, const float* up, int rows, int dim, float* out);
// x[rows, dim] += bias[dim].
void AddBiasRef(float* x, const float* bias, int rows, int dim);
// x[n] += y[n].
void AddRef(float* x, const float* y, int64_t n);
// x[n] *= factor.
void ScaleRef(float* x, float factor, int64_t n);
// out[n, dim] = x[idx[i], dim].
void GatherRowsRef(const float* x, const int32_t* idx, int n, int dim, float* out);

// Rotates p.q and p.k in place: for pair i < rot_dim / 2 the angle is
// pos * theta^(-2i / rot_dim); kNormal pairs (2i, 2i + 1), kNeox pairs (i, i + rot_dim / 2).
void RopeRef(const RopeParams& p);

// Writes each token's K and V rows into slot p.slots[t] of layer p.layer. F16 rounds to
// nearest even. Int8 per (token, head) row: scale = (max - min) / 255, zero = min,
// q = round_half_even((x - zero) / scale) clamped to [0, 255] (q = 0 when scale == 0),
// all in float so that every backend can store the identical bytes.
void KvAppendRef(const KvAppendParams& p);

// Reads back the dequantized K (is_v false) or V row of (layer, block, head, offset):
// head_dim floats; int8 values are q * scale + zero.
void KvReadRowRef(const KvCacheView& c, bool is_v, int layer, int block, int head, int offset,
                  float* out);

}  // namespace tandem::kernels::ref

#endif  // TANDEM_KERNELS_REF_OPS_REF_H_
