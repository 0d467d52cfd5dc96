#include "server/openai/request_parser.h"

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "common/check.h"
#include "common/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/openai/errors.h"
#include "server/openai/json_body.h"
#include "server/openai/slo.h"

namespace tandem::server::openai {
namespace {

using nlohmann::json;

constexpr int64_t kInt32Min = std::numeric_limits<int32_t>::min();
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// The value of `key`, or nullptr when it is absent or null (null means "unset").
const json* Field(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// At most ~64 bytes of `s` for an error message, cut on a UTF-8 boundary.
std::string Excerpt(std::string_view s) {
  constexpr size_t kMax = 64;
  if (s.size() <= kMax) return std::string(s);
  size_t cut = kMax;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return StrCat(s.substr(0, cut), "...");
}

absl::Status TypeError(std::string_view field, std::string_view what) {
  return InvalidParamError(field, StrCat("'", field, "' must be ", what));
}

absl::Status OutOfRange(std::string_view field, const json& got) {
  return InvalidParamError(field,
                           StrCat("'", field, "' is out of range (got ", DumpJson(got), ")"));
}

// An integer in [lo, hi]. Integral floats (5.0) count as integers.
absl::StatusOr<int64_t> ToInt(const json& v, std::string_view field, int64_t lo, int64_t hi) {
  int64_t x;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return OutOfRange(field, v);
    x = static_cast<int64_t>(u);
  } else if (v.is_number_integer()) {
    x = v.get<int64_t>();
  } else if (v.is_number_float()) {
    const double d = v.get<double>();
    if (!std::isfinite(d) || d != std::trunc(d)) return TypeError(field, "an integer");
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0)) return OutOfRange(field, v);
    x = static_cast<int64_t>(d);
  } else {
    return TypeError(field, "an integer");
  }
  if (x < lo || x > hi) return OutOfRange(field, v);
  return x;
}

absl::StatusOr<std::optional<int>> GetInt32(const json& obj, const char* key) {
  const json* v = Field(obj, key);
  if (v == nullptr) return std::optional<int>();
  TANDEM_ASSIGN_OR_RETURN(int64_t x, ToInt(*v, key, kInt32Min, kInt32Max));
  return std::optional<int>(static_cast<int>(x));
}

// A number that fits a float (the type SamplingParams keeps).
absl::StatusOr<std::optional<double>> GetNumber(const json& obj, const char* key) {
  const json* v = Field(obj, key);
  if (v == nullptr) return std::optional<double>();
  if (!v->is_number()) return TypeError(key, "a number");
  const double d = v->get<double>();
  if (!std::isfinite(d) || std::fabs(d) > FLT_MAX) return OutOfRange(key, *v);
  return std::optional<double>(d);
}

absl::StatusOr<std::optional<bool>> GetBool(const json& obj, const char* key) {
  const json* v = Field(obj, key);
  if (v == nullptr) return std::optional<bool>();
  if (!v->is_boolean()) return TypeError(key, "a boolean");
  return std::optional<bool>(v->get<bool>());
}

absl::StatusOr<std::optional<std::string>> GetString(const json& obj, const char* key) {
  const json* v = Field(obj, key);
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) return TypeError(key, "a string");
  return std::optional<std::string>(v->get<std::string>());
}

// Seeds: any integer in [-2^63, 2^64), taken modulo 2^64.
absl::StatusOr<std::optional<uint64_t>> GetSeed(const json& obj) {
  const json* v = Field(obj, "seed");
  if (v == nullptr) return std::optional<uint64_t>();
  if (v->is_number_unsigned()) return std::optional<uint64_t>(v->get<uint64_t>());
  if (v->is_number_integer()) {
    return std::optional<uint64_t>(static_cast<uint64_t>(v->get<int64_t>()));
  }
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (!std::isfinite(d) || d != std::trunc(d)) return TypeError("seed", "an integer");
    if (d >= -9223372036854775808.0 && d < 0) {
      return std::optional<uint64_t>(static_cast<uint64_t>(static_cast<int64_t>(d)));
    }
    if (d >= 0 && d < 18446744073709551616.0) {
      return std::optional<uint64_t>(static_cast<uint64_t>(d));
    }
    return OutOfRange("seed", *v);
  }
  return TypeError("seed", "an integer");
}

// A JSON list of token ids, each in [lo, INT32_MAX].
absl::Status ParseTokenIds(const json& list, std::string_view field, int64_t lo,
                           std::vector<int32_t>* out) {
  if (list.size() > static_cast<size_t>(kMaxPromptTokens)) {
    return WithParam(absl::OutOfRangeError(StrCat("'", field, "' holds ", list.size(),
                                                  " token ids, more than the ", kMaxPromptTokens,
                                                  " tandem accepts")),
                     field);
  }
  out->reserve(list.size());
  for (const json& e : list) {
    if (!e.is_number()) return TypeError(field, "a list of integer token ids");
    TANDEM_ASSIGN_OR_RETURN(int64_t id, ToInt(e, field, lo, kInt32Max));
    out->push_back(static_cast<int32_t>(id));
  }
  return absl::OkStatus();
}

constexpr char kPromptShape[] =
    "a string, a list of strings, a list of token ids or a list of lists of token ids";

absl::Status ParsePrompt(const json* v, std::vector<PromptInput>* out) {
  if (v == nullptr) return InvalidParamError("prompt", "'prompt' is required");
  if (v->is_string()) {
    out->push_back(PromptInput{.is_tokens = false, .text = v->get<std::string>(), .tokens = {}});
    return absl::OkStatus();
  }
  if (!v->is_array()) return TypeError("prompt", kPromptShape);
  if (v->empty()) return InvalidParamError("prompt", "'prompt' must not be an empty list");
  const json& first = v->front();
  if (first.is_number()) {
    PromptInput p{.is_tokens = true, .text = {}, .tokens = {}};
    TANDEM_RETURN_IF_ERROR(ParseTokenIds(*v, "prompt", kInt32Min, &p.tokens));
    out->push_back(std::move(p));
    return absl::OkStatus();
  }
  if (v->size() > static_cast<size_t>(kMaxPrompts)) {
    return InvalidParamError("prompt", StrCat("'prompt' holds ", v->size(),
                                              " prompts, more than the ", kMaxPrompts, " allowed"));
  }
  if (first.is_string()) {
    for (const json& e : *v) {
      if (!e.is_string()) return TypeError("prompt", kPromptShape);
      out->push_back(PromptInput{.is_tokens = false, .text = e.get<std::string>(), .tokens = {}});
    }
    return absl::OkStatus();
  }
  if (first.is_array()) {
    for (const json& e : *v) {
      if (!e.is_array()) return TypeError("prompt", kPromptShape);
      PromptInput p{.is_tokens = true, .text = {}, .tokens = {}};
      TANDEM_RETURN_IF_ERROR(ParseTokenIds(e, "prompt", kInt32Min, &p.tokens));
      out->push_back(std::move(p));
    }
    return absl::OkStatus();
  }
  return TypeError("prompt", kPromptShape);
}

absl::StatusOr<std::string> ParseContent(const json& content, const std::string& field) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) return TypeError(field, "a string or a list of content parts");
  std::string text;
  for (size_t j = 0; j < content.size(); ++j) {
    const json& part = content[j];
    const std::string part_field = StrCat(field, "[", j, "]");
    if (!part.is_object()) return TypeError(part_field, "an object like {\"type\":\"text\", ...}");
    const json* type = Field(part, "type");
    if (type == nullptr) {
      return InvalidParamError(StrCat(part_field, ".type"),
                               StrCat("'", part_field, ".type' is required"));
    }
    if (!type->is_string()) return TypeError(StrCat(part_field, ".type"), "a string");
    const std::string& type_name = type->get_ref<const std::string&>();
    if (type_name != "text") {
      return UnsupportedParamError(
          StrCat(part_field, ".type"),
          StrCat("'", part_field, ".type': content part type '", Excerpt(type_name),
                 "' is not supported by tandem (only 'text')"));
    }
    const json* part_text = Field(part, "text");
    if (part_text == nullptr) {
      return InvalidParamError(StrCat(part_field, ".text"),
                               StrCat("'", part_field, ".text' is required"));
    }
    if (!part_text->is_string()) return TypeError(StrCat(part_field, ".text"), "a string");
    if (j > 0) text += '\n';
    text += part_text->get_ref<const std::string&>();
  }
  return text;
}

absl::Status ParseMessages(const json& v, std::vector<model::ChatMessage>* out) {
  if (!v.is_array()) return TypeError("messages", "a list of messages");
  if (v.empty()) return InvalidParamError("messages", "'messages' must not be empty");
  if (v.size() > static_cast<size_t>(kMaxMessages)) {
    return InvalidParamError(
        "messages", StrCat("'messages' holds ", v.size(), " messages, more than the ", kMaxMessages,
                           " allowed"));
  }
  out->reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const json& m = v[i];
    const std::string field = StrCat("messages[", i, "]");
    if (!m.is_object()) return TypeError(field, "an object with 'role' and 'content'");
    const std::string role_field = StrCat(field, ".role");
    const json* role = Field(m, "role");
    if (role == nullptr) {
      return InvalidParamError(role_field, StrCat("'", role_field, "' is required"));
    }
    if (!role->is_string()) return TypeError(role_field, "a string");
    std::string role_name = role->get<std::string>();
    if (role_name == "developer") role_name = "system";
    if (role_name == "tool" || role_name == "function") {
      return UnsupportedParamError(role_field, StrCat("'", role_field, "': role '", role_name,
                                                      "' is not supported (tandem has no tool "
                                                      "calling)"));
    }
    if (role_name != "system" && role_name != "user" && role_name != "assistant") {
      return InvalidParamError(role_field,
                               StrCat("'", role_field,
                                      "' must be 'system', 'user', 'assistant' or 'developer', "
                                      "got '",
                                      Excerpt(role_name), "'"));
    }
    const json* tool_calls = Field(m, "tool_calls");
    if (tool_calls != nullptr && !(tool_calls->is_array() && tool_calls->empty())) {
      return UnsupportedParamError(StrCat(field, ".tool_calls"),
                                   StrCat("'", field, ".tool_calls' is not supported by tandem"));
    }
    if (Field(m, "function_call") != nullptr) {
      return UnsupportedParamError(
          StrCat(field, ".function_call"),
          StrCat("'", field, ".function_call' is not supported by tandem"));
    }
    const std::string content_field = StrCat(field, ".content");
    const json* content = Field(m, "content");
    if (content == nullptr) {
      return InvalidParamError(content_field, StrCat("'", content_field, "' is required"));
    }
    TANDEM_ASSIGN_OR_RETURN(std::string text, ParseContent(*content, content_field));
    out->push_back(model::ChatMessage{std::move(role_name), std::move(text)});
  }
  return absl::OkStatus();
}

// Fields tandem knows and does not implement: accepted only with their "off" value.
struct OffOnly {
  const char* key;
  bool (*is_off)(const json&);
  const char* hint;  // appended to the message
};

bool IsEmptyArray(const json& v) { return v.is_array() && v.empty(); }
bool IsNone(const json& v) { return v.is_string() && v.get_ref<const std::string&>() == "none"; }
bool IsTextFormat(const json& v) {
  if (!v.is_object()) return false;
  auto it = v.find("type");
  return it != v.end() && it->is_string() && it->get_ref<const std::string&>() == "text";
}
bool IsEmptyObject(const json& v) { return v.is_object() && v.empty(); }
bool IsEmptyString(const json& v) {
  return v.is_string() && v.get_ref<const std::string&>().empty();
}
bool IsFalse(const json& v) { return v.is_boolean() && !v.get<bool>(); }
bool IsZero(const json& v) { return v.is_number() && v.get<double>() == 0.0; }
bool IsTextModality(const json& v) {
  return v.is_array() && v.size() == 1 && v[0].is_string() &&
         v[0].get_ref<const std::string&>() == "text";
}
bool Never(const json&) { return false; }

constexpr OffOnly kOffOnly[] = {
    {"tools", IsEmptyArray, " (tandem has no tool calling)"},
    {"tool_choice", IsNone, " (tandem has no tool calling)"},
    {"functions", IsEmptyArray, " (tandem has no tool calling)"},
    {"function_call", IsNone, " (tandem has no tool calling)"},
    {"parallel_tool_calls", Never, " (tandem has no tool calling)"},
    {"response_format", IsTextFormat, " (only {\"type\": \"text\"})"},
    {"logit_bias", IsEmptyObject, ""},
    {"suffix", IsEmptyString, ""},
    {"modalities", IsTextModality, " (only [\"text\"])"},
    {"audio", Never, ""},
    {"prediction", Never, ""},
    {"reasoning_effort", Never, ""},
    {"web_search_options", Never, ""},
    {"store", IsFalse, ""},
    {"use_beam_search", IsFalse, ""},
    {"include_stop_str_in_output", IsFalse, " (stop strings are never part of the output)"},
    {"min_tokens", IsZero, ""},
    {"prompt_logprobs", Never, ""},
    {"guided_json", Never, ""},
    {"guided_regex", Never, ""},
    {"guided_choice", Never, ""},
    {"guided_grammar", Never, ""},
    {"guided_decoding_backend", Never, ""},
    {"guided_whitespace_pattern", Never, ""},
    {"structured_outputs", Never, ""},
};

absl::Status RejectUnsupported(const json& body) {
  for (const OffOnly& f : kOffOnly) {
    const json* v = Field(body, f.key);
    if (v != nullptr && !f.is_off(*v)) {
      return UnsupportedParamError(f.key,
                                   StrCat("'", f.key, "' is not supported by tandem", f.hint));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> GetModel(const json& body) {
  TANDEM_ASSIGN_OR_RETURN(std::optional<std::string> model, GetString(body, "model"));
  return model.value_or("");
}

float AsFloat(double d) { return static_cast<float>(d); }

// One SLO value in milliseconds: null or absent is unset; else a number passing CheckSloMs.
absl::StatusOr<std::optional<double>> GetSloMs(const json& obj, const char* key,
                                               std::string_view field) {
  const json* v = Field(obj, key);
  if (v == nullptr) return std::optional<double>();
  if (!v->is_number()) return TypeError(field, "a number of milliseconds");
  const double ms = v->get<double>();
  TANDEM_RETURN_IF_ERROR(CheckSloMs(field, ms));
  return std::optional<double>(ms);
}

// `slo: {"ttft_ms", "tpot_ms"}` and the older top-level spellings ttft_slo_ms / tpot_slo_ms.
// Both spellings of one target may be given only with the same value.
absl::Status ParseSlo(const json& body, GenerationRequest* r) {
  const json* slo = Field(body, "slo");
  if (slo != nullptr) {
    if (!slo->is_object()) return TypeError("slo", "an object with 'ttft_ms' and/or 'tpot_ms'");
    for (const auto& item : slo->items()) {
      if (item.key() == "ttft_ms" || item.key() == "tpot_ms") continue;
      const std::string field = StrCat("slo.", Excerpt(item.key()));
      return UnsupportedParamError(
          field, StrCat("'", field, "' is not supported by tandem (only 'ttft_ms' and 'tpot_ms')"));
    }
  }
  struct Target {
    const char* key;    // inside `slo`
    const char* field;  // its param name
    const char* alias;  // the older top-level spelling
    double* out;
  };
  const Target targets[] = {{"ttft_ms", "slo.ttft_ms", "ttft_slo_ms", &r->ttft_slo_ms},
                            {"tpot_ms", "slo.tpot_ms", "tpot_slo_ms", &r->tpot_slo_ms}};
  for (const Target& t : targets) {
    std::optional<double> value;
    if (slo != nullptr) {
      TANDEM_ASSIGN_OR_RETURN(value, GetSloMs(*slo, t.key, t.field));
    }
    TANDEM_ASSIGN_OR_RETURN(std::optional<double> alias, GetSloMs(body, t.alias, t.alias));
    if (value && alias && *value != *alias) {
      return InvalidParamError(
          t.field, StrCat("'", t.field, "' and its older spelling '", t.alias, "' disagree (",
                          *value, " vs ", *alias, "); give one of them"));
    }
    if (!value) value = alias;
    if (value) *t.out = *value;
  }
  return absl::OkStatus();
}

// Everything /v1/completions and /v1/chat/completions share.
absl::Status ParseCommon(const json& body, GenerationRequest* r) {
  TANDEM_RETURN_IF_ERROR(RejectUnsupported(body));
  TANDEM_ASSIGN_OR_RETURN(r->model, GetModel(body));

  TANDEM_ASSIGN_OR_RETURN(std::optional<int> max_tokens, GetInt32(body, "max_tokens"));
  TANDEM_ASSIGN_OR_RETURN(std::optional<int> max_completion_tokens,
                          GetInt32(body, "max_completion_tokens"));
  r->max_tokens = max_completion_tokens.has_value() ? max_completion_tokens : max_tokens;

  TANDEM_ASSIGN_OR_RETURN(std::optional<int> n, GetInt32(body, "n"));
  r->n = n.value_or(1);
  if (const json* best_of = Field(body, "best_of"); best_of != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(int64_t b, ToInt(*best_of, "best_of", kInt32Min, kInt32Max));
    if (b != r->n) {
      return UnsupportedParamError(
          "best_of", "'best_of' is not supported by tandem (only best_of equal to n)");
    }
  }

  model::SamplingParams& s = r->sampling;
  TANDEM_ASSIGN_OR_RETURN(std::optional<double> temperature, GetNumber(body, "temperature"));
  if (temperature) s.temperature = AsFloat(*temperature);
  TANDEM_ASSIGN_OR_RETURN(std::optional<double> top_p, GetNumber(body, "top_p"));
  if (top_p) s.top_p = AsFloat(*top_p);
  TANDEM_ASSIGN_OR_RETURN(std::optional<int> top_k, GetInt32(body, "top_k"));
  if (top_k) s.top_k = *top_k == -1 ? 0 : *top_k;
  TANDEM_ASSIGN_OR_RETURN(std::optional<double> min_p, GetNumber(body, "min_p"));
  if (min_p) s.min_p = AsFloat(*min_p);
  TANDEM_ASSIGN_OR_RETURN(std::optional<double> presence, GetNumber(body, "presence_penalty"));
  if (presence) s.presence_penalty = AsFloat(*presence);
  TANDEM_ASSIGN_OR_RETURN(std::optional<double> frequency, GetNumber(body, "frequency_penalty"));
  if (frequency) s.frequency_penalty = AsFloat(*frequency);
  TANDEM_ASSIGN_OR_RETURN(std::optional<double> repetition, GetNumber(body, "repetition_penalty"));
  if (repetition) s.repetition_penalty = AsFloat(*repetition);
  TANDEM_ASSIGN_OR_RETURN(std::optional<uint64_t> seed, GetSeed(body));
  if (seed) {
    s.seed = *seed;
    s.has_seed = true;
  }
  TANDEM_ASSIGN_OR_RETURN(std::optional<bool> ignore_eos, GetBool(body, "ignore_eos"));
  s.ignore_eos = ignore_eos.value_or(false);
  if (const json* ids = Field(body, "stop_token_ids"); ids != nullptr) {
    if (!ids->is_array()) return TypeError("stop_token_ids", "a list of integer token ids");
    if (ids->size() > static_cast<size_t>(kMaxStopTokenIds)) {
      return InvalidParamError(
          "stop_token_ids", StrCat("'stop_token_ids' holds more than ", kMaxStopTokenIds, " ids"));
    }
    TANDEM_RETURN_IF_ERROR(ParseTokenIds(*ids, "stop_token_ids", kInt32Min, &s.stop_token_ids));
  }

  if (const json* stop = Field(body, "stop"); stop != nullptr) {
    constexpr char kStopShape[] = "a string or a list of strings";
    if (stop->is_string()) {
      r->stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      // Bounded here so a huge list costs nothing; the kMaxStop rule itself is Validate's.
      if (stop->size() > static_cast<size_t>(kMaxStop)) {
        return InvalidParamError("stop", StrCat("'stop' holds ", stop->size(),
                                                " strings, more than the ", kMaxStop, " allowed"));
      }
      for (const json& e : *stop) {
        if (!e.is_string()) return TypeError("stop", kStopShape);
        r->stop.push_back(e.get<std::string>());
      }
    } else {
      return TypeError("stop", kStopShape);
    }
  }

  TANDEM_ASSIGN_OR_RETURN(std::optional<bool> stream, GetBool(body, "stream"));
  r->stream = stream.value_or(false);
  if (const json* options = Field(body, "stream_options"); options != nullptr) {
    if (!options->is_object()) return TypeError("stream_options", "an object");
    if (!r->stream) {
      return InvalidParamError("stream_options",
                               "'stream_options' is only allowed when 'stream' is true");
    }
    auto include_usage = GetBool(*options, "include_usage");
    if (!include_usage.ok()) {
      return TypeError("stream_options.include_usage", "a boolean");
    }
    r->include_usage = include_usage->value_or(false);
    const json* continuous = Field(*options, "continuous_usage_stats");
    if (continuous != nullptr && !IsFalse(*continuous)) {
      return UnsupportedParamError(
          "stream_options.continuous_usage_stats",
          "'stream_options.continuous_usage_stats' is not supported by tandem");
    }
  }

  TANDEM_ASSIGN_OR_RETURN(std::optional<std::string> user, GetString(body, "user"));
  r->user = user.value_or("");

  TANDEM_RETURN_IF_ERROR(ParseSlo(body, r));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GenerationRequest> ParseCompletionRequest(std::string_view body) {
  TANDEM_ASSIGN_OR_RETURN(json root, ParseJsonObject(body));
  GenerationRequest r;
  r.kind = GenerationRequest::Kind::kCompletion;
  TANDEM_RETURN_IF_ERROR(ParsePrompt(Field(root, "prompt"), &r.prompts));
  TANDEM_RETURN_IF_ERROR(ParseCommon(root, &r));
  TANDEM_ASSIGN_OR_RETURN(std::optional<bool> echo, GetBool(root, "echo"));
  r.echo = echo.value_or(false);
  if (const json* logprobs = Field(root, "logprobs"); logprobs != nullptr) {
    if (logprobs->is_boolean() || !logprobs->is_number()) {
      return TypeError("logprobs", "an integer (0 to 5) or null");
    }
    TANDEM_ASSIGN_OR_RETURN(int64_t k, ToInt(*logprobs, "logprobs", kInt32Min, kInt32Max));
    r.sampling.logprobs = true;
    r.sampling.top_logprobs = static_cast<int>(k);
  }
  return r;
}

absl::StatusOr<GenerationRequest> ParseChatRequest(std::string_view body) {
  TANDEM_ASSIGN_OR_RETURN(json root, ParseJsonObject(body));
  GenerationRequest r;
  r.kind = GenerationRequest::Kind::kChat;
  const json* messages = Field(root, "messages");
  if (messages == nullptr) return InvalidParamError("messages", "'messages' is required");
  TANDEM_RETURN_IF_ERROR(ParseMessages(*messages, &r.messages));
  TANDEM_RETURN_IF_ERROR(ParseCommon(root, &r));
  if (const json* echo = Field(root, "echo"); echo != nullptr) {
    if (!echo->is_boolean()) return TypeError("echo", "a boolean");
    if (echo->get<bool>()) {
      return UnsupportedParamError("echo", "'echo' is only supported by /v1/completions");
    }
  }
  TANDEM_ASSIGN_OR_RETURN(std::optional<bool> logprobs, GetBool(root, "logprobs"));
  r.sampling.logprobs = logprobs.value_or(false);
  TANDEM_ASSIGN_OR_RETURN(std::optional<int> top_logprobs, GetInt32(root, "top_logprobs"));
  r.sampling.top_logprobs = top_logprobs.value_or(0);
  return r;
}

absl::StatusOr<TokenizeRequest> ParseTokenizeRequest(std::string_view body) {
  TANDEM_ASSIGN_OR_RETURN(json root, ParseJsonObject(body));
  TokenizeRequest r;
  TANDEM_ASSIGN_OR_RETURN(r.model, GetModel(root));
  const json* prompt = Field(root, "prompt");
  const json* messages = Field(root, "messages");
  if (prompt != nullptr && messages != nullptr) {
    return InvalidParamError("messages", "give either 'prompt' or 'messages', not both");
  }
  if (prompt == nullptr && messages == nullptr) {
    return InvalidParamError("prompt", "'prompt' or 'messages' is required");
  }
  TANDEM_ASSIGN_OR_RETURN(std::optional<bool> add_special, GetBool(root, "add_special_tokens"));
  if (prompt != nullptr) {
    if (!prompt->is_string()) return TypeError("prompt", "a string");
    r.text = prompt->get<std::string>();
    r.add_special_tokens = add_special.value_or(true);
    return r;
  }
  r.is_chat = true;
  TANDEM_RETURN_IF_ERROR(ParseMessages(*messages, &r.messages));
  r.add_special_tokens = add_special.value_or(false);
  TANDEM_ASSIGN_OR_RETURN(std::optional<bool> add_generation_prompt,
                          GetBool(root, "add_generation_prompt"));
  if (!add_generation_prompt.value_or(true)) {
    return UnsupportedParamError("add_generation_prompt",
                                 "'add_generation_prompt': only true is supported by tandem");
  }
  return r;
}

absl::StatusOr<DetokenizeRequest> ParseDetokenizeRequest(std::string_view body) {
  TANDEM_ASSIGN_OR_RETURN(json root, ParseJsonObject(body));
  DetokenizeRequest r;
  TANDEM_ASSIGN_OR_RETURN(r.model, GetModel(root));
  const json* tokens = Field(root, "tokens");
  if (tokens == nullptr) return InvalidParamError("tokens", "'tokens' is required");
  if (!tokens->is_array()) return TypeError("tokens", "a list of integer token ids");
  TANDEM_RETURN_IF_ERROR(ParseTokenIds(*tokens, "tokens", 0, &r.tokens));
  return r;
}

}  // namespace tandem::server::openai
