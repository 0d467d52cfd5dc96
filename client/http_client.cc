#include "client/http_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cstdint>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/sse_parser.h"
#include "nlohmann/json.hpp"

namespace tandem::client {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Json = nlohmann::json;

// Error bodies past this are cut: only the message matters.
constexpr size_t kMaxErrorBody = 64 << 10;

absl::StatusCode CodeForHttpStatus(int status) {
  switch (status) {
    case 400:
    case 422:
      return absl::StatusCode::kInvalidArgument;
    case 401:
      return absl::StatusCode::kUnauthenticated;
    case 403:
      return absl::StatusCode::kPermissionDenied;
    case 404:
      return absl::StatusCode::kNotFound;
    case 413:
      return absl::StatusCode::kOutOfRange;
    case 429:
      return absl::StatusCode::kResourceExhausted;
    case 501:
      return absl::StatusCode::kUnimplemented;
    case 503:
      return absl::StatusCode::kUnavailable;
    case 504:
      return absl::StatusCode::kDeadlineExceeded;
    default:
      return status >= 400 && status < 500 ? absl::StatusCode::kInvalidArgument
                                           : absl::StatusCode::kInternal;
  }
}

// The message of an OpenAI error object {"message": ...}, or empty.
std::string ErrorMessage(const Json& error) {
  if (error.is_object()) {
    auto it = error.find("message");
    if (it != error.end() && it->is_string()) return it->get<std::string>();
  }
  return "";
}

const Json* Field(const Json& object, const char* name) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(name);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

int IntField(const Json& object, const char* name) {
  const Json* v = Field(object, name);
  return v != nullptr && v->is_number_integer() ? v->get<int>() : 0;
}

std::string StringField(const Json& object, const char* name) {
  const Json* v = Field(object, name);
  return v != nullptr && v->is_string() ? v->get<std::string>() : "";
}

}  // namespace

absl::Status StatusFromHttpError(int http_status, std::string_view body) {
  std::string message;
  Json parsed = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!parsed.is_discarded()) {
    if (const Json* error = Field(parsed, "error")) {
      message = error->is_string() ? error->get<std::string>() : ErrorMessage(*error);
    }
  }
  if (message.empty()) {
    std::string_view text = body.substr(0, 500);
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
    message = text.empty() ? absl::StrCat("HTTP ", http_status) : std::string(text);
  }
  return absl::Status(CodeForHttpStatus(http_status), message);
}

absl::StatusOr<std::unique_ptr<HttpClient>> HttpClient::Create(const HttpClientOptions& options) {
  std::string_view url = options.url;
  constexpr std::string_view kScheme = "http://";
  if (url.starts_with("https://")) {
    return absl::InvalidArgumentError("https:// is not supported (no TLS); use http://");
  }
  if (!url.starts_with(kScheme)) {
    return absl::InvalidArgumentError(
        absl::StrCat("URL must look like http://host:port, got '", std::string(url), "'"));
  }
  url.remove_prefix(kScheme.size());
  const size_t slash = url.find('/');
  std::string_view authority = url.substr(0, slash);
  std::string prefix(slash == std::string_view::npos ? "" : url.substr(slash));
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  if (prefix.ends_with("/v1")) prefix.resize(prefix.size() - 3);

  std::string host;
  std::string port = "80";
  if (authority.starts_with("[")) {  // [IPv6]:port
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("bad host in URL '", options.url, "'"));
    }
    host = std::string(authority.substr(1, close - 1));
    authority.remove_prefix(close + 1);
    if (authority.starts_with(":")) port = std::string(authority.substr(1));
  } else {
    const size_t colon = authority.find(':');
    host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port = std::string(authority.substr(colon + 1));
  }
  const bool port_ok = !port.empty() && port.size() <= 5 &&
                       port.find_first_not_of("0123456789") == std::string::npos &&
                       std::stoi(port) > 0 && std::stoi(port) < 65536;
  if (host.empty() || !port_ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("URL must look like http://host:port, got '", options.url, "'"));
  }
  return std::unique_ptr<HttpClient>(
      new HttpClient(std::move(host), std::move(port), std::move(prefix), options.api_key));
}

HttpClient::HttpClient(std::string host, std::string port, std::string prefix, std::string api_key)
    : host_(std::move(host)),
      port_(std::move(port)),
      prefix_(std::move(prefix)),
      api_key_(std::move(api_key)) {}

absl::Status HttpClient::Exchange(bool post, const std::string& path, const std::string& body,
                                  const std::function<bool(std::string_view)>& on_body) {
  asio::io_context ioc;
  tcp::resolver resolver(ioc);
  tcp::socket socket(ioc);
  beast::error_code ec;
  const std::string where = absl::StrCat(host_, ":", port_);
  const auto endpoints = resolver.resolve(host_, port_, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot resolve ", where, ": ", ec.message()));
  asio::connect(socket, endpoints, ec);
  if (ec)
    return absl::UnavailableError(absl::StrCat("cannot connect to ", where, ": ", ec.message()));

  http::request<http::string_body> request(post ? http::verb::post : http::verb::get,
                                           prefix_ + path, 11);
  request.set(http::field::host,
              host_.find(':') == std::string::npos ? where : absl::StrCat("[", host_, "]:", port_));
  request.set(http::field::user_agent, "tandem-client");
  request.set(http::field::connection, "close");
  if (!api_key_.empty()) request.set(http::field::authorization, "Bearer " + api_key_);
  if (post) {
    request.set(http::field::content_type, "application/json");
    request.set(http::field::accept, "text/event-stream");
    request.body() = body;
  }
  request.prepare_payload();
  http::write(socket, request, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("sending to ", where, ": ", ec.message()));

  beast::flat_buffer buffer;
  http::response_parser<http::buffer_body> parser;
  // Streams are as long as the generation. (Not boost::none: Boost 1.74 then rejects every
  // Content-Length body, comparing the length against an empty optional.)
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  http::read_header(socket, buffer, parser, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("reading the reply from ", where, ": ", ec.message()));
  }
  const int status = parser.get().result_int();
  const bool ok = status >= 200 && status < 300;
  std::string error_body;
  char piece[8192];
  while (!parser.is_done()) {
    parser.get().body().data = piece;
    parser.get().body().size = sizeof(piece);
    http::read(socket, buffer, parser, ec);
    if (ec == http::error::need_buffer) ec = {};
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("reading the reply from ", where, ": ", ec.message()));
    }
    const size_t n = sizeof(piece) - parser.get().body().size;
    if (ok) {
      if (!on_body(std::string_view(piece, n))) {
        // Closing the connection is how an HTTP client cancels a stream.
        socket.shutdown(tcp::socket::shutdown_both, ec);
        return absl::CancelledError("stopped by the caller");
      }
    } else if (error_body.size() < kMaxErrorBody) {
      error_body.append(piece, n);
    }
  }
  socket.shutdown(tcp::socket::shutdown_both, ec);
  if (!ok) return StatusFromHttpError(status, error_body);
  return absl::OkStatus();
}

std::string HttpClient::RequestBody(const GenerateParams& params) {
  Json body = Json::object();
  if (!params.model.empty()) body["model"] = params.model;
  if (params.chat) {
    Json messages = Json::array();
    for (const ChatMessage& m : params.messages) {
      messages.push_back({{"role", m.role}, {"content", m.content}});
    }
    body["messages"] = std::move(messages);
  } else {
    body["prompt"] = params.prompt;
  }
  if (params.max_tokens) body["max_tokens"] = *params.max_tokens;
  if (params.temperature) body["temperature"] = *params.temperature;
  if (params.top_p) body["top_p"] = *params.top_p;
  if (params.top_k) body["top_k"] = *params.top_k;
  if (params.seed) body["seed"] = *params.seed;
  if (!params.stop.empty()) body["stop"] = params.stop;
  if (params.n != 1) body["n"] = params.n;
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  return body.dump(-1, ' ', false, Json::error_handler_t::replace);
}

absl::StatusOr<Usage> HttpClient::Generate(const GenerateParams& params,
                                           const DeltaCallback& on_delta) {
  Usage usage;
  bool done = false;
  bool stopped = false;
  absl::Status stream_error;
  TextDelta delta;
  // One event: a chunk of choices, a usage chunk, an error object or [DONE].
  auto on_event = [&](const std::string& data) -> bool {
    if (data == "[DONE]") {
      done = true;
      return false;
    }
    Json chunk = Json::parse(data, nullptr, /*allow_exceptions=*/false);
    if (chunk.is_discarded() || !chunk.is_object()) {
      stream_error = absl::InternalError(absl::StrCat("malformed event from the server: ", data));
      return false;
    }
    if (const Json* error = Field(chunk, "error")) {
      const Json* code = Field(*error, "code");
      const int http_status = code != nullptr && code->is_number_integer() ? code->get<int>() : 500;
      std::string message = ErrorMessage(*error);
      stream_error = absl::Status(CodeForHttpStatus(http_status),
                                  message.empty() ? "error event without a message" : message);
      return false;
    }
    if (const Json* choices = Field(chunk, "choices"); choices != nullptr && choices->is_array()) {
      for (const Json& choice : *choices) {
        delta.index = IntField(choice, "index");
        if (params.chat) {
          const Json* d = Field(choice, "delta");
          delta.text = d != nullptr ? StringField(*d, "content") : "";
        } else {
          delta.text = StringField(choice, "text");
        }
        delta.finish_reason = StringField(choice, "finish_reason");
        if (delta.text.empty() && delta.finish_reason.empty()) continue;  // e.g. role-only
        if (!on_delta(delta)) {
          stopped = true;
          return false;
        }
      }
    }
    if (const Json* u = Field(chunk, "usage"); u != nullptr && u->is_object()) {
      usage.prompt_tokens = IntField(*u, "prompt_tokens");
      usage.completion_tokens = IntField(*u, "completion_tokens");
      if (const Json* d = Field(*u, "prompt_tokens_details"); d != nullptr && d->is_object()) {
        usage.cached_tokens = IntField(*d, "cached_tokens");
      }
    }
    return true;
  };
  SseParser sse(on_event);
  absl::Status status =
      Exchange(/*post=*/true, params.chat ? "/v1/chat/completions" : "/v1/completions",
               RequestBody(params), [&](std::string_view piece) { return sse.Feed(piece); });
  if (!stream_error.ok()) return stream_error;
  if (stopped) return absl::CancelledError("generation stopped by the caller");
  if (done) return usage;  // Exchange reports Cancelled: the parser stopped at [DONE]
  if (!status.ok()) return status;
  sse.Finish();
  if (!stream_error.ok()) return stream_error;
  if (!done) return absl::UnavailableError("the server ended the stream before [DONE]");
  return usage;
}

absl::StatusOr<std::string> HttpClient::Get(const std::string& path) {
  std::string body;
  absl::Status status = Exchange(/*post=*/false, path, "", [&](std::string_view piece) {
    body.append(piece);
    return true;
  });
  if (!status.ok()) return status;
  return body;
}

absl::Status HttpClient::Health() { return Get("/health").status(); }

absl::StatusOr<std::vector<ModelEntry>> HttpClient::ListModels() {
  absl::StatusOr<std::string> body = Get("/v1/models");
  if (!body.ok()) return body.status();
  Json parsed = Json::parse(*body, nullptr, /*allow_exceptions=*/false);
  const Json* data = parsed.is_discarded() ? nullptr : Field(parsed, "data");
  if (data == nullptr || !data->is_array()) {
    return absl::InternalError("malformed /v1/models reply: no \"data\" list");
  }
  std::vector<ModelEntry> models;
  for (const Json& m : *data) {
    ModelEntry entry;
    entry.id = StringField(m, "id");
    if (const Json* created = Field(m, "created"); created && created->is_number_integer()) {
      entry.created = created->get<int64_t>();
    }
    entry.max_model_len = IntField(m, "max_model_len");
    models.push_back(std::move(entry));
  }
  return models;
}

}  // namespace tandem::client
