// Helpers of the kernel tests in tests/cuda: activations of each dtype on the host, random
// inputs, and the tolerance that rounding to an activation dtype adds.
//
// Tolerances for f16 and bf16 activations (used by every kernel test whose output is rounded to
// the activation dtype): the kernel computes in f32 and rounds its result once, to nearest. The
// reference is given exactly the same (already rounded) inputs and computes without that last
// rounding, so the difference is the kernel's f32 error (each test states its bound for f32)
// plus half a unit in the last place of the output: 2^-11 relative for f16 (11-bit
// significand) and 2^-8 for bf16 (8-bit), times (1 + the f32 bound) because the rounded value
// is the kernel's, not the reference's; f16 results below 2^-14 are subnormal with a fixed
// spacing of 2^-24, so half of it, 2^-25, is added as an absolute term (bf16 shares f32's
// exponent range and needs none at these magnitudes).
#ifndef TANDEM_TESTS_CUDA_CUDA_TEST_UTIL_H_
#define TANDEM_TESTS_CUDA_CUDA_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "kernels/emu/cuda_compat.h"

namespace tandem::kernels::cuda::testing {

template <typename T>
struct ActTraits;
template <>
struct ActTraits<float> {
  static constexpr ActivationDType kDType = ActivationDType::kF32;
  static constexpr double kHalfUlp = 0;
  static constexpr double kSubnormalAbs = 0;
};
template <>
struct ActTraits<Half> {
  static constexpr ActivationDType kDType = ActivationDType::kF16;
  static constexpr double kHalfUlp = 1.0 / 2048;  // 2^-11
  static constexpr double kSubnormalAbs = 1.0 / (1 << 25);
};
template <>
struct ActTraits<Bf16> {
  static constexpr ActivationDType kDType = ActivationDType::kBF16;
  static constexpr double kHalfUlp = 1.0 / 256;  // 2^-8
  static constexpr double kSubnormalAbs = 0;
};

// |got - want| allowed for an output of dtype T whose f32 computation is within
// f32_rel * |want| + f32_abs of `want` (see the header comment).
template <typename T>
double Tolerance(double want, double f32_rel, double f32_abs) {
  return f32_rel * std::fabs(want) + f32_abs +
         ActTraits<T>::kHalfUlp * (1 + f32_rel) * std::fabs(want) + ActTraits<T>::kSubnormalAbs;
}

inline std::vector<float> RandomFloats(size_t n, float lo, float hi, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) {
    do {
      x = dist(rng);
    } while (x == 0.f);  // never zeros
  }
  return v;
}

template <typename T>
std::vector<T> ToActs(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = FromFloat<T>(v[i]);
  return out;
}

template <typename T>
std::vector<float> FromActs(const std::vector<T>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = ToFloat(v[i]);
  return out;
}

// Bit-exact comparison of two activation vectors.
template <typename T>
bool SameBits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// A kernel's view of a test's host vector. In the harness build (TANDEM_CUDA_EMU) the vector
// itself, so nothing is copied; in the GPU build (tests/cuda/gpu/) a device copy made at
// construction, which ToHost copies back after the launch (the default stream: the copy waits
// for the kernel). Not copyable; one per vector.
template <typename T>
class DeviceCopy {
 public:
  explicit DeviceCopy(const std::vector<T>& host) : host_(&host) {
#if !defined(TANDEM_CUDA_EMU)
    TANDEM_CUDA_CHECK(cudaMalloc(&device_, std::max<size_t>(1, host.size() * sizeof(T))));
    TANDEM_CUDA_CHECK(
        cudaMemcpy(device_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
#endif
  }
  ~DeviceCopy() {
#if !defined(TANDEM_CUDA_EMU)
    cudaFree(device_);
#endif
  }
  DeviceCopy(const DeviceCopy&) = delete;
  DeviceCopy& operator=(const DeviceCopy&) = delete;

  T* get() const {
#if defined(TANDEM_CUDA_EMU)
    return const_cast<T*>(host_->data());  // kernels write only the vectors the test owns
#else
    return static_cast<T*>(device_);
#endif
  }
  // Brings what the kernel wrote back into `host`, the vector this copy was made from.
  void ToHost(std::vector<T>& host) const {
    TANDEM_CHECK(&host == host_);
#if !defined(TANDEM_CUDA_EMU)
    TANDEM_CUDA_CHECK(
        cudaMemcpy(host.data(), device_, host.size() * sizeof(T), cudaMemcpyDeviceToHost));
#endif
  }

 private:
  const std::vector<T>* host_;
#if !defined(TANDEM_CUDA_EMU)
  void* device_ = nullptr;
#endif
};

// Typed tests run for each; ctest names end in <float>, <...::Half>, <...::Bf16>.
using ActTypes = ::testing::Types<float, Half, Bf16>;

}  // namespace tandem::kernels::cuda::testing

#endif  // TANDEM_TESTS_CUDA_CUDA_TEST_UTIL_H_
