#include "client/cli.h"

#include <charconv>
#include <cmath>
#include <istream>
#include <memory>
#include <ostream>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/grpc_client.h"
#include "client/http_client.h"

namespace tandem::client {
namespace {

constexpr char kUsage[] =
    "usage: tandem [--url http://host:port | --grpc host:port] [--api-key KEY] [--model NAME]\n"
    "              COMMAND [flags]\n"
    "commands:\n"
    "  chat      interactive chat, streaming replies; /exit or end of input quits\n"
    "            [--system TEXT] [--max-tokens N] [--temperature T] [--seed S]\n"
    "  complete  --prompt TEXT [--max-tokens N] [--temperature T] [--seed S]\n"
    "  health    check that the server is serving\n"
    "  models    list the served models\n"
    "defaults: --url http://127.0.0.1:8000, --api-key from $TANDEM_API_KEY\n";

template <typename T>
bool ParseNumber(std::string_view text, T* out) {
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, *out);
  return ec == std::errc() && ptr == end && !text.empty();
}

bool ParseFloat(const std::string& text, float* out) {
  // std::from_chars for float is in libstdc++ 11+, but strtof is simpler to reason about.
  if (text.empty()) return false;
  char* end = nullptr;
  *out = std::strtof(text.c_str(), &end);
  return end == text.c_str() + text.size() && std::isfinite(*out);
}

std::string Quoted(const std::string& s) { return absl::StrCat("'", s, "'"); }

absl::StatusOr<std::unique_ptr<Client>> MakeClient(const CliOptions& options) {
  if (!options.grpc_target.empty()) {
    GrpcClientOptions grpc_options;
    grpc_options.target = options.grpc_target;
    grpc_options.api_key = options.api_key;
    absl::StatusOr<std::unique_ptr<GrpcClient>> client = GrpcClient::Create(grpc_options);
    if (!client.ok()) return client.status();
    return std::unique_ptr<Client>(std::move(*client));
  }
  HttpClientOptions http_options;
  http_options.url = options.url;
  http_options.api_key = options.api_key;
  absl::StatusOr<std::unique_ptr<HttpClient>> client = HttpClient::Create(http_options);
  if (!client.ok()) return client.status();
  return std::unique_ptr<Client>(std::move(*client));
}

GenerateParams BaseParams(const CliOptions& options) {
  GenerateParams params;
  params.model = options.model;
  params.max_tokens = options.max_tokens;
  params.temperature = options.temperature;
  params.seed = options.seed;
  return params;
}

int ServerError(std::ostream& err, const absl::Status& status) {
  std::string message(status.message());
  for (char& c : message) {
    if (c == '\n' || c == '\r') c = ' ';  // one line, whatever the server sent
  }
  err << "tandem: " << absl::StatusCodeToString(status.code()) << ": " << message << "\n";
  return kExitServerError;
}

int RunComplete(Client& client, const CliOptions& options, std::ostream& out, std::ostream& err) {
  GenerateParams params = BaseParams(options);
  params.prompt = *options.prompt;
  absl::StatusOr<Usage> usage = client.Generate(params, [&](const TextDelta& delta) {
    out << delta.text << std::flush;
    return true;
  });
  out << "\n" << std::flush;
  if (!usage.ok()) return ServerError(err, usage.status());
  return kExitOk;
}

int RunChat(Client& client, const CliOptions& options, std::istream& in, std::ostream& out,
            std::ostream& err, bool interactive) {
  GenerateParams params = BaseParams(options);
  params.chat = true;
  if (!options.system.empty()) params.messages.push_back({"system", options.system});
  std::string line;
  for (;;) {
    if (interactive) out << "> " << std::flush;
    if (!std::getline(in, line)) break;
    if (line == "/exit" || line == "/quit") break;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    params.messages.push_back({"user", line});
    std::string reply;
    absl::StatusOr<Usage> usage = client.Generate(params, [&](const TextDelta& delta) {
      out << delta.text << std::flush;
      reply += delta.text;
      return true;
    });
    out << "\n" << std::flush;
    if (!usage.ok()) return ServerError(err, usage.status());
    params.messages.push_back({"assistant", std::move(reply)});
  }
  if (interactive) out << "\n";
  return kExitOk;
}

}  // namespace

absl::StatusOr<CliOptions> ParseCliArgs(const std::vector<std::string>& args,
                                        const std::string& env_api_key) {
  CliOptions options;
  options.api_key = env_api_key;
  bool url_set = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "-h" || arg == "--help") {
      options.command = "help";
      return options;
    }
    if (arg.rfind("--", 0) != 0) {
      if (!options.command.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("unexpected argument ", Quoted(arg)));
      }
      if (arg != "chat" && arg != "complete" && arg != "health" && arg != "models") {
        return absl::InvalidArgumentError(
            absl::StrCat("unknown command ", Quoted(arg), " (chat, complete, health, models)"));
      }
      options.command = arg;
      continue;
    }
    // --flag=value or --flag value; every flag takes a value.
    std::string name = arg.substr(2);
    std::string value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    } else {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
      value = args[++i];
    }
    if (name == "url") {
      options.url = value;
      url_set = true;
    } else if (name == "grpc") {
      options.grpc_target = value;
    } else if (name == "api-key") {
      options.api_key = value;
    } else if (name == "model") {
      options.model = value;
    } else if (name == "system") {
      options.system = value;
    } else if (name == "prompt") {
      options.prompt = value;
    } else if (name == "max-tokens") {
      int n = 0;
      if (!ParseNumber(value, &n) || n < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("--max-tokens must be a positive integer, got ", Quoted(value)));
      }
      options.max_tokens = n;
    } else if (name == "temperature") {
      float t = 0;
      if (!ParseFloat(value, &t) || t < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("--temperature must be a number >= 0, got ", Quoted(value)));
      }
      options.temperature = t;
    } else if (name == "seed") {
      uint64_t seed = 0;
      if (!ParseNumber(value, &seed)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--seed must be a non-negative integer, got ", Quoted(value)));
      }
      options.seed = seed;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
  }
  if (options.command.empty()) {
    return absl::InvalidArgumentError("no command given (chat, complete, health, models)");
  }
  if (url_set && !options.grpc_target.empty()) {
    return absl::InvalidArgumentError("give --url or --grpc, not both");
  }
  if (options.command == "complete" && !options.prompt.has_value()) {
    return absl::InvalidArgumentError("complete needs --prompt TEXT");
  }
  if (options.command != "complete" && options.prompt.has_value()) {
    return absl::InvalidArgumentError("--prompt is for complete");
  }
  if (options.command != "chat" && !options.system.empty()) {
    return absl::InvalidArgumentError("--system is for chat");
  }
  return options;
}

int RunCli(const std::vector<std::string>& args, std::istream& in, std::ostream& out,
           std::ostream& err, bool interactive, const std::string& env_api_key) {
  absl::StatusOr<CliOptions> options = ParseCliArgs(args, env_api_key);
  if (!options.ok()) {
    err << "tandem: " << options.status().message() << " (tandem --help for usage)\n";
    return kExitUsage;
  }
  if (options->command == "help") {
    out << kUsage;
    return kExitOk;
  }
  absl::StatusOr<std::unique_ptr<Client>> client = MakeClient(*options);
  if (!client.ok()) {
    err << "tandem: " << client.status().message() << "\n";
    return kExitUsage;  // only a malformed --url / --grpc fails here
  }
  if (options->command == "health") {
    if (absl::Status status = (*client)->Health(); !status.ok()) return ServerError(err, status);
    out << "serving\n";
    return kExitOk;
  }
  if (options->command == "models") {
    absl::StatusOr<std::vector<ModelEntry>> models = (*client)->ListModels();
    if (!models.ok()) return ServerError(err, models.status());
    for (const ModelEntry& m : *models) {
      out << m.id;
      if (m.max_model_len > 0) out << "\tmax_model_len=" << m.max_model_len;
      out << "\n";
    }
    return kExitOk;
  }
  if (options->command == "complete") return RunComplete(**client, *options, out, err);
  return RunChat(**client, *options, in, out, err, interactive);
}

}  // namespace tandem::client
