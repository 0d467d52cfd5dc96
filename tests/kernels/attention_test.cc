// Tests of paged attention (kernels/cpu/ops.h AttentionRange) against the scalar reference
// (kernels/ref/attention_ref.h) for every OpsIsa this CPU supports, on batches that mix
// prefill chunks and decode tokens of several sequences with shuffled block tables; and
// sliding-window attention against the reference and against exact math written out here;
// split-context attention (AttentionSplitRange + AttentionMergeRange) against unsplit, and
// query-tiled attention (AttentionTileRange) against per-token attention.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/ref/attention_ref.h"
#include "kernels/ref/ops_ref.h"
#include "tests/support/ops_isa.h"

namespace tandem::kernels::cpu {
namespace {

using testing::OpsIsaGuard;

std::vector<OpsIsa> SupportedIsas() { return testing::SupportedOpsIsas(); }

const char* DTypeName(KvDType d) {
  switch (d) {
    case KvDType::kF32:
      return "f32";
    case KvDType::kF16:
      return "f16";
    case KvDType::kInt8:
      return "int8";
  }
  return "?";
}

struct Shape {
  int block_size = 16;
  int n_kv_heads = 2;
  int group = 1;  // n_heads / n_kv_heads
  int head_dim = 64;
};

// A batch over a paged cache: sequences of different lengths whose blocks are scattered
// over a shuffled pool, every position's K/V written, and a batch of query tokens:
//   seq 0 (len 70): a prefill chunk, positions 40..69;
//   seq 1 (len 1): decode at position 0;
//   seq 2 (len 200): a chunk at positions 126..129 and decode at 199;
//   seq 3 (len 33): a whole prompt, positions 0..32;
//   seq 4 (len 17): decode at 16.
// The original K/V values are kept to measure quantization error.
class Scenario {
 public:
  Scenario(const Shape& s, KvDType dtype, uint32_t seed) : shape_(s), rng_(seed) {
    const std::vector<int> lens = {70, 1, 200, 33, 17};
    n_seqs_ = static_cast<int>(lens.size());
    max_blocks_ = 0;
    int total_blocks = 0;
    for (int len : lens) {
      const int nb = (len + s.block_size - 1) / s.block_size;
      max_blocks_ = std::max(max_blocks_, nb + 1);  // +1: tables have unused tails
      total_blocks += nb;
    }
    // Twice the blocks needed, handed out in shuffled order: tables are non-contiguous and
    // unordered, and some blocks stay unused.
    const int n_blocks = 2 * total_blocks;
    std::vector<int32_t> pool(n_blocks);
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng_);
    tables_.assign(static_cast<size_t>(n_seqs_) * max_blocks_, -1);
    int next = 0;
    for (int q = 0; q < n_seqs_; ++q) {
      for (int b = 0; b * s.block_size < lens[q]; ++b) tables_[q * max_blocks_ + b] = pool[next++];
    }

    cache_.dtype = dtype;
    cache_.n_layers = 2;
    cache_.n_blocks = n_blocks;
    cache_.block_size = s.block_size;
    cache_.n_kv_heads = s.n_kv_heads;
    cache_.head_dim = s.head_dim;
    const size_t rows = static_cast<size_t>(2) * n_blocks * s.n_kv_heads * s.block_size;
    const size_t elem = dtype == KvDType::kF32 ? 4 : dtype == KvDType::kF16 ? 2 : 1;
    k_.assign(rows * s.head_dim * elem, 0x5a);
    v_.assign(rows * s.head_dim * elem, 0xa5);
    ksz_.assign(rows * 2, 1.f);
    vsz_.assign(rows * 2, 1.f);
    cache_.k = k_.data();
    cache_.v = v_.data();
    cache_.k_scale_zero = ksz_.data();
    cache_.v_scale_zero = vsz_.data();

    // K/V of every position of every sequence, in layer 1 (layer 0 is left as filler).
    std::uniform_real_distribution<float> kv_dist(-1.f, 1.f);
    std::vector<float> k_in, v_in;
    std::vector<int32_t> slots;
    orig_k_.resize(n_seqs_);
    orig_v_.resize(n_seqs_);
    const size_t row = static_cast<size_t>(s.n_kv_heads) * s.head_dim;
    for (int q = 0; q < n_seqs_; ++q) {
      orig_k_[q].resize(lens[q] * row);
      orig_v_[q].resize(lens[q] * row);
      for (float& x : orig_k_[q]) x = kv_dist(rng_);
      for (float& x : orig_v_[q]) x = kv_dist(rng_);
      k_in.insert(k_in.end(), orig_k_[q].begin(), orig_k_[q].end());
      v_in.insert(v_in.end(), orig_v_[q].begin(), orig_v_[q].end());
      for (int pos = 0; pos < lens[q]; ++pos) {
        slots.push_back(tables_[q * max_blocks_ + pos / s.block_size] * s.block_size +
                        pos % s.block_size);
      }
    }
    KvAppendParams ap;
    ap.k = k_in.data();
    ap.v = v_in.data();
    ap.slots = slots.data();
    ap.n_tokens = static_cast<int>(slots.size());
    ap.layer = 1;
    ap.cache = cache_;
    ref::KvAppendRef(ap);

    // The batch: decode tokens and chunks interleaved.
    auto add = [&](int seq, int from, int to) {
      for (int pos = from; pos <= to; ++pos) {
        token_seq_.push_back(seq);
        positions_.push_back(pos);
      }
    };
    add(1, 0, 0);
    add(0, 40, 69);
    add(2, 126, 129);  // contexts 127..130: either side of the AVX-512 softmax chunk (128)
    add(2, 199, 199);
    add(3, 0, 32);
    add(4, 16, 16);
    const int n_heads = s.n_kv_heads * s.group;
    std::uniform_real_distribution<float> q_dist(-2.f, 2.f);  // scores spread over a few units
    q_.resize(positions_.size() * n_heads * s.head_dim);
    for (float& x : q_) x = q_dist(rng_);
  }

  AttentionParams Params(float* out) const {
    AttentionParams p;
    p.q = q_.data();
    p.out = out;
    p.token_seq = token_seq_.data();
    p.positions = positions_.data();
    p.block_tables = tables_.data();
    p.n_tokens = static_cast<int>(positions_.size());
    p.n_seqs = n_seqs_;
    p.max_blocks_per_seq = max_blocks_;
    p.n_heads = shape_.n_kv_heads * shape_.group;
    p.n_kv_heads = shape_.n_kv_heads;
    p.head_dim = shape_.head_dim;
    p.scale = 1.f / std::sqrt(static_cast<float>(shape_.head_dim));
    p.layer = 1;
    p.cache = cache_;
    return p;
  }
  size_t OutSize() const { return q_.size(); }

  // The same attention on an F32 cache holding the unquantized K/V, by the reference.
  std::vector<float> ExactReference() const {
    Scenario exact(shape_, KvDType::kF32, 0);
    exact.CopyInputsFrom(*this);
    std::vector<float> out(OutSize());
    ref::AttentionRef(exact.Params(out.data()));
    return out;
  }

  // Bound on |int8-cache output - exact output| for output element i of (token t, head h),
  // from the stored quantization steps (see Int8KvErrorIsWithinDerivedBound).
  double Int8Bound(int t, int h, int i) const {
    const Shape& s = shape_;
    const int seq = token_seq_[t], pos = positions_[t], kvh = h / s.group;
    const float* q = q_.data() + (static_cast<size_t>(t) * s.n_kv_heads * s.group + h) * s.head_dim;
    double q_l1 = 0;
    for (int j = 0; j < s.head_dim; ++j) q_l1 += std::fabs(q[j]);
    const double scale = 1.0 / std::sqrt(static_cast<double>(s.head_dim));
    double max_ds = 0, max_dv = 0, vmin = 1e30, vmax = -1e30;
    for (int j = 0; j <= pos; ++j) {
      const int block = tables_[seq * max_blocks_ + j / s.block_size];
      const size_t row =
          ((static_cast<size_t>(1) * cache_.n_blocks + block) * s.n_kv_heads + kvh) * s.block_size +
          j % s.block_size;
      max_ds = std::max(max_ds, scale * q_l1 * ksz_[row * 2] / 2);
      max_dv = std::max(max_dv, static_cast<double>(vsz_[row * 2]) / 2);
      const float v = orig_v_[seq][(static_cast<size_t>(j) * s.n_kv_heads + kvh) * s.head_dim + i];
      vmin = std::min<double>(vmin, v);
      vmax = std::max<double>(vmax, v);
    }
    return max_dv + std::expm1(2 * max_ds) * (vmax - vmin) / 2;
  }

  // The block tables with the entry of every block that holds no position of any window of
  // its sequence's tokens in the batch set to -1: attention must not read those entries.
  std::vector<int32_t> TablesWithoutBlocksBeforeWindows(int window) const {
    std::vector<int32_t> tables = tables_;
    for (int q = 0; q < n_seqs_; ++q) {
      int first = INT_MAX;
      for (size_t t = 0; t < positions_.size(); ++t) {
        if (token_seq_[t] != q) continue;
        first = std::min(first, window > 0 ? std::max(0, positions_[t] - window + 1) : 0);
      }
      if (first == INT_MAX) continue;
      for (int b = 0; b < first / shape_.block_size; ++b) tables[q * max_blocks_ + b] = -1;
    }
    return tables;
  }

  // Sliding-window attention on the unquantized K/V in double, written out from the
  // definition without the reference's code: for token t at position p, softmax over
  // positions j with p - j < window (all j <= p when window == 0) of q . k_j / sqrt(d), then
  // the weighted sum of v_j.
  std::vector<double> BruteForce(int window) const {
    const Shape& s = shape_;
    const int n_heads = s.n_kv_heads * s.group, d = s.head_dim;
    std::vector<double> out(OutSize());
    for (int t = 0; t < n_tokens(); ++t) {
      const int seq = token_seq_[t], pos = positions_[t];
      for (int h = 0; h < n_heads; ++h) {
        const int kvh = h / s.group;
        const float* q = q_.data() + (static_cast<size_t>(t) * n_heads + h) * d;
        std::vector<double> w;
        std::vector<int> js;
        for (int j = 0; j <= pos; ++j) {
          if (window > 0 && pos - j >= window) continue;
          const float* k = orig_k_[seq].data() + (static_cast<size_t>(j) * s.n_kv_heads + kvh) * d;
          double dot = 0;
          for (int i = 0; i < d; ++i) dot += static_cast<double>(q[i]) * k[i];
          w.push_back(dot / std::sqrt(static_cast<double>(d)));
          js.push_back(j);
        }
        const double mx = *std::max_element(w.begin(), w.end());
        double sum = 0;
        for (double& x : w) sum += (x = std::exp(x - mx));
        double* o = out.data() + (static_cast<size_t>(t) * n_heads + h) * d;
        for (size_t k = 0; k < js.size(); ++k) {
          const float* v =
              orig_v_[seq].data() + (static_cast<size_t>(js[k]) * s.n_kv_heads + kvh) * d;
          for (int i = 0; i < d; ++i) o[i] += w[k] / sum * v[i];
        }
      }
    }
    return out;
  }

  const Shape& shape() const { return shape_; }
  int n_tokens() const { return static_cast<int>(positions_.size()); }
  int position(int t) const { return positions_[t]; }

 private:
  // Takes over other's batch and K/V values (rewriting them into this cache's format) and
  // its block tables.
  void CopyInputsFrom(const Scenario& other) {
    q_ = other.q_;
    token_seq_ = other.token_seq_;
    positions_ = other.positions_;
    tables_ = other.tables_;
    std::vector<float> k_in, v_in;
    std::vector<int32_t> slots;
    for (int q = 0; q < n_seqs_; ++q) {
      k_in.insert(k_in.end(), other.orig_k_[q].begin(), other.orig_k_[q].end());
      v_in.insert(v_in.end(), other.orig_v_[q].begin(), other.orig_v_[q].end());
      const int len =
          static_cast<int>(other.orig_k_[q].size() / (shape_.n_kv_heads * shape_.head_dim));
      for (int pos = 0; pos < len; ++pos) {
        slots.push_back(tables_[q * max_blocks_ + pos / shape_.block_size] * shape_.block_size +
                        pos % shape_.block_size);
      }
    }
    KvAppendParams ap;
    ap.k = k_in.data();
    ap.v = v_in.data();
    ap.slots = slots.data();
    ap.n_tokens = static_cast<int>(slots.size());
    ap.layer = 1;
    ap.cache = cache_;
    ref::KvAppendRef(ap);
  }

  Shape shape_;
  std::mt19937 rng_;
  int n_seqs_ = 0;
  int max_blocks_ = 0;
  std::vector<int32_t> tables_;  // [n_seqs, max_blocks]
  KvCacheView cache_;
  std::vector<uint8_t> k_, v_;
  std::vector<float> ksz_, vsz_;
  std::vector<std::vector<float>> orig_k_, orig_v_;  // per seq [len, n_kv_heads, head_dim]
  std::vector<int32_t> token_seq_, positions_;
  std::vector<float> q_;
};

using Param = std::tuple<OpsIsa, KvDType, int /*block_size*/, int /*group*/, int /*head_dim*/>;

class AttentionTest : public ::testing::TestWithParam<Param> {
 protected:
  AttentionTest() : guard_(std::get<0>(GetParam())) {}
  KvDType dtype() const { return std::get<1>(GetParam()); }
  Shape shape() const {
    Shape s;
    s.block_size = std::get<2>(GetParam());
    s.group = std::get<3>(GetParam());
    s.head_dim = std::get<4>(GetParam());
    return s;
  }
  OpsIsaGuard guard_;
};

// Against the reference reading the same cache: only float-vs-double arithmetic differs.
// V is in [-1, 1], so an absolute 1e-5 is 1e-5 relative to V's scale. Then: split ranges
// give bit-identical results.
TEST_P(AttentionTest, MatchesReferenceOnSameCache) {
  Scenario sc(shape(), dtype(), 7);
  std::vector<float> want(sc.OutSize()), got(sc.OutSize(), -7.f);
  ref::AttentionRef(sc.Params(want.data()));
  AttentionParams p = sc.Params(got.data());
  const int64_t items = AttentionItems(p);
  AttentionRange(p, 0, items);
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], 1e-5f) << "element " << i;
  }

  std::vector<float> split(sc.OutSize(), -7.f);
  p.out = split.data();
  // Cuts inside tokens (between kv heads of one token) and across tokens, empty pieces too.
  const int64_t cuts[] = {0, 1, 1, 2, items / 2 - 1, items / 2 + 2, items - 1, items};
  for (size_t i = 0; i + 1 < std::size(cuts); ++i) {
    AttentionRange(p, std::max<int64_t>(0, cuts[i]),
                   std::clamp<int64_t>(cuts[i + 1], cuts[i], items));
  }
  EXPECT_EQ(0, std::memcmp(split.data(), got.data(), sizeof(float) * got.size()));
}

// Against exact math on the unquantized K/V: F32 1e-5; F16 1e-3 (its relative rounding is
// 2^-11 on values <= 1 in magnitude, plus the score perturbation that causes); Int8 the
// bound derived per element in Int8Bound.
TEST_P(AttentionTest, MatchesExactMath) {
  Scenario sc(shape(), dtype(), 11);
  const std::vector<float> exact = sc.ExactReference();
  std::vector<float> got(sc.OutSize(), -7.f);
  AttentionParams p = sc.Params(got.data());
  AttentionRange(p, 0, AttentionItems(p));
  const int n_heads = p.n_heads, d = p.head_dim;
  double max_err = 0, sum_sq = 0, max_bound_ratio = 0;
  for (int t = 0; t < sc.n_tokens(); ++t) {
    for (int h = 0; h < n_heads; ++h) {
      for (int i = 0; i < d; ++i) {
        const size_t j = (static_cast<size_t>(t) * n_heads + h) * d + i;
        const double err = std::fabs(static_cast<double>(got[j]) - exact[j]);
        max_err = std::max(max_err, err);
        sum_sq += err * err;
        double tol = 1e-5;
        if (dtype() == KvDType::kF16) tol = 1e-3;
        if (dtype() == KvDType::kInt8) {
          const double bound = sc.Int8Bound(t, h, i);
          max_bound_ratio = std::max(max_bound_ratio, err / bound);
          tol = bound + 1e-5;
        }
        ASSERT_LE(err, tol) << "token " << t << " head " << h << " dim " << i;
      }
    }
  }
  if (dtype() == KvDType::kInt8) {
    // The figures the int8 KV cache costs (see kernels/README.md).
    std::printf(
        "int8 KV vs exact (block %d, group %d, head_dim %d): max abs err %.3g, "
        "rms err %.3g, max err/bound %.3f\n",
        shape().block_size, shape().group, d, max_err, std::sqrt(sum_sq / got.size()),
        max_bound_ratio);
  }
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  const auto& [isa, dtype, block, group, head_dim] = info.param;
  return std::string(OpsIsaName(isa)) + "_" + DTypeName(dtype) + "_b" + std::to_string(block) +
         "_g" + std::to_string(group) + "_d" + std::to_string(head_dim);
}

INSTANTIATE_TEST_SUITE_P(All, AttentionTest,
                         ::testing::Combine(::testing::ValuesIn(SupportedIsas()),
                                            ::testing::Values(KvDType::kF32, KvDType::kF16,
                                                              KvDType::kInt8),
                                            ::testing::Values(16, 32), ::testing::Values(1, 3, 4),
                                            ::testing::Values(64, 128)),
                         ParamName);

// Shapes off the main grid: head_dim 80 (vector path with a run-time row length), 40 (not a
// multiple of 16: the scalar fallback under every ISA), a GQA group of 12 (more query heads
// than one pass keeps, so the group is processed in two passes), and block size 8 (shorter
// than a score tile).
TEST(AttentionShapes, OddShapesMatchReference) {
  const Shape shapes[] = {{16, 2, 3, 80}, {16, 1, 2, 40}, {32, 1, 12, 64}, {8, 2, 4, 128}};
  for (OpsIsa isa : SupportedIsas()) {
    OpsIsaGuard guard(isa);
    for (const Shape& s : shapes) {
      for (KvDType dtype : {KvDType::kF32, KvDType::kF16, KvDType::kInt8}) {
        Scenario sc(s, dtype, 5);
        std::vector<float> want(sc.OutSize()), got(sc.OutSize(), -7.f);
        ref::AttentionRef(sc.Params(want.data()));
        AttentionParams p = sc.Params(got.data());
        AttentionRange(p, 0, AttentionItems(p));
        for (size_t i = 0; i < want.size(); ++i) {
          ASSERT_NEAR(got[i], want[i], 1e-5f)
              << OpsIsaName(isa) << " " << DTypeName(dtype) << " head_dim " << s.head_dim
              << " group " << s.group << " block " << s.block_size << " element " << i;
        }
      }
    }
  }
}

// A sharply peaked softmax whose maximum moves late in the context: the online rescaling
// must still give the reference's answer (scores here span about +-60).
TEST(AttentionShapes, PeakedScoresMatchReference) {
  for (OpsIsa isa : SupportedIsas()) {
    OpsIsaGuard guard(isa);
    Scenario sc({16, 2, 3, 64}, KvDType::kF32, 3);
    std::vector<float> want(sc.OutSize()), got(sc.OutSize(), -7.f);
    AttentionParams p = sc.Params(got.data());
    p.scale = 4.f;
    AttentionParams pr = p;
    pr.out = want.data();
    ref::AttentionRef(pr);
    AttentionRange(p, 0, AttentionItems(p));
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-5f) << OpsIsaName(isa) << " element " << i;
    }
  }
}

// Sliding windows against the reference, for every ISA and KV dtype, on the mixed batch
// (prefill chunks and decode tokens, contexts 1 to 200): windows of one position, shorter
// than a tile or a block, equal to them, not multiples of either (so windows start
// mid-block and mid-tile), around the AVX-512 softmax chunk (128), equal to the longest
// context (200) and larger. Block-table entries of blocks wholly before every window of a
// sequence are -1, so a read of one would fail the checks (or ASan): a window skips them.
// Split ranges give bit-identical results.
TEST(AttentionWindow, MatchesReference) {
  const Shape shapes[] = {
      {16, 2, 3, 64}, {32, 1, 4, 128}, {8, 2, 1, 64}, {16, 1, 2, 40}, {16, 2, 3, 80}};
  const int windows[] = {1, 3, 8, 16, 17, 20, 33, 41, 100, 128, 129, 150, 200, 201, 4096};
  for (const Shape& s : shapes) {
    for (KvDType dtype : {KvDType::kF32, KvDType::kF16, KvDType::kInt8}) {
      Scenario sc(s, dtype, 13);
      for (int window : windows) {
        const std::vector<int32_t> tables = sc.TablesWithoutBlocksBeforeWindows(window);
        std::vector<float> want(sc.OutSize());
        AttentionParams p = sc.Params(want.data());
        p.window = window;
        p.block_tables = tables.data();
        ref::AttentionRef(p);
        for (OpsIsa isa : SupportedIsas()) {
          OpsIsaGuard guard(isa);
          std::vector<float> got(sc.OutSize(), -7.f), split(sc.OutSize(), -7.f);
          p.out = got.data();
          const int64_t items = AttentionItems(p);
          AttentionRange(p, 0, items);
          for (size_t i = 0; i < want.size(); ++i) {
            ASSERT_NEAR(got[i], want[i], 1e-5f)
                << OpsIsaName(isa) << " " << DTypeName(dtype) << " window " << window
                << " head_dim " << s.head_dim << " group " << s.group << " block " << s.block_size
                << " element " << i;
          }
          p.out = split.data();
          const int64_t cuts[] = {0, 1, items / 3, items / 2 + 1, items - 1, items};
          for (size_t i = 0; i + 1 < std::size(cuts); ++i) AttentionRange(p, cuts[i], cuts[i + 1]);
          ASSERT_EQ(0, std::memcmp(split.data(), got.data(), sizeof(float) * got.size()))
              << OpsIsaName(isa) << " window " << window;
        }
      }
    }
  }
}

// Pins the semantics rather than agreement with the reference: on an F32 cache, the
// reference and every variant with window w give attention over exactly the positions
// [max(0, p - w + 1), p] (BruteForce, exact math written out in the test), within 1e-5;
// and where the context is longer than the window the result differs from full attention.
TEST(AttentionWindow, AttendsToExactlyTheLastWindowPositions) {
  const Shape s{16, 2, 3, 64};
  Scenario sc(s, KvDType::kF32, 17);
  {
    // The brute force itself agrees with the reference without a window.
    const std::vector<double> full = sc.BruteForce(0);
    std::vector<float> want(sc.OutSize());
    ref::AttentionRef(sc.Params(want.data()));
    for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(want[i], full[i], 1e-6) << i;
  }
  const std::vector<double> full = sc.BruteForce(0);
  const int n_heads = s.n_kv_heads * s.group;
  for (int window : {1, 2, 5, 16, 37, 130}) {
    const std::vector<double> exact = sc.BruteForce(window);
    // Tokens whose context is longer than the window must see a different result.
    double max_change = 0;
    for (int t = 0; t < sc.n_tokens(); ++t) {
      if (sc.position(t) + 1 <= window) continue;
      for (int i = 0; i < n_heads * s.head_dim; ++i) {
        const size_t j = static_cast<size_t>(t) * n_heads * s.head_dim + i;
        max_change = std::max(max_change, std::fabs(exact[j] - full[j]));
      }
    }
    EXPECT_GT(max_change, 1e-3) << "window " << window;

    std::vector<float> got(sc.OutSize(), -7.f);
    AttentionParams p = sc.Params(got.data());
    p.window = window;
    ref::AttentionRef(p);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], exact[i], 1e-5) << "reference, window " << window << " element " << i;
    }
    for (OpsIsa isa : SupportedIsas()) {
      OpsIsaGuard guard(isa);
      std::fill(got.begin(), got.end(), -7.f);
      AttentionRange(p, 0, AttentionItems(p));
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], exact[i], 1e-5)
            << OpsIsaName(isa) << " window " << window << " element " << i;
      }
    }
  }
}

// A window that covers every token's context takes the path of no window at all: the
// same bits as window == 0 (the longest context in the batch is 200 positions).
TEST(AttentionWindow, CoveringWindowIsBitIdenticalToNoWindow) {
  for (OpsIsa isa : SupportedIsas()) {
    OpsIsaGuard guard(isa);
    for (KvDType dtype : {KvDType::kF16, KvDType::kInt8}) {
      Scenario sc({16, 2, 4, 64}, dtype, 19);
      std::vector<float> none(sc.OutSize()), covering(sc.OutSize());
      AttentionParams p = sc.Params(none.data());
      AttentionRange(p, 0, AttentionItems(p));
      for (int window : {200, 201, 1 << 20}) {
        p.window = window;
        p.out = covering.data();
        AttentionRange(p, 0, AttentionItems(p));
        EXPECT_EQ(0, std::memcmp(none.data(), covering.data(), sizeof(float) * none.size()))
            << OpsIsaName(isa) << " " << DTypeName(dtype) << " window " << window;
      }
    }
  }
}

// Split-context attention: each unit's softmax state over its range, merged, equals the
// unsplit result (within 1e-5 on V in [-1, 1]: the sums are grouped differently) for every
// ISA and KV dtype, on the mixed batch with and without windows; from 1 split to more
// splits than 16-position pieces of the context (so that many ranges are empty), the units
// run in uneven pieces as threads would.
TEST(AttentionSplit, MergedSplitsMatchUnsplit) {
  const Shape shapes[] = {{16, 2, 3, 64}, {32, 1, 4, 128}, {16, 1, 2, 40}, {8, 2, 12, 64}};
  for (const Shape& s : shapes) {
    for (KvDType dtype : {KvDType::kF32, KvDType::kF16, KvDType::kInt8}) {
      Scenario sc(s, dtype, 23);
      for (int window : {0, 20, 100}) {
        const std::vector<int32_t> tables = sc.TablesWithoutBlocksBeforeWindows(window);
        for (OpsIsa isa : SupportedIsas()) {
          OpsIsaGuard guard(isa);
          std::vector<float> want(sc.OutSize(), -7.f);
          AttentionParams p = sc.Params(want.data());
          p.window = window;
          p.block_tables = tables.data();
          const int64_t items = AttentionItems(p);
          AttentionRange(p, 0, items);
          for (int n_splits : {1, 2, 3, 5, 8, 13}) {
            const int64_t units = items * n_splits;
            const int64_t heads = units * s.group;
            std::vector<float> acc(heads * s.head_dim, 9.f), mx(heads, 9.f), sum(heads, 9.f);
            AttentionSplits splits{n_splits, acc.data(), mx.data(), sum.data()};
            const int64_t cuts[] = {0, 1, units / 3, units / 2 + 1, units - 1, units};
            for (size_t i = 0; i + 1 < std::size(cuts); ++i) {
              AttentionSplitRange(p, splits, cuts[i], std::max(cuts[i], cuts[i + 1]));
            }
            std::vector<float> got(sc.OutSize(), -7.f);
            p.out = got.data();
            AttentionMergeRange(p, splits, 0, items / 2);
            AttentionMergeRange(p, splits, items / 2, items);
            p.out = want.data();
            for (size_t i = 0; i < want.size(); ++i) {
              ASSERT_NEAR(got[i], want[i], 1e-5f)
                  << OpsIsaName(isa) << " " << DTypeName(dtype) << " window " << window
                  << " splits " << n_splits << " head_dim " << s.head_dim << " group " << s.group
                  << " element " << i;
            }
          }
        }
      }
    }
  }
}

// The ranges of a token's splits cover its window in order: the first starts at the window's
// first position, the last ends after the token and is never empty, and every boundary in
// between is a multiple of 16.
TEST(AttentionSplit, BoundsCoverTheWindowInOrder) {
  AttentionParams p;
  for (int window : {0, 5, 100}) {
    p.window = window;
    for (int pos : {0, 1, 15, 16, 17, 100, 255, 256, 1000, 4095}) {
      for (int n_splits = 1; n_splits <= 20; ++n_splits) {
        int prev_hi = AttentionWindowStart(p, pos);
        for (int k = 0; k < n_splits; ++k) {
          int lo = -1, hi = -1;
          AttentionSplitBounds(p, pos, n_splits, k, &lo, &hi);
          ASSERT_EQ(lo, prev_hi) << "pos " << pos << " window " << window << " split " << k;
          ASSERT_LE(lo, hi);
          if (k + 1 < n_splits) {
            ASSERT_EQ(hi % 16 == 0 || hi == lo, true) << hi;
          } else {
            ASSERT_EQ(hi, pos + 1);
            ASSERT_LT(lo, hi) << "the last split is empty";
          }
          prev_hi = hi;
        }
      }
    }
  }
}

// Splits are used only where they pay: more than one thread, fewer than 4 items a thread,
// and a context of at least 2 * kMinSplitPositions; then units are a multiple of the
// threads, at least 4 a thread, each range at least kMinSplitPositions long.
TEST(AttentionSplit, SplitCountPolicy) {
  std::vector<int32_t> positions(64, 4095);
  AttentionParams p;
  p.positions = positions.data();
  p.n_heads = 9;
  p.n_kv_heads = 3;
  p.n_tokens = 1;
  EXPECT_EQ(AttentionSplitCount(p, 1), 1);
  EXPECT_EQ(AttentionSplitCount(p, 2), 4);  // 3 items: 12 units, 6 a thread
  EXPECT_EQ(AttentionSplitCount(p, 4), 8);  // 24 units
  p.n_tokens = 2;
  EXPECT_EQ(AttentionSplitCount(p, 2), 2);  // 6 items: 12 units
  p.n_tokens = 3;
  EXPECT_EQ(AttentionSplitCount(p, 2), 1);  // 9 items >= 4 a thread
  p.n_heads = 4;
  p.n_kv_heads = 1;  // Gemma 3 270M: one item a token
  p.n_tokens = 1;
  EXPECT_EQ(AttentionSplitCount(p, 2), 8);
  for (int pos : {0, 300, 511, 512, 700, 1024, 2047}) {
    positions[0] = pos;
    const int want = (pos + 1) / kMinSplitPositions >= 2 ? std::min(8, (pos + 1) / 256) : 1;
    EXPECT_EQ(AttentionSplitCount(p, 2), want) << pos;
  }
  positions[0] = 4095;
  p.window = 512;  // a window bounds the range to split
  EXPECT_EQ(AttentionSplitCount(p, 2), 2);
  // Where the context does not cap them (4096 positions allow 16 ranges): whole units per
  // thread, at least 4 each.
  p.window = 0;
  for (int threads = 2; threads <= 16; ++threads) {
    for (int tokens = 1; tokens <= 3; ++tokens) {
      p.n_tokens = tokens;
      const int splits = AttentionSplitCount(p, threads);
      ASSERT_LE(splits, 4096 / kMinSplitPositions);
      if (splits == 4096 / kMinSplitPositions) continue;
      EXPECT_EQ(tokens * splits % threads, 0) << threads << " threads, " << tokens << " tokens";
      EXPECT_GE(tokens * splits, 4 * threads) << threads << " threads, " << tokens << " tokens";
    }
  }
}

// The scratch CpuBackend reserves at set-up holds the states of every step the shape
// allows, and is no larger than the largest such step needs.
TEST(AttentionSplit, ScratchBoundCoversEveryStep) {
  const int head_dim = 64, max_tokens = 40, max_context = 4096;
  std::vector<int32_t> positions(max_tokens, max_context - 1);
  for (int threads : {2, 3, 4, 8}) {
    for (int group : {1, 3}) {
      int64_t largest = 0;
      for (int n_kv : {1, 2, 3, 8}) {
        const int64_t bound =
            AttentionSplitScratchFloats(threads, max_tokens, n_kv * group, head_dim, max_context);
        for (int tokens = 1; tokens <= max_tokens; ++tokens) {
          AttentionParams p;
          p.positions = positions.data();
          p.n_tokens = tokens;
          p.n_kv_heads = n_kv;
          p.n_heads = n_kv * group;
          const int splits = AttentionSplitCount(p, threads);
          if (splits <= 1) continue;
          const int64_t need = AttentionItems(p) * splits * group * (head_dim + 2);
          EXPECT_LE(need, bound) << threads << " threads, " << n_kv << " kv heads, " << tokens;
          if (n_kv == 1) largest = std::max(largest, need);
        }
      }
      EXPECT_EQ(largest,
                AttentionSplitScratchFloats(threads, max_tokens, group, head_dim, max_context));
    }
  }
  EXPECT_EQ(AttentionSplitScratchFloats(1, 40, 8, 64, 4096), 0);  // one thread: no splits
  EXPECT_EQ(AttentionSplitScratchFloats(2, 40, 8, 64, 511), 0);   // too short to split
}

// The mixed batch's tiles: runs of one sequence at consecutive positions, cut every
// kQueryTile tokens; decode tokens (and a run broken by a gap in positions) stand alone.
TEST(AttentionTiles, TilesFollowRunsOfConsecutivePositions) {
  Scenario sc({16, 2, 3, 64}, KvDType::kF32, 29);
  std::vector<float> out(sc.OutSize());
  const AttentionParams p = sc.Params(out.data());
  std::vector<int32_t> starts(p.n_tokens + 1, -1);
  const int n = AttentionQueryTiles(p, starts.data());
  // Tokens: seq 1 at 0; seq 0 at 40..69 (30); seq 2 at 126..129 and 199; seq 3 at 0..32 (33);
  // seq 4 at 16.
  const std::vector<int32_t> want = {0, 1, 17, 31, 35, 36, 52, 68, 69, 70};
  ASSERT_EQ(n + 1, static_cast<int>(want.size()));
  EXPECT_EQ(std::vector<int32_t>(starts.begin(), starts.begin() + n + 1), want);
  // Every unit order covers every tile once, alternating short and long ends.
  AttentionTiles tiles{starts.data(), n};
  std::vector<int> seen(n, 0);
  for (int i = 0; i < n; ++i) ++seen[AttentionTileOfUnit(tiles, i)];
  EXPECT_EQ(seen, std::vector<int>(n, 1));
  EXPECT_EQ(AttentionTileOfUnit(tiles, 1), n - 1);
}

// Query-tiled attention against per-token attention (and so the reference): every ISA (the
// tiled kernel under AVX-512, the per-token walk per tile otherwise), KV dtype and shape
// (head_dim 40: scalar code; 80: run-time row length; a group of 12: heads in passes; block
// 8: shorter than a K tile), windows (block entries before every window are -1), peaked
// scores, units run in uneven pieces as threads would. 1e-5 on V in [-1, 1].
TEST(AttentionTiles, MatchesPerTokenAttention) {
  const Shape shapes[] = {{16, 2, 3, 64}, {32, 1, 4, 128}, {16, 2, 12, 64}, {8, 2, 1, 64},
                          {16, 1, 2, 40}, {16, 2, 3, 80},  {16, 1, 4, 256}};
  for (const Shape& s : shapes) {
    for (KvDType dtype : {KvDType::kF32, KvDType::kF16, KvDType::kInt8}) {
      Scenario sc(s, dtype, 31);
      for (int window : {0, 1, 17, 100, -1}) {
        // -1: no window, with scores scaled to about +-60 (a sharply peaked softmax whose
        // maximum moves within chunks), on head_dim 64 as PeakedScoresMatchReference (longer
        // rows make the scores' own float error exceed 1e-5 there, for every kernel).
        const bool peaked = window < 0;
        if (peaked && s.head_dim != 64) continue;
        if (peaked) window = 0;
        const std::vector<int32_t> tables = sc.TablesWithoutBlocksBeforeWindows(window);
        std::vector<float> want(sc.OutSize(), -7.f);
        AttentionParams p = sc.Params(want.data());
        p.window = window;
        p.block_tables = tables.data();
        if (peaked) p.scale = 4.f;
        ref::AttentionRef(p);
        std::vector<int32_t> starts(p.n_tokens + 1);
        const AttentionTiles tiles{starts.data(), AttentionQueryTiles(p, starts.data())};
        const int64_t units = static_cast<int64_t>(tiles.n_tiles) * p.n_kv_heads;
        for (OpsIsa isa : SupportedIsas()) {
          OpsIsaGuard guard(isa);
          std::vector<float> got(sc.OutSize(), -7.f);
          p.out = got.data();
          const int64_t cuts[] = {0, 1, units / 3, units / 2 + 1, units - 1, units};
          for (size_t i = 0; i + 1 < std::size(cuts); ++i) {
            AttentionTileRange(p, tiles, cuts[i], std::max(cuts[i], cuts[i + 1]));
          }
          for (size_t i = 0; i < want.size(); ++i) {
            ASSERT_NEAR(got[i], want[i], 1e-5f)
                << OpsIsaName(isa) << " " << DTypeName(dtype) << " window " << window
                << " head_dim " << s.head_dim << " group " << s.group << " block " << s.block_size
                << " element " << i;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace tandem::kernels::cpu
