// Launchers of the sampling kernels (sample.h). Built by nvcc into tandem_cuda and,
// unchanged, for the host harness into tandem_cuda_emu.
#include <algorithm>

#include "common/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/sample.cuh"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

void GreedySample(const GreedySampleParams& p, Stream stream) {
  TANDEM_CHECK_GE(p.rows, 0);
  TANDEM_CHECK_GE(p.vocab, 1);
  if (p.rows == 0) return;
  TANDEM_CHECK(p.logits != nullptr && p.out_ids != nullptr);
  // A warp multiple (the block reductions need whole warps), no more threads than logits
  // beyond that.
  const int threads = std::min(kSampleThreads, (p.vocab + 31) / 32 * 32);
  DispatchActivation(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    Launch(GreedySampleKernel<T>, dim3(static_cast<unsigned>(p.rows)), dim3(threads), 0,
           static_cast<cudaStream_t>(stream.handle), p);
  });
}

void Sample(const SampleParams& p, ActivationDType dtype, Stream stream) {
  TANDEM_CHECK_GE(p.rows, 0);
  TANDEM_CHECK_GE(p.vocab, 1);
  if (p.rows == 0) return;
  TANDEM_CHECK(p.logits != nullptr && p.temperature != nullptr && p.top_k != nullptr &&
               p.top_p != nullptr && p.min_p != nullptr && p.seed != nullptr &&
               p.counter != nullptr && p.out_ids != nullptr);
  const int threads = std::min(kSampleThreads, (p.vocab + 31) / 32 * 32);
  DispatchActivation(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    Launch(SampleKernel<T>, dim3(static_cast<unsigned>(p.rows)), dim3(threads), 0,
           static_cast<cudaStream_t>(stream.handle), p);
  });
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda
