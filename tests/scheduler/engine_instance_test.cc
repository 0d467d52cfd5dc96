#include "scheduler/engine_instance.h"

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/retry_after.h"
#include "gtest/gtest.h"
#include "model/gguf_file.h"
#include "scheduler/disaggregated_engine.h"
#include "tests/scheduler/recording_sink.h"
#include "tests/support/test_model.h"

namespace tandem::scheduler {
namespace {

class EngineInstanceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    testing::TestModelSpec spec;
    spec.n_layers = 2;
    spec.hidden = 64;
    spec.n_heads = 4;
    spec.n_kv_heads = 2;
    spec.ffn = 128;
    spec.context_length = 256;
    spec.weight_type = kernels::DType::kQ8_0;
    // Larger weights than the default make the synthetic model's logits less flat, so greedy
    // choices are not near-ties.
    spec.weight_std = 0.2f;
    spec.embd_std = 0.5f;
    // One file per process: ctest runs each test as a process of its own, several at once.
    path_ = new std::string(
        absl::StrCat(::testing::TempDir(), "/engine_instance_test.", getpid(), ".gguf"));
    ASSERT_TRUE(testing::WriteTestModel(spec, *path_).ok());
  }
  static void TearDownTestSuite() {
    std::remove(path_->c_str());
    delete path_;
  }

  static EngineInstanceConfig Config(int max_num_seqs, int max_batch_tokens, size_t kv_blocks,
                                     int max_queue = 1024) {
    EngineInstanceConfig c;
    c.backend.cpu.threads = 1;
    c.scheduler.max_num_seqs = max_num_seqs;
    c.scheduler.max_batch_tokens = max_batch_tokens;
    c.block_size = 4;
    c.max_queue = max_queue;
    c.eos_token_id = 2;
    // Size the cache in blocks: bytes per block = layers * 2 (K,V) * kv_heads * block * dim * 2.
    c.kv_cache_bytes = kv_blocks * 2 * 2 * 2 * 4 * 16 * 2;
    return c;
  }

  std::unique_ptr<EngineInstance> MakeInstance(int max_num_seqs, int max_batch_tokens,
                                               size_t kv_blocks, int max_queue = 1024,
                                               std::vector<int>* progress = nullptr) {
    auto file = model::GgufFile::Open(*path_);
    EXPECT_TRUE(file.ok()) << file.status();
    EngineInstanceConfig c = Config(max_num_seqs, max_batch_tokens, kv_blocks, max_queue);
    if (progress) {
      c.load_progress = [progress](int done, int total) {
        EXPECT_EQ(total, 2);
        progress->push_back(done);
      };
    }
    auto inst = EngineInstance::Create(c, **file);
    EXPECT_TRUE(inst.ok()) << inst.status();
    return inst.ok() ? std::move(*inst) : nullptr;
  }

  static SequenceRequest Request(std::vector<int32_t> prompt, int max_tokens,
                                 std::shared_ptr<SequenceSink> sink) {
    SequenceRequest r;
    r.prompt = std::move(prompt);
    r.max_tokens = max_tokens;
    r.sampling.temperature = 0;
    r.sampling.ignore_eos = true;
    r.sink = std::move(sink);
    return r;
  }

  // Request(), sampled at temperature 0.9 with `seed` when `sampled` (greedy otherwise).
  static SequenceRequest MaybeSampled(std::vector<int32_t> prompt, int max_tokens,
                                      std::shared_ptr<SequenceSink> sink, bool sampled,
                                      uint64_t seed) {
    SequenceRequest r = Request(std::move(prompt), max_tokens, std::move(sink));
    if (sampled) {
      r.sampling.temperature = 0.9f;
      r.sampling.has_seed = true;
      r.sampling.seed = seed;
    }
    return r;
  }

  static std::vector<std::vector<int32_t>> Prompts(int n, int seed) {
    std::mt19937 rng(seed);
    std::vector<std::vector<int32_t>> prompts;
    for (int i = 0; i < n; ++i) {
      std::vector<int32_t> p(3 + rng() % 40);
      for (int32_t& t : p) t = 3 + rng() % 200;
      prompts.push_back(p);
    }
    return prompts;
  }

  // Greedy output of each prompt, run one at a time on a fresh instance.
  std::vector<std::vector<int32_t>> Solo(const std::vector<std::vector<int32_t>>& prompts,
                                         int max_tokens) {
    auto inst = MakeInstance(4, 64, 256);
    std::vector<std::vector<int32_t>> out;
    for (const auto& p : prompts) {
      auto sink = std::make_shared<RecordingSink>();
      EXPECT_TRUE(inst->Submit(Request(p, max_tokens, sink)).ok());
      sink->Wait();
      EXPECT_EQ(sink->end(), SequenceEnd::kLength);
      out.push_back(sink->tokens());
    }
    return out;
  }

  static std::string* path_;
};
std::string* EngineInstanceTest::path_ = nullptr;

TEST_F(EngineInstanceTest, ConcurrentSequencesMatchSoloRuns) {
  const auto prompts = Prompts(12, 1);
  const auto solo = Solo(prompts, 20);
  // Small budget and seq limit: prefill chunks mix with decode tokens, sequences queue.
  auto inst = MakeInstance(/*max_num_seqs=*/5, /*max_batch_tokens=*/16, /*kv_blocks=*/256);
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (const auto& p : prompts) {
    sinks.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE(inst->Submit(Request(p, 20, sinks.back())).ok());
  }
  for (size_t i = 0; i < sinks.size(); ++i) {
    sinks[i]->Wait();
    EXPECT_EQ(sinks[i]->end(), SequenceEnd::kLength);
    EXPECT_EQ(sinks[i]->tokens(), solo[i]) << "prompt " << i;
  }
  const InstanceStats st = inst->stats();
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.waiting, 0);
  EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total);
  EXPECT_GT(st.steps, 0u);
}

// Nano-batching: decode-only steps split in two (min_gain so low that the planner splits every
// step it can) run on two 1-thread groups concurrently; the outputs are the solo runs', since a
// sequence's logits do not depend on its batch-mates or on which group ran it.
TEST_F(EngineInstanceTest, NanoBatchedDecodeStepsKeepOutputs) {
  const auto prompts = Prompts(8, 7);
  const auto solo = Solo(prompts, 16);
  auto file = model::GgufFile::Open(*path_);
  ASSERT_TRUE(file.ok()) << file.status();
  EngineInstanceConfig c = Config(/*max_num_seqs=*/8, /*max_batch_tokens=*/64, /*kv_blocks=*/256);
  c.nano_batching = true;
  // One thread: no halves to split into.
  EXPECT_EQ(EngineInstance::Create(c, **file).status().code(), absl::StatusCode::kInvalidArgument);
  c.backend.cpu.threads = 2;
  c.nano_min_gain = -1e9;
  auto inst = EngineInstance::Create(c, **file);
  ASSERT_TRUE(inst.ok()) << inst.status();
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (const auto& p : prompts) {
    sinks.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE((*inst)->Submit(Request(p, 16, sinks.back())).ok());
  }
  for (size_t i = 0; i < sinks.size(); ++i) {
    sinks[i]->Wait();
    EXPECT_EQ(sinks[i]->end(), SequenceEnd::kLength);
    EXPECT_EQ(sinks[i]->tokens(), solo[i]) << "prompt " << i;
  }
  const InstanceStats st = (*inst)->stats();
  EXPECT_GT(st.nano_steps, 0u);
  EXPECT_LT(st.nano_steps, st.steps);  // steps with prefill ran whole
  EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total);
}

TEST_F(EngineInstanceTest, PreemptionUnderKvPressureKeepsOutputs) {
  const auto prompts = Prompts(6, 2);
  const auto solo = Solo(prompts, 40);
  // 40 blocks of 4 tokens = 160 tokens: far less than 6 sequences need at once.
  auto inst = MakeInstance(6, 64, 40);
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (const auto& p : prompts) {
    sinks.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE(inst->Submit(Request(p, 40, sinks.back())).ok());
  }
  for (size_t i = 0; i < sinks.size(); ++i) {
    sinks[i]->Wait();
    EXPECT_EQ(sinks[i]->end(), SequenceEnd::kLength);
    EXPECT_EQ(sinks[i]->tokens(), solo[i]) << "prompt " << i;
  }
  const InstanceStats st = inst->stats();
  EXPECT_GT(st.preemptions, 0u);
  EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total);
}

// Prompts that share a long prefix, run with prefix caching and without, one after another
// (the later ones find the prefix cached) and all at once (several compute it together): the
// same tokens, greedy and seeded, and the hits are counted.
TEST_F(EngineInstanceTest, PrefixCachingKeepsOutputsAndCountsHits) {
  std::mt19937 rng(9);
  std::vector<int32_t> shared(37);
  for (int32_t& t : shared) t = 3 + rng() % 200;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 8; ++i) {
    std::vector<int32_t> p = shared;
    if (i % 4 == 3) p.resize(16);  // a prompt that is all prefix (its last token runs anyway)
    for (int k = 0; k < 1 + i % 5; ++k) p.push_back(3 + rng() % 200);
    prompts.push_back(p);
  }
  auto file = model::GgufFile::Open(*path_);
  ASSERT_TRUE(file.ok());
  std::map<bool, std::vector<std::vector<int32_t>>> outputs;
  for (const bool caching : {false, true}) {
    SCOPED_TRACE(caching ? "prefix caching" : "no prefix caching");
    EngineInstanceConfig c = Config(4, 24, 256);
    c.prefix_caching = caching;
    auto inst = EngineInstance::Create(c, **file);
    ASSERT_TRUE(inst.ok()) << inst.status();
    auto request = [&](size_t i, bool sampled, std::shared_ptr<RecordingSink> sink) {
      return MaybeSampled(prompts[i], 12, std::move(sink), sampled, 50 + i);
    };
    int64_t sequential_cached = 0;  // what the sinks were told, requests sent one at a time
    for (const bool sampled : {false, true}) {
      for (const bool together : {false, true}) {
        std::vector<std::shared_ptr<RecordingSink>> sinks;
        for (size_t i = 0; i < prompts.size(); ++i) {
          sinks.push_back(std::make_shared<RecordingSink>());
          ASSERT_TRUE((*inst)->Submit(request(i, sampled, sinks.back())).ok());
          if (!together) sinks.back()->Wait();
        }
        for (size_t i = 0; i < sinks.size(); ++i) {
          RecordingSink& sink = *sinks[i];
          sink.Wait();
          EXPECT_EQ(sink.end(), SequenceEnd::kLength) << sink.status();
          outputs[caching].push_back(sink.tokens());
          // Each sequence is told how much of its prompt the cache gave it: whole blocks, none
          // without caching; one after another, the first prompt of all finds nothing and
          // the second the shared prefix's 9 whole blocks.
          EXPECT_EQ(sink.cached_tokens() % 4, 0);
          if (!caching) {
            EXPECT_EQ(sink.cached_tokens(), 0);
          } else if (!together && !sampled && i < 2) {
            EXPECT_EQ(sink.cached_tokens(), i == 0 ? 0 : 36) << "request " << i;
          }
          if (!together) sequential_cached += sink.cached_tokens();
        }
      }
    }
    EXPECT_LE(sequential_cached, static_cast<int64_t>((*inst)->stats().prefix_hit_tokens));
    if (caching) {
      EXPECT_GE(sequential_cached, 212 + 248);
    }
    const InstanceStats st = (*inst)->stats();
    EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total);  // cached blocks count as free
    if (caching) {
      // One after another, every prompt but the very first finds its whole blocks of the
      // shared prefix cached: 36 tokens (9 blocks of 4) for the six long prompts, 16 for the
      // two cut short. Greedy: 5 * 36 + 2 * 16; seeded: 6 * 36 + 2 * 16. (Together, some
      // compute it at once and hit less.)
      EXPECT_GT(st.prefix_cached_blocks, 0);
      EXPECT_GE(st.prefix_hit_tokens, 212u + 248u);
      EXPECT_LT(st.prefix_hit_tokens, st.prefix_queried_tokens);
    } else {
      EXPECT_EQ(st.prefix_hit_tokens, 0u);
      EXPECT_EQ(st.prefix_cached_blocks, 0);
    }
  }
  ASSERT_EQ(outputs[true].size(), outputs[false].size());
  for (size_t i = 0; i < outputs[true].size(); ++i) {
    EXPECT_EQ(outputs[true][i], outputs[false][i]) << "request " << i;
  }
}

// SLO admission predicts the first token of a prompt whose prefix is cached from the part the
// cache lacks: sooner than for a fresh prompt of the same length.
TEST_F(EngineInstanceTest, AdmissionCountsOnTheCachedPrefix) {
  auto inst = MakeInstance(4, 32, 256);
  std::mt19937 rng(3);
  std::vector<int32_t> seen(120), fresh(120);
  for (int32_t& t : seen) t = 3 + rng() % 200;
  for (int32_t& t : fresh) t = 3 + rng() % 200;
  fresh[0] = seen[0] == 3 ? 4 : 3;  // no whole block in common
  auto warm = std::make_shared<RecordingSink>();
  ASSERT_TRUE(inst->Submit(Request(seen, 2, warm)).ok());
  warm->Wait();
  auto predict = [&](const std::vector<int32_t>& prompt) {
    auto sink = std::make_shared<RecordingSink>();
    SequenceRequest r = Request(prompt, 2, sink);
    r.ttft_slo = absl::Seconds(100);
    std::vector<SequenceRequest> one;
    one.push_back(std::move(r));
    absl::StatusOr<Admission> a = inst->Submit(std::move(one));
    sink->Wait();  // idle again before the next
    EXPECT_TRUE(a.ok()) << a.status();
    EXPECT_TRUE(a.ok() && a->predicted) << "no latency model: nothing predicted";
    return a.ok() ? a->predicted_ttft : absl::ZeroDuration();
  };
  const absl::Duration cached = predict(seen), uncached = predict(fresh);
  // 116 of the 120 tokens cached: one step of 4 tokens, against 4 steps of up to 32.
  EXPECT_LT(cached * 2, uncached) << cached << " vs " << uncached;
}

// A sliding-window model (Gemma 3's shape in small: 6 layers, 2 and 5 global, a window of 8)
// whose local layers keep only the window: prompts and generations well past the window, all
// at once, with a shared prefix (prefix caching on), and again in a cache small enough to
// preempt, give the tokens each gives alone on an instance that keeps every layer's whole
// context.
std::unique_ptr<model::GgufFile> SlidingWindowModel() {
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/engine_instance_test_swa.", getpid(), ".gguf");
  EXPECT_TRUE(testing::WriteTestModel(testing::SlidingWindowTestSpec(), path).ok());
  auto file = model::GgufFile::Open(path);
  std::remove(path.c_str());
  EXPECT_TRUE(file.ok()) << file.status();
  return file.ok() ? std::move(*file) : nullptr;
}

TEST_F(EngineInstanceTest, SlidingWindowLayersKeepingOnlyTheWindowKeepOutputs) {
  auto file = SlidingWindowModel();
  ASSERT_NE(file, nullptr);

  std::mt19937 rng(21);
  std::vector<int32_t> shared(30);
  for (int32_t& t : shared) t = 3 + rng() % 200;
  std::vector<std::vector<int32_t>> prompts = Prompts(6, 22);
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> p = shared;
    for (int k = 0; k < 2 + 3 * i; ++k) p.push_back(3 + rng() % 200);
    prompts.push_back(p);
  }
  constexpr int kTokens = 40;
  // Pages of 6 layers when whole; 2 when windowed (a sixth of 6 layers' bytes per page each
  // for the 2-layer fixture's Config sizing: 3 of its blocks per whole page).
  auto make = [&](bool windowed, int pages, bool caching, int max_batch_tokens) {
    EngineInstanceConfig c = Config(4, max_batch_tokens, windowed ? pages : 3 * pages);
    c.window_local_kv = windowed;
    c.prefix_caching = caching;
    auto inst = EngineInstance::Create(c, *file);
    EXPECT_TRUE(inst.ok()) << inst.status();
    return inst.ok() ? std::move(*inst) : nullptr;
  };
  std::vector<std::vector<int32_t>> solo;
  {
    auto inst = make(false, 256, false, 64);
    ASSERT_NE(inst, nullptr);
    for (const auto& p : prompts) {
      auto sink = std::make_shared<RecordingSink>();
      ASSERT_TRUE(inst->Submit(Request(p, kTokens, sink)).ok());
      sink->Wait();
      ASSERT_EQ(sink->end(), SequenceEnd::kLength) << sink->status();
      solo.push_back(sink->tokens());
    }
  }
  struct Case {
    const char* name;
    int pages;
    bool caching;
  };
  for (const Case& k : {Case{"roomy, prefix caching", 400, true}, Case{"tight", 60, false},
                        Case{"tight, prefix caching", 60, true}}) {
    SCOPED_TRACE(k.name);
    auto inst = make(true, k.pages, k.caching, 16);
    ASSERT_NE(inst, nullptr);
    std::vector<std::shared_ptr<RecordingSink>> sinks;
    for (size_t i = 0; i < prompts.size(); ++i) {
      sinks.push_back(std::make_shared<RecordingSink>());
      ASSERT_TRUE(inst->Submit(Request(prompts[i], kTokens, sinks.back())).ok());
      if (i == 6) sinks.back()->Wait();  // the first shared-prefix prompt caches the prefix
    }
    for (size_t i = 0; i < sinks.size(); ++i) {
      sinks[i]->Wait();
      EXPECT_EQ(sinks[i]->end(), SequenceEnd::kLength) << sinks[i]->status();
      EXPECT_EQ(sinks[i]->tokens(), solo[i]) << "prompt " << i;
    }
    const InstanceStats st = inst->stats();
    EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total);
    EXPECT_EQ(st.kv_blocks_total, k.pages);
    if (k.caching) {
      EXPECT_GT(st.prefix_hit_tokens, 0u);
    }
    if (k.pages == 60) {
      EXPECT_GT(st.preemptions, 0u);
    }
  }
}

TEST_F(EngineInstanceTest, CancelledSequenceLeavesAndFreesItsBlocks) {
  auto inst = MakeInstance(4, 64, 256);
  auto keep = std::make_shared<RecordingSink>();
  auto cancel = std::make_shared<RecordingSink>(/*cancel_after=*/3);
  ASSERT_TRUE(inst->Submit(Request({5, 6, 7, 8, 9}, 200, keep)).ok());
  ASSERT_TRUE(inst->Submit(Request({10, 11, 12}, 200, cancel)).ok());
  cancel->Wait();
  EXPECT_EQ(cancel->end(), SequenceEnd::kCancelled);
  // The engine checks cancellation before every step: at most one more token.
  EXPECT_LE(cancel->tokens().size(), 4u);
  keep->Wait();
  EXPECT_EQ(keep->end(), SequenceEnd::kLength);
  EXPECT_EQ(keep->tokens().size(), 200u);
  EXPECT_EQ(inst->stats().kv_blocks_free, inst->stats().kv_blocks_total);
}

TEST_F(EngineInstanceTest, StopTokenEndsWithoutEmittingIt) {
  auto inst = MakeInstance(4, 64, 256);
  const auto solo = Solo({{20, 21, 22}}, 8);
  auto sink = std::make_shared<RecordingSink>();
  SequenceRequest r = Request({20, 21, 22}, 8, sink);
  r.sampling.stop_token_ids = {solo[0][3]};
  ASSERT_TRUE(inst->Submit(std::move(r)).ok());
  sink->Wait();
  EXPECT_EQ(sink->end(), SequenceEnd::kStopToken);
  const std::vector<int32_t> want(solo[0].begin(), solo[0].begin() + 3);
  // The stop token may also appear earlier in the greedy output.
  const auto got = sink->tokens();
  ASSERT_LE(got.size(), 3u);
  EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin()));
}

TEST_F(EngineInstanceTest, ReportsLoadProgressPerLayer) {
  std::vector<int> progress;
  auto inst = MakeInstance(4, 64, 16, 1024, &progress);
  EXPECT_EQ(progress, (std::vector<int>{1, 2}));
  EXPECT_EQ(inst->kv_capacity_tokens(), 16 * 4);
}

TEST_F(EngineInstanceTest, SubmitValidates) {
  auto inst = MakeInstance(4, 64, 16);  // 64 tokens of KV
  auto sink = std::make_shared<RecordingSink>();
  EXPECT_EQ(inst->Submit(Request({}, 4, sink)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(inst->Submit(Request({1, 100000}, 4, sink)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(inst->Submit(Request({1, 2}, 0, sink)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(inst->Submit(Request({1, 2}, 300, sink)).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(inst->Submit(Request({1, 2}, 100, sink)).code(), absl::StatusCode::kOutOfRange);
  SequenceRequest bad = Request({1, 2}, 4, sink);
  bad.sampling.top_p = 2;
  EXPECT_EQ(inst->Submit(std::move(bad)).code(), absl::StatusCode::kInvalidArgument);
}

// A sink whose client goes away as soon as its sequence enters a step.
class GoneAtScheduleSink : public RecordingSink {
 public:
  void OnScheduled(int cached_tokens) override {
    RecordingSink::OnScheduled(cached_tokens);
    Cancel();
  }
};

// A prefill step whose every sequence is cancelled while it runs stops between layers (the
// model's layer hook) instead of running to its end: the sequence ends cancelled in that step,
// and the stopped step is not measured (no step observation) while a step that runs is.
TEST_F(EngineInstanceTest, AStepWhoseSequencesAreAllCancelledStopsBetweenLayers) {
  auto file = model::GgufFile::Open(*path_);
  ASSERT_TRUE(file.ok());
  EngineInstanceConfig c = Config(4, 64, 256);
  std::atomic<int> observed{0};
  c.step_observer = [&observed](const StepShape&, double, double) { observed.fetch_add(1); };
  auto inst = EngineInstance::Create(c, **file);
  ASSERT_TRUE(inst.ok()) << inst.status();
  std::vector<int32_t> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back(3 + i);
  auto gone = std::make_shared<GoneAtScheduleSink>();
  ASSERT_TRUE((*inst)->Submit(Request(prompt, 8, gone)).ok());
  gone->Wait();
  EXPECT_EQ(gone->end(), SequenceEnd::kCancelled);
  EXPECT_TRUE(gone->tokens().empty());
  EXPECT_EQ(observed.load(), 0);
  // The same prompt with a client that stays: its step runs and is observed.
  auto stays = std::make_shared<RecordingSink>();
  ASSERT_TRUE((*inst)->Submit(Request(prompt, 2, stays)).ok());
  stays->Wait();
  EXPECT_EQ(stays->end(), SequenceEnd::kLength);
  EXPECT_GE(observed.load(), 1);
  const InstanceStats st = (*inst)->stats();
  EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total);
}

// A sink that holds the engine loop when its sequence is first scheduled until the test opens
// the gate, so that a running sequence cannot finish (length, or a sampled EOS) while the test
// still counts what the queue takes.
class GatedSink : public RecordingSink {
 public:
  explicit GatedSink(std::shared_future<void> gate) : gate_(std::move(gate)) {}
  void OnScheduled(int cached_tokens) override {
    RecordingSink::OnScheduled(cached_tokens);
    gate_.wait();
  }

 private:
  std::shared_future<void> gate_;
};

TEST_F(EngineInstanceTest, QueueFullAndStopFailsTheRest) {
  auto inst = MakeInstance(/*max_num_seqs=*/1, 64, 256, /*max_queue=*/2);
  std::promise<void> open;
  std::shared_future<void> gate = open.get_future().share();
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  int accepted = 0, rejected = 0;
  for (int i = 0; i < 6; ++i) {
    sinks.push_back(std::make_shared<GatedSink>(gate));
    absl::Status s = inst->Submit(Request({3, 4, 5}, 200, sinks.back()));
    if (s.ok()) {
      ++accepted;
    } else {
      EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
      sinks.pop_back();
      ++rejected;
    }
  }
  EXPECT_GE(rejected, 3);  // one running and two queued at most
  EXPECT_LE(accepted, 3);
  open.set_value();
  inst->Stop();
  for (auto& s : sinks) {
    s->Wait();
    if (s->end() == SequenceEnd::kFailed) {
      EXPECT_EQ(s->status().code(), absl::StatusCode::kUnavailable);
    }
  }
  EXPECT_EQ(inst->Submit(Request({3}, 1, std::make_shared<RecordingSink>())).code(),
            absl::StatusCode::kUnavailable);
}

// Prefill on one instance, decode on another: the KV and the sequence (sampler state
// included) move between them, and every output is what one colocated instance produces.
TEST_F(EngineInstanceTest, DisaggregatedPairMatchesColocated) {
  const auto prompts = Prompts(10, 5);
  auto colocated = MakeInstance(4, 32, 256);
  auto file = model::GgufFile::Open(*path_);
  ASSERT_TRUE(file.ok());
  for (const auto& [repage, transport] :
       {std::pair{false, KvTransportKind::kInProcess}, std::pair{true, KvTransportKind::kInProcess},
        std::pair{false, KvTransportKind::kTcp}, std::pair{true, KvTransportKind::kTcp},
        std::pair{false, KvTransportKind::kShm}, std::pair{true, KvTransportKind::kShm}}) {
    SCOPED_TRACE(KvTransportName(transport));
    DisaggregatedEngineConfig dc;
    dc.prefill = {Config(4, 32, 256)};
    dc.decode = {Config(6, 32, 256)};
    dc.transport = transport;
    // Block sizes differ both ways: the decode side re-pages on import.
    if (repage) dc.decode[0].block_size = 8;
    auto disagg = DisaggregatedEngine::Create(dc, **file);
    ASSERT_TRUE(disagg.ok()) << disagg.status();
    for (const bool sampled : {false, true}) {
      std::vector<std::shared_ptr<RecordingSink>> want, got;
      for (size_t i = 0; i < prompts.size(); ++i) {
        auto request = [&](std::shared_ptr<RecordingSink> sink) {
          return MaybeSampled(prompts[i], 12, std::move(sink), sampled, 100 + i);
        };
        want.push_back(std::make_shared<RecordingSink>());
        ASSERT_TRUE(colocated->Submit(request(want.back())).ok());
        got.push_back(std::make_shared<RecordingSink>());
        ASSERT_TRUE((*disagg)->Submit({request(got.back())}).ok());
      }
      for (size_t i = 0; i < prompts.size(); ++i) {
        want[i]->Wait();
        got[i]->Wait();
        EXPECT_EQ(got[i]->end(), SequenceEnd::kLength) << got[i]->status();
        EXPECT_EQ(got[i]->tokens(), want[i]->tokens())
            << "prompt " << i << (sampled ? " sampled" : " greedy")
            << (repage ? ", decode blocks of 8" : "");
      }
    }
    const HandoverStats hs = (*disagg)->handover_stats();
    EXPECT_EQ(hs.sequences, 2 * prompts.size());
    EXPECT_GT(hs.bytes, 0u);
    if (transport != KvTransportKind::kInProcess) {
      // Every transfer went through the wire protocol, and no lease is left.
      EXPECT_EQ((*disagg)->receiver()->stats().committed, 2 * prompts.size());
      // The pusher counts a push once its Commit is written, which the decode side may act on
      // (and finish the sequence) first: wait for the count.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while ((*disagg)->pusher()->stats().committed < 2 * prompts.size() &&
             std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      EXPECT_EQ((*disagg)->pusher()->stats().committed, 2 * prompts.size());
      EXPECT_EQ((*disagg)->receiver()->open_transfers(), 0);
    }
    // Both caches are whole again, and the prefill instance decoded nothing.
    const InstanceStats p = (*disagg)->prefill().stats(), d = (*disagg)->decode().stats();
    EXPECT_EQ(p.kv_blocks_free, p.kv_blocks_total);
    EXPECT_EQ(d.kv_blocks_free, d.kv_blocks_total);
    // A prompt whose last chunk is one token counts it as a decode token (which chunk is last
    // depends on how the steps fell): one per prompt at most, never a generated one.
    EXPECT_LE(p.decode_tokens, 2 * prompts.size());
    EXPECT_EQ(d.prefill_tokens, 0u);
    EXPECT_EQ((*disagg)->stats().running, 0);
    // The sampled round repeats the greedy round's prompts: the prefill instance finds their
    // whole blocks in its prefix cache (and the outputs above are still the same). The decode
    // instance caches nothing.
    EXPECT_GT(p.prefix_hit_tokens, 0u);
    EXPECT_EQ(d.prefix_cached_blocks, 0);
  }
}

// The sliding-window model disaggregated: a prefill instance that keeps only the window of its
// local layers sends only that of each (the layer frame's first position), one that keeps
// everything sends everything; a decode instance that keeps the window writes only that, one
// that keeps everything writes what comes (a local layer never reads before its window). Every
// combination, over every transport, re-paged (decode blocks of 8) or not, with an int8 wire:
// the tokens a colocated instance gives.
TEST_F(EngineInstanceTest, DisaggregatedSlidingWindowLayersSendAndKeepOnlyTheWindow) {
  auto file = SlidingWindowModel();
  ASSERT_NE(file, nullptr);
  std::vector<std::vector<int32_t>> prompts = Prompts(8, 31);
  auto colocated = EngineInstance::Create(Config(4, 32, 256), *file);
  ASSERT_TRUE(colocated.ok()) << colocated.status();
  std::vector<std::vector<int32_t>> want;
  for (const auto& p : prompts) {
    auto sink = std::make_shared<RecordingSink>();
    ASSERT_TRUE((*colocated)->Submit(Request(p, 30, sink)).ok());
    sink->Wait();
    want.push_back(sink->tokens());
  }
  struct Case {
    bool prefill_windowed, decode_windowed, repage;
    KvTransportKind transport;
  };
  std::map<bool, uint64_t> tcp_f16_bytes;  // by prefill_windowed
  for (const Case& k : {Case{true, true, false, KvTransportKind::kInProcess},
                        Case{true, false, true, KvTransportKind::kInProcess},
                        Case{false, true, true, KvTransportKind::kInProcess},
                        Case{true, true, false, KvTransportKind::kTcp},
                        Case{false, true, false, KvTransportKind::kTcp},
                        Case{true, false, false, KvTransportKind::kTcp},
                        Case{false, true, true, KvTransportKind::kShm},
                        Case{true, true, true, KvTransportKind::kShm}}) {
    SCOPED_TRACE(absl::StrCat(KvTransportName(k.transport), ", prefill ",
                              k.prefill_windowed ? "windowed" : "whole", ", decode ",
                              k.decode_windowed ? "windowed" : "whole",
                              k.repage ? ", decode blocks of 8" : ""));
    DisaggregatedEngineConfig dc;
    // Pages of 6 layers when whole, of 2 when windowed.
    dc.prefill = {Config(4, 32, k.prefill_windowed ? 256 : 3 * 256)};
    dc.decode = {Config(6, 32, k.decode_windowed ? 256 : 3 * 256)};
    dc.prefill[0].window_local_kv = k.prefill_windowed;
    dc.decode[0].window_local_kv = k.decode_windowed;
    dc.transport = k.transport;
    if (k.transport == KvTransportKind::kTcp && !k.decode_windowed) {
      dc.wire_dtype = kernels::KvDType::kInt8;
    }
    if (k.repage) dc.decode[0].block_size = 8;
    auto disagg = DisaggregatedEngine::Create(dc, *file);
    ASSERT_TRUE(disagg.ok()) << disagg.status();
    const std::string windowed = "; 4 sliding-window layers keep their last 8 positions";
    EXPECT_EQ((*disagg)->prefill().kv_layout(), k.prefill_windowed ? windowed : "");
    EXPECT_EQ((*disagg)->decode().kv_layout(), k.decode_windowed ? windowed : "");
    std::vector<std::shared_ptr<RecordingSink>> got;
    for (size_t i = 0; i < prompts.size(); ++i) {
      got.push_back(std::make_shared<RecordingSink>());
      ASSERT_TRUE((*disagg)->Submit({Request(prompts[i], 30, got.back())}).ok());
    }
    int same = 0, total = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      got[i]->Wait();
      EXPECT_EQ(got[i]->end(), SequenceEnd::kLength) << got[i]->status();
      if (!dc.wire_dtype) {
        EXPECT_EQ(got[i]->tokens(), want[i]) << "prompt " << i;
        continue;
      }
      // int8 on the wire: the first token is prefill's, before any quantization; then most
      // tokens agree up to the first difference (as DisaggregatedPairWithInt8OnTheWire).
      ASSERT_EQ(got[i]->tokens().size(), want[i].size());
      EXPECT_EQ(got[i]->tokens()[0], want[i][0]);
      size_t n = 0;
      while (n < want[i].size() && got[i]->tokens()[n] == want[i][n]) ++n;
      same += static_cast<int>(n);
      total += static_cast<int>(want[i].size());
    }
    EXPECT_GE(same * 2, total);
    EXPECT_EQ((*disagg)->handover_stats().sequences, prompts.size());
    if (k.transport == KvTransportKind::kTcp && !dc.wire_dtype) {
      tcp_f16_bytes[k.prefill_windowed] = (*disagg)->pusher()->stats().bytes;
    }
    const InstanceStats p = (*disagg)->prefill().stats(), d = (*disagg)->decode().stats();
    EXPECT_EQ(p.kv_blocks_free, p.kv_blocks_total);
    EXPECT_EQ(d.kv_blocks_free, d.kv_blocks_total);
  }
  // Prompts of 3 to 42 tokens: the 4 local layers send at most 8 positions each, the 2 global
  // ones all, so a windowed sender writes about 0.6 of a whole one's bytes.
  ASSERT_EQ(tcp_f16_bytes.size(), 2u);
  EXPECT_LT(tcp_f16_bytes[true] * 4, tcp_f16_bytes[false] * 3)
      << tcp_f16_bytes[true] << " vs " << tcp_f16_bytes[false];
}

// Two prefill instances: four conversations' first turns spread over both, and each second
// turn goes back to the instance that holds its first turn in its prefix cache, which gives it
// all of that turn's whole blocks: by predicted first token (profiled latency models), and by
// the cached prefix as the tie-break without models. (Placed by load alone, with each request
// starting one instance further along, half of the second turns would find nothing.)
TEST_F(EngineInstanceTest, SeveralPrefillInstancesSendAPromptWhereItsPrefixIsCached) {
  auto file = model::GgufFile::Open(*path_);
  ASSERT_TRUE(file.ok());
  std::mt19937 rng(21);
  std::vector<std::vector<int32_t>> first(4);
  for (auto& p : first) {
    p.resize(60);
    for (int32_t& t : p) t = 3 + rng() % 200;
  }
  for (const bool profiled : {true, false}) {
    SCOPED_TRACE(profiled ? "latency models" : "no latency models");
    DisaggregatedEngineConfig dc;
    dc.prefill = {Config(4, 32, 256), Config(4, 32, 256)};
    dc.decode = {Config(6, 32, 256)};
    // One profile for both (the first writes it, the second loads it): two profiles taken on a
    // busy host can differ by more than the prefix saves, and the faster-looking instance
    // would then rightly take every first turn.
    const std::string profile =
        absl::StrCat(::testing::TempDir(), "/prefix_placement_profile.", getpid(), ".json");
    std::remove(profile.c_str());
    for (EngineInstanceConfig& c : dc.prefill) {
      c.profile = profiled;
      if (profiled) c.latency_profile = profile;
    }
    auto disagg = DisaggregatedEngine::Create(dc, **file);
    ASSERT_TRUE(disagg.ok()) << disagg.status();
    auto run = [&](const std::vector<int32_t>& prompt) {
      auto sink = std::make_shared<RecordingSink>();
      EXPECT_TRUE((*disagg)->Submit({Request(prompt, 3, sink)}).ok());
      sink->Wait();
      EXPECT_EQ(sink->end(), SequenceEnd::kLength) << sink->status();
      return sink->cached_tokens();
    };
    EXPECT_EQ((*disagg)->prefill(0).PredictFirstToken({Request(first[0], 3, nullptr)}).has_value(),
              profiled);
    for (const auto& p : first) EXPECT_EQ(run(p), 0);
    for (int i = 0; i < 2; ++i) {
      EXPECT_GT((*disagg)->prefill(i).stats().prefix_cached_blocks, 0) << "prefill-" << i;
    }
    for (size_t k = first.size(); k-- > 0;) {  // reversed: not in the first turns' rotation
      std::vector<int32_t> next = first[k];
      for (int j = 0; j < 8; ++j) next.push_back(3 + rng() % 200);
      EXPECT_EQ(run(next), 60) << "conversation " << k;
    }
    std::remove(profile.c_str());
  }
}

// Two prefill and two decode instances: requests spread over both of each role (the least
// loaded first), and every output is still what one colocated instance produces.
TEST_F(EngineInstanceTest, SeveralInstancesPerRoleMatchColocated) {
  const auto prompts = Prompts(10, 5);
  auto colocated = MakeInstance(4, 32, 256);
  auto file = model::GgufFile::Open(*path_);
  ASSERT_TRUE(file.ok());
  for (const KvTransportKind transport : {KvTransportKind::kInProcess, KvTransportKind::kTcp}) {
    SCOPED_TRACE(KvTransportName(transport));
    DisaggregatedEngineConfig dc;
    dc.prefill = {Config(4, 32, 256), Config(4, 32, 256)};
    dc.decode = {Config(6, 32, 256), Config(6, 32, 256)};
    dc.decode[1].block_size = 8;  // the decode instances need not agree either
    dc.transport = transport;
    auto disagg = DisaggregatedEngine::Create(dc, **file);
    ASSERT_TRUE(disagg.ok()) << disagg.status();
    ASSERT_EQ((*disagg)->num_prefill(), 2);
    ASSERT_EQ((*disagg)->num_decode(), 2);
    EXPECT_EQ((*disagg)->prefill(1).config().name, "prefill-1");
    EXPECT_EQ((*disagg)->decode(0).config().name, "decode-0");
    std::vector<std::shared_ptr<RecordingSink>> want, got;
    for (const auto& p : prompts) {
      want.push_back(std::make_shared<RecordingSink>());
      ASSERT_TRUE(colocated->Submit(Request(p, 24, want.back())).ok());
      got.push_back(std::make_shared<RecordingSink>());
      ASSERT_TRUE((*disagg)->Submit({Request(p, 24, got.back())}).ok());
    }
    for (size_t i = 0; i < prompts.size(); ++i) {
      want[i]->Wait();
      got[i]->Wait();
      EXPECT_EQ(got[i]->end(), SequenceEnd::kLength) << got[i]->status();
      EXPECT_EQ(got[i]->tokens(), want[i]->tokens()) << "prompt " << i;
    }
    EXPECT_EQ((*disagg)->handover_stats().sequences, prompts.size());
    for (int i = 0; i < 2; ++i) {
      const InstanceStats p = (*disagg)->prefill(i).stats(), d = (*disagg)->decode(i).stats();
      EXPECT_GT(p.prefill_tokens, 0u) << "prefill-" << i << " got no request";
      EXPECT_GT(d.decode_tokens, 0u) << "decode-" << i << " got no sequence";
      // A prompt whose last chunk is one token counts it as a decode token: one per prompt at
      // most, never a generated one.
      EXPECT_LE(p.decode_tokens, prompts.size());
      EXPECT_EQ(d.prefill_tokens, 0u);
      EXPECT_EQ(p.kv_blocks_free, p.kv_blocks_total);
      EXPECT_EQ(d.kv_blocks_free, d.kv_blocks_total);
      if (transport != KvTransportKind::kInProcess) {
        EXPECT_EQ((*disagg)->receiver(i)->open_transfers(), 0);
      }
    }
    EXPECT_EQ((*disagg)->stats().running, 0);
  }
}

// KV quantized to int8 on the wire (f16 caches on both sides): every request completes, and
// the greedy tokens stay close to the colocated ones. How close is measured here and reported
// (bench/RESULTS.md quotes it); the assertion is only that most agree.
TEST_F(EngineInstanceTest, DisaggregatedPairWithInt8OnTheWire) {
  const auto prompts = Prompts(10, 5);
  auto colocated = MakeInstance(4, 32, 256);
  auto file = model::GgufFile::Open(*path_);
  ASSERT_TRUE(file.ok());
  DisaggregatedEngineConfig dc;
  dc.prefill = {Config(4, 32, 256)};
  dc.decode = {Config(6, 32, 256)};
  dc.transport = KvTransportKind::kTcp;
  dc.wire_dtype = kernels::KvDType::kInt8;
  auto disagg = DisaggregatedEngine::Create(dc, **file);
  ASSERT_TRUE(disagg.ok()) << disagg.status();
  std::vector<std::shared_ptr<RecordingSink>> want, got;
  for (const auto& p : prompts) {
    want.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE(colocated->Submit(Request(p, 12, want.back())).ok());
    got.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE((*disagg)->Submit({Request(p, 12, got.back())}).ok());
  }
  size_t same = 0, total = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    want[i]->Wait();
    got[i]->Wait();
    ASSERT_EQ(got[i]->end(), SequenceEnd::kLength) << got[i]->status();
    ASSERT_EQ(got[i]->tokens().size(), want[i]->tokens().size());
    // The first token is prefill's, before any quantization.
    EXPECT_EQ(got[i]->tokens()[0], want[i]->tokens()[0]);
    // Tokens up to the first disagreement (after it, the contexts differ).
    size_t t = 0;
    while (t < want[i]->tokens().size() && got[i]->tokens()[t] == want[i]->tokens()[t]) ++t;
    same += t;
    total += want[i]->tokens().size();
  }
  std::printf("int8 on the wire: %zu of %zu greedy tokens as colocated before a divergence\n", same,
              total);
  EXPECT_GE(same * 2, total);
  const InstanceStats d = (*disagg)->decode().stats();
  EXPECT_EQ(d.kv_blocks_free, d.kv_blocks_total);
}

// A sink that holds the engine thread for a while at every token (1 ms, or `ms`): the decode
// instance then stays busy with one sequence long enough for a test to look at what waits
// behind it, or to stop the engine while it runs.
class SlowSink : public RecordingSink {
 public:
  explicit SlowSink(int ms = 1) : ms_(ms) {}
  void OnToken(const model::SampleResult& r) override {
    RecordingSink::OnToken(r);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms_));
  }

 private:
  const int ms_;
};

// A sequence that ends at its first token never moves; one cancelled on the decode side frees
// its blocks there; a stopped pair fails what it holds.
TEST_F(EngineInstanceTest, DisaggregatedPairEndsSequencesOnEitherSide) {
  auto file = model::GgufFile::Open(*path_);
  ASSERT_TRUE(file.ok());
  for (const KvTransportKind transport :
       {KvTransportKind::kInProcess, KvTransportKind::kTcp, KvTransportKind::kShm}) {
    SCOPED_TRACE(KvTransportName(transport));
    DisaggregatedEngineConfig dc;
    dc.prefill = {Config(4, 32, 256)};
    dc.decode = {Config(4, 32, 256)};
    dc.transport = transport;
    auto disagg = DisaggregatedEngine::Create(dc, **file);
    ASSERT_TRUE(disagg.ok()) << disagg.status();
    auto one = std::make_shared<RecordingSink>();
    ASSERT_TRUE((*disagg)->Submit({Request({5, 6, 7}, 1, one)}).ok());
    one->Wait();
    EXPECT_EQ(one->end(), SequenceEnd::kLength);
    EXPECT_EQ(one->tokens().size(), 1u);
    EXPECT_EQ((*disagg)->handover_stats().sequences, 0u);

    auto cancel = std::make_shared<RecordingSink>(/*cancel_after=*/3);
    ASSERT_TRUE((*disagg)->Submit({Request({5, 6, 7, 8}, 200, cancel)}).ok());
    cancel->Wait();
    EXPECT_EQ(cancel->end(), SequenceEnd::kCancelled);
    EXPECT_EQ((*disagg)->handover_stats().sequences, 1u);

    // 5 ms a token: still decoding (its 200 tokens take a second) when Stop comes.
    auto held = std::make_shared<SlowSink>(5);
    ASSERT_TRUE((*disagg)->Submit({Request({9, 10, 11}, 200, held)}).ok());
    (*disagg)->Stop();
    held->Wait();
    EXPECT_EQ(held->end(), SequenceEnd::kFailed);
    EXPECT_TRUE(absl::IsUnavailable(held->status())) << held->status();
    const InstanceStats p = (*disagg)->prefill().stats(), d = (*disagg)->decode().stats();
    EXPECT_EQ(p.kv_blocks_free, p.kv_blocks_total);
    EXPECT_EQ(d.kv_blocks_free, d.kv_blocks_total);
    EXPECT_FALSE((*disagg)->Submit({Request({1, 2}, 2, std::make_shared<RecordingSink>())}).ok());
  }
}

// While prefilled sequences wait for room on the decode instance, a new SLO request would
// only queue behind them: it gets a 429 (reason tpot, with a retry-after) at once. Best-effort
// requests are still taken.
TEST_F(EngineInstanceTest, DisaggregatedPairRefusesSloWorkWhileArrivalsWait) {
  auto file = model::GgufFile::Open(*path_);
  ASSERT_TRUE(file.ok());
  DisaggregatedEngineConfig dc;
  dc.prefill = {Config(4, 32, 256)};
  dc.decode = {Config(1, 32, 256)};  // one sequence decodes at a time
  auto disagg = DisaggregatedEngine::Create(dc, **file);
  ASSERT_TRUE(disagg.ok()) << disagg.status();
  auto first = std::make_shared<SlowSink>(), second = std::make_shared<SlowSink>();
  ASSERT_TRUE((*disagg)->Submit({Request({5, 6, 7}, 200, first)}).ok());
  ASSERT_TRUE((*disagg)->Submit({Request({8, 9, 10}, 200, second)}).ok());
  for (int i = 0; i < 5000 && (*disagg)->decode().num_arrivals_waiting() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  ASSERT_EQ((*disagg)->decode().num_arrivals_waiting(), 1);

  SequenceRequest slo = Request({1, 2, 3}, 4, std::make_shared<RecordingSink>());
  slo.ttft_slo = absl::Seconds(100);
  slo.tpot_slo = absl::Seconds(100);
  absl::StatusOr<Admission> refused = (*disagg)->Submit({std::move(slo)});
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(refused.status())) << refused.status();
  EXPECT_EQ(RejectReasonOf(refused.status()), kRejectTpot);
  EXPECT_EQ(RetryAfterOf(refused.status()), absl::Seconds(1));
  // Bad input is still a bad request, not a capacity refusal.
  SequenceRequest bad = Request({}, 4, std::make_shared<RecordingSink>());
  bad.tpot_slo = absl::Seconds(100);
  EXPECT_TRUE(absl::IsInvalidArgument((*disagg)->Submit({std::move(bad)}).status()));

  auto best_effort = std::make_shared<RecordingSink>();
  ASSERT_TRUE((*disagg)->Submit({Request({1, 2, 3}, 2, best_effort)}).ok());
  first->Cancel();
  for (auto& sink : {std::static_pointer_cast<RecordingSink>(first),
                     std::static_pointer_cast<RecordingSink>(second), best_effort}) {
    sink->Cancel();
    sink->Wait();
  }
  const InstanceStats p = (*disagg)->prefill().stats(), d = (*disagg)->decode().stats();
  EXPECT_EQ(p.kv_blocks_free, p.kv_blocks_total);
  EXPECT_EQ(d.kv_blocks_free, d.kv_blocks_total);
}

}  // namespace
}  // namespace tandem::scheduler
