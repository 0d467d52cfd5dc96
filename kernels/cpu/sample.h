// Backend::Sample on the CPU as a range function over rows, so CpuBackend splits a batch's rows
// across its thread pool; each thread brings its own scratch, sized once for the largest vocab.
// A row's id and logprob depend only on that row (and its seed and counter), never on the split.
//
// Per row: one pass for the maximum; greedy rows stop there. Otherwise one pass forms
// e_i = exp((l_i - max) / temperature) in float (a branch-free exp, ~2 ulp); top-k is a partial
// selection (a heap of k for k <= 256, nth_element above); top-p is a weighted quickselect over
// the candidates (top-k's, or over the whole vocabulary those within 8 temperatures of the max
// when they already hold top_p of the mass), sorting only the last few dozen; the survivors are
// then a cut in likelihood order plus min-p's exact threshold, and one pass zeroes the others,
// sums e and walks u times the sum in id order. Logprobs cost one more exp pass.
//
// Thread safety: SampleRows may run concurrently on disjoint row ranges with distinct scratch.
// It never allocates.
#ifndef TANDEM_KERNELS_CPU_SAMPLE_H_
#define TANDEM_KERNELS_CPU_SAMPLE_H_

#include <cstddef>
#include <cstdint>

#include "kernels/backend.h"

namespace tandem::kernels::cpu {

// A token under consideration: its logit (NaN read as -inf) and id. The likelihood order is
// larger logit first, ties to the lower id, so it is a strict total order.
struct SampleCandidate {
  float logit;
  int32_t id;
};

// One thread's scratch for rows of up to `vocab` entries.
struct SampleScratch {
  float* e = nullptr;               // [vocab] weights exp((l - max) / temperature)
  SampleCandidate* cand = nullptr;  // [vocab]
  int vocab = 0;
};

// Bytes SampleScratchAt needs for `vocab` (a multiple of 64).
size_t SampleScratchBytes(int vocab);
// A scratch view of `mem` (64-byte aligned, SampleScratchBytes(vocab) bytes).
SampleScratch SampleScratchAt(void* mem, int vocab);

// Samples rows [begin, end) of p (see kernels::SampleParams). p.vocab <= scratch.vocab.
// Checks each row's parameters (temperature >= 0 and finite, top_k >= 0, top_p in (0, 1],
// min_p in [0, 1]).
void SampleRows(const SampleParams& p, int64_t begin, int64_t end, const SampleScratch& scratch);

}  // namespace tandem::kernels::cpu

#endif  // TANDEM_KERNELS_CPU_SAMPLE_H_
