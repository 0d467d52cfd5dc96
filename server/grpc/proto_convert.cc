#include "server/grpc/proto_convert.h"

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tandem::server::grpc_api {
namespace {

std::vector<model::ChatMessage> FromProto(const tandem::v1::Conversation& conversation) {
  std::vector<model::ChatMessage> messages;
  messages.reserve(conversation.messages_size());
  for (const tandem::v1::ChatMessage& m : conversation.messages()) {
    messages.push_back({m.role(), m.content()});
  }
  return messages;
}

PromptInput TokensPrompt(const tandem::v1::TokenIds& ids) {
  PromptInput prompt;
  prompt.is_tokens = true;
  prompt.tokens.assign(ids.ids().begin(), ids.ids().end());
  return prompt;
}

PromptInput TextPrompt(const std::string& text) {
  PromptInput prompt;
  prompt.text = text;
  return prompt;
}

void ToProto(const TokenLogprobInfo& info, tandem::v1::TokenLogprob* proto) {
  proto->set_token(info.token);
  proto->set_text(info.text);
  proto->set_bytes(std::string(info.bytes.begin(), info.bytes.end()));
  proto->set_logprob(info.logprob);
}

}  // namespace

absl::StatusOr<GenerationRequest> FromProto(const tandem::v1::GenerateRequest& proto) {
  GenerationRequest request;
  request.model = proto.model();
  switch (proto.input_case()) {
    case tandem::v1::GenerateRequest::kText:
      request.kind = GenerationRequest::Kind::kCompletion;
      request.prompts.push_back(TextPrompt(proto.text()));
      break;
    case tandem::v1::GenerateRequest::kTokenIds:
      request.kind = GenerationRequest::Kind::kCompletion;
      request.prompts.push_back(TokensPrompt(proto.token_ids()));
      break;
    case tandem::v1::GenerateRequest::kBatch:
      request.kind = GenerationRequest::Kind::kCompletion;
      for (int i = 0; i < proto.batch().prompts_size(); ++i) {
        const tandem::v1::Prompt& p = proto.batch().prompts(i);
        switch (p.prompt_case()) {
          case tandem::v1::Prompt::kText:
            request.prompts.push_back(TextPrompt(p.text()));
            break;
          case tandem::v1::Prompt::kTokenIds:
            request.prompts.push_back(TokensPrompt(p.token_ids()));
            break;
          case tandem::v1::Prompt::PROMPT_NOT_SET:
            return absl::InvalidArgumentError(
                absl::StrCat("batch.prompts[", i, "]: set text or token_ids"));
        }
      }
      break;
    case tandem::v1::GenerateRequest::kChat:
      request.kind = GenerationRequest::Kind::kChat;
      request.messages = FromProto(proto.chat());
      break;
    case tandem::v1::GenerateRequest::INPUT_NOT_SET:
      return absl::InvalidArgumentError("set one input: text, token_ids, batch or chat");
  }

  if (proto.has_max_tokens()) request.max_tokens = proto.max_tokens();
  if (proto.has_n()) request.n = proto.n();

  model::SamplingParams& s = request.sampling;
  if (proto.has_temperature()) s.temperature = proto.temperature();
  if (proto.has_top_p()) s.top_p = proto.top_p();
  if (proto.has_top_k()) s.top_k = proto.top_k();
  if (proto.has_min_p()) s.min_p = proto.min_p();
  if (proto.has_presence_penalty()) s.presence_penalty = proto.presence_penalty();
  if (proto.has_frequency_penalty()) s.frequency_penalty = proto.frequency_penalty();
  if (proto.has_repetition_penalty()) s.repetition_penalty = proto.repetition_penalty();
  if (proto.has_seed()) {
    s.seed = proto.seed();
    s.has_seed = true;
  }
  s.stop_token_ids.assign(proto.stop_token_ids().begin(), proto.stop_token_ids().end());
  s.ignore_eos = proto.ignore_eos();
  s.logprobs = proto.logprobs();
  s.top_logprobs = proto.top_logprobs();

  request.stop.assign(proto.stop().begin(), proto.stop().end());
  request.echo = proto.echo();
  request.user = proto.user();
  request.ttft_slo_ms = proto.ttft_slo_ms();
  request.tpot_slo_ms = proto.tpot_slo_ms();
  request.stream = true;
  request.include_usage = true;
  return request;
}

absl::StatusOr<TokenizeRequest> FromProto(const tandem::v1::TokenizeRequest& proto) {
  TokenizeRequest request;
  request.model = proto.model();
  switch (proto.input_case()) {
    case tandem::v1::TokenizeRequest::kText:
      request.text = proto.text();
      break;
    case tandem::v1::TokenizeRequest::kChat:
      request.is_chat = true;
      request.messages = FromProto(proto.chat());
      break;
    case tandem::v1::TokenizeRequest::INPUT_NOT_SET:
      return absl::InvalidArgumentError("set one input: text or chat");
  }
  // Unset: BOS for text; none for chat, whose template carries it (the HTTP API's default).
  request.add_special_tokens =
      proto.has_add_special_tokens() ? proto.add_special_tokens() : !request.is_chat;
  return request;
}

void ToProto(const ChoiceDelta& delta, tandem::v1::ChoiceDelta* proto) {
  proto->set_index(delta.index);
  proto->set_text(delta.text);
  proto->mutable_token_ids()->Add(delta.token_ids.begin(), delta.token_ids.end());
  for (const LogprobEntry& entry : delta.logprobs) {
    tandem::v1::LogprobEntry* out = proto->add_logprobs();
    ToProto(entry.chosen, out->mutable_chosen());
    for (const TokenLogprobInfo& top : entry.top) ToProto(top, out->add_top());
  }
  if (delta.finish.has_value()) {
    proto->set_finish_reason(*delta.finish == FinishReason::kStop
                                 ? tandem::v1::FINISH_REASON_STOP
                                 : tandem::v1::FINISH_REASON_LENGTH);
  }
}

void ToProto(const Usage& usage, tandem::v1::Usage* proto) {
  proto->set_prompt_tokens(usage.prompt_tokens);
  proto->set_completion_tokens(usage.completion_tokens);
  proto->set_total_tokens(usage.prompt_tokens + usage.completion_tokens);
  proto->set_cached_tokens(usage.cached_tokens);
}

void ToProto(const ModelInfo& info, tandem::v1::ModelInfo* proto) {
  proto->set_id(info.id);
  proto->set_created(info.created);
  proto->set_max_model_len(info.max_model_len);
}

}  // namespace tandem::server::grpc_api
