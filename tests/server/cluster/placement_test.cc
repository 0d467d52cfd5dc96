// The router's placement: by predicted TTFT / TPOT on the workers' latency models, least
// loaded without them, and never onto a worker that is draining, suspected, too small or (for
// decode, as a last resort only) out of free KV.
#include "server/cluster/placement.h"

#include <vector>

#include "gtest/gtest.h"

namespace tandem::server::cluster {
namespace {

namespace v1 = tandem::v1;

WorkerInfo Worker(uint64_t id, v1::WorkerRole role) {
  WorkerInfo w;
  w.id = id;
  w.role = role;
  w.last_seen = absl::Now();
  w.kv_capacity_tokens = 10000;
  w.load.set_kv_blocks_free(100);
  w.load.set_kv_blocks_total(100);
  w.load.set_kv_block_size(16);
  w.load.set_latency_correction(1.0);
  w.load.set_steps(10000);  // a model long checked against measured steps (no exploration)
  return w;
}

// A model whose step costs `base` plus `per_token` per prefill token and `per_seq` per decode
// sequence (seconds).
void SetModel(WorkerInfo& w, double base, double per_token, double per_seq) {
  w.load.clear_latency_coefficients();
  for (double c : {base, per_token, 0.0, per_seq, 0.0}) w.load.add_latency_coefficients(c);
}

std::vector<const WorkerInfo*> All(const std::vector<WorkerInfo>& ws) {
  std::vector<const WorkerInfo*> out;
  for (const WorkerInfo& w : ws) out.push_back(&w);
  return out;
}

TEST(PlacementTest, PrefillGoesToTheLeastPredictedTtft) {
  std::vector<WorkerInfo> ws = {Worker(1, v1::WORKER_ROLE_PREFILL),
                                Worker(2, v1::WORKER_ROLE_PREFILL),
                                Worker(3, v1::WORKER_ROLE_DECODE)};
  SetModel(ws[0], 0.001, 0.002, 0.001);   // a slow device
  SetModel(ws[1], 0.001, 0.0005, 0.001);  // four times faster per token
  SetModel(ws[2], 0.001, 0.0005, 0.001);
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_PREFILL, 200, 300)->id, 2u);
  // The fast one has 1,000 prompt tokens queued: 1,200 x 0.5 ms > 200 x 2 ms.
  ws[1].prefill_tokens = 1000;
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_PREFILL, 200, 300)->id, 1u);
  EXPECT_NEAR(PredictTtftSeconds(ws[1], 200), 0.001 + 1200 * 0.0005, 1e-9);
  // Its online correction counts too.
  ws[1].prefill_tokens = 0;
  ws[1].load.set_latency_correction(5);
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_PREFILL, 200, 300)->id, 1u);
}

TEST(PlacementTest, DecodeGoesToTheLeastPredictedTpotWithRoomInItsKv) {
  std::vector<WorkerInfo> ws = {Worker(1, v1::WORKER_ROLE_DECODE),
                                Worker(2, v1::WORKER_ROLE_DECODE)};
  SetModel(ws[0], 0.002, 0.001, 0.001);
  SetModel(ws[1], 0.002, 0.001, 0.001);
  ws[0].in_flight = 8;
  ws[1].in_flight = 2;
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 100, 200)->id, 2u);
  EXPECT_NEAR(PredictTpotSeconds(ws[1], 200), 0.002 + 3 * 0.001, 1e-9);
  // Full (as of its heartbeat): the busier one with room wins.
  ws[1].load.set_kv_blocks_free(5);  // 80 tokens < 200
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 100, 200)->id, 1u);
  // Both full: still placed (it waits for room there), on the lighter one.
  ws[0].load.set_kv_blocks_free(5);
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 100, 200)->id, 2u);
}

// Two decode workers of one kind whose profiles came out apart (measured side by side on a
// loaded host: a step of 6.3 ms + 1.6 ms/seq against 15.7 ms + 1.4 ms/seq). Predictions alone
// would put a burst of 6 all on the first; within kPredictionSlack the less loaded one gets
// its share.
TEST(PlacementTest, NearlyEqualPredictionsGoToTheLessLoaded) {
  std::vector<WorkerInfo> ws = {Worker(1, v1::WORKER_ROLE_DECODE),
                                Worker(2, v1::WORKER_ROLE_DECODE)};
  SetModel(ws[0], 0.0063, 0.001, 0.0016);
  SetModel(ws[1], 0.0157, 0.001, 0.0014);
  int placed[2] = {0, 0};
  for (int i = 0; i < 6; ++i) {
    const WorkerInfo* w = PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 10, 40);
    ASSERT_NE(w, nullptr);
    ++placed[w->id - 1];
    ++ws[w->id - 1].in_flight;
  }
  EXPECT_GE(placed[1], 1) << placed[0] << " / " << placed[1];
  EXPECT_GT(placed[0], placed[1]);  // the faster-looking one still takes more
  // Outside the slack, the prediction decides, however loaded: 10 ms + 3 x 1 ms against 30 ms.
  ws[0].in_flight = 2;
  ws[1].in_flight = 0;
  SetModel(ws[0], 0.010, 0.001, 0.001);
  SetModel(ws[1], 0.029, 0.001, 0.001);
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 10, 40)->id, 1u);
  // Inside it (13 ms against 13.5 ms), the less loaded.
  SetModel(ws[1], 0.0125, 0.001, 0.001);
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 10, 40)->id, 2u);
}

// A decode worker profiled while another worker loaded the host: its model came out three
// times too slow, so prediction alone never gives it a sequence and its correction never
// learns. While it has run fewer than kProvenSteps steps, it takes a sequence whenever the
// predicted best is busy and it is idle (with room); once its steps are counted, the
// prediction (with the correction those steps taught) decides again.
TEST(PlacementTest, AnIdleWorkerWhoseModelIsUncheckedIsExplored) {
  std::vector<WorkerInfo> ws = {Worker(1, v1::WORKER_ROLE_DECODE),
                                Worker(2, v1::WORKER_ROLE_DECODE)};
  SetModel(ws[0], 0.006, 0.001, 0.0015);
  SetModel(ws[1], 0.018, 0.003, 0.0045);  // profiled under load
  ws[0].load.set_steps(0);
  ws[1].load.set_steps(0);
  // Both idle: the prediction decides.
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 10, 40)->id, 1u);
  ws[0].in_flight = 1;
  // The best is busy: the idle, unchecked one is explored.
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 10, 40)->id, 2u);
  // Not while it is busy itself (its own sequences will check the model)...
  ws[1].load.set_running(1);
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 10, 40)->id, 1u);
  ws[1].load.set_running(0);
  // ...nor without room for the sequence...
  ws[1].load.set_kv_blocks_free(1);  // 16 tokens < 40
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 10, 40)->id, 1u);
  ws[1].load.set_kv_blocks_free(100);
  // ...nor once its model is checked: then its correction counts. Uncorrected, still 3x.
  ws[1].load.set_steps(kProvenSteps);
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 10, 40)->id, 1u);
  // Corrected by what its steps measured (as fast as the other), the less loaded again.
  ws[1].load.set_latency_correction(1.0 / 3);
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 10, 40)->id, 2u);
  // Prefill workers alike.
  std::vector<WorkerInfo> ps = {Worker(3, v1::WORKER_ROLE_PREFILL),
                                Worker(4, v1::WORKER_ROLE_PREFILL)};
  SetModel(ps[0], 0.001, 0.0005, 0.001);
  SetModel(ps[1], 0.003, 0.0015, 0.003);
  ps[1].load.set_steps(3);
  ps[0].in_flight = 1;
  EXPECT_EQ(PickWorker(All(ps), v1::WORKER_ROLE_PREFILL, 200, 300)->id, 4u);
  ps[1].load.set_steps(kProvenSteps);
  EXPECT_EQ(PickWorker(All(ps), v1::WORKER_ROLE_PREFILL, 200, 300)->id, 3u);
}

// A prompt whose prefix one prefill worker's cache holds (as the router predicts it): that
// worker's predicted TTFT counts only what the cache lacks, attending to the cached part, so it
// wins until its queue costs more than the prefix saves.
TEST(PlacementTest, PrefillGoesWhereThePromptsPrefixIsCachedUnlessItsQueueCostsMore) {
  std::vector<WorkerInfo> ws = {Worker(1, v1::WORKER_ROLE_PREFILL),
                                Worker(2, v1::WORKER_ROLE_PREFILL)};
  SetModel(ws[0], 0.001, 0.0005, 0.001);
  SetModel(ws[1], 0.001, 0.0005, 0.001);
  const std::vector<int> cached = {0, 960};
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_PREFILL, 1000, 1100, cached)->id, 2u);
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_PREFILL, 1000, 1100)->id, 1u);  // none known
  // Busier (more sequences in flight) but far sooner: still the cached one.
  ws[1].in_flight = 3;
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_PREFILL, 1000, 1100, cached)->id, 2u);
  // 2,000 prompt tokens queued there: 2,040 x 0.5 ms > 1,000 x 0.5 ms.
  ws[1].prefill_tokens = 2000;
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_PREFILL, 1000, 1100, cached)->id, 1u);
  // The uncached tokens attend to the cached ones: the pairs term sees them.
  ws[1].prefill_tokens = 0;
  ws[1].load.clear_latency_coefficients();
  for (double c : {0.001, 0.0005, 1e-6, 0.001, 0.0}) ws[1].load.add_latency_coefficients(c);
  EXPECT_NEAR(PredictTtftSeconds(ws[1], 1000, 960), 0.001 + 40 * 0.0005 + 1e-6 * (40 * 960 + 820),
              1e-9);
  EXPECT_NEAR(PredictTtftSeconds(ws[1], 1000, 5000), PredictTtftSeconds(ws[1], 1000, 1000), 1e-12);
  // Without models, equal loads: the more cached prefix before the more free KV.
  std::vector<WorkerInfo> bare = {Worker(3, v1::WORKER_ROLE_PREFILL),
                                  Worker(4, v1::WORKER_ROLE_PREFILL)};
  bare[1].load.set_kv_blocks_free(10);
  EXPECT_EQ(PickWorker(All(bare), v1::WORKER_ROLE_PREFILL, 100, 200)->id, 3u);
  EXPECT_EQ(PickWorker(All(bare), v1::WORKER_ROLE_PREFILL, 100, 200, std::vector<int>{0, 64})->id,
            4u);
}

// Exploration never takes a prompt away from the worker that holds its prefix.
TEST(PlacementTest, ExplorationKeepsACachedPrefix) {
  std::vector<WorkerInfo> ps = {Worker(1, v1::WORKER_ROLE_PREFILL),
                                Worker(2, v1::WORKER_ROLE_PREFILL)};
  SetModel(ps[0], 0.001, 0.0005, 0.001);
  SetModel(ps[1], 0.003, 0.0015, 0.003);  // looks slower (profiled under load)
  ps[1].load.set_steps(0);                // unchecked, idle
  ps[0].in_flight = 1;                    // the choice is busy
  EXPECT_EQ(PickWorker(All(ps), v1::WORKER_ROLE_PREFILL, 400, 500)->id, 2u);
  EXPECT_EQ(PickWorker(All(ps), v1::WORKER_ROLE_PREFILL, 400, 500, std::vector<int>{384, 0})->id,
            1u);
  // An unchecked worker that holds as much is still explored.
  EXPECT_EQ(PickWorker(All(ps), v1::WORKER_ROLE_PREFILL, 400, 500, std::vector<int>{384, 384})->id,
            2u);
}

TEST(PlacementTest, LeastLoadedWhileAnyWorkerHasNoModel) {
  std::vector<WorkerInfo> ws = {Worker(1, v1::WORKER_ROLE_PREFILL),
                                Worker(2, v1::WORKER_ROLE_PREFILL)};
  SetModel(ws[0], 0.001, 0.0001, 0.001);  // fast, but worker 2 has no model to compare with
  ws[0].in_flight = 3;
  ws[1].in_flight = 1;
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_PREFILL, 10, 20)->id, 2u);
  EXPECT_EQ(PredictTtftSeconds(ws[1], 10), -1);
  // Equal loads: the most free KV.
  ws[0].in_flight = 1;
  ws[0].load.set_kv_blocks_free(90);
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_PREFILL, 10, 20)->id, 2u);
}

TEST(PlacementTest, SkipsDrainingSuspectedTooSmallAndOtherRoles) {
  std::vector<WorkerInfo> ws = {
      Worker(1, v1::WORKER_ROLE_DECODE), Worker(2, v1::WORKER_ROLE_DECODE),
      Worker(3, v1::WORKER_ROLE_DECODE), Worker(4, v1::WORKER_ROLE_PREFILL)};
  ws[0].load.set_draining(true);
  ws[1].suspect_since = ws[1].last_seen + absl::Milliseconds(1);  // failed after its heartbeat
  ws[2].kv_capacity_tokens = 100;
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 50, 120), nullptr);
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 50, 90)->id, 3u);
  // A heartbeat after the failure clears the suspicion.
  ws[1].last_seen = ws[1].suspect_since + absl::Milliseconds(1);
  EXPECT_EQ(PickWorker(All(ws), v1::WORKER_ROLE_DECODE, 50, 120)->id, 2u);
  EXPECT_EQ(PickWorker({}, v1::WORKER_ROLE_PREFILL, 1, 2), nullptr);
}

}  // namespace
}  // namespace tandem::server::cluster
