// Activation dtype dispatch for launchers of kernels/cuda: turns a run-time ActivationDType
// into the kernel template's element type (float, Half or Bf16).
// Thread safety: pure functions.
#ifndef TANDEM_KERNELS_CUDA_DTYPE_CUH_
#define TANDEM_KERNELS_CUDA_DTYPE_CUH_

#include "common/check.h"
#include "kernels/backend.h"
#include "kernels/emu/cuda_compat.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) with T the element type of `dtype`.
template <typename Fn>
void DispatchActivation(ActivationDType dtype, Fn&& fn) {
  switch (dtype) {
    case ActivationDType::kF32:
      fn(TypeTag<float>{});
      return;
    case ActivationDType::kF16:
      fn(TypeTag<Half>{});
      return;
    case ActivationDType::kBF16:
      fn(TypeTag<Bf16>{});
      return;
  }
  TANDEM_CHECK(false && "unknown ActivationDType");
}

inline unsigned CeilDiv(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_DTYPE_CUH_
