// KV append kernel (launcher: kernels/cuda/kv_append.cu). One block per token, one warp per
// (head, K or V) row at a time: lanes stride over head_dim; for int8 the row's min and max
// come from warp butterflies (exact, so order-free), then every lane quantizes its elements
// with the reference's float formula (DivRn keeps nvcc from approximating the divisions), and
// lane 0 stores (scale, zero).
// Thread safety: device code.
#ifndef TANDEM_KERNELS_CUDA_KV_APPEND_CUH_
#define TANDEM_KERNELS_CUDA_KV_APPEND_CUH_

#include "kernels/cuda/kv_append.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/emu/cuda_compat.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

inline constexpr int kKvAppendThreads = 128;

template <typename T, KvDType kCache>
__global__ void __launch_bounds__(kKvAppendThreads) KvAppendKernel(KvAppendParams p) {
  const KvCacheView& c = p.cache;
  const int t = blockIdx.x;
  const int slot = p.slots[t];
  TANDEM_DEVICE_CHECK(slot >= 0 && slot < c.n_blocks * c.block_size);
  const int block = slot / c.block_size;
  const int offset = slot % c.block_size;
  const int lane = threadIdx.x % 32;
  const int n_warps = blockDim.x / 32;
  const int d = c.head_dim;
  for (int r = threadIdx.x / 32; r < 2 * c.n_kv_heads; r += n_warps) {
    const int h = r / 2;
    const bool is_v = r % 2 == 1;
    const T* in = static_cast<const T*>(static_cast<const void*>(is_v ? p.v : p.k)) +
                  (static_cast<int64_t>(t) * c.n_kv_heads + h) * d;
    const int64_t row =
        ((static_cast<int64_t>(p.layer) * c.n_blocks + block) * c.n_kv_heads + h) * c.block_size +
        offset;
    void* base = is_v ? c.v : c.k;
    if constexpr (kCache == KvDType::kF32) {
      float* dst = static_cast<float*>(base) + row * d;
      for (int i = lane; i < d; i += 32) dst[i] = ToFloat(in[i]);
    } else if constexpr (kCache == KvDType::kF16) {
      Half* dst = static_cast<Half*>(base) + row * d;
      for (int i = lane; i < d; i += 32) dst[i] = FromFloat<Half>(ToFloat(in[i]));
    } else {
      float mn = INFINITY;
      float mx = -INFINITY;
      for (int i = lane; i < d; i += 32) {
        const float x = ToFloat(in[i]);
        mn = fminf(mn, x);
        mx = fmaxf(mx, x);
      }
      mn = WarpMin(mn);
      mx = WarpMax(mx);
      const float scale = DivRn(mx - mn, 255.f);
      uint8_t* dst = static_cast<uint8_t*>(base) + row * d;
      for (int i = lane; i < d; i += 32) {
        float q = 0.f;
        if (scale != 0.f) q = fminf(255.f, fmaxf(0.f, rintf(DivRn(ToFloat(in[i]) - mn, scale))));
        dst[i] = static_cast<uint8_t>(q);
      }
      if (lane == 0) {
        float* sz = is_v ? c.v_scale_zero : c.k_scale_zero;
        sz[row * 2] = scale;
        sz[row * 2 + 1] = mn;
      }
    }
  }
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_KV_APPEND_CUH_
