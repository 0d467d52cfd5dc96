#include "bench/tandem_bench/token_counter.h"

#include <gtest/gtest.h>

#include "tests/bench/fake_openai_server.h"

namespace tandem::bench {
namespace {

using testing::FakeBehavior;
using testing::FakeOpenAiServer;
using testing::TokenizeForm;

FakeBehavior Any(const nlohmann::json&, int) { return FakeBehavior{}; }

TEST(TokenCounterTest, WordsFallbackRatio) {
  WordTokenCounter w;
  EXPECT_EQ(*w.Count(""), 0);
  EXPECT_EQ(*w.Count("one"), 2);                 // ceil(4/3)
  EXPECT_EQ(*w.Count("  one two\tthree\n"), 4);  // 3 words * 4/3
  EXPECT_EQ(*w.Count("a b c d e f"), 8);
}

TEST(TokenCounterTest, ServerFormsLlamaCppAndVllm) {
  for (TokenizeForm form : {TokenizeForm::kLlamaCpp, TokenizeForm::kVllm}) {
    FakeOpenAiServer server(Any, true, form);
    std::string note;
    auto c = MakeTokenCounter("server", *ParseServerUrl(server.url()), "", "fake-model", &note);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ((*c)->Name(), "server /tokenize");
    EXPECT_EQ(*(*c)->Count("the quick brown fox"), 4);
    EXPECT_EQ(*(*c)->Count("x"), 1);
    EXPECT_TRUE(note.empty());
  }
}

TEST(TokenCounterTest, AutoFallsBackToWordsAndSaysWhy) {
  FakeOpenAiServer server(Any, true, TokenizeForm::kNone);
  const ServerUrl url = *ParseServerUrl(server.url());
  std::string note;
  auto c = MakeTokenCounter("auto", url, "", "fake-model", &note);
  ASSERT_TRUE(c.ok());
  EXPECT_NE((*c)->Name().find("words"), std::string::npos);
  EXPECT_NE(note.find("404"), std::string::npos) << note;
  EXPECT_FALSE(MakeTokenCounter("server", url, "", "fake-model", &note).ok());
  EXPECT_FALSE(MakeTokenCounter("bogus", url, "", "fake-model", &note).ok());
}

TEST(ServerUrlTest, Parses) {
  auto u = ParseServerUrl("http://localhost:8080/v1/");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "localhost");
  EXPECT_EQ(u->port, "8080");
  EXPECT_EQ(u->base_path, "");
  auto p = ParseServerUrl("http://example.com/proxy/llm");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->port, "80");
  EXPECT_EQ(p->base_path, "/proxy/llm");
  EXPECT_EQ(p->HostHeader(), "example.com");
  EXPECT_FALSE(ParseServerUrl("https://x").ok());
  EXPECT_FALSE(ParseServerUrl("x:80").ok());
  EXPECT_FALSE(ParseServerUrl("http://h:99999").ok());
  EXPECT_FALSE(ParseServerUrl("http://:80").ok());
}

}  // namespace
}  // namespace tandem::bench
