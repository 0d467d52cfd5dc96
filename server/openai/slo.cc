#include "server/openai/slo.h"

#include <charconv>
#include <cmath>
#include <string>
#include <system_error>

#include "common/check.h"
#include "common/str_cat.h"
#include "server/openai/errors.h"

namespace tandem::server::openai {
namespace {

// The shortest text that reads back as `d` ("250", "0.5", "1e+300"), unlike StrCat's six
// significant digits, which would print 3600001 as "3.6e+06" next to the 3600000 limit.
std::string Shortest(double d) {
  char buf[64];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), d);
  return std::string(buf, r.ptr);
}

// At most ~64 bytes of `s`, cut on a UTF-8 boundary.
std::string Excerpt(std::string_view s) {
  constexpr size_t kMax = 64;
  if (s.size() <= kMax) return std::string(s);
  size_t cut = kMax;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return StrCat(s.substr(0, cut), "...");
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// JSON's number grammar, leading zeros allowed: -?digits(.digits)?([eE][+-]?digits)?
bool IsDecimalNumber(std::string_view s) {
  size_t i = 0;
  auto digits = [&] {
    const size_t start = i;
    while (i < s.size() && IsDigit(s[i])) ++i;
    return i > start;
  };
  if (i < s.size() && s[i] == '-') ++i;
  if (!digits()) return false;
  if (i < s.size() && s[i] == '.') {
    ++i;
    if (!digits()) return false;
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (!digits()) return false;
  }
  return i == s.size();
}

std::string_view TrimSpaces(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

absl::Status CheckSloMs(std::string_view param, double ms) {
  if (std::isfinite(ms) && ms > 0 && ms <= kMaxSloMs) return absl::OkStatus();
  return InvalidParamError(param, StrCat("'", param, "' must be > 0 and <= ", Shortest(kMaxSloMs),
                                         " (one hour, in milliseconds), got ", Shortest(ms)));
}

absl::StatusOr<double> ParseSloHeader(std::string_view name, std::string_view value) {
  const std::string_view text = TrimSpaces(value);
  double ms = 0;
  bool parsed = IsDecimalNumber(text);
  if (parsed) {
    const std::from_chars_result r = std::from_chars(text.data(), text.data() + text.size(), ms);
    parsed = r.ec == std::errc() && r.ptr == text.data() + text.size();
  }
  if (!parsed) {
    return InvalidParamError(name,
                             StrCat("'", name, "' must be a number of milliseconds > 0 and <= ",
                                    Shortest(kMaxSloMs), ", got '", Excerpt(value), "'"));
  }
  TANDEM_RETURN_IF_ERROR(CheckSloMs(name, ms));
  return ms;
}

}  // namespace tandem::server::openai
