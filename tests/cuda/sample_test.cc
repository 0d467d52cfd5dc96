// kernels/cuda GreedySample and Sample run in the CUDA-on-CPU harness against kernels/ref's
// sampling reference (SampleRowRef, SampleProbsRef, LogSoftmaxRef in double, PhiloxUniform), for
// f32, f16 and bf16 logits.
// GreedySample: ragged vocabularies (1, not multiples of a warp or of the 256-thread block),
// 49152 and 262144 (Gemma 3's), rows with exact ties placed in different threads and warps, and
// rows with NaN, -inf and +inf as the reference defines them.
// Sample: the device Philox equals PhiloxUniform bit for bit; random rows (vocabularies 1 to
// 3001 and one of 49152) with mixed temperature / top-k / top-p / min-p, each row's own seed and
// counter: every id lies in the reference's allowed set (SampleProbsRef > 0, with top_p raised
// by 1e-5 relative because the kernel forms p in f32: a top-p boundary within rounding of the
// mass may fall either side, as for the CPU op), equals SampleRowRef's draw for the same u on all
// but a few rows (the walk sums in f32; the count is printed and at most 2 per test are allowed),
// greedy and degenerate rows (NaN, -inf, +inf) exactly; two runs give the same ids; a run of
// tied logits across the top-k and top-p cuts keeps exactly its lowest ids; one row per filter
// drawn at 12 counters matches the reference's draws.
//
// Ids: equal exactly. The kernel only compares the logits, which widen to f32 exactly, as the
// reference's floats do; ties (common in bf16) must go to the lower id.
// Logprobs (f32, computed from a finite maximum m as -logf(sum_i expf(l_i - m))), first order in
// u = 2^-24: l_i - m rounds with relative error u, which moves expf's result by |l_i - m| u <=
// R u relative (R = m - the row's smallest finite logit); expf itself is within 2 ulp (CUDA's
// bound; glibc's is 1), <= 4u; each thread adds its c = ceil(vocab / threads) terms in order,
// <= c u relative for positive terms, and the warp butterfly (5 adds) and the sum over <= 8 warps
// (8 adds) 13u more. So the sum is within (4 + R + c + 13) u relative, which is the absolute
// error it gives log(sum); logf adds 1 ulp of the result, <= 2^-23 |logprob|; Sample's sampled
// ids also round l_id - m, 2^-24 |l_id - m| (their logprob is (l_id - m) - log(sum)). Rows without
// a finite maximum give exactly 0 or -inf, compared exactly. The largest fraction of the bound used
// is printed.
#include "kernels/cuda/sample.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/sample.cuh"
#include "kernels/ref/sample_ref.h"
#include "tests/cuda/cuda_test_util.h"

namespace tandem::kernels::cuda {
namespace {

using namespace testing;  // NOLINT(build/namespaces): the test helpers

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr int kThreads = 256;  // GreedySample's block size for vocab >= 256

// The derived logprob bound for one row (see the header).
double LogprobBound(const float* row, int vocab, double want) {
  float max = -kInf, min = kInf;
  for (int i = 0; i < vocab; ++i) {
    if (std::isfinite(row[i])) {
      max = std::max(max, row[i]);
      min = std::min(min, row[i]);
    }
  }
  const double range = static_cast<double>(max) - min;
  const int threads = std::min(kThreads, (vocab + 31) / 32 * 32);
  const double per_thread = (vocab + threads - 1) / threads;
  return (4 + range + per_thread + 13) * 0x1p-24 + 0x1p-23 * std::fabs(want) +
         0x1p-24 * range;  // l_id - m, for a sampled id
}

// Runs GreedySample on `logits` [rows, vocab] (already of dtype T, widened in `values`) and
// checks every row against the reference; returns the largest fraction of the logprob bound.
template <typename T>
double CheckRows(const std::vector<float>& values, int rows, int vocab) {
  const std::vector<T> logits = ToActs<T>(values);
  const std::vector<float> wide = FromActs(logits);  // what the kernel reads
  std::vector<int32_t> ids(rows, -1), ids_only(rows, -1);
  std::vector<float> logprobs(rows, 7.f);
  DeviceCopy<T> dlogits(logits);
  DeviceCopy<int32_t> dids(ids), dids_only(ids_only);
  DeviceCopy<float> dlogprobs(logprobs);
  GreedySampleParams p;
  p.logits = dlogits.get();
  p.rows = rows;
  p.vocab = vocab;
  p.dtype = ActTraits<T>::kDType;
  p.out_ids = dids.get();
  p.out_logprobs = dlogprobs.get();
  GreedySample(p, Stream{});
  p.out_ids = dids_only.get();
  p.out_logprobs = nullptr;
  GreedySample(p, Stream{});
  dids.ToHost(ids);
  dids_only.ToHost(ids_only);
  dlogprobs.ToHost(logprobs);

  double worst = 0;
  ref::SampleRowParams greedy;
  greedy.temperature = 0.f;
  for (int r = 0; r < rows; ++r) {
    const float* row = wide.data() + static_cast<int64_t>(r) * vocab;
    const int32_t want_id = ref::SampleRowRef(row, vocab, greedy, 0.5f);
    EXPECT_EQ(ids[r], want_id) << "row " << r << " vocab " << vocab;
    EXPECT_EQ(ids_only[r], want_id) << "row " << r << " vocab " << vocab << " (no logprobs)";
    if (ids[r] != want_id) continue;
    const double want = ref::LogSoftmaxRef(row, vocab, want_id);
    float max = -kInf;  // NaN as -inf
    for (int i = 0; i < vocab; ++i) max = std::isnan(row[i]) ? max : std::max(max, row[i]);
    if (!std::isfinite(max)) {  // exactly 0 or -inf
      EXPECT_EQ(logprobs[r], want) << "row " << r << " vocab " << vocab;
      continue;
    }
    if (!std::isfinite(want) || !std::isfinite(logprobs[r])) {
      EXPECT_EQ(logprobs[r], want) << "row " << r << " vocab " << vocab;
      continue;
    }
    const double bound = LogprobBound(row, vocab, want);
    EXPECT_NEAR(logprobs[r], want, bound) << "row " << r << " vocab " << vocab;
    worst = std::max(worst, std::fabs(logprobs[r] - want) / bound);
  }
  return worst;
}

template <typename T>
class GreedySampleTest : public ::testing::Test {};
TYPED_TEST_SUITE(GreedySampleTest, ActTypes);

// Random rows; in each, the maximum copied to a later id in another thread's slice, and (when the
// row is long enough) to another warp's and to an id past the first grid stride.
TYPED_TEST(GreedySampleTest, RandomRowsWithTies) {
  using T = TypeParam;
  std::mt19937 rng(21);
  double worst = 0;
  for (auto [rows, vocab] : std::vector<std::pair<int, int>>{
           {1, 1}, {3, 2}, {4, 31}, {3, 257}, {2, 3001}, {3, 49152}, {1, 262144}}) {
    std::vector<float> values = RandomFloats(static_cast<size_t>(rows) * vocab, -10.f, 10.f, rng);
    std::uniform_int_distribution<int> pick(0, vocab - 1);
    for (int r = 0; r < rows; ++r) {
      float* row = values.data() + static_cast<int64_t>(r) * vocab;
      const int top = pick(rng);
      row[top] = 12.f;  // exact in every dtype
      for (int later : {top + 1, top + 33, top + kThreads + 5}) {
        if (r % 2 == 0 && later < vocab) row[later] = 12.f;
      }
    }
    worst = std::max(worst, CheckRows<T>(values, rows, vocab));
  }
  std::printf("GreedySample logprobs: largest error %.1f%% of the bound\n", 100 * worst);
}

// The reference's special rows: NaN reads as -inf, no finite maximum gives id 0 or the first
// +inf, with logprob 0 when the id's logit is the maximum and -inf otherwise.
TYPED_TEST(GreedySampleTest, NanAndInfiniteRows) {
  using T = TypeParam;
  std::mt19937 rng(22);
  const int vocab = 300;
  std::vector<std::vector<float>> rows;
  auto fill = [&](float v) { return std::vector<float>(vocab, v); };
  rows.push_back(fill(kNan));   // all NaN: id 0, logprob -inf
  rows.push_back(fill(-kInf));  // all -inf: id 0, logprob 0
  rows.push_back(fill(-kInf));  // NaN at 0, rest -inf: id 0, logprob -inf
  rows.back()[0] = kNan;
  rows.push_back(fill(kNan));  // -inf at 0 among NaN: id 0, logprob 0
  rows.back()[0] = -kInf;
  std::vector<float> mixed = RandomFloats(vocab, -5.f, 5.f, rng);
  for (int i = 0; i < vocab; i += 7) mixed[i] = kNan;  // NaN everywhere, never the argmax
  mixed[0] = kNan;
  mixed[150] = 9.f;
  mixed[290] = 9.f;
  rows.push_back(mixed);
  std::vector<float> with_inf = mixed;  // the first +inf, whatever comes before or after
  with_inf[40] = kInf;
  with_inf[41] = kInf;
  with_inf[299] = kInf;
  with_inf[3] = -kInf;
  rows.push_back(with_inf);
  std::vector<float> neg_inf = RandomFloats(vocab, -5.f, 5.f, rng);  // -inf entries are skipped
  for (int i = 1; i < vocab; i += 3) neg_inf[i] = -kInf;
  rows.push_back(neg_inf);
  std::vector<float> values;
  for (const auto& r : rows) values.insert(values.end(), r.begin(), r.end());
  CheckRows<T>(values, static_cast<int>(rows.size()), vocab);
}

TEST(SamplePhiloxTest, MatchesReference) {
  std::mt19937_64 rng(23);
  for (int i = 0; i < 2000; ++i) {
    const uint64_t seed = i < 4 ? static_cast<uint64_t>(i) * 0x5555555555555555u : rng();
    const uint64_t counter = i % 3 == 0 ? uint64_t(i) : rng();
    ASSERT_EQ(PhiloxUniformDevice(seed, counter), ref::PhiloxUniform(seed, counter))
        << seed << " " << counter;
  }
}

// Rows of a Sample call, each with its own parameters, seed and counter.
struct SampleBatch {
  int rows = 0;
  int vocab = 0;
  std::vector<float> logits;  // [rows, vocab], already of the activation dtype
  std::vector<float> temperature, top_p, min_p;
  std::vector<int32_t> top_k;
  std::vector<uint64_t> seed, counter;

  void Add(const std::vector<float>& row, float t, int32_t k, float p, float mp, uint64_t s,
           uint64_t c) {
    logits.insert(logits.end(), row.begin(), row.end());
    temperature.push_back(t);
    top_k.push_back(k);
    top_p.push_back(p);
    min_p.push_back(mp);
    seed.push_back(s);
    counter.push_back(c);
    ++rows;
  }
};

// Runs Sample on the batch (with and without logprobs) and checks every row; returns the
// rows whose id differs from SampleRowRef's for the same u.
template <typename T>
int CheckSample(const SampleBatch& b) {
  const std::vector<T> logits = ToActs<T>(b.logits);
  const std::vector<float> wide = FromActs(logits);
  std::vector<int32_t> ids(b.rows, -1), ids_only(b.rows, -1);
  std::vector<float> logprobs(b.rows, 7.f);
  DeviceCopy<T> dlogits(logits);
  DeviceCopy<float> dt(b.temperature), dp(b.top_p), dmp(b.min_p), dlogprobs(logprobs);
  DeviceCopy<int32_t> dk(b.top_k), dids(ids), dids_only(ids_only);
  DeviceCopy<uint64_t> dseed(b.seed), dcounter(b.counter);
  SampleParams p;
  p.logits = reinterpret_cast<const float*>(dlogits.get());  // elements of T, as backend.h says
  p.temperature = dt.get();
  p.top_k = dk.get();
  p.top_p = dp.get();
  p.min_p = dmp.get();
  p.seed = dseed.get();
  p.counter = dcounter.get();
  p.rows = b.rows;
  p.vocab = b.vocab;
  p.out_ids = dids.get();
  p.out_logprobs = dlogprobs.get();
  Sample(p, ActTraits<T>::kDType, Stream{});
  p.out_ids = dids_only.get();
  p.out_logprobs = nullptr;
  Sample(p, ActTraits<T>::kDType, Stream{});
  dids.ToHost(ids);
  dids_only.ToHost(ids_only);
  dlogprobs.ToHost(logprobs);

  int differ = 0;
  std::vector<double> probs(b.vocab);
  for (int r = 0; r < b.rows; ++r) {
    const float* row = wide.data() + static_cast<int64_t>(r) * b.vocab;
    const ref::SampleRowParams rp{b.temperature[r], b.top_k[r], b.top_p[r], b.min_p[r]};
    const float u = ref::PhiloxUniform(b.seed[r], b.counter[r]);
    const int32_t want = ref::SampleRowRef(row, b.vocab, rp, u);
    const std::string where = "row " + std::to_string(r) + " vocab " + std::to_string(b.vocab) +
                              " t " + std::to_string(rp.temperature) + " k " +
                              std::to_string(rp.top_k) + " p " + std::to_string(rp.top_p) +
                              " min_p " + std::to_string(rp.min_p);
    // The second run (without logprobs) takes the same path to the id: determinism.
    EXPECT_EQ(ids_only[r], ids[r]) << where << " (second run, without logprobs)";
    if (ids[r] < 0 || ids[r] >= b.vocab) {
      ADD_FAILURE() << where << " id " << ids[r];
      continue;
    }
    ref::SampleRowParams loose = rp;
    loose.top_p = std::min(1.0f, rp.top_p * (1 + 1e-5f));
    ref::SampleProbsRef(row, b.vocab, loose, probs.data());
    EXPECT_GT(probs[ids[r]], 0) << where << " id " << ids[r] << " want " << want;
    float max = -kInf;
    for (int i = 0; i < b.vocab; ++i) max = std::isnan(row[i]) ? max : std::max(max, row[i]);
    if (rp.temperature == 0.f || !std::isfinite(max)) {
      EXPECT_EQ(ids[r], want) << where << " (greedy or degenerate)";
    } else if (ids[r] != want) {
      ++differ;
    }
    const double lp = ref::LogSoftmaxRef(row, b.vocab, ids[r]);
    if (!std::isfinite(max) || !std::isfinite(lp)) {
      EXPECT_EQ(logprobs[r], lp) << where;
    } else {
      EXPECT_NEAR(logprobs[r], lp, LogprobBound(row, b.vocab, lp)) << where;
    }
  }
  return differ;
}

template <typename T>
class SampleTest : public ::testing::Test {};
TYPED_TEST_SUITE(SampleTest, ActTypes);

TYPED_TEST(SampleTest, RandomRowsMatchReference) {
  using T = TypeParam;
  std::mt19937_64 rng(24);
  const float temps[] = {0.f, 0.5f, 1.f, 1.7f};
  const int32_t ks[] = {0, 1, 3, 40, 1 << 20};
  const float ps[] = {1.f, 0.95f, 0.6f, 0.1f};
  const float min_ps[] = {0.f, 0.02f, 0.3f};
  int differ = 0, rows = 0;
  for (auto [n_rows, vocab] :
       std::vector<std::pair<int, int>>{{4, 1}, {6, 7}, {6, 64}, {3, 300}, {2, 3001}, {1, 49152}}) {
    SampleBatch b;
    b.vocab = vocab;
    std::mt19937 frng(static_cast<uint32_t>(rng()));
    for (int r = 0; r < n_rows; ++r) {
      std::vector<float> row = RandomFloats(vocab, -8.f, 8.f, frng);
      if (r % 4 == 1) {  // ties with the maximum and around the cuts
        for (int i = 0; i + 5 < vocab; i += 5) row[i + 5] = row[i];
      }
      b.Add(row, temps[rng() % 4], ks[rng() % 5], ps[rng() % 4], min_ps[rng() % 3], rng(), rng());
    }
    differ += CheckSample<T>(b);
    rows += n_rows;
  }
  std::printf("Sample: %d of %d rows drew a different id than the reference for the same u\n",
              differ, rows);
  EXPECT_LE(differ, 2);
}

// The special rows and the ties below are the same in every dtype (the values are exact in f16
// and bf16), and each row costs the harness dozens of block barriers: f32 only.
TEST(SampleSpecialRowsTest, NanAndInfiniteRows) {
  using T = float;
  const int vocab = 300;
  std::mt19937 rng(25);
  SampleBatch b;
  b.vocab = vocab;
  std::vector<float> mixed = RandomFloats(vocab, -5.f, 5.f, rng);
  for (int i = 0; i < vocab; i += 7) mixed[i] = kNan;
  std::vector<float> with_inf = mixed;
  with_inf[40] = kInf;
  with_inf[41] = kInf;
  std::vector<float> neg_inf = RandomFloats(vocab, -5.f, 5.f, rng);
  for (int i = 1; i < vocab; i += 3) neg_inf[i] = -kInf;
  for (uint64_t c = 0; c < 1; ++c) {
    b.Add(std::vector<float>(vocab, kNan), 1.f, 0, 1.f, 0.f, 1, c);
    b.Add(std::vector<float>(vocab, -kInf), 0.7f, 5, 0.9f, 0.f, 2, c);
    b.Add(mixed, 1.f, 0, 1.f, 0.f, 3, c);  // NaN is never drawn
    b.Add(mixed, 2.f, 10, 0.8f, 0.05f, 4, c);
    b.Add(with_inf, 1.f, 0, 1.f, 0.f, 5, c);      // the first +inf takes all the mass
    b.Add(neg_inf, 1.5f, 250, 0.99f, 0.f, 6, c);  // top-k past the finite logits
  }
  EXPECT_LE(CheckSample<T>(b), 2);
}

// A run of tied maxima: top-k and top-p cut inside it and keep its lowest ids.
TEST(SampleSpecialRowsTest, TiesAtTheCutKeepTheLowestIds) {
  using T = float;
  const int vocab = 1000;
  std::mt19937 rng(26);
  std::vector<float> row = RandomFloats(vocab, -6.f, 0.f, rng);
  std::vector<int> tied;
  for (int i = 3; i < vocab; i += 37) {
    row[i] = 2.f;
    tied.push_back(i);
  }
  SampleBatch b;
  b.vocab = vocab;
  for (uint64_t c = 0; c < 4; ++c) {
    b.Add(row, 1.f, 5, 1.f, 0.f, 7, c);    // the 5 lowest tied ids
    b.Add(row, 0.3f, 0, 0.5f, 0.f, 8, c);  // about half of the run, from its lowest id
  }
  EXPECT_LE(CheckSample<T>(b), 2);
}

// One short row per filter, drawn at many counters: a cut one token off changes some draws.
TEST(SampleSpecialRowsTest, FiltersOverManyDraws) {
  std::mt19937 rng(27);
  const std::vector<float> row = RandomFloats(40, -4.f, 4.f, rng);
  SampleBatch b;
  b.vocab = 40;
  for (uint64_t c = 0; c < 12; ++c) {
    b.Add(row, 1.f, 5, 1.f, 0.f, 9, c);
    b.Add(row, 1.f, 0, 0.6f, 0.f, 10, c);
    b.Add(row, 0.8f, 10, 0.9f, 0.f, 11, c);
    b.Add(row, 1.2f, 0, 1.f, 0.1f, 12, c);
  }
  EXPECT_LE(CheckSample<float>(b), 2);
}

}  // namespace
}  // namespace tandem::kernels::cuda
