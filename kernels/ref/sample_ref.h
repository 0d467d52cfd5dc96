// Scalar reference for Backend::Sample and the random numbers it draws: Philox4x32-10 and the
// uniform it gives each row. It defines the op (the filters' order and ties are in the comment
// of kernels::SampleParams): probabilities in double, candidates sorted outright, no speed
// concerns. Philox is integer arithmetic, exact everywhere, so every backend calls (or copies
// bit for bit) PhiloxUniform.
// Thread safety: pure functions of their arguments.
#ifndef TANDEM_KERNELS_REF_SAMPLE_REF_H_
#define TANDEM_KERNELS_REF_SAMPLE_REF_H_

#include <array>
#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace tandem::kernels::ref {

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

// The row's uniform in [0, 1): Philox4x32-10 keyed by the seed at counter
// {counter low 32 bits, counter high 32 bits, 0, 0}; the top 24 bits of the first output word
// times 2^-24 (exact in float).
constexpr float PhiloxUniform(uint64_t seed, uint64_t counter) {
  const std::array<uint32_t, 4> out =
      Philox4x32_10({static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u},
                    {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  return static_cast<float>(out[0] >> 8) * 0x1.0p-24f;
}

// One row's sampling parameters, as SampleParams holds them per row.
struct SampleRowParams {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
};

// The distribution a row's token is drawn from, probs[vocab]: the survivors' renormalized
// probabilities, 0 elsewhere. Greedy and degenerate rows (no finite maximum) put 1 on the
// argmax. The allowed set of the op is {i : probs[i] > 0}.
void SampleProbsRef(const float* logits, int vocab, const SampleRowParams& rp, double* probs);

// The id the op returns for uniform u: u times the survivors' mass walked in ascending id order.
int32_t SampleRowRef(const float* logits, int vocab, const SampleRowParams& rp, float u);

// log_softmax(logits)[id] in double (NaN as -inf; a row with no finite maximum gives 0 to the
// entries equal to the maximum and -inf to the others).
double LogSoftmaxRef(const float* logits, int vocab, int32_t id);

// Backend::Sample over a whole batch (u from PhiloxUniform(seed[r], counter[r])).
void SampleRef(const SampleParams& p);

}  // namespace tandem::kernels::ref

#endif  // TANDEM_KERNELS_REF_SAMPLE_REF_H_
