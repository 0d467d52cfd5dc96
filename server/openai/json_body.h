// JSON bodies of the OpenAI API: strict parsing of untrusted request bytes into an
// nlohmann::json object, and dumping that can never throw on bad UTF-8.
//
// ParseJsonObject rejects, each with InvalidArgument (code "invalid_json" where the bytes are
// not JSON): bytes that are not UTF-8, anything that is not a single JSON object, nesting
// deeper than kMaxJsonDepth (checked while parsing, so a depth bomb costs no memory), and
// numbers that do not fit a double (1e309; the error names the top-level field they sit in).
// Duplicate keys: the last one wins (what Python's json module, and so vLLM, does).
//
// Thread safety: pure functions.
#ifndef TANDEM_SERVER_OPENAI_JSON_BODY_H_
#define TANDEM_SERVER_OPENAI_JSON_BODY_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace tandem::server::openai {

// Deepest nesting of objects and arrays a request may have (a chat request needs 5).
inline constexpr int kMaxJsonDepth = 64;

absl::StatusOr<nlohmann::json> ParseJsonObject(std::string_view body);

// True when `s` is well-formed UTF-8 (no overlong forms, surrogates or code points past
// U+10FFFF). On false, *error_offset (if given) is the offset of the first bad byte.
bool IsValidUtf8(std::string_view s, size_t* error_offset = nullptr);

// Number of Unicode code points in valid UTF-8 `s` (what Python's len() gives): the bytes that
// are not continuation bytes.
size_t CodePointCount(std::string_view s);

// Compact JSON; invalid UTF-8 inside strings becomes U+FFFD instead of an exception.
std::string DumpJson(const nlohmann::json& value);
std::string DumpJson(const nlohmann::ordered_json& value);

}  // namespace tandem::server::openai

#endif  // TANDEM_SERVER_OPENAI_JSON_BODY_H_
