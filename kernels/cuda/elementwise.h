// The small memory-bound ops of a layer on the GPU (kernels/cuda/elementwise.cuh holds the
// kernels): Add, AddBias and Scale (one family, ElementwiseParams), GatherRows, and Convert
// between activation dtypes (logits to the host in f32, inputs from it). Definitions:
// kernels/ref AddRef, AddBiasRef, ScaleRef, GatherRowsRef; Convert is one round to nearest even
// of the exact value. Each element is one IEEE f32 operation on the (exactly widened) inputs,
// rounded once to the activation dtype, so every op equals its reference bit for bit in f32 and
// equals the reference's f32 result rounded to f16 / bf16 in those dtypes.
// Thread safety: launchers are called by the stream's owning thread (one backend instance).
#ifndef TANDEM_KERNELS_CUDA_ELEMENTWISE_H_
#define TANDEM_KERNELS_CUDA_ELEMENTWISE_H_

#include <cstdint>

#include "kernels/backend.h"
#include "kernels/cuda/build_namespace.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

enum class ElementwiseOp {
  kAdd,      // x[n] += y[n]; y may alias x
  kAddBias,  // x[n / dim, dim] += bias[dim]
  kScale,    // x[n] *= factor
};

struct ElementwiseParams {
  void* x = nullptr;            // [n] activation dtype, updated in place
  const void* y = nullptr;      // [n] activation dtype (kAdd); may alias x
  const float* bias = nullptr;  // [dim] f32 (kAddBias)
  float factor = 1.f;           // kScale
  int64_t n = 0;                // elements of x; a multiple of dim for kAddBias
  int dim = 0;                  // row length (kAddBias)
  ElementwiseOp op = ElementwiseOp::kAdd;
  ActivationDType dtype = ActivationDType::kF32;
};

// Grid-stride over n. Aborts on broken preconditions (negative sizes, null pointers, n not a
// multiple of dim for kAddBias).
void Elementwise(const ElementwiseParams& p, Stream stream);

struct GatherRowsParams {
  const void* x = nullptr;       // [x_rows, dim] activation dtype
  const int32_t* idx = nullptr;  // [n] row ids in [0, x_rows)
  void* out = nullptr;           // [n, dim] activation dtype; must not overlap x
  int n = 0;
  int dim = 0;
  int x_rows = 0;
  ActivationDType dtype = ActivationDType::kF32;
};

// out[i] = x[idx[i]]: one block per output row. An id out of range is a broken invariant: the
// kernel traps (aborts on the host).
void GatherRows(const GatherRowsParams& p, Stream stream);

struct ConvertParams {
  const void* in = nullptr;  // [n] of in_dtype
  void* out = nullptr;       // [n] of out_dtype; must not overlap in (unless in_dtype == out_dtype
                             // and out == in, a no-op)
  int64_t n = 0;
  ActivationDType in_dtype = ActivationDType::kF16;
  ActivationDType out_dtype = ActivationDType::kF32;
};

// out = in converted through f32 (exact for f16 and bf16), rounded once to nearest even:
// f16 overflow gives inf, NaN stays NaN. Any pair of dtypes; equal dtypes copy.
void Convert(const ConvertParams& p, Stream stream);

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_ELEMENTWISE_H_
