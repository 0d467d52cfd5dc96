// Parsers for the OpenAI-compatible request bodies tandemd accepts: /v1/completions,
// /v1/chat/completions, and vLLM's /tokenize and /detokenize. They turn untrusted bytes into the
// API-neutral GenerationRequest / TokenizeRequest, or an InvalidArgument (HTTP 400) whose
// message and `param` payload (errors.h: ParamOf) name the field, e.g.
// "'temperature' must be a number". They check JSON types and that numbers fit their C++ types;
// value ranges are ValidateGenerationRequest's job (validate.h), shared with gRPC.
//
// Decisions, per field:
//   * null means "unset" for every optional field.
//   * Unknown keys are ignored: the official SDKs and other clients send fields newer than this
//     code (metadata, service_tier, ...), and vLLM ignores them too. Keys tandem knows but does
//     not implement are rejected with a 400 naming them (code "unsupported_parameter") unless
//     they hold their "off" value: tools / functions (null or []), tool_choice / function_call
//     (null or "none"), response_format (null or {"type":"text"}), logit_bias (null or {}),
//     suffix (null or ""), best_of (null or equal to n), modalities (null or ["text"]),
//     store / use_beam_search / include_stop_str_in_output (null or false), min_tokens (null or
//     0), and null only for parallel_tool_calls, audio, prediction, reasoning_effort,
//     web_search_options, prompt_logprobs, guided_* and stream_options.continuous_usage_stats.
//   * model may be absent (as vLLM allows): GenerationRequest::model is then empty, meaning the
//     served model.
//   * max_completion_tokens, when set, wins over max_tokens (vLLM's rule); both endpoints take
//     both.
//   * top_k: -1 and 0 both mean off (stored as 0).
//   * stop: a string or a list of strings.
//   * seed: any integer in [-2^63, 2^64); negative seeds are taken modulo 2^64.
//   * logprobs: /v1/completions takes an integer (top alternatives, 0..5) and sets
//     sampling.logprobs and sampling.top_logprobs; /v1/chat/completions takes a boolean, and
//     top_logprobs separately.
//   * echo: completions only; chat rejects echo: true.
//   * stream_options is only allowed with stream: true (OpenAI's rule).
//   * slo (tandem extension): {"ttft_ms": ms, "tpot_ms": ms}, either key may be left out or
//     null; each value a number > 0 and <= kMaxSloMs (slo.h: CheckSloMs). Another key inside
//     slo is rejected (code "unsupported_parameter"). The top-level ttft_slo_ms / tpot_slo_ms
//     are older spellings with the same rules; given together with slo.* they must agree.
//     Unset leaves GenerationRequest::ttft_slo_ms / tpot_slo_ms at 0 (the daemon's default).
//     The HTTP headers x-slo-ttft-ms / x-slo-tpot-ms are applied by the HTTP layer, not here.
//   * stop_token_ids (vLLM extension): a list of token ids.
//   * messages: role "system", "user", "assistant", and "developer" (taken as "system"); content
//     a string or a list of {"type":"text","text":...} parts, joined with "\n" (vLLM's rule);
//     other part types, tool roles, tool_calls and missing content are rejected. "name" is
//     ignored.
//   * prompt: a string, a list of strings, a list of token ids, or a list of lists of token ids.
//   * Numbers: integral floats (5.0) are accepted where an integer is expected; a number that
//     does not fit its field's type (2^64 for max_tokens, 1e309 anywhere) is rejected.
//
// Thread safety: pure functions.
#ifndef TANDEM_SERVER_OPENAI_REQUEST_PARSER_H_
#define TANDEM_SERVER_OPENAI_REQUEST_PARSER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "server/frontend.h"
#include "server/generation_request.h"

namespace tandem::server::openai {

// Most prompts in one /v1/completions request.
inline constexpr int kMaxPrompts = 256;
// Most messages in one chat request.
inline constexpr int kMaxMessages = 4096;
// Most token ids in one prompt (or /detokenize request): past every supported context length;
// longer is OutOfRange (413) before any tokenization or lookup.
inline constexpr int kMaxPromptTokens = 1 << 18;
// Most stop_token_ids.
inline constexpr int kMaxStopTokenIds = 64;

absl::StatusOr<GenerationRequest> ParseCompletionRequest(std::string_view body);
absl::StatusOr<GenerationRequest> ParseChatRequest(std::string_view body);

// POST /tokenize: {"model"?, "prompt": str, "add_special_tokens"?: bool} or
// {"model"?, "messages": [...], "add_generation_prompt"?: bool, "add_special_tokens"?: bool}.
// With messages, add_special_tokens defaults to false (the chat template carries BOS, vLLM's
// default) and add_generation_prompt may only be true (the default; the chat template is always
// rendered with the assistant prompt).
absl::StatusOr<TokenizeRequest> ParseTokenizeRequest(std::string_view body);

// POST /detokenize: {"model"?, "tokens": [ints >= 0]}.
struct DetokenizeRequest {
  std::string model;  // empty: the served model
  std::vector<int32_t> tokens;
};
absl::StatusOr<DetokenizeRequest> ParseDetokenizeRequest(std::string_view body);

}  // namespace tandem::server::openai

#endif  // TANDEM_SERVER_OPENAI_REQUEST_PARSER_H_
