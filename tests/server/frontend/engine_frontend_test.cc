#include "server/engine_frontend.h"

#include <unistd.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/retry_after.h"
#include "gtest/gtest.h"
#include "model/chat_template.h"
#include "model/gguf_file.h"
#include "model/tokenizer.h"
#include "scheduler/engine_instance.h"
#include "server/openai/errors.h"
#include "tests/support/test_model.h"

namespace tandem::server {
namespace {

constexpr char kModel[] = "tiny";

class RecordingObserver : public ServingObserver {
 public:
  void OnTokenGap(absl::Duration) override { ++gaps; }
  void OnSequenceDone(const SequenceRecord& r) override {
    std::lock_guard<std::mutex> lock(mu);
    records.push_back(r);
  }
  void OnRejected(const std::string& reason, int sequences) override {
    std::lock_guard<std::mutex> lock(mu);
    rejections.push_back(reason);
  }
  std::vector<std::string> rejections;
  std::mutex mu;
  std::atomic<int> gaps{0};
  std::vector<SequenceRecord> records;
};

// Everything a stream produced, folded per choice.
struct Collected {
  std::vector<std::string> text;
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::optional<FinishReason>> finish;
  std::vector<int> logprob_entries;
  std::vector<ChoiceDelta> deltas;
  absl::Status status;
  Usage usage;
};

Collected Drain(GenerationStream& s, int choices) {
  Collected c;
  c.text.resize(choices);
  c.tokens.resize(choices);
  c.finish.resize(choices);
  c.logprob_entries.resize(choices);
  bool done = false;
  while (!done) {
    std::vector<ChoiceDelta> out;
    done = s.WaitAndTake(&out, absl::Milliseconds(100));
    for (ChoiceDelta& d : out) {
      EXPECT_LT(d.index, choices);
      EXPECT_FALSE(c.finish[d.index].has_value()) << "delta after finish";
      c.text[d.index] += d.text;
      c.tokens[d.index].insert(c.tokens[d.index].end(), d.token_ids.begin(), d.token_ids.end());
      c.logprob_entries[d.index] += static_cast<int>(d.logprobs.size());
      if (d.finish) c.finish[d.index] = d.finish;
      c.deltas.push_back(std::move(d));
    }
  }
  c.status = s.status();
  c.usage = s.usage();
  return c;
}

class EngineFrontendTest : public ::testing::Test {
 protected:
  // The engine has its weights in memory once started; the file is only this process's.
  void TearDown() override {
    if (!path_.empty()) std::remove(path_.c_str());
  }
  void SetUp() override { Start(scheduler::AdmissionMode::kReject, 0, 0); }

  // Default SLOs 0: requests are best-effort unless they name SLOs, so tests of other things
  // never meet admission. `edit`, when set, alters the model before it is written, and the chat
  // template is then read from the file as tandemd does; without it the frontend uses ChatML.
  void Start(scheduler::AdmissionMode admission, double ttft_slo_ms, double tpot_slo_ms,
             const std::function<void(testing::GgufWriter&)>& edit = nullptr) {
    frontend_.reset();
    engine_.reset();
    testing::TestModelSpec spec;
    spec.weight_std = 0.2f;
    spec.embd_std = 0.5f;
    spec.context_length = 4096;
    // One file per process: ctest runs each test as a process of its own, several at once.
    path_ = absl::StrCat(::testing::TempDir(), "/engine_frontend_test.", getpid(), ".gguf");
    absl::StatusOr<testing::GgufWriter> writer = testing::BuildTestModel(spec);
    ASSERT_TRUE(writer.ok()) << writer.status();
    if (edit) edit(*writer);
    ASSERT_TRUE(writer->WriteFile(path_).ok());
    auto file = model::GgufFile::Open(path_);
    ASSERT_TRUE(file.ok()) << file.status();
    auto tok = model::Tokenizer::FromGguf(**file);
    ASSERT_TRUE(tok.ok()) << tok.status();
    scheduler::EngineInstanceConfig ic;
    ic.backend.cpu.threads = 1;
    ic.scheduler.max_num_seqs = 8;
    ic.scheduler.max_batch_tokens = 64;
    ic.block_size = 4;
    ic.kv_cache_bytes = 8 << 20;
    ic.eos_token_id = (*tok)->eos_id();
    ic.admission = admission;
    auto inst = scheduler::EngineInstance::Create(ic, **file);
    ASSERT_TRUE(inst.ok()) << inst.status();
    engine_ = std::move(*inst);
    auto tmpl = edit ? model::ChatTemplate::FromGgufTemplate(
                           (*file)->GetString("tokenizer.chat_template").value_or(""))
                     : model::ChatTemplate::FromName("chatml");
    ASSERT_TRUE(tmpl.ok()) << tmpl.status();
    EngineFrontendConfig fc;
    fc.served_model_name = kModel;
    fc.default_ttft_slo_ms = ttft_slo_ms;
    fc.default_tpot_slo_ms = tpot_slo_ms;
    frontend_ = std::make_unique<EngineFrontend>(fc, std::move(*tok), std::move(*tmpl), *engine_,
                                                 &observer_);
  }

  static GenerationRequest Completion(std::string prompt, int max_tokens) {
    GenerationRequest r;
    r.kind = GenerationRequest::Kind::kCompletion;
    r.model = kModel;
    r.prompts.push_back({false, std::move(prompt), {}});
    r.max_tokens = max_tokens;
    r.sampling.temperature = 0;
    r.sampling.ignore_eos = true;
    return r;
  }

  Collected Run(GenerationRequest r, int choices = 1) {
    auto s = frontend_->Generate(std::move(r));
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return {};
    return Drain(**s, choices);
  }

  std::string path_;
  RecordingObserver observer_;
  std::unique_ptr<scheduler::EngineInstance> engine_;
  std::unique_ptr<EngineFrontend> frontend_;
};

TEST_F(EngineFrontendTest, GreedyTextMatchesDetokenizedTokens) {
  Collected c = Run(Completion("hello world", 24));
  ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(c.finish[0], FinishReason::kLength);
  EXPECT_EQ(c.tokens[0].size(), 24u);
  EXPECT_EQ(c.usage.completion_tokens, 24);
  EXPECT_GT(c.usage.prompt_tokens, 0);
  absl::StatusOr<std::string> text = frontend_->Detokenize(kModel, c.tokens[0]);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(c.text[0], *text);
}

// usage.cached_tokens: the prompt tokens the prefix cache gave the request, each prompt
// counted once (by its first choice), whole blocks (of 4 here) before the prompt's last token.
TEST_F(EngineFrontendTest, UsageCountsThePromptTokensTheCacheHeld) {
  const std::string prompt = "the quick brown fox jumps over the lazy dog, and then some more";
  Collected first = Run(Completion(prompt, 2));
  ASSERT_TRUE(first.status.ok()) << first.status;
  EXPECT_EQ(first.usage.cached_tokens, 0);
  const int whole = (first.usage.prompt_tokens - 1) / 4 * 4;
  ASSERT_GT(whole, 0);
  Collected again = Run(Completion(prompt, 2));
  ASSERT_TRUE(again.status.ok()) << again.status;
  EXPECT_EQ(again.usage.cached_tokens, whole);
  GenerationRequest two = Completion(prompt, 2);
  two.n = 2;
  Collected both = Run(std::move(two), 2);
  ASSERT_TRUE(both.status.ok()) << both.status;
  EXPECT_EQ(both.usage.cached_tokens, whole);
  EXPECT_EQ(both.usage.prompt_tokens, first.usage.prompt_tokens);
}

TEST_F(EngineFrontendTest, StopStringsAreCutAndNeverReturned) {
  Collected base = Run(Completion("the cat", 40));
  const std::string& t = base.text[0];
  ASSERT_GT(t.size(), 20u) << t;
  // Several stop strings at several offsets, most of them spanning token boundaries.
  for (size_t start : {3u, 7u, 11u, 15u}) {
    for (size_t len : {1u, 2u, 4u}) {
      const std::string stop = t.substr(start, len);
      GenerationRequest r = Completion("the cat", 40);
      r.stop = {"\x01never", stop};
      Collected c = Run(std::move(r));
      SCOPED_TRACE(absl::StrCat("stop '", stop, "'"));
      EXPECT_EQ(c.text[0], t.substr(0, t.find(stop)));
      EXPECT_EQ(c.finish[0], FinishReason::kStop);
      for (const ChoiceDelta& d : c.deltas) EXPECT_EQ(d.text.find(stop), std::string::npos);
    }
  }
  // The engine drops a sequence whose stop string matched: nothing keeps running.
  for (int i = 0; i < 100 && engine_->stats().running > 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(engine_->stats().running, 0);
}

TEST_F(EngineFrontendTest, ChoicesSeedsEchoAndLogprobs) {
  GenerationRequest r = Completion("abc", 8);
  r.n = 3;
  r.echo = true;
  r.sampling.temperature = 1.0f;
  r.sampling.seed = 11;
  r.sampling.has_seed = true;
  r.sampling.logprobs = true;
  r.sampling.top_logprobs = 2;
  Collected a = Run(r, 3);
  Collected b = Run(r, 3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(a.text[i], b.text[i]) << "same seed, same output";
    EXPECT_EQ(a.text[i].rfind("abc", 0), 0u) << "echo first";
    EXPECT_EQ(a.logprob_entries[i], 8);
    EXPECT_EQ(a.finish[i], FinishReason::kLength);
  }
  EXPECT_TRUE(a.tokens[0] != a.tokens[1] || a.tokens[1] != a.tokens[2])
      << "choices use different seeds";
  EXPECT_EQ(a.usage.completion_tokens, 24);
  for (const ChoiceDelta& d : a.deltas) {
    for (const LogprobEntry& e : d.logprobs) {
      ASSERT_EQ(e.top.size(), 2u);
      EXPECT_LE(e.chosen.logprob, 0.0f);
      EXPECT_GE(e.top[0].logprob, e.top[1].logprob);
    }
  }
}

TEST_F(EngineFrontendTest, CancelFreesTheEngineAndReportsCancelled) {
  // Long enough (a few hundred ms) that the cancel lands mid-stream even on a loaded machine.
  auto s = frontend_->Generate(Completion("long", 3000));
  ASSERT_TRUE(s.ok());
  std::vector<ChoiceDelta> out;
  while (out.empty()) (*s)->WaitAndTake(&out, absl::Milliseconds(100));
  (*s)->Cancel();
  std::vector<ChoiceDelta> rest;
  EXPECT_TRUE((*s)->Take(&rest));
  for (int i = 0; i < 200 && frontend_->in_flight() > 0; ++i)
    absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(frontend_->in_flight(), 0);
  const scheduler::InstanceStats st = engine_->stats();
  EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total);
  std::lock_guard<std::mutex> lock(observer_.mu);
  ASSERT_FALSE(observer_.records.empty());
  EXPECT_EQ(observer_.records.back().finish, "cancelled");
}

TEST_F(EngineFrontendTest, ErrorsBeforeAnythingRuns) {
  GenerationRequest r = Completion("x", 4);
  r.model = "other";
  EXPECT_EQ(frontend_->Generate(r).status().code(), absl::StatusCode::kNotFound);
  r = Completion(std::string(5000, 'a'), 4);  // longer than the 4096-token context
  EXPECT_EQ(frontend_->Generate(r).status().code(), absl::StatusCode::kOutOfRange);
  r = Completion("x", 4090);
  r.prompts[0].text = std::string(20, 'b');
  EXPECT_EQ(frontend_->Generate(r).status().code(), absl::StatusCode::kOutOfRange);
  r = Completion("x", 4);
  r.sampling.temperature = -1;
  EXPECT_EQ(frontend_->Generate(r).status().code(), absl::StatusCode::kInvalidArgument);
  frontend_->SetDraining(true);
  EXPECT_EQ(frontend_->Generate(Completion("x", 4)).status().code(),
            absl::StatusCode::kUnavailable);
  frontend_->SetDraining(false);
  EXPECT_TRUE(frontend_->Generate(Completion("x", 4)).ok());
}

TEST_F(EngineFrontendTest, ObserverSeesTimings) {
  Collected c = Run(Completion("timing", 5));
  ASSERT_TRUE(c.status.ok());
  std::lock_guard<std::mutex> lock(observer_.mu);
  ASSERT_EQ(observer_.records.size(), 1u);
  const SequenceRecord& r = observer_.records[0];
  EXPECT_EQ(r.output_tokens, 5);
  EXPECT_EQ(r.finish, "length");
  ASSERT_TRUE(r.ttft.has_value());
  EXPECT_LE(*r.ttft, r.e2e);
  EXPECT_LE(r.queue_time, *r.ttft);
  EXPECT_EQ(observer_.gaps.load(), 4);
}

TEST_F(EngineFrontendTest, ChatUsesTemplateAndTokenizeAgrees) {
  GenerationRequest r;
  r.kind = GenerationRequest::Kind::kChat;
  r.messages = {{"user", "hi"}};
  r.max_tokens = 3;
  r.sampling.temperature = 0;
  Collected c = Run(r);
  ASSERT_TRUE(c.status.ok()) << c.status;
  TokenizeRequest t;
  t.is_chat = true;
  t.messages = r.messages;
  auto ids = frontend_->Tokenize(t);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(c.usage.prompt_tokens, static_cast<int>(ids->size()));
  EXPECT_EQ(frontend_->Detokenize(kModel, {-1}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A base model without tokenizer.chat_template starts: completions are served, chat requests
// (HTTP and gRPC alike go through Generate / Tokenize) get InvalidArgument, i.e. 400, naming
// /v1/completions and --chat-template.
TEST_F(EngineFrontendTest, ModelWithoutChatTemplateServesCompletionsOnly) {
  Start(scheduler::AdmissionMode::kReject, 0, 0,
        [](testing::GgufWriter& w) { w.RemoveKey("tokenizer.chat_template"); });
  constexpr char kMessage[] =
      "the model has no chat template (tokenizer.chat_template); use /v1/completions, or start "
      "tandemd with --chat-template NAME (chatml, llama3, mistral, llama2, gemma)";
  GenerationRequest chat;
  chat.kind = GenerationRequest::Kind::kChat;
  chat.model = kModel;
  chat.messages = {{"user", "hi"}};
  chat.max_tokens = 3;
  for (bool stream : {false, true}) {
    chat.stream = stream;
    auto s = frontend_->Generate(chat);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(s.status().message(), kMessage);
    EXPECT_EQ(openai::HttpStatusFor(s.status()), 400);
  }
  TokenizeRequest t;
  t.model = kModel;
  t.is_chat = true;
  t.messages = chat.messages;
  auto ids = frontend_->Tokenize(t);
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().message(), kMessage);
  EXPECT_EQ(frontend_->in_flight(), 0);

  Collected c = Run(Completion("hello world", 4));
  ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(c.tokens[0].size(), 4u);
}

// The chat template carries its own BOS: a tokenizer that adds one to plain prompts adds none
// to a chat prompt, so a chat prompt has the length Tokenize gives without special tokens.
TEST_F(EngineFrontendTest, ChatPromptGetsNoTokenizerBos) {
  Start(scheduler::AdmissionMode::kReject, 0, 0, [](testing::GgufWriter& w) {
    w.RemoveKey("tokenizer.ggml.add_bos_token");
    w.AddBool("tokenizer.ggml.add_bos_token", true);
  });
  GenerationRequest r;
  r.kind = GenerationRequest::Kind::kChat;
  r.model = kModel;
  r.messages = {{"user", "hi"}};
  r.max_tokens = 1;
  r.sampling.temperature = 0;
  Collected c = Run(r);
  ASSERT_TRUE(c.status.ok()) << c.status;
  TokenizeRequest t;
  t.model = kModel;
  t.is_chat = true;
  t.messages = r.messages;
  t.add_special_tokens = false;
  auto plain = frontend_->Tokenize(t);
  t.add_special_tokens = true;
  auto with_bos = frontend_->Tokenize(t);
  ASSERT_TRUE(plain.ok() && with_bos.ok());
  ASSERT_EQ(with_bos->size(), plain->size() + 1) << "the model's tokenizer adds a BOS";
  EXPECT_EQ(c.usage.prompt_tokens, static_cast<int>(plain->size()));
}

TEST_F(EngineFrontendTest, SloThatCannotBeMetGets429WithRetryAfter) {
  ASSERT_TRUE(engine_->latency_model().fitted());
  GenerationRequest r = Completion("hello world", 8);
  r.ttft_slo_ms = 0.001;  // no step is that fast
  r.n = 2;
  auto s = frontend_->Generate(r);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(s.status())) << s.status();
  EXPECT_NE(s.status().message().find("predicted time to first token"), std::string::npos)
      << s.status();
  ASSERT_TRUE(RetryAfterOf(s.status()).has_value());
  EXPECT_GE(*RetryAfterOf(s.status()), absl::Milliseconds(100));
  EXPECT_EQ(frontend_->in_flight(), 0);
  {
    std::lock_guard<std::mutex> lock(observer_.mu);
    EXPECT_EQ(observer_.rejections, std::vector<std::string>{"ttft"});
  }
  // A generous SLO is admitted, carries the prediction and is judged against its own SLOs.
  r.ttft_slo_ms = 60000;
  r.tpot_slo_ms = 5000;
  r.n = 1;
  Collected c = Run(r);
  ASSERT_TRUE(c.status.ok()) << c.status;
  std::lock_guard<std::mutex> lock(observer_.mu);
  ASSERT_EQ(observer_.records.size(), 1u);
  EXPECT_EQ(observer_.records[0].ttft_slo_ms, 60000);
  EXPECT_EQ(observer_.records[0].tpot_slo_ms, 5000);
  ASSERT_TRUE(observer_.records[0].predicted_ttft.has_value());
  EXPECT_GT(*observer_.records[0].predicted_ttft, absl::ZeroDuration());
}

TEST_F(EngineFrontendTest, DefaultSlosApplyAndZeroMeansBestEffort) {
  Start(scheduler::AdmissionMode::kReject, 0.001, 0);
  auto s = frontend_->Generate(Completion("hello world", 4));
  EXPECT_TRUE(absl::IsResourceExhausted(s.status())) << s.status();
  // The request's own SLO wins over the default.
  GenerationRequest r = Completion("hello world", 4);
  r.ttft_slo_ms = 60000;
  EXPECT_TRUE(Run(r).status.ok());
  // With no default and none in the request, it is best-effort: always admitted, not judged.
  Start(scheduler::AdmissionMode::kReject, 0, 0);
  Collected c = Run(Completion("hello world", 4));
  EXPECT_TRUE(c.status.ok()) << c.status;
  std::lock_guard<std::mutex> lock(observer_.mu);
  ASSERT_FALSE(observer_.records.empty());
  EXPECT_EQ(observer_.records.back().ttft_slo_ms, 0);
  EXPECT_EQ(observer_.records.back().tpot_slo_ms, 0);
}

TEST_F(EngineFrontendTest, QueueModeRejectsOnceTheDeadlineIsOutOfReach) {
  Start(scheduler::AdmissionMode::kQueue, 0, 0);
  GenerationRequest r = Completion("hello world", 8);
  r.ttft_slo_ms = 0.001;
  r.n = 2;
  // Queued (no 429 at arrival), then given up at the engine's next step: the stream fails
  // with a 429 status, nothing was generated, and the engine is empty again.
  auto s = frontend_->Generate(r);
  ASSERT_TRUE(s.ok()) << s.status();
  Collected c = Drain(**s, 2);
  EXPECT_TRUE(absl::IsResourceExhausted(c.status)) << c.status;
  EXPECT_NE(c.status.message().find("can no longer be met"), std::string::npos) << c.status;
  EXPECT_TRUE(RetryAfterOf(c.status).has_value());
  EXPECT_EQ(c.usage.completion_tokens, 0);
  for (int i = 0; i < 100 && frontend_->in_flight() > 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(frontend_->in_flight(), 0);
  EXPECT_EQ(engine_->stats().running + engine_->stats().waiting, 0);
  std::lock_guard<std::mutex> lock(observer_.mu);
  int rejected = 0;
  for (const SequenceRecord& rec : observer_.records) rejected += rec.finish == "rejected";
  EXPECT_GE(rejected, 1);
}

}  // namespace
}  // namespace tandem::server
