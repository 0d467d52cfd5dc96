// GenerationRequest / GenerationEvent: the API-neutral form of one completion or chat request
// and of what the Frontend sends back. HTTP (OpenAI JSON, server/openai/) and gRPC
// (proto/tandem/v1) both parse into a GenerationRequest, validated by one function
// (openai::ValidateGenerationRequest in server/openai/validate.h), and both render
// GenerationEvents, so the two APIs cannot drift apart.
//
// Thread safety: plain values.
#ifndef TANDEM_SERVER_GENERATION_REQUEST_H_
#define TANDEM_SERVER_GENERATION_REQUEST_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/chat_template.h"
#include "model/sampler.h"

namespace tandem::server {

// One prompt of a completion request: text, or token ids when `is_tokens`.
struct PromptInput {
  bool is_tokens = false;
  std::string text;
  std::vector<int32_t> tokens;
};

struct GenerationRequest {
  enum class Kind { kCompletion, kChat };
  Kind kind = Kind::kCompletion;

  std::string model;                         // must name the served model
  std::vector<PromptInput> prompts;          // kCompletion: >= 1 prompts
  std::vector<model::ChatMessage> messages;  // kChat: >= 1 messages

  // Tokens to generate per choice; unset: completions 16 (OpenAI's default), chat up to the
  // context length. max_completion_tokens is folded in here by the parser.
  std::optional<int> max_tokens;
  int n = 1;  // choices per prompt, 1..kMaxN

  // temperature/top_p/top_k/min_p/penalties/seed/ignore_eos/logprobs/top_logprobs. For
  // completions, `logprobs: k` sets sampling.logprobs = true and top_logprobs = k; for chat,
  // `logprobs: true` and `top_logprobs: k` map one to one.
  model::SamplingParams sampling;

  std::vector<std::string> stop;  // up to kMaxStop strings, never part of the returned text
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool echo = false;           // completions only: prepend the prompt to the text
  std::string user;            // recorded in logs only

  // Per-request SLOs in milliseconds: time to first token, time per output token. 0 means
  // "not given": the daemon's --ttft-slo-ms / --tpot-slo-ms apply. Otherwise in
  // (0, openai::kMaxSloMs]. HTTP fills them from the body's `slo` (or its older spellings
  // ttft_slo_ms / tpot_slo_ms), overridden by the x-slo-ttft-ms / x-slo-tpot-ms headers; gRPC
  // from the request fields, overridden by metadata of the same names.
  double ttft_slo_ms = 0;
  double tpot_slo_ms = 0;
};

inline constexpr int kMaxN = 16;
inline constexpr int kMaxStop = 4;

enum class FinishReason { kStop, kLength };
const char* FinishReasonName(FinishReason reason);  // "stop", "length"

// One token's logprob, with its text. `bytes` are the token's raw bytes (may be a partial
// UTF-8 character); `text` is the same, made valid UTF-8 for JSON.
struct TokenLogprobInfo {
  int32_t token = -1;
  std::string text;
  std::vector<uint8_t> bytes;
  float logprob = 0.0f;
};

struct LogprobEntry {
  TokenLogprobInfo chosen;
  std::vector<TokenLogprobInfo> top;  // most likely first; size = top_logprobs
};

// New output of one choice. Choices are numbered prompt_index * n + j.
struct ChoiceDelta {
  int index = 0;
  std::string text;                    // new text: valid UTF-8, stop strings removed
  std::vector<int32_t> token_ids;      // tokens behind `text` (all generated tokens)
  std::vector<LogprobEntry> logprobs;  // one per token, when logprobs were requested
  std::optional<FinishReason> finish;  // set on the choice's last delta
};

struct Usage {
  int prompt_tokens = 0;      // summed over prompts (each counted once, not per choice)
  int completion_tokens = 0;  // summed over choices
  // Of prompt_tokens, those the prefix cache held (each prompt counted once, by its first
  // choice): OpenAI's usage.prompt_tokens_details.cached_tokens.
  int cached_tokens = 0;
};

}  // namespace tandem::server

#endif  // TANDEM_SERVER_GENERATION_REQUEST_H_
