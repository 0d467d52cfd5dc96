#include "bench/tandem_bench/token_counter.h"

#include <cctype>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "common/check.h"
#include "common/str_cat.h"

namespace tandem::bench {

absl::StatusOr<int> WordTokenCounter::Count(std::string_view text) {
  long words = 0;
  bool in_word = false;
  for (char c : text) {
    const bool space = std::isspace(static_cast<unsigned char>(c));
    if (!space && !in_word) ++words;
    in_word = !space;
  }
  return static_cast<int>((words * 4 + 2) / 3);
}

absl::StatusOr<int> ServerTokenCounter::CountWith(Form form, std::string_view text) {
  nlohmann::json body;
  if (form == Form::kLlamaCpp) {
    body = {{"content", std::string(text)}, {"add_special", false}};
  } else {
    body = {{"model", model_}, {"prompt", std::string(text)}, {"add_special_tokens", false}};
  }
  TANDEM_ASSIGN_OR_RETURN(HttpResponse r,
                          HttpFetch(server_, "POST", "/tokenize", body.dump(), api_key_, 30));
  if (r.status != 200) {
    return absl::UnavailableError(
        StrCat("POST /tokenize answered HTTP ", r.status, ": ", r.body.substr(0, 200)));
  }
  nlohmann::json j = nlohmann::json::parse(r.body, nullptr, false);
  if (!j.is_object() || !j.contains("tokens") || !j["tokens"].is_array()) {
    return absl::DataLossError("POST /tokenize: no \"tokens\" array in the answer");
  }
  return static_cast<int>(j["tokens"].size());
}

absl::StatusOr<int> ServerTokenCounter::Count(std::string_view text) {
  if (form_ != Form::kUnknown) return CountWith(form_, text);
  absl::StatusOr<int> llama = CountWith(Form::kLlamaCpp, text);
  if (llama.ok()) {
    form_ = Form::kLlamaCpp;
    return llama;
  }
  absl::StatusOr<int> vllm = CountWith(Form::kVllm, text);
  if (vllm.ok()) {
    form_ = Form::kVllm;
    return vllm;
  }
  return absl::UnavailableError(StrCat("llama.cpp form: ", llama.status().message(),
                                       "; vLLM form: ", vllm.status().message()));
}

absl::StatusOr<std::unique_ptr<TokenCounter>> MakeTokenCounter(std::string_view mode,
                                                               const ServerUrl& server,
                                                               const std::string& api_key,
                                                               const std::string& model,
                                                               std::string* note) {
  if (mode == "words") return std::make_unique<WordTokenCounter>();
  if (mode != "server" && mode != "auto") {
    return absl::InvalidArgumentError(
        StrCat("--tokenizer '", mode, "': want auto, server or words"));
  }
  auto counter = std::make_unique<ServerTokenCounter>(server, api_key, model);
  absl::StatusOr<int> probe = counter->Count("Hello world, this is a probe.");
  if (probe.ok() && *probe > 0) return counter;
  const std::string why =
      probe.ok() ? "it returned no tokens" : std::string(probe.status().message());
  if (mode == "server") {
    return absl::UnavailableError(
        StrCat("--tokenizer server: the server's /tokenize failed: ", why));
  }
  if (note) *note = StrCat("server /tokenize unavailable (", why, "); counting tokens by words");
  return std::make_unique<WordTokenCounter>();
}

}  // namespace tandem::bench
