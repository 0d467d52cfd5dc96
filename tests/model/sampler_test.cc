#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem::model {
namespace {

using ::testing::HasSubstr;

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

SamplingParams Seeded(uint64_t seed) {
  SamplingParams p;
  p.seed = seed;
  p.has_seed = true;
  return p;
}

std::vector<float> RandomLogits(int n, uint32_t seed, float scale = 3.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

std::vector<float> LogitsFromProbs(const std::vector<double>& probs) {
  std::vector<float> v;
  for (double p : probs) v.push_back(static_cast<float>(std::log(p)));
  return v;
}

// softmax(logits / t) in double.
std::vector<double> Softmax(const std::vector<float>& logits, double t) {
  double m = -kInf;
  for (float l : logits) m = std::max(m, l / t);
  std::vector<double> p(logits.size());
  double sum = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) sum += p[i] = std::exp(logits[i] / t - m);
  for (double& x : p) x /= sum;
  return p;
}

std::vector<int> Histogram(Sampler& s, const std::vector<float>& logits, int draws) {
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) ++counts[s.Sample(logits.data(), logits.size()).token];
  return counts;
}

// Pearson chi-squared of observed counts against expected probabilities (over the categories
// with p > 0; a draw of a p == 0 category makes it infinite).
double ChiSquared(const std::vector<int>& counts, const std::vector<double>& probs) {
  double total = std::accumulate(counts.begin(), counts.end(), 0.0);
  double chi2 = 0.0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (probs[i] == 0.0) {
      if (counts[i] > 0) return kInf;
      continue;
    }
    const double expected = total * probs[i];
    chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
  }
  return chi2;
}

// Upper 0.1% points of the chi-squared distribution by degrees of freedom. A correct sampler
// fails a given seed's check with probability 0.001; the seeds are fixed, so the tests are
// deterministic.
double ChiSquaredCritical999(int dof) {
  static const double kTable[] = {0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12};
  return kTable[dof];
}

std::vector<double> Restrict(std::vector<double> probs, const std::set<int>& keep) {
  double sum = 0.0;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (!keep.count(i)) probs[i] = 0.0;
    sum += probs[i];
  }
  for (double& p : probs) p /= sum;
  return probs;
}

std::set<int> Drawn(const std::vector<int>& counts) {
  std::set<int> s;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] > 0) s.insert(i);
  }
  return s;
}

// --- Validate ---------------------------------------------------------------------------------

TEST(SamplingParamsTest, DefaultsAndBoundariesAreValid) {
  EXPECT_TRUE(SamplingParams().Validate(100).ok());
  SamplingParams p;
  p.temperature = 0.0f;
  p.top_p = 1.0f;
  p.min_p = 1.0f;
  p.presence_penalty = -2.0f;
  p.frequency_penalty = 2.0f;
  p.logprobs = true;
  p.top_logprobs = 20;
  p.stop_token_ids = {0, 99};
  EXPECT_TRUE(p.Validate(100).ok());
}

struct BadCase {
  const char* field;
  void (*mutate)(SamplingParams&);
};

TEST(SamplingParamsTest, RejectsEachBadValueNamingTheField) {
  const BadCase cases[] = {
      {"temperature", [](SamplingParams& p) { p.temperature = -0.1f; }},
      {"temperature", [](SamplingParams& p) { p.temperature = kNan; }},
      {"temperature", [](SamplingParams& p) { p.temperature = kInf; }},
      {"top_k", [](SamplingParams& p) { p.top_k = -1; }},
      {"top_p", [](SamplingParams& p) { p.top_p = 0.0f; }},
      {"top_p", [](SamplingParams& p) { p.top_p = 1.01f; }},
      {"top_p", [](SamplingParams& p) { p.top_p = kNan; }},
      {"min_p", [](SamplingParams& p) { p.min_p = -0.01f; }},
      {"min_p", [](SamplingParams& p) { p.min_p = 1.5f; }},
      {"min_p", [](SamplingParams& p) { p.min_p = kNan; }},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = 0.0f; }},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = -1.0f; }},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = kInf; }},
      {"presence_penalty", [](SamplingParams& p) { p.presence_penalty = 2.5f; }},
      {"presence_penalty", [](SamplingParams& p) { p.presence_penalty = -2.01f; }},
      {"presence_penalty", [](SamplingParams& p) { p.presence_penalty = kNan; }},
      {"frequency_penalty", [](SamplingParams& p) { p.frequency_penalty = 3.0f; }},
      {"frequency_penalty", [](SamplingParams& p) { p.frequency_penalty = -2.5f; }},
      {"top_logprobs", [](SamplingParams& p) { p.logprobs = true, p.top_logprobs = 21; }},
      {"top_logprobs", [](SamplingParams& p) { p.logprobs = true, p.top_logprobs = -1; }},
      {"top_logprobs", [](SamplingParams& p) { p.top_logprobs = 3; }},  // logprobs false
      {"stop_token_ids",
       [](SamplingParams& p) {
         p.stop_token_ids = {5, -1};
       }},
      {"stop_token_ids", [](SamplingParams& p) { p.stop_token_ids = {100}; }},
  };
  for (const BadCase& c : cases) {
    SamplingParams p;
    c.mutate(p);
    const absl::Status s = p.Validate(100);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(s.message(), HasSubstr(c.field));
  }
  EXPECT_FALSE(SamplingParams().Validate(0).ok());
}

// --- Greedy -----------------------------------------------------------------------------------

TEST(SamplerTest, GreedyPicksArgmaxWithTiesToLowestId) {
  const std::vector<float> logits = RandomLogits(49152, 1);
  SamplingParams p = Seeded(1);
  p.temperature = 0.0f;
  Sampler s(p, logits.size(), -1);
  const int32_t want = std::max_element(logits.begin(), logits.end()) - logits.begin();
  EXPECT_EQ(s.Sample(logits.data(), logits.size()).token, want);

  const std::vector<float> tied = {0.5f, 2.0f, kNan, 2.0f, -1.0f};
  Sampler t(p, tied.size(), -1);
  EXPECT_EQ(t.Sample(tied.data(), tied.size()).token, 1);
}

TEST(SamplerTest, GreedyIgnoresSeed) {
  const std::vector<float> logits = RandomLogits(500, 2);
  SamplingParams a = Seeded(1), b = Seeded(2);
  a.temperature = b.temperature = 0.0f;
  Sampler sa(a, 500, -1), sb(b, 500, -1);
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(sa.Sample(logits.data(), 500).token, sb.Sample(logits.data(), 500).token);
  }
}

// --- Temperature ------------------------------------------------------------------------------

TEST(SamplerTest, TemperatureSamplingMatchesSoftmax) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 0.0f, 1.5f, 2.5f};
  SamplingParams p = Seeded(42);
  p.temperature = 0.7f;
  Sampler s(p, logits.size(), -1);
  const std::vector<int> counts = Histogram(s, logits, 200000);
  // 8 categories, 7 degrees of freedom.
  EXPECT_LT(ChiSquared(counts, Softmax(logits, 0.7)), ChiSquaredCritical999(7));
  // The check has power: the same draws are far from the untempered distribution.
  EXPECT_GT(ChiSquared(counts, Softmax(logits, 1.0)), 100 * ChiSquaredCritical999(7));
}

TEST(SamplerTest, HighTemperatureFlattens) {
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f};
  SamplingParams p = Seeded(3);
  p.temperature = 5.0f;
  Sampler s(p, 3, -1);
  const std::vector<int> counts = Histogram(s, logits, 100000);
  EXPECT_LT(ChiSquared(counts, Softmax(logits, 5.0)), ChiSquaredCritical999(2));
}

// --- top-k / top-p / min-p --------------------------------------------------------------------

TEST(SamplerTest, TopKReturnsOnlyTopKWithRenormalizedDistribution) {
  const std::vector<float> logits = RandomLogits(100, 4, 1.0f);
  SamplingParams p = Seeded(5);
  p.top_k = 5;
  Sampler s(p, 100, -1);
  const std::vector<int> counts = Histogram(s, logits, 100000);

  std::vector<int> order(100);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  const std::set<int> top5(order.begin(), order.begin() + 5);
  EXPECT_EQ(Drawn(counts), top5);
  EXPECT_LT(ChiSquared(counts, Restrict(Softmax(logits, 1.0), top5)), ChiSquaredCritical999(4));
}

TEST(SamplerTest, TopKBreaksTiesTowardLowerIds) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, 3.0f, 0.0f};
  SamplingParams p = Seeded(6);
  p.top_k = 2;
  Sampler s(p, logits.size(), -1);
  EXPECT_EQ(Drawn(Histogram(s, logits, 2000)), (std::set<int>{1, 3}));
}

TEST(SamplerTest, TopPKeepsSmallestSetReachingP) {
  const std::vector<float> logits = LogitsFromProbs({0.1, 0.4, 0.05, 0.3, 0.15});
  // Sorted: 1 (0.4), 3 (0.3), 4 (0.15), 0 (0.1), 2 (0.05).
  const struct {
    float top_p;
    std::set<int> want;
  } cases[] = {
      {0.35f, {1}},         {0.65f, {1, 3}},          {0.71f, {1, 3, 4}},
      {0.9f, {1, 3, 4, 0}}, {0.96f, {0, 1, 2, 3, 4}},
  };
  for (const auto& c : cases) {
    SamplingParams p = Seeded(7);
    p.top_p = c.top_p;
    Sampler s(p, logits.size(), -1);
    const std::vector<int> counts = Histogram(s, logits, 20000);
    EXPECT_EQ(Drawn(counts), c.want) << "top_p " << c.top_p;
    if (c.want.size() > 1) {
      EXPECT_LT(ChiSquared(counts, Restrict(Softmax(logits, 1.0), c.want)),
                ChiSquaredCritical999(c.want.size() - 1))
          << "top_p " << c.top_p;
    }
  }
}

TEST(SamplerTest, TopPAppliesToTheTopKRenormalizedDistribution) {
  const std::vector<float> logits = LogitsFromProbs({0.4, 0.3, 0.15, 0.1, 0.05});
  SamplingParams p = Seeded(8);
  p.top_p = 0.5f;
  {
    Sampler s(p, 5, -1);  // 0.4 < 0.5: needs the second token
    EXPECT_EQ(Drawn(Histogram(s, logits, 5000)), (std::set<int>{0, 1}));
  }
  p.top_k = 2;  // renormalized: 0.571, 0.429; the first alone reaches 0.5
  Sampler s(p, 5, -1);
  EXPECT_EQ(Drawn(Histogram(s, logits, 5000)), (std::set<int>{0}));
}

TEST(SamplerTest, TopPSeesTheTemperedDistribution) {
  const std::vector<float> logits = LogitsFromProbs({0.6, 0.3, 0.1});
  SamplingParams p = Seeded(9);
  p.top_p = 0.8f;
  p.temperature = 0.5f;  // tempered: 0.783, 0.196, 0.022: the first two reach 0.8
  Sampler s(p, 3, -1);
  EXPECT_EQ(Drawn(Histogram(s, logits, 5000)), (std::set<int>{0, 1}));
  p.temperature = 0.25f;  // tempered: 0.925, ...: the first alone reaches 0.8
  Sampler t(p, 3, -1);
  EXPECT_EQ(Drawn(Histogram(t, logits, 5000)), (std::set<int>{0}));
}

// Large vocabulary: the nucleus is found through the threshold prefilter; compare with a brute
// force sort, for a peaked and for a flat distribution (which forces the threshold down).
TEST(SamplerTest, TopPOnFullVocabularyMatchesBruteForce) {
  for (float scale : {4.0f, 0.05f}) {
    const std::vector<float> logits = RandomLogits(49152, 10, scale);
    const std::vector<double> probs = Softmax(logits, 1.0);
    std::vector<int> order(probs.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return probs[a] > probs[b]; });
    std::set<int> nucleus;
    double cum = 0.0;
    for (int id : order) {
      nucleus.insert(id);
      cum += probs[id];
      if (cum >= 0.9) break;
    }
    SamplingParams p = Seeded(11);
    p.top_p = 0.9f;
    Sampler s(p, logits.size(), -1);
    const std::vector<int> counts = Histogram(s, logits, 4000);
    const std::set<int> drawn = Drawn(counts);
    EXPECT_TRUE(std::includes(nucleus.begin(), nucleus.end(), drawn.begin(), drawn.end()))
        << "scale " << scale << ": drew a token outside the nucleus of " << nucleus.size();
    // Flat: the nucleus holds ~90% of the vocabulary; 4000 draws hit ~3800 distinct tokens.
    if (scale < 1.0f) {
      EXPECT_GT(nucleus.size(), 40000u);
      EXPECT_GT(drawn.size(), 3500u);
    }
  }
}

// Equal logits: the likelihood order falls back to ids, so the nucleus is exactly the lower ids.
TEST(SamplerTest, TopPOnTiedVocabularyKeepsLowestIds) {
  const std::vector<float> logits(49152, 0.25f);
  SamplingParams p = Seeded(27);
  p.top_p = 0.5f;
  Sampler s(p, logits.size(), -1);
  const std::set<int> drawn = Drawn(Histogram(s, logits, 1000));
  EXPECT_LT(*drawn.rbegin(), 24576);
  EXPECT_GT(*drawn.rbegin(), 23000);  // reaches up to the boundary
  EXPECT_GT(drawn.size(), 950u);
}

TEST(SamplerTest, MinPAndTopPOverTheWholeVocabulary) {
  const std::vector<float> logits = LogitsFromProbs({0.3, 0.25, 0.2, 0.15, 0.1});
  SamplingParams p = Seeded(28);
  p.top_p = 0.99f;
  p.min_p = 0.6f;  // binds first: p >= 0.18
  {
    Sampler s(p, 5, -1);
    EXPECT_EQ(Drawn(Histogram(s, logits, 5000)), (std::set<int>{0, 1, 2}));
  }
  p.top_p = 0.5f;  // binds first: 0.3 + 0.25
  p.min_p = 0.1f;
  Sampler s(p, 5, -1);
  EXPECT_EQ(Drawn(Histogram(s, logits, 5000)), (std::set<int>{0, 1}));
}

TEST(SamplerTest, MinPRemovesTokensBelowMinPTimesMax) {
  const std::vector<float> logits = LogitsFromProbs({0.5, 0.2, 0.1, 0.09, 0.11});
  SamplingParams p = Seeded(12);
  p.min_p = 0.19f;  // threshold 0.095: drops only the 0.09 token
  Sampler s(p, 5, -1);
  const std::vector<int> counts = Histogram(s, logits, 50000);
  const std::set<int> want = {0, 1, 2, 4};
  EXPECT_EQ(Drawn(counts), want);
  EXPECT_LT(ChiSquared(counts, Restrict(Softmax(logits, 1.0), want)), ChiSquaredCritical999(3));

  p.min_p = 0.45f;  // threshold 0.225: only the first
  Sampler t(p, 5, -1);
  EXPECT_EQ(Drawn(Histogram(t, logits, 2000)), (std::set<int>{0}));
}

TEST(SamplerTest, MinPCombinedWithTopKAndTopP) {
  const std::vector<float> logits = LogitsFromProbs({0.3, 0.25, 0.2, 0.15, 0.1});
  SamplingParams p = Seeded(13);
  p.top_k = 4;
  p.top_p = 0.99f;
  p.min_p = 0.6f;  // keeps p >= 0.18: the first three
  Sampler s(p, 5, -1);
  EXPECT_EQ(Drawn(Histogram(s, logits, 5000)), (std::set<int>{0, 1, 2}));
}

// --- Penalties --------------------------------------------------------------------------------

TEST(SamplerTest, PenaltiesChangeLogitsExactly) {
  SamplingParams p = Seeded(14);
  p.repetition_penalty = 1.5f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  Sampler s(p, 6, -1);
  const int32_t prompt[] = {0, 1, 0};
  s.AddPromptTokens(prompt);
  s.Accept(3);
  s.Accept(3);
  s.Accept(4);
  std::vector<float> l = {2.0f, -1.0f, 0.5f, 3.0f, -2.0f, 1.0f};
  s.ApplyPenalties(l);
  EXPECT_FLOAT_EQ(l[0], 2.0f / 1.5f);              // prompt: repetition only
  EXPECT_FLOAT_EQ(l[1], -1.5f);                    // negative: multiplied
  EXPECT_FLOAT_EQ(l[2], 0.5f);                     // unseen
  EXPECT_FLOAT_EQ(l[3], 2.0f - 0.5f - 2 * 0.25f);  // 3/1.5, then presence, 2x frequency
  EXPECT_FLOAT_EQ(l[4], -3.0f - 0.5f - 0.25f);     // -2*1.5, presence, 1x frequency
  EXPECT_FLOAT_EQ(l[5], 1.0f);
}

TEST(SamplerTest, PenaltiesApplyBeforeTemperature) {
  const std::vector<float> logits = {1.0f, 2.0f, -0.5f, 0.5f};
  SamplingParams p = Seeded(24);
  p.temperature = 0.6f;
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 0.3f;
  Sampler s(p, 4, -1);
  const int32_t prompt[] = {1, 2};
  s.AddPromptTokens(prompt);
  s.Accept(3);
  // Penalized: {1, 2/2 = 1, -0.5*2 = -1, 0.5/2 - 0.3 = -0.05}, then / 0.6. Sample() records
  // its own draws, so count on a copy of the state: a fresh sampler per draw.
  const std::vector<float> penalized = {1.0f, 1.0f, -1.0f, -0.05f};
  std::vector<int> counts(4, 0);
  for (int i = 0; i < 50000; ++i) {
    SamplingParams q = p;
    q.seed = 1000 + i;
    Sampler fresh(q, 4, -1);
    fresh.AddPromptTokens(prompt);
    fresh.Accept(3);
    ++counts[fresh.Sample(logits.data(), 4).token];
  }
  EXPECT_LT(ChiSquared(counts, Softmax(penalized, 0.6)), ChiSquaredCritical999(3));
  EXPECT_GT(ChiSquared(counts, Softmax(logits, 0.6)), 10 * ChiSquaredCritical999(3));
}

TEST(SamplerTest, NegativePresencePenaltyRewardsGeneratedTokens) {
  SamplingParams p = Seeded(15);
  p.presence_penalty = -1.0f;
  Sampler s(p, 3, -1);
  s.Accept(2);
  s.Accept(2);
  std::vector<float> l = {0.0f, 0.0f, 0.0f};
  s.ApplyPenalties(l);
  EXPECT_FLOAT_EQ(l[2], 1.0f);  // presence counts once, however many times generated
  EXPECT_FLOAT_EQ(l[0], 0.0f);
}

TEST(SamplerTest, SampleRecordsTokensAndPenaltiesSteerGreedy) {
  SamplingParams p = Seeded(16);
  p.temperature = 0.0f;
  p.repetition_penalty = 1.2f;
  Sampler s(p, 3, -1);
  const std::vector<float> logits = {2.0f, 1.9f, 0.0f};
  EXPECT_EQ(s.Sample(logits.data(), 3).token, 0);  // nothing seen yet
  EXPECT_EQ(s.num_generated(), 1);
  EXPECT_EQ(s.Sample(logits.data(), 3).token, 1);  // 2.0/1.2 = 1.67 < 1.9
  EXPECT_EQ(s.Sample(logits.data(), 3).token, 0);  // both penalized: 1.67 > 1.58
}

TEST(SamplerTest, FrequencyPenaltyIgnoresPrompt) {
  SamplingParams p = Seeded(17);
  p.frequency_penalty = 1.0f;
  p.presence_penalty = 1.0f;
  Sampler s(p, 2, -1);
  const int32_t prompt[] = {0, 0, 0, 1};
  s.AddPromptTokens(prompt);
  std::vector<float> l = {1.0f, 1.0f};
  s.ApplyPenalties(l);
  EXPECT_FLOAT_EQ(l[0], 1.0f);
  EXPECT_FLOAT_EQ(l[1], 1.0f);
}

// --- Seeds ------------------------------------------------------------------------------------

TEST(SamplerTest, SameSeedSameTokensDifferentSeedDifferentTokens) {
  const std::vector<float> logits = RandomLogits(1000, 18, 1.0f);
  const auto run = [&](uint64_t seed) {
    SamplingParams p = Seeded(seed);
    p.top_p = 0.95f;
    Sampler s(p, 1000, -1);
    std::vector<int32_t> out;
    for (int i = 0; i < 100; ++i) out.push_back(s.Sample(logits.data(), 1000).token);
    return out;
  };
  EXPECT_EQ(run(1234), run(1234));
  EXPECT_NE(run(1234), run(1235));
}

TEST(SamplerTest, SeedHandoffContinuesTheStream) {
  const std::vector<float> logits = RandomLogits(300, 25, 1.0f);
  SamplingParams p = Seeded(26);
  p.frequency_penalty = 0.5f;
  Sampler a(p, 300, -1);
  std::vector<int32_t> out;
  for (int i = 0; i < 5; ++i) out.push_back(a.Sample(logits.data(), 300).token);

  SamplingParams q = p;
  q.has_seed = false;  // the receiver's own random seed is overridden by the handed-over one
  Sampler b(q, 300, -1);
  for (int32_t t : out) b.Accept(t);
  b.set_seed(a.seed());
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(a.Sample(logits.data(), 300).token, b.Sample(logits.data(), 300).token);
  }
}

// --- Logprobs ---------------------------------------------------------------------------------

TEST(SamplerTest, LogprobsAreRawLogSoftmaxSortedAndConsistent) {
  std::vector<float> logits = RandomLogits(1000, 19);
  logits[7] = logits[8] = 30.0f;  // a tie at the top: lower id first
  std::vector<double> ref(logits.size());
  {
    const std::vector<double> p = Softmax(logits, 1.0);
    for (size_t i = 0; i < p.size(); ++i) ref[i] = std::log(p[i]);
  }
  SamplingParams p = Seeded(20);
  p.logprobs = true;
  p.top_logprobs = 20;
  p.temperature = 0.5f;  // neither temperature nor penalties change the reported logprobs
  p.repetition_penalty = 1.3f;
  Sampler s(p, logits.size(), -1);
  const int32_t prompt[] = {7, 8, 9};
  s.AddPromptTokens(prompt);
  for (int step = 0; step < 5; ++step) {
    const SampleResult r = s.Sample(logits.data(), logits.size());
    EXPECT_NEAR(r.logprob, ref[r.token], 1e-4);
    ASSERT_EQ(r.num_top_logprobs, 20);
    EXPECT_EQ(r.top_logprobs[0].token, 7);
    EXPECT_EQ(r.top_logprobs[1].token, 8);
    std::vector<int> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return logits[a] > logits[b]; });
    double mass = 0.0;
    for (int i = 0; i < 20; ++i) {
      EXPECT_EQ(r.top_logprobs[i].token, order[i]);
      EXPECT_NEAR(r.top_logprobs[i].logprob, ref[order[i]], 1e-4);
      if (i > 0) {
        EXPECT_LE(r.top_logprobs[i].logprob, r.top_logprobs[i - 1].logprob);
      }
      mass += std::exp(r.top_logprobs[i].logprob);
    }
    EXPECT_LE(mass, 1.0 + 1e-5);
    EXPECT_LE(r.logprob, 0.0f);
  }
}

TEST(SamplerTest, NoLogprobsUnlessAsked) {
  const std::vector<float> logits = RandomLogits(100, 21);
  Sampler s(Seeded(22), 100, -1);
  const SampleResult r = s.Sample(logits.data(), 100);
  EXPECT_EQ(r.num_top_logprobs, 0);
  EXPECT_EQ(r.logprob, 0.0f);
}

// --- Degenerate rows and stop tokens ----------------------------------------------------------

TEST(SamplerTest, NanAndInfiniteLogits) {
  SamplingParams p = Seeded(23);
  p.top_p = 0.9f;
  Sampler s(p, 4, -1);
  const std::vector<float> with_nan = {kNan, 0.0f, kNan, 0.0f};
  for (int i = 0; i < 100; ++i) {
    const int32_t t = s.Sample(with_nan.data(), 4).token;
    EXPECT_TRUE(t == 1 || t == 3) << t;
  }
  const std::vector<float> all_masked = {-kInf, -kInf, -kInf, -kInf};
  EXPECT_EQ(s.Sample(all_masked.data(), 4).token, 0);
  const std::vector<float> with_inf = {0.0f, kInf, 1.0f, kInf};
  EXPECT_EQ(s.Sample(with_inf.data(), 4).token, 1);
}

TEST(SamplerTest, IsStopToken) {
  SamplingParams p;
  p.stop_token_ids = {5, 9};
  Sampler s(p, 10, 2);
  EXPECT_TRUE(s.IsStopToken(2));
  EXPECT_TRUE(s.IsStopToken(5));
  EXPECT_TRUE(s.IsStopToken(9));
  EXPECT_FALSE(s.IsStopToken(3));
  p.ignore_eos = true;
  Sampler t(p, 10, 2);
  EXPECT_FALSE(t.IsStopToken(2));
  EXPECT_TRUE(t.IsStopToken(5));
  Sampler no_eos(SamplingParams(), 10, -1);
  EXPECT_FALSE(no_eos.IsStopToken(0));
}

}  // namespace
}  // namespace tandem::model
