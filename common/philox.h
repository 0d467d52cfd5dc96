// Philox4x32-10, the counter-based generator every sampler in tandem draws from: the host
// sampler (model::Sampler), the CPU backend's sampling op and its reference (kernels/ref), and
// the CUDA kernel (kernels/cuda/sample.cuh, a bit-for-bit device copy). A draw is a pure
// function of (seed, counter), with the sequence's step as the counter, so no generator state
// lives anywhere: a sequence that moves between workers or backends draws the same numbers.
//
// Thread safety: pure functions of their arguments.
#ifndef TANDEM_COMMON_PHILOX_H_
#define TANDEM_COMMON_PHILOX_H_

#include <array>
#include <cstdint>

namespace tandem {

// Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel Random Numbers: As Easy as 1, 2, 3",
// SC'11; Random123's philox4x32_R with R = 10): ten rounds of two 32x32->64 multiplies, the
// key bumped by the Weyl constants between rounds.
constexpr std::array<uint32_t, 4> Philox4x32_10(std::array<uint32_t, 4> ctr,
                                                std::array<uint32_t, 2> key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key[0] += kW0;
      key[1] += kW1;
    }
    const uint64_t p0 = uint64_t{kM0} * ctr[0];
    const uint64_t p1 = uint64_t{kM1} * ctr[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr = {hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0};
  }
  return ctr;
}

// The uniform in [0, 1) for (seed, counter): Philox4x32-10 keyed by {seed low 32 bits, high
// 32 bits} at counter {counter low 32 bits, counter high 32 bits, 0, 0}; the top 24 bits of the
// first output word times 2^-24 (exact in float).
constexpr float PhiloxUniform(uint64_t seed, uint64_t counter) {
  const std::array<uint32_t, 4> out =
      Philox4x32_10({static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u},
                    {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  return static_cast<float>(out[0] >> 8) * 0x1.0p-24f;
}

}  // namespace tandem

#endif  // TANDEM_COMMON_PHILOX_H_
