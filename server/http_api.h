// HttpApi: tandemd's HTTP routes, OpenAI-compatible: POST /v1/completions and
// /v1/chat/completions (stream or not), GET /v1/models, POST /tokenize and /detokenize,
// GET /health (liveness), GET /ready (readiness), GET /metrics (Prometheus), and GET / the
// built-in chat page (server/ui; docs/chat-page.md) when chat_page is on. It parses with
// server/openai, calls the Frontend, renders with server/openai, and answers errors in OpenAI's
// shape. Generation output is pumped off the engine thread: the stream's notify posts to a
// strand of the API's own thread, which takes the deltas, renders them and writes them.
//
// Per-request SLOs: the headers x-slo-ttft-ms / x-slo-tpot-ms (openai::ParseSloHeader)
// override the body's `slo`; a bad value is a 400 naming the header.
//
// Errors carry Retry-After when the refusing code attached a delay (common/retry_after.h), and
// "1" on any 429 without one. A streamed response sends its headers with its first output, so
// a stream refused before producing anything (e.g. dropped from the scheduler's queue) gets its
// real status (429), not a 200 followed by an in-band error.
//
// The open routes (probes, metrics, the chat page) need no API key; the chat page holds no
// secret, and asks the user for the key when the API answers 401.
//
// A client that goes away (HTTP server's OnClose) cancels its generation, which frees its KV
// within one engine step, whether or not the response's headers went out.
//
// Thread safety: Handle may be called from any io thread concurrently.
#ifndef TANDEM_SERVER_HTTP_API_H_
#define TANDEM_SERVER_HTTP_API_H_

#include <atomic>
#include <boost/asio/thread_pool.hpp>
#include <functional>
#include <memory>
#include <string>

#include "server/frontend.h"
#include "server/http/http_request.h"
#include "server/http/response_writer.h"

namespace tandem::server {

struct HttpApiConfig {
  std::string api_key;     // empty: no authentication
  int api_threads = 1;     // threads that render streamed output
  bool chat_page = false;  // GET / (and HEAD /) serves the built-in chat page; off: 404
};

class HttpApi {
 public:
  // `ready` tells /ready whether the daemon admits requests; `metrics` renders /metrics;
  // `on_status` counts each answered request's status. All may be called from any thread.
  HttpApi(const HttpApiConfig& config, Frontend& frontend, std::function<bool()> ready,
          std::function<std::string()> metrics, std::function<void(int)> on_status);
  ~HttpApi();  // joins the API threads

  void Handle(http::HttpRequest request, std::shared_ptr<http::ResponseWriter> writer);

 private:
  void Generate(GenerationRequest::Kind kind, const http::HttpRequest& request,
                std::shared_ptr<http::ResponseWriter> writer);
  void SendJson(http::ResponseWriter& writer, int status, std::string body);
  void SendError(http::ResponseWriter& writer, const absl::Status& status);

  const HttpApiConfig config_;
  Frontend& frontend_;
  const std::function<bool()> ready_;
  const std::function<std::string()> metrics_;
  const std::function<void(int)> on_status_;
  std::atomic<uint64_t> next_id_;  // response id nonces; random start, so ids differ per run
  boost::asio::thread_pool pool_;
};

}  // namespace tandem::server

#endif  // TANDEM_SERVER_HTTP_API_H_
