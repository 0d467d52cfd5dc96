#include "model/chat_template.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem::model {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Templates as they appear in GGUF files' tokenizer.chat_template (raw strings: "\n" below is
// the two characters backslash and n, a Jinja escape, as in the files).

// SmolLM2-135M-Instruct (the default model).
constexpr char kSmolLM2[] =
    R"({% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})";

// Plain ChatML (e.g. OpenHermes, Dolphin).
constexpr char kPlainChatML[] =
    R"({% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})";

// Qwen2.5-Instruct (tools branch shortened): its default system text sits in the else branch,
// and the tools branch has a bare '<|im_start|>system\n' literal that must not be mistaken for it.
constexpr char kQwen25[] =
    R"({%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
)";

// Meta-Llama-3-8B-Instruct.
constexpr char kLlama3[] =
    R"({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %})";

// Llama-2-7b-chat-hf.
constexpr char kLlama2[] =
    R"({% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %})";

// Mistral-7B-Instruct-v0.2 with system support (system text + '\n\n' before the first user).
constexpr char kMistralV2[] =
    R"({% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] + '\n\n' %}{% else %}{% set loop_messages = messages %}{% set system_message = '' %}{% endif %}{{ bos_token }}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 %}{% set content = system_message + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + content + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + content + eos_token }}{% endif %}{% endfor %})";

// Mistral-7B-Instruct-v0.1: no system role, " " after EOS.
constexpr char kMistralV1[] =
    R"({{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %})";

// Mistral-7B-Instruct-v0.3 (tool branches omitted).
constexpr char kMistralV3[] =
    R"({%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
)";

// gemma-3-270m-it / gemma-3-4b-it (the official template, as in their tokenizer_config.json).
constexpr char kGemma3[] =
    R"({{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%})";

// gemma-2-2b-it: the same turns, but a system message raises.
constexpr char kGemma2[] =
    R"({{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %})";

std::vector<ChatMessage> SystemUserAssistantUser() {
  return {{"system", "You are terse."},
          {"user", "Hi"},
          {"assistant", "Hello!"},
          {"user", "How are you?"}};
}

std::string RenderOrDie(const ChatTemplate& t, const std::vector<ChatMessage>& m, bool gen) {
  absl::StatusOr<std::string> s = t.Render(m, gen);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : std::string();
}

ChatTemplate FromJinja(const char* jinja) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::FromGgufTemplate(jinja);
  EXPECT_TRUE(t.ok()) << t.status();
  return std::move(t).value();
}

// --- ChatML -----------------------------------------------------------------------------------

TEST(ChatTemplateTest, SmolLM2InsertsItsDefaultSystemMessage) {
  const ChatTemplate t = FromJinja(kSmolLM2);
  EXPECT_EQ(t.kind(), ChatTemplateKind::kChatML);
  EXPECT_EQ(t.default_system_message(),
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_EQ(RenderOrDie(t, {{"user", "What is 2+2?"}}, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n");
  // A conversation opening with assistant still gets the default, as loop.first does.
  EXPECT_EQ(RenderOrDie(t, {{"assistant", "Hey"}}, false),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>assistant\nHey<|im_end|>\n");
}

// SmolLM2-135M-Instruct.Q4_1.gguf stores the template with real newlines inside the Jinja
// string literals (its converter decoded the escapes); the result must be the same.
TEST(ChatTemplateTest, SmolLM2TemplateWithRealNewlines) {
  std::string jinja = kSmolLM2;
  for (size_t pos; (pos = jinja.find("\\n")) != std::string::npos;) jinja.replace(pos, 2, "\n");
  ASSERT_EQ(jinja.find('\\'), std::string::npos);
  const ChatTemplate t = FromJinja(jinja.c_str());
  EXPECT_EQ(t.default_system_message(),
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_EQ(RenderOrDie(t, {{"user", "Hi"}}, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, ChatMLWithSystemMultiTurn) {
  const ChatTemplate t = FromJinja(kSmolLM2);
  EXPECT_EQ(RenderOrDie(t, SystemUserAssistantUser(), true),
            "<|im_start|>system\nYou are terse.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n"
            "<|im_start|>user\nHow are you?<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(RenderOrDie(t, {{"system", "S"}, {"user", " spaced \n"}}, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n spaced \n<|im_end|>\n");
  EXPECT_THAT(t.StopStrings(), ElementsAre("<|im_end|>"));
}

TEST(ChatTemplateTest, PlainChatMLHasNoDefaultSystem) {
  const ChatTemplate t = FromJinja(kPlainChatML);
  EXPECT_EQ(t.kind(), ChatTemplateKind::kChatML);
  EXPECT_EQ(t.default_system_message(), "");
  EXPECT_EQ(RenderOrDie(t, {{"user", "Hi"}}, true),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, QwenDefaultSystemIsTheWholeTurnLiteral) {
  const ChatTemplate t = FromJinja(kQwen25);
  EXPECT_EQ(t.kind(), ChatTemplateKind::kChatML);
  EXPECT_EQ(t.default_system_message(),
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
}

// --- Llama 3 ----------------------------------------------------------------------------------

TEST(ChatTemplateTest, Llama3MultiTurnTrimsContent) {
  const ChatTemplate t = FromJinja(kLlama3);
  EXPECT_EQ(t.kind(), ChatTemplateKind::kLlama3);
  std::vector<ChatMessage> m = SystemUserAssistantUser();
  m[1].content = "  Hi \n\t";
  m[3].content = "\xc2\xa0How are you?\xe3\x80\x80";  // NBSP and ideographic space: trimmed
  EXPECT_EQ(RenderOrDie(t, m, true),
            "<|begin_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(RenderOrDie(t, {{"user", "x"}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
  EXPECT_THAT(t.StopStrings(), ElementsAre("<|eot_id|>"));
}

TEST(ChatTemplateTest, Llama3KeepsInnerAndMultibyteText) {
  const ChatTemplate t = FromJinja(kLlama3);
  // "é" ends in a continuation byte that must not be mistaken for whitespace.
  EXPECT_EQ(RenderOrDie(t, {{"user", " a  b\né "}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\na  b\né<|eot_id|>");
}

// --- Mistral ----------------------------------------------------------------------------------

TEST(ChatTemplateTest, MistralByName) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::FromName("mistral");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(RenderOrDie(*t, SystemUserAssistantUser(), true),
            "<s>[INST] You are terse.\n\nHi [/INST] Hello!</s>[INST] How are you? [/INST]");
  EXPECT_EQ(RenderOrDie(*t, {{"user", "Hi"}}, true), "<s>[INST] Hi [/INST]");
  EXPECT_THAT(t->StopStrings(), ElementsAre("</s>"));
}

TEST(ChatTemplateTest, MistralV2FromJinja) {
  const ChatTemplate t = FromJinja(kMistralV2);
  EXPECT_EQ(t.kind(), ChatTemplateKind::kMistral);
  EXPECT_EQ(RenderOrDie(t, SystemUserAssistantUser(), true),
            "<s>[INST] You are terse.\n\nHi [/INST] Hello!</s>[INST] How are you? [/INST]");
}

TEST(ChatTemplateTest, MistralV3FromJinjaPutsSystemBeforeLastUser) {
  const ChatTemplate t = FromJinja(kMistralV3);
  EXPECT_EQ(t.kind(), ChatTemplateKind::kMistral);
  std::vector<ChatMessage> m = SystemUserAssistantUser();
  m[2].content = "  Hello!  ";  // assistant content is trimmed by v0.3
  EXPECT_EQ(RenderOrDie(t, m, true),
            "<s>[INST] Hi[/INST] Hello!</s>[INST] You are terse.\n\nHow are you?[/INST]");
  // Ending on an assistant turn, v0.3 drops the system text; so do we.
  m.pop_back();
  EXPECT_EQ(RenderOrDie(t, m, false), "<s>[INST] Hi[/INST] Hello!</s>");
}

TEST(ChatTemplateTest, MistralV1FromJinjaHasNoSystemRole) {
  const ChatTemplate t = FromJinja(kMistralV1);
  EXPECT_EQ(t.kind(), ChatTemplateKind::kMistral);
  EXPECT_EQ(RenderOrDie(t, {{"user", "Hi"}, {"assistant", "Hello!"}, {"user", "More"}}, true),
            "<s>[INST] Hi [/INST]Hello!</s> [INST] More [/INST]");
  absl::StatusOr<std::string> s = t.Render(SystemUserAssistantUser(), true);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("only user and assistant"));
}

TEST(ChatTemplateTest, MistralRejectsNonAlternatingRoles) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::FromName("mistral");
  ASSERT_TRUE(t.ok());
  const std::vector<std::vector<ChatMessage>> bad = {
      {{"user", "a"}, {"user", "b"}},
      {{"assistant", "a"}},
      {{"system", "s"}, {"assistant", "a"}},
      {{"user", "a"}, {"system", "s"}},
      {{"user", "a"}, {"assistant", "b"}, {"assistant", "c"}},
  };
  for (const auto& m : bad) {
    absl::StatusOr<std::string> s = t->Render(m, true);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.status().message(), HasSubstr("alternate user/assistant"));
  }
  absl::StatusOr<std::string> only_system = t->Render({{"system", "s"}}, true);
  ASSERT_FALSE(only_system.ok());
  EXPECT_THAT(only_system.status().message(), HasSubstr("needs a user message"));
}

// --- Llama 2 ----------------------------------------------------------------------------------

TEST(ChatTemplateTest, Llama2MultiTurnWithSystem) {
  const ChatTemplate t = FromJinja(kLlama2);
  EXPECT_EQ(t.kind(), ChatTemplateKind::kLlama2);
  std::vector<ChatMessage> m = SystemUserAssistantUser();
  m[3].content = "How are you?  ";  // contents are stripped
  EXPECT_EQ(RenderOrDie(t, m, true),
            "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello! </s>"
            "<s>[INST] How are you? [/INST]");
  EXPECT_EQ(RenderOrDie(t, {{"user", "Hi"}}, true), "<s>[INST] Hi [/INST]");
  absl::StatusOr<std::string> bad = t.Render({{"user", "a"}, {"user", "b"}}, true);
  EXPECT_FALSE(bad.ok());
}

// --- Gemma ------------------------------------------------------------------------------------
// Expected strings as jinja2 3.1 renders kGemma3 with bos_token "<bos>".

TEST(ChatTemplateTest, GemmaFromJinjaSingleTurn) {
  const ChatTemplate t = FromJinja(kGemma3);
  EXPECT_EQ(t.kind(), ChatTemplateKind::kGemma);
  EXPECT_EQ(t.name(), "gemma");
  EXPECT_EQ(RenderOrDie(t, {{"user", "What is 2+2?"}}, true),
            "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(RenderOrDie(t, {{"user", "What is 2+2?"}}, false),
            "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n");
  EXPECT_THAT(t.StopStrings(), ElementsAre("<end_of_turn>", "<eos>"));
}

TEST(ChatTemplateTest, GemmaFoldsSystemIntoFirstUserTurn) {
  const ChatTemplate t = FromJinja(kGemma3);
  EXPECT_EQ(RenderOrDie(t, SystemUserAssistantUser(), true),
            "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n"
            "<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\nHow are you?<end_of_turn>\n"
            "<start_of_turn>model\n");
}

TEST(ChatTemplateTest, GemmaTrimsContentButNotTheSystemPrefix) {
  const ChatTemplate t = FromJinja(kGemma3);
  EXPECT_EQ(RenderOrDie(t, {{"system", "  S \n"}, {"user", "  Hi \n\t"}, {"assistant", " Hello! "}},
                        false),
            "<bos><start_of_turn>user\n  S \n\n\nHi<end_of_turn>\n"
            "<start_of_turn>model\nHello!<end_of_turn>\n");
  // NBSP and ideographic space are trimmed; inner spacing and "é" are kept.
  EXPECT_EQ(RenderOrDie(t,
                        {{"user",
                          "\xc2\xa0"
                          "a  b\né\xe3\x80\x80"}},
                        false),
            "<bos><start_of_turn>user\na  b\né<end_of_turn>\n");
}

TEST(ChatTemplateTest, GemmaByNameWithTokenTexts) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::FromName("gemma");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->kind(), ChatTemplateKind::kGemma);
  EXPECT_EQ(RenderOrDie(*t, {{"user", "Hi"}, {"assistant", "Yo"}, {"user", "Bye"}}, true),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
  ChatTemplateOptions options;
  options.bos_token = "<B>";
  options.eos_token = "<E>";
  absl::StatusOr<ChatTemplate> custom = ChatTemplate::FromName("gemma", options);
  ASSERT_TRUE(custom.ok());
  EXPECT_EQ(RenderOrDie(*custom, {{"user", "Hi"}}, false),
            "<B><start_of_turn>user\nHi<end_of_turn>\n");
  EXPECT_THAT(custom->StopStrings(), ElementsAre("<end_of_turn>", "<E>"));
}

TEST(ChatTemplateTest, GemmaRejectsNonAlternatingRolesAndLateSystem) {
  const ChatTemplate t = FromJinja(kGemma3);
  const std::vector<std::vector<ChatMessage>> bad = {
      {{"user", "a"}, {"user", "b"}},
      {{"assistant", "a"}},
      {{"system", "s"}, {"assistant", "a"}},
      {{"user", "a"}, {"system", "s"}},
      {{"user", "a"}, {"assistant", "b"}, {"assistant", "c"}},
  };
  for (const auto& m : bad) {
    absl::StatusOr<std::string> s = t.Render(m, true);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.status().message(), HasSubstr("alternate user/assistant"));
    EXPECT_THAT(s.status().message(), HasSubstr("gemma"));
  }
  absl::StatusOr<std::string> only_system = t.Render({{"system", "s"}}, true);
  ASSERT_FALSE(only_system.ok());
  EXPECT_THAT(only_system.status().message(), HasSubstr("needs a user message"));
}

TEST(ChatTemplateTest, Gemma2FromJinjaRefusesSystem) {
  const ChatTemplate t = FromJinja(kGemma2);
  EXPECT_EQ(t.kind(), ChatTemplateKind::kGemma);
  EXPECT_EQ(RenderOrDie(t, {{"user", " Hi "}, {"assistant", "Yo"}}, true),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n"
            "<start_of_turn>model\n");
  absl::StatusOr<std::string> s = t.Render(SystemUserAssistantUser(), true);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("does not support a system message"));
}

// --- No template ------------------------------------------------------------------------------

TEST(ChatTemplateTest, EmptyTemplateIsNoneAndRefusesChat) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::FromGgufTemplate("");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->kind(), ChatTemplateKind::kNone);
  EXPECT_EQ(t->name(), "none");
  EXPECT_TRUE(t->StopStrings().empty());
  for (const std::vector<ChatMessage>& m :
       {std::vector<ChatMessage>{{"user", "Hi"}}, SystemUserAssistantUser(),
        std::vector<ChatMessage>{}}) {
    absl::StatusOr<std::string> s = t->Render(m, true);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(s.status().message(),
              "the model has no chat template (tokenizer.chat_template); use /v1/completions, or "
              "start tandemd with --chat-template NAME (chatml, llama3, mistral, llama2, gemma)");
  }
  // "none" is what an empty template gives, not a name to choose.
  EXPECT_FALSE(ChatTemplate::FromName("none").ok());
}

// --- Recognition, overrides, errors -----------------------------------------------------------

TEST(ChatTemplateTest, OverrideWinsAndCarriesTokenTexts) {
  ChatTemplateOptions options;
  options.name = "llama2";
  options.bos_token = "<BOS>";
  options.eos_token = "<EOS>";
  absl::StatusOr<ChatTemplate> t = ChatTemplate::FromGgufTemplate(kSmolLM2, options);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->kind(), ChatTemplateKind::kLlama2);
  EXPECT_EQ(t->default_system_message(), "");
  EXPECT_EQ(RenderOrDie(*t, {{"user", "a"}, {"assistant", "b"}}, false),
            "<BOS>[INST] a [/INST] b <EOS>");
  // An override also gives a file without a template a chat format.
  options.name = "chatml";
  absl::StatusOr<ChatTemplate> chatml = ChatTemplate::FromGgufTemplate("", options);
  ASSERT_TRUE(chatml.ok());
  EXPECT_EQ(chatml->kind(), ChatTemplateKind::kChatML);
}

TEST(ChatTemplateTest, FromNameRoundTripsEveryKind) {
  for (const char* name : {"chatml", "llama3", "mistral", "llama2", "gemma"}) {
    absl::StatusOr<ChatTemplate> t = ChatTemplate::FromName(name);
    ASSERT_TRUE(t.ok()) << name;
    EXPECT_EQ(t->name(), name);
  }
}

TEST(ChatTemplateTest, UnknownTemplateNamesTheFlag) {
  // A Gemma-like snippet: recognized by its <start_of_turn> marker.
  const char* kGemmaLike =
      R"({{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %})";
  absl::StatusOr<ChatTemplate> gemma = ChatTemplate::FromGgufTemplate(kGemmaLike);
  ASSERT_TRUE(gemma.ok()) << gemma.status();
  EXPECT_EQ(gemma->kind(), ChatTemplateKind::kGemma);
  // Mistral v7's [SYSTEM_PROMPT] format is a different one: not rendered as v0.x.
  const char* kMistralV7 =
      R"({{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + '[/INST]' }}{% elif message['role'] == 'system' %}{{ '[SYSTEM_PROMPT] ' + message['content'] + '[/SYSTEM_PROMPT]' }}{% endif %}{% endfor %})";
  // Phi-4: ChatML markers, but "<|im_sep|>" where ChatML has a newline.
  const char* kPhi4 =
      R"({% for message in messages %}{% if (message['role'] == 'system') %}{{'<|im_start|>system<|im_sep|>' + message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'user') %}{{'<|im_start|>user<|im_sep|>' + message['content'] + '<|im_end|><|im_start|>assistant<|im_sep|>'}}{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|im_end|>'}}{% endif %}{% endfor %})";
  const char* kVicuna =
      "{% for message in messages %}{{ message['role'] | upper + ': ' + "
      "message['content'] + '\\n' }}{% endfor %}{{ 'ASSISTANT:' }}";
  for (const char* jinja : {kMistralV7, kPhi4, kVicuna}) {
    absl::StatusOr<ChatTemplate> t = ChatTemplate::FromGgufTemplate(jinja);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr("--chat-template"));
    EXPECT_THAT(t.status().message(), HasSubstr("chatml, llama3, mistral, llama2, gemma"));
  }
  absl::StatusOr<ChatTemplate> t = ChatTemplate::FromName("vicuna");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("--chat-template"));
  EXPECT_THAT(t.status().message(), HasSubstr("vicuna"));
}

TEST(ChatTemplateTest, RenderRejectsEmptyAndUnknownRoles) {
  for (const char* name : {"chatml", "llama3", "mistral", "llama2", "gemma"}) {
    absl::StatusOr<ChatTemplate> t = ChatTemplate::FromName(name);
    ASSERT_TRUE(t.ok());
    absl::StatusOr<std::string> empty = t->Render({}, true);
    ASSERT_FALSE(empty.ok()) << name;
    EXPECT_THAT(empty.status().message(), HasSubstr("at least one message"));
    absl::StatusOr<std::string> tool = t->Render({{"user", "a"}, {"tool", "b"}}, true);
    ASSERT_FALSE(tool.ok()) << name;
    EXPECT_THAT(tool.status().message(), HasSubstr("role 'tool'"));
  }
}

}  // namespace
}  // namespace tandem::model
