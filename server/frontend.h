// Frontend: what the HTTP and gRPC services call. It validates a GenerationRequest against the
// served model, renders chat messages through the chat template, tokenizes, submits one
// sequence per choice to the engine, and turns sampled tokens back into text deltas (UTF-8
// safe, stop strings held back and removed).
//
// The interface is abstract so the API layers can be tested against a scripted fake; the
// daemon's implementation is EngineFrontend (server/engine_frontend.h).
//
// Status codes, shared by both APIs (HTTP status in brackets):
//   InvalidArgument (400) bad field value; NotFound (404) unknown model;
//   OutOfRange (413) prompt or prompt + max_tokens longer than the context;
//   ResourceExhausted (429) queue full; Unavailable (503) draining or shutting down;
//   Internal (500) a bug.
//
// Thread safety: every Frontend method may be called from any thread concurrently.
// A GenerationStream is used by one consumer thread at a time, except Cancel and the notify
// callback, which may run on any thread.
#ifndef TANDEM_SERVER_FRONTEND_H_
#define TANDEM_SERVER_FRONTEND_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/generation_request.h"

namespace tandem::server {

// The output of one GenerationRequest, all choices together.
class GenerationStream {
 public:
  virtual ~GenerationStream() = default;  // cancels what is still running

  // Called, from an engine thread, each time new output may be ready and once when the stream
  // ends. It must not block (post to your own executor). Set it before the first Take.
  virtual void SetNotify(std::function<void()> notify) = 0;
  // Moves every delta ready now into *out (appending). Returns true once the stream has ended:
  // every choice finished (each one's last delta carries finish) or the stream failed
  // (status() not OK); after that it returns true with nothing new.
  virtual bool Take(std::vector<ChoiceDelta>* out) = 0;
  // Like Take, but waits up to `timeout` for output when none is ready.
  virtual bool WaitAndTake(std::vector<ChoiceDelta>* out, absl::Duration timeout) = 0;
  // OK while running and after success; the failure (e.g. Unavailable at shutdown) otherwise.
  virtual absl::Status status() const = 0;
  // Token counts so far; final once Take returned true.
  virtual Usage usage() const = 0;
  // Stops every choice: its sequences leave the engine within one step and free their KV.
  // Take then returns true. Idempotent.
  virtual void Cancel() = 0;
};

struct TokenizeRequest {
  std::string model;  // empty: the served model
  // Exactly one of: text (prompt) or messages (rendered with the chat template first).
  bool is_chat = false;
  std::string text;
  std::vector<model::ChatMessage> messages;
  bool add_special_tokens = true;
};

struct ModelInfo {
  std::string id;            // --served-model-name
  int64_t created = 0;       // unix seconds, daemon start
  int max_model_len = 0;     // context length in tokens
};

class Frontend {
 public:
  virtual ~Frontend() = default;

  // Starts a generation; errors as listed above, before anything is submitted.
  virtual absl::StatusOr<std::unique_ptr<GenerationStream>> Generate(
      GenerationRequest request) = 0;
  virtual absl::StatusOr<std::vector<int32_t>> Tokenize(const TokenizeRequest& request) = 0;
  // InvalidArgument for ids outside the vocabulary.
  virtual absl::StatusOr<std::string> Detokenize(const std::string& model,
                                                 const std::vector<int32_t>& tokens) = 0;
  virtual ModelInfo Model() const = 0;
};

}  // namespace tandem::server

#endif  // TANDEM_SERVER_FRONTEND_H_
