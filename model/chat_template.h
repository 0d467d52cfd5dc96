// Chat templates: turns a list of chat messages into the prompt text a model family was trained
// on. tandem does not run Jinja: it recognizes which family a GGUF's tokenizer.chat_template
// belongs to (or takes a --chat-template name) and renders that family's format natively, with
// the variations the recognized source spells out (e.g. a default system message, spacing
// around Mistral's [INST] markers).
//
// Supported families and the official templates they reproduce:
//   chatml  - "<|im_start|>{role}\n{content}<|im_end|>\n" per message, generation prompt
//             "<|im_start|>assistant\n" (SmolLM2, Qwen2, ...). A default system message that the
//             template inserts when the first message is not a system one (SmolLM2's "You are a
//             helpful AI assistant named SmolLM, trained by Hugging Face") is read from the
//             template source and inserted the same way.
//   llama3  - Meta-Llama-3-Instruct's tokenizer_config.json template: "<|begin_of_text|>", then
//             "<|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|>" per
//             message, generation prompt "<|start_header_id|>assistant<|end_header_id|>\n\n".
//   mistral - Mistral-7B-Instruct: "<s>[INST] {system}\n\n{user} [/INST] {assistant}</s>[INST]
//             ..."; roles must alternate user/assistant after an optional system message (the
//             template raises otherwise). v0.3-style sources ("[INST]" / "[/INST]" without the
//             inner spaces, the system text before the last user message) are recognized and
//             followed.
//   llama2  - Llama-2-chat: "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant}
//             </s><s>[INST] {user} [/INST]", contents stripped, roles alternating.
//   gemma   - Gemma 3 (-it): "<bos>", then "<start_of_turn>{role}\n{content|trim}<end_of_turn>\n"
//             per message with role "model" for the assistant, generation prompt
//             "<start_of_turn>model\n"; a system message is folded into the first user turn
//             as "{system}\n\n" (not trimmed) and roles must alternate after it. Gemma 1/2
//             templates are recognized too: the same format, but a system message is refused
//             ("System role not supported"), as they raise.
//   none    - the model file has no chat template: the model still serves completions, and
//             Render refuses every conversation with a message naming /v1/completions and
//             --chat-template. Only an empty template gives it; it has no --chat-template name.
// Not reproduced: Mistral v7's [SYSTEM_PROMPT] format and Phi-4's "<|im_sep|>" ChatML variant
// (both refused as unrecognized), tool calls, Llama 3.1+'s "Cutting Knowledge Date" system
// preamble (3.1/3.2 templates are recognized as llama3 and rendered without it), multimodal
// content.
//
// The rendered text contains the BOS marker where the template emits one ("<s>",
// "<|begin_of_text|>", "<bos>"), so it must be tokenized with special tokens recognized and without
// the tokenizer adding another BOS.
//
// Thread safety: a ChatTemplate is immutable after construction; Render may be called from any
// number of threads at once.
#ifndef TANDEM_MODEL_CHAT_TEMPLATE_H_
#define TANDEM_MODEL_CHAT_TEMPLATE_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace tandem::model {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

enum class ChatTemplateKind { kChatML, kLlama3, kMistral, kLlama2, kGemma, kNone };

// "chatml", "llama3", "mistral", "llama2", "gemma": the names --chat-template takes; "none"
// for kNone, which it does not take.
std::string_view ChatTemplateKindName(ChatTemplateKind kind);
// The names --chat-template takes, comma-separated, for messages.
inline constexpr char kChatTemplateNames[] = "chatml, llama3, mistral, llama2, gemma";

// How a caller can override what the model file says.
struct ChatTemplateOptions {
  // --chat-template: when set, this family is used whatever the GGUF's template is.
  std::string name;
  // The tokenizer's BOS / EOS token texts; empty = the family's usual ones ("<s>", "</s>",
  // "<|begin_of_text|>", "<bos>", "<eos>").
  std::string bos_token;
  std::string eos_token;
};

class ChatTemplate {
 public:
  // Recognizes the family of `jinja` (a GGUF's tokenizer.chat_template; may be empty when the
  // file has none). options.name, when set, wins. An empty template gives kNone (chat off, the
  // model still serves completions); InvalidArgument naming --chat-template and the supported
  // names when a non-empty template is not recognized.
  static absl::StatusOr<ChatTemplate> FromGgufTemplate(std::string_view jinja,
                                                       const ChatTemplateOptions& options = {});
  // A family by its --chat-template name, with its default formatting and no default system
  // message. BOS / EOS texts from `options` when set (options.name is ignored).
  static absl::StatusOr<ChatTemplate> FromName(std::string_view name,
                                               const ChatTemplateOptions& options = {});

  // The prompt text for `messages`. add_generation_prompt appends the header that opens the
  // assistant's turn where the family has one (chatml, llama3, gemma); for mistral and llama2
  // the prompt already ends in "[/INST]" and the flag changes nothing, as in their templates.
  // InvalidArgument for kNone (whatever the messages), an empty list, a role outside {system,
  // user, assistant}, a system message anywhere but first (mistral, llama2, gemma) or at all (a
  // mistral template without system support), or roles not alternating user/assistant
  // (mistral, llama2, gemma).
  absl::StatusOr<std::string> Render(const std::vector<ChatMessage>& messages,
                                     bool add_generation_prompt) const;

  ChatTemplateKind kind() const { return kind_; }
  std::string_view name() const { return ChatTemplateKindName(kind_); }
  // The system text inserted when the conversation has none; empty when the template has none.
  const std::string& default_system_message() const { return default_system_; }
  // Texts that end the assistant's turn in this format ("<|im_end|>", "<|eot_id|>", "</s>",
  // "<end_of_turn>" and "<eos>"): generation stops there; empty for kNone. Map them to token ids
  // with the tokenizer.
  std::vector<std::string> StopStrings() const;

 private:
  // Mistral spacing and system placement, which changed between releases.
  struct MistralStyle {
    std::string inst_open = "[INST] ";
    std::string inst_close = " [/INST]";
    std::string assistant_prefix = " ";
    std::string after_eos;                 // some v0.1 sources add " " after "</s>"
    bool trim_assistant = false;           // v0.3: " " + message["content"]|trim + eos_token
    bool system_before_last_user = false;  // v0.3: before the last user message, not first
    bool system_supported = true;          // v0.1's template raises on a system message
  };

  ChatTemplate(ChatTemplateKind kind, const ChatTemplateOptions& options);

  absl::StatusOr<std::string> RenderChatML(const std::vector<ChatMessage>& messages,
                                           bool add_generation_prompt) const;
  absl::StatusOr<std::string> RenderLlama3(const std::vector<ChatMessage>& messages,
                                           bool add_generation_prompt) const;
  absl::StatusOr<std::string> RenderMistral(const std::vector<ChatMessage>& messages) const;
  absl::StatusOr<std::string> RenderLlama2(const std::vector<ChatMessage>& messages) const;
  absl::StatusOr<std::string> RenderGemma(const std::vector<ChatMessage>& messages,
                                          bool add_generation_prompt) const;

  ChatTemplateKind kind_;
  std::string bos_;
  std::string eos_;
  std::string default_system_;
  MistralStyle mistral_;
  bool gemma_system_supported_ = true;  // Gemma 1/2 templates raise on a system message
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_CHAT_TEMPLATE_H_
