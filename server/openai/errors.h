// OpenAI-style errors: how an absl::Status becomes an HTTP status and an OpenAI error body
// `{"error":{"message","type","param","code"}}`, and the status payloads that carry the
// offending field (`param`) and an OpenAI-like error code from the code that found the problem
// (parsers, ValidateGenerationRequest, the Frontend) to the code that renders it (HTTP, gRPC).
//
// Status -> HTTP status, `type`, default `code` (a `code` set with WithErrorCode wins):
//   InvalidArgument, FailedPrecondition  400  invalid_request_error  "invalid_value" when a
//                                                param is named, else null
//   Unauthenticated                      401  authentication_error   "invalid_api_key"
//   NotFound                             404  not_found_error        "not_found"
//   OutOfRange                           413  invalid_request_error  "context_length_exceeded"
//   ResourceExhausted                    429  rate_limit_error       "rate_limit_exceeded"
//   Unavailable                          503  server_error           "service_unavailable"
//   DeadlineExceeded                     504  server_error           "timeout"
//   anything else (Internal, ...)        500  server_error           "internal_error"
// `type` follows OpenAI's names where OpenAI has one (invalid_request_error, server_error) and
// names the class of failure otherwise; `code` is always a string or null, never a number, as
// in OpenAI's responses (the HTTP status is already the response's status line). The official
// `openai` SDK picks its exception class from the HTTP status, not from these strings.
//
// Thread safety: pure functions.
#ifndef TANDEM_SERVER_OPENAI_ERRORS_H_
#define TANDEM_SERVER_OPENAI_ERRORS_H_

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace tandem::server::openai {

// Status payload type URLs. Payload bytes are the plain field name / code string.
inline constexpr char kParamPayloadUrl[] = "tandem/param";
inline constexpr char kCodePayloadUrl[] = "tandem/code";

// Codes set explicitly by the parsers.
inline constexpr char kCodeUnsupportedParameter[] = "unsupported_parameter";
inline constexpr char kCodeInvalidJson[] = "invalid_json";

// InvalidArgument(message) naming `param` (e.g. "temperature", "messages[0].content").
absl::Status InvalidParamError(std::string_view param, std::string_view message);
// InvalidArgument for a field tandem does not implement (code "unsupported_parameter").
absl::Status UnsupportedParamError(std::string_view param, std::string_view message);

// Copies of `status` with the param / code payload set. OK statuses are returned unchanged.
absl::Status WithParam(absl::Status status, std::string_view param);
absl::Status WithErrorCode(absl::Status status, std::string_view code);

// The payloads, when present.
std::optional<std::string> ParamOf(const absl::Status& status);
std::optional<std::string> ErrorCodeOf(const absl::Status& status);

// HTTP status for a non-OK status (200 for OK).
int HttpStatusFor(const absl::Status& status);
// OpenAI's error object `{"error":{...}}` for a non-OK status, as compact JSON. Always valid
// JSON, whatever bytes the message holds.
std::string ErrorBody(const absl::Status& status);

}  // namespace tandem::server::openai

#endif  // TANDEM_SERVER_OPENAI_ERRORS_H_
