// Response rendering for the OpenAI API: the JSON bodies of /v1/completions and
// /v1/chat/completions (whole responses and SSE stream chunks), /tokenize, /detokenize and
// /v1/models, in the shapes the OpenAI API returns and the official `openai` SDK parses.
//
// Shapes (keys in this order):
//   completion: {"id","object":"text_completion","created","model",
//     "choices":[{"index","text","logprobs","finish_reason"}],"usage"}
//     logprobs: null or {"tokens","token_logprobs","top_logprobs":[{text: logprob}],
//     "text_offset"}; text_offset counts code points of the choice's text (echoed prompt
//     included, as Python's len() would).
//   chat: {"id","object":"chat.completion","created","model",
//     "choices":[{"index","message":{"role":"assistant","content"},"logprobs",
//     "finish_reason"}],"usage"}; logprobs: null or {"content":[{"token","logprob","bytes",
//     "top_logprobs":[{"token","logprob","bytes"}]}]}.
//   usage: {"prompt_tokens","completion_tokens","total_tokens",
//   "prompt_tokens_details":{"cached_tokens"}}.
//   stream chunks ("data: {...}\n\n" each): completions {"id","object":"text_completion",
//     "created","model","choices":[{"index","text","logprobs","finish_reason"}]}; chat
//     {"id","object":"chat.completion.chunk","created","model","choices":[{"index","delta",
//     "logprobs","finish_reason"}]}: a choice's first chunk has delta
//     {"role":"assistant","content":""}, then {"content":...} chunks, then one with delta {}
//     and the finish_reason. With include_usage every chunk carries "usage": null and a last
//     chunk has "choices": [] and the usage. Then "data: [DONE]\n\n".
// Logprobs that are not finite (a token with zero probability) are written as -9999.0, as
// OpenAI does; floats are written with their shortest decimal form. Strings are dumped with
// invalid UTF-8 replaced by U+FFFD, so output is always valid JSON.
//
// Thread safety: free functions are pure; a StreamRenderer belongs to one response and is
// used by one thread at a time.
#ifndef TANDEM_SERVER_OPENAI_RESPONSE_RENDER_H_
#define TANDEM_SERVER_OPENAI_RESPONSE_RENDER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "server/frontend.h"
#include "server/generation_request.h"

namespace tandem::server::openai {

struct ResponseMeta {
  std::string id;       // "cmpl-..." / "chatcmpl-..." (MakeResponseId)
  int64_t created = 0;  // unix seconds
  std::string model;    // the served model's name
};

// "cmpl-" or "chatcmpl-" followed by 24 hex digits derived from `nonce` (distinct nonces give
// distinct ids).
std::string MakeResponseId(GenerationRequest::Kind kind, uint64_t nonce);

// One choice's whole output, folded from its deltas.
struct ChoiceResult {
  int index = 0;
  std::string echo_text;  // completions with echo: the prompt's text, written before `text`
  std::string text;
  std::vector<int32_t> token_ids;
  std::vector<LogprobEntry> logprobs;
  std::optional<FinishReason> finish;  // null in the JSON while unset
};

// Appends `delta` to `result` (delta.index must be result->index).
void AppendDelta(const ChoiceDelta& delta, ChoiceResult* result);
// Folds each delta into the result with its index, adding results as needed; `results` stays
// sorted by index.
void AppendDeltas(const std::vector<ChoiceDelta>& deltas, std::vector<ChoiceResult>* results);

std::string RenderCompletion(const ResponseMeta& meta, const std::vector<ChoiceResult>& choices,
                             const Usage& usage);
std::string RenderChatCompletion(const ResponseMeta& meta, const std::vector<ChoiceResult>& choices,
                                 const Usage& usage);

// Turns the deltas of one streaming response into SSE events. It remembers, per choice,
// whether the chat role chunk went out and the completions text offset.
class StreamRenderer {
 public:
  StreamRenderer(GenerationRequest::Kind kind, ResponseMeta meta, bool include_usage);

  // Completions with echo: the chunk carrying choice `index`'s prompt text; send it before
  // that choice's first delta.
  std::string Echo(int index, std::string_view prompt_text);
  // Zero or more complete events for one delta ("" when it carries nothing to send).
  std::string Delta(const ChoiceDelta& delta);
  // The usage chunk ({"choices":[], "usage":{...}}); send it last, when include_usage.
  std::string UsageChunk(const Usage& usage) const;
  // "data: [DONE]\n\n".
  static std::string Done();

 private:
  struct ChoiceState {
    bool role_sent = false;  // chat: the {"role":"assistant"} chunk went out
    size_t text_offset = 0;  // completions: code points sent so far
  };

  // Constant after construction.
  GenerationRequest::Kind kind_;
  ResponseMeta meta_;
  bool include_usage_;

  absl::flat_hash_map<int, ChoiceState> choices_;
};

// POST /tokenize: {"tokens":[...],"count":N,"max_model_len":M}.
std::string RenderTokenizeResponse(const std::vector<int32_t>& tokens, int max_model_len);
// POST /detokenize: {"prompt":"..."}.
std::string RenderDetokenizeResponse(std::string_view prompt);
// GET /v1/models: {"object":"list","data":[{"id","object":"model","created","owned_by",
// "root","parent","max_model_len"}]}.
std::string RenderModelList(const ModelInfo& model);

}  // namespace tandem::server::openai

#endif  // TANDEM_SERVER_OPENAI_RESPONSE_RENDER_H_
