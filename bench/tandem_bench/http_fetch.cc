#include "bench/tandem_bench/http_fetch.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "common/str_cat.h"

namespace tandem::bench {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;

absl::StatusOr<ServerUrl> ParseServerUrl(std::string_view url_in) {
  std::string url(url_in);
  if (absl::StartsWith(url, "https://")) {
    return absl::InvalidArgumentError(
        StrCat("'", url, "': https is not supported; point --url at a plain http endpoint"));
  }
  if (!absl::StartsWith(url, "http://")) {
    return absl::InvalidArgumentError(StrCat("'", url, "': want http://HOST[:PORT][/PATH]"));
  }
  std::string rest = url.substr(7);
  ServerUrl out;
  const size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  if (slash != std::string::npos) out.base_path = rest.substr(slash);
  while (!out.base_path.empty() && out.base_path.back() == '/') out.base_path.pop_back();
  if (absl::EndsWith(out.base_path, "/v1")) out.base_path.resize(out.base_path.size() - 3);
  const size_t colon = hostport.rfind(':');
  if (colon != std::string::npos && hostport.find(']') == std::string::npos) {
    out.host = hostport.substr(0, colon);
    out.port = hostport.substr(colon + 1);
    int p = 0;
    if (!absl::SimpleAtoi(out.port, &p) || p <= 0 || p > 65535) {
      return absl::InvalidArgumentError(StrCat("'", url, "': bad port"));
    }
  } else {
    out.host = hostport;
    out.port = "80";
  }
  if (out.host.empty()) return absl::InvalidArgumentError(StrCat("'", url, "': no host"));
  return out;
}

namespace {

asio::awaitable<void> FetchCoro(const ServerUrl& server, http::request<http::string_body> req,
                                double timeout_s, absl::StatusOr<HttpResponse>& result) {
  auto ex = co_await asio::this_coro::executor;
  beast::error_code ec;
  auto tok = asio::redirect_error(asio::use_awaitable, ec);
  asio::ip::tcp::resolver resolver(ex);
  auto endpoints = co_await resolver.async_resolve(server.host, server.port, tok);
  if (ec) {
    result = absl::UnavailableError(StrCat("resolve ", server.host, ": ", ec.message()));
    co_return;
  }
  beast::tcp_stream stream(ex);
  stream.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(timeout_s)));
  co_await stream.async_connect(endpoints, tok);
  if (!ec) co_await http::async_write(stream, req, tok);
  beast::flat_buffer buf;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 << 20);
  if (!ec) co_await http::async_read(stream, buf, parser, tok);
  if (ec) {
    const std::string what =
        StrCat(std::string(req.method_string()), " ", std::string(req.target()), " on ",
               server.HostHeader(), ": ", ec.message());
    result = ec == beast::error::timeout ? absl::DeadlineExceededError(what)
                                         : absl::UnavailableError(what);
    co_return;
  }
  beast::error_code ignored;
  stream.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  result = HttpResponse{static_cast<int>(parser.get().result_int()), parser.get().body()};
}

}  // namespace

absl::StatusOr<HttpResponse> HttpFetch(const ServerUrl& server, std::string_view method,
                                       std::string_view path, std::string_view body,
                                       std::string_view api_key, double timeout_s) {
  http::request<http::string_body> req;
  req.method(method == "POST" ? http::verb::post : http::verb::get);
  req.target(server.base_path + std::string(path));
  req.version(11);
  req.set(http::field::host, server.HostHeader());
  req.set(http::field::user_agent, "tandem-bench");
  req.keep_alive(false);
  if (!api_key.empty()) req.set(http::field::authorization, "Bearer " + std::string(api_key));
  if (!body.empty()) {
    req.set(http::field::content_type, "application/json");
    req.body() = std::string(body);
  }
  req.prepare_payload();
  asio::io_context ioc;
  absl::StatusOr<HttpResponse> result = absl::UnknownError("fetch did not run");
  asio::co_spawn(ioc, FetchCoro(server, std::move(req), timeout_s, result), asio::detached);
  ioc.run();
  return result;
}

}  // namespace tandem::bench
