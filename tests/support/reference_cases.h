// Readers of the llama.cpp reference files under tests/reference/ (tests/reference/README.md
// describes their formats).
//
// Thread safety: pure functions.
#ifndef TANDEM_TESTS_SUPPORT_REFERENCE_CASES_H_
#define TANDEM_TESTS_SUPPORT_REFERENCE_CASES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tandem::testing {

// The project's source folder: $TANDEM_SOURCE_DIR, else the one the tests were built from.
std::string SourceDir();

// One line of a tokenizer_cases.jsonl.
struct TokenizerCase {
  std::string text;
  bool special = true;
  bool from_hex = false;  // malformed UTF-8 input
  std::vector<int32_t> ids;
  // What llama.cpp's detokenizer gives back for `ids` (special tokens rendered): `text`
  // itself, except for malformed UTF-8 (repaired) and bytes missing from the vocabulary.
  std::string decoded;
};

struct TokenizerCases {
  std::vector<TokenizerCase> cases;
  int expected_count = 0;  // the header's count
};

// Reads a tokenizer_cases.jsonl (header line, then one case per line).
absl::StatusOr<TokenizerCases> LoadTokenizerCases(const std::string& path);

std::string HexToBytes(const std::string& hex);
// `s` with newlines and control bytes escaped, for failure messages.
std::string Printable(const std::string& s);

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_SUPPORT_REFERENCE_CASES_H_
