#include "server/http/http_request.h"

#include "absl/strings/match.h"

namespace tandem::server::http {

std::optional<std::string> HttpRequest::Header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(absl::string_view(key.data(), key.size()),
                               absl::string_view(name.data(), name.size()))) {
      return value;
    }
  }
  return std::nullopt;
}

}  // namespace tandem::server::http
