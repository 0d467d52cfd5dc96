#include "scheduler/scheduler.h"

#include <memory>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "tests/scheduler/test_kv.h"

namespace tandem::scheduler {
namespace {

constexpr int kBlock = 4;
constexpr int kVocab = 32;

std::unique_ptr<Sequence> MakeSeq(uint64_t id, int prompt_len, int max_tokens = 100) {
  SequenceRequest r;
  r.id = id;
  r.prompt.resize(prompt_len);
  std::iota(r.prompt.begin(), r.prompt.end(), 0);
  for (int32_t& t : r.prompt) t %= kVocab;
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  return std::make_unique<Sequence>(std::move(r), kVocab, /*eos=*/-1, kBlock);
}

// One step into a fresh output (the engine reuses one; see ReusedOutputIsRefilled).
SchedulerOutput Schedule(Scheduler& s) {
  SchedulerOutput out;
  s.Schedule(&out);
  return out;
}

// Plays the engine's part after a step: KV recorded, a token appended where one was sampled.
void RunStep(Scheduler& s, const SchedulerOutput& out) {
  s.Complete(out);
  for (const ScheduledChunk& c : out.chunks) {
    if (c.want_logits) c.seq->tokens.push_back(7);
  }
}

// The tests below hold for both policies: kSlo without a latency model has no time budget,
// and its deadline order of best-effort sequences (arrival + aging) is first come, first
// served.
class SchedulerTest : public ::testing::TestWithParam<SchedulePolicy> {
 protected:
  SchedulerConfig Config(int max_num_seqs, int max_batch_tokens) const {
    SchedulerConfig c;
    c.max_num_seqs = max_num_seqs;
    c.max_batch_tokens = max_batch_tokens;
    c.policy = GetParam();
    return c;
  }
};

INSTANTIATE_TEST_SUITE_P(Policies, SchedulerTest,
                         ::testing::Values(SchedulePolicy::kFcfs, SchedulePolicy::kSlo),
                         [](const auto& info) {
                           return info.param == SchedulePolicy::kFcfs ? "Fcfs" : "Slo";
                         });

TEST(SchedulerConfigTest, RejectsBudgetBelowSeqs) {
  EXPECT_FALSE((SchedulerConfig{.max_num_seqs = 8, .max_batch_tokens = 4}).Validate().ok());
  EXPECT_FALSE((SchedulerConfig{.max_num_seqs = 0, .max_batch_tokens = 4}).Validate().ok());
  EXPECT_TRUE((SchedulerConfig{.max_num_seqs = 4, .max_batch_tokens = 4}).Validate().ok());
  SchedulerConfig margin;
  margin.budget_margin = 0;
  EXPECT_FALSE(margin.Validate().ok());
  margin.budget_margin = 1.5;
  EXPECT_FALSE(margin.Validate().ok());
  SchedulerConfig aging;
  aging.best_effort_aging = absl::ZeroDuration();
  EXPECT_FALSE(aging.Validate().ok());
  EXPECT_TRUE(ParseSchedulePolicy("slo").ok());
  EXPECT_EQ(*ParseSchedulePolicy("fcfs"), SchedulePolicy::kFcfs);
  EXPECT_FALSE(ParseSchedulePolicy("edf").ok());
}

TEST_P(SchedulerTest, ChunkedPrefillWithinTokenBudget) {
  TestKv pool(1000, kBlock);
  Scheduler s(Config(8, 64), *pool);
  Sequence* a = nullptr;
  Sequence* b = nullptr;
  {
    auto sa = MakeSeq(1, 100), sb = MakeSeq(2, 50);
    a = sa.get();
    b = sb.get();
    s.Add(std::move(sa));
    s.Add(std::move(sb));
  }
  SchedulerOutput o1 = Schedule(s);
  ASSERT_EQ(o1.chunks.size(), 1u);  // a takes the whole budget
  EXPECT_EQ(o1.chunks[0].seq, a);
  EXPECT_EQ(o1.chunks[0].num_tokens, 64);
  EXPECT_FALSE(o1.chunks[0].want_logits);
  RunStep(s, o1);

  SchedulerOutput o2 = Schedule(s);  // a's last 36 tokens, then b's first 28
  ASSERT_EQ(o2.chunks.size(), 2u);
  EXPECT_EQ(o2.chunks[0].seq, a);
  EXPECT_EQ(o2.chunks[0].start, 64);
  EXPECT_EQ(o2.chunks[0].num_tokens, 36);
  EXPECT_TRUE(o2.chunks[0].want_logits);
  EXPECT_EQ(o2.chunks[1].seq, b);
  EXPECT_EQ(o2.chunks[1].num_tokens, 28);
  EXPECT_EQ(o2.num_tokens, 64);
  RunStep(s, o2);

  SchedulerOutput o3 = Schedule(s);  // a decodes first, then b continues
  ASSERT_EQ(o3.chunks.size(), 2u);
  EXPECT_EQ(o3.chunks[0].seq, a);
  EXPECT_EQ(o3.chunks[0].num_tokens, 1);
  EXPECT_EQ(o3.chunks[0].start, 100);
  EXPECT_EQ(o3.num_decode, 1);
  EXPECT_EQ(o3.chunks[1].seq, b);
  EXPECT_EQ(o3.chunks[1].num_tokens, 22);
  EXPECT_TRUE(o3.chunks[1].want_logits);
  RunStep(s, o3);
  EXPECT_EQ(a->table.num_tokens(), 101);
  EXPECT_EQ(b->table.num_tokens(), 50);
}

TEST_P(SchedulerTest, DecodeTokensComeBeforePrefillChunks) {
  TestKv pool(1000, kBlock);
  Scheduler s(Config(8, 8), *pool);
  s.Add(MakeSeq(1, 4));
  RunStep(s, Schedule(s));  // seq 1 prefilled, now decoding
  s.Add(MakeSeq(2, 30));
  for (int step = 0; step < 3; ++step) {
    SchedulerOutput o = Schedule(s);
    ASSERT_EQ(o.chunks.size(), 2u);
    EXPECT_EQ(o.chunks[0].seq->id, 1u);
    EXPECT_EQ(o.chunks[0].num_tokens, 1);
    EXPECT_EQ(o.chunks[1].seq->id, 2u);
    EXPECT_EQ(o.chunks[1].num_tokens, 7);
    RunStep(s, o);
  }
}

TEST_P(SchedulerTest, MaxNumSeqsBoundsRunning) {
  TestKv pool(1000, kBlock);
  Scheduler s(Config(2, 64), *pool);
  for (int i = 0; i < 5; ++i) s.Add(MakeSeq(i, 3));
  SchedulerOutput o = Schedule(s);
  EXPECT_EQ(o.chunks.size(), 2u);
  EXPECT_EQ(s.num_running(), 2);
  EXPECT_EQ(s.num_waiting(), 3);
  RunStep(s, o);
  // Finishing one lets the next in.
  s.Remove(o.chunks[0].seq);
  SchedulerOutput o2 = Schedule(s);
  EXPECT_EQ(o2.chunks.size(), 2u);
  EXPECT_EQ(o2.chunks[1].seq->id, 2u);
}

TEST_P(SchedulerTest, PreemptsNewestWhenKvRunsOutAndRecomputesLater) {
  // 6 blocks of 4 tokens. Two sequences of 8 prompt tokens take 4 blocks; decoding then
  // needs new blocks every 4 tokens.
  TestKv pool(6, kBlock);
  Scheduler s(Config(4, 32), *pool);
  s.Add(MakeSeq(1, 8));
  s.Add(MakeSeq(2, 8));
  RunStep(s, Schedule(s));
  EXPECT_EQ(pool->num_free(), 2);
  // Each decode step adds a token to both; after 4 steps (positions 8..11) they need block 3
  // each: 2 free blocks suffice for positions up to 11, then position 12 needs 2 more.
  bool preempted = false;
  for (int step = 0; step < 12 && !preempted; ++step) {
    SchedulerOutput o = Schedule(s);
    if (!o.preempted.empty()) {
      preempted = true;
      ASSERT_EQ(o.preempted.size(), 1u);
      EXPECT_EQ(o.preempted[0]->id, 2u);  // the newest goes
      EXPECT_EQ(o.preempted[0]->num_computed, 0);
      EXPECT_TRUE(o.preempted[0]->table.blocks().empty());
      EXPECT_EQ(s.num_waiting(), 1);
      ASSERT_EQ(o.chunks.size(), 1u);
      EXPECT_EQ(o.chunks[0].seq->id, 1u);
    }
    RunStep(s, o);
  }
  ASSERT_TRUE(preempted);
  // When sequence 1 ends, sequence 2 comes back and recomputes everything it had.
  Sequence* one = s.All()[0];
  ASSERT_EQ(one->id, 1u);
  s.Remove(one);
  EXPECT_EQ(pool->num_free(), 6);
  SchedulerOutput o = Schedule(s);
  ASSERT_EQ(o.chunks.size(), 1u);
  EXPECT_EQ(o.chunks[0].seq->id, 2u);
  EXPECT_EQ(o.chunks[0].start, 0);
  EXPECT_EQ(o.chunks[0].num_tokens, o.chunks[0].seq->num_tokens());
  EXPECT_TRUE(o.chunks[0].want_logits);
  EXPECT_EQ(o.chunks[0].seq->preemptions, 1);
}

// With prefix caching: a sequence starts after the whole blocks of its prefix that are cached,
// and one that cannot start after all (no room for the rest) gives the shared blocks back and
// waits holding nothing.
TEST_P(SchedulerTest, StartsAfterItsCachedPrefixAndWaitsHoldingNothing) {
  TestKv pool(5, kBlock);  // 20 tokens
  pool->EnablePrefixCaching();
  Scheduler s(Config(4, 32), *pool);
  s.Add(MakeSeq(1, 10));  // tokens 0..9: two whole blocks
  RunStep(s, Schedule(s));
  s.Remove(s.All()[0]);
  EXPECT_EQ(pool->num_free(), 5);  // its cached blocks count as free
  EXPECT_EQ(pool->prefix_stats().cached_blocks, 2);

  s.Add(MakeSeq(2, 10));  // the same prompt
  SchedulerOutput o = Schedule(s);
  ASSERT_EQ(o.chunks.size(), 1u);
  EXPECT_EQ(o.chunks[0].start, 8);
  EXPECT_EQ(o.chunks[0].num_tokens, 2);
  EXPECT_TRUE(o.chunks[0].want_logits);
  EXPECT_EQ(pool->prefix_stats().hit_tokens, 8u);
  EXPECT_EQ(pool->prefix_stats().queried_tokens, 20u);
  RunStep(s, o);
  Sequence* two = s.All()[0];
  const int32_t shared = two->table.blocks()[0];
  EXPECT_EQ(pool->RefCount(shared), 2);  // the table's and the cache's

  // 20 tokens with the same first 10: 2 shared blocks and 3 of its own, but 2 are free.
  s.Add(MakeSeq(3, 20));
  o = Schedule(s);
  ASSERT_EQ(o.chunks.size(), 1u);
  EXPECT_EQ(o.chunks[0].seq->id, 2u);  // only the decode
  EXPECT_TRUE(o.failed.empty());
  ASSERT_EQ(s.num_waiting(), 1);
  Sequence* three = s.All()[1];
  EXPECT_EQ(three->id, 3u);
  EXPECT_TRUE(three->table.blocks().empty());
  EXPECT_EQ(three->num_computed, 0);
  EXPECT_EQ(pool->RefCount(shared), 2);
  EXPECT_EQ(pool->prefix_stats().queried_tokens, 20u);  // not counted until it starts
  // Admission's snapshot expects it to compute only what the cache lacks.
  LoadSnapshot snap;
  s.ExportLoad(o, absl::Now(), &snap);
  ASSERT_EQ(snap.prefilling.size(), 1u);
  EXPECT_EQ(snap.prefilling[0].id, 3u);
  EXPECT_EQ(snap.prefilling[0].start, 8);
  EXPECT_EQ(snap.prefilling[0].remaining, 12);
  RunStep(s, o);

  s.Remove(two);
  o = Schedule(s);
  ASSERT_EQ(o.chunks.size(), 1u);
  EXPECT_EQ(o.chunks[0].seq->id, 3u);
  EXPECT_EQ(o.chunks[0].start, 8);
  EXPECT_EQ(o.chunks[0].num_tokens, 12);
  EXPECT_EQ(three->table.blocks()[0], shared);
  RunStep(s, o);
  s.Remove(three);
  EXPECT_EQ(pool->num_free(), 5);
}

TEST_P(SchedulerTest, ReusedOutputIsRefilled) {
  TestKv pool(6, kBlock);
  Scheduler s(Config(4, 32), *pool);
  s.Add(MakeSeq(1, 8));
  s.Add(MakeSeq(2, 8));
  SchedulerOutput out;
  s.Schedule(&out);
  ASSERT_EQ(out.chunks.size(), 2u);
  EXPECT_EQ(out.num_tokens, 16);
  RunStep(s, out);
  // Decode until the cache runs short and sequence 2 is preempted.
  for (int step = 0; step < 12; ++step) {
    s.Schedule(&out);
    RunStep(s, out);
    if (!out.preempted.empty()) break;
  }
  ASSERT_EQ(out.preempted.size(), 1u);
  const ScheduledChunk* storage = out.chunks.data();
  // The next step replaces all of it (sequence 2 does not fit back yet) in the same storage.
  s.Schedule(&out);
  EXPECT_TRUE(out.preempted.empty());
  EXPECT_TRUE(out.failed.empty());
  ASSERT_EQ(out.chunks.size(), 1u);
  EXPECT_EQ(out.chunks[0].seq->id, 1u);
  EXPECT_EQ(out.num_tokens, 1);
  EXPECT_EQ(out.num_decode, 1);
  EXPECT_EQ(out.chunks.data(), storage);
}

TEST_P(SchedulerTest, SequenceLargerThanTheCacheFails) {
  TestKv pool(2, kBlock);  // 8 tokens
  Scheduler s(Config(4, 32), *pool);
  s.Add(MakeSeq(1, 6));
  RunStep(s, Schedule(s));
  RunStep(s, Schedule(s));
  RunStep(s, Schedule(s));  // 8 tokens of KV: full
  SchedulerOutput o = Schedule(s);
  EXPECT_TRUE(o.chunks.empty());
  ASSERT_EQ(o.failed.size(), 1u);
  s.Remove(o.failed[0]);
  EXPECT_EQ(pool->num_free(), 2);
  EXPECT_TRUE(s.empty());
}

TEST_P(SchedulerTest, RemoveWaitingSequence) {
  TestKv pool(100, kBlock);
  Scheduler s(Config(1, 8), *pool);
  s.Add(MakeSeq(1, 3));
  s.Add(MakeSeq(2, 3));
  RunStep(s, Schedule(s));
  std::vector<Sequence*> all = s.All();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[1]->id, 2u);
  std::vector<Sequence*> visited;
  s.ForEach([&](Sequence* q) { visited.push_back(q); });
  EXPECT_EQ(visited, all);
  std::unique_ptr<Sequence> gone = s.Remove(all[1]);
  EXPECT_EQ(gone->id, 2u);
  EXPECT_EQ(s.num_waiting(), 0);
}

// A sequence that arrives with its prompt's KV (from a prefill instance) joins the running set
// and runs just its first sampled token in the next step, beside the others.
TEST_P(SchedulerTest, SequenceArrivingWithKvDecodesNext) {
  TestKv pool(100, kBlock);
  Scheduler s(Config(2, 64), *pool);
  s.Add(MakeSeq(1, 5));
  RunStep(s, Schedule(s));  // 1 prefilled, its first token appended
  auto arrived = MakeSeq(2, 9, 10);
  // What the decode side's import leaves: blocks for the prompt plus the next token, the
  // prompt's KV in them, the first token sampled elsewhere appended.
  ASSERT_TRUE(pool->Append(arrived->table, 10).ok());
  arrived->table.SetNumTokens(9);
  arrived->num_computed = 9;
  arrived->tokens.push_back(7);
  arrived->scheduled_step = 1;  // stamps from the prefill side's scheduler must not matter
  ASSERT_TRUE(s.CanAddRunning());
  s.AddRunning(std::move(arrived));
  EXPECT_EQ(s.num_running(), 2);
  EXPECT_FALSE(s.CanAddRunning());  // max_num_seqs 2
  const SchedulerOutput o = Schedule(s);
  ASSERT_EQ(o.chunks.size(), 2u);
  EXPECT_EQ(o.num_decode, 2);
  bool saw = false;
  for (const ScheduledChunk& c : o.chunks) {
    if (c.seq->id != 2) continue;
    saw = true;
    EXPECT_EQ(c.start, 9);
    EXPECT_EQ(c.num_tokens, 1);
    EXPECT_TRUE(c.want_logits);
  }
  EXPECT_TRUE(saw);
  RunStep(s, o);
  for (Sequence* q : s.All()) s.Remove(q);
  EXPECT_EQ(pool->num_free(), 100);
}

}  // namespace
}  // namespace tandem::scheduler
