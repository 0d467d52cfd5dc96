// Attention over the paged KV cache on the GPU (kernels/cuda/attention.cuh holds the kernels):
// split-K flash decoding. Takes backend.h's AttentionParams as they are (q and out point at
// elements of the activation dtype; a batch may mix prefill chunks and decode tokens, each token
// attending to its own causal context or sliding window). Definition: kernels/ref AttentionRef.
//
// Work: the context [first, pos] of every token is cut into splits of `split` positions; one
// block per (split, KV head, token) runs online softmax over its positions for every query head
// of that KV head (GQA: each K/V row is read once for the group; a group larger than
// kAttentionMaxGroup is taken in several blocks), and writes a partial (running max, sum of
// exponentials, unnormalized output) per query head to the workspace; a second kernel merges
// the splits of each (token, head). So a long decode context spreads over many blocks, and a
// short one costs one split. Prefill chunks may run through the same kernels (one token at a
// time) or through AttentionPrefill below, which reuses each K/V row across a chunk's queries.
// Thread safety: launchers are called by the stream's owning thread (one backend instance).
#ifndef TANDEM_KERNELS_CUDA_ATTENTION_H_
#define TANDEM_KERNELS_CUDA_ATTENTION_H_

#include <cstddef>

#include "kernels/backend.h"
#include "kernels/cuda/build_namespace.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

inline constexpr int kAttentionMaxGroup = 8;      // query heads per block
inline constexpr int kAttentionMaxHeadDim = 256;  // 8 elements per lane
inline constexpr int kAttentionDefaultSplit = 256;

// Floats of workspace Attention needs: per token and query head, (head_dim + 2) per split of a
// context of at most `max_context` positions.
size_t AttentionWorkspaceFloats(const AttentionParams& p, int max_context, int split);

// `max_context`: at least the largest (pos + 1 - first) of the batch's tokens (the host knows
// it; positions live on the device); more only costs empty blocks. `workspace`: device memory of
// AttentionWorkspaceFloats floats. Aborts on broken preconditions (head_dim over
// kAttentionMaxHeadDim, n_heads not a multiple of n_kv_heads, layer out of range, split < 1).
// A block id outside the cache is a broken invariant: the kernel traps.
void Attention(const AttentionParams& p, ActivationDType dtype, int max_context, float* workspace,
               Stream stream, int split = kAttentionDefaultSplit);

// Tiled attention for prefill chunks (AttentionPrefillKernel in attention.cuh): the same result
// as Attention (kernels/ref AttentionRef) for any batch, no workspace. Consecutive batch tokens
// form tiles of AttentionPrefillTileTokens; within a tile each run of one sequence's tokens at
// consecutive positions (a prefill chunk) streams its context through shared memory once for
// all its tokens and the KV head's query heads, instead of once per token. A decode token is a
// run of one whose whole context one block streams (no split): Attention is the better kernel
// for decode-heavy batches. Aborts on broken preconditions (as Attention, and a GQA group
// larger than AttentionPrefillTileTokens' rows).
void AttentionPrefill(const AttentionParams& p, ActivationDType dtype, Stream stream);
// Batch tokens per AttentionPrefill block for this head size and GQA group (>= 1).
int AttentionPrefillTileTokens(int head_dim, int group);

// AttentionPrefill on tensor cores (AttentionPrefillMmaKernel): f16 or bf16 activations, head
// size 64 or 128, a GQA group of at most 64 (AttentionPrefillMmaSupports). The same result as
// Attention within the rounding of P, and of K and V from an int8 or f32 cache, to the
// activation dtype. Aborts on broken preconditions (as AttentionPrefill, and an unsupported
// shape).
bool AttentionPrefillMmaSupports(const AttentionParams& p, ActivationDType dtype);
void AttentionPrefillMma(const AttentionParams& p, ActivationDType dtype, Stream stream);

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_ATTENTION_H_
