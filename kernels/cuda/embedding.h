// Embedding lookup on the GPU (kernels/cuda/embedding.cuh holds the kernels): rows of a token
// table dequantized into activations, from one of two layouts:
//   * EmbeddingGather: the table kept in GGUF's row format. Table types: F32, F16, BF16, Q4_0,
//     Q4_1, Q8_0. Definition: kernels/quant DequantizeRow of each row, rounded to the activation
//     dtype (every supported type dequantizes exactly in f32, so this is bit-exact);
//   * EmbeddingGatherPacked: the table repacked for QuantMatmul (quant_matmul.h), which covers
//     every quantized GGUF type (Q5_0, Q5_1 and the K-quants too) and is the one copy a tied
//     table needs. Each element is fmaf(code, scale, bias) of its group's fp16 pair, rounded to
//     the activation dtype: DequantizeRow's value exactly for the types whose pairs are exact,
//     within 2^-11 of the scale and the bias for the K-quants (quant_matmul.h).
// Thread safety: launchers are called by the stream's owning thread (one backend instance).
#ifndef TANDEM_KERNELS_CUDA_EMBEDDING_H_
#define TANDEM_KERNELS_CUDA_EMBEDDING_H_

#include <cstdint>

#include "kernels/backend.h"
#include "kernels/cuda/build_namespace.h"
#include "kernels/cuda/quant_matmul.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

struct EmbeddingParams {
  const void* table = nullptr;  // [table_rows, RowBytes(table_type, cols)] GGUF rows
  DType table_type = DType::kF32;
  int64_t table_rows = 0;
  int cols = 0;                  // a multiple of 32 for the quantized types
  const int32_t* ids = nullptr;  // [n] in [0, table_rows)
  int n = 0;
  void* out = nullptr;  // [n, cols] activation dtype
  ActivationDType dtype = ActivationDType::kF32;
};

// True for the table types EmbeddingGather reads.
bool EmbeddingTypeSupported(DType t);

// One block per id. An id out of range is a broken invariant: the kernel traps (aborts on the
// host). Aborts on an unsupported table type or broken preconditions.
void EmbeddingGather(const EmbeddingParams& p, Stream stream);

struct PackedEmbeddingParams {
  QuantWeights table;            // row id = the packed weight's row n; w.k columns
  const int32_t* ids = nullptr;  // [n] in [0, table.n)
  int n = 0;
  void* out = nullptr;  // [n, table.k] activation dtype
  ActivationDType dtype = ActivationDType::kF16;
};

// As EmbeddingGather, from the packed layout.
void EmbeddingGatherPacked(const PackedEmbeddingParams& p, Stream stream);

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_EMBEDDING_H_
