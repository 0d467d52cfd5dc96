// Tests of Backend::Sample on the CPU (kernels/cpu/sample.h) against its definition
// (kernels/ref/sample_ref.h): Philox's published answers, greedy ties, the filters' allowed sets,
// the drawn distribution, logprobs, thread splits and NaN logits as model::Sampler reads them.
#include "kernels/cpu/sample.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/ref/sample_ref.h"
#include "model/sampler.h"

namespace tandem::kernels::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A CPU backend readied for rows of `vocab` logits the way a model readies it: by packing a
// weight with vocab rows (the output projection).
std::unique_ptr<Backend> SamplingBackend(int threads, int vocab) {
  CpuBackendConfig config;
  config.threads = threads;
  auto backend = CreateCpuBackend(config);
  EXPECT_TRUE(backend.ok()) << backend.status();
  std::vector<float> w(vocab, 0.25f);
  auto weight = (*backend)->PackWeight(WeightDesc{DType::kF32, vocab, 1, w.data(), "output"});
  EXPECT_TRUE(weight.ok()) << weight.status();
  return std::move(*backend);
}

// A batch of rows with their per-row parameters, as host arrays (the CPU's device memory).
struct Batch {
  Batch(int n_rows, int n_vocab)
      : rows(n_rows),
        vocab(n_vocab),
        logits(static_cast<size_t>(n_rows) * n_vocab),
        temperature(n_rows, 1.0f),
        top_k(n_rows, 0),
        top_p(n_rows, 1.0f),
        min_p(n_rows, 0.0f),
        seed(n_rows, 0),
        counter(n_rows, 0),
        ids(n_rows, -1),
        logprobs(n_rows, 0.0f) {}

  SampleParams Params(bool want_logprobs) {
    return SampleParams{logits.data(),
                        temperature.data(),
                        top_k.data(),
                        top_p.data(),
                        min_p.data(),
                        seed.data(),
                        counter.data(),
                        ids.data(),
                        want_logprobs ? logprobs.data() : nullptr,
                        rows,
                        vocab};
  }
  float* Row(int r) { return logits.data() + static_cast<size_t>(r) * vocab; }
  ref::SampleRowParams RowParams(int r) const {
    return {temperature[r], top_k[r], top_p[r], min_p[r]};
  }
  float U(int r) const { return ref::PhiloxUniform(seed[r], counter[r]); }

  int rows;
  int vocab;
  std::vector<float> logits;  // [rows, vocab]
  std::vector<float> temperature;
  std::vector<int32_t> top_k;
  std::vector<float> top_p;
  std::vector<float> min_p;
  std::vector<uint64_t> seed;
  std::vector<uint64_t> counter;
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
};

// Random logits: normal with a random spread, sometimes rounded to a grid (ties), sometimes
// with -inf and NaN entries.
void FillRandomRow(float* row, int vocab, std::mt19937& rng) {
  const float spread = std::array<float, 4>{0.5f, 2.0f, 5.0f, 12.0f}[rng() % 4];
  std::normal_distribution<float> normal(0.0f, spread);
  const bool grid = rng() % 3 == 0;
  const bool holes = rng() % 4 == 0;
  for (int i = 0; i < vocab; ++i) {
    float v = normal(rng);
    if (grid) v = std::round(v * 2.0f) / 2.0f;
    if (holes && rng() % 10 == 0) v = rng() % 2 ? -kInf : kNaN;
    row[i] = v;
  }
}

void RandomRowParams(Batch& b, int r, std::mt19937& rng) {
  b.temperature[r] = std::array<float, 5>{0.3f, 0.7f, 1.0f, 1.5f, 3.0f}[rng() % 5];
  b.top_k[r] = std::array<int32_t, 7>{0, 0, 1, 5, 40, 300, b.vocab + 1}[rng() % 7];
  b.top_p[r] = std::array<float, 5>{1.0f, 1.0f, 0.95f, 0.5f, 0.1f}[rng() % 5];
  b.min_p[r] = std::array<float, 4>{0.0f, 0.0f, 0.05f, 0.3f}[rng() % 4];
  b.seed[r] = (uint64_t{rng()} << 32) | rng();
  b.counter[r] = rng() % 100000;
}

// Random123's published known-answer vectors for philox4x32-10 (its tests/kat_vectors: the
// zero vector, the all-ones vector, and counter/key from the hex digits of pi), also repeated
// in TensorFlow's and JAX's Philox tests.
TEST(SampleTest, PhiloxKnownAnswers) {
  static_assert(ref::Philox4x32_10({0, 0, 0, 0}, {0, 0}) ==
                std::array<uint32_t, 4>{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8});
  EXPECT_EQ(ref::Philox4x32_10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
                               {0xffffffff, 0xffffffff}),
            (std::array<uint32_t, 4>{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(ref::Philox4x32_10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
                               {0xa4093822, 0x299f31d0}),
            (std::array<uint32_t, 4>{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(SampleTest, PhiloxUniformIsTheFirstWordsTop24Bits) {
  EXPECT_EQ(ref::PhiloxUniform(0, 0), static_cast<float>(0x6627e8d5u >> 8) * 0x1.0p-24f);
  // Seed and counter map to key and counter words low half first.
  const uint64_t seed = 0x299f31d0a4093822ull, counter = 0x85a308d3243f6a88ull;
  const auto words = ref::Philox4x32_10({0x243f6a88, 0x85a308d3, 0, 0}, {0xa4093822, 0x299f31d0});
  EXPECT_EQ(ref::PhiloxUniform(seed, counter), static_cast<float>(words[0] >> 8) * 0x1.0p-24f);
  double sum = 0.0;
  constexpr int kN = 100000;
  for (int c = 0; c < kN; ++c) {
    const float u = ref::PhiloxUniform(42, c);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
  }
  // The mean of 1e5 uniforms has standard deviation 0.29 / sqrt(1e5) = 9e-4.
  EXPECT_NEAR(sum / kN, 0.5, 0.005);
}

TEST(SampleTest, DifferentCountersAndSeedsGiveDifferentStreams) {
  std::set<std::array<uint32_t, 4>> blocks;
  for (uint32_t c = 0; c < 10000; ++c) {
    blocks.insert(ref::Philox4x32_10({c, 0, 0, 0}, {7, 0}));
    blocks.insert(ref::Philox4x32_10({c, 0, 0, 0}, {8, 0}));
    blocks.insert(ref::Philox4x32_10({c, 1, 0, 0}, {7, 0}));  // counter's high word
  }
  EXPECT_EQ(blocks.size(), 30000u);

  // A flat row over 1000 tokens: the draws follow the counter, the same (seed, counter) gives
  // the same id, and another seed gives another sequence.
  constexpr int kVocab = 1000, kRows = 200;
  auto backend = SamplingBackend(1, kVocab);
  Batch a(kRows, kVocab), b(kRows, kVocab);
  for (int r = 0; r < kRows; ++r) {
    a.seed[r] = 1234;
    b.seed[r] = 1235;
    a.counter[r] = b.counter[r] = r;
  }
  backend->Sample(a.Params(false), backend->DefaultStream());
  backend->Sample(b.Params(false), backend->DefaultStream());
  const std::vector<int32_t> first = a.ids;
  backend->Sample(a.Params(false), backend->DefaultStream());
  EXPECT_EQ(a.ids, first);
  int differ = 0;
  for (int r = 0; r < kRows; ++r) {
    EXPECT_EQ(a.ids[r], ref::SampleRowRef(a.Row(r), kVocab, a.RowParams(r), a.U(r)));
    differ += a.ids[r] != b.ids[r];
  }
  EXPECT_GT(std::set<int32_t>(a.ids.begin(), a.ids.end()).size(), 150u);  // ~181 expected
  EXPECT_GT(differ, 190);                                                 // ~199.8 expected
}

TEST(SampleTest, GreedyIsArgmaxWithTiesToTheLowerId) {
  constexpr int kVocab = 1000, kRows = 64;
  auto backend = SamplingBackend(2, kVocab);
  std::mt19937 rng(11);
  Batch b(kRows, kVocab);
  std::vector<int32_t> first_max(kRows);
  for (int r = 0; r < kRows; ++r) {
    std::uniform_real_distribution<float> dist(-5.0f, 5.0f);
    for (int i = 0; i < kVocab; ++i) b.Row(r)[i] = dist(rng);
    // Two or three copies of a new maximum at random places.
    const int copies = 2 + r % 2;
    first_max[r] = kVocab;
    for (int c = 0; c < copies; ++c) {
      const int at = static_cast<int>(rng() % kVocab);
      b.Row(r)[at] = 6.0f;
      first_max[r] = std::min(first_max[r], at);
    }
    RandomRowParams(b, r, rng);
    b.temperature[r] = 0.0f;  // greedy whatever the filters say
  }
  backend->Sample(b.Params(true), backend->DefaultStream());
  for (int r = 0; r < kRows; ++r) {
    EXPECT_EQ(b.ids[r], first_max[r]) << "row " << r;
    model::SamplingParams sp;
    sp.temperature = 0.0f;
    model::Sampler sampler(sp, kVocab, -1);
    EXPECT_EQ(b.ids[r], sampler.Sample(b.Row(r), kVocab).token);
    EXPECT_NEAR(b.logprobs[r], ref::LogSoftmaxRef(b.Row(r), kVocab, b.ids[r]), 1e-5);
  }
}

// The sampled id always lies in the reference's allowed set. The CPU forms probabilities in
// float (~2e-7 relative), so the set it is checked against is the reference's with top_p
// raised and min_p lowered by 1e-5 relative (top-k's and min-p's own decisions are exact on
// both sides); and almost every id equals the reference's own draw for the same u.
TEST(SampleTest, FiltersKeepTheReferencesAllowedSet) {
  std::mt19937 rng(2026);
  for (int vocab : {1, 2, 7, 64, 300, 3000}) {
    constexpr int kRows = 300;
    auto backend = SamplingBackend(2, vocab);
    Batch b(kRows, vocab);
    for (int r = 0; r < kRows; ++r) {
      FillRandomRow(b.Row(r), vocab, rng);
      RandomRowParams(b, r, rng);
    }
    backend->Sample(b.Params(false), backend->DefaultStream());
    int same = 0;
    std::vector<double> probs(vocab);
    for (int r = 0; r < kRows; ++r) {
      ref::SampleRowParams loose = b.RowParams(r);
      loose.top_p = std::min(1.0f, loose.top_p * (1.0f + 1e-5f));
      loose.min_p = loose.min_p * (1.0f - 1e-5f);
      ref::SampleProbsRef(b.Row(r), vocab, loose, probs.data());
      ASSERT_GE(b.ids[r], 0);
      ASSERT_LT(b.ids[r], vocab);
      EXPECT_GT(probs[b.ids[r]], 0.0)
          << "vocab " << vocab << " row " << r << " id " << b.ids[r] << " t " << b.temperature[r]
          << " k " << b.top_k[r] << " p " << b.top_p[r] << " min_p " << b.min_p[r];
      same += b.ids[r] == ref::SampleRowRef(b.Row(r), vocab, b.RowParams(r), b.U(r));
    }
    EXPECT_GE(same, kRows - 3) << "vocab " << vocab;
  }
}

// model::Sampler draws host rows by the same definition (Philox at the sequence's step, the
// survivors walked in ascending id order): for a row without penalties, the host and the op
// pick the same token but where their float masses differ in the last bits at a boundary.
TEST(SampleTest, HostSamplerDrawsTheOpsTokens) {
  std::mt19937 rng(77);
  for (int vocab : {2, 7, 300, 3000, 49152}) {
    const int rows = vocab > 10000 ? 40 : 300;
    auto backend = SamplingBackend(2, vocab);
    Batch b(rows, vocab);
    for (int r = 0; r < rows; ++r) {
      FillRandomRow(b.Row(r), vocab, rng);
      RandomRowParams(b, r, rng);
      b.counter[r] %= 64;
    }
    backend->Sample(b.Params(false), backend->DefaultStream());
    int same = 0;
    for (int r = 0; r < rows; ++r) {
      model::SamplingParams sp;
      sp.temperature = b.temperature[r];
      sp.top_k = b.top_k[r];
      sp.top_p = b.top_p[r];
      sp.min_p = b.min_p[r];
      sp.seed = b.seed[r];
      sp.has_seed = true;
      model::Sampler sampler(sp, vocab, -1);
      for (uint64_t i = 0; i < b.counter[r]; ++i) sampler.Accept(0);
      same += sampler.Sample(b.Row(r), vocab).token == b.ids[r];
    }
    EXPECT_GE(same, rows - 3) << "vocab " << vocab;
  }
}

// Top-p whose boundary falls inside a long run of equal logits, far below the maximum (past the
// CPU's 8-temperature shortcut): the nucleus takes the run's lowest ids. One token at 10 and
// 2999 at 0, temperature 1, top_p 0.99: the nucleus needs ceil((0.99 (1 + 2999 e^-10) - 1) /
// e^-10) of the tied tokens, i.e. ids 0..n (id 0 is the maximum's place here, so 1..n).
TEST(SampleTest, TopPBoundaryInsideTiesKeepsTheLowerIds) {
  constexpr int kVocab = 3000, kRows = 2000;
  auto backend = SamplingBackend(2, kVocab);
  Batch b(kRows, kVocab);
  for (int r = 0; r < kRows; ++r) {
    b.Row(r)[0] = 10.0f;
    b.top_p[r] = 0.99f;
    b.seed[r] = 3;
    b.counter[r] = r;
  }
  backend->Sample(b.Params(false), backend->DefaultStream());
  std::vector<double> probs(kVocab);
  ref::SampleProbsRef(b.Row(0), kVocab, b.RowParams(0), probs.data());
  int last_allowed = 0;
  for (int i = 0; i < kVocab; ++i) {
    if (probs[i] > 0.0) last_allowed = i;
  }
  const double tied = std::exp(-10.0);
  const double need = (0.99f * (1.0 + 2999 * tied) - 1.0) / tied;
  EXPECT_EQ(last_allowed, static_cast<int>(std::ceil(need)));
  for (int r = 0; r < kRows; ++r) {
    EXPECT_LE(b.ids[r], last_allowed);
    EXPECT_EQ(b.ids[r], ref::SampleRowRef(b.Row(r), kVocab, b.RowParams(r), b.U(r)));
  }
}

// 200k draws (counters 0..199999, seed 0x5eed) of one 8-token row, per filter setting: tokens
// outside the reference's allowed set never come up, and the counts of the others pass a
// chi-square test against the reference's filtered softmax at the 0.999 quantile of the
// chi-square distribution with (allowed - 1) degrees of freedom (a fixed seed, so the outcome
// is deterministic; a correct sampler fails it with probability 1e-3 per setting).
TEST(SampleTest, DrawsFollowTheFilteredSoftmax) {
  constexpr int kVocab = 8, kDraws = 200000;
  constexpr std::array<double, 8> kChi2Q999 = {0.0,   10.83, 13.82, 16.27,
                                               18.47, 20.52, 22.46, 24.32};  // by dof
  const std::array<float, kVocab> logits = {1.0f, 2.5f, 0.3f, 2.5f, -1.0f, 1.7f, 0.0f, 2.2f};
  struct Setting {
    float temperature;
    int32_t top_k;
    float top_p;
    float min_p;
  };
  const Setting settings[] = {{1.0f, 0, 1.0f, 0.0f},   {0.7f, 3, 1.0f, 0.0f},
                              {1.3f, 0, 0.6f, 0.0f},   {1.0f, 0, 1.0f, 0.2f},
                              {0.9f, 6, 0.95f, 0.05f}, {2.0f, 5, 0.8f, 0.1f}};
  auto backend = SamplingBackend(2, kVocab);
  Batch b(kDraws, kVocab);
  for (int r = 0; r < kDraws; ++r) {
    std::copy(logits.begin(), logits.end(), b.Row(r));
    b.seed[r] = 0x5eed;
    b.counter[r] = r;
  }
  for (const Setting& s : settings) {
    std::fill(b.temperature.begin(), b.temperature.end(), s.temperature);
    std::fill(b.top_k.begin(), b.top_k.end(), s.top_k);
    std::fill(b.top_p.begin(), b.top_p.end(), s.top_p);
    std::fill(b.min_p.begin(), b.min_p.end(), s.min_p);
    backend->Sample(b.Params(false), backend->DefaultStream());
    std::array<double, kVocab> probs;
    ref::SampleProbsRef(logits.data(), kVocab, b.RowParams(0), probs.data());
    std::array<int, kVocab> count{};
    for (int32_t id : b.ids) ++count[id];
    double chi2 = 0.0;
    int allowed = 0;
    for (int i = 0; i < kVocab; ++i) {
      if (probs[i] == 0.0) {
        EXPECT_EQ(count[i], 0) << "token " << i;
        continue;
      }
      ++allowed;
      const double expected = probs[i] * kDraws;
      chi2 += (count[i] - expected) * (count[i] - expected) / expected;
    }
    ASSERT_GE(allowed, 2) << "a setting should leave a choice";
    EXPECT_LT(chi2, kChi2Q999[allowed - 1])
        << "t " << s.temperature << " k " << s.top_k << " p " << s.top_p << " min_p " << s.min_p;
  }
}

TEST(SampleTest, LogprobsAreLogSoftmaxOfTheRawLogits) {
  std::mt19937 rng(5);
  for (int vocab : {1, 5, 257, 4000}) {
    constexpr int kRows = 50;
    auto backend = SamplingBackend(2, vocab);
    Batch b(kRows, vocab);
    for (int r = 0; r < kRows; ++r) {
      FillRandomRow(b.Row(r), vocab, rng);
      RandomRowParams(b, r, rng);
      if (r % 5 == 0) b.temperature[r] = 0.0f;
    }
    backend->Sample(b.Params(true), backend->DefaultStream());
    for (int r = 0; r < kRows; ++r) {
      const double want = ref::LogSoftmaxRef(b.Row(r), vocab, b.ids[r]);
      if (std::isinf(want)) {
        EXPECT_EQ(b.logprobs[r], static_cast<float>(want));
      } else {
        EXPECT_NEAR(b.logprobs[r], want, 1e-5) << "vocab " << vocab << " row " << r;
      }
    }
  }
}

TEST(SampleTest, RowsSplitOverThreadsGiveTheSameIds) {
  constexpr int kVocab = 5000, kRows = 37;
  std::mt19937 rng(77);
  Batch b(kRows, kVocab);
  for (int r = 0; r < kRows; ++r) {
    FillRandomRow(b.Row(r), kVocab, rng);
    RandomRowParams(b, r, rng);
  }
  auto one = SamplingBackend(1, kVocab);
  one->Sample(b.Params(true), one->DefaultStream());
  const std::vector<int32_t> ids = b.ids;
  const std::vector<float> logprobs = b.logprobs;
  auto two = SamplingBackend(2, kVocab);
  std::fill(b.ids.begin(), b.ids.end(), -1);
  two->Sample(b.Params(true), two->DefaultStream());
  EXPECT_EQ(b.ids, ids);
  EXPECT_EQ(b.logprobs, logprobs);

  // Uneven ranges, each with its own scratch, as any split of a pool would run them.
  std::vector<float> e(kVocab);
  std::vector<SampleCandidate> cand(kVocab);
  const SampleScratch scratch{e.data(), cand.data(), kVocab};
  std::fill(b.ids.begin(), b.ids.end(), -1);
  const int64_t cuts[] = {0, 0, 1, 12, 13, 36, kRows};
  for (int i = 0; i + 1 < 7; ++i) SampleRows(b.Params(true), cuts[i], cuts[i + 1], scratch);
  EXPECT_EQ(b.ids, ids);
  EXPECT_EQ(b.logprobs, logprobs);
}

// NaN logits are read as -inf, as model::Sampler reads them: never drawn; a row with no finite
// logit gives id 0, one with +inf the first +inf. Rows whose outcome does not depend on the
// random number are compared with model::Sampler's token directly.
TEST(SampleTest, NanLogitsAreTreatedAsModelSamplerTreatsThem) {
  constexpr int kVocab = 10;
  const float kRows[][kVocab] = {
      {kNaN, kNaN, kNaN, kNaN, kNaN, kNaN, kNaN, kNaN, kNaN, kNaN},       // all NaN: 0
      {kNaN, -kInf, kNaN, -kInf, kNaN, -kInf, kNaN, -kInf, kNaN, -kInf},  // no finite: 0
      {kNaN, kNaN, 1.0f, kNaN, -kInf, kNaN, kNaN, kNaN, kNaN, kNaN},      // one finite: 2
      {kNaN, 1.0f, 3.0f, kNaN, kInf, 2.0f, kNaN, kNaN, kInf, kNaN},       // +inf: 4
      {kNaN, 0.5f, kNaN, 0.25f, kNaN, 0.5f, kNaN, 0.0f, kNaN, 0.75f},     // NaN never drawn
  };
  constexpr int kCases = 5;
  auto backend = SamplingBackend(1, kVocab);
  for (float t : {0.0f, 0.8f}) {
    for (int32_t k : {0, 2}) {
      for (float min_p : {0.0f, 0.5f}) {
        constexpr int kDraws = 64;
        Batch b(kCases * kDraws, kVocab);
        for (int c = 0; c < kCases; ++c) {
          for (int d = 0; d < kDraws; ++d) {
            const int r = c * kDraws + d;
            std::copy(kRows[c], kRows[c] + kVocab, b.Row(r));
            b.temperature[r] = t;
            b.top_k[r] = k;
            b.top_p[r] = 0.9f;
            b.min_p[r] = min_p;
            b.seed[r] = 99;
            b.counter[r] = d;
          }
        }
        backend->Sample(b.Params(true), backend->DefaultStream());
        for (int c = 0; c < kCases; ++c) {
          model::SamplingParams sp;
          sp.temperature = t;
          sp.top_k = k;
          sp.top_p = 0.9f;
          sp.min_p = min_p;
          sp.has_seed = true;
          sp.seed = 1;
          sp.logprobs = true;
          model::Sampler sampler(sp, kVocab, -1);
          for (int d = 0; d < kDraws; ++d) {
            const int r = c * kDraws + d;
            if (c >= 2) {  // rows with a finite or +inf logit never give a NaN's id
              ASSERT_FALSE(std::isnan(kRows[c][b.ids[r]])) << "case " << c << " drew a NaN";
            }
            const model::SampleResult want = sampler.Sample(kRows[c], kVocab);
            if (c < 4 || t == 0.0f) {
              EXPECT_EQ(b.ids[r], want.token) << "case " << c << " t " << t;
              if (std::isinf(want.logprob)) {
                EXPECT_EQ(b.logprobs[r], want.logprob) << "case " << c << " t " << t;
              } else {
                EXPECT_NEAR(b.logprobs[r], want.logprob, 1e-6) << "case " << c << " t " << t;
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace tandem::kernels::cpu
