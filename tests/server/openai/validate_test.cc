// ValidateGenerationRequest on requests built directly, as the gRPC service builds them.
#include "server/openai/validate.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "server/openai/errors.h"
#include "server/openai/request_parser.h"

namespace tandem::server::openai {
namespace {

constexpr int kVocab = 100;

GenerationRequest Completion() {
  GenerationRequest r;
  r.kind = GenerationRequest::Kind::kCompletion;
  r.prompts.push_back(PromptInput{.is_tokens = true, .text = {}, .tokens = {1, 2, 99}});
  return r;
}

GenerationRequest Chat() {
  GenerationRequest r;
  r.kind = GenerationRequest::Kind::kChat;
  r.messages.push_back({"user", "hi"});
  return r;
}

void ExpectInvalid(const GenerationRequest& r, const std::string& param) {
  const absl::Status s = ValidateGenerationRequest(r, kVocab);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(ParamOf(s).value_or("<none>"), param) << s;
}

TEST(Validate, DefaultsAreValid) {
  EXPECT_TRUE(ValidateGenerationRequest(Completion(), kVocab).ok());
  EXPECT_TRUE(ValidateGenerationRequest(Chat(), kVocab).ok());
}

TEST(Validate, BoundaryValuesAreValid) {
  GenerationRequest r = Chat();
  r.max_tokens = 1;
  r.n = kMaxN;
  r.stop = {"a", "b", "c", "d"};
  r.sampling.temperature = 2.0f;
  r.sampling.top_p = 1.0f;
  r.sampling.min_p = 1.0f;
  r.sampling.presence_penalty = -2.0f;
  r.sampling.frequency_penalty = 2.0f;
  r.sampling.logprobs = true;
  r.sampling.top_logprobs = 20;
  r.sampling.stop_token_ids = {0, kVocab - 1};
  r.stream = true;
  r.include_usage = true;
  r.ttft_slo_ms = 0.5;
  EXPECT_TRUE(ValidateGenerationRequest(r, kVocab).ok()) << ValidateGenerationRequest(r, kVocab);
}

TEST(Validate, NonFiniteValues) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  GenerationRequest r = Completion();
  r.sampling.temperature = nan;
  ExpectInvalid(r, "temperature");
  r = Completion();
  r.sampling.top_p = nan;
  ExpectInvalid(r, "top_p");
  r = Completion();
  r.sampling.repetition_penalty = inf;
  ExpectInvalid(r, "repetition_penalty");
  r = Completion();
  r.sampling.presence_penalty = nan;
  ExpectInvalid(r, "presence_penalty");
  r = Completion();
  r.ttft_slo_ms = std::nan("");
  ExpectInvalid(r, "ttft_slo_ms");
  r = Completion();
  r.tpot_slo_ms = -1;
  ExpectInvalid(r, "tpot_slo_ms");
}

TEST(Validate, SloTargets) {
  GenerationRequest r = Chat();
  r.ttft_slo_ms = 0;  // not given: the daemon's default
  r.tpot_slo_ms = 0;
  EXPECT_TRUE(ValidateGenerationRequest(r, kVocab).ok());
  r.ttft_slo_ms = 3600000;  // one hour, the largest allowed
  r.tpot_slo_ms = 0.001;
  EXPECT_TRUE(ValidateGenerationRequest(r, kVocab).ok()) << ValidateGenerationRequest(r, kVocab);
  for (double bad : {-0.5, 3600000.001, 1e300, std::numeric_limits<double>::infinity(),
                     -std::numeric_limits<double>::infinity()}) {
    SCOPED_TRACE(bad);
    r = Chat();
    r.ttft_slo_ms = bad;
    ExpectInvalid(r, "ttft_slo_ms");
    r = Completion();
    r.tpot_slo_ms = bad;
    ExpectInvalid(r, "tpot_slo_ms");
  }
  r = Chat();
  r.tpot_slo_ms = 7200000;
  const absl::Status s = ValidateGenerationRequest(r, kVocab);
  EXPECT_NE(s.message().find("<= 3600000"), std::string::npos) << s;
}

TEST(Validate, KindSpecificRules) {
  GenerationRequest r = Completion();
  r.prompts.clear();
  ExpectInvalid(r, "prompt");
  r = Completion();
  r.prompts[0].tokens.push_back(kVocab);
  ExpectInvalid(r, "prompt");
  r = Completion();
  r.sampling.logprobs = true;
  r.sampling.top_logprobs = 6;  // completions allow 5
  ExpectInvalid(r, "logprobs");
  r = Completion();
  r.sampling.top_logprobs = 2;  // without logprobs
  ExpectInvalid(r, "logprobs");

  r = Chat();
  r.messages.clear();
  ExpectInvalid(r, "messages");
  r = Chat();
  r.messages.push_back({"tool", "x"});
  ExpectInvalid(r, "messages[1].role");
  r = Chat();
  r.echo = true;
  ExpectInvalid(r, "echo");
  r = Chat();
  r.include_usage = true;
  ExpectInvalid(r, "stream_options");
}

TEST(Validate, TooManyPromptTokensIsOutOfRange) {
  GenerationRequest r = Completion();
  r.prompts[0].tokens.assign(kMaxPromptTokens + 1, 1);
  const absl::Status s = ValidateGenerationRequest(r, kVocab);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(HttpStatusFor(s), 413);
  EXPECT_EQ(ParamOf(s), "prompt");
}

TEST(Validate, BadVocabSizeIsInternal) {
  EXPECT_EQ(ValidateGenerationRequest(Completion(), 0).code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace tandem::server::openai
