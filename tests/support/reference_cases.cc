#include "tests/support/reference_cases.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace tandem::testing {

std::string SourceDir() {
  const char* dir = std::getenv("TANDEM_SOURCE_DIR");
#ifdef TANDEM_SOURCE_DIR
  return dir != nullptr ? dir : TANDEM_SOURCE_DIR;
#else
  return dir != nullptr ? dir : ".";
#endif
}

std::string HexToBytes(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::string Printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

absl::StatusOr<TokenizerCases> LoadTokenizerCases(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("cannot read " + path);
  TokenizerCases out;
  std::string line;
  bool header = true;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return absl::InvalidArgumentError(path + ": a line is not JSON");
    if (header) {
      header = false;
      out.expected_count = j.at("count").get<int>();
      continue;
    }
    TokenizerCase c;
    if (j.contains("hex")) {
      c.text = HexToBytes(j.at("hex").get<std::string>());
      c.from_hex = true;
    } else {
      c.text = j.at("text").get<std::string>();
    }
    c.special = j.value("special", true);
    c.ids = j.at("ids").get<std::vector<int32_t>>();
    c.decoded =
        j.contains("decoded_hex") ? HexToBytes(j.at("decoded_hex").get<std::string>()) : c.text;
    out.cases.push_back(std::move(c));
  }
  return out;
}

}  // namespace tandem::testing
