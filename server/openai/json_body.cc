#include "server/openai/json_body.h"

#include <cstdint>
#include <string>

#include "common/str_cat.h"
#include "server/openai/errors.h"

namespace tandem::server::openai {
namespace {

using nlohmann::json;

// Builds the DOM through nlohmann's own builder, but stops at kMaxJsonDepth and remembers the
// top-level key being read, so errors deep inside a value can name the field.
class BoundedDomBuilder {
 public:
  explicit BoundedDomBuilder(json& root) : dom_(root, /*allow_exceptions_=*/false) {}

  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(json::number_integer_t v) { return dom_.number_integer(v); }
  bool number_unsigned(json::number_unsigned_t v) { return dom_.number_unsigned(v); }
  bool number_float(json::number_float_t v, const json::string_t& s) {
    return dom_.number_float(v, s);
  }
  bool string(json::string_t& v) { return dom_.string(v); }
  bool binary(json::binary_t& v) { return dom_.binary(v); }
  bool start_object(std::size_t n) { return Enter() && dom_.start_object(n); }
  bool key(json::string_t& k) {
    if (depth_ == 1) top_key_ = k;
    return dom_.key(k);
  }
  bool end_object() {
    Leave();
    return dom_.end_object();
  }
  bool start_array(std::size_t n) { return Enter() && dom_.start_array(n); }
  bool end_array() {
    Leave();
    return dom_.end_array();
  }
  template <typename Exception>
  bool parse_error(std::size_t position, const std::string& /*last_token*/, const Exception& ex) {
    error_id_ = ex.id;
    error_ = ex.what();
    position_ = position;
    return false;
  }

  bool too_deep() const { return too_deep_; }
  int error_id() const { return error_id_; }
  const std::string& error() const { return error_; }
  std::size_t position() const { return position_; }
  // The top-level key whose value was being read (empty outside the top-level object).
  std::string current_field() const { return depth_ >= 1 ? top_key_ : std::string(); }

 private:
  bool Enter() {
    if (++depth_ > kMaxJsonDepth) {
      too_deep_ = true;
      return false;
    }
    return true;
  }
  void Leave() { --depth_; }

  nlohmann::detail::json_sax_dom_parser<json> dom_;
  int depth_ = 0;
  bool too_deep_ = false;
  std::string top_key_;
  int error_id_ = 0;
  std::string error_;
  std::size_t position_ = 0;
};

// nlohmann's messages start with "[json.exception.parse_error.101] "; the rest is useful but may
// quote a long token, so keep it short.
std::string CleanParseMessage(const std::string& what) {
  std::string_view msg = what;
  if (!msg.empty() && msg.front() == '[') {
    const size_t end = msg.find("] ");
    if (end != std::string_view::npos) msg.remove_prefix(end + 2);
  }
  constexpr size_t kMaxLen = 200;
  if (msg.size() > kMaxLen) {
    size_t cut = kMaxLen;
    while (cut > 0 && (static_cast<unsigned char>(msg[cut]) & 0xC0) == 0x80) --cut;
    return std::string(msg.substr(0, cut)) + "...";
  }
  return std::string(msg);
}

}  // namespace

bool IsValidUtf8(std::string_view s, size_t* error_offset) {
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      if (error_offset != nullptr) *error_offset = i;
      return false;
    }
    bool ok = i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      ok = (b & 0xC0) == 0x80;
      cp = (cp << 6) | (b & 0x3F);
    }
    if (ok && len == 3) ok = cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF);
    if (ok && len == 4) ok = cp >= 0x10000 && cp <= 0x10FFFF;
    if (!ok) {
      if (error_offset != nullptr) *error_offset = i;
      return false;
    }
    i += len;
  }
  return true;
}

size_t CodePointCount(std::string_view s) {
  size_t count = 0;
  for (char c : s) count += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return count;
}

absl::StatusOr<json> ParseJsonObject(std::string_view body) {
  size_t bad = 0;
  if (!IsValidUtf8(body, &bad)) {
    return WithErrorCode(absl::InvalidArgumentError(StrCat(
                             "request body is not valid UTF-8 (bad byte at offset ", bad, ")")),
                         kCodeInvalidJson);
  }
  // nlohmann's lexer takes a NUL byte for the end of input and would ignore what follows it.
  if (const size_t nul = body.find('\0'); nul != std::string_view::npos) {
    return WithErrorCode(absl::InvalidArgumentError(
                             StrCat("request body is not valid JSON: NUL byte at offset ", nul)),
                         kCodeInvalidJson);
  }
  json root;
  BoundedDomBuilder builder(root);
  const bool ok = json::sax_parse(body.data(), body.data() + body.size(), &builder,
                                  json::input_format_t::json, /*strict=*/true);
  if (builder.too_deep()) {
    return WithErrorCode(absl::InvalidArgumentError(StrCat("request JSON is nested deeper than ",
                                                           kMaxJsonDepth, " levels")),
                         kCodeInvalidJson);
  }
  if (!ok) {
    // 406: nlohmann's out_of_range "number overflow" (a number past the range of a double).
    const std::string field = builder.current_field();
    if (builder.error_id() == 406 && !field.empty()) {
      return InvalidParamError(field,
                               StrCat("'", field, "' holds a number too large to represent"));
    }
    return WithErrorCode(absl::InvalidArgumentError(
                             StrCat("request body is not valid JSON: ",
                                    builder.error().empty() ? std::string("parse stopped")
                                                            : CleanParseMessage(builder.error()))),
                         kCodeInvalidJson);
  }
  if (!root.is_object()) {
    return WithErrorCode(absl::InvalidArgumentError("request body must be a JSON object"),
                         kCodeInvalidJson);
  }
  return root;
}

std::string DumpJson(const json& value) {
  return value.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

std::string DumpJson(const nlohmann::ordered_json& value) {
  return value.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

}  // namespace tandem::server::openai
