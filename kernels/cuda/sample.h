// Sampling on the GPU (kernels/cuda/sample.cuh holds the kernels), so that a step's logits never
// leave the device. Two launchers:
//   * GreedySample: the greedy case of backend.h's SampleParams (temperature 0) in one pass,
//     the argmax of each row with ties to the lowest id and NaN read as -inf, and optionally
//     the chosen token's log_softmax;
//   * Sample: backend.h's SampleParams as they are (temperature, top-k, top-p, min-p, the
//     Philox4x32-10 draw keyed by (seed, step)), the logits in the activation dtype.
// Definition: kernels/ref SampleRowRef (ids) and LogSoftmaxRef (logprobs), including their rows
// with no finite maximum: all -inf or NaN gives id 0, a +inf the first +inf; the logprob is then
// 0 for an id whose logit is the maximum and -inf otherwise (a NaN logit at id 0). Sample forms
// p in f32 where the reference uses double: the top-k and min-p decisions are the same, a top-p
// boundary within ~1e-6 of the mass may fall either side, and the id drawn for one u may differ
// from the reference's where u lands within rounding of a boundary between two survivors.
// Thread safety: launchers are called by the stream's owning thread (one backend instance).
#ifndef TANDEM_KERNELS_CUDA_SAMPLE_H_
#define TANDEM_KERNELS_CUDA_SAMPLE_H_

#include <cstdint>

#include "kernels/backend.h"
#include "kernels/cuda/build_namespace.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

struct GreedySampleParams {
  const void* logits = nullptr;   // [rows, vocab] activation dtype (penalties applied)
  int32_t* out_ids = nullptr;     // [rows] the argmax of each row
  float* out_logprobs = nullptr;  // [rows] f32 log_softmax(logits)[id], or null = none
  int rows = 0;
  int vocab = 0;
  ActivationDType dtype = ActivationDType::kF32;
};

// One block per row, any vocab (threads stride over the row). Aborts on broken preconditions
// (vocab < 1, negative rows, null pointers).
void GreedySample(const GreedySampleParams& p, Stream stream);

// One block per row; p.logits points at elements of `dtype`. Greedy rows cost one pass (two
// with logprobs); top-k and top-p each find their cut by radix selection on the logits' order
// (4 passes over the row for the value, 1 to 4 for the id among ties; top-p one more for its
// mass), then one pass sums the survivors and one walks them. Aborts on broken preconditions (vocab
// < 1, negative rows, null pointers other than out_logprobs).
void Sample(const SampleParams& p, ActivationDType dtype, Stream stream);

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_SAMPLE_H_
