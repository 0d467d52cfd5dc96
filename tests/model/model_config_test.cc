#include "model/model_config.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <set>
#include <string>

#include "common/check.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf_file.h"
#include "tests/support/gguf_writer.h"
#include "tests/support/test_model.h"

namespace tandem::model {
namespace {

using kernels::DType;
using testing::GgufWriter;
using ::testing::HasSubstr;
using testing::TestModelSpec;

absl::StatusOr<ModelConfig> ConfigOf(const GgufWriter& w) {
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> f,
                          GgufFile::FromBuffer(w.Serialize(), "test-model.gguf"));
  return ModelConfig::FromGguf(*f);
}

absl::StatusOr<ModelConfig> ConfigOf(const TestModelSpec& spec) {
  auto w = testing::BuildTestModel(spec);
  if (!w.ok()) return w.status();
  return ConfigOf(*w);
}

std::string ErrorOf(const absl::StatusOr<ModelConfig>& r) {
  return r.ok() ? std::string("<ok>") : std::string(r.status().message());
}

TEST(ModelConfig, MhaLlama) {
  TestModelSpec spec;
  spec.n_kv_heads = spec.n_heads;
  spec.n_layers = 3;
  spec.context_length = 512;
  spec.rope_theta = 5e5f;
  auto c = ConfigOf(spec);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "llama");
  EXPECT_EQ(c->n_layers, 3);
  EXPECT_EQ(c->hidden, 64);
  EXPECT_EQ(c->n_heads, 4);
  EXPECT_EQ(c->n_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->q_dim(), 64);
  EXPECT_EQ(c->kv_dim(), 64);
  EXPECT_EQ(c->ffn_dim, 128);
  EXPECT_EQ(c->vocab_size, testing::TestTokenizerSize());  // from the token list
  EXPECT_EQ(c->context_length, 512);
  EXPECT_EQ(c->rope_theta, 5e5f);
  EXPECT_EQ(c->rope_dim, 16);
  EXPECT_EQ(c->rope_style, kernels::RopeStyle::kNormal);
  EXPECT_EQ(c->rms_eps, 1e-5f);
  EXPECT_TRUE(c->tied_embeddings);
  EXPECT_FALSE(c->has_qkv_bias);
  EXPECT_FALSE(c->f16_overflows);
  EXPECT_EQ(c->DefaultActivations(), kernels::ActivationDType::kF16);
}

TEST(ModelConfig, GqaUntied) {
  TestModelSpec spec;
  spec.n_heads = 8;
  spec.n_kv_heads = 2;
  spec.hidden = 128;
  spec.tied = false;
  spec.weight_type = DType::kQ4_1;
  auto c = ConfigOf(spec);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_heads, 8);
  EXPECT_EQ(c->n_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->kv_dim(), 32);
  EXPECT_FALSE(c->tied_embeddings);
}

TEST(ModelConfig, Qwen2WithBias) {
  TestModelSpec spec;
  spec.arch = "qwen2";
  spec.qkv_bias = true;
  spec.rms_eps = 1e-6f;
  auto c = ConfigOf(spec);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "qwen2");
  EXPECT_EQ(c->rope_style, kernels::RopeStyle::kNeox);
  EXPECT_TRUE(c->has_qkv_bias);
  EXPECT_EQ(c->rms_eps, 1e-6f);
}

TEST(ModelConfig, EveryWeightTypeLoads) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ4_0, DType::kQ4_1, DType::kQ5_0,
                  DType::kQ5_1, DType::kQ8_0}) {
    TestModelSpec spec;
    spec.weight_type = t;
    spec.embd_type = t;
    spec.tied = false;
    const std::string path = ::testing::TempDir() + "/model_config_test_" +
                             std::to_string(getpid()) + "_" + std::string(kernels::DTypeName(t)) +
                             ".gguf";
    ASSERT_TRUE(testing::WriteTestModel(spec, path).ok());
    auto f = GgufFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    auto c = ModelConfig::FromGguf(**f);
    EXPECT_TRUE(c.ok()) << kernels::DTypeName(t) << ": " << c.status();
    EXPECT_EQ((*f)->FindTensor("blk.1.ffn_down.weight")->type, t);
    EXPECT_EQ((*f)->FindTensor("output.weight")->type, t);
    std::remove(path.c_str());
  }
}

TEST(ModelConfig, VocabFromKeyOrPaddedTokens) {
  TestModelSpec spec;
  spec.vocab = 320;
  auto c = ConfigOf(spec);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vocab_size, 320);
  // An explicit <arch>.vocab_size wins, and must then match the embedding.
  auto w = testing::BuildTestModel(spec);
  ASSERT_TRUE(w.ok());
  w->AddU32("llama.vocab_size", 330);
  EXPECT_THAT(ErrorOf(ConfigOf(*w)), HasSubstr("token_embd.weight"));
  w->RemoveKey("llama.vocab_size");
  w->AddU32("llama.vocab_size", 320);
  EXPECT_EQ(ConfigOf(*w)->vocab_size, 320);
}

TEST(ModelConfig, OptionalKeysHaveDefaults) {
  auto w = testing::BuildTestModel(TestModelSpec{});
  ASSERT_TRUE(w.ok());
  w->RemoveKey("llama.rope.freq_base");
  w->RemoveKey("llama.rope.dimension_count");
  w->RemoveKey("llama.attention.head_count_kv");
  // Without head_count_kv the model is MHA, so the GQA K/V shapes no longer match.
  EXPECT_THAT(ErrorOf(ConfigOf(*w)), HasSubstr("blk.0.attn_k.weight"));
  w->AddU32("llama.attention.head_count_kv", 2);
  auto c = ConfigOf(*w);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_theta, 10000.0f);
  EXPECT_EQ(c->rope_dim, c->head_dim);
}

TEST(ModelConfig, CorruptModelsNameTheProblem) {
  TestModelSpec spec;
  struct Case {
    testing::ModelCorruption kind;
    std::vector<std::string> expect;
  };
  const Case cases[] = {
      {testing::ModelCorruption::kMissingTensor, {"missing tensor 'blk.0.ffn_up.weight'"}},
      {testing::ModelCorruption::kWrongShape,
       {"tensor 'blk.0.attn_k.weight' has shape [64, 64], expected [64, 32]"}},
      {testing::ModelCorruption::kUnknownArch, {"architecture 'gpt-j' is not supported"}},
      {testing::ModelCorruption::kUnsupportedType, {"blk.0.attn_q.weight", "IQ4_NL"}},
      {testing::ModelCorruption::kTruncated, {"truncated"}},
      {testing::ModelCorruption::kBadMagic, {"bad magic"}},
  };
  for (const Case& c : cases) {
    const std::string path =
        ::testing::TempDir() + "/model_config_corrupt_" + std::to_string(getpid()) + ".gguf";
    ASSERT_TRUE(testing::WriteCorruptTestModel(spec, c.kind, path).ok());
    auto f = GgufFile::Open(path);
    absl::Status st = f.status();
    if (f.ok()) st = ModelConfig::FromGguf(**f).status();
    ASSERT_FALSE(st.ok()) << static_cast<int>(c.kind);
    for (const std::string& s : c.expect) EXPECT_THAT(st.message(), HasSubstr(s));
    EXPECT_THAT(st.message(), HasSubstr(path));
    std::remove(path.c_str());
  }
}

TEST(ModelConfig, InconsistentHyperParameters) {
  auto base = testing::BuildTestModel(TestModelSpec{});
  ASSERT_TRUE(base.ok());
  {
    GgufWriter w = *base;
    w.RemoveKey("llama.block_count");
    EXPECT_THAT(ErrorOf(ConfigOf(w)), HasSubstr("missing metadata key 'llama.block_count'"));
  }
  {
    GgufWriter w = *base;
    w.RemoveKey("llama.attention.head_count");
    w.AddU32("llama.attention.head_count", 5);
    EXPECT_THAT(ErrorOf(ConfigOf(w)), HasSubstr("not divisible by the 5 attention heads"));
  }
  {
    GgufWriter w = *base;
    w.RemoveKey("llama.attention.head_count_kv");
    w.AddU32("llama.attention.head_count_kv", 3);
    EXPECT_THAT(ErrorOf(ConfigOf(w)), HasSubstr("not a multiple of the 3 KV heads"));
  }
  {
    GgufWriter w = *base;
    w.RemoveKey("llama.embedding_length");
    w.AddU32("llama.embedding_length", 0);
    EXPECT_THAT(ErrorOf(ConfigOf(w)), HasSubstr("'llama.embedding_length' is 0"));
  }
  {
    GgufWriter w = *base;
    w.RemoveKey("llama.block_count");
    w.AddString("llama.block_count", "two");
    EXPECT_THAT(ErrorOf(ConfigOf(w)), HasSubstr("'llama.block_count' is string"));
  }
  {
    GgufWriter w = *base;
    w.RemoveKey("llama.block_count");
    w.AddU32("llama.block_count", 1);  // the file has layers 0 and 1
    EXPECT_THAT(ErrorOf(ConfigOf(w)), HasSubstr("tensors for layer 1"));
  }
  {
    GgufWriter w = *base;
    w.RemoveKey("general.architecture");
    EXPECT_THAT(ErrorOf(ConfigOf(w)), HasSubstr("'general.architecture'"));
  }
  {
    GgufWriter w = *base;  // a norm stored as F16
    GgufWriter::Tensor* t = w.FindTensor("blk.1.ffn_norm.weight");
    t->type = static_cast<uint32_t>(DType::kF16);
    t->data.resize(t->data.size() / 2);
    EXPECT_THAT(ErrorOf(ConfigOf(w)),
                HasSubstr("tensor 'blk.1.ffn_norm.weight' has type F16; norm and bias"));
  }
  {
    GgufWriter w = *base;
    w.RemoveTensor("output_norm.weight");
    EXPECT_THAT(ErrorOf(ConfigOf(w)), HasSubstr("missing tensor 'output_norm.weight'"));
  }
  {
    GgufWriter w = *base;  // an untied head of the wrong size
    GgufWriter::Tensor embd = *w.FindTensor("token_embd.weight");
    embd.name = "output.weight";
    embd.dims[1] -= 1;
    embd.data.resize(embd.data.size() / (embd.dims[1] + 1) * embd.dims[1]);
    w.AddRawTensor(embd);
    EXPECT_THAT(ErrorOf(ConfigOf(w)), HasSubstr("tensor 'output.weight' has shape"));
  }
}

TEST(ModelConfig, BiasMustBeInEveryLayer) {
  TestModelSpec spec;
  spec.arch = "qwen2";
  spec.qkv_bias = true;
  auto w = testing::BuildTestModel(spec);
  ASSERT_TRUE(w.ok());
  {
    GgufWriter v = *w;
    v.RemoveTensor("blk.1.attn_v.bias");
    EXPECT_THAT(ErrorOf(ConfigOf(v)), HasSubstr("missing tensor 'blk.1.attn_v.bias'"));
  }
  {
    GgufWriter v = *w;
    v.RemoveTensor("blk.0.attn_q.bias");
    v.RemoveTensor("blk.0.attn_k.bias");
    v.RemoveTensor("blk.0.attn_v.bias");
    EXPECT_THAT(ErrorOf(ConfigOf(v)), HasSubstr("'blk.1.attn_q.bias' is present"));
  }
}

TEST(ModelConfig, Gemma3Features) {
  TestModelSpec spec;
  spec.arch = "gemma3";
  spec.n_layers = 13;
  spec.head_dim = 32;  // q_dim 128 != hidden 64
  spec.sliding_window = 7;
  auto c = ConfigOf(spec);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_EQ(c->q_dim(), 128);
  EXPECT_EQ(c->rope_style, kernels::RopeStyle::kNeox);
  EXPECT_FLOAT_EQ(c->embedding_scale, 8.0f);  // sqrt(64)
  EXPECT_FLOAT_EQ(c->attention_scale, 1.0f / std::sqrt(32.0f));
  EXPECT_TRUE(c->has_qk_norm);
  EXPECT_TRUE(c->has_post_norms);
  EXPECT_EQ(c->ffn_activation, FfnActivation::kGeluTanh);
  // llama.cpp's default: every sixth layer (5, 11) global, local ones with RoPE base 10000.
  for (int il = 0; il < 13; ++il) {
    const bool global = il == 5 || il == 11;
    EXPECT_EQ(c->IsSlidingLayer(il), !global) << il;
    EXPECT_EQ(c->LayerWindow(il), global ? 0 : 7) << il;
    EXPECT_EQ(c->LayerRopeTheta(il), global ? spec.rope_theta : 10000.0f) << il;
  }

  // An explicit period and RoPE base; and a per-layer bool array.
  spec.n_layers = 4;
  spec.swa_pattern = 2;
  spec.rope_theta_swa = 50.0f;
  c = ConfigOf(spec);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->swa_layers, (std::vector<bool>{true, false, true, false}));
  EXPECT_EQ(c->LayerRopeTheta(0), 50.0f);
  auto w = testing::BuildTestModel(spec);
  ASSERT_TRUE(w.ok());
  w->RemoveKey("gemma3.attention.sliding_window_pattern");
  w->AddRaw("gemma3.attention.sliding_window_pattern", 9,
            std::string("\x07\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00"
                        "\x00\x01\x01\x00",
                        16));  // array of 4 bools: false, true, true, false
  c = ConfigOf(*w);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->swa_layers, (std::vector<bool>{false, true, true, false}));

  // No window key: every layer global.
  spec.sliding_window = 0;
  c = ConfigOf(spec);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->IsSlidingLayer(0));
  EXPECT_EQ(c->LayerRopeTheta(0), spec.rope_theta);
  // A window key of 0: no window either (llama.cpp's reading).
  w = testing::BuildTestModel(spec);
  ASSERT_TRUE(w.ok());
  w->AddU32("gemma3.attention.sliding_window", 0);
  c = ConfigOf(*w);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 0);
  EXPECT_FALSE(c->IsSlidingLayer(1));

  // What is not implemented is refused by name, not run wrong.
  w = testing::BuildTestModel(spec);
  ASSERT_TRUE(w.ok());
  w->AddF32("gemma3.final_logit_softcapping", 30.0f);
  EXPECT_THAT(ErrorOf(ConfigOf(*w)), HasSubstr("soft-capping"));
  w = testing::BuildTestModel(spec);
  w->AddF32("gemma3.rope.scaling.factor", 8.0f);
  EXPECT_THAT(ErrorOf(ConfigOf(*w)), HasSubstr("RoPE scaling"));
  w = testing::BuildTestModel(spec);
  w->RemoveTensor("blk.1.attn_k_norm.weight");
  EXPECT_THAT(ErrorOf(ConfigOf(*w)), HasSubstr("blk.1.attn_k_norm.weight"));
  w = testing::BuildTestModel(spec);
  w->RemoveTensor("blk.0.post_ffw_norm.weight");
  EXPECT_THAT(ErrorOf(ConfigOf(*w)), HasSubstr("post_ffw_norm"));
}

TEST(ModelConfig, TestModelIsDeterministicPerSeed) {
  TestModelSpec spec;
  auto a = testing::BuildTestModel(spec);
  auto b = testing::BuildTestModel(spec);
  spec.seed = 2;
  auto c = testing::BuildTestModel(spec);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->Serialize(), b->Serialize());
  EXPECT_NE(a->Serialize(), c->Serialize());
}

TEST(TestModel, TokenizerIsValidByteLevelBpe) {
  auto w = testing::BuildTestModel(TestModelSpec{});
  ASSERT_TRUE(w.ok());
  auto f = GgufFile::FromBuffer(w->Serialize(), "tok.gguf");
  ASSERT_TRUE(f.ok()) << f.status();
  auto tokens = (*f)->GetStringArray("tokenizer.ggml.tokens");
  auto types = (*f)->GetI32Array("tokenizer.ggml.token_type");
  auto merges = (*f)->GetStringArray("tokenizer.ggml.merges");
  ASSERT_TRUE(tokens.ok() && types.ok() && merges.ok());
  ASSERT_EQ(tokens->size(), types->size());
  EXPECT_GT(tokens->size(), 290u);
  EXPECT_LT(tokens->size(), 320u);
  EXPECT_EQ((*tokens)[2], "<|im_end|>");
  EXPECT_EQ((*types)[0], 3);
  EXPECT_EQ((*types)[3], 1);
  // GPT-2's mapping: '!' stands for itself, space is U+0120 'Ġ', newline U+010A 'Ċ'.
  EXPECT_EQ((*tokens)[3 + '!'], "!");
  EXPECT_EQ((*tokens)[3 + ' '], "\xC4\xA0");
  EXPECT_EQ((*tokens)[3 + '\n'], "\xC4\x8A");
  EXPECT_EQ((*tokens)[3 + 0], "\xC4\x80");     // byte 0 -> U+0100
  EXPECT_EQ((*tokens)[3 + 0xAD], "\xC5\x83");  // soft hyphen -> U+0143
  std::set<std::string_view> unique(tokens->begin(), tokens->end());
  EXPECT_EQ(unique.size(), tokens->size());
  // Every merge "a b" joins two tokens that exist into one that exists.
  for (std::string_view m : *merges) {
    const size_t sp = m.find(' ');
    ASSERT_NE(sp, std::string_view::npos) << m;
    const std::string left(m.substr(0, sp)), right(m.substr(sp + 1));
    EXPECT_TRUE(unique.count(left) && unique.count(right) && unique.count(left + right)) << m;
  }
  EXPECT_EQ(*(*f)->GetString("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(*(*f)->GetU32("tokenizer.ggml.eos_token_id"), 2u);
  EXPECT_THAT(*(*f)->GetString("tokenizer.chat_template"), HasSubstr("<|im_start|>"));
}

}  // namespace
}  // namespace tandem::model
