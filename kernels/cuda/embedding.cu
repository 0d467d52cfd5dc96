// Launcher of the embedding gather kernel (embedding.h). Built by nvcc into tandem_cuda and,
// unchanged, for the host harness into tandem_cuda_emu.
#include "common/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/embedding.cuh"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {
namespace {

template <typename T, DType kType>
void LaunchEmbedding(const EmbeddingParams& p, cudaStream_t stream) {
  Launch(EmbeddingKernel<T, kType>, dim3(static_cast<unsigned>(p.n)), dim3(kEmbeddingThreads), 0,
         stream, p, RowBytes(p.table_type, p.cols));
}

}  // namespace

bool EmbeddingTypeSupported(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kQ8_0 ||
         t == DType::kQ4_0 || t == DType::kQ4_1;
}

void EmbeddingGather(const EmbeddingParams& p, Stream stream) {
  TANDEM_CHECK(p.n >= 0 && p.cols > 0 && p.table_rows > 0);
  TANDEM_CHECK(EmbeddingTypeSupported(p.table_type));
  TANDEM_CHECK_EQ(p.cols % BlockElems(p.table_type), 0);
  if (p.n == 0) return;
  TANDEM_CHECK(p.table != nullptr && p.ids != nullptr && p.out != nullptr);
  const auto s = static_cast<cudaStream_t>(stream.handle);
  DispatchActivation(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    switch (p.table_type) {
      case DType::kF32:
        return LaunchEmbedding<T, DType::kF32>(p, s);
      case DType::kF16:
        return LaunchEmbedding<T, DType::kF16>(p, s);
      case DType::kBF16:
        return LaunchEmbedding<T, DType::kBF16>(p, s);
      case DType::kQ8_0:
        return LaunchEmbedding<T, DType::kQ8_0>(p, s);
      case DType::kQ4_0:
        return LaunchEmbedding<T, DType::kQ4_0>(p, s);
      case DType::kQ4_1:
        return LaunchEmbedding<T, DType::kQ4_1>(p, s);
      default:
        TANDEM_CHECK(false && "unsupported embedding table type");
    }
  });
}

void EmbeddingGatherPacked(const PackedEmbeddingParams& p, Stream stream) {
  const QuantWeights& w = p.table;
  TANDEM_CHECK(p.n >= 0 && w.n > 0 && w.k > 0);
  TANDEM_CHECK(w.bits == 4 || w.bits == 8);
  TANDEM_CHECK(w.group == 16 || w.group == 32 || w.group == 64 || w.group == 128);
  TANDEM_CHECK(w.n_pad >= w.n && w.n_pad % kQmPackTile == 0);
  TANDEM_CHECK(w.k_pad >= w.k && w.k_pad % kQmPackTile == 0);
  if (p.n == 0) return;
  TANDEM_CHECK(p.ids != nullptr && p.out != nullptr && w.q != nullptr && w.scales != nullptr);
  const auto s = static_cast<cudaStream_t>(stream.handle);
  DispatchActivation(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (w.bits == 4) {
      Launch(PackedEmbeddingKernel<T, 4>, dim3(static_cast<unsigned>(p.n)), dim3(kEmbeddingThreads),
             0, s, p);
    } else {
      Launch(PackedEmbeddingKernel<T, 8>, dim3(static_cast<unsigned>(p.n)), dim3(kEmbeddingThreads),
             0, s, p);
    }
  });
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda
