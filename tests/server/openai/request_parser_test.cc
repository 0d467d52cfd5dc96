// Happy paths of the OpenAI request parsers: every field lands where it should.
#include "server/openai/request_parser.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "server/openai/errors.h"
#include "server/openai/validate.h"

namespace tandem::server::openai {
namespace {

using ::testing::ElementsAre;

constexpr int kVocab = 1000;

GenerationRequest Completion(const std::string& body) {
  absl::StatusOr<GenerationRequest> r = ParseCompletionRequest(body);
  EXPECT_TRUE(r.ok()) << r.status() << " for " << body;
  if (!r.ok()) return {};
  EXPECT_TRUE(ValidateGenerationRequest(*r, kVocab).ok())
      << ValidateGenerationRequest(*r, kVocab) << " for " << body;
  return *r;
}

GenerationRequest Chat(const std::string& body) {
  absl::StatusOr<GenerationRequest> r = ParseChatRequest(body);
  EXPECT_TRUE(r.ok()) << r.status() << " for " << body;
  if (!r.ok()) return {};
  EXPECT_TRUE(ValidateGenerationRequest(*r, kVocab).ok())
      << ValidateGenerationRequest(*r, kVocab) << " for " << body;
  return *r;
}

TEST(CompletionParser, MinimalRequestHasDefaults) {
  GenerationRequest r = Completion(R"({"model":"m","prompt":"Hello"})");
  EXPECT_EQ(r.kind, GenerationRequest::Kind::kCompletion);
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_FALSE(r.prompts[0].is_tokens);
  EXPECT_EQ(r.prompts[0].text, "Hello");
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_EQ(r.n, 1);
  EXPECT_EQ(r.sampling.temperature, 1.0f);
  EXPECT_EQ(r.sampling.top_p, 1.0f);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_FALSE(r.sampling.has_seed);
  EXPECT_FALSE(r.sampling.logprobs);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
  EXPECT_FALSE(r.echo);
  EXPECT_TRUE(r.stop.empty());
  EXPECT_EQ(r.ttft_slo_ms, 0);
  EXPECT_EQ(r.tpot_slo_ms, 0);
}

TEST(CompletionParser, ModelMayBeAbsent) {
  EXPECT_EQ(Completion(R"({"prompt":"x"})").model, "");
  EXPECT_EQ(Completion(R"({"prompt":"x","model":null})").model, "");
}

TEST(CompletionParser, PromptShapes) {
  GenerationRequest strings = Completion(R"({"prompt":["a","b","c"]})");
  ASSERT_EQ(strings.prompts.size(), 3u);
  EXPECT_EQ(strings.prompts[2].text, "c");

  GenerationRequest ids = Completion(R"({"prompt":[1,2,3]})");
  ASSERT_EQ(ids.prompts.size(), 1u);
  EXPECT_TRUE(ids.prompts[0].is_tokens);
  EXPECT_THAT(ids.prompts[0].tokens, ElementsAre(1, 2, 3));

  GenerationRequest lists = Completion(R"({"prompt":[[5],[6,7.0]]})");
  ASSERT_EQ(lists.prompts.size(), 2u);
  EXPECT_THAT(lists.prompts[0].tokens, ElementsAre(5));
  EXPECT_THAT(lists.prompts[1].tokens, ElementsAre(6, 7));

  GenerationRequest unicode = Completion(R"({"prompt":"h\u00e9llo \ud83d\ude00 ✓"})");
  EXPECT_EQ(unicode.prompts[0].text, "h\xc3\xa9llo \xf0\x9f\x98\x80 \xe2\x9c\x93");
}

TEST(CompletionParser, EveryField) {
  GenerationRequest r = Completion(R"({
    "model": "smol", "prompt": "p", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
    "top_k": 40, "min_p": 0.05, "n": 3, "stop": ["\n", "END"], "seed": 42,
    "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1,
    "logprobs": 3, "echo": true, "user": "u-1", "ignore_eos": true, "stream": true,
    "stream_options": {"include_usage": true}, "ttft_slo_ms": 250, "tpot_slo_ms": 40.5,
    "stop_token_ids": [2, 3], "best_of": 3, "logit_bias": {}, "suffix": null,
    "metadata": {"anything": [1, 2]}, "service_tier": "auto"})");
  EXPECT_EQ(r.model, "smol");
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.05f);
  EXPECT_EQ(r.n, 3);
  EXPECT_THAT(r.stop, ElementsAre("\n", "END"));
  EXPECT_TRUE(r.sampling.has_seed);
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(r.sampling.repetition_penalty, 1.1f);
  EXPECT_TRUE(r.sampling.logprobs);
  EXPECT_EQ(r.sampling.top_logprobs, 3);
  EXPECT_TRUE(r.echo);
  EXPECT_EQ(r.user, "u-1");
  EXPECT_TRUE(r.sampling.ignore_eos);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.ttft_slo_ms, 250);
  EXPECT_EQ(r.tpot_slo_ms, 40.5);
  EXPECT_THAT(r.sampling.stop_token_ids, ElementsAre(2, 3));
}

TEST(CompletionParser, LogprobsZeroMeansChosenTokenOnly) {
  GenerationRequest r = Completion(R"({"prompt":"p","logprobs":0})");
  EXPECT_TRUE(r.sampling.logprobs);
  EXPECT_EQ(r.sampling.top_logprobs, 0);
  EXPECT_FALSE(Completion(R"({"prompt":"p","logprobs":null})").sampling.logprobs);
}

TEST(CompletionParser, StopAsString) {
  EXPECT_THAT(Completion(R"({"prompt":"p","stop":"###"})").stop, ElementsAre("###"));
  EXPECT_TRUE(Completion(R"({"prompt":"p","stop":[]})").stop.empty());
}

TEST(CompletionParser, TopKMinusOneAndZeroAreOff) {
  EXPECT_EQ(Completion(R"({"prompt":"p","top_k":-1})").sampling.top_k, 0);
  EXPECT_EQ(Completion(R"({"prompt":"p","top_k":0})").sampling.top_k, 0);
}

TEST(CompletionParser, MaxCompletionTokensWins) {
  EXPECT_EQ(Completion(R"({"prompt":"p","max_completion_tokens":9})").max_tokens, 9);
  EXPECT_EQ(Completion(R"({"prompt":"p","max_tokens":4,"max_completion_tokens":9})").max_tokens, 9);
  EXPECT_EQ(Completion(R"({"prompt":"p","max_tokens":4,"max_completion_tokens":null})").max_tokens,
            4);
}

TEST(CompletionParser, SeedRange) {
  EXPECT_EQ(Completion(R"({"prompt":"p","seed":18446744073709551615})").sampling.seed,
            18446744073709551615ull);
  EXPECT_EQ(Completion(R"({"prompt":"p","seed":-1})").sampling.seed, 18446744073709551615ull);
  EXPECT_EQ(Completion(R"({"prompt":"p","seed":0})").sampling.seed, 0u);
  EXPECT_EQ(Completion(R"({"prompt":"p","seed":1e3})").sampling.seed, 1000u);
}

TEST(CompletionParser, NullsMeanUnset) {
  GenerationRequest r = Completion(R"({"prompt":"p","max_tokens":null,"temperature":null,
    "top_p":null,"top_k":null,"min_p":null,"n":null,"stop":null,"seed":null,
    "presence_penalty":null,"frequency_penalty":null,"repetition_penalty":null,"logprobs":null,
    "echo":null,"user":null,"ignore_eos":null,"stream":null,"stream_options":null,
    "ttft_slo_ms":null,"tpot_slo_ms":null,"tools":null,"response_format":null,"best_of":null})");
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_EQ(r.n, 1);
  EXPECT_EQ(r.sampling.temperature, 1.0f);
  EXPECT_FALSE(r.sampling.has_seed);
  EXPECT_FALSE(r.stream);
}

TEST(CompletionParser, OffValuesOfUnsupportedFieldsAreAccepted) {
  Completion(R"({"prompt":"p","tools":[],"tool_choice":"none","functions":[],
    "function_call":"none","response_format":{"type":"text"},"logit_bias":{},"suffix":"",
    "modalities":["text"],"store":false,"use_beam_search":false,"min_tokens":0,
    "include_stop_str_in_output":false})");
}

TEST(CompletionParser, DuplicateKeyLastWins) {
  EXPECT_EQ(Completion(R"({"prompt":"p","n":2,"n":3})").n, 3);
}

TEST(ChatParser, MessagesAndRoles) {
  GenerationRequest r = Chat(R"({"model":"m","messages":[
    {"role":"system","content":"be brief"},
    {"role":"developer","content":"dev"},
    {"role":"user","content":"hi","name":"alice"},
    {"role":"assistant","content":""},
    {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]})");
  EXPECT_EQ(r.kind, GenerationRequest::Kind::kChat);
  ASSERT_EQ(r.messages.size(), 5u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[0].content, "be brief");
  EXPECT_EQ(r.messages[1].role, "system");
  EXPECT_EQ(r.messages[2].role, "user");
  EXPECT_EQ(r.messages[3].role, "assistant");
  EXPECT_EQ(r.messages[3].content, "");
  EXPECT_EQ(r.messages[4].content, "a\nb");
  EXPECT_TRUE(r.prompts.empty());
}

TEST(ChatParser, EveryField) {
  GenerationRequest r = Chat(R"({"model":"m","messages":[{"role":"user","content":"q"}],
    "max_completion_tokens":11,"temperature":0,"top_p":0.5,"top_k":-1,"min_p":0.1,"n":2,
    "stop":"x","seed":7,"presence_penalty":2,"frequency_penalty":-2,"repetition_penalty":0.9,
    "logprobs":true,"top_logprobs":20,"user":"u","ignore_eos":false,"stream":true,
    "stream_options":{"include_usage":false},"ttft_slo_ms":1,"tpot_slo_ms":2,
    "tool_choice":null,"parallel_tool_calls":null,"echo":false})");
  EXPECT_EQ(r.max_tokens, 11);
  EXPECT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_EQ(r.n, 2);
  EXPECT_THAT(r.stop, ElementsAre("x"));
  EXPECT_EQ(r.sampling.seed, 7u);
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 2.0f);
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, -2.0f);
  EXPECT_FLOAT_EQ(r.sampling.repetition_penalty, 0.9f);
  EXPECT_TRUE(r.sampling.logprobs);
  EXPECT_EQ(r.sampling.top_logprobs, 20);
  EXPECT_TRUE(r.stream);
  EXPECT_FALSE(r.include_usage);
  EXPECT_EQ(r.ttft_slo_ms, 1);
  EXPECT_EQ(r.tpot_slo_ms, 2);
}

TEST(ChatParser, LogprobsWithoutTop) {
  GenerationRequest r = Chat(R"({"messages":[{"role":"user","content":"q"}],"logprobs":true})");
  EXPECT_TRUE(r.sampling.logprobs);
  EXPECT_EQ(r.sampling.top_logprobs, 0);
}

TEST(SloParser, SloObjectSetsBothTargets) {
  GenerationRequest r = Completion(R"({"prompt":"p","slo":{"ttft_ms":250,"tpot_ms":40.5}})");
  EXPECT_EQ(r.ttft_slo_ms, 250);
  EXPECT_EQ(r.tpot_slo_ms, 40.5);
  r = Chat(R"({"messages":[{"role":"user","content":"q"}],"slo":{"tpot_ms":3600000}})");
  EXPECT_EQ(r.ttft_slo_ms, 0);  // left out: the daemon's default
  EXPECT_EQ(r.tpot_slo_ms, 3600000);
}

TEST(SloParser, NullAndEmptyMeanUnset) {
  for (const char* body : {R"({"prompt":"p","slo":null})", R"({"prompt":"p","slo":{}})",
                           R"({"prompt":"p","slo":{"ttft_ms":null,"tpot_ms":null}})"}) {
    GenerationRequest r = Completion(body);
    EXPECT_EQ(r.ttft_slo_ms, 0) << body;
    EXPECT_EQ(r.tpot_slo_ms, 0) << body;
  }
}

TEST(SloParser, OlderSpellingsAreAliases) {
  GenerationRequest r = Completion(R"({"prompt":"p","ttft_slo_ms":250,"slo":{"tpot_ms":40}})");
  EXPECT_EQ(r.ttft_slo_ms, 250);
  EXPECT_EQ(r.tpot_slo_ms, 40);
  // Both spellings with the same value are fine.
  r = Completion(R"({"prompt":"p","ttft_slo_ms":250,"slo":{"ttft_ms":250.0}})");
  EXPECT_EQ(r.ttft_slo_ms, 250);
}

TEST(SloParser, AliasConflictNamesTheSloKey) {
  const absl::StatusOr<GenerationRequest> r =
      ParseChatRequest(R"({"messages":[{"role":"user","content":"q"}],"tpot_slo_ms":50,
                          "slo":{"tpot_ms":40}})");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParamOf(r.status()), "slo.tpot_ms");
  EXPECT_NE(r.status().message().find("tpot_slo_ms"), std::string::npos) << r.status();
}

TEST(SloParser, UnknownKeyInsideSloIsUnsupported) {
  const absl::StatusOr<GenerationRequest> r =
      ParseCompletionRequest(R"({"prompt":"p","slo":{"ttft_ms":100,"e2e_ms":900}})");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(ParamOf(r.status()), "slo.e2e_ms");
  EXPECT_EQ(ErrorCodeOf(r.status()), kCodeUnsupportedParameter);
  EXPECT_NE(r.status().message().find("'ttft_ms' and 'tpot_ms'"), std::string::npos) << r.status();
}

TEST(TokenizeParser, PromptAndMessages) {
  absl::StatusOr<TokenizeRequest> p = ParseTokenizeRequest(R"({"model":"m","prompt":"hi"})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(p->is_chat);
  EXPECT_EQ(p->model, "m");
  EXPECT_EQ(p->text, "hi");
  EXPECT_TRUE(p->add_special_tokens);

  p = ParseTokenizeRequest(R"({"prompt":"hi","add_special_tokens":false})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(p->add_special_tokens);

  p = ParseTokenizeRequest(
      R"({"messages":[{"role":"user","content":"hi"}],"add_generation_prompt":true})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->is_chat);
  ASSERT_EQ(p->messages.size(), 1u);
  EXPECT_EQ(p->messages[0].content, "hi");
  EXPECT_FALSE(p->add_special_tokens);
}

TEST(DetokenizeParser, Tokens) {
  absl::StatusOr<DetokenizeRequest> d = ParseDetokenizeRequest(R"({"model":"m","tokens":[1,2]})");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->model, "m");
  EXPECT_THAT(d->tokens, ElementsAre(1, 2));
  d = ParseDetokenizeRequest(R"({"tokens":[]})");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->tokens.empty());
}

}  // namespace
}  // namespace tandem::server::openai
