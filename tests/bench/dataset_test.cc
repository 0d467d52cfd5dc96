#include "bench/tandem_bench/dataset.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

namespace tandem::bench {
namespace {

std::string TempFile(const std::string& name, const std::string& text) {
  static int n = 0;
  const std::string path = (std::filesystem::temp_directory_path() /
                            (name + "." + std::to_string(getpid()) + "." + std::to_string(n++)))
                               .string();
  std::ofstream(path) << text;
  return path;
}

std::string Words(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? " w" : "w") + std::to_string(i);
  return s;
}

// Counts characters / 4, rounded up: not linear in words, so the builder has to search.
class CharCounter : public TokenCounter {
 public:
  absl::StatusOr<int> Count(std::string_view text) override {
    ++calls;
    return static_cast<int>((text.size() + 3) / 4);
  }
  std::string Name() const override { return "chars/4"; }
  int calls = 0;
};

absl::StatusOr<std::vector<std::string>> CorpusWords() {
  return LoadCorpusWords(std::string(TANDEM_SOURCE_DIR) + "/bench/data/corpus.txt");
}

TEST(DatasetTest, CorpusShipsWithTheRepo) {
  auto words = CorpusWords();
  ASSERT_TRUE(words.ok()) << words.status();
  EXPECT_GT(words->size(), 800u);
  EXPECT_FALSE(LoadCorpusWords("/nonexistent/corpus.txt").ok());
}

TEST(DatasetTest, PromptBuilderHitsTheTargetWithWordCounts) {
  auto words = CorpusWords();
  ASSERT_TRUE(words.ok());
  WordTokenCounter counter;
  PromptBuilder b(*words, &counter);
  for (int target : {1, 4, 32, 128, 1000, 3000}) {  // 3000 wraps around the corpus
    auto p = b.Build(target, 17);
    ASSERT_TRUE(p.ok());
    EXPECT_NEAR(p->tokens, target, 1) << target;
    EXPECT_EQ(*counter.Count(p->text), p->tokens);
  }
}

TEST(DatasetTest, PromptBuilderSearchesANonLinearCounter) {
  auto words = CorpusWords();
  ASSERT_TRUE(words.ok());
  CharCounter counter;
  PromptBuilder b(*words, &counter);
  for (int target : {16, 64, 256, 512}) {
    counter.calls = 0;
    auto p = b.Build(target, 101);
    ASSERT_TRUE(p.ok());
    // Word granularity: a word is at most ~4 tokens here.
    EXPECT_NEAR(p->tokens, target, 3) << target;
    EXPECT_LE(counter.calls, 12);
  }
}

TEST(DatasetTest, SyntheticIsDeterministicAndDistinct) {
  auto words = CorpusWords();
  ASSERT_TRUE(words.ok());
  WordTokenCounter counter;
  SyntheticConfig c;
  c.num_requests = 20;
  c.input = *LengthDist::Parse("uniform:20:60");
  c.output = *LengthDist::Parse("lognormal:50:0.3");
  c.seed = 11;
  auto a = SynthesizeRequests(c, *words, &counter);
  auto b = SynthesizeRequests(c, *words, &counter);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->size(), 20u);
  int distinct = 0;
  for (size_t i = 0; i < a->size(); ++i) {
    EXPECT_EQ((*a)[i].prompt, (*b)[i].prompt);
    EXPECT_EQ((*a)[i].max_tokens, (*b)[i].max_tokens);
    EXPECT_GE((*a)[i].prompt_tokens, 19);
    EXPECT_LE((*a)[i].prompt_tokens, 61);
    EXPECT_GE((*a)[i].max_tokens, 1);
    if (i && (*a)[i].prompt != (*a)[i - 1].prompt) ++distinct;
  }
  EXPECT_GE(distinct, 18);
}

// A shared prefix: every prompt is one of the groups' prefixes followed by the prompt it has
// without one (same seed), every group is used, and the counts cover the whole text.
TEST(DatasetTest, SyntheticSharedPrefixes) {
  auto words = CorpusWords();
  ASSERT_TRUE(words.ok());
  WordTokenCounter counter;
  SyntheticConfig c;
  c.num_requests = 24;
  c.input = *LengthDist::Parse("uniform:20:60");
  c.seed = 5;
  auto plain = SynthesizeRequests(c, *words, &counter);
  c.shared_prefix_tokens = 300;
  c.prefix_groups = 3;
  auto shared = SynthesizeRequests(c, *words, &counter);
  ASSERT_TRUE(plain.ok() && shared.ok()) << shared.status();
  ASSERT_EQ(shared->size(), plain->size());
  std::set<std::string> prefixes;
  for (size_t i = 0; i < shared->size(); ++i) {
    const std::string& p = (*shared)[i].prompt;
    const std::string& own = (*plain)[i].prompt;
    ASSERT_GT(p.size(), own.size());
    EXPECT_EQ(p.substr(p.size() - own.size()), own) << i;
    const std::string prefix = p.substr(0, p.size() - own.size());
    prefixes.insert(prefix);
    EXPECT_NEAR(*counter.Count(prefix), 302, 3) << prefix.substr(0, 40);  // "Context g:" too
    EXPECT_EQ((*shared)[i].prompt_tokens, *counter.Count(p));
    EXPECT_EQ((*shared)[i].max_tokens, (*plain)[i].max_tokens);
  }
  EXPECT_EQ(prefixes.size(), 3u);
  c.prefix_groups = 0;
  EXPECT_FALSE(SynthesizeRequests(c, *words, &counter).ok());
}

TEST(DatasetTest, ShareGptFilterFollowsVllm) {
  nlohmann::json data = nlohmann::json::array();
  auto conv = [](const std::string& p, const std::string& r) {
    return nlohmann::json{
        {"conversations", {{{"from", "human"}, {"value", p}}, {{"from", "gpt"}, {"value", r}}}}};
  };
  data.push_back(conv(Words(10), Words(20)));    // kept
  data.push_back(conv(Words(2), Words(20)));     // prompt < 4 tokens
  data.push_back(conv(Words(10), Words(2)));     // reply < 4 tokens
  data.push_back(conv(Words(800), Words(10)));   // prompt > 1024 tokens (800 words ~ 1067)
  data.push_back(conv(Words(700), Words(900)));  // total > 2048
  data.push_back(conv(Words(30), Words(40)));    // kept
  data.push_back({{"conversations", {{{"from", "human"}, {"value", "lonely"}}}}});  // 1 turn
  data.push_back({{"id", 3}});  // no conversations
  const std::string path = TempFile("sharegpt.json", data.dump());
  WordTokenCounter counter;
  auto r = LoadShareGpt(path, 0, 1, &counter, std::nullopt);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 2u);
  for (const auto& req : *r) {
    EXPECT_TRUE(req.max_tokens == *counter.Count(Words(20)) ||
                req.max_tokens == *counter.Count(Words(40)));
  }
  auto forced = LoadShareGpt(path, 1, 1, &counter, 7);
  ASSERT_TRUE(forced.ok());
  ASSERT_EQ(forced->size(), 1u);
  EXPECT_EQ((*forced)[0].max_tokens, 7);
  std::filesystem::remove(path);
}

TEST(DatasetTest, JsonlPromptsMessagesAndSlos) {
  const std::string path =
      TempFile("requests.jsonl",
               "{\"prompt\": \"one two three\", \"max_tokens\": 5}\n"
               "\n"
               "{\"messages\": [{\"role\": \"user\", \"content\": \"hello there\"}], "
               "\"slo\": {\"ttft_ms\": 100, \"tpot_ms\": 20}}\n");
  WordTokenCounter counter;
  auto r = LoadJsonl(path, 0, 64, &counter);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].prompt, "one two three");
  EXPECT_EQ((*r)[0].max_tokens, 5);
  EXPECT_FALSE((*r)[0].slo);
  EXPECT_TRUE((*r)[1].messages.is_array());
  EXPECT_EQ((*r)[1].max_tokens, 64);
  ASSERT_TRUE((*r)[1].slo);
  EXPECT_EQ(*(*r)[1].slo->ttft_ms, 100);
  EXPECT_EQ(*(*r)[1].slo->tpot_ms, 20);
  std::filesystem::remove(path);

  for (const char* bad :
       {"[1]\n", "{\"max_tokens\": 3}\n", "{\"prompt\": \"x\", \"max_tokens\": 0}\n",
        "{\"prompt\": \"x\", \"slo\": {\"ttft_ms\": -5}}\n", "not json\n"}) {
    const std::string p = TempFile("bad.jsonl", bad);
    auto e = LoadJsonl(p, 0, 64, &counter);
    EXPECT_FALSE(e.ok()) << bad;
    if (!e.ok()) {
      EXPECT_NE(std::string(e.status().message()).find(":1:"), std::string::npos);
    }
    std::filesystem::remove(p);
  }
}

}  // namespace
}  // namespace tandem::bench
