#include "scheduler/nano_batch.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace tandem::scheduler {
namespace {

// A whole device of the order the profile finds on the default model on 2 threads.
const LatencyModel::Coefficients kWhole = {2.3e-3, 5.1e-4, 5.8e-10, 7.0e-4, 5.3e-7};

// A group that runs every chunk at `scale` times the whole device's cost, with `fixed` s of
// fixed cost: scale 2 is a group with half the compute and no gain from running alongside.
LatencyModel Group(double scale, double fixed) {
  LatencyModel::Coefficients c = kWhole;
  c[0] = fixed;
  for (int i = 1; i < LatencyModel::kNumCoefficients; ++i) c[i] *= scale;
  return LatencyModel(c);
}

std::vector<NanoChunk> Decodes(int n, int context) {
  return std::vector<NanoChunk>(n, NanoChunk::Decode(context));
}

void ExpectEveryChunkPlacedOnce(const NanoBatchPlan& plan, int n) {
  ASSERT_EQ(static_cast<int>(plan.batch_of.size()), n);
  std::vector<int> seen(n, 0);
  for (int b = 0; b < plan.num_batches; ++b) {
    const std::vector<int> chunks = plan.chunks_of(b);
    for (size_t k = 0; k < chunks.size(); ++k) {
      ++seen[chunks[k]];
      if (k > 0) EXPECT_LT(chunks[k - 1], chunks[k]) << "chunks_of keeps step order";
    }
  }
  for (int i = 0; i < n; ++i) EXPECT_EQ(seen[i], 1) << "chunk " << i;
}

TEST(NanoBatchPlannerTest, MonolithicWhenTheGroupHasNoGain) {
  // Half the device at half the speed, the same fixed cost: a split of a balanced batch
  // takes fixed + half the work at twice the cost = the monolithic time. No gain, no split.
  const LatencyModel whole(kWhole);
  const LatencyModel group = Group(2.0, kWhole[0]);
  NanoBatchPlanner planner(&whole, &group);
  NanoBatchPlan plan;
  const std::vector<NanoChunk> chunks = Decodes(32, 200);
  planner.Plan(chunks, &plan);
  EXPECT_FALSE(plan.split());
  EXPECT_EQ(plan.num_batches, 1);
  EXPECT_NEAR(plan.split_seconds, plan.monolithic_seconds, 1e-12);
  ExpectEveryChunkPlacedOnce(plan, 32);
  for (int b : plan.batch_of) EXPECT_EQ(b, 0);
}

TEST(NanoBatchPlannerTest, MonolithicWhenAModelIsNotFitted) {
  const LatencyModel whole(kWhole);
  const LatencyModel unfitted;
  NanoBatchPlanner planner(&whole, &unfitted);
  NanoBatchPlan plan;
  planner.Plan(Decodes(8, 100), &plan);
  EXPECT_FALSE(plan.split());
  EXPECT_GT(plan.monolithic_seconds, 0);
}

TEST(NanoBatchPlannerTest, MonolithicForOneChunk) {
  const LatencyModel whole(kWhole);
  const LatencyModel group = Group(1.0, 0.5e-3);  // a group as fast as the device
  NanoBatchPlanner planner(&whole, &group);
  NanoBatchPlan plan;
  const std::vector<NanoChunk> one = {NanoChunk::Prefill(256, 0)};
  planner.Plan(one, &plan);
  EXPECT_FALSE(plan.split());
  ExpectEveryChunkPlacedOnce(plan, 1);
}

TEST(NanoBatchPlannerTest, SplitsEqualDecodesInHalves) {
  // A group that loses only 30% per chunk (the two groups overlap memory and compute).
  const LatencyModel whole(kWhole);
  const LatencyModel group = Group(1.3, kWhole[0]);
  NanoBatchPlanner planner(&whole, &group);
  NanoBatchPlan plan;
  planner.Plan(Decodes(32, 300), &plan);
  ASSERT_TRUE(plan.split());
  EXPECT_EQ(plan.chunks_of(0).size(), 16u);
  EXPECT_EQ(plan.chunks_of(1).size(), 16u);
  EXPECT_EQ(plan.shape[0].decode_seqs, 16);
  EXPECT_EQ(plan.shape[1].decode_seqs, 16);
  EXPECT_LT(plan.split_seconds, 0.95 * plan.monolithic_seconds);
  ExpectEveryChunkPlacedOnce(plan, 32);
}

TEST(NanoBatchPlannerTest, BalancesAPrefillAgainstDecodes) {
  // One prompt chunk of 64 tokens beside 40 decodes: the chunk costs about as much as ~45
  // decodes, so the best split puts it alone against all decodes, not half and half.
  const LatencyModel whole(kWhole);
  const LatencyModel group = Group(1.3, kWhole[0]);
  NanoBatchPlanner planner(&whole, &group);
  std::vector<NanoChunk> chunks = Decodes(40, 100);
  chunks.insert(chunks.begin() + 7, NanoChunk::Prefill(64, 0));
  NanoBatchPlan plan;
  planner.Plan(chunks, &plan);
  ASSERT_TRUE(plan.split());
  ExpectEveryChunkPlacedOnce(plan, 41);
  const int prefill_batch = plan.batch_of[7];
  EXPECT_EQ(plan.shape[prefill_batch].prefill_tokens, 64);
  EXPECT_EQ(plan.shape[prefill_batch].decode_seqs, 0);
  EXPECT_EQ(plan.shape[1 - prefill_batch].decode_seqs, 40);
  EXPECT_DOUBLE_EQ(plan.split_seconds,
                   std::max(group.Predict(plan.shape[0]), group.Predict(plan.shape[1])));
}

TEST(NanoBatchPlannerTest, RandomStepsArePlacedOnceAndNoWorseThanMonolithic) {
  const LatencyModel whole(kWhole);
  const LatencyModel group = Group(1.4, 1.5e-3);
  NanoBatchPlanner planner(&whole, &group, NanoBatchOptions{.min_gain = 0.0});
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> decode(0, 64), ctx(1, 2048), chunk(1, 512), start(0, 1024);
  NanoBatchPlan plan;
  for (int iter = 0; iter < 200; ++iter) {
    std::vector<NanoChunk> chunks = Decodes(0, 1);
    const int d = decode(rng);
    for (int i = 0; i < d; ++i) chunks.push_back(NanoChunk::Decode(ctx(rng)));
    for (int p = rng() % 3; p > 0; --p)
      chunks.push_back(NanoChunk::Prefill(chunk(rng), start(rng)));
    planner.Plan(chunks, &plan);
    const int n = static_cast<int>(chunks.size());
    ExpectEveryChunkPlacedOnce(plan, n);
    if (plan.split()) {
      EXPECT_LE(plan.split_seconds, plan.monolithic_seconds);
      // Balanced: greedy placement leaves the two within the costliest chunk of each other.
      double max_cost = 0;
      for (const NanoChunk& c : chunks) {
        StepShape s;
        c.AddTo(&s);
        max_cost = std::max(max_cost, group.Predict(s) - group.Predict(StepShape{}));
      }
      EXPECT_LE(std::abs(group.Predict(plan.shape[0]) - group.Predict(plan.shape[1])),
                max_cost + 1e-12);
      StepShape sum;
      for (int b = 0; b < 2; ++b) {
        EXPECT_FALSE(plan.shape[b].empty());
        sum.prefill_tokens += plan.shape[b].prefill_tokens;
        sum.decode_seqs += plan.shape[b].decode_seqs;
      }
      StepShape all;
      for (const NanoChunk& c : chunks) c.AddTo(&all);
      EXPECT_EQ(sum.prefill_tokens, all.prefill_tokens);
      EXPECT_EQ(sum.decode_seqs, all.decode_seqs);
    }
  }
}

TEST(NanoBatchPlannerTest, ReusedPlanForgetsThePreviousStep) {
  const LatencyModel whole(kWhole);
  const LatencyModel group = Group(1.3, kWhole[0]);
  NanoBatchPlanner planner(&whole, &group);
  NanoBatchPlan plan;
  planner.Plan(Decodes(32, 300), &plan);
  ASSERT_TRUE(plan.split());
  planner.Plan(Decodes(1, 300), &plan);
  EXPECT_FALSE(plan.split());
  ExpectEveryChunkPlacedOnce(plan, 1);
  EXPECT_EQ(plan.split_seconds, 0);
}

}  // namespace
}  // namespace tandem::scheduler
