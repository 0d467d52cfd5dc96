// LlamaModel against the dense double-precision ReferenceModel on synthetic GGUF models, and
// the properties an engine relies on: batch invariance, paging, chunked prefill, bad batches.
#include "model/llama_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvcache/kv_cache.h"
#include "model/batch_builder.h"
#include "tests/support/reference_model.h"
#include "tests/support/test_model.h"

namespace tandem::model {
namespace {

using kernels::DType;
using kernels::KvDType;
using kernels::cpu::Isa;

std::string TempPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/", name, ".gguf");
}

// Max |a - b| / max |b| over a row.
double RelErr(const float* a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return num / den;
}

int Argmax(const float* x, int n) { return static_cast<int>(std::max_element(x, x + n) - x); }

struct Harness {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<kvcache::KvCache> cache;

  static Harness Make(const testing::TestModelSpec& spec, const std::string& name,
                      KvDType kv = KvDType::kF32, Isa isa = kernels::cpu::BestIsa(),
                      int threads = 1, int num_blocks = 128) {
    Harness h;
    const std::string path = TempPath(name);
    EXPECT_TRUE(testing::WriteTestModel(spec, path).ok());
    auto file = GgufFile::Open(path);
    EXPECT_TRUE(file.ok()) << file.status();
    h.file = std::move(*file);
    kernels::cpu::CpuBackendConfig bc;
    bc.threads = threads;
    bc.isa = isa;
    auto backend = kernels::cpu::CreateCpuBackend(bc);
    EXPECT_TRUE(backend.ok()) << backend.status();
    h.backend = std::move(*backend);
    ModelOptions opts;
    opts.max_batch_tokens = 64;
    opts.max_logit_rows = 64;
    opts.block_size = 4;  // small pages so short test sequences span many of them
    auto model = LlamaModel::Load(*h.file, *h.backend, opts);
    EXPECT_TRUE(model.ok()) << model.status();
    h.model = std::move(*model);
    kvcache::KvCacheConfig kc;
    kc.n_layers = h.model->config().n_layers;
    kc.n_kv_heads = h.model->config().n_kv_heads;
    kc.head_dim = h.model->config().head_dim;
    kc.block_size = opts.block_size;
    kc.dtype = kv;
    kc.num_blocks = num_blocks;
    auto cache = kvcache::KvCache::Create(kc, *h.backend);
    EXPECT_TRUE(cache.ok()) << cache.status();
    h.cache = std::move(*cache);
    return h;
  }

  int vocab() const { return model->config().vocab_size; }
};

std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = 3 + rng() % (vocab - 3);
  return t;
}

// Runs `prompt` as one prefill with logits for every position.
std::vector<float> PrefillAllLogits(Harness& h, const std::vector<int32_t>& prompt,
                                    kvcache::BlockTable& table) {
  EXPECT_TRUE(table.Reserve(h.cache->pool(), prompt.size()).ok());
  BatchBuilder bb(h.model->max_blocks_per_seq());
  bb.AddSequence(table, prompt, 0, false);
  StepBatch& b = bb.mutable_batch();
  b.logit_rows.resize(prompt.size());
  std::iota(b.logit_rows.begin(), b.logit_rows.end(), 0);
  std::vector<float> logits(prompt.size() * h.vocab());
  absl::Status s = h.model->Forward(b, h.cache->view(), logits.data());
  EXPECT_TRUE(s.ok()) << s;
  table.SetNumTokens(prompt.size());
  return logits;
}

struct SpecCase {
  const char* name;
  testing::TestModelSpec spec;
  double tol;  // max |diff| / max |ref| over each row of logits
};

std::vector<SpecCase> SpecCases() {
  std::vector<SpecCase> cases;
  auto add = [&](const char* name, auto edit, double tol) {
    testing::TestModelSpec s;
    edit(s);
    cases.push_back({name, s, tol});
  };
  // Float weights compute in float: only summation order differs from the double reference.
  add(
      "f32_gqa",
      [](auto& s) {
        s.weight_type = DType::kF32;
        s.embd_type = DType::kF32;
      },
      1e-4);
  add(
      "f16_mha",
      [](auto& s) {
        s.weight_type = DType::kF16;
        s.embd_type = DType::kF16;
        s.n_kv_heads = s.n_heads;
      },
      1e-4);
  add(
      "bf16_untied",
      [](auto& s) {
        s.weight_type = DType::kBF16;
        s.embd_type = DType::kBF16;
        s.tied = false;
      },
      1e-4);
  // Quantized weights meet activations quantized to int8 per block of 32 (as llama.cpp
  // does): each dot product carries ~0.4% relative error per layer input; 3e-2 bounds it.
  add(
      "q8_0_gqa", [](auto& s) { s.weight_type = DType::kQ8_0; }, 3e-2);
  add(
      "q4_0_mha_untied",
      [](auto& s) {
        s.weight_type = DType::kQ4_0;
        s.n_kv_heads = s.n_heads;
        s.tied = false;
        s.embd_type = DType::kF16;
      },
      3e-2);
  add(
      "q4_1_gqa4",
      [](auto& s) {
        s.weight_type = DType::kQ4_1;
        s.n_heads = 8;
        s.n_kv_heads = 2;
        s.n_layers = 3;
      },
      3e-2);
  // Q5 weights run the 8-bit kernels (Q5_0 as Q8_0, Q5_1 with Q4_1's minimum term); the
  // embeddings are Q5 too, so the gather and the tied (Q5_0) or untied (Q5_1) output head
  // read them.
  add(
      "q5_0_gqa",
      [](auto& s) {
        s.weight_type = DType::kQ5_0;
        s.embd_type = DType::kQ5_0;
      },
      3e-2);
  add(
      "q5_1_untied",
      [](auto& s) {
        s.weight_type = DType::kQ5_1;
        s.embd_type = DType::kQ5_1;
        s.tied = false;
      },
      3e-2);
  add(
      "qwen2_bias_neox",
      [](auto& s) {
        s.arch = "qwen2";
        s.qkv_bias = true;
        s.weight_type = DType::kF32;
        s.embd_type = DType::kF32;
      },
      1e-4);
  // Gemma 3's layer: scaled embeddings, QK-norm, post-norms, GeGLU, head_dim apart from
  // hidden / heads, and sliding-window layers (window 5 < the 13-token prompt, every second
  // layer global) rotating with their own RoPE base.
  auto gemma = [](testing::TestModelSpec& s) {
    s.arch = "gemma3";
    s.n_layers = 3;
    s.head_dim = 32;
    s.n_heads = 4;
    s.n_kv_heads = 1;
    s.rms_eps = 1e-6f;
    s.sliding_window = 5;
    s.swa_pattern = 2;
    s.rope_theta_swa = 100.0f;
  };
  add(
      "gemma3_f32",
      [&](auto& s) {
        gemma(s);
        s.weight_type = DType::kF32;
        s.embd_type = DType::kF32;
      },
      1e-4);
  add(
      "gemma3_q8_0",
      [&](auto& s) {
        gemma(s);
        s.weight_type = DType::kQ8_0;
      },
      3e-2);
  // K-quants need rows of 256: a wider model. Q4_K (per-32 scales and minima) in a Gemma
  // layer, Q6_K (per-16 scales) in a Llama one with a Q5_K output head.
  add(
      "gemma3_q4_k",
      [&](auto& s) {
        gemma(s);
        s.hidden = 256;
        s.ffn = 512;
        s.head_dim = 64;
        s.weight_type = DType::kQ4_K;
      },
      3e-2);
  add(
      "q6_k_q5_k_untied",
      [](auto& s) {
        s.hidden = 256;
        s.ffn = 512;
        s.weight_type = DType::kQ6_K;
        s.embd_type = DType::kQ5_K;
        s.tied = false;
      },
      3e-2);
  add(
      "q3_k_q2_k",
      [](auto& s) {
        s.hidden = 256;
        s.ffn = 512;
        s.weight_type = DType::kQ3_K;
        s.embd_type = DType::kQ2_K;
      },
      3e-2);
  return cases;
}

TEST(LlamaModelTest, LogitsMatchDenseReferenceForEveryTypeAndIsa) {
  for (const SpecCase& sc : SpecCases()) {
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
      if (!kernels::cpu::IsaAvailable(isa)) continue;
      SCOPED_TRACE(absl::StrCat(sc.name, " isa=", std::string(kernels::cpu::IsaName(isa))));
      Harness h = Harness::Make(sc.spec, sc.name, KvDType::kF32, isa);
      auto ref = testing::ReferenceModel::Create(*h.file);
      ASSERT_TRUE(ref.ok()) << ref.status();
      const std::vector<int32_t> prompt = RandomTokens(13, h.vocab(), 11);
      const auto want = (*ref)->Forward(prompt);
      kvcache::BlockTable table(h.cache->config().block_size);
      const std::vector<float> got = PrefillAllLogits(h, prompt, table);
      double worst = 0;
      for (size_t t = 0; t < prompt.size(); ++t) {
        worst = std::max(worst, RelErr(&got[t * h.vocab()], want[t]));
      }
      EXPECT_LE(worst, sc.tol);
      std::printf("[ reference ] %-16s %-7s max rel err %.2e (tol %.0e)\n", sc.name,
                  std::string(kernels::cpu::IsaName(isa)).c_str(), worst, sc.tol);
      table.Release(h.cache->pool());
    }
  }
}

// A sequence's schedule-independent trace: logits at each greedy step.
struct Trace {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
};

constexpr int kGenTokens = 6;

// Runs sequences alone: full prefill, then greedy decode.
Trace RunAlone(Harness& h, const std::vector<int32_t>& prompt) {
  Trace tr;
  kvcache::BlockTable table(h.cache->config().block_size);
  BatchBuilder bb(h.model->max_blocks_per_seq());
  std::vector<float> logits(h.vocab());
  std::vector<int32_t> next = prompt;
  int pos = 0;
  for (int step = 0; step <= kGenTokens; ++step) {
    EXPECT_TRUE(table.Reserve(h.cache->pool(), pos + next.size()).ok());
    bb.Clear();
    bb.AddSequence(table, next, pos, true);
    EXPECT_TRUE(h.model->Forward(bb.batch(), h.cache->view(), logits.data()).ok());
    pos += next.size();
    table.SetNumTokens(pos);
    tr.logits.push_back(logits);
    next = {Argmax(logits.data(), h.vocab())};
    tr.tokens.push_back(next[0]);
  }
  table.Release(h.cache->pool());
  return tr;
}

// Runs all sequences together: prompts consumed in chunks of `chunk` tokens while sequences
// whose prompt is done decode, all in the same batches.
std::vector<Trace> RunMixed(Harness& h, const std::vector<std::vector<int32_t>>& prompts,
                            int chunk) {
  const int n = static_cast<int>(prompts.size());
  std::vector<Trace> traces(n);
  std::vector<kvcache::BlockTable> tables(n, kvcache::BlockTable(h.cache->config().block_size));
  std::vector<int> pos(n, 0);
  std::vector<int32_t> last(n, -1);
  BatchBuilder bb(h.model->max_blocks_per_seq());
  std::vector<float> logits(n * h.vocab());
  for (;;) {
    bb.Clear();
    std::vector<std::pair<int, int>> rows;  // (sequence, logit row)
    std::vector<std::vector<int32_t>> pieces(n);
    for (int i = 0; i < n; ++i) {
      if (static_cast<int>(traces[i].tokens.size()) > kGenTokens) continue;
      const int psize = static_cast<int>(prompts[i].size());
      if (pos[i] < psize) {
        const int take = std::min(chunk + i, psize - pos[i]);  // uneven chunks per sequence
        pieces[i].assign(prompts[i].begin() + pos[i], prompts[i].begin() + pos[i] + take);
      } else {
        pieces[i] = {last[i]};
      }
      EXPECT_TRUE(tables[i].Reserve(h.cache->pool(), pos[i] + pieces[i].size()).ok());
      const bool done_prompt = pos[i] + static_cast<int>(pieces[i].size()) >= psize;
      const int row = bb.AddSequence(tables[i], pieces[i], pos[i], done_prompt);
      if (row >= 0) rows.push_back({i, row});
    }
    if (bb.batch().n_seqs == 0) break;
    absl::Status s = h.model->Forward(bb.batch(), h.cache->view(), logits.data());
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) break;
    for (int i = 0; i < n; ++i) {
      pos[i] += pieces[i].size();
      tables[i].SetNumTokens(pos[i]);
    }
    for (auto [i, row] : rows) {
      const float* l = &logits[row * h.vocab()];
      traces[i].logits.emplace_back(l, l + h.vocab());
      last[i] = Argmax(l, h.vocab());
      traces[i].tokens.push_back(last[i]);
    }
  }
  for (auto& t : tables) t.Release(h.cache->pool());
  return traces;
}

TEST(LlamaModelTest, SequenceResultDoesNotDependOnTheBatch) {
  testing::TestModelSpec llama;
  llama.weight_type = DType::kQ4_1;
  testing::TestModelSpec gemma = llama;  // sliding windows shorter than most prompts
  gemma.arch = "gemma3";
  gemma.n_layers = 3;
  gemma.sliding_window = 6;
  gemma.swa_pattern = 3;
  for (const auto& [spec, kv] :
       {std::pair{llama, KvDType::kF32}, std::pair{llama, KvDType::kF16},
        std::pair{llama, KvDType::kInt8}, std::pair{gemma, KvDType::kF16}}) {
    SCOPED_TRACE(absl::StrCat(spec.arch, " kv=", std::string(kvcache::KvDTypeName(kv))));
    Harness h = Harness::Make(spec, "invariance", kv, kernels::cpu::BestIsa(), 2, 256);
    std::vector<std::vector<int32_t>> prompts;
    for (int i = 0; i < 5; ++i) prompts.push_back(RandomTokens(3 + 7 * i, h.vocab(), 100 + i));
    std::vector<Trace> alone;
    for (auto& p : prompts) alone.push_back(RunAlone(h, p));
    EXPECT_EQ(h.cache->pool().num_free(), h.cache->pool().num_total());
    for (int chunk : {1, 4, 8}) {
      SCOPED_TRACE(absl::StrCat("chunk=", chunk));
      const std::vector<Trace> mixed = RunMixed(h, prompts, chunk);
      EXPECT_EQ(h.cache->pool().num_free(), h.cache->pool().num_total());
      for (size_t i = 0; i < prompts.size(); ++i) {
        ASSERT_EQ(mixed[i].tokens, alone[i].tokens) << "sequence " << i;
        for (size_t s = 0; s < alone[i].logits.size(); ++s) {
          // Rows of a batch are computed independently; only the accumulation order of
          // the attention over chunks may differ, so results agree to float rounding.
          EXPECT_LE(RelErr(mixed[i].logits[s].data(), alone[i].logits[s]), 1e-5)
              << "sequence " << i << " step " << s;
        }
      }
    }
  }
}

TEST(LlamaModelTest, ShuffledBlocksGiveTheSameLogits) {
  testing::TestModelSpec spec;
  spec.weight_type = DType::kQ8_0;
  Harness h = Harness::Make(spec, "paging", KvDType::kF16, kernels::cpu::BestIsa(), 1, 64);
  const std::vector<int32_t> prompt = RandomTokens(37, h.vocab(), 5);
  kvcache::BlockTable contiguous(h.cache->config().block_size);
  const std::vector<float> want = PrefillAllLogits(h, prompt, contiguous);
  contiguous.Release(h.cache->pool());

  // Fragment the pool: hold every block, free a random half, so the next sequence gets
  // scattered, out-of-order ids.
  std::vector<int32_t> all;
  ASSERT_TRUE(h.cache->pool().Allocate(h.cache->pool().num_free(), &all).ok());
  std::mt19937 rng(3);
  std::shuffle(all.begin(), all.end(), rng);
  const std::vector<int32_t> freed(all.begin(), all.begin() + all.size() / 2);
  h.cache->pool().Free(freed);
  kvcache::BlockTable scattered(h.cache->config().block_size);
  const std::vector<float> got = PrefillAllLogits(h, prompt, scattered);
  EXPECT_FALSE(std::is_sorted(scattered.blocks().begin(), scattered.blocks().end()));
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << "index " << i;
}

TEST(LlamaModelTest, KvCacheLayoutIsTheCacheForwardAccepts) {
  testing::TestModelSpec spec;
  spec.n_layers = 3;
  spec.n_heads = 8;
  spec.n_kv_heads = 2;
  Harness h = Harness::Make(spec, "kv_layout");
  const kvcache::KvCacheConfig& by_hand = h.cache->config();
  kvcache::KvCacheConfig kc = h.model->KvCacheLayout(by_hand.dtype);
  EXPECT_EQ(kc.n_layers, 3);
  EXPECT_EQ(kc.n_kv_heads, 2);
  EXPECT_EQ(kc.head_dim, by_hand.head_dim);
  EXPECT_EQ(kc.block_size, h.model->options().block_size);
  EXPECT_EQ(kc.dtype, by_hand.dtype);
  EXPECT_EQ(kc.num_blocks, 0);  // sizing is the caller's
  EXPECT_EQ(kc.memory_bytes, 0u);
  EXPECT_EQ(h.model->KvCacheLayout(KvDType::kInt8).dtype, KvDType::kInt8);

  // A cache of that layout gives what the harness's hand-built one gives.
  kc.num_blocks = 16;
  auto cache = kvcache::KvCache::Create(kc, *h.backend);
  ASSERT_TRUE(cache.ok()) << cache.status();
  const std::vector<int32_t> prompt = RandomTokens(11, h.vocab(), 4);
  kvcache::BlockTable want_table(by_hand.block_size);
  const std::vector<float> want = PrefillAllLogits(h, prompt, want_table);
  std::swap(h.cache, *cache);
  kvcache::BlockTable got_table(kc.block_size);
  const std::vector<float> got = PrefillAllLogits(h, prompt, got_table);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << "index " << i;
  got_table.Release(h.cache->pool());
  want_table.Release((*cache)->pool());
}

TEST(LlamaModelTest, Int8KvStaysCloseToFloatKv) {
  testing::TestModelSpec spec;
  spec.weight_type = DType::kF32;
  spec.embd_type = DType::kF32;
  const std::vector<int32_t> prompt = RandomTokens(40, 250, 9);
  std::vector<float> by_kv[3];
  const KvDType kvs[3] = {KvDType::kF32, KvDType::kF16, KvDType::kInt8};
  for (int i = 0; i < 3; ++i) {
    Harness h = Harness::Make(spec, "kvdtype", kvs[i]);
    kvcache::BlockTable table(h.cache->config().block_size);
    by_kv[i] = PrefillAllLogits(h, prompt, table);
  }
  const int vocab = static_cast<int>(by_kv[0].size() / prompt.size());
  double f16_err = 0, int8_err = 0;
  for (size_t t = 0; t < prompt.size(); ++t) {
    std::vector<float> ref(by_kv[0].begin() + t * vocab, by_kv[0].begin() + (t + 1) * vocab);
    f16_err = std::max(f16_err, RelErr(&by_kv[1][t * vocab], ref));
    int8_err = std::max(int8_err, RelErr(&by_kv[2][t * vocab], ref));
  }
  std::printf("[ kv dtype  ] max rel logit err vs f32 KV: f16 %.2e, int8 %.2e\n", f16_err,
              int8_err);
  EXPECT_LE(f16_err, 2e-3);
  EXPECT_LE(int8_err, 2e-2);
  EXPECT_GT(int8_err, 0.0);  // int8 really quantizes
}

TEST(LlamaModelTest, LayerHookRunsAfterEachLayersKvAppendAndChangesNothing) {
  testing::TestModelSpec spec;
  spec.n_layers = 3;
  Harness h = Harness::Make(spec, "layer_hook", KvDType::kF32);
  const int n_layers = h.model->config().n_layers;
  const kernels::KvCacheView& view = h.cache->view();
  const std::vector<int32_t> prompt = RandomTokens(9, h.vocab(), 21);
  kvcache::BlockTable table(view.block_size);
  ASSERT_TRUE(table.Reserve(h.cache->pool(), prompt.size()).ok());
  BatchBuilder bb(h.model->max_blocks_per_seq());
  bb.AddSequence(table, prompt, 0, true);
  const StepBatch& batch = bb.batch();

  // K of the batch's tokens starts as a value no projection produces, so "written" is
  // "differs from the sentinel" for every element of every KV head.
  constexpr float kSentinel = -12345.0f;
  const size_t k_elems = static_cast<size_t>(view.n_layers) * view.n_blocks * view.n_kv_heads *
                         view.block_size * view.head_dim;
  auto fill_sentinel = [&] { std::fill_n(static_cast<float*>(view.k), k_elems, kSentinel); };
  // How many K elements of `layer` at the batch's slots still hold the sentinel.
  auto unwritten = [&](int layer) {
    int count = 0;
    for (size_t pos = 0; pos < prompt.size(); ++pos) {
      const size_t block = table.blocks()[pos / view.block_size];
      const size_t offset = pos % view.block_size;
      for (int head = 0; head < view.n_kv_heads; ++head) {
        // K is [n_layers, n_blocks, n_kv_heads, block_size, head_dim].
        const size_t row =
            ((layer * view.n_blocks + block) * view.n_kv_heads + head) * view.block_size + offset;
        const float* k = static_cast<const float*>(view.k) + row * view.head_dim;
        count += std::count(k, k + view.head_dim, kSentinel);
      }
    }
    return count;
  };
  const int per_layer = static_cast<int>(prompt.size()) * view.n_kv_heads * view.head_dim;

  fill_sentinel();
  std::vector<int> calls;
  std::vector<float> with_hook(h.vocab());
  const LlamaModel::LayerHook hook = [&](int layer) {
    calls.push_back(layer);
    EXPECT_EQ(unwritten(layer), 0) << "layer " << layer << "'s K is not in the cache yet";
    for (int later = layer + 1; later < n_layers; ++later) {
      EXPECT_EQ(unwritten(later), per_layer) << "layer " << later << " ran before hook " << layer;
    }
    return true;
  };
  ASSERT_TRUE(h.model->Forward(batch, view, with_hook.data(), hook).ok());
  std::vector<int> want(n_layers);
  std::iota(want.begin(), want.end(), 0);
  EXPECT_EQ(calls, want);

  fill_sentinel();
  std::vector<float> without_hook(h.vocab());
  ASSERT_TRUE(h.model->Forward(batch, view, without_hook.data()).ok());
  for (int layer = 0; layer < n_layers; ++layer) EXPECT_EQ(unwritten(layer), 0);
  EXPECT_EQ(with_hook, without_hook);  // bit for bit

  // A hook that says stop after layer 0: Cancelled, and no later layer ran.
  fill_sentinel();
  calls.clear();
  const absl::Status stopped = h.model->Forward(batch, view, with_hook.data(), [&](int layer) {
    calls.push_back(layer);
    return layer < 0;
  });
  EXPECT_TRUE(absl::IsCancelled(stopped)) << stopped;
  EXPECT_EQ(calls, std::vector<int>{0});
  EXPECT_EQ(unwritten(0), 0);
  for (int later = 1; later < n_layers; ++later) EXPECT_EQ(unwritten(later), per_layer);

  // A rejected batch runs nothing, so calls no hook either.
  StepBatch bad = batch;
  bad.tokens[0] = -1;
  calls.clear();
  EXPECT_FALSE(h.model->Forward(bad, view, with_hook.data(), hook).ok());
  EXPECT_TRUE(calls.empty());
  table.Release(h.cache->pool());
}

TEST(LlamaModelTest, BadBatchesAreRejectedWithoutRunning) {
  testing::TestModelSpec spec;
  Harness h = Harness::Make(spec, "badbatch");
  kvcache::BlockTable table(h.cache->config().block_size);
  ASSERT_TRUE(table.Reserve(h.cache->pool(), 8).ok());
  BatchBuilder bb(h.model->max_blocks_per_seq());
  std::vector<float> logits(64 * h.vocab());
  auto expect_invalid = [&](StepBatch b, const char* what) {
    absl::Status s = h.model->Forward(b, h.cache->view(), logits.data());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what << ": " << s;
  };
  const std::vector<int32_t> toks = {5, 6, 7};
  bb.AddSequence(table, toks, 0, true);
  const StepBatch good = bb.batch();
  EXPECT_TRUE(h.model->Forward(good, h.cache->view(), logits.data()).ok());

  StepBatch b = good;
  b.tokens[1] = h.vocab();
  expect_invalid(b, "token out of vocab");
  b = good;
  b.tokens[0] = -1;
  expect_invalid(b, "negative token");
  b = good;
  b.positions[2] = h.model->config().context_length;
  expect_invalid(b, "position past context");
  b = good;
  b.positions[2] = 100;  // beyond the blocks reserved
  expect_invalid(b, "position beyond block table");
  b = good;
  b.block_tables[0] = h.cache->view().n_blocks;
  expect_invalid(b, "block id out of range");
  b = good;
  b.token_seq[0] = 1;
  expect_invalid(b, "token_seq out of range");
  b = good;
  b.logit_rows = {3};
  expect_invalid(b, "logit row out of range");
  b = good;
  b.logit_rows.assign(65, 0);
  expect_invalid(b, "too many logit rows");
  b = good;
  b.logit_rows.clear();  // a mid-prompt prefill chunk: runs, returns no logits
  EXPECT_TRUE(h.model->Forward(b, h.cache->view(), logits.data()).ok());
  b = good;
  b.positions.pop_back();
  expect_invalid(b, "length mismatch");
  StepBatch empty;
  expect_invalid(empty, "empty batch");
  b = good;
  b.tokens.assign(65, 5);
  b.positions.assign(65, 0);
  b.token_seq.assign(65, 0);
  expect_invalid(b, "too many tokens");
}

}  // namespace
}  // namespace tandem::model
