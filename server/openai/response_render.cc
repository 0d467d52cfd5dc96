#include "server/openai/response_render.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/check.h"
#include "nlohmann/json.hpp"
#include "server/openai/json_body.h"

namespace tandem::server::openai {
namespace {

using Json = nlohmann::ordered_json;

// A float as the double with the float's shortest decimal form, so 0.1f is written "0.1", not
// "0.10000000149011612". Non-finite logprobs become -9999.0 (OpenAI's stand-in for -inf).
double CleanLogprob(float v) {
  if (!std::isfinite(v)) return -9999.0;
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof(buf) - 1, v);
  if (ec != std::errc()) return v;
  *end = '\0';
  return std::strtod(buf, nullptr);
}

Json FinishJson(const std::optional<FinishReason>& finish) {
  return finish.has_value() ? Json(FinishReasonName(*finish)) : Json(nullptr);
}

Json UsageJson(const Usage& usage) {
  return Json{{"prompt_tokens", usage.prompt_tokens},
              {"completion_tokens", usage.completion_tokens},
              {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
              {"prompt_tokens_details", Json{{"cached_tokens", usage.cached_tokens}}}};
}

// Completions logprobs; `offset` is the code-point offset of the first token's text and is
// advanced past every token.
Json CompletionLogprobs(const std::vector<LogprobEntry>& entries, size_t* offset) {
  Json tokens = Json::array(), token_logprobs = Json::array(), top = Json::array(),
       text_offset = Json::array();
  for (const LogprobEntry& e : entries) {
    tokens.push_back(e.chosen.text);
    token_logprobs.push_back(CleanLogprob(e.chosen.logprob));
    Json alternatives = Json::object();
    for (const TokenLogprobInfo& t : e.top) alternatives[t.text] = CleanLogprob(t.logprob);
    top.push_back(std::move(alternatives));
    text_offset.push_back(*offset);
    *offset += CodePointCount(e.chosen.text);
  }
  return Json{{"tokens", std::move(tokens)},
              {"token_logprobs", std::move(token_logprobs)},
              {"top_logprobs", std::move(top)},
              {"text_offset", std::move(text_offset)}};
}

Json TokenJson(const TokenLogprobInfo& t) {
  Json bytes = Json::array();
  for (uint8_t b : t.bytes) bytes.push_back(b);
  return Json{{"token", t.text}, {"logprob", CleanLogprob(t.logprob)}, {"bytes", std::move(bytes)}};
}

Json ChatLogprobs(const std::vector<LogprobEntry>& entries) {
  Json content = Json::array();
  for (const LogprobEntry& e : entries) {
    Json item = TokenJson(e.chosen);
    Json top = Json::array();
    for (const TokenLogprobInfo& t : e.top) top.push_back(TokenJson(t));
    item["top_logprobs"] = std::move(top);
    content.push_back(std::move(item));
  }
  return Json{{"content", std::move(content)}};
}

Json Envelope(const ResponseMeta& meta, const char* object) {
  return Json{
      {"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

std::string Sse(const Json& chunk) { return "data: " + DumpJson(chunk) + "\n\n"; }

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

std::string MakeResponseId(GenerationRequest::Kind kind, uint64_t nonce) {
  // SplitMix64 is a bijection, so distinct nonces stay distinct; the second word only pads.
  const uint64_t a = SplitMix64(nonce);
  const uint64_t b = SplitMix64(a);
  return absl::StrFormat("%s%016x%08x",
                         kind == GenerationRequest::Kind::kChat ? "chatcmpl-" : "cmpl-", a,
                         static_cast<uint32_t>(b));
}

void AppendDelta(const ChoiceDelta& delta, ChoiceResult* result) {
  TANDEM_CHECK_EQ(delta.index, result->index);
  result->text += delta.text;
  result->token_ids.insert(result->token_ids.end(), delta.token_ids.begin(), delta.token_ids.end());
  result->logprobs.insert(result->logprobs.end(), delta.logprobs.begin(), delta.logprobs.end());
  if (delta.finish.has_value()) result->finish = delta.finish;
}

void AppendDeltas(const std::vector<ChoiceDelta>& deltas, std::vector<ChoiceResult>* results) {
  for (const ChoiceDelta& delta : deltas) {
    auto it = std::lower_bound(results->begin(), results->end(), delta.index,
                               [](const ChoiceResult& r, int index) { return r.index < index; });
    if (it == results->end() || it->index != delta.index) {
      ChoiceResult fresh;
      fresh.index = delta.index;
      it = results->insert(it, std::move(fresh));
    }
    AppendDelta(delta, &*it);
  }
}

std::string RenderCompletion(const ResponseMeta& meta, const std::vector<ChoiceResult>& choices,
                             const Usage& usage) {
  Json out = Envelope(meta, "text_completion");
  Json list = Json::array();
  for (const ChoiceResult& c : choices) {
    size_t offset = CodePointCount(c.echo_text);
    list.push_back(Json{
        {"index", c.index},
        {"text", c.echo_text + c.text},
        {"logprobs", c.logprobs.empty() ? Json(nullptr) : CompletionLogprobs(c.logprobs, &offset)},
        {"finish_reason", FinishJson(c.finish)}});
  }
  out["choices"] = std::move(list);
  out["usage"] = UsageJson(usage);
  return DumpJson(out);
}

std::string RenderChatCompletion(const ResponseMeta& meta, const std::vector<ChoiceResult>& choices,
                                 const Usage& usage) {
  Json out = Envelope(meta, "chat.completion");
  Json list = Json::array();
  for (const ChoiceResult& c : choices) {
    list.push_back(Json{{"index", c.index},
                        {"message", Json{{"role", "assistant"}, {"content", c.text}}},
                        {"logprobs", c.logprobs.empty() ? Json(nullptr) : ChatLogprobs(c.logprobs)},
                        {"finish_reason", FinishJson(c.finish)}});
  }
  out["choices"] = std::move(list);
  out["usage"] = UsageJson(usage);
  return DumpJson(out);
}

StreamRenderer::StreamRenderer(GenerationRequest::Kind kind, ResponseMeta meta, bool include_usage)
    : kind_(kind), meta_(std::move(meta)), include_usage_(include_usage) {}

std::string StreamRenderer::Echo(int index, std::string_view prompt_text) {
  TANDEM_CHECK(kind_ == GenerationRequest::Kind::kCompletion);
  choices_[index].text_offset += CodePointCount(prompt_text);
  Json chunk = Envelope(meta_, "text_completion");
  chunk["choices"] = Json::array({Json{{"index", index},
                                       {"text", std::string(prompt_text)},
                                       {"logprobs", nullptr},
                                       {"finish_reason", nullptr}}});
  if (include_usage_) chunk["usage"] = nullptr;
  return Sse(chunk);
}

std::string StreamRenderer::Delta(const ChoiceDelta& delta) {
  ChoiceState& state = choices_[delta.index];
  const bool has_content = !delta.text.empty() || !delta.logprobs.empty();
  std::string out;
  if (kind_ == GenerationRequest::Kind::kCompletion) {
    if (!has_content && !delta.finish.has_value()) return out;
    Json chunk = Envelope(meta_, "text_completion");
    chunk["choices"] = Json::array(
        {Json{{"index", delta.index},
              {"text", delta.text},
              {"logprobs", delta.logprobs.empty()
                               ? Json(nullptr)
                               : CompletionLogprobs(delta.logprobs, &state.text_offset)},
              {"finish_reason", FinishJson(delta.finish)}}});
    if (include_usage_) chunk["usage"] = nullptr;
    return Sse(chunk);
  }
  auto chat_chunk = [&](Json delta_json, Json logprobs, Json finish) {
    Json chunk = Envelope(meta_, "chat.completion.chunk");
    chunk["choices"] = Json::array({Json{{"index", delta.index},
                                         {"delta", std::move(delta_json)},
                                         {"logprobs", std::move(logprobs)},
                                         {"finish_reason", std::move(finish)}}});
    if (include_usage_) chunk["usage"] = nullptr;
    return Sse(chunk);
  };
  if (!state.role_sent) {
    out += chat_chunk(Json{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr);
    state.role_sent = true;
  }
  if (has_content) {
    out +=
        chat_chunk(Json{{"content", delta.text}},
                   delta.logprobs.empty() ? Json(nullptr) : ChatLogprobs(delta.logprobs), nullptr);
  }
  if (delta.finish.has_value())
    out += chat_chunk(Json::object(), nullptr, FinishJson(delta.finish));
  return out;
}

std::string StreamRenderer::UsageChunk(const Usage& usage) const {
  Json chunk = Envelope(
      meta_, kind_ == GenerationRequest::Kind::kChat ? "chat.completion.chunk" : "text_completion");
  chunk["choices"] = Json::array();
  chunk["usage"] = UsageJson(usage);
  return Sse(chunk);
}

std::string StreamRenderer::Done() { return "data: [DONE]\n\n"; }

std::string RenderTokenizeResponse(const std::vector<int32_t>& tokens, int max_model_len) {
  return DumpJson(
      Json{{"tokens", tokens}, {"count", tokens.size()}, {"max_model_len", max_model_len}});
}

std::string RenderDetokenizeResponse(std::string_view prompt) {
  return DumpJson(Json{{"prompt", std::string(prompt)}});
}

std::string RenderModelList(const ModelInfo& model) {
  Json card = Json{{"id", model.id},
                   {"object", "model"},
                   {"created", model.created},
                   {"owned_by", "tandem"},
                   {"root", model.id},
                   {"parent", nullptr},
                   {"max_model_len", model.max_model_len}};
  return DumpJson(Json{{"object", "list"}, {"data", Json::array({std::move(card)})}});
}

}  // namespace tandem::server::openai
