#include "server/http_api.h"

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <iterator>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "common/check.h"
#include "common/retry_after.h"
#include "common/str_cat.h"
#include "server/metrics/registry.h"
#include "server/openai/errors.h"
#include "server/openai/request_parser.h"
#include "server/openai/response_render.h"
#include "server/openai/slo.h"
#include "server/ui/chat_page.h"

namespace tandem::server {
namespace {

using http::HttpHeaders;
using http::ResponseWriter;

const http::HttpHeaders kJson = {{"Content-Type", "application/json"}};

// An error response in OpenAI's shape, counted once. Retry-After comes from the status when the
// code that refused attached one (common/retry_after.h); a 429 without one still gets "1", so
// clients that honour the header back off.
void SendErrorResponse(ResponseWriter& writer, const absl::Status& status,
                       const std::function<void(int)>& on_status) {
  const int code = openai::HttpStatusFor(status);
  HttpHeaders headers = kJson;
  if (const std::optional<absl::Duration> delay = RetryAfterOf(status); delay.has_value()) {
    headers.emplace_back("Retry-After", std::to_string(RetryAfterHeaderSeconds(*delay)));
  } else if (code == 429) {
    headers.emplace_back("Retry-After", "1");
  }
  if (code == 401) headers.emplace_back("WWW-Authenticate", "Bearer");
  on_status(code);
  writer.Send(code, std::move(headers), openai::ErrorBody(status));
}

// The x-slo-ttft-ms / x-slo-tpot-ms headers, which override the body's SLOs.
absl::Status ApplySloHeaders(const http::HttpRequest& request, GenerationRequest* r) {
  const std::pair<const char*, double*> headers[] = {{openai::kSloTtftHeader, &r->ttft_slo_ms},
                                                     {openai::kSloTpotHeader, &r->tpot_slo_ms}};
  for (const auto& [name, out] : headers) {
    const std::optional<std::string> value = request.Header(name);
    if (!value.has_value()) continue;
    TANDEM_ASSIGN_OR_RETURN(*out, openai::ParseSloHeader(name, *value));
  }
  return absl::OkStatus();
}

// One generation in flight: owns the stream and renders its deltas on a strand of the API
// pool, so the engine thread only posts.
//
// A streamed response sends its 200 and SSE headers with its first output (the first delta
// with text or tokens, or the end), not at once: a request can still be refused after
// Generate returned (the scheduler drops a queued request whose deadline can no longer be met),
// and such a stream is answered like a refused non-stream request, with its real HTTP status,
// an OpenAI error body and Retry-After. Once headers are out, an error goes in-band.
//
// on_status_ is called exactly once per request: with 200 when the stream's headers go out or
// a non-stream body succeeds, else with the error's status.
class GenerationPump : public std::enable_shared_from_this<GenerationPump> {
 public:
  GenerationPump(boost::asio::thread_pool& pool, std::unique_ptr<GenerationStream> stream,
                 std::shared_ptr<ResponseWriter> writer, GenerationRequest::Kind kind,
                 openai::ResponseMeta meta, bool stream_mode, bool include_usage,
                 std::function<void(int)> on_status)
      : strand_(boost::asio::make_strand(pool)),
        stream_(std::move(stream)),
        writer_(std::move(writer)),
        kind_(kind),
        meta_(meta),
        stream_mode_(stream_mode),
        renderer_(kind, std::move(meta), include_usage),
        include_usage_(include_usage),
        on_status_(std::move(on_status)) {}

  void Start() {
    self_ = shared_from_this();  // alive until the stream ends
    std::weak_ptr<GenerationPump> weak = weak_from_this();
    // The client going away cancels the sequences; the pump then finishes on its own.
    writer_->OnClose([weak] {
      if (auto self = weak.lock()) self->stream_->Cancel();
    });
    stream_->SetNotify([weak] {
      if (auto self = weak.lock()) self->Schedule();
    });
    Schedule();
  }

 private:
  void Schedule() {
    if (scheduled_.exchange(true)) return;  // one pump run pending is enough
    boost::asio::post(strand_, [self = shared_from_this()] { self->Pump(); });
  }

  void Pump() {
    scheduled_.store(false);
    if (finished_) return;
    std::vector<ChoiceDelta> deltas;
    const bool done = stream_->Take(&deltas);
    if (stream_mode_) {
      if (!headers_sent_) {
        // Deltas without text or tokens (a choice's bare finish, as a failed or cancelled
        // sequence ends) are held back: they are not output, and a stream that ends in
        // failure with nothing else is answered as an error.
        held_.insert(held_.end(), std::make_move_iterator(deltas.begin()),
                     std::make_move_iterator(deltas.end()));
        const bool output = std::any_of(held_.begin(), held_.end(), [](const ChoiceDelta& d) {
          return !d.text.empty() || !d.token_ids.empty();
        });
        if (!output && !done) return;  // nothing to say yet, not even the status
        if (!output) {
          if (const absl::Status s = stream_->status(); !s.ok()) {
            SendErrorResponse(*writer_, s, on_status_);
            Finish();
            return;
          }
        }
        writer_->StartStream(
            200, {{"Content-Type", "text/event-stream"}, {"Cache-Control", "no-cache"}});
        on_status_(200);
        headers_sent_ = true;
        deltas = std::move(held_);
      }
      std::string out;
      for (const ChoiceDelta& d : deltas) out += renderer_.Delta(d);
      if (done) {
        const absl::Status s = stream_->status();
        if (!s.ok()) {
          // Headers are gone already: report in-band, as OpenAI does for mid-stream errors.
          out += StrCat("data: ", openai::ErrorBody(s), "\n\n");
        } else if (include_usage_) {
          out += renderer_.UsageChunk(stream_->usage());
        }
        out += openai::StreamRenderer::Done();
      }
      if (!out.empty()) writer_->Write(std::move(out));
      if (done) writer_->End();
    } else {
      openai::AppendDeltas(deltas, &results_);
      if (done) {
        const absl::Status s = stream_->status();
        if (!s.ok()) {
          SendErrorResponse(*writer_, s, on_status_);
        } else {
          const Usage usage = stream_->usage();
          std::string body = kind_ == GenerationRequest::Kind::kChat
                                 ? openai::RenderChatCompletion(meta_, results_, usage)
                                 : openai::RenderCompletion(meta_, results_, usage);
          on_status_(200);
          writer_->Send(200, kJson, std::move(body));
        }
      }
    }
    if (done) Finish();
  }

  void Finish() {
    finished_ = true;
    stream_->SetNotify(nullptr);
    self_.reset();  // the last posted run holds the final reference
  }

  boost::asio::strand<boost::asio::thread_pool::executor_type> strand_;
  const std::unique_ptr<GenerationStream> stream_;
  const std::shared_ptr<ResponseWriter> writer_;
  const GenerationRequest::Kind kind_;
  const openai::ResponseMeta meta_;
  const bool stream_mode_;
  openai::StreamRenderer renderer_;  // strand only
  const bool include_usage_;
  const std::function<void(int)> on_status_;
  std::vector<openai::ChoiceResult> results_;  // strand only
  bool finished_ = false;                      // strand only
  bool headers_sent_ = false;                  // strand only; stream mode: StartStream ran
  std::vector<ChoiceDelta> held_;              // strand only; deltas taken before headers_sent_
  std::shared_ptr<GenerationPump> self_;       // strand only, once started
  std::atomic<bool> scheduled_{false};
};

bool PathIs(const http::HttpRequest& r, std::string_view path) { return r.path == path; }

}  // namespace

HttpApi::HttpApi(const HttpApiConfig& config, Frontend& frontend, std::function<bool()> ready,
                 std::function<std::string()> metrics, std::function<void(int)> on_status)
    : config_(config),
      frontend_(frontend),
      ready_(std::move(ready)),
      metrics_(std::move(metrics)),
      on_status_(std::move(on_status)),
      next_id_((uint64_t{std::random_device{}()} << 32) ^ std::random_device{}()),
      pool_(config.api_threads) {}

HttpApi::~HttpApi() { pool_.join(); }

void HttpApi::SendJson(ResponseWriter& writer, int status, std::string body) {
  on_status_(status);
  writer.Send(status, kJson, std::move(body));
}

void HttpApi::SendError(ResponseWriter& writer, const absl::Status& status) {
  SendErrorResponse(writer, status, on_status_);
}

void HttpApi::Handle(http::HttpRequest request, std::shared_ptr<ResponseWriter> writer) {
  const std::string& m = request.method;
  const bool get = m == "GET" || m == "HEAD";
  const bool post = m == "POST";

  // Open routes: probes and metrics.
  if (PathIs(request, "/health")) {
    if (!get) return SendError(*writer, absl::InvalidArgumentError("use GET /health"));
    return SendJson(*writer, 200, R"({"status":"ok"})");
  }
  if (PathIs(request, "/ready")) {
    if (!get) return SendError(*writer, absl::InvalidArgumentError("use GET /ready"));
    if (ready_()) return SendJson(*writer, 200, R"({"status":"ready"})");
    return SendError(*writer, absl::UnavailableError("not ready: loading or draining"));
  }
  if (PathIs(request, "/metrics")) {
    if (!get) return SendError(*writer, absl::InvalidArgumentError("use GET /metrics"));
    on_status_(200);
    return writer->Send(200, {{"Content-Type", std::string(metrics::kContentType)}}, metrics_());
  }
  // The chat page answers GET and HEAD only: other methods on / keep the 404 below, as there is
  // nothing else at /.
  if (config_.chat_page && get && PathIs(request, "/")) {
    on_status_(200);
    return writer->Send(
        200,
        {{"Content-Type", "text/html; charset=utf-8"},
         {"Content-Security-Policy", std::string(ui::ChatPageContentSecurityPolicy())},
         {"Cache-Control", "no-cache"},
         {"X-Content-Type-Options", "nosniff"},
         {"Referrer-Policy", "no-referrer"}},
        std::string(ui::ChatPageHtml()));
  }

  const bool known = PathIs(request, "/v1/completions") ||
                     PathIs(request, "/v1/chat/completions") || PathIs(request, "/v1/models") ||
                     PathIs(request, "/tokenize") || PathIs(request, "/detokenize");
  if (!known) {
    return SendError(
        *writer, openai::WithErrorCode(absl::NotFoundError(StrCat("no route for ", request.method,
                                                                  " ", request.path)),
                                       "unknown_url"));
  }
  if (!config_.api_key.empty()) {
    const std::optional<std::string> auth = request.Header("Authorization");
    if (!auth || *auth != "Bearer " + config_.api_key) {
      return SendError(*writer, absl::UnauthenticatedError(
                                    "invalid or missing API key (Authorization: Bearer KEY)"));
    }
  }

  if (PathIs(request, "/v1/models")) {
    if (!get) return SendError(*writer, absl::InvalidArgumentError("use GET /v1/models"));
    return SendJson(*writer, 200, openai::RenderModelList(frontend_.Model()));
  }
  if (!post) {
    return SendError(*writer, absl::InvalidArgumentError(StrCat("use POST ", request.path)));
  }
  if (PathIs(request, "/tokenize")) {
    absl::StatusOr<TokenizeRequest> r = openai::ParseTokenizeRequest(request.body);
    if (!r.ok()) return SendError(*writer, r.status());
    absl::StatusOr<std::vector<int32_t>> ids = frontend_.Tokenize(*r);
    if (!ids.ok()) return SendError(*writer, ids.status());
    return SendJson(*writer, 200,
                    openai::RenderTokenizeResponse(*ids, frontend_.Model().max_model_len));
  }
  if (PathIs(request, "/detokenize")) {
    absl::StatusOr<openai::DetokenizeRequest> r = openai::ParseDetokenizeRequest(request.body);
    if (!r.ok()) return SendError(*writer, r.status());
    absl::StatusOr<std::string> text = frontend_.Detokenize(r->model, r->tokens);
    if (!text.ok()) return SendError(*writer, text.status());
    return SendJson(*writer, 200, openai::RenderDetokenizeResponse(*text));
  }
  Generate(PathIs(request, "/v1/chat/completions") ? GenerationRequest::Kind::kChat
                                                   : GenerationRequest::Kind::kCompletion,
           request, std::move(writer));
}

void HttpApi::Generate(GenerationRequest::Kind kind, const http::HttpRequest& request,
                       std::shared_ptr<ResponseWriter> writer) {
  absl::StatusOr<GenerationRequest> parsed = kind == GenerationRequest::Kind::kChat
                                                 ? openai::ParseChatRequest(request.body)
                                                 : openai::ParseCompletionRequest(request.body);
  if (!parsed.ok()) return SendError(*writer, parsed.status());
  if (absl::Status s = ApplySloHeaders(request, &*parsed); !s.ok()) return SendError(*writer, s);
  const bool stream_mode = parsed->stream;
  const bool include_usage = parsed->include_usage;
  absl::StatusOr<std::unique_ptr<GenerationStream>> stream = frontend_.Generate(*parsed);
  if (!stream.ok()) return SendError(*writer, stream.status());
  const ModelInfo model = frontend_.Model();
  openai::ResponseMeta meta{openai::MakeResponseId(kind, next_id_.fetch_add(1)),
                            absl::ToUnixSeconds(absl::Now()), model.id};
  auto pump =
      std::make_shared<GenerationPump>(pool_, std::move(*stream), std::move(writer), kind,
                                       std::move(meta), stream_mode, include_usage, on_status_);
  pump->Start();
}

}  // namespace tandem::server
