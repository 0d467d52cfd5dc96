// tandem::client: the transport-neutral face of tandem's C++ client library. A Client sends
// completion and chat requests to a tandem daemon (or any OpenAI-compatible server, for
// HttpClient) and streams the reply back through a callback. HttpClient (http_client.h) speaks
// the OpenAI HTTP API with SSE; GrpcClient (grpc_client.h) speaks tandem.v1 over gRPC and also
// exposes the full proto API.
//
// Errors: every call returns absl::Status with the server's own message. Codes follow the
// server's (HTTP status or gRPC code): InvalidArgument (400), Unauthenticated (401), NotFound
// (404), OutOfRange (413), ResourceExhausted (429), Unavailable (503 or unreachable), Internal
// (500 or a malformed reply), Cancelled (the callback asked to stop).
//
// Thread safety: a Client may be used by one thread at a time.
#ifndef TANDEM_CLIENT_CLIENT_H_
#define TANDEM_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tandem::client {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// One completion (prompt) or chat (messages) request. Unset optionals take the server's
// defaults.
struct GenerateParams {
  std::string model;  // empty: the served model (tandemd accepts that; OpenAI does not)
  bool chat = false;
  std::string prompt;                 // !chat
  std::vector<ChatMessage> messages;  // chat
  std::optional<int> max_tokens;
  std::optional<float> temperature;
  std::optional<float> top_p;
  std::optional<int> top_k;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  int n = 1;
};

// New text of one choice.
struct TextDelta {
  int index = 0;
  std::string text;
  std::string finish_reason;  // empty until the choice's last delta: then "stop" or "length"
};

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;  // of prompt_tokens, those the server's prefix cache held
};

struct ModelEntry {
  std::string id;
  int64_t created = 0;    // unix seconds
  int max_model_len = 0;  // 0 when the server does not say
};

// Called for each delta, in order. Return false to stop: the request is cancelled on the
// server and Generate returns Cancelled.
using DeltaCallback = std::function<bool(const TextDelta&)>;

class Client {
 public:
  virtual ~Client() = default;

  // Streams the reply through `on_delta`; returns the usage the server reported at the end.
  virtual absl::StatusOr<Usage> Generate(const GenerateParams& params,
                                         const DeltaCallback& on_delta) = 0;
  // OK when the server is up and serving; Unavailable otherwise.
  virtual absl::Status Health() = 0;
  virtual absl::StatusOr<std::vector<ModelEntry>> ListModels() = 0;
};

}  // namespace tandem::client

#endif  // TANDEM_CLIENT_CLIENT_H_
