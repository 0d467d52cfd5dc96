// Split-K paged attention kernels (launcher: kernels/cuda/attention.cu; the scheme is in
// attention.h).
//
// AttentionSplitKernel: one block of kAttentionThreads per (split, KV head x head chunk, token).
// The chunk's query rows, pre-multiplied by the scale, sit in shared memory. Warps take the
// split's positions round robin; for each, every lane loads its elements of the K and V rows
// (lane + 32 i, dequantized to f32) once, computes each head's dot product (a warp butterfly,
// so every lane holds the same score) and updates that head's running max m, sum l and
// accumulator (the lane's elements) in registers: online softmax, as flash attention. At the
// end the warps' states meet in shared memory and are merged (each rescaled by exp(m_w - M)),
// and the block writes (M, L, acc) per head to the workspace: [token][head][split][head_dim + 2]
// with acc first, then M, then L. An empty split writes M = -inf, L = 0.
//
// AttentionMergeKernel: one block per (head, token); each thread merges the splits of its
// elements: out = sum_s acc_s exp(M_s - M) / sum_s L_s exp(M_s - M), rounded to the activation
// dtype once.
//
// AttentionPrefillKernel: tiled attention for prefill chunks, one block of kAttentionThreads per
// (tile of consecutive batch tokens, KV head). A tile holds `tile_tokens` tokens (rows = tokens
// x the KV head's query heads, <= PrefillRows(head_dim)); the tile is cut into runs of tokens
// of one sequence at consecutive positions (a prefill chunk's tokens; a decode token is a run of
// one), and for each run the block streams the run's context [first of its first token, its
// last token] through shared memory in tiles of kPrefillKv positions, each K/V row loaded (and
// dequantized) once for every query row of the run, instead of once per token as the split-K
// kernel does. Query rows (pre-scaled) and their accumulators live in shared memory; a warp owns
// rows warp, warp + 4, ...: lane j scores position j of the K/V tile (masked by causality and
// the window), the warp reduces max and sum, and each lane updates its elements (lane + 32 e) of
// the accumulator with every position's weight (shuffled from its lane): online softmax as in
// flash attention. The row's output (acc / l) is rounded to the activation dtype once.
//
// AttentionPrefillMmaKernel: the same tiling on tensor cores, for head sizes 64 and 128 and
// f16/bf16 activations: rows (<= kMmaRows) in 16-row tiles, one per warp, whose Q fragments stay
// in registers; per K/V tile of kMmaKv positions (converted to the activation dtype in shared
// memory), S = Q K^T and O += P V by mma.sync m16n8k16 with f32 accumulators, the online
// softmax on S's accumulator fragments (a row's scores in the 4 lanes of a quad), P passed to the
// second mma in registers as FlashAttention-2 does. Rows outside the run being streamed see only
// masked scores and keep their state. P, and K and V of an int8 or f32 cache, are rounded to the
// activation dtype for the mma (the CUDA-core kernel keeps them in f32).
// Thread safety: device code.
#ifndef TANDEM_KERNELS_CUDA_ATTENTION_CUH_
#define TANDEM_KERNELS_CUDA_ATTENTION_CUH_

#include "kernels/cuda/attention.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/emu/cuda_compat.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

inline constexpr int kAttentionThreads = 128;
inline constexpr int kAttentionWarps = kAttentionThreads / 32;
inline constexpr int kAttentionPerLane = kAttentionMaxHeadDim / 32;

// Full unrolling for nvcc (the loops below index register arrays, which must not become local
// memory); the host compiler has no use for it.
#if defined(TANDEM_CUDA_EMU)
#define TANDEM_ATTENTION_UNROLL
#else
#define TANDEM_ATTENTION_UNROLL _Pragma("unroll")
#endif

__device__ __forceinline__ int IntMin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int IntMax(int a, int b) { return a > b ? a : b; }

// Element i of row `row` (of head_dim) of one of the cache's K or V arrays, as f32 (int8:
// q * scale + zero, the reference's formula).
template <KvDType kCache>
__device__ __forceinline__ float LoadKv(const void* base, const float* scale_zero, int64_t row,
                                        int d, int i) {
  if constexpr (kCache == KvDType::kF32) {
    return static_cast<const float*>(base)[row * d + i];
  } else if constexpr (kCache == KvDType::kF16) {
    return ToFloat(static_cast<const Half*>(base)[row * d + i]);
  } else {
    const float q = static_cast<float>(static_cast<const uint8_t*>(base)[row * d + i]);
    return AddRn(MulRn(q, scale_zero[row * 2]), scale_zero[row * 2 + 1]);
  }
}

template <typename T, KvDType kCache>
__global__ void __launch_bounds__(kAttentionThreads)
    AttentionSplitKernel(AttentionParams p, int split, int n_splits, float* workspace) {
  const KvCacheView& c = p.cache;
  const int d = p.head_dim;
  const int group = p.n_heads / p.n_kv_heads;
  const int chunks = (group + kAttentionMaxGroup - 1) / kAttentionMaxGroup;
  const int kv_head = static_cast<int>(blockIdx.y) / chunks;
  const int head0 = kv_head * group + (static_cast<int>(blockIdx.y) % chunks) * kAttentionMaxGroup;
  const int heads = IntMin(kAttentionMaxGroup, kv_head * group + group - head0);
  const int t = blockIdx.z;
  const int s = blockIdx.x;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int pos = p.positions[t];
  const int first = p.window > 0 ? IntMax(0, pos - p.window + 1) : 0;
  const int begin = first + s * split;
  const int end = IntMin(pos + 1, begin + split);

  TANDEM_DYNAMIC_SHARED(float, smem);
  float* q = smem;                                // [heads][d], scaled
  float* states = smem + kAttentionMaxGroup * d;  // [warps][heads][d + 2]
  const T* q_in =
      reinterpret_cast<const T*>(p.q) + (static_cast<int64_t>(t) * p.n_heads + head0) * d;
  for (int i = threadIdx.x; i < heads * d; i += blockDim.x) q[i] = ToFloat(q_in[i]) * p.scale;
  __syncthreads();

  float m[kAttentionMaxGroup], l[kAttentionMaxGroup];
  float acc[kAttentionMaxGroup][kAttentionPerLane];
  TANDEM_ATTENTION_UNROLL
  for (int h = 0; h < kAttentionMaxGroup; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.f;
    TANDEM_ATTENTION_UNROLL
    for (int e = 0; e < kAttentionPerLane; ++e) acc[h][e] = 0.f;
  }
  const int32_t* table =
      p.block_tables + static_cast<int64_t>(p.token_seq[t]) * p.max_blocks_per_seq;
  for (int j = begin + warp; j < end; j += kAttentionWarps) {
    const int block = table[j / c.block_size];
    TANDEM_DEVICE_CHECK(block >= 0 && block < c.n_blocks);
    const int64_t row =
        ((static_cast<int64_t>(p.layer) * c.n_blocks + block) * c.n_kv_heads + kv_head) *
            c.block_size +
        j % c.block_size;
    float k[kAttentionPerLane], v[kAttentionPerLane];
    TANDEM_ATTENTION_UNROLL
    for (int e = 0; e < kAttentionPerLane; ++e) {
      const int i = lane + 32 * e;
      k[e] = i < d ? LoadKv<kCache>(c.k, c.k_scale_zero, row, d, i) : 0.f;
      v[e] = i < d ? LoadKv<kCache>(c.v, c.v_scale_zero, row, d, i) : 0.f;
    }
    TANDEM_ATTENTION_UNROLL
    for (int h = 0; h < kAttentionMaxGroup; ++h) {
      if (h >= heads) break;
      float dot = 0.f;
      TANDEM_ATTENTION_UNROLL
      for (int e = 0; e < kAttentionPerLane; ++e) {
        const int i = lane + 32 * e;
        if (i < d) dot += q[h * d + i] * k[e];
      }
      dot = WarpSum(dot);
      const float m_new = fmaxf(m[h], dot);
      const float alpha = expf(m[h] - m_new);  // 0 while m was -inf
      const float w = expf(dot - m_new);
      l[h] = l[h] * alpha + w;
      TANDEM_ATTENTION_UNROLL
      for (int e = 0; e < kAttentionPerLane; ++e) acc[h][e] = acc[h][e] * alpha + w * v[e];
      m[h] = m_new;
    }
  }

  // The warps' states into shared memory, then merged per (head, element).
  const int stride = d + 2;
  TANDEM_ATTENTION_UNROLL
  for (int h = 0; h < kAttentionMaxGroup; ++h) {
    if (h >= heads) break;
    float* st = states + (warp * kAttentionMaxGroup + h) * stride;
    TANDEM_ATTENTION_UNROLL
    for (int e = 0; e < kAttentionPerLane; ++e) {
      const int i = lane + 32 * e;
      if (i < d) st[i] = acc[h][e];
    }
    if (lane == 0) {
      st[d] = m[h];
      st[d + 1] = l[h];
    }
  }
  __syncthreads();
  for (int x = threadIdx.x; x < heads * stride; x += blockDim.x) {
    const int h = x / stride;
    const int i = x % stride;
    float big = -INFINITY;
    for (int w = 0; w < kAttentionWarps; ++w) {
      big = fmaxf(big, states[(w * kAttentionMaxGroup + h) * stride + d]);
    }
    float sum = 0.f;
    if (i == d) {
      sum = big;
    } else if (big != -INFINITY) {
      for (int w = 0; w < kAttentionWarps; ++w) {
        const float* st = states + (w * kAttentionMaxGroup + h) * stride;
        const float scale = expf(st[d] - big);
        sum += (i == d + 1 ? st[d + 1] : st[i]) * scale;
      }
    }
    float* part =
        workspace + ((static_cast<int64_t>(t) * p.n_heads + head0 + h) * n_splits + s) * stride;
    part[i] = sum;
  }
}

template <typename T>
__global__ void __launch_bounds__(kAttentionThreads)
    AttentionMergeKernel(AttentionParams p, int n_splits, const float* workspace) {
  const int d = p.head_dim;
  const int stride = d + 2;
  const int h = blockIdx.x;
  const int t = blockIdx.y;
  const float* parts = workspace + (static_cast<int64_t>(t) * p.n_heads + h) * n_splits * stride;
  float big = -INFINITY;
  for (int s = 0; s < n_splits; ++s) {
    if (parts[s * stride + d + 1] > 0.f) big = fmaxf(big, parts[s * stride + d]);
  }
  float den = 0.f;
  for (int s = 0; s < n_splits; ++s) {
    const float* part = parts + s * stride;
    if (part[d + 1] > 0.f) den += part[d + 1] * expf(part[d] - big);
  }
  T* out = reinterpret_cast<T*>(p.out) + (static_cast<int64_t>(t) * p.n_heads + h) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float num = 0.f;
    for (int s = 0; s < n_splits; ++s) {
      const float* part = parts + s * stride;
      if (part[d + 1] > 0.f) num += part[i] * expf(part[d] - big);
    }
    out[i] = FromFloat<T>(num / den);
  }
}

inline constexpr int kPrefillKv = 32;  // positions per K/V tile: one per lane

// Query rows per prefill block for a head size: 64 rows of 64 (16 KB of f32 per row array),
// fewer for larger heads, at least 8.
// A run of a prefill tile: tokens [begin, end) of the tile (from t0) of one sequence at
// consecutive positions (a prefill chunk; a decode token is a run of one), and the context its
// tokens read together: positions [lo, hi] through `table`.
struct PrefillRun {
  int end = 0;
  int lo = 0, hi = 0;
  const int32_t* table = nullptr;
};
__device__ __forceinline__ PrefillRun FindRun(const AttentionParams& p, int t0, int begin,
                                              int n_tok) {
  PrefillRun r;
  const int seq = p.token_seq[t0 + begin];
  r.end = begin + 1;
  while (r.end < n_tok && p.token_seq[t0 + r.end] == seq &&
         p.positions[t0 + r.end] == p.positions[t0 + r.end - 1] + 1) {
    ++r.end;
  }
  const int pos0 = p.positions[t0 + begin];
  r.lo = p.window > 0 ? IntMax(0, pos0 - p.window + 1) : 0;
  r.hi = p.positions[t0 + r.end - 1];
  r.table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  return r;
}

// The cache row (of p.layer, `kv_head`) holding `position` of a sequence with block table
// `table`; traps on a block outside the cache.
__device__ __forceinline__ int64_t KvRowOf(const AttentionParams& p, const int32_t* table,
                                           int position, int kv_head) {
  const KvCacheView& c = p.cache;
  const int block = table[position / c.block_size];
  TANDEM_DEVICE_CHECK(block >= 0 && block < c.n_blocks);
  return ((static_cast<int64_t>(p.layer) * c.n_blocks + block) * c.n_kv_heads + kv_head) *
             c.block_size +
         position % c.block_size;
}

__host__ __device__ inline int PrefillRows(int head_dim) {
  const int rows = 4096 / head_dim;
  return rows < 8 ? 8 : (rows > 64 ? 64 : rows);
}

// Dynamic shared memory of AttentionPrefillKernel: q and acc [rows][d], m and l [rows], and the
// K and V tiles [kPrefillKv][d + 1] (padded: lane j reads row j, so rows of odd stride put the
// lanes in different banks).
__host__ __device__ inline size_t PrefillSharedBytes(int head_dim) {
  const int rows = PrefillRows(head_dim);
  return sizeof(float) * (2 * static_cast<size_t>(rows) * head_dim + 2 * rows +
                          2 * static_cast<size_t>(kPrefillKv) * (head_dim + 1));
}

template <typename T, KvDType kCache>
__global__ void __launch_bounds__(kAttentionThreads)
    AttentionPrefillKernel(AttentionParams p, int tile_tokens) {
  const KvCacheView& c = p.cache;
  const int d = p.head_dim;
  const int group = p.n_heads / p.n_kv_heads;
  const int kv_head = blockIdx.y;
  const int t0 = static_cast<int>(blockIdx.x) * tile_tokens;
  const int n_tok = IntMin(tile_tokens, p.n_tokens - t0);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int rows = PrefillRows(d);
  const int ks = d + 1;  // K/V tile row stride

  TANDEM_DYNAMIC_SHARED(float, smem);
  float* q = smem;                   // [rows][d], scaled; row r = (token r / group, head)
  float* acc = q + rows * d;         // [rows][d]
  float* m = acc + rows * d;         // [rows]
  float* l = m + rows;               // [rows]
  float* kt = l + rows;              // [kPrefillKv][d + 1]
  float* vt = kt + kPrefillKv * ks;  // [kPrefillKv][d + 1]
  const int n_rows = n_tok * group;
  for (int x = threadIdx.x; x < n_rows * d; x += blockDim.x) {
    const int r = x / d;
    const int i = x % d;
    const int64_t t = t0 + r / group;
    const int head = kv_head * group + r % group;
    q[x] = ToFloat(reinterpret_cast<const T*>(p.q)[(t * p.n_heads + head) * d + i]) * p.scale;
    acc[x] = 0.f;
  }
  for (int r = threadIdx.x; r < n_rows; r += blockDim.x) {
    m[r] = -INFINITY;
    l[r] = 0.f;
  }

  for (int run = 0; run < n_tok;) {
    const PrefillRun rr = FindRun(p, t0, run, n_tok);
    const int run_end = rr.end;
    for (int kv0 = rr.lo; kv0 <= rr.hi; kv0 += kPrefillKv) {
      const int count = IntMin(kPrefillKv, rr.hi + 1 - kv0);
      __syncthreads();  // the previous K/V tile (and, at first, the set-up above) is done with
      for (int x = threadIdx.x; x < count * d; x += blockDim.x) {
        const int j = x / d;
        const int i = x % d;
        const int64_t row = KvRowOf(p, rr.table, kv0 + j, kv_head);
        kt[j * ks + i] = LoadKv<kCache>(c.k, c.k_scale_zero, row, d, i);
        vt[j * ks + i] = LoadKv<kCache>(c.v, c.v_scale_zero, row, d, i);
      }
      __syncthreads();
      for (int r = run * group + warp; r < run_end * group; r += kAttentionWarps) {
        const int pos = p.positions[t0 + r / group];
        const int first = p.window > 0 ? IntMax(0, pos - p.window + 1) : 0;
        const int position = kv0 + lane;
        const bool valid = lane < count && position <= pos && position >= first;
        float score = -INFINITY;
        if (valid) {
          score = 0.f;
          for (int i = 0; i < d; ++i) score += q[r * d + i] * kt[lane * ks + i];
        }
        const float tile_max = WarpMax(score);
        if (tile_max == -INFINITY) continue;  // no position of this tile is the row's (uniform)
        const float m_old = m[r];
        const float m_new = fmaxf(m_old, tile_max);
        const float alpha = expf(m_old - m_new);  // 0 while m was -inf
        const float w = valid ? expf(score - m_new) : 0.f;
        const float l_new = l[r] * alpha + WarpSum(w);
        // The lane's elements lane + 32 e in registers; every position's weight comes from its
        // lane by a shuffle all lanes take part in.
        float a[kAttentionPerLane];
        TANDEM_ATTENTION_UNROLL
        for (int e = 0; e < kAttentionPerLane; ++e) {
          const int i = lane + 32 * e;
          a[e] = i < d ? acc[r * d + i] * alpha : 0.f;
        }
        for (int j = 0; j < count; ++j) {
          const float wj = __shfl_sync(0xffffffffu, w, j);
          TANDEM_ATTENTION_UNROLL
          for (int e = 0; e < kAttentionPerLane; ++e) {
            const int i = lane + 32 * e;
            if (i < d) a[e] += wj * vt[j * ks + i];
          }
        }
        TANDEM_ATTENTION_UNROLL
        for (int e = 0; e < kAttentionPerLane; ++e) {
          const int i = lane + 32 * e;
          if (i < d) acc[r * d + i] = a[e];
        }
        __syncwarp();  // every lane has read m[r] and l[r]
        if (lane == 0) {
          m[r] = m_new;
          l[r] = l_new;
        }
        __syncwarp();
      }
    }
    run = run_end;
  }
  __syncthreads();
  for (int x = threadIdx.x; x < n_rows * d; x += blockDim.x) {
    const int r = x / d;
    const int i = x % d;
    const int64_t t = t0 + r / group;
    const int head = kv_head * group + r % group;
    reinterpret_cast<T*>(p.out)[(t * p.n_heads + head) * d + i] = FromFloat<T>(acc[x] / l[r]);
  }
}

inline constexpr int kMmaRows = 64;  // query rows per block: 16 per warp
inline constexpr int kMmaKv = 32;    // positions per K/V tile

template <typename T, KvDType kCache, int kD>
__global__ void __launch_bounds__(kAttentionThreads)
    AttentionPrefillMmaKernel(AttentionParams p, int tile_tokens) {
  constexpr int kStride = kD + 8;       // shared row: 16-byte aligned, rows in distinct banks
  constexpr int kChunks = kD / 16;      // k steps of S = Q K^T
  constexpr int kDimTiles = kD / 8;     // n tiles of O
  constexpr int kKvTiles = kMmaKv / 8;  // n tiles of S
  TANDEM_SHARED(T, qs, kMmaRows * kStride);
  TANDEM_SHARED(T, ks, kMmaKv * kStride);
  TANDEM_SHARED(T, vs, kMmaKv * kStride);
  const KvCacheView& c = p.cache;
  const int group = p.n_heads / p.n_kv_heads;
  const int kv_head = blockIdx.y;
  const int t0 = static_cast<int>(blockIdx.x) * tile_tokens;
  const int n_tok = IntMin(tile_tokens, p.n_tokens - t0);
  const int n_rows = n_tok * group;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int quad = lane % 4;
  // This lane's two rows of its warp's 16 (the C fragments' rows g and g + 8).
  const int row[2] = {warp * 16 + lane / 4, warp * 16 + lane / 4 + 8};

  // Q rows (row r = token t0 + r / group, head kv_head * group + r % group; zeros past n_rows)
  // to shared memory, then each warp's A fragments into registers for the whole block.
  for (int x = threadIdx.x; x < kMmaRows * kD; x += blockDim.x) {
    const int r = x / kD;
    const int i = x % kD;
    T v = FromFloat<T>(0.f);
    if (r < n_rows) {
      const int64_t t = t0 + r / group;
      const int head = kv_head * group + r % group;
      v = reinterpret_cast<const T*>(p.q)[(t * p.n_heads + head) * kD + i];
    }
    qs[r * kStride + i] = v;
  }
  __syncthreads();
  uint32_t qf[kChunks][4];
  TANDEM_ATTENTION_UNROLL
  for (int kc = 0; kc < kChunks; ++kc) {
    LdMatrixX4(qf[kc], qs + (warp * 16 + lane % 16) * kStride + kc * 16 + (lane / 16) * 8);
  }
  float o[kDimTiles][4];
  TANDEM_ATTENTION_UNROLL
  for (int j = 0; j < kDimTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float row_m[2] = {-INFINITY, -INFINITY};
  float row_l[2] = {0.f, 0.f};

  for (int run = 0; run < n_tok;) {
    // The run's rows are [run * group, run_end * group).
    const PrefillRun rr = FindRun(p, t0, run, n_tok);
    const int run_end = rr.end;
    bool in_run[2];
    int last[2], first[2];  // the positions row h attends to: [first, last]
    TANDEM_ATTENTION_UNROLL
    for (int h = 0; h < 2; ++h) {
      in_run[h] = row[h] >= run * group && row[h] < run_end * group;
      last[h] = in_run[h] ? p.positions[t0 + row[h] / group] : -1;
      first[h] = p.window > 0 ? IntMax(0, last[h] - p.window + 1) : 0;
    }
    const bool warp_in_run = warp * 16 < run_end * group && warp * 16 + 16 > run * group;
    for (int kv0 = rr.lo; kv0 <= rr.hi; kv0 += kMmaKv) {
      const int count = IntMin(kMmaKv, rr.hi + 1 - kv0);
      __syncthreads();  // the previous K/V tile (and, at first, the Q tile) is done with
      for (int x = threadIdx.x; x < kMmaKv * kD; x += blockDim.x) {
        const int j = x / kD;
        const int i = x % kD;
        float kv_k = 0.f, kv_v = 0.f;  // past `count`: zeros (masked, but never NaN)
        if (j < count) {
          const int64_t kv_row = KvRowOf(p, rr.table, kv0 + j, kv_head);
          kv_k = LoadKv<kCache>(c.k, c.k_scale_zero, kv_row, kD, i);
          kv_v = LoadKv<kCache>(c.v, c.v_scale_zero, kv_row, kD, i);
        }
        ks[j * kStride + i] = FromFloat<T>(kv_k);
        vs[j * kStride + i] = FromFloat<T>(kv_v);
      }
      __syncthreads();
      if (!warp_in_run) continue;  // warp-uniform; no barrier below

      // S = Q K^T on this warp's 16 rows: K rows are B's columns (ldmatrix without .trans).
      float sc[kKvTiles][4];
      TANDEM_ATTENTION_UNROLL
      for (int nt = 0; nt < kKvTiles; ++nt) {
        sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
        TANDEM_ATTENTION_UNROLL
        for (int kc = 0; kc < kChunks; ++kc) {
          uint32_t b[2];
          LdMatrixX2(b, ks + (nt * 8 + lane % 8) * kStride + kc * 16 + ((lane / 8) % 2) * 8);
          MmaM16N8K16<T>(sc[nt], qf[kc], b);
        }
      }
      // Scale and mask (causality, window, rows of other runs), then online softmax per row:
      // a row's 32 scores sit in the 4 lanes of a quad.
      float tile_max[2] = {-INFINITY, -INFINITY};
      TANDEM_ATTENTION_UNROLL
      for (int nt = 0; nt < kKvTiles; ++nt) {
        TANDEM_ATTENTION_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int h = e / 2;
          const int col = nt * 8 + 2 * quad + e % 2;
          const int position = kv0 + col;
          const bool valid =
              in_run[h] && col < count && position <= last[h] && position >= first[h];
          sc[nt][e] = valid ? sc[nt][e] * p.scale : -INFINITY;
          tile_max[h] = fmaxf(tile_max[h], sc[nt][e]);
        }
      }
      float alpha[2], sum[2] = {0.f, 0.f};
      TANDEM_ATTENTION_UNROLL
      for (int h = 0; h < 2; ++h) {
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
        const float m_new = fmaxf(row_m[h], tile_max[h]);
        // A row with nothing yet (or outside the run) keeps its state: factor 1, weights 0.
        alpha[h] = m_new == -INFINITY ? 1.f : expf(row_m[h] - m_new);
        row_m[h] = m_new;
      }
      TANDEM_ATTENTION_UNROLL
      for (int nt = 0; nt < kKvTiles; ++nt) {
        TANDEM_ATTENTION_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int h = e / 2;
          sc[nt][e] = sc[nt][e] == -INFINITY ? 0.f : expf(sc[nt][e] - row_m[h]);
          sum[h] += sc[nt][e];
        }
      }
      TANDEM_ATTENTION_UNROLL
      for (int h = 0; h < 2; ++h) {
        sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 1);
        sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 2);
        row_l[h] = row_l[h] * alpha[h] + sum[h];
      }
      TANDEM_ATTENTION_UNROLL
      for (int j = 0; j < kDimTiles; ++j) {
        TANDEM_ATTENTION_UNROLL
        for (int e = 0; e < 4; ++e) o[j][e] *= alpha[e / 2];
      }
      // O += P V: P's accumulator fragments are the A operand (two n tiles of S per k step of
      // 16 positions); V rows are B's rows (ldmatrix .trans).
      TANDEM_ATTENTION_UNROLL
      for (int kc = 0; kc < kMmaKv / 16; ++kc) {
        const uint32_t a[4] = {PackPair<T>(sc[2 * kc][0], sc[2 * kc][1]),
                               PackPair<T>(sc[2 * kc][2], sc[2 * kc][3]),
                               PackPair<T>(sc[2 * kc + 1][0], sc[2 * kc + 1][1]),
                               PackPair<T>(sc[2 * kc + 1][2], sc[2 * kc + 1][3])};
        TANDEM_ATTENTION_UNROLL
        for (int j = 0; j < kDimTiles; ++j) {
          uint32_t b[2];
          LdMatrixX2Trans(b, vs + (kc * 16 + lane % 16) * kStride + j * 8);
          MmaM16N8K16<T>(o[j], a, b);
        }
      }
    }
    run = run_end;
  }
  // Each row's output, O / l, rounded to the activation dtype once.
  T* out = reinterpret_cast<T*>(p.out);
  TANDEM_ATTENTION_UNROLL
  for (int h = 0; h < 2; ++h) {
    if (row[h] >= n_rows) continue;
    const int64_t t = t0 + row[h] / group;
    const int head = kv_head * group + row[h] % group;
    const float inv = 1.f / row_l[h];
    TANDEM_ATTENTION_UNROLL
    for (int j = 0; j < kDimTiles; ++j) {
      const int64_t at = (t * p.n_heads + head) * kD + j * 8 + 2 * quad;
      out[at] = FromFloat<T>(o[j][2 * h] * inv);
      out[at + 1] = FromFloat<T>(o[j][2 * h + 1] * inv);
    }
  }
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#undef TANDEM_ATTENTION_UNROLL

#endif  // TANDEM_KERNELS_CUDA_ATTENTION_CUH_
