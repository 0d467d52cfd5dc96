// The cluster protocol's conversions: a request, its tokens and its end cross unchanged, and so
// do a failure's code and payloads (a worker's 429 keeps its Retry-After at the router).
#include "server/cluster/cluster_convert.h"

#include "common/retry_after.h"
#include "gtest/gtest.h"

namespace tandem::server::cluster {
namespace {

TEST(ClusterConvertTest, RequestRoundTrips) {
  scheduler::SequenceRequest r;
  r.prompt = {5, 6, 7};
  r.max_tokens = 9;
  r.sampling.temperature = 0.7f;
  r.sampling.top_k = 40;
  r.sampling.top_p = 0.9f;
  r.sampling.min_p = 0.05f;
  r.sampling.repetition_penalty = 1.1f;
  r.sampling.presence_penalty = 0.3f;
  r.sampling.frequency_penalty = -0.2f;
  r.sampling.seed = 123;
  r.sampling.has_seed = true;
  r.sampling.logprobs = true;
  r.sampling.top_logprobs = 3;
  r.sampling.stop_token_ids = {11, 12};
  r.sampling.ignore_eos = true;
  r.ttft_slo = absl::Milliseconds(800);
  r.arrival = absl::Now() - absl::Milliseconds(30);
  tandem::v1::PhaseRequest p;
  ToPhaseRequest(r, 77, &p);
  scheduler::SequenceRequest b = FromPhaseRequest(p, nullptr);
  EXPECT_EQ(b.id, 77u);
  EXPECT_EQ(b.prompt, r.prompt);
  EXPECT_EQ(b.max_tokens, 9);
  EXPECT_EQ(b.sampling.temperature, 0.7f);
  EXPECT_EQ(b.sampling.top_k, 40);
  EXPECT_EQ(b.sampling.top_p, 0.9f);
  EXPECT_EQ(b.sampling.min_p, 0.05f);
  EXPECT_EQ(b.sampling.repetition_penalty, 1.1f);
  EXPECT_EQ(b.sampling.presence_penalty, 0.3f);
  EXPECT_EQ(b.sampling.frequency_penalty, -0.2f);
  EXPECT_EQ(b.sampling.seed, 123u);
  EXPECT_TRUE(b.sampling.has_seed);
  EXPECT_TRUE(b.sampling.logprobs);
  EXPECT_EQ(b.sampling.top_logprobs, 3);
  EXPECT_EQ(b.sampling.stop_token_ids, (std::vector<int32_t>{11, 12}));
  EXPECT_TRUE(b.sampling.ignore_eos);
  EXPECT_EQ(b.ttft_slo, absl::Milliseconds(800));
  EXPECT_EQ(b.tpot_slo, absl::InfiniteDuration());  // none
  EXPECT_LE(absl::AbsDuration(b.arrival - r.arrival), absl::Milliseconds(1));
}

TEST(ClusterConvertTest, TokensAndEndsRoundTrip) {
  model::SampleResult r;
  r.token = 42;
  r.logprob = -0.5f;
  r.num_top_logprobs = 2;
  r.top_logprobs[0] = {42, -0.5f};
  r.top_logprobs[1] = {7, -1.5f};
  tandem::v1::PhaseToken t;
  ToPhaseToken(r, &t);
  const model::SampleResult b = FromPhaseToken(t);
  EXPECT_EQ(b.token, 42);
  EXPECT_EQ(b.logprob, -0.5f);
  ASSERT_EQ(b.num_top_logprobs, 2);
  EXPECT_EQ(b.top_logprobs[1].token, 7);
  for (auto end : {scheduler::SequenceEnd::kStopToken, scheduler::SequenceEnd::kLength,
                   scheduler::SequenceEnd::kCancelled, scheduler::SequenceEnd::kFailed,
                   scheduler::SequenceEnd::kRejected}) {
    EXPECT_EQ(FromPhaseEnd(ToPhaseEnd(end)), end);
  }
  EXPECT_EQ(FromPhaseEnd(tandem::v1::PhaseEvent::END_HANDED_OFF), scheduler::SequenceEnd::kFailed);
}

TEST(ClusterConvertTest, StatusCodesCrossUnchanged) {
  for (auto code : {absl::StatusCode::kInvalidArgument, absl::StatusCode::kResourceExhausted,
                    absl::StatusCode::kUnavailable, absl::StatusCode::kOutOfRange}) {
    const absl::Status s(code, "why");
    const absl::Status back = FromGrpc(ToGrpc(s));
    EXPECT_EQ(back.code(), code);
    EXPECT_EQ(back.message(), "why");
  }
  EXPECT_TRUE(FromGrpc(ToGrpc(absl::OkStatus())).ok());
}

}  // namespace
}  // namespace tandem::server::cluster
