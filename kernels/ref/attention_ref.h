// Scalar reference of paged causal attention (kernels::Backend::Attention): for every token
// t and query head h, softmax over positions 0..positions[t] of sequence token_seq[t] (with
// p.window > 0, only max(0, positions[t] - window + 1)..positions[t]) of scale * q . k, then
// the weighted sum of V; query head h reads KV head
// h / (n_heads / n_kv_heads). Scores, softmax and sums in double; K/V dequantized as
// KvReadRowRef does. Defines what every backend's attention computes.
// Thread safety: a pure function of its arguments (writes only p.out).
#ifndef TANDEM_KERNELS_REF_ATTENTION_REF_H_
#define TANDEM_KERNELS_REF_ATTENTION_REF_H_

#include "kernels/backend.h"

namespace tandem::kernels::ref {

void AttentionRef(const AttentionParams& p);

}  // namespace tandem::kernels::ref

#endif  // TANDEM_KERNELS_REF_ATTENTION_REF_H_
