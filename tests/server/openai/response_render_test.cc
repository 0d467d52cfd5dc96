// Response shapes: goldens for one completion, one chat completion and a chat stream, plus the
// pieces (logprobs, echo, usage chunk, tokenize, models) checked by parsing the output.
#include "server/openai/response_render.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace tandem::server::openai {
namespace {

using nlohmann::json;

ResponseMeta Meta(const std::string& id) {
  return ResponseMeta{.id = id, .created = 1700000000, .model = "smol"};
}

TokenLogprobInfo Tok(int32_t id, const std::string& text, float lp) {
  TokenLogprobInfo t;
  t.token = id;
  t.text = text;
  t.bytes.assign(text.begin(), text.end());
  t.logprob = lp;
  return t;
}

LogprobEntry Entry(TokenLogprobInfo chosen, std::vector<TokenLogprobInfo> top) {
  return LogprobEntry{std::move(chosen), std::move(top)};
}

// Splits an SSE stream into its `data:` payloads, checking the framing on the way.
std::vector<std::string> SsePayloads(const std::string& stream) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < stream.size()) {
    EXPECT_EQ(stream.compare(pos, 6, "data: "), 0) << stream.substr(pos);
    const size_t end = stream.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos);
    if (end == std::string::npos) break;
    out.push_back(stream.substr(pos + 6, end - pos - 6));
    EXPECT_EQ(out.back().find('\n'), std::string::npos);
    pos = end + 2;
  }
  return out;
}

TEST(RenderCompletion, Golden) {
  ChoiceResult c;
  c.index = 0;
  c.text = "Hello world";
  c.token_ids = {10, 11};
  c.logprobs = {
      Entry(Tok(10, "Hello", -0.5f), {Tok(10, "Hello", -0.5f), Tok(12, "Hi", -1.5f)}),
      Entry(Tok(11, " world", -1.25f), {Tok(11, " world", -1.25f), Tok(13, " there", -2.0f)})};
  c.finish = FinishReason::kLength;
  EXPECT_EQ(RenderCompletion(Meta("cmpl-abc"), {c}, Usage{5, 2, 4}),
            R"({"id":"cmpl-abc","object":"text_completion","created":1700000000,"model":"smol",)"
            R"("choices":[{"index":0,"text":"Hello world","logprobs":{"tokens":["Hello"," world"],)"
            R"("token_logprobs":[-0.5,-1.25],"top_logprobs":[{"Hello":-0.5,"Hi":-1.5},)"
            R"({" world":-1.25," there":-2.0}],"text_offset":[0,5]},"finish_reason":"length"}],)"
            R"("usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7,)"
            R"("prompt_tokens_details":{"cached_tokens":4}}})");
}

TEST(RenderChatCompletion, Golden) {
  ChoiceResult a;
  a.index = 0;
  a.text = "Hi!";
  a.finish = FinishReason::kStop;
  ChoiceResult b;
  b.index = 1;
  b.text = "Hey";
  b.finish = FinishReason::kLength;
  EXPECT_EQ(RenderChatCompletion(Meta("chatcmpl-abc"), {a, b}, Usage{9, 4}),
            R"({"id":"chatcmpl-abc","object":"chat.completion","created":1700000000,)"
            R"("model":"smol","choices":[{"index":0,"message":{"role":"assistant",)"
            R"("content":"Hi!"},"logprobs":null,"finish_reason":"stop"},{"index":1,)"
            R"("message":{"role":"assistant","content":"Hey"},"logprobs":null,)"
            R"("finish_reason":"length"}],"usage":{"prompt_tokens":9,"completion_tokens":4,)"
            R"("total_tokens":13,"prompt_tokens_details":{"cached_tokens":0}}})");
}

TEST(StreamRenderer, ChatGoldenSequenceWithUsage) {
  StreamRenderer r(GenerationRequest::Kind::kChat, Meta("chatcmpl-s"), /*include_usage=*/true);
  ChoiceDelta d1;
  d1.index = 0;
  d1.text = "Hi";
  d1.token_ids = {1};
  ChoiceDelta d2;
  d2.index = 0;
  d2.text = "!";
  d2.token_ids = {2};
  d2.finish = FinishReason::kStop;
  // One statement per call: the order of a + b's operands is unspecified.
  std::string stream = r.Delta(d1);
  stream += r.Delta(d2);
  stream += r.UsageChunk(Usage{3, 2});
  stream += r.Done();
  const std::string head =
      R"({"id":"chatcmpl-s","object":"chat.completion.chunk","created":1700000000,)"
      R"("model":"smol","choices":[{"index":0,)";
  EXPECT_EQ(stream,
            "data: " + head +
                R"("delta":{"role":"assistant","content":""},"logprobs":null,)"
                R"("finish_reason":null}],"usage":null})"
                "\n\n"
                "data: " +
                head +
                R"("delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}],)"
                R"("usage":null})"
                "\n\n"
                "data: " +
                head +
                R"("delta":{"content":"!"},"logprobs":null,"finish_reason":null}],)"
                R"("usage":null})"
                "\n\n"
                "data: " +
                head +
                R"("delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null})"
                "\n\n"
                R"(data: {"id":"chatcmpl-s","object":"chat.completion.chunk",)"
                R"("created":1700000000,"model":"smol","choices":[],"usage":{"prompt_tokens":3,)"
                R"("completion_tokens":2,"total_tokens":5,)"
                R"("prompt_tokens_details":{"cached_tokens":0}}})"
                "\n\n"
                "data: [DONE]\n\n");
}

TEST(StreamRenderer, ChatWithoutUsageHasNoUsageKey) {
  StreamRenderer r(GenerationRequest::Kind::kChat, Meta("chatcmpl-s"), /*include_usage=*/false);
  ChoiceDelta d;
  d.index = 2;
  d.text = "x";
  d.finish = FinishReason::kLength;
  const std::vector<std::string> events = SsePayloads(r.Delta(d));
  ASSERT_EQ(events.size(), 3u);
  for (const std::string& e : events) {
    const json j = json::parse(e);
    EXPECT_FALSE(j.contains("usage"));
    EXPECT_EQ(j["choices"][0]["index"], 2);
  }
  EXPECT_EQ(json::parse(events[0])["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(json::parse(events[1])["choices"][0]["delta"]["content"], "x");
  EXPECT_EQ(json::parse(events[2])["choices"][0]["finish_reason"], "length");
  // The role chunk goes out once per choice.
  ChoiceDelta more;
  more.index = 2;
  more.text = "y";
  EXPECT_EQ(SsePayloads(r.Delta(more)).size(), 1u);
  ChoiceDelta empty;
  empty.index = 2;
  EXPECT_EQ(r.Delta(empty), "");
}

TEST(StreamRenderer, CompletionChunksCarryTextOffsetsAcrossChunks) {
  StreamRenderer r(GenerationRequest::Kind::kCompletion, Meta("cmpl-s"), /*include_usage=*/false);
  std::string stream = r.Echo(0, "Say: ");
  ChoiceDelta d1;
  d1.index = 0;
  d1.text = "h\xc3\xa9";
  d1.logprobs = {Entry(Tok(5, "h\xc3\xa9", -0.25f), {})};
  ChoiceDelta d2;
  d2.index = 0;
  d2.text = "llo";
  d2.logprobs = {Entry(Tok(6, "llo", -0.75f), {})};
  d2.finish = FinishReason::kStop;
  stream += r.Delta(d1);
  stream += r.Delta(d2);
  stream += r.Done();
  const std::vector<std::string> events = SsePayloads(stream);
  ASSERT_EQ(events.size(), 4u);
  const json echo = json::parse(events[0]);
  EXPECT_EQ(echo["object"], "text_completion");
  EXPECT_EQ(echo["choices"][0]["text"], "Say: ");
  EXPECT_TRUE(echo["choices"][0]["logprobs"].is_null());
  EXPECT_TRUE(echo["choices"][0]["finish_reason"].is_null());
  const json c1 = json::parse(events[1]);
  EXPECT_EQ(c1["choices"][0]["logprobs"]["text_offset"], json::array({5}));
  EXPECT_EQ(c1["choices"][0]["logprobs"]["top_logprobs"], json::array({json::object()}));
  const json c2 = json::parse(events[2]);
  EXPECT_EQ(c2["choices"][0]["text"], "llo");
  EXPECT_EQ(c2["choices"][0]["logprobs"]["text_offset"], json::array({7}));  // 5 + len("hé")
  EXPECT_EQ(c2["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(events[3], "[DONE]");
}

TEST(StreamRenderer, CompletionUsageChunk) {
  StreamRenderer r(GenerationRequest::Kind::kCompletion, Meta("cmpl-s"), /*include_usage=*/true);
  ChoiceDelta d;
  d.text = "a";
  const json chunk = json::parse(SsePayloads(r.Delta(d)).at(0));
  EXPECT_TRUE(chunk.contains("usage"));
  EXPECT_TRUE(chunk["usage"].is_null());
  const json usage = json::parse(SsePayloads(r.UsageChunk(Usage{1, 1})).at(0));
  EXPECT_EQ(usage["object"], "text_completion");
  EXPECT_EQ(usage["choices"], json::array());
  EXPECT_EQ(usage["usage"]["total_tokens"], 2);
}

TEST(RenderChatCompletion, LogprobsShape) {
  ChoiceResult c;
  c.text = "\xe2\x9c\x93";
  TokenLogprobInfo partial = Tok(7, "\xef\xbf\xbd", -0.1f);
  partial.bytes = {0xe2, 0x9c};
  c.logprobs = {Entry(partial, {partial, Tok(8, "x", -std::numeric_limits<float>::infinity())})};
  c.finish = FinishReason::kStop;
  const json j = json::parse(RenderChatCompletion(Meta("chatcmpl-l"), {c}, Usage{}));
  const json& lp = j["choices"][0]["logprobs"];
  ASSERT_TRUE(lp.is_object());
  EXPECT_EQ(lp.size(), 1u);
  const json& first = lp["content"][0];
  EXPECT_EQ(first["token"], "\xef\xbf\xbd");
  EXPECT_EQ(first["logprob"].get<double>(), 0.1 * -1);  // 0.1f written as 0.1
  EXPECT_EQ(first["bytes"], json::array({0xe2, 0x9c}));
  ASSERT_EQ(first["top_logprobs"].size(), 2u);
  EXPECT_EQ(first["top_logprobs"][1]["token"], "x");
  EXPECT_EQ(first["top_logprobs"][1]["logprob"].get<double>(), -9999.0);
  EXPECT_EQ(first["top_logprobs"][1]["bytes"], json::array({'x'}));
  EXPECT_EQ(first["top_logprobs"][0].size(), 3u);  // token, logprob, bytes
}

TEST(RenderCompletion, EchoPrependsPromptAndShiftsOffsets) {
  ChoiceResult c;
  c.echo_text = "2+2=";
  c.text = "4";
  c.logprobs = {Entry(Tok(4, "4", -0.01f), {})};
  c.finish = FinishReason::kStop;
  const json j = json::parse(RenderCompletion(Meta("cmpl-e"), {c}, Usage{4, 1}));
  EXPECT_EQ(j["choices"][0]["text"], "2+2=4");
  EXPECT_EQ(j["choices"][0]["logprobs"]["text_offset"], json::array({4}));
  EXPECT_EQ(j["usage"]["prompt_tokens"], 4);
}

TEST(Render, InvalidUtf8NeverBreaksJson) {
  ChoiceResult c;
  c.text = "bad \xff\xfe bytes \xc3";
  c.logprobs = {Entry(Tok(1, "\xff", -1.0f), {Tok(1, "\xff", -1.0f)})};
  const std::string completion = RenderCompletion(Meta("cmpl-\xff"), {c}, Usage{});
  const json j = json::parse(completion);  // throws on invalid JSON / UTF-8
  EXPECT_EQ(j["choices"][0]["text"], "bad \xef\xbf\xbd\xef\xbf\xbd bytes \xef\xbf\xbd");
  EXPECT_NO_THROW(json::parse(RenderChatCompletion(Meta("x"), {c}, Usage{})));
  StreamRenderer r(GenerationRequest::Kind::kChat, Meta("x"), true);
  ChoiceDelta d;
  d.text = "\xc0\x80";
  for (const std::string& e : SsePayloads(r.Delta(d))) EXPECT_NO_THROW(json::parse(e));
}

TEST(Render, UnfinishedChoiceHasNullFinishReason) {
  ChoiceResult c;
  c.text = "partial";
  const json j = json::parse(RenderCompletion(Meta("cmpl-u"), {c}, Usage{}));
  EXPECT_TRUE(j["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
}

TEST(AppendDeltas, FoldsByIndexInOrder) {
  std::vector<ChoiceResult> results;
  ChoiceDelta a{.index = 2, .text = "x", .token_ids = {1}, .logprobs = {}, .finish = {}};
  ChoiceDelta b{.index = 0, .text = "y", .token_ids = {2}, .logprobs = {}, .finish = {}};
  ChoiceDelta c{.index = 2,
                .text = "z",
                .token_ids = {3, 4},
                .logprobs = {Entry(Tok(3, "z", -1), {})},
                .finish = FinishReason::kLength};
  AppendDeltas({a, b, c}, &results);
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0].index, 0);
  EXPECT_EQ(results[0].text, "y");
  EXPECT_FALSE(results[0].finish.has_value());
  EXPECT_EQ(results[1].index, 2);
  EXPECT_EQ(results[1].text, "xz");
  EXPECT_EQ(results[1].token_ids, (std::vector<int32_t>{1, 3, 4}));
  EXPECT_EQ(results[1].logprobs.size(), 1u);
  EXPECT_EQ(results[1].finish, FinishReason::kLength);
}

TEST(Render, TokenizeDetokenizeModels) {
  EXPECT_EQ(RenderTokenizeResponse({1, 2, 3}, 2048),
            R"({"tokens":[1,2,3],"count":3,"max_model_len":2048})");
  EXPECT_EQ(RenderDetokenizeResponse("hi \"there\""), R"({"prompt":"hi \"there\""})");
  const json models =
      json::parse(RenderModelList(ModelInfo{.id = "smol", .created = 17, .max_model_len = 8192}));
  EXPECT_EQ(models["object"], "list");
  ASSERT_EQ(models["data"].size(), 1u);
  EXPECT_EQ(models["data"][0]["id"], "smol");
  EXPECT_EQ(models["data"][0]["object"], "model");
  EXPECT_EQ(models["data"][0]["created"], 17);
  EXPECT_EQ(models["data"][0]["owned_by"], "tandem");
  EXPECT_EQ(models["data"][0]["max_model_len"], 8192);
}

TEST(Render, ResponseIds) {
  const std::string a = MakeResponseId(GenerationRequest::Kind::kCompletion, 1);
  const std::string b = MakeResponseId(GenerationRequest::Kind::kCompletion, 2);
  const std::string c = MakeResponseId(GenerationRequest::Kind::kChat, 1);
  EXPECT_EQ(a.rfind("cmpl-", 0), 0u);
  EXPECT_EQ(c.rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(a.size(), 5u + 24u);
  EXPECT_NE(a, b);
  EXPECT_EQ(a, MakeResponseId(GenerationRequest::Kind::kCompletion, 1));
}

TEST(FinishReason, Names) {
  EXPECT_STREQ(FinishReasonName(FinishReason::kStop), "stop");
  EXPECT_STREQ(FinishReasonName(FinishReason::kLength), "length");
}

}  // namespace
}  // namespace tandem::server::openai
