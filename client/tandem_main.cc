// `tandem`: the command-line client (client/cli.h).
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "client/cli.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  const char* env_key = std::getenv("TANDEM_API_KEY");
  return tandem::client::RunCli(args, std::cin, std::cout, std::cerr,
                                /*interactive=*/isatty(STDIN_FILENO) != 0,
                                env_key != nullptr ? env_key : "");
}
