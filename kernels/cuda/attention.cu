// Launchers of the split-K and the tiled prefill attention kernels (attention.h). Built by nvcc
// into tandem_cuda
// and, unchanged, for the host harness into tandem_cuda_emu.
#include <algorithm>
#include <type_traits>

#include "common/check.h"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/dtype.cuh"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

namespace {

int Splits(int max_context, int split) { return (max_context + split - 1) / split; }

}  // namespace

size_t AttentionWorkspaceFloats(const AttentionParams& p, int max_context, int split) {
  return static_cast<size_t>(p.n_tokens) * p.n_heads * Splits(max_context, split) *
         (p.head_dim + 2);
}

void Attention(const AttentionParams& p, ActivationDType dtype, int max_context, float* workspace,
               Stream stream, int split) {
  const KvCacheView& c = p.cache;
  TANDEM_CHECK_GE(p.n_tokens, 0);
  TANDEM_CHECK_GT(split, 0);
  TANDEM_CHECK_GT(max_context, 0);
  TANDEM_CHECK(p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0);
  TANDEM_CHECK(p.head_dim > 0 && p.head_dim <= kAttentionMaxHeadDim);
  TANDEM_CHECK_EQ(p.head_dim, c.head_dim);
  TANDEM_CHECK_EQ(p.n_kv_heads, c.n_kv_heads);
  TANDEM_CHECK(p.layer >= 0 && p.layer < c.n_layers);
  TANDEM_CHECK_GE(p.window, 0);
  if (p.n_tokens == 0) return;
  TANDEM_CHECK(p.q != nullptr && p.out != nullptr && workspace != nullptr);
  TANDEM_CHECK(c.k != nullptr && c.v != nullptr);
  if (c.dtype == KvDType::kInt8) {
    TANDEM_CHECK(c.k_scale_zero != nullptr && c.v_scale_zero != nullptr);
  }
  const int n_splits = Splits(max_context, split);
  const int group = p.n_heads / p.n_kv_heads;
  const int chunks = (group + kAttentionMaxGroup - 1) / kAttentionMaxGroup;
  const dim3 grid(static_cast<unsigned>(n_splits), static_cast<unsigned>(p.n_kv_heads * chunks),
                  static_cast<unsigned>(p.n_tokens));
  const size_t shared = sizeof(float) * (static_cast<size_t>(kAttentionMaxGroup) * p.head_dim +
                                         static_cast<size_t>(kAttentionWarps) * kAttentionMaxGroup *
                                             (p.head_dim + 2));
  const auto s = static_cast<cudaStream_t>(stream.handle);
  DispatchActivation(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    switch (c.dtype) {
      case KvDType::kF32:
        Launch(AttentionSplitKernel<T, KvDType::kF32>, grid, dim3(kAttentionThreads), shared, s, p,
               split, n_splits, workspace);
        break;
      case KvDType::kF16:
        Launch(AttentionSplitKernel<T, KvDType::kF16>, grid, dim3(kAttentionThreads), shared, s, p,
               split, n_splits, workspace);
        break;
      case KvDType::kInt8:
        Launch(AttentionSplitKernel<T, KvDType::kInt8>, grid, dim3(kAttentionThreads), shared, s, p,
               split, n_splits, workspace);
        break;
    }
    Launch(AttentionMergeKernel<T>,
           dim3(static_cast<unsigned>(p.n_heads), static_cast<unsigned>(p.n_tokens)),
           dim3(kAttentionThreads), 0, s, p, n_splits, static_cast<const float*>(workspace));
  });
}

int AttentionPrefillTileTokens(int head_dim, int group) {
  return std::max(1, PrefillRows(head_dim) / group);
}

void AttentionPrefill(const AttentionParams& p, ActivationDType dtype, Stream stream) {
  const KvCacheView& c = p.cache;
  TANDEM_CHECK_GE(p.n_tokens, 0);
  TANDEM_CHECK(p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0);
  TANDEM_CHECK(p.head_dim > 0 && p.head_dim <= kAttentionMaxHeadDim);
  TANDEM_CHECK_EQ(p.head_dim, c.head_dim);
  TANDEM_CHECK_EQ(p.n_kv_heads, c.n_kv_heads);
  TANDEM_CHECK(p.layer >= 0 && p.layer < c.n_layers);
  TANDEM_CHECK_GE(p.window, 0);
  const int group = p.n_heads / p.n_kv_heads;
  TANDEM_CHECK_LE(group, PrefillRows(p.head_dim));
  if (p.n_tokens == 0) return;
  TANDEM_CHECK(p.q != nullptr && p.out != nullptr);
  TANDEM_CHECK(c.k != nullptr && c.v != nullptr);
  if (c.dtype == KvDType::kInt8) {
    TANDEM_CHECK(c.k_scale_zero != nullptr && c.v_scale_zero != nullptr);
  }
  const int tile = AttentionPrefillTileTokens(p.head_dim, group);
  const dim3 grid(static_cast<unsigned>((p.n_tokens + tile - 1) / tile),
                  static_cast<unsigned>(p.n_kv_heads));
  const size_t shared = PrefillSharedBytes(p.head_dim);
  const auto s = static_cast<cudaStream_t>(stream.handle);
  DispatchActivation(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    switch (c.dtype) {
      case KvDType::kF32:
        Launch(AttentionPrefillKernel<T, KvDType::kF32>, grid, dim3(kAttentionThreads), shared, s,
               p, tile);
        break;
      case KvDType::kF16:
        Launch(AttentionPrefillKernel<T, KvDType::kF16>, grid, dim3(kAttentionThreads), shared, s,
               p, tile);
        break;
      case KvDType::kInt8:
        Launch(AttentionPrefillKernel<T, KvDType::kInt8>, grid, dim3(kAttentionThreads), shared, s,
               p, tile);
        break;
    }
  });
}

bool AttentionPrefillMmaSupports(const AttentionParams& p, ActivationDType dtype) {
  return dtype != ActivationDType::kF32 && (p.head_dim == 64 || p.head_dim == 128) &&
         p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0 && p.n_heads / p.n_kv_heads <= kMmaRows;
}

void AttentionPrefillMma(const AttentionParams& p, ActivationDType dtype, Stream stream) {
  const KvCacheView& c = p.cache;
  TANDEM_CHECK(AttentionPrefillMmaSupports(p, dtype));
  TANDEM_CHECK_GE(p.n_tokens, 0);
  TANDEM_CHECK_EQ(p.head_dim, c.head_dim);
  TANDEM_CHECK_EQ(p.n_kv_heads, c.n_kv_heads);
  TANDEM_CHECK(p.layer >= 0 && p.layer < c.n_layers);
  TANDEM_CHECK_GE(p.window, 0);
  if (p.n_tokens == 0) return;
  TANDEM_CHECK(p.q != nullptr && p.out != nullptr);
  TANDEM_CHECK(c.k != nullptr && c.v != nullptr);
  if (c.dtype == KvDType::kInt8) {
    TANDEM_CHECK(c.k_scale_zero != nullptr && c.v_scale_zero != nullptr);
  }
  const int tile = std::max(1, kMmaRows / (p.n_heads / p.n_kv_heads));
  const dim3 grid(static_cast<unsigned>((p.n_tokens + tile - 1) / tile),
                  static_cast<unsigned>(p.n_kv_heads));
  const auto s = static_cast<cudaStream_t>(stream.handle);
  auto launch = [&](auto tag, auto cache, auto dim) {
    using T = typename decltype(tag)::type;
    Launch(AttentionPrefillMmaKernel<T, decltype(cache)::value, decltype(dim)::value>, grid,
           dim3(kAttentionThreads), 0, s, p, tile);
  };
  auto with_dim = [&](auto tag, auto cache) {
    if (p.head_dim == 64) {
      launch(tag, cache, std::integral_constant<int, 64>());
    } else {
      launch(tag, cache, std::integral_constant<int, 128>());
    }
  };
  DispatchActivation(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float>) {
      TANDEM_CHECK(false && "f32 activations have no tensor-core path");
    } else {
      switch (c.dtype) {
        case KvDType::kF32:
          with_dim(tag, std::integral_constant<KvDType, KvDType::kF32>());
          break;
        case KvDType::kF16:
          with_dim(tag, std::integral_constant<KvDType, KvDType::kF16>());
          break;
        case KvDType::kInt8:
          with_dim(tag, std::integral_constant<KvDType, KvDType::kInt8>());
          break;
      }
    }
  });
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda
