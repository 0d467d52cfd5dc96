// Tokenizer tests: token ids against llama.cpp's (tests/reference/tokenizer_cases.jsonl, made
// by tests/reference/gen_reference.py from the default model), round trips, the streaming
// decoder, malformed input, and BPE/special-token rules on a hand-built vocabulary.
#include "model/tokenizer.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf_file.h"
#include "model/unicode_util.h"
#include "nlohmann/json.hpp"
#include "tests/support/reference_cases.h"
#include "tests/support/test_model.h"

namespace tandem::model {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using testing::HexToBytes;
using testing::Printable;
using testing::SourceDir;
using Case = testing::TokenizerCase;

class DefaultModelTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = SourceDir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    auto gguf = GgufFile::Open(path);
    if (!gguf.ok()) {
      load_error_ =
          new std::string("cannot open the default model " + path +
                          " (fetch it with scripts/fetch-model): " + gguf.status().ToString());
      return;
    }
    auto tok = Tokenizer::FromGguf(**gguf);
    if (!tok.ok()) {
      load_error_ = new std::string(tok.status().ToString());
      return;
    }
    tokenizer_ = tok->release();

    auto cases =
        testing::LoadTokenizerCases(SourceDir() + "/tests/reference/tokenizer_cases.jsonl");
    if (!cases.ok()) {
      load_error_ = new std::string(cases.status().ToString());
      return;
    }
    cases_ = new std::vector<Case>(std::move(cases->cases));
    expected_count_ = cases->expected_count;
  }

  void SetUp() override {
    if (load_error_ != nullptr) GTEST_FAIL() << *load_error_;
  }

  static inline Tokenizer* tokenizer_ = nullptr;
  static inline std::vector<Case>* cases_ = nullptr;
  static inline int expected_count_ = 0;
  static inline std::string* load_error_ = nullptr;
};

TEST_F(DefaultModelTokenizerTest, Metadata) {
  const Tokenizer& t = *tokenizer_;
  EXPECT_EQ(t.vocab_size(), 49152);
  EXPECT_EQ(t.pre(), "smollm");
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_FALSE(t.add_bos());
  EXPECT_EQ(t.TokenText(1), "<|im_start|>");
  EXPECT_EQ(t.TokenId("<|im_end|>"), 2);
  EXPECT_TRUE(t.IsSpecial(0));
  EXPECT_FALSE(t.IsSpecial(100));
  EXPECT_TRUE(t.IsEndOfGeneration(2));   // <|im_end|>
  EXPECT_TRUE(t.IsEndOfGeneration(0));   // <|endoftext|>
  EXPECT_FALSE(t.IsEndOfGeneration(1));  // <|im_start|>
  EXPECT_FALSE(t.IsEndOfGeneration(100));
  EXPECT_EQ(t.TokenId("no such token text"), -1);
}

TEST_F(DefaultModelTokenizerTest, MatchesLlamaCpp) {
  ASSERT_GE(cases_->size(), 300u);
  ASSERT_EQ(static_cast<int>(cases_->size()), expected_count_);
  int matched = 0;
  for (const Case& c : *cases_) {
    const std::vector<int32_t> ids = tokenizer_->Encode(c.text, c.special);
    EXPECT_EQ(ids, c.ids) << "text: \"" << Printable(c.text) << "\" special=" << c.special;
    matched += ids == c.ids;
  }
  std::printf("tokenizer: %d of %zu llama.cpp reference cases match\n", matched, cases_->size());
}

TEST_F(DefaultModelTokenizerTest, DecodeInvertsEncode) {
  int exact = 0;
  for (const Case& c : *cases_) {
    const std::string decoded = tokenizer_->Decode(tokenizer_->Encode(c.text, c.special));
    // Where llama.cpp does not give the input back, tandem must give back what it does:
    // malformed input comes back with one U+FFFD per byte that starts no sequence, and
    // bytes without a vocabulary entry (SmolLM2 lacks 04 06 13 14 16 1D F1 F2) vanish.
    EXPECT_EQ(decoded, c.decoded) << "text: \"" << Printable(c.text) << "\"";
    if (c.from_hex) EXPECT_EQ(decoded, unicode::RepairInputUtf8(c.text));
    exact += decoded == c.text;
  }
  std::printf("tokenizer: %d of %zu cases decode to exactly their input\n", exact, cases_->size());
}

TEST_F(DefaultModelTokenizerTest, StreamDecoderMatchesDecode) {
  int held_back = 0, exact = 0;
  for (const Case& c : *cases_) {
    const std::vector<int32_t> ids = tokenizer_->Encode(c.text, c.special);
    StreamDecoder stream(*tokenizer_);
    std::string joined;
    for (int32_t id : ids) {
      const std::string part = stream.Push(id);
      EXPECT_TRUE(unicode::IsValidUtf8(part))
          << "mid-stream output \"" << Printable(part) << "\" for \"" << Printable(c.text) << "\"";
      held_back += stream.pending_bytes() > 0;
      joined += part;
    }
    const std::string tail = stream.Flush();
    EXPECT_TRUE(unicode::IsValidUtf8(tail));
    EXPECT_EQ(stream.pending_bytes(), 0u);
    joined += tail;
    // Equal to Decode whenever Decode is valid UTF-8; otherwise (bytes missing from the
    // vocabulary left half a character behind) equal to its repair.
    const std::string decoded = tokenizer_->Decode(ids);
    if (unicode::IsValidUtf8(decoded)) {
      EXPECT_EQ(joined, decoded) << "text: \"" << Printable(c.text) << "\"";
      ++exact;
    } else {
      EXPECT_EQ(joined, unicode::SanitizeUtf8(decoded)) << "text: \"" << Printable(c.text) << "\"";
    }
  }
  std::printf("tokenizer: stream == Decode for %d of %zu cases, == repaired Decode for the rest\n",
              exact, cases_->size());
  EXPECT_GT(exact, 0);
  // The cases include characters split over several byte tokens (CJK, emoji), so the
  // decoder must have held bytes back at some point; otherwise this test proves nothing.
  EXPECT_GT(held_back, 0);
}

TEST_F(DefaultModelTokenizerTest, GreedyPromptTokensMatchLlamaCpp) {
  const std::string path = SourceDir() + "/tests/reference/greedy.json";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot read " << path;
  const auto j = nlohmann::json::parse(in);
  int n = 0;
  for (const auto& p : j.at("prompts")) {
    const std::string prompt = p.at("prompt").get<std::string>();
    EXPECT_EQ(tokenizer_->Encode(prompt), p.at("prompt_tokens").get<std::vector<int32_t>>())
        << Printable(prompt);
    ++n;
  }
  EXPECT_GE(n, 20);
}

TEST_F(DefaultModelTokenizerTest, EmptyInput) {
  EXPECT_TRUE(tokenizer_->Encode("").empty());
  EXPECT_TRUE(tokenizer_->Encode("", false).empty());
  EXPECT_EQ(tokenizer_->Decode({}), "");
  StreamDecoder stream(*tokenizer_);
  EXPECT_EQ(stream.Flush(), "");
}

TEST_F(DefaultModelTokenizerTest, SpecialTokensOnlyWhenAsked) {
  const std::string text = "<|im_start|>user\nhi<|im_end|>";
  const auto with = tokenizer_->Encode(text, true);
  const auto without = tokenizer_->Encode(text, false);
  ASSERT_FALSE(with.empty());
  EXPECT_EQ(with.front(), 1);
  EXPECT_EQ(with.back(), 2);
  for (int32_t id : without) EXPECT_FALSE(tokenizer_->IsSpecial(id)) << id;
  EXPECT_EQ(tokenizer_->Decode(without), text);
  // Without rendering special tokens only the text between them remains.
  EXPECT_EQ(tokenizer_->Decode(with, /*render_special=*/false), "user\nhi");
}

TEST_F(DefaultModelTokenizerTest, MalformedUtf8) {
  // Every invalid byte reads as U+FFFD; nothing crashes and nothing is dropped silently.
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(tokenizer_->Encode("\xFF"), tokenizer_->Encode(fffd));
  EXPECT_EQ(tokenizer_->Encode("a\x80"
                               "b"),
            tokenizer_->Encode("a" + fffd + "b"));
  EXPECT_EQ(tokenizer_->Encode("\xF0\x9F\x98"), tokenizer_->Encode(fffd + fffd + fffd));
  // Surrogates (not valid in UTF-8) become one U+FFFD: a documented departure from
  // llama.cpp, which tokenizes the raw bytes of the surrogate.
  EXPECT_EQ(tokenizer_->Encode("\xED\xA0\x80"), tokenizer_->Encode(fffd));
  for (int b = 0; b < 256; ++b) {
    const std::string s = "x" + std::string(1, static_cast<char>(b)) + "\xE2\x82";
    const auto ids = tokenizer_->Encode(s);
    EXPECT_FALSE(ids.empty());
    EXPECT_TRUE(unicode::IsValidUtf8(tokenizer_->Decode(ids)));
  }
}

TEST_F(DefaultModelTokenizerTest, RandomInputsRoundTrip) {
  // Seeded random mixes of ASCII, arbitrary code points (all planes), special-token texts
  // and stray bytes. Bytes the vocabulary cannot spell (see DecodeInvertsEncode) are left out
  // so that the round trip must be exact: Decode(Encode(s)) is s with each invalid byte
  // replaced by U+FFFD, and streaming gives the same text.
  std::mt19937 rng(20261125);
  const std::string specials[] = {"<|im_start|>", "<|im_end|>", "<|endoftext|>", "<filename>"};
  auto unspellable = [](uint32_t cp) {
    return cp == 0x04 || cp == 0x06 || cp == 0x13 || cp == 0x14 || cp == 0x16 || cp == 0x1D ||
           (cp >= 0x40000 && cp < 0xC0000);
  };
  for (int iter = 0; iter < 2000; ++iter) {
    std::string s;
    const int parts = 1 + rng() % 12;
    for (int p = 0; p < parts; ++p) {
      switch (rng() % 5) {
        case 0: {
          const int n = 1 + rng() % 8;
          for (int k = 0; k < n; ++k) s.push_back(static_cast<char>(0x20 + rng() % 95));
          break;
        }
        case 1: {
          uint32_t cp;
          do {
            cp = rng() % 0x110000;
          } while ((cp >= 0xD800 && cp <= 0xDFFF) || unspellable(cp));
          unicode::AppendUtf8(cp, &s);
          break;
        }
        case 2:
          s += specials[rng() % 4];
          break;
        case 3: {
          const char ws[] = {' ', '\t', '\n', '\r'};
          s.append(1 + rng() % 4, ws[rng() % 4]);
          break;
        }
        default: {
          // A byte >= 0x80 on its own: usually invalid here.
          s.push_back(static_cast<char>(0x80 + rng() % 0x80));
          break;
        }
      }
    }
    const bool special = rng() % 2;
    const auto ids = tokenizer_->Encode(s, special);
    const std::string decoded = tokenizer_->Decode(ids);
    // Encode reads the repaired input. Two stray bytes can form an overlong sequence that
    // the repair (like llama.cpp) accepts, e.g. C0 94 -> U+0014, which may be unspellable:
    // such characters vanish.
    const std::string repaired = unicode::RepairInputUtf8(s);
    std::string expected;
    for (size_t pos = 0; pos < repaired.size();) {
      const size_t begin = pos;
      if (!unspellable(unicode::NextCodepoint(repaired, &pos))) {
        expected.append(repaired, begin, pos - begin);
      }
    }
    ASSERT_EQ(decoded, expected) << Printable(s);
    StreamDecoder stream(*tokenizer_);
    std::string joined;
    for (int32_t id : ids) joined += stream.Push(id);
    joined += stream.Flush();
    ASSERT_EQ(joined, decoded) << Printable(s);
  }
}

TEST_F(DefaultModelTokenizerTest, ConcurrentEncodeIsSafe) {
  // Encode is const and keeps its working memory per call; threads must agree.
  std::vector<std::vector<int32_t>> want;
  for (const Case& c : *cases_) want.push_back(tokenizer_->Encode(c.text, c.special));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 5; ++rep) {
        for (size_t i = t; i < cases_->size(); i += 1) {
          if (tokenizer_->Encode((*cases_)[i].text, (*cases_)[i].special) != want[i]) {
            ++mismatches;
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST_F(DefaultModelTokenizerTest, StreamDecoderHoldsPartialCharacters) {
  // "é" is C3 A9; the byte tokens are the alphabet characters for those bytes.
  const int32_t c3 = tokenizer_->TokenId(std::string(unicode::ByteToUtf8(0xC3)));
  const int32_t a9 = tokenizer_->TokenId(std::string(unicode::ByteToUtf8(0xA9)));
  ASSERT_GE(c3, 0);
  ASSERT_GE(a9, 0);
  StreamDecoder s(*tokenizer_);
  EXPECT_EQ(s.Push(c3), "");
  EXPECT_EQ(s.pending_bytes(), 1u);
  EXPECT_EQ(s.Push(a9), "\xC3\xA9");
  EXPECT_EQ(s.Push(a9), "\xEF\xBF\xBD");  // a lone continuation byte: replaced at once
  EXPECT_EQ(s.Push(c3), "");
  EXPECT_EQ(s.Push(c3), "\xEF\xBF\xBD");  // the first C3 can no longer complete
  EXPECT_EQ(s.Flush(), "\xEF\xBF\xBD");   // the second never completed
  EXPECT_EQ(s.Flush(), "");
  // Special tokens render as text, or as nothing when the decoder is told so.
  StreamDecoder plain(*tokenizer_, /*render_special=*/false);
  EXPECT_EQ(plain.Push(2), "");
  StreamDecoder rendered(*tokenizer_);
  EXPECT_EQ(rendered.Push(2), "<|im_end|>");
}

TEST_F(DefaultModelTokenizerTest, LongInputIsFast) {
  std::string text;
  while (text.size() < 100 * 1024) {
    text += "The quick brown fox jumps over the lazy dog 1234567890. café 日本語 😀\n\t";
  }
  text += std::string(20000, 'a');  // one long word: BPE must not be quadratic
  text += std::string(20000, ' ');
  const auto start = std::chrono::steady_clock::now();
  const auto ids = tokenizer_->Encode(text);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("tokenizer: %zu bytes -> %zu tokens in %.1f ms\n", text.size(), ids.size(),
              seconds * 1e3);
  EXPECT_EQ(tokenizer_->Decode(ids), text);
  EXPECT_LT(seconds, 1.0);
}

TEST(TestModelTokenizerTest, LoadsTheSyntheticModelsTokenizer) {
  // The tiny synthetic models (tests/support) carry a "default" pre-tokenizer vocabulary
  // with ChatML specials and unused padding tokens.
  testing::TestModelSpec spec;
  spec.vocab = testing::TestTokenizerSize() + 5;
  const std::string path = ::testing::TempDir() + "/tokenizer_test_model.gguf";
  ASSERT_TRUE(testing::WriteTestModel(spec, path).ok());
  auto gguf = GgufFile::Open(path);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  auto tok = Tokenizer::FromGguf(**gguf);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const Tokenizer& t = **tok;
  EXPECT_EQ(t.pre(), "default");
  EXPECT_EQ(t.vocab_size(), spec.vocab);
  const std::string sp = testing::ByteToUnicode(' ');
  EXPECT_THAT(t.Encode("<|im_start|> hello world<|im_end|>"),
              ElementsAre(1, t.TokenId(sp + "hello"), t.TokenId(sp + "world"), 2));
  const std::string text = "Is the answer 1000? Yes, and you're in.\n\n  ok";
  EXPECT_EQ(t.Decode(t.Encode(text)), text);
  const int32_t pad = spec.vocab - 1;
  EXPECT_EQ(t.TokenTypeOf(pad), TokenType::kUnused);
  EXPECT_EQ(t.Decode({pad}), "");  // unused tokens render as nothing
}

// ---------------------------------------------------------------------------------------------
// A hand-built vocabulary, to pin the rules independently of any model file.

TokenizerData TinyData() {
  TokenizerData d;
  d.model = "gpt2";
  d.pre = "gpt-2";
  // Every byte's alphabet character first, then merged tokens and two specials.
  for (int b = 0; b < 256; ++b) d.tokens.emplace_back(unicode::ByteToUtf8(static_cast<uint8_t>(b)));
  d.tokens.push_back("aa");      // 256
  d.tokens.push_back("aaa");     // 257
  d.tokens.push_back("ab");      // 258
  d.tokens.push_back("<s>");     // 259 control
  d.tokens.push_back("<s><s>");  // 260 control (longer: wins over two <s>)
  d.tokens.push_back("<user>");  // 261 user-defined
  d.token_types.assign(d.tokens.size(), 1);
  d.token_types[259] = 3;
  d.token_types[260] = 3;
  d.token_types[261] = 4;
  d.merges = {"a b", "a a", "aa a"};
  d.bos = 259;
  d.eos = 259;
  return d;
}

TEST(TinyTokenizerTest, MergesByRankThenLeftmost) {
  auto t = Tokenizer::FromData(TinyData());
  ASSERT_TRUE(t.ok()) << t.status();
  // "aab": "a b" (rank 0) beats "a a" (rank 1).
  EXPECT_THAT((*t)->Encode("aab"), ElementsAre('a', 258));
  // "aaaa": equal ranks merge leftmost first: (aa)(aa), never a(aa)a.
  EXPECT_THAT((*t)->Encode("aaaa"), ElementsAre(256, 256));
  // "aaa": a a -> aa, then "aa a" -> aaa.
  EXPECT_THAT((*t)->Encode("aaa"), ElementsAre(257));
}

TEST(TinyTokenizerTest, SpecialTokensLongestFirstAndUserDefinedAlways) {
  auto t = Tokenizer::FromData(TinyData());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT((*t)->Encode("<s><s><s>"), ElementsAre(260, 259));
  EXPECT_THAT((*t)->Encode("a<user>a", /*parse_special=*/false), ElementsAre('a', 261, 'a'));
  const auto plain = (*t)->Encode("<s>", /*parse_special=*/false);
  EXPECT_EQ(plain.size(), 3u);  // '<' 's' '>' as text
  EXPECT_EQ((*t)->Decode(plain), "<s>");
  // BOS only when both asked and configured.
  EXPECT_THAT((*t)->Encode("a", true, /*add_special=*/true), ElementsAre('a'));
  TokenizerData d = TinyData();
  d.add_bos = true;
  auto with_bos = Tokenizer::FromData(d);
  ASSERT_TRUE(with_bos.ok());
  EXPECT_THAT((*with_bos)->Encode("a", true, true), ElementsAre(259, 'a'));
  EXPECT_THAT((*with_bos)->Encode("a"), ElementsAre('a'));
}

TEST(TinyTokenizerTest, Errors) {
  TokenizerData wpm = TinyData();
  wpm.model = "bert";
  auto a = Tokenizer::FromData(wpm);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(a.status().message(), HasSubstr("unsupported tokenizer model 'bert'"));
  EXPECT_THAT(a.status().message(), HasSubstr("gpt2, llama"));

  TokenizerData pre = TinyData();
  pre.pre = "no-such-pre";
  auto b = Tokenizer::FromData(pre);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("smollm"));

  TokenizerData types = TinyData();
  types.token_types.pop_back();
  EXPECT_FALSE(Tokenizer::FromData(types).ok());

  TokenizerData bos = TinyData();
  bos.bos = 100000;
  EXPECT_FALSE(Tokenizer::FromData(bos).ok());

  TokenizerData merges = TinyData();
  merges.merges.push_back("nospace");
  EXPECT_FALSE(Tokenizer::FromData(merges).ok());
}

TEST(TinyTokenizerTest, LongRunsStayLinear) {
  // Long runs of one character class are where a backtracking pattern or a naive BPE turns
  // quadratic; 200 KB runs would take minutes then, and take milliseconds here.
  std::string text = std::string(200000, ' ') + "x" + std::string(200000, 'a') +
                     std::string(100000, '\n') + std::string(200000, '7') + " \t" +
                     std::string(100000, '!');
  for (const char* pre : {"default", "gpt-2", "smollm", "llama3", "qwen2"}) {
    TokenizerData d = TinyData();
    d.pre = pre;
    auto t = Tokenizer::FromData(d);
    ASSERT_TRUE(t.ok()) << t.status();
    const auto start = std::chrono::steady_clock::now();
    const auto ids = (*t)->Encode(text);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ((*t)->Decode(ids), text) << pre;
    EXPECT_LT(seconds, 2.0) << pre;
    std::printf("tokenizer: pre %-7s %zu bytes in %.1f ms\n", pre, text.size(), seconds * 1e3);
  }
}

// A SentencePiece-style ("llama") vocabulary: merges by score, <0xXX> byte fallback.
constexpr char kSp[] = "\xE2\x96\x81";  // U+2581, SentencePiece's space

TokenizerData TinySpmData(bool with_byte_tokens = true) {
  TokenizerData d;
  d.model = "llama";
  auto add = [&](std::string text, int type, float score) {
    d.tokens.push_back(std::move(text));
    d.token_types.push_back(type);
    d.scores.push_back(score);
  };
  add("<unk>", 2, 0);
  add("<s>", 3, 0);
  add("</s>", 3, 0);
  if (with_byte_tokens) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; ++b)
      add(std::string{'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'}, 6, 0);
  }
  for (const char* c : {"h", "e", "l", "o", "w", "r", "d"}) add(c, 1, -2);
  add(kSp, 1, -1);
  const std::pair<std::string, float> merged[] = {{std::string(kSp) + "hello", -1},
                                                  {std::string(kSp) + "world", -1},
                                                  {"llo", -5},
                                                  {std::string(kSp) + "he", -6},
                                                  {std::string(kSp) + "wor", -6},
                                                  {"ll", -7},
                                                  {"ld", -7},
                                                  {"he", -8},
                                                  {"or", -8},
                                                  {std::string(kSp) + "h", -9},
                                                  {std::string(kSp) + "w", -9}};
  for (const auto& [text, score] : merged) add(text, 1, score);
  d.bos = 1;
  d.eos = 2;
  d.unk = 0;
  d.add_bos = true;
  return d;
}

TEST(TinySpmTokenizerTest, MergesByScoreAndDecodes) {
  auto t = Tokenizer::FromData(TinySpmData());
  ASSERT_TRUE(t.ok()) << t.status();
  const Tokenizer& tok = **t;
  EXPECT_EQ(tok.model(), "llama");
  const int32_t hello = tok.TokenId(std::string(kSp) + "hello");
  const int32_t world = tok.TokenId(std::string(kSp) + "world");
  const int32_t sp_h = tok.TokenId(std::string(kSp) + "h");
  ASSERT_GE(hello, 0);
  // "hello world" is escaped to "▁hello▁world" and merges, best score first, into two tokens.
  EXPECT_THAT(tok.Encode("hello world"), ElementsAre(hello, world));
  EXPECT_EQ(tok.Decode(tok.Encode("hello world")), "hello world");
  EXPECT_THAT(tok.Encode("hello", true, /*add_special=*/true), ElementsAre(1, hello));
  // "é" is no token: it falls back to its two byte tokens.
  const auto ids = tok.Encode("h\xC3\xA9");
  EXPECT_THAT(ids, ElementsAre(sp_h, tok.TokenId("<0xC3>"), tok.TokenId("<0xA9>")));
  EXPECT_EQ(tok.Decode(ids), "h\xC3\xA9");
  // Text after a special token gets its own space prefix (llama.cpp does the same).
  EXPECT_THAT(tok.Encode("<s>hello"), ElementsAre(1, hello));
  EXPECT_EQ(tok.Decode(tok.Encode("<s>hello")), "<s> hello");
  // Streaming drops the prefix space of the first token only.
  StreamDecoder stream(tok);
  EXPECT_EQ(stream.Push(hello), "hello");
  EXPECT_EQ(stream.Push(world), " world");
  EXPECT_EQ(stream.Push(tok.TokenId("<0xC3>")), "");
  EXPECT_EQ(stream.Push(tok.TokenId("<0xA9>")), "\xC3\xA9");
  EXPECT_EQ(stream.Flush(), "");
}

TEST(TinySpmTokenizerTest, UnknownWithoutByteTokens) {
  auto t = Tokenizer::FromData(TinySpmData(/*with_byte_tokens=*/false));
  ASSERT_TRUE(t.ok()) << t.status();
  const int32_t sp_h = (*t)->TokenId(std::string(kSp) + "h");
  EXPECT_THAT((*t)->Encode("h\xC3\xA9"), ElementsAre(sp_h, 0, 0));
  TokenizerData bad = TinySpmData();
  bad.scores.pop_back();
  EXPECT_FALSE(Tokenizer::FromData(bad).ok());
}

// The SentencePiece-style path against llama.cpp, on a small vocabulary-only GGUF made by
// tests/reference/gen_spm_reference.py (no SentencePiece model ships with the project).
TEST(SpmReferenceTest, MatchesLlamaCpp) {
  const std::string dir = SourceDir() + "/tests/reference/";
  auto gguf = GgufFile::Open(dir + "tiny_spm.gguf");
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  auto tok = Tokenizer::FromGguf(**gguf);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const Tokenizer& t = **tok;
  EXPECT_EQ(t.model(), "llama");
  EXPECT_TRUE(t.add_bos());
  EXPECT_TRUE(t.strips_leading_space());
  std::ifstream in(dir + "spm_cases.jsonl");
  ASSERT_TRUE(in) << "cannot read " << dir << "spm_cases.jsonl";
  std::string line;
  std::getline(in, line);
  const int count = nlohmann::json::parse(line).at("count").get<int>();
  int n = 0, ids_match = 0, text_match = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    const std::string text = j.contains("hex") ? HexToBytes(j.at("hex").get<std::string>())
                                               : j.at("text").get<std::string>();
    const bool special = j.at("special").get<bool>();
    const auto want = j.at("ids").get<std::vector<int32_t>>();
    const std::string want_text = HexToBytes(j.at("decoded_hex").get<std::string>());
    const auto ids = t.Encode(text, special);
    EXPECT_EQ(ids, want) << "text: \"" << Printable(text) << "\" special=" << special;
    // llama.cpp's detokenizer (special tokens rendered, first token's prefix space dropped).
    const std::string decoded = t.Decode(want);
    EXPECT_EQ(decoded, want_text) << "text: \"" << Printable(text) << "\"";
    StreamDecoder stream(t);
    std::string joined;
    for (int32_t id : want) {
      const std::string part = stream.Push(id);
      EXPECT_TRUE(unicode::IsValidUtf8(part));
      joined += part;
    }
    joined += stream.Flush();
    EXPECT_EQ(joined, unicode::SanitizeUtf8(decoded));
    ++n;
    ids_match += ids == want;
    text_match += decoded == want_text;
  }
  EXPECT_EQ(n, count);
  EXPECT_GE(n, 300);
  std::printf("tokenizer (spm): ids match llama.cpp for %d of %d cases, decoded text for %d\n",
              ids_match, n, text_match);
}

TEST(TinyTokenizerTest, PreTokenizersSplitAsTheirFamiliesDo) {
  // With no merges beyond the tiny set, the pieces show through as byte ids, so compare
  // piece boundaries via the splitter directly.
  auto split = [](const std::string& pre, const std::string& text) {
    TokenizerData d = TinyData();
    d.pre = pre;
    auto t = Tokenizer::FromData(d);
    EXPECT_TRUE(t.ok()) << t.status();
    std::vector<RegexSplitter::Piece> pieces;
    (*t)->splitter().Split(text, &pieces);
    std::vector<std::string> out;
    for (auto [b, e] : pieces) out.push_back(text.substr(b, e - b));
    return out;
  };
  EXPECT_THAT(split("gpt-2", "I'll pay 1234 now!!  ok"),
              ElementsAre("I", "'ll", " pay", " 1234", " now", "!!", " ", " ok"));
  EXPECT_THAT(split("smollm", "pay 1234"), ElementsAre("pay", " ", "1", "2", "3", "4"));
  EXPECT_THAT(split("llama3", "I'LL pay 12345\n\n x"),
              ElementsAre("I", "'LL", " pay", " ", "123", "45", "\n\n", " x"));
  EXPECT_THAT(split("qwen2", "x 12"), ElementsAre("x", " ", "1", "2"));
  EXPECT_THAT(split("gpt-2", "a\t\tb"), ElementsAre("a", "\t", "\t", "b"));
  EXPECT_THAT(split("gpt-2",
                    "a\xC2\x85\xC2\x85"
                    "b"),  // U+0085 counts as whitespace
              ElementsAre("a", "\xC2\x85", "\xC2\x85", "b"));
}

}  // namespace
}  // namespace tandem::model
