#include "server/engine_frontend.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "common/check.h"
#include "common/str_cat.h"
#include "model/unicode_util.h"
#include "scheduler/slo_admission.h"
#include "server/openai/validate.h"

namespace tandem::server {
namespace {

// Everything a GenerationStream and the engine's sinks share; outlives whichever goes first.
struct StreamState {
  struct Choice {
    int index = 0;
    int prompt_tokens = 0;
    bool first_of_prompt = false;  // its prompt's first choice: its cached tokens are usage's
    std::string echo;              // prompt text returned before the output (echo), sent once

    // Written by the engine thread (sink), read by the consumer; guarded by StreamState::mu.
    std::vector<model::SampleResult> pending;
    bool engine_done = false;
    scheduler::SequenceEnd end = scheduler::SequenceEnd::kFailed;
    absl::Status status;
    int generated = 0;
    absl::Time scheduled, first_token, last_token;
    bool has_token = false;
    int cached_tokens = 0;  // of its prompt, from the prefix cache

    // Consumer only.
    std::unique_ptr<model::StreamDecoder> decoder;
    std::string held;   // decoded text not yet returned (could start a stop string)
    bool done = false;  // its final delta was returned
    bool echoed = false;

    std::atomic<bool> cancel{false};
    std::atomic<bool> stop_matched{false};  // set before cancel when a stop string matched
  };

  std::mutex mu;
  std::condition_variable cv;
  std::function<void()> notify ABSL_GUARDED_BY(mu);
  std::vector<std::unique_ptr<Choice>> choices;  // the vector is fixed after construction
  absl::Status status ABSL_GUARDED_BY(mu);

  // Constant after construction.
  const model::Tokenizer* tokenizer = nullptr;
  std::vector<std::string> stop;
  bool logprobs = false;
  int top_logprobs = 0;
  absl::Time arrival;
  double ttft_slo_ms = 0, tpot_slo_ms = 0;
  // Admission's prediction (ChoiceSink::OnAdmitted, before any sink call of the engine).
  std::optional<absl::Duration> predicted_ttft ABSL_GUARDED_BY(mu);
  ServingObserver* observer = nullptr;
  std::shared_ptr<std::atomic<int>> in_flight;

  void Notify() {
    std::function<void()> fn;
    {
      std::lock_guard<std::mutex> lock(mu);
      fn = notify;
    }
    cv.notify_all();
    if (fn) fn();
  }
};

class ChoiceSink : public scheduler::SequenceSink {
 public:
  ChoiceSink(std::shared_ptr<StreamState> state, StreamState::Choice* choice)
      : state_(std::move(state)), choice_(choice) {}

  void OnAdmitted(absl::Duration predicted_ttft) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->predicted_ttft = predicted_ttft;
  }
  void OnScheduled(int cached_tokens) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    choice_->scheduled = absl::Now();
    choice_->cached_tokens = cached_tokens;
  }
  void OnToken(const model::SampleResult& token) override {
    const absl::Time now = absl::Now();
    std::optional<absl::Duration> gap;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      choice_->pending.push_back(token);
      ++choice_->generated;
      if (choice_->has_token) {
        gap = now - choice_->last_token;
      } else {
        choice_->first_token = now;
        choice_->has_token = true;
      }
      choice_->last_token = now;
    }
    if (gap && state_->observer) state_->observer->OnTokenGap(*gap);
    state_->Notify();
  }
  void OnFinish(scheduler::SequenceEnd end, const absl::Status& status) override {
    const absl::Time now = absl::Now();
    SequenceRecord rec;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      choice_->engine_done = true;
      choice_->end = end;
      choice_->status = status;
      if ((end == scheduler::SequenceEnd::kFailed || end == scheduler::SequenceEnd::kRejected) &&
          state_->status.ok()) {
        state_->status = status;
      }
      rec.queue_time =
          (choice_->scheduled == absl::Time() ? now : choice_->scheduled) - state_->arrival;
      if (choice_->has_token) rec.ttft = choice_->first_token - state_->arrival;
      rec.e2e = now - state_->arrival;
      rec.prompt_tokens = choice_->prompt_tokens;
      rec.output_tokens = choice_->generated;
      rec.finish = end == scheduler::SequenceEnd::kCancelled && choice_->stop_matched.load()
                       ? "stop"
                       : scheduler::SequenceEndName(end);
      rec.ttft_slo_ms = state_->ttft_slo_ms;
      rec.tpot_slo_ms = state_->tpot_slo_ms;
      rec.predicted_ttft = state_->predicted_ttft;
    }
    // A choice given up by admission takes its siblings with it: the request as a whole is
    // answered 429.
    if (end == scheduler::SequenceEnd::kRejected) {
      for (const auto& c : state_->choices) c->cancel.store(true);
    }
    if (state_->observer) state_->observer->OnSequenceDone(rec);
    state_->in_flight->fetch_sub(1);
    state_->Notify();
  }
  bool cancelled() const override { return choice_->cancel.load(); }

 private:
  std::shared_ptr<StreamState> state_;
  StreamState::Choice* choice_;
};

// Length of the longest suffix of `text` that is a proper prefix of some stop string.
size_t PartialStopSuffix(std::string_view text, const std::vector<std::string>& stops) {
  size_t keep = 0;
  for (const std::string& s : stops) {
    for (size_t k = std::min(s.size() - 1, text.size()); k > keep; --k) {
      if (text.substr(text.size() - k) == std::string_view(s).substr(0, k)) {
        keep = k;
        break;
      }
    }
  }
  return keep;
}

TokenLogprobInfo MakeInfo(const model::Tokenizer& tok, int32_t id, float logprob) {
  TokenLogprobInfo info;
  info.token = id;
  std::string raw;
  tok.AppendPiece(id, /*render_special=*/true, &raw);
  info.bytes.assign(raw.begin(), raw.end());
  info.text = model::unicode::SanitizeUtf8(raw);
  info.logprob = logprob;
  return info;
}

class EngineGenerationStream : public GenerationStream {
 public:
  explicit EngineGenerationStream(std::shared_ptr<StreamState> state) : state_(std::move(state)) {}
  ~EngineGenerationStream() override { Cancel(); }

  void SetNotify(std::function<void()> notify) override {
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->notify = std::move(notify);
    }
  }

  bool Take(std::vector<ChoiceDelta>* out) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    return TakeLocked(out);
  }

  bool WaitAndTake(std::vector<ChoiceDelta>* out, absl::Duration timeout) override {
    std::unique_lock<std::mutex> lock(state_->mu);
    const size_t before = out->size();
    if (TakeLocked(out) || out->size() > before) return finished_;
    state_->cv.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] { return HasNewLocked(); });
    return TakeLocked(out);
  }

  absl::Status status() const override {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->status;
  }

  Usage usage() const override {
    std::lock_guard<std::mutex> lock(state_->mu);
    Usage u;
    for (const auto& c : state_->choices) {
      u.completion_tokens += c->generated;
      if (c->first_of_prompt) u.cached_tokens += c->cached_tokens;
    }
    u.prompt_tokens = prompt_tokens_;
    return u;
  }

  void Cancel() override {
    for (const auto& c : state_->choices) c->cancel.store(true);
    std::lock_guard<std::mutex> lock(state_->mu);
    cancelled_ = true;
  }

  void set_prompt_tokens(int n) { prompt_tokens_ = n; }

 private:
  bool HasNewLocked() const {
    if (cancelled_ || !state_->status.ok()) return true;
    for (const auto& c : state_->choices) {
      if (!c->done && (!c->pending.empty() || c->engine_done)) return true;
    }
    return false;
  }

  bool TakeLocked(std::vector<ChoiceDelta>* out) {
    if (finished_) return true;
    bool all_done = true;
    for (const auto& cp : state_->choices) {
      StreamState::Choice& c = *cp;
      if (c.done) continue;
      ChoiceDelta d;
      d.index = c.index;
      if (!c.echoed) {
        d.text = c.echo;
        c.echoed = true;
      }
      bool stop_matched = false;
      for (const model::SampleResult& r : c.pending) {
        if (stop_matched) break;
        d.token_ids.push_back(r.token);
        if (state_->logprobs) {
          LogprobEntry e;
          e.chosen = MakeInfo(*state_->tokenizer, r.token, r.logprob);
          for (int k = 0; k < std::min(r.num_top_logprobs, state_->top_logprobs); ++k) {
            e.top.push_back(
                MakeInfo(*state_->tokenizer, r.top_logprobs[k].token, r.top_logprobs[k].logprob));
          }
          d.logprobs.push_back(std::move(e));
        }
        c.held += c.decoder->Push(r.token);
        size_t match = std::string::npos;
        for (const std::string& s : state_->stop) match = std::min(match, c.held.find(s));
        if (match != std::string::npos) {
          d.text += c.held.substr(0, match);
          c.held.clear();
          stop_matched = true;
        }
      }
      c.pending.clear();
      if (stop_matched) {
        c.stop_matched.store(true);
        c.cancel.store(true);  // the engine drops the sequence at its next step
        d.finish = FinishReason::kStop;
      } else if (c.engine_done) {
        c.held += c.decoder->Flush();
        d.text += c.held;
        c.held.clear();
        d.finish =
            c.end == scheduler::SequenceEnd::kLength ? FinishReason::kLength : FinishReason::kStop;
      } else if (cancelled_) {
        d.finish = FinishReason::kStop;
      } else {
        const size_t keep = PartialStopSuffix(c.held, state_->stop);
        d.text += c.held.substr(0, c.held.size() - keep);
        c.held.erase(0, c.held.size() - keep);
      }
      if (d.finish) c.done = true;
      if (!c.done) all_done = false;
      if (d.finish || !d.text.empty() || !d.token_ids.empty()) out->push_back(std::move(d));
    }
    finished_ = all_done || !state_->status.ok() || cancelled_;
    return finished_;
  }

  std::shared_ptr<StreamState> state_;
  int prompt_tokens_ = 0;
  // Guarded by state_->mu.
  bool finished_ = false;
  bool cancelled_ = false;
};

}  // namespace

EngineFrontend::EngineFrontend(const EngineFrontendConfig& config,
                               std::unique_ptr<model::Tokenizer> tokenizer,
                               model::ChatTemplate chat_template, scheduler::Engine& engine,
                               ServingObserver* observer)
    : config_(config),
      tokenizer_(std::move(tokenizer)),
      chat_template_(std::move(chat_template)),
      engine_(engine),
      observer_(observer),
      created_(absl::ToUnixSeconds(absl::Now())) {
  for (const std::string& s : chat_template_.StopStrings()) {
    const int32_t id = tokenizer_->TokenId(s);
    if (id >= 0) chat_stop_ids_.push_back(id);
  }
}

EngineFrontend::~EngineFrontend() = default;

absl::Status EngineFrontend::CheckModel(const std::string& model) const {
  if (!model.empty() && model != config_.served_model_name) {
    return absl::NotFoundError(StrCat("the model '", model,
                                      "' does not exist; this server serves '",
                                      config_.served_model_name, "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> EngineFrontend::RenderChat(
    const std::vector<model::ChatMessage>& messages) const {
  absl::StatusOr<std::string> text =
      chat_template_.Render(messages, /*add_generation_prompt=*/true);
  if (!text.ok()) return absl::InvalidArgumentError(std::string(text.status().message()));
  return text;
}

ModelInfo EngineFrontend::Model() const {
  return {config_.served_model_name, created_, engine_.model_config().context_length};
}

absl::StatusOr<std::unique_ptr<GenerationStream>> EngineFrontend::Generate(
    GenerationRequest request) {
  const absl::Time arrival = absl::Now();
  if (draining_.load()) return absl::UnavailableError("the server is shutting down");
  TANDEM_RETURN_IF_ERROR(CheckModel(request.model));
  const int vocab = engine_.model_config().vocab_size;
  const int context = engine_.model_config().context_length;
  TANDEM_RETURN_IF_ERROR(openai::ValidateGenerationRequest(request, vocab));

  // Prompts as token ids, and the text echo would return.
  struct Prompt {
    std::vector<int32_t> ids;
    std::string text;
  };
  std::vector<Prompt> prompts;
  model::SamplingParams sampling = request.sampling;
  if (request.kind == GenerationRequest::Kind::kChat) {
    TANDEM_ASSIGN_OR_RETURN(std::string text, RenderChat(request.messages));
    // The rendered text carries the BOS where the template emits one ("<bos>",
    // "<|begin_of_text|>"): the tokenizer adds none (a second BOS derails Gemma and Llama 3), as
    // Tokenize's chat default and Hugging Face's apply_chat_template do.
    prompts.push_back(
        {tokenizer_->Encode(text, /*parse_special=*/true, /*add_special=*/false), std::move(text)});
    sampling.stop_token_ids.insert(sampling.stop_token_ids.end(), chat_stop_ids_.begin(),
                                   chat_stop_ids_.end());
  } else {
    for (const PromptInput& p : request.prompts) {
      if (p.is_tokens) {
        prompts.push_back({p.tokens, request.echo ? tokenizer_->Decode(p.tokens) : ""});
      } else {
        prompts.push_back(
            {tokenizer_->Encode(p.text, /*parse_special=*/true, /*add_special=*/true), p.text});
      }
    }
  }
  int prompt_tokens = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int len = static_cast<int>(prompts[i].ids.size());
    if (len == 0) {
      return absl::InvalidArgumentError(StrCat("prompt ", i, " is empty after tokenization"));
    }
    if (len >= context) {
      return absl::OutOfRangeError(StrCat("this model's maximum context length is ", context,
                                          " tokens; the prompt has ", len, " tokens"));
    }
    prompt_tokens += len;
  }

  auto state = std::make_shared<StreamState>();
  state->tokenizer = tokenizer_.get();
  state->stop = request.stop;
  state->logprobs = sampling.logprobs;
  state->top_logprobs = sampling.top_logprobs;
  state->arrival = arrival;
  state->ttft_slo_ms = request.ttft_slo_ms > 0 ? request.ttft_slo_ms : config_.default_ttft_slo_ms;
  state->tpot_slo_ms = request.tpot_slo_ms > 0 ? request.tpot_slo_ms : config_.default_tpot_slo_ms;
  auto slo = [](double ms) {
    return ms > 0 ? absl::Microseconds(ms * 1000) : absl::InfiniteDuration();
  };
  state->observer = observer_;
  state->in_flight = in_flight_;

  std::vector<scheduler::SequenceRequest> seqs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int len = static_cast<int>(prompts[i].ids.size());
    int max_tokens;
    if (request.max_tokens) {
      max_tokens = *request.max_tokens;
      if (len + static_cast<int64_t>(max_tokens) > context) {
        return absl::OutOfRangeError(
            StrCat("this model's maximum context length is ", context, " tokens; the prompt has ",
                   len, " tokens and max_tokens asks for ", max_tokens, " more"));
      }
    } else if (request.kind == GenerationRequest::Kind::kChat) {
      max_tokens = context - len;
    } else {
      max_tokens = std::min(config_.default_completion_max_tokens, context - len);
    }
    // A default may not ask for more than the KV cache holds; an explicit max_tokens that does
    // is refused by the engine with OutOfRange (413).
    if (!request.max_tokens) max_tokens = std::min(max_tokens, engine_.kv_capacity_tokens() - len);
    if (max_tokens < 1) {
      return absl::OutOfRangeError(StrCat("the prompt (", len,
                                          " tokens) does not fit the KV cache with room to "
                                          "generate"));
    }
    for (int j = 0; j < request.n; ++j) {
      auto choice = std::make_unique<StreamState::Choice>();
      choice->index = static_cast<int>(i) * request.n + j;
      choice->prompt_tokens = len;
      choice->first_of_prompt = j == 0;
      if (request.echo) choice->echo = prompts[i].text;
      choice->decoder =
          std::make_unique<model::StreamDecoder>(*tokenizer_, /*render_special=*/false);
      scheduler::SequenceRequest sr;
      sr.id = next_id_.fetch_add(1);
      sr.prompt = prompts[i].ids;
      sr.sampling = sampling;
      if (sampling.has_seed) sr.sampling.seed = sampling.seed + static_cast<uint64_t>(j);
      sr.max_tokens = max_tokens;
      sr.sink = std::make_shared<ChoiceSink>(state, choice.get());
      sr.arrival = arrival;
      sr.ttft_slo = slo(state->ttft_slo_ms);
      sr.tpot_slo = slo(state->tpot_slo_ms);
      state->choices.push_back(std::move(choice));
      seqs.push_back(std::move(sr));
    }
  }

  auto stream = std::make_unique<EngineGenerationStream>(state);
  stream->set_prompt_tokens(prompt_tokens);
  const int n_seqs = static_cast<int>(seqs.size());
  in_flight_->fetch_add(n_seqs);
  absl::StatusOr<scheduler::Admission> admitted = engine_.Submit(std::move(seqs));
  if (!admitted.ok()) {
    in_flight_->fetch_sub(n_seqs);
    for (const auto& c : state->choices) c->cancel.store(true);
    if (admitted.status().code() == absl::StatusCode::kResourceExhausted && observer_) {
      const std::string reason = scheduler::RejectReasonOf(admitted.status());
      observer_->OnRejected(reason.empty() ? "other" : reason, n_seqs);
    }
    return admitted.status();
  }
  return stream;
}

absl::StatusOr<std::vector<int32_t>> EngineFrontend::Tokenize(const TokenizeRequest& request) {
  TANDEM_RETURN_IF_ERROR(CheckModel(request.model));
  std::string text = request.text;
  if (request.is_chat) {
    if (request.messages.empty()) return absl::InvalidArgumentError("'messages' is empty");
    TANDEM_ASSIGN_OR_RETURN(text, RenderChat(request.messages));
  }
  return tokenizer_->Encode(text, /*parse_special=*/true, request.add_special_tokens);
}

absl::StatusOr<std::string> EngineFrontend::Detokenize(const std::string& model,
                                                       const std::vector<int32_t>& tokens) {
  TANDEM_RETURN_IF_ERROR(CheckModel(model));
  for (int32_t t : tokens) {
    if (t < 0 || t >= tokenizer_->vocab_size()) {
      return absl::InvalidArgumentError(
          StrCat("token id ", t, " is outside the vocabulary [0, ", tokenizer_->vocab_size(), ")"));
    }
  }
  return model::unicode::SanitizeUtf8(tokenizer_->Decode(tokens));
}

}  // namespace tandem::server
