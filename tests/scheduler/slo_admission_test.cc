// SLO admission on hand-built load snapshots, with a scripted latency model whose predictions
// are exact in binary, so the boundary cases are exact.
#include "scheduler/slo_admission.h"

#include <vector>

#include "common/retry_after.h"
#include "gtest/gtest.h"

namespace tandem::scheduler {
namespace {

// 7.8125 ms a step, 0.9765625 ms a prompt token, 1.953125 ms a decode token (powers of two).
constexpr double kStep = 1.0 / 128, kPrefillToken = 1.0 / 1024, kDecodeSeq = 1.0 / 512;
const absl::Time kNow = absl::FromUnixSeconds(1000000);

// margin 1: a candidate is admitted exactly when its first token is predicted by its deadline.
LoadSnapshot Idle(int max_num_seqs = 64, int max_batch_tokens = 512, double margin = 1.0) {
  LoadSnapshot s;
  s.step_end = kNow;
  s.max_num_seqs = max_num_seqs;
  s.max_batch_tokens = max_batch_tokens;
  s.budget_margin = margin;
  s.model = LatencyModel({kStep, kPrefillToken, 0, kDecodeSeq, 0});
  return s;
}

PrefillWork Request(uint64_t id, int prompt, absl::Duration ttft,
                    absl::Duration tpot = absl::InfiniteDuration(), int generate = 0) {
  PrefillWork w;
  w.id = id;
  w.remaining = prompt;
  w.generate = generate;
  w.deadline = kNow + ttft;
  w.tpot_slo = tpot;
  w.slo = true;
  return w;
}

TEST(SloAdmissionTest, AdmitsExactlyAtTheBoundary) {
  // Alone on an idle instance, 128 prompt tokens take one step: 7.8125 + 125 = 132.8125 ms.
  const LoadSnapshot idle = Idle();
  const absl::Duration ttft = absl::Microseconds(132812.5);
  std::vector<PrefillWork> c = {Request(1, 128, ttft)};
  AdmissionVerdict v = CheckAdmission(idle, c, kNow);
  EXPECT_TRUE(v.admit);
  EXPECT_EQ(v.predicted_ttft, ttft);
  c = {Request(1, 128, ttft - absl::Nanoseconds(1))};
  v = CheckAdmission(idle, c, kNow);
  EXPECT_FALSE(v.admit);
  EXPECT_STREQ(v.reason, kRejectTtft);
  EXPECT_EQ(v.predicted_ttft, ttft);
}

TEST(SloAdmissionTest, KeepsTheMarginOfTheCandidatesTtft) {
  // With margin 0.5 the same 132.8125 ms prediction needs a TTFT SLO of twice that.
  const LoadSnapshot idle = Idle(64, 512, 0.5);
  const absl::Duration ttft = absl::Microseconds(2 * 132812.5);
  std::vector<PrefillWork> c = {Request(1, 128, ttft)};
  EXPECT_TRUE(CheckAdmission(idle, c, kNow).admit);
  c = {Request(1, 128, ttft - absl::Nanoseconds(2))};
  const AdmissionVerdict v = CheckAdmission(idle, c, kNow);
  EXPECT_FALSE(v.admit);
  EXPECT_EQ(v.predicted_ttft, absl::Microseconds(132812.5));
}

TEST(SloAdmissionTest, CountsTheStepInFlight) {
  LoadSnapshot s = Idle();
  s.step_end = kNow + absl::Milliseconds(20);
  const absl::Duration ttft = absl::Microseconds(132812.5) + absl::Milliseconds(20);
  std::vector<PrefillWork> c = {Request(1, 128, ttft)};
  EXPECT_TRUE(CheckAdmission(s, c, kNow).admit);
  c = {Request(1, 128, ttft - absl::Nanoseconds(1))};
  EXPECT_FALSE(CheckAdmission(s, c, kNow).admit);
}

TEST(SloAdmissionTest, RetryAfterIsThePredictedLateness) {
  // Queued ahead (earlier deadline): 500 prompt tokens. Steps hold 256 tokens, so:
  //   step 1: 256 of A                          7.8125 + 250      = 257.8125 ms
  //   step 2: 244 of A, 12 of the candidate     7.8125 + 250      = 515.625
  //   step 3: 88 of the candidate               7.8125 + 85.9375  = 609.375
  LoadSnapshot s = Idle(64, 256);
  s.prefilling.push_back(Request(1, 500, absl::Milliseconds(300)));
  std::vector<PrefillWork> c = {Request(2, 100, absl::Milliseconds(400))};
  AdmissionVerdict v = CheckAdmission(s, c, kNow);
  EXPECT_FALSE(v.admit);
  EXPECT_STREQ(v.reason, kRejectTtft);
  EXPECT_EQ(v.predicted_ttft, absl::Microseconds(609375));
  EXPECT_EQ(v.retry_after, absl::Microseconds(209375));
  // A few milliseconds late: the retry delay is never below 100 ms.
  c = {Request(2, 100, absl::Milliseconds(605))};
  v = CheckAdmission(s, c, kNow);
  EXPECT_FALSE(v.admit);
  EXPECT_EQ(v.retry_after, absl::Milliseconds(100));
  // The status a rejection becomes: 429, the prediction in words, the delay attached.
  const absl::Status st = RejectionStatus(v, absl::Milliseconds(605));
  EXPECT_TRUE(absl::IsResourceExhausted(st));
  EXPECT_NE(st.message().find("predicted time to first token 609 ms"), std::string::npos)
      << st.message();
  EXPECT_NE(st.message().find("605 ms"), std::string::npos) << st.message();
  EXPECT_EQ(RetryAfterOf(st), absl::Milliseconds(100));
  EXPECT_EQ(RejectReasonOf(st), kRejectTtft);
  EXPECT_EQ(RetryAfterHeaderSeconds(absl::Milliseconds(100)), 1);
  EXPECT_EQ(RetryAfterHeaderSeconds(absl::Milliseconds(2001)), 3);
}

TEST(SloAdmissionTest, RefusesWhatWouldMakeAQueuedRequestLate) {
  // Steps hold 262 tokens. A (queued, due in 300 ms) alone takes one step of 263.7 ms. A
  // candidate due in 280 ms goes first in deadline order: step 1 runs its 64 tokens and 198
  // of A (263.7 ms, the candidate is on time), step 2 the last 64 of A (70.3 ms): A would be
  // late. Without the candidate A is on time, so the candidate is refused.
  LoadSnapshot s = Idle(64, 262);
  s.prefilling.push_back(Request(1, 262, absl::Milliseconds(300)));
  std::vector<PrefillWork> c = {Request(2, 64, absl::Milliseconds(280))};
  AdmissionVerdict v = CheckAdmission(s, c, kNow);
  EXPECT_FALSE(v.admit);
  EXPECT_STREQ(v.reason, kRejectQueued);
  EXPECT_EQ(v.predicted_ttft, absl::Microseconds(263671.875));
  EXPECT_EQ(v.retry_after, absl::Milliseconds(100));  // 34 ms late, raised to the minimum
  // A request already doomed without the candidate does not block it (A due in 100 ms now
  // goes first and is late either way; the candidate, due in 400 ms, follows on time).
  s.prefilling[0].deadline = kNow + absl::Milliseconds(100);
  c = {Request(2, 64, absl::Milliseconds(400))};
  v = CheckAdmission(s, c, kNow);
  EXPECT_TRUE(v.admit) << v.reason;
  // Best-effort queued work never blocks SLO work.
  s.prefilling[0].deadline = kNow + absl::Milliseconds(300);
  s.prefilling[0].slo = false;
  c = {Request(2, 64, absl::Milliseconds(280))};
  EXPECT_TRUE(CheckAdmission(s, c, kNow).admit);
}

TEST(SloAdmissionTest, RefusesWhenDecodeCapacityIsFull) {
  // Eight sequences decode under a 50 ms TPOT (budget 25 ms at margin 0.5: 7.8125 + 8 *
  // 1.953125 = 23.4). A ninth with the same TPOT would not fit: it would wait until one
  // finishes, here after 100 tokens (2.3 s), past its 1 s TTFT.
  LoadSnapshot s = Idle(64, 512, 0.5);
  for (int i = 0; i < 8; ++i) s.decoding.push_back({64, 100, absl::Milliseconds(50)});
  std::vector<PrefillWork> c = {Request(9, 16, absl::Seconds(1), absl::Milliseconds(50), 10)};
  AdmissionVerdict v = CheckAdmission(s, c, kNow);
  EXPECT_FALSE(v.admit);
  EXPECT_STREQ(v.reason, kRejectTpot);
  // With a looser TPOT for everyone there is room.
  for (DecodeWork& d : s.decoding) d.tpot_slo = absl::Milliseconds(100);
  c = {Request(9, 16, absl::Seconds(1), absl::Milliseconds(100), 10)};
  v = CheckAdmission(s, c, kNow);
  EXPECT_TRUE(v.admit) << v.reason;
  // And once they finish sooner, it is admitted and waits only for that.
  for (DecodeWork& d : s.decoding) {
    d.tpot_slo = absl::Milliseconds(50);
    d.remaining = 5;
  }
  c = {Request(9, 16, absl::Seconds(1), absl::Milliseconds(50), 10)};
  v = CheckAdmission(s, c, kNow);
  EXPECT_TRUE(v.admit) << v.reason;
  EXPECT_GT(v.predicted_ttft, absl::Milliseconds(5 * 23));
}

TEST(SloAdmissionTest, BestEffortIsAlwaysAdmitted) {
  LoadSnapshot s = Idle(64, 256);
  s.prefilling.push_back(Request(1, 5000, absl::Milliseconds(100)));
  PrefillWork be = Request(2, 100, absl::Seconds(5));
  be.slo = false;
  std::vector<PrefillWork> c = {be};
  AdmissionVerdict v = CheckAdmission(s, c, kNow);
  EXPECT_TRUE(v.admit);
  EXPECT_GT(v.predicted_ttft, absl::ZeroDuration());
}

TEST(SloAdmissionTest, AllChoicesOfARequestAreJudgedTogether) {
  // n = 2: one prompt of 128 takes 132.8 ms, two take one step of 256 tokens: 257.8 ms.
  const LoadSnapshot idle = Idle();
  std::vector<PrefillWork> c = {Request(1, 128, absl::Milliseconds(200)),
                                Request(2, 128, absl::Milliseconds(200))};
  AdmissionVerdict v = CheckAdmission(idle, c, kNow);
  EXPECT_FALSE(v.admit);
  EXPECT_EQ(v.predicted_ttft, absl::Microseconds(257812.5));
}

TEST(SloAdmissionTest, WithoutAModelEverythingIsAdmitted) {
  LoadSnapshot s = Idle();
  s.model = LatencyModel();
  std::vector<PrefillWork> c = {Request(1, 100000, absl::Milliseconds(1))};
  EXPECT_TRUE(CheckAdmission(s, c, kNow).admit);
}

TEST(SloAdmissionTest, SimulationRetiresDecodersAndAdmitsInDeadlineOrder) {
  // Decoders that finish free max_num_seqs slots: with max_num_seqs 2 and two decoders left
  // with 3 tokens each, a queued prompt starts only after they are gone.
  LoadSnapshot s = Idle(2, 512);
  s.decoding.push_back({10, 3});
  s.decoding.push_back({10, 3});
  std::vector<PrefillWork> work = {Request(1, 10, absl::Seconds(1))};
  SimulationResult r = SimulateSteps(s, work, kNow, absl::Seconds(10));
  // Three decode steps of 7.8125 + 2 * 1.953125 = 11.71875 ms, then 7.8125 + 9.765625.
  EXPECT_EQ(r.first_token[0], absl::Microseconds(3 * 11718.75 + 17578.125));
  EXPECT_EQ(r.steps, 4);
}

TEST(SloAdmissionTest, ParsesModes) {
  EXPECT_EQ(*ParseAdmissionMode("reject"), AdmissionMode::kReject);
  EXPECT_EQ(*ParseAdmissionMode("queue"), AdmissionMode::kQueue);
  EXPECT_EQ(*ParseAdmissionMode("off"), AdmissionMode::kOff);
  EXPECT_FALSE(ParseAdmissionMode("drop").ok());
  EXPECT_STREQ(AdmissionModeName(AdmissionMode::kQueue), "queue");
}

}  // namespace
}  // namespace tandem::scheduler
