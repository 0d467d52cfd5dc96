// libFuzzer target for the OpenAI schema layer: any byte string, fed to every request parser,
// must give a request or an InvalidArgument / OutOfRange status (never a crash, hang, huge
// allocation or another status code); parsed requests must pass through
// ValidateGenerationRequest the same way; the bytes as an x-slo-*-ms header value must give an
// SLO in (0, kMaxSloMs] or an InvalidArgument; and every error body and every response
// rendered from the bytes must be valid JSON. Build and run from the repository root with `make
// fuzz-openai` (FUZZ_SECONDS bounds the run); seeds live in tests/fuzz/openai_corpus/, the
// dictionary of OpenAI keys in tests/fuzz/openai.dict.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "nlohmann/json.hpp"
#include "server/openai/errors.h"
#include "server/openai/request_parser.h"
#include "server/openai/response_render.h"
#include "server/openai/slo.h"
#include "server/openai/validate.h"

namespace {

using namespace tandem::server;          // NOLINT
using namespace tandem::server::openai;  // NOLINT

void Require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "openai_fuzz: invariant broken: %s\n", what);
    std::abort();
  }
}

bool IsJson(const std::string& s) { return nlohmann::json::accept(s); }

void CheckError(const absl::Status& s) {
  if (s.ok()) return;
  Require(
      s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kOutOfRange,
      "request errors are InvalidArgument or OutOfRange");
  const int http = HttpStatusFor(s);
  Require(http == 400 || http == 413, "request errors are 400 or 413");
  Require(IsJson(ErrorBody(s)), "error body is JSON");
}

void CheckGeneration(const absl::StatusOr<GenerationRequest>& r) {
  CheckError(r.status());
  if (!r.ok()) return;
  for (int vocab : {1, 1000, 50000}) CheckError(ValidateGenerationRequest(*r, vocab));
  Require(r->n >= -2147483647 - 1, "n parsed");
}

// The raw bytes as a header value (ParseSloHeader is what HTTP headers and gRPC metadata use).
void CheckSloHeader(std::string_view bytes) {
  const absl::StatusOr<double> ms = ParseSloHeader(kSloTtftHeader, bytes);
  CheckError(ms.status());
  if (ms.ok()) Require(*ms > 0 && *ms <= kMaxSloMs, "a parsed SLO is in (0, kMaxSloMs]");
  if (!ms.ok()) Require(ms.status().code() == absl::StatusCode::kInvalidArgument, "SLO is 400");
}

// Renders the raw bytes as generated text and logprob tokens: output must stay JSON.
void CheckRender(std::string_view bytes) {
  const std::string text(bytes.substr(0, 256));
  ChoiceDelta delta;
  delta.index = bytes.empty() ? 0 : static_cast<unsigned char>(bytes[0]) % 4;
  delta.text = text;
  TokenLogprobInfo tok;
  tok.text = text;
  tok.bytes.assign(text.begin(), text.end());
  tok.logprob = bytes.size() > 3 ? -static_cast<float>(bytes[1]) / 7.0f : 0.0f;
  delta.logprobs.push_back(LogprobEntry{tok, {tok, tok}});
  delta.finish = bytes.size() % 2 ? FinishReason::kStop : FinishReason::kLength;
  std::vector<ChoiceResult> results;
  AppendDeltas({delta}, &results);
  results[0].echo_text = text;
  const ResponseMeta meta{.id = text, .created = 1, .model = text};
  Require(IsJson(RenderCompletion(meta, results, Usage{1, 2})), "completion is JSON");
  Require(IsJson(RenderChatCompletion(meta, results, Usage{1, 2})), "chat is JSON");
  for (auto kind : {GenerationRequest::Kind::kCompletion, GenerationRequest::Kind::kChat}) {
    StreamRenderer stream(kind, meta, /*include_usage=*/true);
    std::string events = stream.Delta(delta) + stream.UsageChunk(Usage{});
    size_t pos = 0;
    while (pos < events.size()) {
      Require(events.compare(pos, 6, "data: ") == 0, "SSE event starts with data:");
      const size_t end = events.find("\n\n", pos);
      Require(end != std::string::npos, "SSE event ends with a blank line");
      Require(IsJson(events.substr(pos + 6, end - pos - 6)), "SSE payload is JSON");
      pos = end + 2;
    }
  }
  Require(IsJson(RenderDetokenizeResponse(text)), "detokenize is JSON");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  CheckGeneration(ParseCompletionRequest(body));
  CheckGeneration(ParseChatRequest(body));
  CheckError(ParseTokenizeRequest(body).status());
  CheckError(ParseDetokenizeRequest(body).status());
  CheckSloHeader(body);
  CheckRender(body);
  return 0;
}
