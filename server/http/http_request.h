// HttpRequest: one parsed HTTP request as the server hands it to a Handler (a plain value).
// Thread safety: a value type; no internal synchronisation.
#ifndef TANDEM_SERVER_HTTP_HTTP_REQUEST_H_
#define TANDEM_SERVER_HTTP_HTTP_REQUEST_H_

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tandem::server::http {

struct HttpRequest {
  std::string method;  // as sent, e.g. "GET", "POST"
  std::string target;  // the raw request-target, e.g. "/v1/models?x=1"
  std::string path;    // target up to '?', not percent-decoded
  std::string query;   // target after '?', without it ("" when absent)
  int version = 11;    // 10 for HTTP/1.0, 11 for HTTP/1.1
  // Header fields in arrival order, names as the client spelled them.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;    // complete (chunked request bodies are de-chunked)
  std::string remote;  // peer address, "ip:port"

  // The value of the first header named `name` (ASCII case-insensitive), or nullopt.
  std::optional<std::string> Header(std::string_view name) const;
};

}  // namespace tandem::server::http

#endif  // TANDEM_SERVER_HTTP_HTTP_REQUEST_H_
