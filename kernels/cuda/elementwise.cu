// Launchers of the elementwise kernels (elementwise.h). Built by nvcc into tandem_cuda and,
// unchanged, for the host harness into tandem_cuda_emu.
#include <algorithm>

#include "common/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/elementwise.cuh"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {
namespace {

// Enough blocks to fill any current GPU several times over; the grid-stride loop covers the
// rest (and keeps the host harness from running millions of tiny blocks).
constexpr int64_t kElementwiseMaxBlocks = 4096;

unsigned GridFor(int64_t n) {
  return static_cast<unsigned>(
      std::min(kElementwiseMaxBlocks, (n + kElementwiseThreads - 1) / kElementwiseThreads));
}

}  // namespace

void Elementwise(const ElementwiseParams& p, Stream stream) {
  TANDEM_CHECK_GE(p.n, 0);
  if (p.op == ElementwiseOp::kAddBias) {
    TANDEM_CHECK_GT(p.dim, 0);
    TANDEM_CHECK_EQ(p.n % p.dim, 0);
  }
  if (p.n == 0) return;
  TANDEM_CHECK(p.x != nullptr);
  if (p.op == ElementwiseOp::kAdd) TANDEM_CHECK(p.y != nullptr);
  if (p.op == ElementwiseOp::kAddBias) TANDEM_CHECK(p.bias != nullptr);
  const auto s = static_cast<cudaStream_t>(stream.handle);
  DispatchActivation(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    switch (p.op) {
      case ElementwiseOp::kAdd:
        return Launch(ElementwiseKernel<T, ElementwiseOp::kAdd>, dim3(GridFor(p.n)),
                      dim3(kElementwiseThreads), 0, s, p);
      case ElementwiseOp::kAddBias:
        return Launch(ElementwiseKernel<T, ElementwiseOp::kAddBias>, dim3(GridFor(p.n)),
                      dim3(kElementwiseThreads), 0, s, p);
      case ElementwiseOp::kScale:
        return Launch(ElementwiseKernel<T, ElementwiseOp::kScale>, dim3(GridFor(p.n)),
                      dim3(kElementwiseThreads), 0, s, p);
    }
    TANDEM_CHECK(false && "unknown ElementwiseOp");
  });
}

void GatherRows(const GatherRowsParams& p, Stream stream) {
  TANDEM_CHECK(p.n >= 0 && p.dim > 0 && p.x_rows >= 0);
  if (p.n == 0) return;
  TANDEM_CHECK(p.x != nullptr && p.idx != nullptr && p.out != nullptr);
  // A warp multiple, no more threads than elements beyond that.
  const int threads = std::min(kGatherRowsMaxThreads, (p.dim + 31) / 32 * 32);
  DispatchActivation(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    Launch(GatherRowsKernel<T>, dim3(static_cast<unsigned>(p.n)), dim3(threads), 0,
           static_cast<cudaStream_t>(stream.handle), p);
  });
}

void Convert(const ConvertParams& p, Stream stream) {
  TANDEM_CHECK_GE(p.n, 0);
  if (p.n == 0 || (p.in == p.out && p.in_dtype == p.out_dtype)) return;
  TANDEM_CHECK(p.in != nullptr && p.out != nullptr);
  const auto s = static_cast<cudaStream_t>(stream.handle);
  DispatchActivation(p.in_dtype, [&](auto in_tag) {
    DispatchActivation(p.out_dtype, [&](auto out_tag) {
      using In = typename decltype(in_tag)::type;
      using Out = typename decltype(out_tag)::type;
      Launch(ConvertKernel<In, Out>, dim3(GridFor(p.n)), dim3(kElementwiseThreads), 0, s, p);
    });
  });
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda
