// The malformed-request battery: each case is a request body that must be refused with an exact
// HTTP status and, where a field is at fault, a message and `param` naming it. The table is
// data: add a row to add a case.
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "server/openai/errors.h"
#include "server/openai/request_parser.h"
#include "server/openai/validate.h"

namespace tandem::server::openai {
namespace {

constexpr int kVocab = 1000;

enum class Endpoint { kCompletion, kChat, kTokenize, kDetokenize };

struct BadCase {
  Endpoint endpoint;
  std::string body;
  int http;             // expected HTTP status
  std::string param;    // expected ParamOf; "" = none expected
  std::string message;  // must appear in the message ("" = the param, quoted)
};

// A completion / chat body with `extra` fields added.
std::string C(const std::string& extra) { return R"({"prompt":"p",)" + extra + "}"; }
std::string Ch(const std::string& extra) {
  return R"({"messages":[{"role":"user","content":"q"}],)" + extra + "}";
}

absl::Status RunCase(const BadCase& c) {
  switch (c.endpoint) {
    case Endpoint::kCompletion:
    case Endpoint::kChat: {
      absl::StatusOr<GenerationRequest> r = c.endpoint == Endpoint::kCompletion
                                                ? ParseCompletionRequest(c.body)
                                                : ParseChatRequest(c.body);
      if (!r.ok()) return r.status();
      return ValidateGenerationRequest(*r, kVocab);
    }
    case Endpoint::kTokenize:
      return ParseTokenizeRequest(c.body).status();
    case Endpoint::kDetokenize:
      return ParseDetokenizeRequest(c.body).status();
  }
  return absl::InternalError("unreachable");
}

std::vector<BadCase> Battery() {
  const auto kC = Endpoint::kCompletion;
  const auto kCh = Endpoint::kChat;
  std::vector<BadCase> v = {
      // Broken JSON and bodies that are not a JSON object.
      {kC, "", 400, "", "not valid JSON"},
      {kC, "{", 400, "", "not valid JSON"},
      {kC, "{\"prompt\":\"p\"", 400, "", "not valid JSON"},
      {kC, "{\"prompt\":\"p\",}", 400, "", "not valid JSON"},
      {kC, "{'prompt':'p'}", 400, "", "not valid JSON"},
      {kC, "{\"prompt\":\"p\"} trailing", 400, "", "not valid JSON"},
      {kC, "{\"prompt\":\"p\"}{}", 400, "", "not valid JSON"},
      {kC, "{\"prompt\":\"unterminated}", 400, "", "not valid JSON"},
      {kC, "{\"prompt\":\"a\tb\"}", 400, "", "not valid JSON"},
      {kC, "{\"prompt\":\"\\x41\"}", 400, "", "not valid JSON"},
      {kC, "{\"prompt\":\"\\ud800\"}", 400, "", "not valid JSON"},
      {kC, "{\"prompt\":NaN}", 400, "", "not valid JSON"},
      {kC, "{\"prompt\":\"p\",\"n\":01}", 400, "", "not valid JSON"},
      {kC, "{\"prompt\":\"p\",\"n\":+1}", 400, "", "not valid JSON"},
      {kC, "{\"prompt\":\"p\" /* c */}", 400, "", "not valid JSON"},
      {kC, std::string("{\"prompt\":\"p\"}\0", 15), 400, "", "not valid JSON"},
      {kC, "[]", 400, "", "must be a JSON object"},
      {kC, "\"prompt\"", 400, "", "must be a JSON object"},
      {kC, "null", 400, "", "must be a JSON object"},
      {kC, "42", 400, "", "must be a JSON object"},
      {kCh, "[{\"role\":\"user\",\"content\":\"q\"}]", 400, "", "must be a JSON object"},
      // Invalid UTF-8.
      {kC, "{\"prompt\":\"\xff\"}", 400, "", "not valid UTF-8"},
      {kC, "{\"prompt\":\"\xc3\x28\"}", 400, "", "not valid UTF-8"},
      {kC, "{\"prompt\":\"\xc0\xaf\"}", 400, "", "not valid UTF-8"},          // overlong
      {kC, "{\"prompt\":\"\xed\xa0\x80\"}", 400, "", "not valid UTF-8"},      // surrogate
      {kC, "{\"prompt\":\"\xf4\x90\x80\x80\"}", 400, "", "not valid UTF-8"},  // > U+10FFFF
      {kC, "{\"prompt\":\"\xe2\x82\"}", 400, "", "not valid UTF-8"},          // truncated
      {kCh, "{\"messages\":[{\"role\":\"user\",\"content\":\"\x80\"}]}", 400, "",
       "not valid UTF-8"},
      {kC, "{\"pro\xfempt\":\"p\"}", 400, "", "not valid UTF-8"},
      // Numbers that do not fit.
      {kC, C(R"("temperature":1e309)"), 400, "temperature", ""},
      {kC, C(R"("max_tokens":-1e400)"), 400, "max_tokens", ""},
      {kC, C(R"("max_tokens":18446744073709551616)"), 400, "max_tokens", "out of range"},
      {kC, C(R"("max_tokens":9223372036854775808)"), 400, "max_tokens", "out of range"},
      {kC, C(R"("max_tokens":2147483648)"), 400, "max_tokens", "out of range"},
      {kC, C(R"("n":1e10)"), 400, "n", "out of range"},
      {kC, C(R"("top_k":-2147483649)"), 400, "top_k", "out of range"},
      {kC, C(R"("seed":18446744073709551616)"), 400, "seed", "out of range"},
      {kC, C(R"("seed":-1e19)"), 400, "seed", "out of range"},
      {kC, std::string("{\"prompt\":\"p\"}\0{\"n\":99}", 23), 400, "", "NUL byte"},
      {kC, C(R"("temperature":1e300)"), 400, "temperature", "out of range"},
      {kC, C(R"("ttft_slo_ms":1e999)"), 400, "ttft_slo_ms", ""},
      {kC, R"({"prompt":[1,2,99999999999]})", 400, "prompt", "out of range"},
      {kC, R"({"prompt":[1,2,1e400]})", 400, "prompt", ""},
      {kC, R"({"prompt":"p","stop_token_ids":[4294967296]})", 400, "stop_token_ids",
       "out of range"},
      // Non-integers where an integer is expected.
      {kC, C(R"("max_tokens":1.5)"), 400, "max_tokens", "must be an integer"},
      {kC, C(R"("n":"2")"), 400, "n", "must be an integer"},
      {kC, C(R"("n":true)"), 400, "n", "must be an integer"},
      {kC, C(R"("top_k":0.5)"), 400, "top_k", "must be an integer"},
      {kC, C(R"("seed":"42")"), 400, "seed", "must be an integer"},
      {kC, C(R"("seed":0.5)"), 400, "seed", "must be an integer"},
      {kC, C(R"("max_tokens":[16])"), 400, "max_tokens", "must be an integer"},
      {kC, C(R"("logprobs":true)"), 400, "logprobs", "must be an integer"},
      {kC, C(R"("logprobs":"5")"), 400, "logprobs", "must be an integer"},
      {kC, C(R"("logprobs":2.5)"), 400, "logprobs", "must be an integer"},
      {kCh, Ch(R"("top_logprobs":"3","logprobs":true)"), 400, "top_logprobs", "must be an integer"},
      {kCh, Ch(R"("max_completion_tokens":"8")"), 400, "max_completion_tokens",
       "must be an integer"},
      // Non-numbers where a number is expected.
      {kC, C(R"("temperature":"0.5")"), 400, "temperature", "'temperature' must be a number"},
      {kC, C(R"("temperature":true)"), 400, "temperature", "must be a number"},
      {kC, C(R"("temperature":[0.5])"), 400, "temperature", "must be a number"},
      {kC, C(R"("top_p":{})"), 400, "top_p", "must be a number"},
      {kC, C(R"("min_p":"0")"), 400, "min_p", "must be a number"},
      {kC, C(R"("presence_penalty":"1")"), 400, "presence_penalty", "must be a number"},
      {kC, C(R"("frequency_penalty":false)"), 400, "frequency_penalty", "must be a number"},
      {kC, C(R"("repetition_penalty":"1.1")"), 400, "repetition_penalty", "must be a number"},
      {kC, C(R"("ttft_slo_ms":"100")"), 400, "ttft_slo_ms", "must be a number"},
      {kCh, Ch(R"("tpot_slo_ms":[])"), 400, "tpot_slo_ms", "must be a number"},
      // Other wrong types.
      {kC, C(R"("model":42)"), 400, "model", "'model' must be a string"},
      {kC, C(R"("user":1)"), 400, "user", "must be a string"},
      {kC, C(R"("stream":"true")"), 400, "stream", "must be a boolean"},
      {kC, C(R"("stream":1)"), 400, "stream", "must be a boolean"},
      {kC, C(R"("echo":"yes")"), 400, "echo", "must be a boolean"},
      {kC, C(R"("ignore_eos":0)"), 400, "ignore_eos", "must be a boolean"},
      {kCh, Ch(R"("logprobs":1)"), 400, "logprobs", "must be a boolean"},
      {kCh, Ch(R"("echo":1)"), 400, "echo", "must be a boolean"},
      {kC, C(R"("stop":5)"), 400, "stop", "must be a string or a list of strings"},
      {kC, C(R"("stop":["a",5])"), 400, "stop", "must be a string or a list of strings"},
      {kC, C(R"("stop":{"a":1})"), 400, "stop", "must be a string or a list of strings"},
      {kC, C(R"("stream":true,"stream_options":true)"), 400, "stream_options", "must be an object"},
      {kC, C(R"("stream":true,"stream_options":{"include_usage":"yes"})"), 400,
       "stream_options.include_usage", "must be a boolean"},
      {kC, C(R"("stop_token_ids":5)"), 400, "stop_token_ids", "must be a list"},
      {kC, C(R"("stop_token_ids":["a"])"), 400, "stop_token_ids", "must be a list"},
      // prompt.
      {kC, R"({"model":"m"})", 400, "prompt", "'prompt' is required"},
      {kC, R"({"prompt":null})", 400, "prompt", "'prompt' is required"},
      {kC, R"({"prompt":[]})", 400, "prompt", "must not be an empty list"},
      {kC, R"({"prompt":""})", 400, "prompt", "must not be empty"},
      {kC, R"({"prompt":[[]]})", 400, "prompt", "must not be an empty list of token ids"},
      {kC, R"({"prompt":[[1],[]]})", 400, "prompt", "must not be an empty list of token ids"},
      {kC, R"({"prompt":42})", 400, "prompt", "must be a string, a list of strings"},
      {kC, R"({"prompt":{"text":"p"}})", 400, "prompt", "must be a string, a list of strings"},
      {kC, R"({"prompt":true})", 400, "prompt", "must be a string, a list of strings"},
      {kC, R"({"prompt":["a",1]})", 400, "prompt", "must be a string, a list of strings"},
      {kC, R"({"prompt":[1,"a"]})", 400, "prompt", "must be a list of integer token ids"},
      {kC, R"({"prompt":[[1],2]})", 400, "prompt", "must be a string, a list of strings"},
      {kC, R"({"prompt":[[1,"x"]]})", 400, "prompt", "must be a list of integer token ids"},
      {kC, R"({"prompt":[null]})", 400, "prompt", "must be a string, a list of strings"},
      {kC, R"({"prompt":[1.5]})", 400, "prompt", "must be an integer"},
      {kC, R"({"prompt":[-1]})", 400, "prompt", "outside the vocabulary"},
      {kC, R"({"prompt":[1000]})", 400, "prompt", "outside the vocabulary"},
      {kC, R"({"prompt":[[1],[2147483647]]})", 400, "prompt", "outside the vocabulary"},
      {kC, R"({"prompt":["a",""]})", 400, "prompt", "must not be empty"},
      // messages.
      {kCh, R"({"model":"m"})", 400, "messages", "'messages' is required"},
      {kCh, R"({"messages":null})", 400, "messages", "'messages' is required"},
      {kCh, R"({"messages":[]})", 400, "messages", "'messages' must not be empty"},
      {kCh, R"({"messages":"hi"})", 400, "messages", "must be a list of messages"},
      {kCh, R"({"messages":{"role":"user","content":"q"}})", 400, "messages",
       "must be a list of messages"},
      {kCh, R"({"messages":["hi"]})", 400, "messages[0]", "'messages[0]' must be an object"},
      {kCh, R"({"messages":[{"role":"user","content":"q"},null]})", 400, "messages[1]",
       "'messages[1]' must be an object"},
      {kCh, R"({"messages":[{"content":"q"}]})", 400, "messages[0].role",
       "'messages[0].role' is required"},
      {kCh, R"({"messages":[{"role":5,"content":"q"}]})", 400, "messages[0].role",
       "must be a string"},
      {kCh, R"({"messages":[{"role":"wizard","content":"q"}]})", 400, "messages[0].role",
       "must be 'system', 'user', 'assistant' or 'developer'"},
      {kCh, R"({"messages":[{"role":"tool","content":"q","tool_call_id":"x"}]})", 400,
       "messages[0].role", "not supported"},
      {kCh, R"({"messages":[{"role":"function","content":"q","name":"f"}]})", 400,
       "messages[0].role", "not supported"},
      {kCh, R"({"messages":[{"role":"user"}]})", 400, "messages[0].content",
       "'messages[0].content' is required"},
      {kCh, R"({"messages":[{"role":"user","content":"a"},{"role":"assistant","content":null}]})",
       400, "messages[1].content", "'messages[1].content' is required"},
      {kCh, R"({"messages":[{"role":"user","content":42}]})", 400, "messages[0].content",
       "must be a string or a list of content parts"},
      {kCh, R"({"messages":[{"role":"user","content":{"type":"text","text":"a"}}]})", 400,
       "messages[0].content", "must be a string or a list of content parts"},
      {kCh, R"({"messages":[{"role":"user","content":["a"]}]})", 400, "messages[0].content[0]",
       "must be an object"},
      {kCh, R"({"messages":[{"role":"user","content":[{"text":"a"}]}]})", 400,
       "messages[0].content[0].type", "is required"},
      {kCh, R"({"messages":[{"role":"user","content":[{"type":1,"text":"a"}]}]})", 400,
       "messages[0].content[0].type", "must be a string"},
      {kCh,
       R"({"messages":[{"role":"user","content":[{"type":"text","text":"a"},
           {"type":"image_url","image_url":{"url":"http://x/y.png"}}]}]})",
       400, "messages[0].content[1].type", "'image_url' is not supported"},
      {kCh, R"({"messages":[{"role":"user","content":[{"type":"input_audio"}]}]})", 400,
       "messages[0].content[0].type", "'input_audio' is not supported"},
      {kCh, R"({"messages":[{"role":"user","content":[{"type":"text"}]}]})", 400,
       "messages[0].content[0].text", "is required"},
      {kCh, R"({"messages":[{"role":"user","content":[{"type":"text","text":5}]}]})", 400,
       "messages[0].content[0].text", "must be a string"},
      {kCh,
       R"({"messages":[{"role":"assistant","content":"","tool_calls":[{"id":"c","type":"function"}]}]})",
       400, "messages[0].tool_calls", "not supported"},
      {kCh, R"({"messages":[{"role":"assistant","content":"","function_call":{"name":"f"}}]})", 400,
       "messages[0].function_call", "not supported"},
      // Values out of range (ValidateGenerationRequest).
      {kC, C(R"("max_tokens":0)"), 400, "max_tokens", "'max_tokens' must be >= 1"},
      {kC, C(R"("max_tokens":-5)"), 400, "max_tokens", "must be >= 1"},
      {kCh, Ch(R"("max_completion_tokens":0)"), 400, "max_tokens", "must be >= 1"},
      {kC, C(R"("n":0)"), 400, "n", "'n' must be in [1, 16]"},
      {kC, C(R"("n":-1)"), 400, "n", "must be in [1, 16]"},
      {kC, C(R"("n":17)"), 400, "n", "must be in [1, 16]"},
      {kC, C(R"("temperature":-0.1)"), 400, "temperature", "must be in [0, 2]"},
      {kC, C(R"("temperature":2.5)"), 400, "temperature", "must be in [0, 2]"},
      {kC, C(R"("top_p":0)"), 400, "top_p", "must be in (0, 1]"},
      {kC, C(R"("top_p":1.01)"), 400, "top_p", "must be in (0, 1]"},
      {kC, C(R"("top_p":-1)"), 400, "top_p", "must be in (0, 1]"},
      {kC, C(R"("top_k":-2)"), 400, "top_k", "'top_k' must be -1 or 0"},
      {kC, C(R"("min_p":-0.5)"), 400, "min_p", "must be in [0, 1]"},
      {kC, C(R"("min_p":1.5)"), 400, "min_p", "must be in [0, 1]"},
      {kC, C(R"("presence_penalty":2.5)"), 400, "presence_penalty", "must be in [-2, 2]"},
      {kC, C(R"("frequency_penalty":-3)"), 400, "frequency_penalty", "must be in [-2, 2]"},
      {kC, C(R"("repetition_penalty":0)"), 400, "repetition_penalty", "> 0"},
      {kC, C(R"("repetition_penalty":-1)"), 400, "repetition_penalty", "> 0"},
      {kC, C(R"("logprobs":6)"), 400, "logprobs", "'logprobs' must be in [0, 5]"},
      {kC, C(R"("logprobs":-1)"), 400, "logprobs", "must be in [0, 5]"},
      {kCh, Ch(R"("logprobs":true,"top_logprobs":21)"), 400, "top_logprobs", "must be in [0, 20]"},
      {kCh, Ch(R"("logprobs":true,"top_logprobs":-1)"), 400, "top_logprobs", "must be in [0, 20]"},
      {kCh, Ch(R"("top_logprobs":2)"), 400, "top_logprobs", "requires 'logprobs'"},
      {kCh, Ch(R"("logprobs":false,"top_logprobs":2)"), 400, "top_logprobs", "requires 'logprobs'"},
      {kC, C(R"("stop":["a","b","c","d","e"])"), 400, "stop", "more than the 4 allowed"},
      {kC, C(R"("stop":"")"), 400, "stop", "must not be empty"},
      {kC, C(R"("stop":["a",""])"), 400, "stop", "must not be empty"},
      {kC, C(R"("stop_token_ids":[1000])"), 400, "stop_token_ids", "outside the vocabulary"},
      {kC, C(R"("stop_token_ids":[-1])"), 400, "stop_token_ids", "outside the vocabulary"},
      {kC, C(R"("ttft_slo_ms":0)"), 400, "ttft_slo_ms", "must be > 0"},
      {kC, C(R"("tpot_slo_ms":-10)"), 400, "tpot_slo_ms", "must be > 0"},
      {kC, C(R"("ttft_slo_ms":3600001)"), 400, "ttft_slo_ms", "<= 3600000 (one hour"},
      // Per-request SLOs: the `slo` object.
      {kC, C(R"("slo":250)"), 400, "slo", "'slo' must be an object with 'ttft_ms'"},
      {kCh, Ch(R"("slo":[250,40])"), 400, "slo", "must be an object"},
      {kC, C(R"("slo":"fast")"), 400, "slo", "must be an object"},
      {kC, C(R"("slo":{"ttft":100})"), 400, "slo.ttft", "'slo.ttft' is not supported"},
      {kC, C(R"("slo":{"ttft_ms":"100"})"), 400, "slo.ttft_ms",
       "'slo.ttft_ms' must be a number of milliseconds"},
      {kCh, Ch(R"("slo":{"tpot_ms":true})"), 400, "slo.tpot_ms", "must be a number"},
      {kC, C(R"("slo":{"ttft_ms":0})"), 400, "slo.ttft_ms", "'slo.ttft_ms' must be > 0"},
      {kC, C(R"("slo":{"ttft_ms":-5})"), 400, "slo.ttft_ms", "must be > 0 and <= 3600000"},
      {kCh, Ch(R"("slo":{"tpot_ms":3600000.5})"), 400, "slo.tpot_ms", "got 3600000.5"},
      {kC, C(R"("slo":{"tpot_ms":1e300})"), 400, "slo.tpot_ms", "<= 3600000"},
      {kC, C(R"("slo":{"ttft_ms":1e999})"), 400, "slo", ""},
      {kC, C(R"("ttft_slo_ms":100,"slo":{"ttft_ms":200})"), 400, "slo.ttft_ms",
       "'slo.ttft_ms' and its older spelling 'ttft_slo_ms' disagree"},
      {kCh, Ch(R"("slo":{"tpot_ms":40},"tpot_slo_ms":0)"), 400, "tpot_slo_ms", "must be > 0"},
      {kC, C(R"("stream_options":{"include_usage":true})"), 400, "stream_options",
       "only allowed when 'stream' is true"},
      {kC, C(R"("stream":false,"stream_options":{"include_usage":false})"), 400, "stream_options",
       "only allowed when 'stream' is true"},
      // Fields tandem does not support.
      {kCh, Ch(R"("tools":[{"type":"function","function":{"name":"f"}}])"), 400, "tools",
       "'tools' is not supported"},
      {kCh, Ch(R"("tool_choice":"auto")"), 400, "tool_choice", "not supported"},
      {kCh, Ch(R"("functions":[{"name":"f"}])"), 400, "functions", "not supported"},
      {kCh, Ch(R"("function_call":"auto")"), 400, "function_call", "not supported"},
      {kCh, Ch(R"("parallel_tool_calls":false)"), 400, "parallel_tool_calls", "not supported"},
      {kCh, Ch(R"("response_format":{"type":"json_object"})"), 400, "response_format",
       "not supported"},
      {kCh, Ch(R"("response_format":{"type":"json_schema","json_schema":{}})"), 400,
       "response_format", "not supported"},
      {kCh, Ch(R"("response_format":"text")"), 400, "response_format", "not supported"},
      {kC, C(R"("logit_bias":{"50256":-100})"), 400, "logit_bias", "not supported"},
      {kC, C(R"("suffix":"end")"), 400, "suffix", "not supported"},
      {kC, C(R"("best_of":2)"), 400, "best_of", "not supported"},
      {kC, C(R"("best_of":"2")"), 400, "best_of", "must be an integer"},
      {kCh, Ch(R"("audio":{"voice":"alloy"})"), 400, "audio", "not supported"},
      {kCh, Ch(R"("modalities":["text","audio"])"), 400, "modalities", "not supported"},
      {kCh, Ch(R"("prediction":{"type":"content","content":"x"})"), 400, "prediction",
       "not supported"},
      {kCh, Ch(R"("reasoning_effort":"low")"), 400, "reasoning_effort", "not supported"},
      {kCh, Ch(R"("web_search_options":{})"), 400, "web_search_options", "not supported"},
      {kCh, Ch(R"("store":true)"), 400, "store", "not supported"},
      {kC, C(R"("use_beam_search":true)"), 400, "use_beam_search", "not supported"},
      {kC, C(R"("guided_json":{})"), 400, "guided_json", "not supported"},
      {kC, C(R"("guided_regex":"a+")"), 400, "guided_regex", "not supported"},
      {kC, C(R"("prompt_logprobs":1)"), 400, "prompt_logprobs", "not supported"},
      {kC, C(R"("min_tokens":5)"), 400, "min_tokens", "not supported"},
      {kC, C(R"("include_stop_str_in_output":true)"), 400, "include_stop_str_in_output",
       "not supported"},
      {kC, C(R"("stream":true,"stream_options":{"continuous_usage_stats":true})"), 400,
       "stream_options.continuous_usage_stats", "not supported"},
      {kCh, Ch(R"("echo":true)"), 400, "echo", "only supported by /v1/completions"},
      // /tokenize and /detokenize.
      {Endpoint::kTokenize, R"({})", 400, "prompt", "'prompt' or 'messages' is required"},
      {Endpoint::kTokenize, R"({"prompt":5})", 400, "prompt", "'prompt' must be a string"},
      {Endpoint::kTokenize, R"({"prompt":["a"]})", 400, "prompt", "must be a string"},
      {Endpoint::kTokenize, R"({"prompt":"a","messages":[{"role":"user","content":"q"}]})", 400,
       "messages", "not both"},
      {Endpoint::kTokenize, R"({"messages":[]})", 400, "messages", "must not be empty"},
      {Endpoint::kTokenize, R"({"prompt":"a","add_special_tokens":"no"})", 400,
       "add_special_tokens", "must be a boolean"},
      {Endpoint::kTokenize,
       R"({"messages":[{"role":"user","content":"q"}],"add_generation_prompt":false})", 400,
       "add_generation_prompt", "only true"},
      {Endpoint::kTokenize, R"({"prompt":"a","model":[]})", 400, "model", "must be a string"},
      {Endpoint::kTokenize, "{\"prompt\":\"\xfe\"}", 400, "", "not valid UTF-8"},
      {Endpoint::kDetokenize, R"({})", 400, "tokens", "'tokens' is required"},
      {Endpoint::kDetokenize, R"({"tokens":"1 2"})", 400, "tokens", "must be a list"},
      {Endpoint::kDetokenize, R"({"tokens":[1,"2"]})", 400, "tokens", "must be a list"},
      {Endpoint::kDetokenize, R"({"tokens":[-1]})", 400, "tokens", "out of range"},
      {Endpoint::kDetokenize, R"({"tokens":[2147483648]})", 400, "tokens", "out of range"},
      {Endpoint::kDetokenize, R"({"tokens":[1.25]})", 400, "tokens", "must be an integer"},
      {Endpoint::kDetokenize, "[1,2]", 400, "", "must be a JSON object"},
  };

  // Depth bombs: nested arrays and objects past kMaxJsonDepth, inside a known and an unknown
  // field and at the top level.
  const std::string deep_arrays = std::string(100000, '[') + std::string(100000, ']');
  v.push_back({kC, C(R"("prompt2":)" + deep_arrays), 400, "", "nested deeper than 64"});
  v.push_back({kC, R"({"prompt":)" + deep_arrays + "}", 400, "", "nested deeper than 64"});
  std::string deep_objects;
  for (int i = 0; i < 5000; ++i) deep_objects += R"({"a":)";
  deep_objects += "1" + std::string(5000, '}');
  v.push_back({kCh, deep_objects, 400, "", "nested deeper than 64"});
  v.push_back({kCh, std::string(1 << 20, '['), 400, "", "nested deeper than 64"});

  // Oversized arrays of token ids: OutOfRange (413) before any lookup.
  std::string big = R"({"prompt":[)";
  for (int i = 0; i <= kMaxPromptTokens; ++i) big += i ? ",1" : "1";
  big += "]}";
  v.push_back({kC, big, 413, "prompt", "more than the 262144"});
  std::string big_detok = R"({"tokens":)" + big.substr(10);
  v.push_back({Endpoint::kDetokenize, big_detok, 413, "tokens", "more than the 262144"});
  // Too many prompts and messages.
  std::string many = R"({"prompt":[)";
  for (int i = 0; i <= kMaxPrompts; ++i) many += i ? R"(,"x")" : R"("x")";
  many += "]}";
  v.push_back({kC, many, 400, "prompt", "more than the 256 allowed"});
  std::string many_messages = R"({"messages":[)";
  for (int i = 0; i <= kMaxMessages; ++i) {
    many_messages += i ? R"(,{"role":"user","content":"q"})" : R"({"role":"user","content":"q"})";
  }
  many_messages += "]}";
  v.push_back({kCh, many_messages, 400, "messages", "more than the 4096 allowed"});
  return v;
}

TEST(MalformedRequests, BatteryHasAtLeast100Cases) { EXPECT_GE(Battery().size(), 100u); }

TEST(MalformedRequests, EachGetsItsStatusAndNamesItsField) {
  int i = 0;
  for (const BadCase& c : Battery()) {
    SCOPED_TRACE(testing::Message() << "case " << i++ << ": " << c.body.substr(0, 160));
    const absl::Status s = RunCase(c);
    if (s.ok()) {
      ADD_FAILURE() << "accepted";
      continue;
    }
    EXPECT_EQ(HttpStatusFor(s), c.http) << s;
    const std::string message(s.message());
    const std::string expected_message = c.message.empty() ? "'" + c.param + "'" : c.message;
    EXPECT_NE(message.find(expected_message), std::string::npos)
        << "message: " << message << "\nexpected to contain: " << expected_message;
    if (c.param.empty()) {
      EXPECT_FALSE(ParamOf(s).has_value()) << *ParamOf(s);
    } else {
      EXPECT_EQ(ParamOf(s).value_or("<none>"), c.param);
      EXPECT_NE(message.find("'" + c.param), std::string::npos) << message;
    }
    // The error body is valid JSON carrying the same facts.
    const nlohmann::json body = nlohmann::json::parse(ErrorBody(s));
    EXPECT_EQ(body["error"]["message"], message);
    EXPECT_EQ(body["error"]["type"],
              c.http == 400 ? "invalid_request_error" : body["error"]["type"].get<std::string>());
    if (c.param.empty()) {
      EXPECT_TRUE(body["error"]["param"].is_null());
    } else {
      EXPECT_EQ(body["error"]["param"], c.param);
    }
  }
}

}  // namespace
}  // namespace tandem::server::openai
