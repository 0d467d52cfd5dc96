// Scalar reference for Backend::Sample and the random numbers it draws: Philox4x32-10 and the
// uniform it gives each row. It defines the op (the filters' order and ties are in the comment
// of kernels::SampleParams): probabilities in double, candidates sorted outright, no speed
// concerns. Philox (common/philox.h) is integer arithmetic, exact everywhere, so every backend
// calls (or copies bit for bit) PhiloxUniform.
// Thread safety: pure functions of their arguments.
#ifndef TANDEM_KERNELS_REF_SAMPLE_REF_H_
#define TANDEM_KERNELS_REF_SAMPLE_REF_H_

#include <cstdint>
#include <vector>

#include "common/philox.h"
#include "kernels/backend.h"

namespace tandem::kernels::ref {

// The generator (common/philox.h), under the names the reference has always used.
using ::tandem::Philox4x32_10;
using ::tandem::PhiloxUniform;

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
