#include "server/openai/errors.h"

#include <string>

#include "absl/strings/cord.h"
#include "nlohmann/json.hpp"
#include "server/openai/json_body.h"

namespace tandem::server::openai {
namespace {

absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::optional<std::string> PayloadOf(const absl::Status& status, const char* url) {
  absl::optional<absl::Cord> payload = status.GetPayload(url);
  if (!payload.has_value()) return std::nullopt;
  return std::string(*payload);
}

struct ErrorClass {
  const char* type;
  const char* default_code;  // nullptr: JSON null
};

ErrorClass ClassFor(const absl::Status& status) {
  switch (HttpStatusFor(status)) {
    case 400:
      return {"invalid_request_error", nullptr};
    case 401:
      return {"authentication_error", "invalid_api_key"};
    case 404:
      return {"not_found_error", "not_found"};
    case 413:
      return {"invalid_request_error", "context_length_exceeded"};
    case 429:
      return {"rate_limit_error", "rate_limit_exceeded"};
    case 503:
      return {"server_error", "service_unavailable"};
    case 504:
      return {"server_error", "timeout"};
    default:
      return {"server_error", "internal_error"};
  }
}

}  // namespace

absl::Status InvalidParamError(std::string_view param, std::string_view message) {
  return WithParam(absl::InvalidArgumentError(AbslView(message)), param);
}

absl::Status UnsupportedParamError(std::string_view param, std::string_view message) {
  return WithErrorCode(InvalidParamError(param, message), kCodeUnsupportedParameter);
}

absl::Status WithParam(absl::Status status, std::string_view param) {
  if (!status.ok()) status.SetPayload(kParamPayloadUrl, absl::Cord(AbslView(param)));
  return status;
}

absl::Status WithErrorCode(absl::Status status, std::string_view code) {
  if (!status.ok()) status.SetPayload(kCodePayloadUrl, absl::Cord(AbslView(code)));
  return status;
}

std::optional<std::string> ParamOf(const absl::Status& status) {
  return PayloadOf(status, kParamPayloadUrl);
}

std::optional<std::string> ErrorCodeOf(const absl::Status& status) {
  return PayloadOf(status, kCodePayloadUrl);
}

int HttpStatusFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kOutOfRange:
      return 413;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

std::string ErrorBody(const absl::Status& status) {
  const ErrorClass cls = ClassFor(status);
  const std::optional<std::string> param = ParamOf(status);
  std::optional<std::string> code = ErrorCodeOf(status);
  if (!code.has_value()) {
    if (cls.default_code != nullptr) {
      code = cls.default_code;
    } else if (param.has_value()) {
      code = "invalid_value";
    }
  }
  using Json = nlohmann::ordered_json;
  Json error = {
      {"message", std::string(status.message())},
      {"type", cls.type},
      {"param", param.has_value() ? Json(*param) : Json(nullptr)},
      {"code", code.has_value() ? Json(*code) : Json(nullptr)},
  };
  return DumpJson(Json{{"error", std::move(error)}});
}

}  // namespace tandem::server::openai
