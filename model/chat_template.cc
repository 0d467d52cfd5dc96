#include "model/chat_template.h"

#include <algorithm>
#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tandem::model {
namespace {

// A string literal inside a Jinja tag, with its escapes decoded. [begin, end) spans the quotes
// in the source.
struct JinjaLiteral {
  std::string text;
  size_t begin;
  size_t end;
};

// The string literals inside {{ ... }} and {% ... %} tags (text outside tags is output, where a
// quote means nothing). Decodes \n \t \r \\ \' \"; other escapes are kept as written, as Python
// keeps unknown ones.
std::vector<JinjaLiteral> ScanLiterals(std::string_view src) {
  std::vector<JinjaLiteral> out;
  size_t i = 0;
  while (i + 1 < src.size()) {
    if (src[i] != '{' || (src[i + 1] != '{' && src[i + 1] != '%')) {
      ++i;
      continue;
    }
    const char close = src[i + 1] == '{' ? '}' : '%';
    i += 2;
    while (i < src.size()) {
      const char c = src[i];
      if (c == close && i + 1 < src.size() && src[i + 1] == '}') {
        i += 2;
        break;
      }
      if (c != '\'' && c != '"') {
        ++i;
        continue;
      }
      JinjaLiteral lit{std::string(), i, 0};
      ++i;
      while (i < src.size() && src[i] != c) {
        if (src[i] == '\\' && i + 1 < src.size()) {
          const char e = src[i + 1];
          switch (e) {
            case 'n':
              lit.text += '\n';
              break;
            case 't':
              lit.text += '\t';
              break;
            case 'r':
              lit.text += '\r';
              break;
            case '\\':
            case '\'':
            case '"':
              lit.text += e;
              break;
            default:
              lit.text += '\\';
              lit.text += e;
              break;
          }
          i += 2;
        } else {
          lit.text += src[i++];
        }
      }
      lit.end = ++i;  // past the closing quote (or the end of an unterminated source)
      out.push_back(std::move(lit));
    }
  }
  return out;
}

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// The source after `pos` with spaces skipped, then `token` (e.g. "+").
bool FollowedBy(std::string_view src, size_t pos, std::string_view token) {
  while (pos < src.size() && (src[pos] == ' ' || src[pos] == '\n' || src[pos] == '\t')) ++pos;
  return src.substr(pos, token.size()) == token;
}

// The source before `pos` with spaces skipped ends with `token`.
bool PrecededBy(std::string_view src, size_t pos, std::string_view token) {
  while (pos > 0 && (src[pos - 1] == ' ' || src[pos - 1] == '\n' || src[pos - 1] == '\t')) --pos;
  return pos >= token.size() && src.substr(pos - token.size(), token.size()) == token;
}

// A literal that is a single space, added in front of the message content (`' ' + message[...`,
// `' ' + content`) or after the EOS token (`eos_token + ' '`).
bool HasSpaceLiteral(std::string_view src, const std::vector<JinjaLiteral>& literals,
                     bool before_content) {
  for (const JinjaLiteral& lit : literals) {
    if (lit.text != " ") continue;
    if (before_content) {
      size_t pos = lit.end;
      while (pos < src.size() && src[pos] == ' ') ++pos;
      if (pos < src.size() && src[pos] == '+' &&
          (FollowedBy(src, pos + 1, "message") || FollowedBy(src, pos + 1, "content"))) {
        return true;
      }
    } else {
      size_t pos = lit.begin;
      while (pos > 0 && src[pos - 1] == ' ') --pos;
      if (pos > 0 && src[pos - 1] == '+' && PrecededBy(src, pos - 1, "eos_token")) return true;
    }
  }
  return false;
}

// Length in bytes of the whitespace code point (as Python's str.isspace() defines it) starting
// at s[i], or 0. Jinja's trim filter and Python's strip() remove exactly these.
size_t WhitespaceAt(absl::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = b(i);
  if (c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f)) return 1;
  if (c == 0xc2 && i + 1 < s.size() && (b(i + 1) == 0x85 || b(i + 1) == 0xa0)) return 2;
  if (i + 2 >= s.size()) return 0;
  const uint32_t cp3 = (c << 16) | (b(i + 1) << 8) | b(i + 2);
  if (cp3 == 0xe19a80 ||                       // U+1680
      (cp3 >= 0xe28080 && cp3 <= 0xe2808a) ||  // U+2000..U+200A
      cp3 == 0xe280a8 || cp3 == 0xe280a9 ||    // U+2028, U+2029
      cp3 == 0xe280af || cp3 == 0xe2819f ||    // U+202F, U+205F
      cp3 == 0xe38080) {                       // U+3000
    return 3;
  }
  return 0;
}

// Python's str.strip() / Jinja's trim, on UTF-8.
absl::string_view Strip(absl::string_view s) {
  size_t n;
  while (!s.empty() && (n = WhitespaceAt(s, 0)) > 0) s.remove_prefix(n);
  while (!s.empty()) {
    size_t start = s.size() - 1;  // first byte of the last code point
    while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xc0) == 0x80) --start;
    if (WhitespaceAt(s, start) != s.size() - start) break;
    s.remove_suffix(s.size() - start);
  }
  return s;
}

absl::Status CheckRoles(const std::vector<ChatMessage>& messages) {
  if (messages.empty()) {
    return absl::InvalidArgumentError("messages must contain at least one message");
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "]: unsupported role '", role,
                                                     "' (expected system, user or assistant)"));
    }
  }
  return absl::OkStatus();
}

// The [INST] formats: an optional leading system message, then user/assistant alternating,
// starting with user. Returns the index of the first non-system message.
absl::StatusOr<size_t> CheckAlternation(const std::vector<ChatMessage>& messages,
                                        absl::string_view family) {
  const size_t start = messages[0].role == "system" ? 1 : 0;
  if (start == messages.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the ", family, " chat template needs a user message after the system message"));
  }
  for (size_t i = start; i < messages.size(); ++i) {
    const char* want = (i - start) % 2 == 0 ? "user" : "assistant";
    if (messages[i].role != want) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the ", family,
          " chat template requires roles to alternate user/assistant/user/assistant/... after an "
          "optional first system message; messages[",
          i, "] has role '", messages[i].role, "'"));
    }
  }
  return start;
}

std::optional<ChatTemplateKind> KindFromName(std::string_view name) {
  if (name == "chatml") return ChatTemplateKind::kChatML;
  if (name == "llama3") return ChatTemplateKind::kLlama3;
  if (name == "mistral") return ChatTemplateKind::kMistral;
  if (name == "llama2") return ChatTemplateKind::kLlama2;
  if (name == "gemma") return ChatTemplateKind::kGemma;
  return std::nullopt;
}

}  // namespace

std::string_view ChatTemplateKindName(ChatTemplateKind kind) {
  switch (kind) {
    case ChatTemplateKind::kChatML:
      return "chatml";
    case ChatTemplateKind::kLlama3:
      return "llama3";
    case ChatTemplateKind::kMistral:
      return "mistral";
    case ChatTemplateKind::kLlama2:
      return "llama2";
    case ChatTemplateKind::kGemma:
      return "gemma";
    case ChatTemplateKind::kNone:
      return "none";
  }
  return "unknown";
}

ChatTemplate::ChatTemplate(ChatTemplateKind kind, const ChatTemplateOptions& options)
    : kind_(kind), bos_(options.bos_token), eos_(options.eos_token) {
  if (bos_.empty()) {
    bos_ = kind == ChatTemplateKind::kLlama3  ? "<|begin_of_text|>"
           : kind == ChatTemplateKind::kGemma ? "<bos>"
                                              : "<s>";
  }
  if (eos_.empty()) {
    eos_ = kind == ChatTemplateKind::kLlama3  ? "<|eot_id|>"
           : kind == ChatTemplateKind::kGemma ? "<eos>"
                                              : "</s>";
  }
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromName(std::string_view name,
                                                    const ChatTemplateOptions& options) {
  const std::optional<ChatTemplateKind> kind = KindFromName(name);
  if (!kind) {
    return absl::InvalidArgumentError(absl::StrCat("--chat-template: unknown template '",
                                                   std::string(name),
                                                   "'; supported: ", kChatTemplateNames));
  }
  return ChatTemplate(*kind, options);
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromGgufTemplate(std::string_view jinja,
                                                            const ChatTemplateOptions& options) {
  if (!options.name.empty()) return FromName(options.name, options);
  // A base model without a template still serves completions; Render explains the rest.
  if (jinja.empty()) return ChatTemplate(ChatTemplateKind::kNone, options);
  const std::vector<JinjaLiteral> literals = ScanLiterals(jinja);

  // Phi-4 uses ChatML's markers with "<|im_sep|>" after the role instead of a newline: a
  // different format, left to the unrecognized path.
  if (Contains(jinja, "<|im_start|>") && !Contains(jinja, "<|im_sep|>")) {
    ChatTemplate t(ChatTemplateKind::kChatML, options);
    // A default system turn written out whole in one literal, e.g. SmolLM2's
    // '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n', which
    // the template emits when the conversation does not start with a system message.
    constexpr std::string_view kOpen = "<|im_start|>system\n";
    for (const JinjaLiteral& lit : literals) {
      const size_t open = lit.text.find(kOpen);
      if (open == std::string::npos) continue;
      const size_t text = open + kOpen.size();
      const size_t close = lit.text.find("<|im_end|>", text);
      if (close != std::string::npos && close > text) {
        t.default_system_ = lit.text.substr(text, close - text);
        break;
      }
    }
    return t;
  }
  if (Contains(jinja, "<|start_header_id|>")) {
    return ChatTemplate(ChatTemplateKind::kLlama3, options);
  }
  if (Contains(jinja, "<start_of_turn>")) {
    ChatTemplate t(ChatTemplateKind::kGemma, options);
    t.gemma_system_supported_ = !Contains(jinja, "System role not supported");
    return t;
  }
  if (Contains(jinja, "[INST]") && !Contains(jinja, "[SYSTEM_PROMPT]")) {
    if (Contains(jinja, "<<SYS>>")) return ChatTemplate(ChatTemplateKind::kLlama2, options);
    ChatTemplate t(ChatTemplateKind::kMistral, options);
    MistralStyle& style = t.mistral_;
    // Spacing as the literals spell it: '[INST] ' or '[INST]', ' [/INST]' or '[/INST]' (with
    // whatever the same literal adds around the marker).
    for (const JinjaLiteral& lit : literals) {
      const size_t pos = lit.text.find("[INST]");
      if (pos == std::string::npos) continue;
      const bool space = lit.text.compare(pos + 6, 1, " ") == 0;
      style.inst_open = lit.text.substr(0, pos + 6) + (space ? " " : "");
      break;
    }
    for (const JinjaLiteral& lit : literals) {
      const size_t pos = lit.text.find("[/INST]");
      if (pos == std::string::npos) continue;
      const bool space = pos > 0 && lit.text[pos - 1] == ' ';
      style.inst_close = (space ? " " : "") + lit.text.substr(pos);
      break;
    }
    style.assistant_prefix = HasSpaceLiteral(jinja, literals, /*before_content=*/true) ? " " : "";
    style.after_eos = HasSpaceLiteral(jinja, literals, /*before_content=*/false) ? " " : "";
    style.system_before_last_user = Contains(jinja, "loop.last and system_message");
    // v0.1 names no system role anywhere and raises on one.
    style.system_supported = Contains(jinja, "system_message") || Contains(jinja, "'system'") ||
                             Contains(jinja, "\"system\"");
    std::string compact(jinja);
    std::erase(compact, ' ');
    style.trim_assistant = Contains(compact, "content\"]|trim+eos_token") ||
                           Contains(compact, "content']|trim+eos_token");
    return t;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "the model file's chat template (tokenizer.chat_template) is not one tandem recognizes; "
      "pass --chat-template=<name> to choose one (supported: ",
      kChatTemplateNames, ")"));
}

std::vector<std::string> ChatTemplate::StopStrings() const {
  switch (kind_) {
    case ChatTemplateKind::kChatML:
      return {"<|im_end|>"};
    case ChatTemplateKind::kLlama3:
      return {"<|eot_id|>"};
    case ChatTemplateKind::kMistral:
    case ChatTemplateKind::kLlama2:
      return {eos_};
    case ChatTemplateKind::kGemma:
      // The model ends its turn with <end_of_turn>; <eos> ends the whole text.
      if (eos_ == "<end_of_turn>") return {eos_};
      return {"<end_of_turn>", eos_};
    case ChatTemplateKind::kNone:
      return {};
  }
  return {};
}

absl::StatusOr<std::string> ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                                 bool add_generation_prompt) const {
  if (kind_ == ChatTemplateKind::kNone) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the model has no chat template (tokenizer.chat_template); use /v1/completions, or start "
        "tandemd with --chat-template NAME (",
        kChatTemplateNames, ")"));
  }
  if (absl::Status s = CheckRoles(messages); !s.ok()) return s;
  switch (kind_) {
    case ChatTemplateKind::kChatML:
      return RenderChatML(messages, add_generation_prompt);
    case ChatTemplateKind::kLlama3:
      return RenderLlama3(messages, add_generation_prompt);
    case ChatTemplateKind::kMistral:
      return RenderMistral(messages);
    case ChatTemplateKind::kLlama2:
      return RenderLlama2(messages);
    case ChatTemplateKind::kGemma:
      return RenderGemma(messages, add_generation_prompt);
    case ChatTemplateKind::kNone:
      break;  // answered above
  }
  return absl::InternalError("unknown chat template kind");
}

// SmolLM2's template (tokenizer.chat_template of SmolLM2-135M-Instruct):
//   {% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}
//   {{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging
//   Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' +
//   message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}
//   {{ '<|im_start|>assistant\n' }}{% endif %}
absl::StatusOr<std::string> ChatTemplate::RenderChatML(const std::vector<ChatMessage>& messages,
                                                       bool add_generation_prompt) const {
  std::string out;
  if (!default_system_.empty() && messages[0].role != "system") {
    absl::StrAppend(&out, "<|im_start|>system\n", default_system_, "<|im_end|>\n");
  }
  for (const ChatMessage& m : messages) {
    absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

// Meta-Llama-3-8B-Instruct's template:
//   {% set loop_messages = messages %}{% for message in loop_messages %}{% set content =
//   '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] |
//   trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}
//   {% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}
//   {{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}
absl::StatusOr<std::string> ChatTemplate::RenderLlama3(const std::vector<ChatMessage>& messages,
                                                       bool add_generation_prompt) const {
  std::string out = bos_;
  for (const ChatMessage& m : messages) {
    absl::StrAppend(&out, "<|start_header_id|>", m.role, "<|end_header_id|>\n\n", Strip(m.content),
                    "<|eot_id|>");
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

// Mistral-7B-Instruct. v0.1/v0.2 style (system text before the first user message):
//   {{ bos_token }}{% for message in loop_messages %}{% if (message['role'] == 'user') !=
//   (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate
//   user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 %}{% set content =
//   system_message + message['content'] %}...{% if message['role'] == 'user' %}{{ '[INST] ' +
//   content + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + content +
//   eos_token }}{% endif %}{% endfor %}    (system_message = messages[0]['content'] + '\n\n')
// v0.3: {%- if loop.last and system_message is defined %}{{- "[INST] " + system_message +
//   "\n\n" + message["content"] + "[/INST]" }}{%- else %}{{- "[INST] " + message["content"] +
//   "[/INST]" }}{%- endif %} ... {{- " " + message["content"]|trim + eos_token}}
// (v3-tekken, Mistral-Nemo: "[INST]" + ... + "[/INST]" and message["content"] + eos_token.)
absl::StatusOr<std::string> ChatTemplate::RenderMistral(
    const std::vector<ChatMessage>& messages) const {
  absl::StatusOr<size_t> start = CheckAlternation(messages, "mistral");
  if (!start.ok()) return start.status();
  const std::string* system = *start == 1 ? &messages[0].content : nullptr;
  if (system != nullptr && !mistral_.system_supported) {
    return absl::InvalidArgumentError(
        "this model's mistral chat template supports only user and assistant roles; drop the "
        "system message or pass --chat-template=mistral");
  }
  const size_t last = messages.size() - 1;
  std::string out = bos_;
  for (size_t i = *start; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user") {
      out += mistral_.inst_open;
      // v0.3 puts the system text before the user message only when it is the last message
      // of the conversation, and so drops it otherwise; matched here.
      const bool with_system =
          system != nullptr && (mistral_.system_before_last_user ? i == last : i == *start);
      if (with_system) absl::StrAppend(&out, *system, "\n\n");
      absl::StrAppend(&out, m.content, mistral_.inst_close);
    } else {
      const absl::string_view content =
          mistral_.trim_assistant ? Strip(m.content) : absl::string_view(m.content);
      absl::StrAppend(&out, mistral_.assistant_prefix, content, eos_, mistral_.after_eos);
    }
  }
  return out;
}

// Llama-2-7b-chat-hf's template:
//   {% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set
//   system_message = messages[0]['content'] %}{% else %}...{% endif %}{% for message in
//   loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{
//   raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
//   {% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n'
//   + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content =
//   message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' +
//   content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' +
//   content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}
absl::StatusOr<std::string> ChatTemplate::RenderLlama2(
    const std::vector<ChatMessage>& messages) const {
  absl::StatusOr<size_t> start = CheckAlternation(messages, "llama2");
  if (!start.ok()) return start.status();
  std::string out;
  for (size_t i = *start; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    std::string content = m.content;
    if (i == *start && *start == 1) {
      content = absl::StrCat("<<SYS>>\n", messages[0].content, "\n<</SYS>>\n\n", m.content);
    }
    if (m.role == "user") {
      absl::StrAppend(&out, bos_, "[INST] ", Strip(content), " [/INST]");
    } else {
      absl::StrAppend(&out, " ", Strip(content), " ", eos_);
    }
  }
  return out;
}

// Gemma 3's template (gemma-3-*-it tokenizer_config.json, text content):
//   {{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix =
//   messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}
//   {%- set first_user_prefix = "" -%}{%- set loop_messages = messages -%}{%- endif -%}
//   {%- for message in loop_messages -%}{%- if (message['role'] == 'user') != (loop.index0 % 2
//   == 0) -%}{{ raise_exception("Conversation roles must alternate user/assistant/user/
//   assistant/...") }}{%- endif -%}{%- if (message['role'] == 'assistant') -%}{%- set role =
//   "model" -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}{{ '<start_of_turn>' +
//   role + '\n' + (first_user_prefix if loop.first else "") }}{{ message['content'] | trim }}
//   {{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}
//   {{'<start_of_turn>model\n'}}{%- endif -%}
// Gemma 1/2: the same turns, with {{ raise_exception('System role not supported') }} for a
// system message.
absl::StatusOr<std::string> ChatTemplate::RenderGemma(const std::vector<ChatMessage>& messages,
                                                      bool add_generation_prompt) const {
  if (messages[0].role == "system" && !gemma_system_supported_) {
    return absl::InvalidArgumentError(
        "this model's gemma chat template does not support a system message; drop it or pass "
        "--chat-template=gemma");
  }
  absl::StatusOr<size_t> start = CheckAlternation(messages, "gemma");
  if (!start.ok()) return start.status();
  std::string out = bos_;
  for (size_t i = *start; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    absl::StrAppend(&out, "<start_of_turn>", m.role == "assistant" ? "model" : m.role, "\n");
    // The system text is not trimmed: it is prepended to the turn, before the trimmed content.
    if (i == *start && *start == 1) absl::StrAppend(&out, messages[0].content, "\n\n");
    absl::StrAppend(&out, Strip(m.content), "<end_of_turn>\n");
  }
  if (add_generation_prompt) out += "<start_of_turn>model\n";
  return out;
}

}  // namespace tandem::model
