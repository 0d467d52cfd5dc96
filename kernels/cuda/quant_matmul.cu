// Launcher of the weight-only quantized matmul kernels (quant_matmul.h). Built by nvcc into
// tandem_cuda and, unchanged, for the host harness into tandem_cuda_emu.
#include <cstdint>

#include "common/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/quant_matmul.cuh"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {
namespace {

template <typename T, int kBits, int kGroup>
void LaunchQm(const QuantMatmulParams& p, bool gemv, cudaStream_t stream) {
  if (gemv) {
    const int groups = p.w.n_pad / 8;  // a multiple of 8: whole blocks of 4 warps
    Launch(QmGemvKernel<T, kBits, kGroup>, dim3(CeilDiv(groups, kQmThreads / 32)), dim3(kQmThreads),
           0, stream, p);
  } else {
    Launch(QmGemmKernel<T, kBits, kGroup>, dim3(p.w.n_pad / kQmTile, CeilDiv(p.m, kQmTile)),
           dim3(kQmThreads), 0, stream, p);
  }
}

template <typename T>
void DispatchFormat(const QuantMatmulParams& p, bool gemv, cudaStream_t stream) {
  if (p.w.bits == 8) {  // Q8_0, Q5_0, Q5_1, Q5_K (32); Q6_K (16)
    if (p.w.group == 16) return LaunchQm<T, 8, 16>(p, gemv, stream);
    TANDEM_CHECK_EQ(p.w.group, 32);
    return LaunchQm<T, 8, 32>(p, gemv, stream);
  }
  switch (p.w.group) {
    case 16:  // Q2_K, Q3_K
      return LaunchQm<T, 4, 16>(p, gemv, stream);
    case 32:
      return LaunchQm<T, 4, 32>(p, gemv, stream);
    case 64:
      return LaunchQm<T, 4, 64>(p, gemv, stream);
    case 128:
      return LaunchQm<T, 4, 128>(p, gemv, stream);
    default:
      TANDEM_CHECK(false && "QuantMatmul: group must be 16, 32, 64 or 128");
  }
}

}  // namespace

void QuantMatmul(const QuantMatmulParams& p, Stream stream) {
  const QuantWeights& w = p.w;
  TANDEM_CHECK(p.m >= 0 && w.n > 0 && w.k > 0);
  TANDEM_CHECK(w.bits == 4 || w.bits == 8);
  TANDEM_CHECK(w.group == 16 || w.group == 32 || w.group == 64 || w.group == 128);
  TANDEM_CHECK_EQ(w.k % w.group, 0);
  TANDEM_CHECK_EQ(w.k % 32, 0);  // a half tile of 32 k is all in or all padding
  TANDEM_CHECK_EQ(w.n_pad % kQmPackTile, 0);
  TANDEM_CHECK_EQ(w.k_pad % kQmPackTile, 0);
  TANDEM_CHECK(w.n_pad >= w.n && w.n_pad - w.n < kQmPackTile);
  TANDEM_CHECK(w.k_pad >= w.k && w.k_pad - w.k < kQmPackTile);
  TANDEM_CHECK(p.dtype == ActivationDType::kF16 || p.dtype == ActivationDType::kBF16);
  if (p.m == 0) return;
  TANDEM_CHECK(p.x != nullptr && p.y != nullptr && w.q != nullptr && w.scales != nullptr);
  // cp.async of 16-byte chunks: x's base (rows are k * 2 bytes, a multiple of 64) and the
  // weight arrays must be 16-byte aligned.
  TANDEM_CHECK_EQ(reinterpret_cast<uintptr_t>(p.x) % 16, 0u);
  TANDEM_CHECK_EQ(reinterpret_cast<uintptr_t>(w.q) % 16, 0u);
  TANDEM_CHECK_EQ(reinterpret_cast<uintptr_t>(w.scales) % 16, 0u);
  const bool gemv = p.path == QuantMatmulPath::kGemv ||
                    (p.path == QuantMatmulPath::kAuto && p.m <= kQmGemvMaxRows);
  if (gemv) TANDEM_CHECK_LE(p.m, kQmGemvMaxRows);
  const auto s = static_cast<cudaStream_t>(stream.handle);
  if (p.dtype == ActivationDType::kF16) {
    DispatchFormat<Half>(p, gemv, s);
  } else {
    DispatchFormat<Bf16>(p, gemv, s);
  }
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda
