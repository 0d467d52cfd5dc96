// The CPU backend's non-matmul ops (RMSNorm, SwiGLU, GeGLU, bias, residual add, scaling, row
// gather, RoPE, KV append, paged attention) as range functions: each processes work items
// [begin, end) of one op so that CpuBackend can split an op across its thread pool. The unit
// of work is named on each function; results never depend on how the items are split.
//
// Each op has a scalar, an AVX2 and an AVX-512 variant (ops*.cc, attention*.cc), chosen by a
// process-wide OpsIsa. The default is the best the CPU supports; CpuBackend sets it at
// construction and tests force each supported value.
//
// Thread safety: every *Range function may run concurrently with others on disjoint item
// ranges of the same op (they write only their items' outputs and use stack buffers only).
// SetOpsIsa must not race with running ops: call it at set-up time.
//
// Invariants (checked): dim > 0; head_dim <= kMaxHeadDim; rot_dim even and <= head_dim;
// n_heads % n_kv_heads == 0. Attention and KV append take their vector paths when head_dim
// is a multiple of 16 (every Llama-family model) and run the scalar code otherwise.
#ifndef TANDEM_KERNELS_CPU_OPS_H_
#define TANDEM_KERNELS_CPU_OPS_H_

#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "kernels/backend.h"

namespace tandem::kernels::cpu {

// Largest head_dim the ops accept (RoPE and attention keep per-head vectors on the stack).
inline constexpr int kMaxHeadDim = 256;

enum class OpsIsa { kScalar, kAvx2, kAvx512 };

// True when this CPU can run `isa`'s variants (kAvx2: AVX2+FMA+F16C; kAvx512: AVX-512
// F/BW/VL/DQ on top).
bool OpsIsaSupported(OpsIsa isa);
// The best supported value; what GetOpsIsa returns until SetOpsIsa is called.
OpsIsa BestOpsIsa();
// Process-wide choice of variant. Checks OpsIsaSupported(isa).
void SetOpsIsa(OpsIsa isa);
OpsIsa GetOpsIsa();
const char* OpsIsaName(OpsIsa isa);

// Work items: rows of [rows, dim] matrices.
// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w; out may alias x.
void RmsNormRange(const float* x, const float* w, int dim, float eps, float* out, int64_t begin,
                  int64_t end);
// out[r] = silu(gate[r]) * up[r], silu(g) = g / (1 + exp(-g)); out may alias gate or up.
void SwiGluRange(const float* gate, const float* up, int dim, float* out, int64_t begin,
                 int64_t end);
// out[r] = gelu(gate[r]) * up[r] with GELU's tanh approximation, computed as
// gelu(g) = g / (1 + exp(-z)), z = 2 sqrt(2/pi) (g + 0.044715 g^3): the same function, since
// 0.5 (1 + tanh(z / 2)) = 1 / (1 + exp(-z)), without 1 + tanh's cancellation for g < 0.
// out may alias gate or up.
void GeGluRange(const float* gate, const float* up, int dim, float* out, int64_t begin,
                int64_t end);
// x[r] += bias.
void AddBiasRange(float* x, const float* bias, int dim, int64_t begin, int64_t end);
// out[r] = x[idx[r]]; out must not alias x.
void GatherRowsRange(const float* x, const int32_t* idx, int dim, float* out, int64_t begin,
                     int64_t end);

// Work items: elements. x[i] += y[i].
void AddRange(float* x, const float* y, int64_t begin, int64_t end);
// Work items: elements. x[i] *= factor.
void ScaleRange(float* x, float factor, int64_t begin, int64_t end);

// Work items: tokens. Rotates q's n_heads and k's n_kv_heads heads of each token in place.
void RopeRange(const RopeParams& p, int64_t begin, int64_t end);
// Work items: tokens. Writes each token's K and V rows into its slot of layer p.layer.
void KvAppendRange(const KvAppendParams& p, int64_t begin, int64_t end);

// Work items: (token, kv_head) pairs, item = token * n_kv_heads + kv_head. Each item computes
// the n_heads / n_kv_heads query heads that share kv_head, reading each K/V row once. With
// p.window > 0 an item walks only its window's positions (AttentionWindowStart onwards).
void AttentionRange(const AttentionParams& p, int64_t begin, int64_t end);
inline int64_t AttentionItems(const AttentionParams& p) {
  return static_cast<int64_t>(p.n_tokens) * p.n_kv_heads;
}

// Query-tiled attention, for prefill: the tokens of a step are cut into tiles, each a run
// of up to kQueryTile consecutive tokens of one sequence at consecutive positions (a decode
// token is a tile of one). A unit is a (tile, kv_head) pair; the AVX-512 variant reads each
// K/V row once per tile and gets the tile's scores as a small matrix product, where
// AttentionRange reads it once per token; other ISAs run AttentionRange's walk per token.
// Same result as AttentionRange up to float rounding.
inline constexpr int kQueryTile = 16;
struct AttentionTiles {
  const int32_t* starts = nullptr;  // [n_tiles + 1]: tile k is tokens [starts[k], starts[k + 1])
  int n_tiles = 0;
};
// Cuts p's tokens into tiles, writing n_tiles + 1 entries (at most p.n_tokens + 1) to
// `starts`; returns n_tiles.
int AttentionQueryTiles(const AttentionParams& p, int32_t* starts);
// True when this ISA has a query-tiled kernel (AVX-512 with head_dim % 16 == 0), so that
// tiling a prefill step pays.
bool AttentionTilesPay(const AttentionParams& p);
// Unit index i / n_kv_heads -> tile, in the order short, long, short, ...: tile 0, the last,
// 1, the one before it, ... A prompt's later tiles attend to more positions, so a contiguous
// share of the units (the thread pool's static split) gets a mix of both.
inline int AttentionTileOfUnit(const AttentionTiles& t, int64_t i) {
  return static_cast<int>(i % 2 == 0 ? i / 2 : t.n_tiles - 1 - i / 2);
}
// Work items: units [begin, end) of tiles.n_tiles * p.n_kv_heads.
void AttentionTileRange(const AttentionParams& p, const AttentionTiles& tiles, int64_t begin,
                        int64_t end);

// Split-context attention ("flash decoding"), for steps with fewer items than threads can
// share evenly: one decode sequence has n_kv_heads items (3 on SmolLM2, 1 on Gemma 3 270M),
// so on two threads one thread would do two thirds of a long context's attention, or all of
// it. Each item's positions (its window) are cut into n_splits ranges; a unit
// u = item * n_splits + split computes its range's softmax state (AttentionSplitRange), and
// AttentionMergeRange combines an item's states into p.out. The result equals
// AttentionRange's up to float rounding (the sums are grouped differently). Per unit u and
// query head g of the item's group (group = n_heads / n_kv_heads):
struct AttentionSplits {
  int n_splits = 1;
  float* acc = nullptr;  // [units, group, head_dim]: sum over the range of exp(s - max) * V
  float* max = nullptr;  // [units, group]: the range's largest scaled score, -inf if empty
  float* sum = nullptr;  // [units, group]: sum over the range of exp(s - max)
};
// How many splits CpuBackend uses on `threads` threads: 1 (no split) when there is one
// thread, when the step has 4 * threads items or more (they balance well enough), or when
// the longest window is too short for ranges of kMinSplitPositions; otherwise a multiple of
// `threads` that gives at least 4 * threads units.
inline constexpr int kMinSplitPositions = 256;
int AttentionSplitCount(const AttentionParams& p, int threads);
// The most floats of AttentionSplits (acc, max and sum together) a step needs on `threads`
// threads, for steps of up to max_tokens tokens, n_heads query heads of head_dim, and windows
// of up to max_context positions (the worst case is one KV head).
int64_t AttentionSplitScratchFloats(int threads, int max_tokens, int n_heads, int head_dim,
                                    int max_context);
// Positions [*lo, *hi) of split `split` for a token at `pos`: the window [first, pos] cut
// into n_splits consecutive ranges at multiples of 16 positions (so that no vector tile
// straddles two), some possibly empty, the last never.
void AttentionSplitBounds(const AttentionParams& p, int pos, int n_splits, int split, int* lo,
                          int* hi);
// What one walk over the cache covers: token t's KV head kv_head, positions [lo, hi).
struct AttentionWalk {
  int64_t t = 0;
  int kv_head = 0;
  int lo = 0, hi = 0;
};
// Unit `unit` of AttentionSplitRange: its item's range of split unit % n_splits.
AttentionWalk AttentionUnitWalk(const AttentionParams& p, const AttentionSplits& s, int64_t unit);
// Work items: units [begin, end) of AttentionItems(p) * s.n_splits.
void AttentionSplitRange(const AttentionParams& p, const AttentionSplits& s, int64_t begin,
                         int64_t end);
// Work items: (token, kv_head) items, as AttentionRange's; reads the items' units.
void AttentionMergeRange(const AttentionParams& p, const AttentionSplits& s, int64_t begin,
                         int64_t end);
// First position a token at `pos` attends to: max(0, pos - window + 1), 0 without a window.
// `static` like PrefetchKvRows below: the ISA-specific files call it too.
static inline int AttentionWindowStart(const AttentionParams& p, int pos) {
  return p.window > 0 && pos >= p.window ? pos - p.window + 1 : 0;
}
// Item `item` of AttentionRange: the token's whole window.
static inline AttentionWalk AttentionItemWalk(const AttentionParams& p, int64_t item) {
  AttentionWalk w;
  w.t = item / p.n_kv_heads;
  w.kv_head = static_cast<int>(item % p.n_kv_heads);
  w.hi = p.positions[w.t] + 1;
  w.lo = AttentionWindowStart(p, w.hi - 1);
  return w;
}

// A prefetch the optimizer keeps: GCC deletes loops whose only statements are
// __builtin_prefetch calls (it treats them as free of side effects). `static`, like
// PrefetchKvRows, so that the copies in files built for different ISAs are never merged.
static inline void PrefetchLine(const void* p) {
#if defined(__x86_64__)
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p);
#endif
}

// prefetcht1: into L2 (and the levels below it), not L1.
static inline void PrefetchLineL2(const void* p) {
#if defined(__x86_64__)
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 0, 2);
#endif
}

// Asks for rows [start, min(start + n, end)) of kv_head in `base` (the K or the V array of
// p.cache) and their int8 scales (`scale_zero`, null for float caches) to be brought into the
// cache ahead of use. A decode step reads its whole context from DRAM (the weights streamed
// since the previous step have evicted it) and the blocks lie scattered in the pool, so the
// hardware prefetchers cannot see the next tile coming; the attention variants call this a
// few tiles ahead of the one they compute. `to_l2`: prefetcht1, for rows further ahead.
static inline void PrefetchKvRows(const AttentionParams& p, const int32_t* table, int kv_head,
                                  const void* base, const float* scale_zero, int start, int n,
                                  int end, bool to_l2 = false) {
  const KvCacheView& c = p.cache;
  const int elem = c.dtype == KvDType::kF32 ? 4 : c.dtype == KvDType::kF16 ? 2 : 1;
  const int64_t row_bytes = static_cast<int64_t>(c.head_dim) * elem;
  for (int s = start; s < end && s < start + n;) {
    const int offset = s % c.block_size;
    int rows = c.block_size - offset;
    if (rows > start + n - s) rows = start + n - s;
    if (rows > end - s) rows = end - s;
    const int64_t row0 =
        ((static_cast<int64_t>(p.layer) * c.n_blocks + table[s / c.block_size]) * c.n_kv_heads +
         kv_head) *
            c.block_size +
        offset;
    const char* rp = static_cast<const char*>(base) + row0 * row_bytes;
    for (int64_t b = 0; b < rows * row_bytes; b += 64) {
      to_l2 ? PrefetchLineL2(rp + b) : PrefetchLine(rp + b);
    }
    if (scale_zero != nullptr) {  // 2 floats a row
      for (int64_t i = 0; i < rows * 2; i += 16) {
        to_l2 ? PrefetchLineL2(scale_zero + row0 * 2 + i) : PrefetchLine(scale_zero + row0 * 2 + i);
      }
    }
    s += rows;
  }
}

// Per-ISA variants, called by the dispatchers above. Exposed only so that the dispatch code
// in ops.cc and attention.cc can see them; everything else uses the functions above.
namespace internal {

#define TANDEM_CPU_OPS_DECLARE_VARIANT(suffix)                                                     \
  void RmsNormRange##suffix(const float* x, const float* w, int dim, float eps, float* out,        \
                            int64_t begin, int64_t end);                                           \
  void SwiGluRange##suffix(const float* gate, const float* up, int dim, float* out, int64_t begin, \
                           int64_t end);                                                           \
  void GeGluRange##suffix(const float* gate, const float* up, int dim, float* out, int64_t begin,  \
                          int64_t end);                                                            \
  void AddBiasRange##suffix(float* x, const float* bias, int dim, int64_t begin, int64_t end);     \
  void AddRange##suffix(float* x, const float* y, int64_t begin, int64_t end);                     \
  void ScaleRange##suffix(float* x, float factor, int64_t begin, int64_t end);                     \
  void KvAppendRange##suffix(const KvAppendParams& p, int64_t begin, int64_t end);                 \
  void AttentionRange##suffix(const AttentionParams& p, int64_t begin, int64_t end);               \
  void AttentionSplitRange##suffix(const AttentionParams& p, const AttentionSplits& s,             \
                                   int64_t begin, int64_t end);

void AttentionTileRangeAvx512(const AttentionParams& p, const AttentionTiles& tiles, int64_t begin,
                              int64_t end);

TANDEM_CPU_OPS_DECLARE_VARIANT(Scalar)
TANDEM_CPU_OPS_DECLARE_VARIANT(Avx2)
TANDEM_CPU_OPS_DECLARE_VARIANT(Avx512)
#undef TANDEM_CPU_OPS_DECLARE_VARIANT

// GeGLU's argument z = g * (kGeluZ + kGeluZ3 * g^2) = 2 sqrt(2/pi) (g + 0.044715 g^3), and
// gelu(g) = g / (1 + exp(-z)). Below kGeluZeroBelow (g < -10.03) the vector variants return
// 0 (the exact value is under 1e-37): their exp is clamped, so g / (1 + exp(-z)) would not
// go on shrinking as g -> -inf.
inline constexpr float kGeluZ = 1.5957691216057308f;    // 2 sqrt(2 / pi)
inline constexpr float kGeluZ3 = 0.07135481627260025f;  // 2 sqrt(2 / pi) * 0.044715
inline constexpr float kGeluZeroBelow = -88.f;

// Vector exp for the files built for AVX2 / AVX-512 (declared only where those ISAs are
// enabled). exp(x) = 2^n * e^r with n = round(x / ln 2), |r| <= ln(2)/2, e^r by its degree-7
// Taylor polynomial (truncation error 5e-9 relative), so the result is within ~1e-7 relative.
// Inputs are clamped so the result is never inf or NaN. `static` on purpose: each
// ISA-specific file gets its own copy, compiled with its own flags (an inline function with
// external linkage could be merged with a copy built for a wider ISA).
#if defined(__AVX512F__)
// Clamped to [-103.9, 88.72]: exp(-103.9) rounds to 0; scalef applies 2^n exactly.
static inline __m512 ExpAvx512(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.72f)), _mm512_set1_ps(-103.9f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln 2 in two parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 e = _mm512_set1_ps(1.f / 5040);
  e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.f / 720));
  e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.f / 120));
  e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.f / 24));
  e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.f / 6));
  e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(0.5f));
  e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.f));
  e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(e, n);
}
#endif
#if defined(__AVX2__) && defined(__FMA__)
// Clamped to [-87.3, 88.3] to keep n in [-126, 127] for the exponent-bits construction of
// 2^n; very negative inputs therefore give ~1e-38 rather than 0.
static inline __m256 ExpAvx2(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3f)), _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 e = _mm256_set1_ps(1.f / 5040);
  e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.f / 720));
  e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.f / 120));
  e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.f / 24));
  e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.f / 6));
  e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(0.5f));
  e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.f));
  e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.f));
  const __m256i bits =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(e, _mm256_castsi256_ps(bits));
}
#endif

}  // namespace internal
}  // namespace tandem::kernels::cpu

#endif  // TANDEM_KERNELS_CPU_OPS_H_
