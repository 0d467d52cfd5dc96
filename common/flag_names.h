// Flag spelling shared by tandem's executables. vLLM and most serving tools spell flags with
// dashes (--max-num-seqs); Abseil names them with underscores (--max_num_seqs). Rewriting the
// command line before absl::ParseCommandLine lets either spelling through.
// Thread safety: a pure function.
#ifndef TANDEM_COMMON_FLAG_NAMES_H_
#define TANDEM_COMMON_FLAG_NAMES_H_

#include <algorithm>
#include <string>
#include <vector>

namespace tandem {

// Returns argv[0, argc) with every '-' in the name of a "--name" or "--name=value" argument
// turned into '_'. Left as they are: the value after '=', argv[0], arguments that do not start
// with "--" (positional arguments, values passed as the next argument, single-dash arguments),
// and everything from a lone "--" on.
inline std::vector<std::string> UnderscoreFlagNames(int argc, const char* const* argv) {
  std::vector<std::string> args(argv, argv + argc);
  for (size_t i = 1; i < args.size(); ++i) {
    std::string& a = args[i];
    if (a == "--") break;
    if (a.rfind("--", 0) != 0) continue;
    const size_t name_end = std::min(a.find('='), a.size());
    std::replace(a.begin() + 2, a.begin() + name_end, '-', '_');
  }
  return args;
}

}  // namespace tandem

#endif  // TANDEM_COMMON_FLAG_NAMES_H_
