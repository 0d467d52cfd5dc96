// Gemma 3 270M (Q4_K_M; `scripts/fetch-model gemma3-270m`, which `make test` runs) against
// llama.cpp's outputs, committed in tests/reference/gemma3/ by
// tests/reference/gen_gemma3_reference.py: the SentencePiece tokenizer's ids on the same
// strings as the default model's cases plus Gemma's own, and greedy tokens teacher-forced
// through prefill and decode (two prompts run past the 512-token sliding window), held to
// llama.cpp's own spread between its two attention paths (flash attention on and off), the
// project's accepted criterion (tests/reference/README.md).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <span>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvcache/kv_cache.h"
#include "model/batch_builder.h"
#include "model/gguf_file.h"
#include "model/llama_model.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tests/support/greedy_judge.h"
#include "tests/support/reference_cases.h"

namespace tandem::model {
namespace {

using testing::Printable;
using testing::SourceDir;

// How far llama.cpp is from itself on this model (greedy.json's header, `self_spread`,
// measured 2026-12-06): with flash attention on instead of off, teacher-forced over the same
// 14 x 64 positions, 16 positions (1.8%) get another greedy token, at llama.cpp top-2 gaps up
// to 0.444; its last-prompt logits at the reference's top 64 ids move by up to 9.9e-2 of
// max |logit| (2.8e-2 mean). tandem is held to that spread:
// - a greedy token may differ from llama.cpp's only at a near-tie, where llama.cpp's top-2
//   gap or the exact model's is below kNearTie, or where the exact model picks tandem's token
//   (then llama.cpp's rounding is what differs). The exact model is greedy.json's
//   exact_argmax / exact_gap: float64 on gguf-py's weights, no activation rounding, the exact
//   GELU (llama.cpp reads an fp16 table). llama.cpp itself picks another token than the exact
//   model at 10 of the 896 positions, at exact gaps up to 0.465; and at one position (prompt
//   7, token 29) llama.cpp's gap is 0.637 where the exact model's is 0.037;
// - at most kMaxMismatchShare of the positions may differ, from llama.cpp and from the exact
//   model (llama.cpp: 10 of 896 from the exact model);
// - top-64 logits within kMaxTopLogitErr (worst prompt) and kMaxMeanTopLogitErr (mean).
constexpr double kNearTie = 0.45;
constexpr double kMaxMismatchShare = 0.025;
constexpr double kMaxTopLogitErr = 0.1;
constexpr double kMaxMeanTopLogitErr = 0.03;
// The 64 reference positions: the first kDecodeSteps + 1 judged after the prompt's prefill
// and each decode step, the other kChunkRows - 1 from one prefill chunk of the tokens before.
constexpr int kDecodeSteps = 16;
constexpr int kChunkRows = 48;

std::string ModelPath() { return SourceDir() + "/models/gemma-3-270m-q4_k_m.gguf"; }

nlohmann::json ReadJson(const std::string& name) {
  return testing::ReadReferenceJson("gemma3/" + name);
}

class Gemma3Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto file = GgufFile::Open(ModelPath());
    if (!file.ok()) {
      error_ = new std::string(file.status().ToString() +
                               " (fetch it with scripts/fetch-model gemma3-270m; make test does)");
      return;
    }
    file_ = file->release();
    auto tok = Tokenizer::FromGguf(*file_);
    if (!tok.ok()) {
      error_ = new std::string(tok.status().ToString());
      return;
    }
    tokenizer_ = tok->release();
  }
  void SetUp() override {
    if (error_ != nullptr) GTEST_FAIL() << *error_;
  }

  static inline GgufFile* file_ = nullptr;
  static inline Tokenizer* tokenizer_ = nullptr;
  static inline std::string* error_ = nullptr;
};

TEST_F(Gemma3Test, ConfigIsGemma3s) {
  auto c = ModelConfig::FromGguf(*file_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "gemma3");
  EXPECT_EQ(c->n_layers, 18);
  EXPECT_EQ(c->hidden, 640);
  EXPECT_EQ(c->n_heads, 4);
  EXPECT_EQ(c->n_kv_heads, 1);
  EXPECT_EQ(c->head_dim, 256);
  EXPECT_EQ(c->vocab_size, 262144);
  EXPECT_EQ(c->sliding_window, 512);
  EXPECT_FLOAT_EQ(c->rope_theta, 1e6f);
  EXPECT_FLOAT_EQ(c->rope_theta_swa, 1e4f);
  int global = 0;
  for (int il = 0; il < c->n_layers; ++il) global += !c->IsSlidingLayer(il);
  EXPECT_EQ(global, 3);  // layers 5, 11, 17
  EXPECT_FALSE(c->IsSlidingLayer(17));
  // Its activations pass fp16's range: a GPU runs it in bf16 (tests/cuda/gemma3_forward_test.cc).
  EXPECT_TRUE(c->f16_overflows);
  EXPECT_EQ(c->DefaultActivations(), kernels::ActivationDType::kBF16);
}

TEST_F(Gemma3Test, TokenizerMetadata) {
  const Tokenizer& t = *tokenizer_;
  EXPECT_EQ(t.model(), "llama");
  EXPECT_EQ(t.vocab_size(), 262144);
  EXPECT_EQ(t.bos_id(), 2);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_TRUE(t.add_bos());
  EXPECT_EQ(t.TokenId("<start_of_turn>"), 105);
  EXPECT_EQ(t.TokenId("<end_of_turn>"), 106);
}

TEST_F(Gemma3Test, TokenizerMatchesLlamaCpp) {
  auto cases =
      testing::LoadTokenizerCases(SourceDir() + "/tests/reference/gemma3/tokenizer_cases.jsonl");
  ASSERT_TRUE(cases.ok()) << cases.status();
  ASSERT_EQ(static_cast<int>(cases->cases.size()), cases->expected_count);
  ASSERT_GE(cases->cases.size(), 300u);
  int matched = 0, decoded_ok = 0;
  for (const testing::TokenizerCase& c : cases->cases) {
    const std::vector<int32_t> ids = tokenizer_->Encode(c.text, c.special);
    EXPECT_EQ(ids, c.ids) << "text: \"" << Printable(c.text) << "\" special=" << c.special;
    matched += ids == c.ids;
    const std::string decoded = tokenizer_->Decode(c.ids);
    EXPECT_EQ(decoded, c.decoded) << "ids of \"" << Printable(c.text) << "\"";
    decoded_ok += decoded == c.decoded;
  }
  std::printf("[ gemma3    ] tokenizer: %d of %zu llama.cpp cases encode alike, %d decode alike\n",
              matched, cases->cases.size(), decoded_ok);
}

TEST_F(Gemma3Test, PromptTokensMatchLlamaCppWithBos) {
  const nlohmann::json ref = ReadJson("greedy.json");
  for (const auto& p : ref["prompts"]) {
    const std::string prompt = p["prompt"].get<std::string>();
    std::vector<int32_t> ids = {tokenizer_->bos_id()};
    const std::vector<int32_t> body = tokenizer_->Encode(prompt);
    ids.insert(ids.end(), body.begin(), body.end());
    EXPECT_EQ(ids, p["prompt_tokens"].get<std::vector<int32_t>>()) << Printable(prompt);
  }
}

// Teacher-forced through the engine's own paths: the prompt as one prefill, then llama.cpp's
// 64 tokens one decode step at a time (the long prompts decode past the sliding window).
TEST_F(Gemma3Test, GreedyTokensMatchLlamaCppWithinItsOwnSpread) {
  kernels::cpu::CpuBackendConfig bc;
  bc.threads = 2;
  auto backend = kernels::cpu::CreateCpuBackend(bc);
  ASSERT_TRUE(backend.ok()) << backend.status();
  ModelOptions opts;
  opts.max_batch_tokens = 2048;
  opts.max_logit_rows = kChunkRows;
  opts.max_seqs = 1;
  auto model = LlamaModel::Load(*file_, **backend, opts);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = (*model)->config();
  kvcache::KvCacheConfig kc = (*model)->KvCacheLayout(kernels::KvDType::kF16);
  kc.num_blocks = 2048 / kc.block_size;
  auto cache = kvcache::KvCache::Create(kc, **backend);
  ASSERT_TRUE(cache.ok()) << cache.status();

  const nlohmann::json ref = ReadJson("greedy.json");
  const nlohmann::json tops = ReadJson("last_logits.json");
  const auto& prompts = ref["prompts"];
  ASSERT_GE(prompts.size(), 12u);
  testing::GreedyJudge judge(kNearTie);
  int long_prompts = 0;
  double worst_top = 0, sum_top = 0;
  std::vector<float> logits(static_cast<size_t>(kChunkRows) * c.vocab_size);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& p = prompts[i];
    const std::vector<int32_t> prompt = p["prompt_tokens"].get<std::vector<int32_t>>();
    const testing::GreedyReference want = testing::GreedyReference::FromJson(p);
    ASSERT_EQ(want.tokens.size(), static_cast<size_t>(kDecodeSteps + kChunkRows));
    long_prompts += static_cast<int>(prompt.size()) > c.sliding_window;
    kvcache::BlockTable table(kc.block_size);
    ASSERT_TRUE(table.Reserve((*cache)->pool(), prompt.size() + want.tokens.size()).ok());
    BatchBuilder bb((*model)->max_blocks_per_seq());
    bb.AddSequence(table, prompt, 0, true);
    ASSERT_TRUE((*model)->Forward(bb.batch(), (*cache)->view(), logits.data()).ok());
    const double err = testing::TopLogitError(tops["prompts"][i], logits.data());
    worst_top = std::max(worst_top, err);
    sum_top += err;
    const std::string where = "prompt " + std::to_string(i);
    // Positions 0..kDecodeSteps-1 one decode step at a time, the rest as one prefill chunk
    // over the cached context (both attention paths, through the window on long prompts).
    int pos = static_cast<int>(prompt.size());
    for (int k = 0; k < kDecodeSteps; ++k) {
      judge.Judge(want, logits.data(), c.vocab_size, k, where);
      bb.Clear();
      bb.AddSequence(table, std::span(&want.tokens[k], 1), pos++, true);
      ASSERT_TRUE((*model)->Forward(bb.batch(), (*cache)->view(), logits.data()).ok());
    }
    judge.Judge(want, logits.data(), c.vocab_size, kDecodeSteps, where);
    bb.Clear();
    bb.AddSequence(table, std::span(&want.tokens[kDecodeSteps], kChunkRows - 1), pos, false);
    StepBatch& chunk = bb.mutable_batch();
    for (int r = 0; r < kChunkRows - 1; ++r) chunk.logit_rows.push_back(r);
    ASSERT_TRUE((*model)->Forward(chunk, (*cache)->view(), logits.data()).ok());
    for (int r = 0; r < kChunkRows - 1; ++r) {
      judge.Judge(want, &logits[static_cast<size_t>(r) * c.vocab_size], c.vocab_size,
                  kDecodeSteps + 1 + r, where);
    }
    table.Release((*cache)->pool());
  }
  const auto& spread = ref["header"]["self_spread"];
  const double mean_top = sum_top / static_cast<double>(prompts.size());
  const int positions = judge.positions(), mismatches = judge.mismatches();
  std::printf(
      "[ gemma3    ] against the exact float64 model: tandem's token differs at %d of %d "
      "positions, llama.cpp's at %d\n",
      judge.exact_differs(), positions, judge.llama_exact_differs());
  std::printf(
      "[ gemma3    ] %d of %d teacher-forced positions differ from llama.cpp (llama.cpp "
      "flash attention on vs off: %d of %d); at %d of them the exact model picks "
      "tandem's token; largest near-tie gap (the smaller of llama.cpp's and the exact model's) at "
      "the others %.3f; top-64 logits "
      "err worst %.2e / mean %.2e of max |logit| (llama.cpp self %.2e / %.2e)\n",
      mismatches, positions, spread["mismatches"].get<int>(), spread["positions"].get<int>(),
      judge.exact_sides(), judge.worst_gap(), worst_top, mean_top,
      spread["top_logit_err_worst"].get<double>(), spread["top_logit_err_mean"].get<double>());
  EXPECT_GE(long_prompts, 2);
  EXPECT_LE(mismatches, kMaxMismatchShare * positions);
  EXPECT_LE(judge.exact_differs(), kMaxMismatchShare * positions);
  EXPECT_LE(worst_top, kMaxTopLogitErr);
  EXPECT_LE(mean_top, kMaxMeanTopLogitErr);
}

}  // namespace
}  // namespace tandem::model
