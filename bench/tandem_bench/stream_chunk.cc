#include "bench/tandem_bench/stream_chunk.h"

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "common/str_cat.h"

namespace tandem::bench {
namespace {

void AppendString(const nlohmann::json& obj, const char* key, std::string& out) {
  auto it = obj.find(key);
  if (it != obj.end() && it->is_string()) out += it->get_ref<const std::string&>();
}

std::optional<int> IntField(const nlohmann::json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<int>();
}

}  // namespace

absl::StatusOr<StreamChunk> ParseStreamChunk(std::string_view payload) {
  StreamChunk chunk;
  if (payload == "[DONE]") {
    chunk.done = true;
    return chunk;
  }
  nlohmann::json j = nlohmann::json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) {
    return absl::DataLossError(
        StrCat("stream chunk is not a JSON object: '", payload.substr(0, 200), "'"));
  }
  if (auto it = j.find("error"); it != j.end() && !it->is_null()) {
    if (it->is_object() && it->contains("message") && (*it)["message"].is_string()) {
      chunk.error = (*it)["message"].get<std::string>();
    } else {
      chunk.error = it->dump();
    }
  }
  if (auto it = j.find("choices"); it != j.end() && it->is_array() && !it->empty()) {
    const nlohmann::json& c = (*it)[0];
    if (c.is_object()) {
      AppendString(c, "text", chunk.text);
      if (auto d = c.find("delta"); d != c.end() && d->is_object()) {
        AppendString(*d, "reasoning_content", chunk.text);
        AppendString(*d, "content", chunk.text);
      }
    }
  }
  if (auto it = j.find("usage"); it != j.end() && it->is_object()) {
    chunk.prompt_tokens = IntField(*it, "prompt_tokens");
    chunk.completion_tokens = IntField(*it, "completion_tokens");
    if (auto d = it->find("prompt_tokens_details"); d != it->end() && d->is_object()) {
      chunk.cached_tokens = IntField(*d, "cached_tokens");
    }
  }
  return chunk;
}

}  // namespace tandem::bench
