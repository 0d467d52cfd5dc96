// The `tandem` command line: argument parsing and the commands (chat, complete, health,
// models), over HTTP (HttpClient) or gRPC (GrpcClient). tandem_main.cc only forwards argv here,
// so tests run the CLI in-process with their own streams.
//
//   tandem [global flags] COMMAND [flags]
//   global: --url http://host:port (default http://127.0.0.1:8000) | --grpc host:port,
//           --api-key KEY (default: $TANDEM_API_KEY), --model NAME (default: the served model)
//   chat      [--system TEXT] [--max-tokens N] [--temperature T] [--seed S]
//   complete  --prompt TEXT [--max-tokens N] [--temperature T] [--seed S]
//   health
//   models
// Flags may appear before or after the command, as `--flag value` or `--flag=value`.
//
// Exit codes: 0 success, 1 the server failed the request (or could not be reached), 2 usage
// error. Every error is one line on stderr starting with "tandem: ".
//
// Thread safety: RunCli keeps no global state; it may run on any thread.
#ifndef TANDEM_CLIENT_CLI_H_
#define TANDEM_CLIENT_CLI_H_

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tandem::client {

inline constexpr int kExitOk = 0;
inline constexpr int kExitServerError = 1;
inline constexpr int kExitUsage = 2;

struct CliOptions {
  std::string command;  // "chat", "complete", "health", "models" or "help"
  std::string url = "http://127.0.0.1:8000";
  std::string grpc_target;  // set: use gRPC instead of HTTP
  std::string api_key;
  std::string model;
  std::string system;                 // chat: the system message
  std::optional<std::string> prompt;  // complete
  std::optional<int> max_tokens;
  std::optional<float> temperature;
  std::optional<uint64_t> seed;
};

// `args` excludes argv[0]. InvalidArgument with a one-line message for a usage error.
// `env_api_key`: the default for --api-key ($TANDEM_API_KEY), may be empty.
absl::StatusOr<CliOptions> ParseCliArgs(const std::vector<std::string>& args,
                                        const std::string& env_api_key = "");

// Runs the CLI; returns the exit code. `in` feeds `tandem chat`; `interactive` prints a
// prompt before each line of chat input.
int RunCli(const std::vector<std::string>& args, std::istream& in, std::ostream& out,
           std::ostream& err, bool interactive = false, const std::string& env_api_key = "");

}  // namespace tandem::client

#endif  // TANDEM_CLIENT_CLI_H_
