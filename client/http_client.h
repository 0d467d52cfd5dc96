// HttpClient: a client for tandemd's OpenAI-compatible HTTP API (and any server speaking it:
// vLLM, llama.cpp's server). Generate POSTs /v1/completions or /v1/chat/completions with
// stream=true and stream_options.include_usage, and reads the server-sent events as they
// arrive; Health is GET /health; ListModels is GET /v1/models.
//
// One synchronous connection per call (Boost.Beast), closed afterwards: the CLI makes one call
// at a time and a fresh connection keeps failures independent. Plain http:// only (no TLS).
//
// The JSON here is the few fields a client sends and reads, kept self-contained on purpose:
// the server's schema code (server/openai) parses requests and renders responses, the
// opposite directions, so there is nothing to share but field names.
//
// Thread safety: one call at a time per HttpClient.
#ifndef TANDEM_CLIENT_HTTP_CLIENT_H_
#define TANDEM_CLIENT_HTTP_CLIENT_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/client.h"

namespace tandem::client {

struct HttpClientOptions {
  // http://host[:port][/prefix]; a trailing "/v1" is dropped, so OpenAI-style base URLs work.
  std::string url = "http://127.0.0.1:8000";
  std::string api_key;  // sent as `Authorization: Bearer <key>` when set
};

// The status for a non-2xx HTTP response: the code from the HTTP status (400 InvalidArgument,
// 401 Unauthenticated, 403 PermissionDenied, 404 NotFound, 413 OutOfRange, 422 InvalidArgument,
// 429 ResourceExhausted, 501 Unimplemented, 503 Unavailable, 504 DeadlineExceeded, other 4xx
// InvalidArgument, other 5xx Internal), the message from an OpenAI error body
// {"error":{"message":...}} or else the body text (or "HTTP <status>" when empty).
absl::Status StatusFromHttpError(int http_status, std::string_view body);

class HttpClient final : public Client {
 public:
  // InvalidArgument for a URL that is not http://host[:port][/prefix].
  static absl::StatusOr<std::unique_ptr<HttpClient>> Create(const HttpClientOptions& options);

  // Client.
  absl::StatusOr<Usage> Generate(const GenerateParams& params,
                                 const DeltaCallback& on_delta) override;
  absl::Status Health() override;
  absl::StatusOr<std::vector<ModelEntry>> ListModels() override;

  // GET `path` (e.g. "/metrics"): the body of a 2xx response.
  absl::StatusOr<std::string> Get(const std::string& path);

  // The JSON body Generate sends for `params`.
  static std::string RequestBody(const GenerateParams& params);

 private:
  HttpClient(std::string host, std::string port, std::string prefix, std::string api_key);

  // One request on a new connection. A 2xx body is passed to `on_body` piece by piece as it
  // arrives (return false to stop: Cancelled); anything else becomes StatusFromHttpError.
  absl::Status Exchange(bool post, const std::string& path, const std::string& body,
                        const std::function<bool(std::string_view)>& on_body);

  // Constant after construction.
  const std::string host_;
  const std::string port_;
  const std::string prefix_;
  const std::string api_key_;
};

}  // namespace tandem::client

#endif  // TANDEM_CLIENT_HTTP_CLIENT_H_
