#include "server/openai/validate.h"

#include <cctype>
#include <cmath>
#include <string>
#include <string_view>

#include "common/check.h"
#include "common/str_cat.h"
#include "server/openai/errors.h"
#include "server/openai/request_parser.h"
#include "server/openai/slo.h"

namespace tandem::server::openai {
namespace {

absl::Status Range(std::string_view field, std::string_view rule, double got) {
  return InvalidParamError(field, StrCat("'", field, "' must be ", rule, ", got ", got));
}

// The field a model::SamplingParams::Validate message starts with ("top_p must be ...").
std::string LeadingIdentifier(std::string_view message) {
  size_t n = 0;
  while (n < message.size() &&
         (std::islower(static_cast<unsigned char>(message[n])) || message[n] == '_')) {
    ++n;
  }
  return std::string(message.substr(0, n));
}

absl::Status ValidatePrompts(const GenerationRequest& r, int vocab_size) {
  if (r.prompts.empty()) return InvalidParamError("prompt", "'prompt' is required");
  if (r.prompts.size() > static_cast<size_t>(kMaxPrompts)) {
    return InvalidParamError("prompt", StrCat("'prompt' holds ", r.prompts.size(),
                                              " prompts, more than the ", kMaxPrompts, " allowed"));
  }
  for (const PromptInput& p : r.prompts) {
    if (!p.is_tokens) {
      if (p.text.empty()) return InvalidParamError("prompt", "'prompt' must not be empty");
      continue;
    }
    if (p.tokens.empty()) {
      return InvalidParamError("prompt", "'prompt' must not be an empty list of token ids");
    }
    if (p.tokens.size() > static_cast<size_t>(kMaxPromptTokens)) {
      return WithParam(absl::OutOfRangeError(StrCat("'prompt' holds ", p.tokens.size(),
                                                    " token ids, more than the ", kMaxPromptTokens,
                                                    " tandem accepts")),
                       "prompt");
    }
    for (int32_t id : p.tokens) {
      if (id < 0 || id >= vocab_size) {
        return InvalidParamError(
            "prompt",
            StrCat("'prompt' token id ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateMessages(const GenerationRequest& r) {
  if (r.messages.empty()) return InvalidParamError("messages", "'messages' must not be empty");
  if (r.messages.size() > static_cast<size_t>(kMaxMessages)) {
    return InvalidParamError(
        "messages", StrCat("'messages' holds ", r.messages.size(), " messages, more than the ",
                           kMaxMessages, " allowed"));
  }
  for (size_t i = 0; i < r.messages.size(); ++i) {
    const std::string& role = r.messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      const std::string field = StrCat("messages[", i, "].role");
      return InvalidParamError(field,
                               StrCat("'", field, "' must be 'system', 'user' or 'assistant'"));
    }
  }
  if (r.echo) return InvalidParamError("echo", "'echo' is only supported by /v1/completions");
  return absl::OkStatus();
}

absl::Status ValidateSampling(const GenerationRequest& r, int vocab_size) {
  const model::SamplingParams& s = r.sampling;
  if (!(s.temperature >= 0.0f && s.temperature <= 2.0f)) {
    return Range("temperature", "in [0, 2]", s.temperature);
  }
  if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) return Range("top_p", "in (0, 1]", s.top_p);
  if (s.top_k < 0) return Range("top_k", "-1 or 0 (off) or a positive integer", s.top_k);
  if (!(s.min_p >= 0.0f && s.min_p <= 1.0f)) return Range("min_p", "in [0, 1]", s.min_p);
  if (!(s.presence_penalty >= -2.0f && s.presence_penalty <= 2.0f)) {
    return Range("presence_penalty", "in [-2, 2]", s.presence_penalty);
  }
  if (!(s.frequency_penalty >= -2.0f && s.frequency_penalty <= 2.0f)) {
    return Range("frequency_penalty", "in [-2, 2]", s.frequency_penalty);
  }
  if (!(std::isfinite(s.repetition_penalty) && s.repetition_penalty > 0.0f)) {
    return Range("repetition_penalty", "a finite number > 0 (1 is off)", s.repetition_penalty);
  }
  if (r.kind == GenerationRequest::Kind::kCompletion) {
    // /v1/completions spells top_logprobs as `logprobs: k`.
    if (s.top_logprobs < 0 || s.top_logprobs > kMaxCompletionLogprobs ||
        (s.top_logprobs > 0 && !s.logprobs)) {
      return Range("logprobs", StrCat("in [0, ", kMaxCompletionLogprobs, "] or null"),
                   s.top_logprobs);
    }
  } else {
    if (s.top_logprobs < 0 || s.top_logprobs > model::kMaxTopLogprobs) {
      return Range("top_logprobs", StrCat("in [0, ", model::kMaxTopLogprobs, "]"), s.top_logprobs);
    }
    if (s.top_logprobs > 0 && !s.logprobs) {
      return InvalidParamError("top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
    }
  }
  for (int32_t id : s.stop_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return InvalidParamError("stop_token_ids",
                               StrCat("'stop_token_ids' token id ", id,
                                      " is outside the vocabulary [0, ", vocab_size, ")"));
    }
  }
  // The engine's own precondition, in case the rules above and it ever disagree.
  absl::Status engine = s.Validate(vocab_size);
  if (!engine.ok()) {
    std::string field = LeadingIdentifier(std::string(engine.message()));
    if (r.kind == GenerationRequest::Kind::kCompletion && field == "top_logprobs") {
      field = "logprobs";
    }
    return WithParam(std::move(engine), field.empty() ? "sampling" : field);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateGenerationRequest(const GenerationRequest& r, int vocab_size) {
  if (vocab_size <= 0) {
    return absl::InternalError(StrCat("ValidateGenerationRequest: vocab_size ", vocab_size));
  }
  if (r.kind == GenerationRequest::Kind::kCompletion) {
    TANDEM_RETURN_IF_ERROR(ValidatePrompts(r, vocab_size));
  } else {
    TANDEM_RETURN_IF_ERROR(ValidateMessages(r));
  }
  if (r.max_tokens.has_value() && *r.max_tokens < 1) {
    return Range("max_tokens", ">= 1", *r.max_tokens);
  }
  if (r.n < 1 || r.n > kMaxN) return Range("n", StrCat("in [1, ", kMaxN, "]"), r.n);
  if (r.stop.size() > static_cast<size_t>(kMaxStop)) {
    return InvalidParamError("stop", StrCat("'stop' holds ", r.stop.size(),
                                            " strings, more than the ", kMaxStop, " allowed"));
  }
  for (const std::string& stop : r.stop) {
    if (stop.empty()) return InvalidParamError("stop", "'stop' strings must not be empty");
  }
  TANDEM_RETURN_IF_ERROR(ValidateSampling(r, vocab_size));
  if (r.include_usage && !r.stream) {
    return InvalidParamError("stream_options",
                             "'stream_options' is only allowed when 'stream' is true");
  }
  // 0 is "not given" (the daemon's default); anything else follows the API's rule.
  if (r.ttft_slo_ms != 0) TANDEM_RETURN_IF_ERROR(CheckSloMs("ttft_slo_ms", r.ttft_slo_ms));
  if (r.tpot_slo_ms != 0) TANDEM_RETURN_IF_ERROR(CheckSloMs("tpot_slo_ms", r.tpot_slo_ms));
  return absl::OkStatus();
}

}  // namespace tandem::server::openai
