// StreamChunk: what one SSE data payload of an OpenAI-compatible streaming response says:
// the text it adds (choices[0].text for /v1/completions, choices[0].delta.content or
// reasoning_content for /v1/chat/completions), the usage block (sent last when
// stream_options.include_usage is on), or an error object; "[DONE]" ends the stream.
// Thread safety: pure function.
#ifndef TANDEM_BENCH_TANDEM_BENCH_STREAM_CHUNK_H_
#define TANDEM_BENCH_TANDEM_BENCH_STREAM_CHUNK_H_

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tandem::bench {

struct StreamChunk {
  bool done = false;                     // the payload was [DONE]
  std::string text;                      // generated text in this chunk (may be empty)
  std::optional<int> prompt_tokens;      // usage.prompt_tokens
  std::optional<int> completion_tokens;  // usage.completion_tokens
  std::optional<int> cached_tokens;      // usage.prompt_tokens_details.cached_tokens
  std::optional<std::string> error;      // error.message (or the error value) when present
};

// Fails when the payload is neither [DONE] nor a JSON object.
absl::StatusOr<StreamChunk> ParseStreamChunk(std::string_view payload);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_STREAM_CHUNK_H_
