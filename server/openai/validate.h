// ValidateGenerationRequest: the one range check every GenerationRequest passes before it
// reaches the engine, whichever API it came from (HTTP/OpenAI or gRPC). The Frontend calls it;
// the parsers only check JSON types.
//
// Rules (OpenAI's ranges where OpenAI has one, vLLM's for its extensions):
//   completions: 1..kMaxPrompts prompts; text prompts non-empty; token-id prompts non-empty,
//     at most kMaxPromptTokens ids (else OutOfRange), each in [0, vocab_size); logprobs
//     (sampling.top_logprobs) 0..5.
//   chat: 1..kMaxMessages messages with role system/user/assistant; echo is false.
//   max_tokens >= 1 when set; n in [1, kMaxN]; stop: at most kMaxStop non-empty strings;
//   temperature [0, 2]; top_p (0, 1]; top_k >= 0 (the parsers map -1 to 0); min_p [0, 1];
//   presence/frequency_penalty [-2, 2]; repetition_penalty finite > 0; top_logprobs [0, 20]
//   and only with logprobs; stop_token_ids in [0, vocab_size); include_usage only with stream;
//   ttft_slo_ms / tpot_slo_ms 0 (not given: the daemon's default) or in (0, kMaxSloMs]
//   (slo.h: CheckSloMs). Last,
//   model::SamplingParams::Validate, so the engine's own precondition holds.
// Every error is InvalidArgument (OutOfRange for the token count) carrying the field in the
// "tandem/param" payload (errors.h: ParamOf). Context-length checks need the tokenized prompt
// and belong to the Frontend.
//
// Thread safety: pure function.
#ifndef TANDEM_SERVER_OPENAI_VALIDATE_H_
#define TANDEM_SERVER_OPENAI_VALIDATE_H_

#include "absl/status/status.h"
#include "server/generation_request.h"

namespace tandem::server::openai {

// Largest `logprobs` of /v1/completions (OpenAI's limit).
inline constexpr int kMaxCompletionLogprobs = 5;

absl::Status ValidateGenerationRequest(const GenerationRequest& request, int vocab_size);

}  // namespace tandem::server::openai

#endif  // TANDEM_SERVER_OPENAI_VALIDATE_H_
