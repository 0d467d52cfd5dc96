// kernels/cuda Attention (split-K paged attention) run in the CUDA-on-CPU harness against
// kernels/ref AttentionRef (double precision), for every (activation dtype, KV cache dtype)
// pair: batches mixing decode tokens and prefill chunks of several sequences with scattered
// block tables, GQA groups of 1, 4 and 12 (over kAttentionMaxGroup: two blocks per KV head),
// head sizes that are not multiples of 32, sliding windows, and splits shorter than a context.
//
// Tolerance for f32 activations, derived: q in [-1, 1] is scaled by 1/sqrt(d) and K, V rows are
// in [-1, 1], so a score's f32 dot product of d terms is off by at most d * u * sum|q_i k_i| <=
// d * u * sqrt(d) (u = 2^-24; 3.1e-5 at d = 64, 1.4e-4 at d = 130); an error e in every score
// moves the softmax weights by a factor within exp(+-2e), so the output (a convex combination
// of V entries in [-1, 1]) by at most 2e plus the f32 rounding of the weighted sums and of
// the merge (a few u per term, relative to |v| <= 1): |out - ref| <= 2 d u sqrt(d) + 1e-5. (The
// int8 cache's dequantization rounds twice in f32 where the reference rounds once from double:
// 1 ulp of an entry, inside that margin.) f16 and bf16 add half an ulp of the output
// (cuda_test_util.h).
//
// The tensor-core prefill kernel (AttentionPrefillMma, head sizes 64 and 128) rounds more to
// the activation dtype (unit roundoff u_T: 2^-11 f16, 2^-8 bf16): K and V of an f32 or int8
// cache (each entry within u_T relative, so a score within u_T sum|q_i k_i| / sqrt(d) <=
// u_T sqrt(d), moving the output by at most 2 u_T sqrt(d)), V's own rounding (u_T |v| <= u_T)
// and the softmax weights P (each within u_T, while the normalizer sums them unrounded: at
// most u_T sum p_j |v_j| / l <= u_T). Its bound adds u_T (2 sqrt(d) + 2) to the one above.
#include "kernels/cuda/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/ref/attention_ref.h"
#include "kernels/ref/ops_ref.h"
#include "tests/cuda/cuda_test_util.h"

namespace tandem::kernels::cuda {
namespace {

using namespace testing;  // NOLINT(build/namespaces): the test helpers

struct Shape {
  int n_heads, n_kv_heads, head_dim, block_size, window, split;
};

// A batch: each sequence contributes its decode token or a prefill chunk (positions
// [start, start + len)); contexts up to `max_pos` + 1.
struct Batch {
  std::vector<int32_t> token_seq, positions, tables;
  int n_seqs = 0, max_blocks = 0, max_context = 0;
};

Batch MakeBatch(const Shape& s, int n_blocks, std::mt19937& rng) {
  Batch b;
  b.n_seqs = 4;
  const int max_pos = 40;
  b.max_blocks = max_pos / s.block_size + 1;
  // Every sequence's blocks distinct, scattered over the pool.
  std::vector<int32_t> ids(n_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  b.tables.assign(static_cast<size_t>(b.n_seqs) * b.max_blocks, -1);
  for (int i = 0; i < b.n_seqs * b.max_blocks; ++i) b.tables[i] = ids[i];
  std::uniform_int_distribution<int> pos(0, max_pos);
  // Sequences 0 and 2 decode one token, 1 runs a chunk of 4, 3 a chunk from position 0.
  const int chunk_start = std::uniform_int_distribution<int>(0, max_pos - 4)(rng);
  for (int seq = 0; seq < b.n_seqs; ++seq) {
    int start = pos(rng), len = 1;
    if (seq == 1) start = chunk_start, len = 4;
    if (seq == 3) start = 0, len = 3;
    for (int i = 0; i < len; ++i) {
      b.token_seq.push_back(seq);
      b.positions.push_back(start + i);
    }
  }
  for (int p : b.positions) {
    const int first = s.window > 0 ? std::max(0, p - s.window + 1) : 0;
    b.max_context = std::max(b.max_context, p + 1 - first);
  }
  return b;
}

template <typename T>
class AttentionTest : public ::testing::Test {};
TYPED_TEST_SUITE(AttentionTest, ActTypes);

TYPED_TEST(AttentionTest, MatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(77);
  const std::vector<Shape> shapes = {
      {4, 4, 64, 16, 0, 256},  // MHA, one split per context
      {8, 2, 64, 16, 0, 12},   // GQA 4, contexts in several splits
      {12, 1, 80, 8, 0, 24},   // a group of 12: two blocks per KV head; d not a multiple of 32
      {4, 1, 130, 4, 13, 6},   // a sliding window of 13 over blocks of 4
      {2, 2, 33, 16, 0, 7},    // odd head size, splits of 7
      {6, 2, 128, 8, 9, 16},   // GQA 3 at d 128 (the tensor-core prefill kernel's other size)
  };
  for (const Shape& s : shapes) {
    for (KvDType kv : {KvDType::kF32, KvDType::kF16, KvDType::kInt8}) {
      SCOPED_TRACE(::testing::Message()
                   << "heads " << s.n_heads << "/" << s.n_kv_heads << " d " << s.head_dim
                   << " block " << s.block_size << " window " << s.window << " split " << s.split
                   << " kv dtype " << static_cast<int>(kv));
      KvCacheView c;
      c.dtype = kv;
      c.n_layers = 2;
      c.block_size = s.block_size;
      c.n_blocks = 4 * (40 / s.block_size + 1) + 3;
      c.n_kv_heads = s.n_kv_heads;
      c.head_dim = s.head_dim;
      const Batch b = MakeBatch(s, c.n_blocks, rng);
      const int layer = 1;

      // The cache: every slot of the layer written through the reference KvAppend from random
      // rows in [-1, 1] (so int8 rows carry their scale and zero).
      const size_t elems =
          static_cast<size_t>(c.n_layers) * c.n_blocks * c.n_kv_heads * c.block_size * c.head_dim;
      std::vector<unsigned char> k_mem(elems * KvElemBytes(kv)), v_mem(k_mem.size());
      std::vector<float> k_sz(elems / c.head_dim * 2), v_sz(k_sz.size());
      c.k = k_mem.data();
      c.v = v_mem.data();
      c.k_scale_zero = k_sz.data();
      c.v_scale_zero = v_sz.data();
      const int slots = c.n_blocks * c.block_size;
      std::vector<int32_t> all(slots);
      std::iota(all.begin(), all.end(), 0);
      const std::vector<float> kr =
          RandomFloats(static_cast<size_t>(slots) * c.n_kv_heads * c.head_dim, -1.f, 1.f, rng);
      const std::vector<float> vr =
          RandomFloats(static_cast<size_t>(slots) * c.n_kv_heads * c.head_dim, -1.f, 1.f, rng);
      KvAppendParams ap;
      ap.k = kr.data();
      ap.v = vr.data();
      ap.slots = all.data();
      ap.n_tokens = slots;
      ap.layer = layer;
      ap.cache = c;
      ref::KvAppendRef(ap);

      const int n = static_cast<int>(b.positions.size());
      const std::vector<T> q =
          ToActs<T>(RandomFloats(static_cast<size_t>(n) * s.n_heads * s.head_dim, -1.f, 1.f, rng));
      const std::vector<float> q_in = FromActs(q);
      std::vector<float> want(q.size());
      AttentionParams p;
      p.q = q_in.data();
      p.out = want.data();
      p.token_seq = b.token_seq.data();
      p.positions = b.positions.data();
      p.block_tables = b.tables.data();
      p.n_tokens = n;
      p.n_seqs = b.n_seqs;
      p.max_blocks_per_seq = b.max_blocks;
      p.n_heads = s.n_heads;
      p.n_kv_heads = s.n_kv_heads;
      p.head_dim = s.head_dim;
      p.scale = 1.f / std::sqrt(static_cast<float>(s.head_dim));
      p.layer = layer;
      p.window = s.window;
      p.cache = c;
      ref::AttentionRef(p);

      std::vector<T> got(q.size(), FromFloat<T>(7.f));
      std::vector<float> workspace(AttentionWorkspaceFloats(p, b.max_context, s.split), 3.f);
      DeviceCopy<T> dq(q), dout(got);
      DeviceCopy<int32_t> dseq(b.token_seq), dpos(b.positions), dtables(b.tables);
      DeviceCopy<unsigned char> dk(k_mem), dv(v_mem);
      DeviceCopy<float> dk_sz(k_sz), dv_sz(v_sz), dws(workspace);
      p.q = reinterpret_cast<const float*>(dq.get());
      p.out = reinterpret_cast<float*>(dout.get());
      p.token_seq = dseq.get();
      p.positions = dpos.get();
      p.block_tables = dtables.get();
      p.cache.k = dk.get();
      p.cache.v = dv.get();
      p.cache.k_scale_zero = dk_sz.get();
      p.cache.v_scale_zero = dv_sz.get();
      Attention(p, ActTraits<T>::kDType, b.max_context, dws.get(), Stream{}, s.split);
      dout.ToHost(got);

      const double d = s.head_dim;
      const double f32_abs = 2 * d * std::ldexp(1.0, -24) * std::sqrt(d) + 1e-5;
      for (size_t i = 0; i < got.size(); ++i) {
        const double err = std::fabs(ToFloat(got[i]) - want[i]);
        ASSERT_LE(err, Tolerance<T>(want[i], 0, f32_abs))
            << "element " << i << ": got " << ToFloat(got[i]) << ", want " << want[i];
      }
      // The tiled prefill kernel on the same batch (its runs: the chunks, and each decode
      // token alone), the same bound.
      std::vector<T> tiled(q.size(), FromFloat<T>(7.f));
      DeviceCopy<T> dtiled(tiled);
      p.out = reinterpret_cast<float*>(dtiled.get());
      AttentionPrefill(p, ActTraits<T>::kDType, Stream{});
      dtiled.ToHost(tiled);
      for (size_t i = 0; i < tiled.size(); ++i) {
        const double err = std::fabs(ToFloat(tiled[i]) - want[i]);
        ASSERT_LE(err, Tolerance<T>(want[i], 0, f32_abs))
            << "prefill kernel, element " << i << ": got " << ToFloat(tiled[i]) << ", want "
            << want[i];
      }
      // The tensor-core prefill kernel, where it applies, within its looser bound.
      if (AttentionPrefillMmaSupports(p, ActTraits<T>::kDType)) {
        std::vector<T> mma(q.size(), FromFloat<T>(7.f));
        DeviceCopy<T> dmma(mma);
        p.out = reinterpret_cast<float*>(dmma.get());
        AttentionPrefillMma(p, ActTraits<T>::kDType, Stream{});
        dmma.ToHost(mma);
        const double extra = ActTraits<T>::kHalfUlp * (2 * std::sqrt(d) + 2);
        for (size_t i = 0; i < mma.size(); ++i) {
          const double err = std::fabs(ToFloat(mma[i]) - want[i]);
          ASSERT_LE(err, Tolerance<T>(want[i], 0, f32_abs + extra))
              << "tensor-core prefill kernel, element " << i << ": got " << ToFloat(mma[i])
              << ", want " << want[i];
        }
      }
    }
  }
}

// A context far longer than one split, as a long decode: 1 token at position 1000 in splits of
// 64 (16 splits merged), against the reference.
TEST(AttentionLongTest, ManySplitsMerge) {
  std::mt19937 rng(5);
  KvCacheView c;
  c.dtype = KvDType::kF16;
  c.n_layers = 1;
  c.block_size = 16;
  c.n_blocks = 64;
  c.n_kv_heads = 1;
  c.head_dim = 32;
  const size_t elems = static_cast<size_t>(c.n_blocks) * c.block_size * c.head_dim;
  std::vector<unsigned char> k_mem(elems * 2), v_mem(elems * 2);
  c.k = k_mem.data();
  c.v = v_mem.data();
  std::vector<int32_t> all(c.n_blocks * c.block_size);
  std::iota(all.begin(), all.end(), 0);
  const std::vector<float> kr = RandomFloats(elems, -1.f, 1.f, rng);
  const std::vector<float> vr = RandomFloats(elems, -1.f, 1.f, rng);
  KvAppendParams ap{kr.data(), vr.data(), all.data(), static_cast<int>(all.size()), 0, c};
  ref::KvAppendRef(ap);
  std::vector<int32_t> table(c.n_blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  const std::vector<int32_t> seq = {0}, pos = {1000};
  const std::vector<float> q = RandomFloats(2 * 32, -1.f, 1.f, rng);
  std::vector<float> want(q.size()), got(q.size());
  AttentionParams p;
  p.q = q.data();
  p.out = want.data();
  p.token_seq = seq.data();
  p.positions = pos.data();
  p.block_tables = table.data();
  p.n_tokens = 1;
  p.n_seqs = 1;
  p.max_blocks_per_seq = c.n_blocks;
  p.n_heads = 2;
  p.n_kv_heads = 1;
  p.head_dim = 32;
  p.scale = 1.f / std::sqrt(32.f);
  p.cache = c;
  ref::AttentionRef(p);
  std::vector<float> ws(AttentionWorkspaceFloats(p, 1001, 64));
  DeviceCopy<float> dq(q), dout(got), dws(ws);
  DeviceCopy<int32_t> dseq(seq), dpos(pos), dtable(table);
  DeviceCopy<unsigned char> dk(k_mem), dv(v_mem);
  p.q = dq.get();
  p.out = dout.get();
  p.token_seq = dseq.get();
  p.positions = dpos.get();
  p.block_tables = dtable.get();
  p.cache.k = dk.get();
  p.cache.v = dv.get();
  Attention(p, ActivationDType::kF32, 1001, dws.get(), Stream{}, 64);
  dout.ToHost(got);
  const double f32_abs = 2 * 32 * std::ldexp(1.0, -24) * std::sqrt(32.0) + 1e-5;
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], f32_abs) << i;
}

// The tiled prefill kernel on long chunks: runs that span several K/V tiles and several blocks,
// a decode token between them, GQA 3 (the default model's), with and without a window, f16
// activations and KV, against the reference.
TEST(AttentionPrefillTest, LongChunksMatchReference) {
  std::mt19937 rng(9);
  for (const int window : {0, 50}) {
    SCOPED_TRACE(window);
    KvCacheView c;
    c.dtype = KvDType::kF16;
    c.n_layers = 1;
    c.block_size = 16;
    c.n_blocks = 80;
    c.n_kv_heads = 2;
    c.head_dim = 64;
    const size_t elems = static_cast<size_t>(c.n_blocks) * c.n_kv_heads * c.block_size * 64;
    std::vector<unsigned char> k_mem(elems * 2), v_mem(elems * 2);
    c.k = k_mem.data();
    c.v = v_mem.data();
    std::vector<int32_t> all(c.n_blocks * c.block_size);
    std::iota(all.begin(), all.end(), 0);
    const std::vector<float> kr = RandomFloats(elems, -1.f, 1.f, rng);
    const std::vector<float> vr = RandomFloats(elems, -1.f, 1.f, rng);
    KvAppendParams ap{kr.data(), vr.data(), all.data(), static_cast<int>(all.size()), 0, c};
    ref::KvAppendRef(ap);
    // Three sequences of 26 blocks each, scattered: a chunk at 200..299, a decode token at
    // 400, a chunk at 0..36.
    const int max_blocks = 26;
    std::vector<int32_t> ids(c.n_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    std::vector<int32_t> tables(ids.begin(), ids.begin() + 3 * max_blocks);
    std::vector<int32_t> seq, pos;
    for (int i = 200; i < 300; ++i) seq.push_back(0), pos.push_back(i);
    seq.push_back(1), pos.push_back(400);
    for (int i = 0; i < 37; ++i) seq.push_back(2), pos.push_back(i);
    const int n = static_cast<int>(seq.size());
    using T = Half;
    const std::vector<T> q =
        ToActs<T>(RandomFloats(static_cast<size_t>(n) * 6 * 64, -1.f, 1.f, rng));
    const std::vector<float> q_in = FromActs(q);
    std::vector<float> want(q.size());
    AttentionParams p;
    p.q = q_in.data();
    p.out = want.data();
    p.token_seq = seq.data();
    p.positions = pos.data();
    p.block_tables = tables.data();
    p.n_tokens = n;
    p.n_seqs = 3;
    p.max_blocks_per_seq = max_blocks;
    p.n_heads = 6;
    p.n_kv_heads = 2;
    p.head_dim = 64;
    p.scale = 1.f / 8.f;
    p.window = window;
    p.cache = c;
    ref::AttentionRef(p);
    std::vector<T> got(q.size(), FromFloat<T>(7.f));
    DeviceCopy<T> dq(q), dout(got);
    DeviceCopy<int32_t> dseq(seq), dpos(pos), dtables(tables);
    DeviceCopy<unsigned char> dk(k_mem), dv(v_mem);
    p.q = reinterpret_cast<const float*>(dq.get());
    p.out = reinterpret_cast<float*>(dout.get());
    p.token_seq = dseq.get();
    p.positions = dpos.get();
    p.block_tables = dtables.get();
    p.cache.k = dk.get();
    p.cache.v = dv.get();
    AttentionPrefill(p, ActivationDType::kF16, Stream{});
    dout.ToHost(got);
    const double f32_abs = 2 * 64 * std::ldexp(1.0, -24) * 8 + 1e-5;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_LE(std::fabs(ToFloat(got[i]) - want[i]), Tolerance<T>(want[i], 0, f32_abs))
          << "element " << i << " (token " << i / (6 * 64) << ")";
    }
    // The tensor-core kernel on the same batch: runs over several 32-position K/V tiles and
    // several 64-row blocks, rows of two runs in one warp's 16.
    ASSERT_TRUE(AttentionPrefillMmaSupports(p, ActivationDType::kF16));
    std::vector<T> mma(q.size(), FromFloat<T>(7.f));
    DeviceCopy<T> dmma(mma);
    p.out = reinterpret_cast<float*>(dmma.get());
    AttentionPrefillMma(p, ActivationDType::kF16, Stream{});
    dmma.ToHost(mma);
    const double extra = ActTraits<T>::kHalfUlp * (2 * 8 + 2);
    for (size_t i = 0; i < mma.size(); ++i) {
      ASSERT_LE(std::fabs(ToFloat(mma[i]) - want[i]), Tolerance<T>(want[i], 0, f32_abs + extra))
          << "tensor-core kernel, element " << i << " (token " << i / (6 * 64) << ")";
    }
  }
}

}  // namespace
}  // namespace tandem::kernels::cuda
