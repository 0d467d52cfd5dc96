// Horizontal reductions of one AVX2 register, shared by the *_avx2.cc kernels.
// Include only from files compiled with AVX2 flags. The functions have internal linkage
// (anonymous namespace) on purpose: an inline function with external linkage compiled in an
// AVX2 file could be picked by the linker for a baseline caller and fault on an older CPU.
// Thread safety: pure functions.
#ifndef TANDEM_KERNELS_CPU_REDUCE_AVX2_H_
#define TANDEM_KERNELS_CPU_REDUCE_AVX2_H_

#include <immintrin.h>

#include <cstdint>

namespace tandem::kernels::cpu::internal {
namespace {  // NOLINT(google-build-namespaces): see above

inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int32_t HorizontalSum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

inline float HorizontalMax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float HorizontalMin(__m256 v) {
  __m128 s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_min_ps(s, _mm_movehl_ps(s, s));
  s = _mm_min_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace
}  // namespace tandem::kernels::cpu::internal

#endif  // TANDEM_KERNELS_CPU_REDUCE_AVX2_H_
