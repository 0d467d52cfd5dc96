// EngineFrontend: the daemon's Frontend over one scheduler::Engine (colocated or not). It owns
// the tokenizer and chat template; for each request it validates (the one validation both APIs
// share), renders chat messages, tokenizes, submits one scheduler::Sequence per choice, and
// turns the engine's tokens into ChoiceDeltas: UTF-8-safe text through StreamDecoder, stop
// strings held back until they can no longer match and never returned, logprobs with token
// text. It also reports every sequence's timings to a ServingObserver (metrics).
//
// Thread safety: every method may be called from any thread. Streams: see frontend.h.
// Must not: know about HTTP or gRPC, run model math.
#ifndef TANDEM_SERVER_ENGINE_FRONTEND_H_
#define TANDEM_SERVER_ENGINE_FRONTEND_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"
#include "scheduler/engine.h"
#include "server/frontend.h"

namespace tandem::server {

// One finished sequence (one choice), for metrics. Durations are measured from the moment
// Frontend::Generate was called.
struct SequenceRecord {
  absl::Duration queue_time;           // until the sequence's first step
  std::optional<absl::Duration> ttft;  // until its first token, if any
  absl::Duration e2e;                  // until it finished
  int prompt_tokens = 0;
  int output_tokens = 0;
  std::string finish;      // "stop", "length", "cancelled", "failed" or "rejected"
  double ttft_slo_ms = 0;  // the SLOs it is judged against (0: none)
  double tpot_slo_ms = 0;
  // What admission predicted for the TTFT of the request (unset: no prediction made).
  std::optional<absl::Duration> predicted_ttft;
};

// Receives timings; called on engine threads, so it must not block.
class ServingObserver {
 public:
  virtual ~ServingObserver() = default;
  // The gap between two consecutive tokens of one sequence (ITL).
  virtual void OnTokenGap(absl::Duration gap) = 0;
  virtual void OnSequenceDone(const SequenceRecord& record) = 0;
  // A request refused before it ran (429): reason is a scheduler::kReject* string.
  virtual void OnRejected(const std::string& reason, int sequences) = 0;
};

struct EngineFrontendConfig {
  std::string served_model_name;
  int default_completion_max_tokens = 16;  // OpenAI's default for /v1/completions
  // SLOs of requests that name none (0: none). A request with neither SLO is best-effort.
  double default_ttft_slo_ms = 1000;
  double default_tpot_slo_ms = 100;
};

class EngineFrontend : public Frontend {
 public:
  // `engine` and `observer` (may be null) must outlive the frontend and every stream.
  EngineFrontend(const EngineFrontendConfig& config, std::unique_ptr<model::Tokenizer> tokenizer,
                 model::ChatTemplate chat_template, scheduler::Engine& engine,
                 ServingObserver* observer);
  ~EngineFrontend() override;

  absl::StatusOr<std::unique_ptr<GenerationStream>> Generate(GenerationRequest request) override;
  absl::StatusOr<std::vector<int32_t>> Tokenize(const TokenizeRequest& request) override;
  absl::StatusOr<std::string> Detokenize(const std::string& model,
                                         const std::vector<int32_t>& tokens) override;
  ModelInfo Model() const override;

  // Draining: Generate answers Unavailable; streams already running go on.
  void SetDraining(bool draining) { draining_.store(draining); }
  bool draining() const { return draining_.load(); }
  // Sequences submitted and not finished yet.
  int in_flight() const { return in_flight_->load(); }

 private:
  absl::Status CheckModel(const std::string& model) const;
  absl::StatusOr<std::string> RenderChat(const std::vector<model::ChatMessage>& messages) const;

  // Constant after construction.
  const EngineFrontendConfig config_;
  const std::unique_ptr<model::Tokenizer> tokenizer_;
  const model::ChatTemplate chat_template_;
  std::vector<int32_t> chat_stop_ids_;  // the template's end-of-turn tokens
  scheduler::Engine& engine_;
  ServingObserver* const observer_;
  const int64_t created_;

  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> next_id_{1};
  std::shared_ptr<std::atomic<int>> in_flight_ = std::make_shared<std::atomic<int>>(0);
};

}  // namespace tandem::server

#endif  // TANDEM_SERVER_ENGINE_FRONTEND_H_
