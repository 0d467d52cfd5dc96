// Server URLs and one-shot HTTP requests (the helper calls around a run: GET /v1/models,
// POST /tokenize, GET /metrics). Plain HTTP/1.1 only; an https:// URL is refused with a clear
// error (tandem-bench links no TLS library).
// Thread safety: pure functions; HttpFetch runs its own io_context and may be called from any
// thread.
#ifndef TANDEM_BENCH_TANDEM_BENCH_HTTP_FETCH_H_
#define TANDEM_BENCH_TANDEM_BENCH_HTTP_FETCH_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tandem::bench {

struct ServerUrl {
  std::string host;
  std::string port;       // "80" when not given
  std::string base_path;  // without a trailing "/" and without a trailing "/v1"; often empty
  std::string HostHeader() const { return port == "80" ? host : host + ":" + port; }
};

// Reads "http://HOST[:PORT][/BASE]". A trailing "/v1" is dropped: endpoints are added as
// "/v1/completions" etc.
absl::StatusOr<ServerUrl> ParseServerUrl(std::string_view url);

struct HttpResponse {
  int status = 0;
  std::string body;
};

// One request on its own connection. `body` empty and method GET, or a JSON body with POST.
// Fails (Unavailable / DeadlineExceeded) on connection errors or timeout; any HTTP status is a
// successful fetch.
absl::StatusOr<HttpResponse> HttpFetch(const ServerUrl& server, std::string_view method,
                                       std::string_view path, std::string_view body,
                                       std::string_view api_key, double timeout_s);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_HTTP_FETCH_H_
