// Sampling kernels (launchers: kernels/cuda/sample.cu). GreedySampleKernel, one block per row:
//   1. each thread scans a strided slice of the row for its best (value, id), NaN read as -inf,
//      a later id replacing the best only when strictly larger; the block reduces the pairs
//      with "larger value, then lower id", which is associative and commutative, so the result
//      is the row's first maximum whatever the order of the reduction (exact: only comparisons);
//   2. with logprobs and a finite maximum m, each thread sums expf(l - m) over its slice in f32,
//      the block sums (reduce.cuh's BlockSum, deterministic), and the logprob of the argmax is
//      -logf(sum) (its logit is m).
// The full op (SampleKernel) is described below. The pair and int reductions live here rather
// than in reduce.cuh so that this family adds files only.
// Thread safety: device code.
#ifndef TANDEM_KERNELS_CUDA_SAMPLE_CUH_
#define TANDEM_KERNELS_CUDA_SAMPLE_CUH_

#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/sample.h"
#include "kernels/emu/cuda_compat.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

inline constexpr int kSampleThreads = 256;

// A candidate of the argmax: (value, id), ordered by larger value, then lower id.
struct ArgmaxPair {
  float value;
  int32_t id;
};

__device__ __forceinline__ bool Better(float v, int32_t id, const ArgmaxPair& best) {
  return v > best.value || (v == best.value && id < best.id);
}

// Every lane ends with the warp's best pair.
__device__ __forceinline__ ArgmaxPair WarpArgmax(ArgmaxPair b) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const float v = __shfl_xor_sync(kFullMask, b.value, offset);
    const int32_t id = __shfl_xor_sync(kFullMask, b.id, offset);
    if (Better(v, id, b)) b = {v, id};
  }
  return b;
}

// The block's best pair, returned to every thread (a multiple of 32 threads, all calling).
__device__ __forceinline__ ArgmaxPair BlockArgmax(ArgmaxPair b) {
  TANDEM_SHARED(float, values, 32);
  TANDEM_SHARED(int32_t, ids, 32);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int n_warps = static_cast<int>(blockDim.x) / 32;
  b = WarpArgmax(b);
  if (threadIdx.x % 32 == 0) {
    values[warp] = b.value;
    ids[warp] = b.id;
  }
  __syncthreads();
  ArgmaxPair best = {values[0], ids[0]};
  for (int w = 1; w < n_warps; ++w) {
    if (Better(values[w], ids[w], best)) best = {values[w], ids[w]};
  }
  __syncthreads();  // the arrays may be reused by a later call
  return best;
}

__device__ __forceinline__ float NanToNegInf(float v) { return isnan(v) ? -INFINITY : v; }

template <typename T>
__global__ void __launch_bounds__(kSampleThreads) GreedySampleKernel(GreedySampleParams p) {
  const T* row = static_cast<const T*>(p.logits) + static_cast<int64_t>(blockIdx.x) * p.vocab;
  // The sentinel id `vocab` loses every tie, so a thread with elements always replaces it and
  // an all -inf row gives id 0.
  ArgmaxPair best = {-INFINITY, p.vocab};
  for (int i = threadIdx.x; i < p.vocab; i += blockDim.x) {
    const float v = NanToNegInf(ToFloat(row[i]));
    if (Better(v, i, best)) best = {v, i};
  }
  best = BlockArgmax(best);
  if (p.out_logprobs == nullptr) {
    if (threadIdx.x == 0) p.out_ids[blockIdx.x] = best.id;
    return;
  }
  const float max = best.value;
  if (!isfinite(max)) {  // the same in every thread: no thread leaves the BlockSum below
    if (threadIdx.x == 0) {
      p.out_ids[blockIdx.x] = best.id;
      // kernels/ref LogSoftmaxRef: the raw logit (NaN is not the maximum) against the maximum.
      p.out_logprobs[blockIdx.x] = ToFloat(row[best.id]) == max ? 0.f : -INFINITY;
    }
    return;
  }
  float sum = 0.f;
  for (int i = threadIdx.x; i < p.vocab; i += blockDim.x) {
    sum += expf(NanToNegInf(ToFloat(row[i])) - max);
  }
  sum = BlockSum(sum);
  if (threadIdx.x == 0) {
    p.out_ids[blockIdx.x] = best.id;
    p.out_logprobs[blockIdx.x] = -logf(sum);
  }
}

// ---------------------------------------------------------------------------------------------
// The full sampling op. Per row (one block), with l = the logits, NaN as -inf, m = max(l), t =
// the temperature and w_i = expf((l_i - m) / t):
//   * likelihood order is "larger logit, then lower id"; a set that is a prefix of it is named
//     by its last member, (key, id) with key = OrderKey(l), members: key > cut.key, or
//     key == cut.key and id <= cut.id;
//   * top-k's cut: the largest key K with count(key >= K) >= k, by radix selection (4 passes of
//     8-bit digits, a 256-bin histogram in shared memory each), then the lowest ids among K's
//     ties, by radix selection on the id (1 to 4 passes);
//   * top-p's cut the same way on the mass of top-k's members, in fixed point (w * 2^40 as an
//     integer: exact sums, so the cut does not depend on the order of the atomics), the ties at
//     the cut all weighing w(K): ceil((target - mass above K) / w(K)) of them;
//   * min-p exactly as the reference, in double;
//   * the draw: each thread owns a contiguous chunk of ids and sums its survivors' weights; every
//     thread adds the chunk sums in order (its prefix and the total), and the lowest thread whose
//     walk from its prefix passes u * total gives the id (the last survivor if rounding leaves
//     none). Every reduction is deterministic, so a row gives the same id on every run.

// Philox4x32-10 and the row's uniform, bit for bit kernels/ref PhiloxUniform (sample_ref.h).
__host__ __device__ __forceinline__ float PhiloxUniformDevice(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = uint64_t{0xD2511F53u} * c0;
    const uint64_t p1 = uint64_t{0xCD9E8D57u} * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c1 = lo1;
    c3 = lo0;
    c0 = n0;
    c2 = n2;
  }
  return static_cast<float>(c0 >> 8) * 0x1.0p-24f;
}

// An unsigned key in the order of the float (NaN excluded): larger float, larger key.
__device__ __forceinline__ uint32_t OrderKey(float v) {
  const uint32_t bits = static_cast<uint32_t>(__float_as_int(v));
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}
__device__ __forceinline__ float KeyValue(uint32_t key) {
  const uint32_t bits = (key & 0x80000000u) != 0 ? key & 0x7fffffffu : ~key;
  return __int_as_float(static_cast<int>(bits));
}

// An exact (integer) sum over the block, returned to every thread.
template <typename Acc>
__device__ __forceinline__ Acc BlockSumExact(Acc v) {
  TANDEM_SHARED(Acc, partial, 32);
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  Acc total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x) / 32; ++w) total += partial[w];
  __syncthreads();
  return total;
}

// Radix selection over 8-bit digits, from bit `top_shift` down: `weigh(i, v)` sets entry i's
// 32-bit value v and returns its weight (0: not a member). Returns the value V at which the
// members' weight, accumulated in descending (or ascending) order of v, first reaches
// `remaining`, and leaves in `remaining` what is still needed from the entries equal to V
// (in [1, their weight]). Integer weights, integer atomics: exact and deterministic.
template <typename Acc, bool kDescending, typename Weigh>
__device__ uint32_t RadixSelect(int vocab, int top_shift, Acc& remaining, Weigh weigh) {
  TANDEM_SHARED(Acc, hist, 256);
  uint32_t prefix = 0;
  for (int shift = top_shift; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    const uint32_t high = shift >= 24 ? 0u : ~0u << (shift + 8);
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      uint32_t v;
      const Acc w = weigh(i, v);
      if (w != 0 && (v & high) == prefix) atomicAdd(&hist[(v >> shift) & 255u], w);
    }
    __syncthreads();
    const int dir = kDescending ? -1 : 1;
    int d = kDescending ? 255 : 0;
    Acc before = 0;
    for (int step = 0; step < 255 && before + hist[d] < remaining; ++step, d += dir) {
      before += hist[d];
    }
    remaining -= before;
    prefix |= static_cast<uint32_t>(d) << shift;
    __syncthreads();  // every thread has read hist before the next digit clears it
  }
  return prefix;
}

// The last member of a likelihood-order prefix (see above).
struct OrderCut {
  uint32_t key;
  int id;
  __device__ __forceinline__ bool Keeps(uint32_t k, int i) const {
    return k > key || (k == key && i <= id);
  }
};

// Weights in fixed point for the top-p cut: w * 2^40 truncated (w <= 1, so a row of up to
// 2^23 entries sums below 2^63), exact integer sums whatever the order.
using FixedMass = unsigned long long;
__device__ __forceinline__ FixedMass ToFixed(float w) {
  return static_cast<FixedMass>(w * 0x1p40f);
}

template <typename T>
struct SampleRow {
  const T* logits;  // [vocab]
  int vocab;
  float max;  // finite
  float t;    // > 0

  __device__ __forceinline__ float Logit(int i) const { return NanToNegInf(ToFloat(logits[i])); }
  __device__ __forceinline__ float Weight(float l) const { return expf((l - max) / t); }

  // The shift of the top 8-bit digit of an id.
  __device__ __forceinline__ int IdShift() const {
    int shift = 0;
    while (shift < 24 && ((vocab - 1) >> (shift + 8)) != 0) shift += 8;
    return shift;
  }

  // The `need`-th lowest id among the entries with key == key and in(key, id).
  template <typename In>
  __device__ int NthTie(uint32_t key, int need, In in) const {
    return static_cast<int>(
        RadixSelect<int, false>(vocab, IdShift(), need, [&](int i, uint32_t& v) {
          v = static_cast<uint32_t>(i);
          const uint32_t k = OrderKey(Logit(i));
          return k == key && in(k, i) ? 1 : 0;
        }));
  }

  __device__ OrderCut TopK(int k) const {
    int need = k;
    const uint32_t cut = RadixSelect<int, true>(vocab, 24, need, [&](int i, uint32_t& v) {
      v = OrderKey(Logit(i));
      return 1;
    });
    return {cut, NthTie(cut, need, [](uint32_t, int) { return true; })};
  }

  __device__ OrderCut TopP(float top_p, const OrderCut& top_k) const {
    auto mass = [&](int i, uint32_t& v) -> FixedMass {
      const float l = Logit(i);
      v = OrderKey(l);
      return top_k.Keeps(v, i) ? ToFixed(Weight(l)) : 0;
    };
    FixedMass total = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      uint32_t v;
      total += mass(i, v);
    }
    total = BlockSumExact(total);
    FixedMass need =
        static_cast<FixedMass>(static_cast<double>(top_p) * static_cast<double>(total));
    if (need == 0) need = 1;
    const uint32_t cut = RadixSelect<FixedMass, true>(vocab, 24, need, mass);
    // Every tie at the cut weighs ToFixed(w(cut)) > 0 (need is at most their mass), so
    // ceil(need / that) of them, the lowest ids first, complete the prefix.
    const FixedMass each = ToFixed(Weight(KeyValue(cut)));
    const int n = static_cast<int>((need + each - 1) / each);
    return {cut, NthTie(cut, n, [&](uint32_t k, int i) { return top_k.Keeps(k, i); })};
  }
};

template <typename T>
__global__ void __launch_bounds__(kSampleThreads) SampleKernel(SampleParams p) {
  const int r = blockIdx.x;
  const T* row = reinterpret_cast<const T*>(p.logits) + static_cast<int64_t>(r) * p.vocab;
  ArgmaxPair best = {-INFINITY, p.vocab};
  for (int i = threadIdx.x; i < p.vocab; i += blockDim.x) {
    const float v = NanToNegInf(ToFloat(row[i]));
    if (Better(v, i, best)) best = {v, i};
  }
  best = BlockArgmax(best);
  const float max = best.value;
  const float t = p.temperature[r];
  int32_t id = best.id;
  if (t > 0.f && isfinite(max)) {  // the same in every thread
    const SampleRow<T> s{row, p.vocab, max, t};
    const int k = p.top_k[r];
    OrderCut top_k = {0u, p.vocab - 1};  // keeps every key (NaN, key 0, never occurs)
    if (k > 0 && k < p.vocab) top_k = s.TopK(k);
    OrderCut top_p = {0u, p.vocab - 1};
    if (p.top_p[r] < 1.f) top_p = s.TopP(p.top_p[r], top_k);
    const double min_p_log = p.min_p[r] > 0.f
                                 ? static_cast<double>(t) * log(static_cast<double>(p.min_p[r]))
                                 : -INFINITY;
    auto survivor_weight = [&](int i) {
      const float l = s.Logit(i);
      const uint32_t key = OrderKey(l);
      if (!top_k.Keeps(key, i) || !top_p.Keeps(key, i)) return 0.f;
      if (static_cast<double>(l) - static_cast<double>(max) < min_p_log) return 0.f;
      return s.Weight(l);
    };
    // The draw over contiguous chunks, in ascending id order.
    TANDEM_SHARED(float, chunk_sums, kSampleThreads);
    TANDEM_SHARED(int, picked, 2);  // [0] the lowest id a walk passes the target at, [1] the
                                    // last survivor
    const int chunk = (p.vocab + static_cast<int>(blockDim.x) - 1) / static_cast<int>(blockDim.x);
    const int first = static_cast<int>(threadIdx.x) * chunk;
    const int begin = first < p.vocab ? first : p.vocab;
    const int end = begin + chunk < p.vocab ? begin + chunk : p.vocab;
    float local = 0.f;
    int last = -1;
    for (int i = begin; i < end; ++i) {
      const float w = survivor_weight(i);
      if (w > 0.f) {
        local += w;
        last = i;
      }
    }
    chunk_sums[threadIdx.x] = local;
    if (threadIdx.x == 0) {
      picked[0] = p.vocab;
      picked[1] = -1;
    }
    __syncthreads();
    float prefix = 0.f, total = 0.f;
    for (int j = 0; j < static_cast<int>(blockDim.x); ++j) {
      if (j == static_cast<int>(threadIdx.x)) prefix = total;
      total += chunk_sums[j];
    }
    const float target = PhiloxUniformDevice(p.seed[r], p.counter[r]) * total;
    if (last >= 0) {
      atomicMax(&picked[1], last);
      float running = prefix;
      for (int i = begin; i < end; ++i) {
        const float w = survivor_weight(i);
        if (w <= 0.f) continue;
        running += w;
        if (target < running) {
          atomicMin(&picked[0], i);
          break;
        }
      }
    }
    __syncthreads();
    id = picked[0] < p.vocab ? picked[0] : picked[1];
  }
  if (p.out_logprobs == nullptr) {
    if (threadIdx.x == 0) p.out_ids[r] = id;
    return;
  }
  const float raw = ToFloat(row[id]);
  if (!isfinite(max)) {
    if (threadIdx.x == 0) {
      p.out_ids[r] = id;
      p.out_logprobs[r] = raw == max ? 0.f : -INFINITY;
    }
    return;
  }
  float sum = 0.f;
  for (int i = threadIdx.x; i < p.vocab; i += blockDim.x) {
    sum += expf(NanToNegInf(ToFloat(row[i])) - max);
  }
  sum = BlockSum(sum);
  if (threadIdx.x == 0) {
    p.out_ids[r] = id;
    p.out_logprobs[r] = isnan(raw) ? -INFINITY : (raw - max) - logf(sum);
  }
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_SAMPLE_CUH_
