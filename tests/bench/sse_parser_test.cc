#include "bench/tandem_bench/sse_parser.h"

#include <gtest/gtest.h>

#include "bench/tandem_bench/stream_chunk.h"

namespace tandem::bench {
namespace {

std::vector<std::string> ParseAll(const std::string& body) {
  SseParser p;
  std::vector<std::string> ev;
  p.Feed(body, ev);
  return ev;
}

TEST(SseParserTest, EventsAndDone) {
  const auto ev = ParseAll("data: {\"a\":1}\n\ndata: {\"a\":2}\n\ndata: [DONE]\n\n");
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[0], "{\"a\":1}");
  EXPECT_EQ(ev[2], "[DONE]");
}

TEST(SseParserTest, SameEventsWhateverTheSplit) {
  const std::string body =
      ": keep-alive comment\r\nevent: message\r\ndata: {\"x\":\"y\"}\r\n\r\n"
      "data:no-space\n\ndata: line1\ndata: line2\n\nid: 7\nretry: 10\n\ndata: [DONE]\r\r";
  const std::vector<std::string> want = {"{\"x\":\"y\"}", "no-space", "line1\nline2", "[DONE]"};
  EXPECT_EQ(ParseAll(body), want);
  // Every split into two pieces, and byte by byte.
  for (size_t cut = 0; cut <= body.size(); ++cut) {
    SseParser p;
    std::vector<std::string> ev;
    p.Feed(std::string_view(body).substr(0, cut), ev);
    p.Feed(std::string_view(body).substr(cut), ev);
    EXPECT_EQ(ev, want) << "cut at " << cut;
  }
  SseParser p;
  std::vector<std::string> ev;
  for (char c : body) p.Feed(std::string_view(&c, 1), ev);
  EXPECT_EQ(ev, want);
  EXPECT_FALSE(p.HasPartialEvent());
}

TEST(SseParserTest, ReportsACutEvent) {
  SseParser p;
  std::vector<std::string> ev;
  p.Feed("data: {\"a\":1}\n\ndata: {\"b\"", ev);
  EXPECT_EQ(ev.size(), 1u);
  EXPECT_TRUE(p.HasPartialEvent());
}

TEST(StreamChunkTest, CompletionsText) {
  auto c = ParseStreamChunk(R"({"choices":[{"index":0,"text":" hello","finish_reason":null}]})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->text, " hello");
  EXPECT_FALSE(c->done);
  EXPECT_FALSE(c->completion_tokens);
}

TEST(StreamChunkTest, ChatDeltaAndRoleOnlyChunk) {
  auto c = ParseStreamChunk(R"({"choices":[{"delta":{"content":"Hi"}}]})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->text, "Hi");
  auto role = ParseStreamChunk(R"({"choices":[{"delta":{"role":"assistant","content":null}}]})");
  ASSERT_TRUE(role.ok());
  EXPECT_TRUE(role->text.empty());  // not a token: TTFT waits for the first non-empty chunk
}

TEST(StreamChunkTest, UsageDoneAndErrors) {
  auto u = ParseStreamChunk(
      R"({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}})");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->prompt_tokens, 12);
  EXPECT_EQ(u->completion_tokens, 34);
  EXPECT_FALSE(u->cached_tokens);
  auto cached = ParseStreamChunk(
      R"({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,)"
      R"("prompt_tokens_details":{"cached_tokens":8}}})");
  ASSERT_TRUE(cached.ok());
  EXPECT_EQ(cached->cached_tokens, 8);
  EXPECT_TRUE(ParseStreamChunk("[DONE]")->done);
  auto e = ParseStreamChunk(R"({"error":{"message":"out of memory","code":500}})");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->error, "out of memory");
  EXPECT_FALSE(ParseStreamChunk("not json").ok());
  EXPECT_FALSE(ParseStreamChunk("[1,2]").ok());
}

}  // namespace
}  // namespace tandem::bench
