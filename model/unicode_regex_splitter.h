// RegexSplitter: the pre-tokenization step of byte-level BPE. A list of PCRE2 patterns
// (UTF + UCP mode, JIT-compiled when the library supports it) is applied in order; each
// pattern splits every piece produced so far into its matches and the unmatched gaps
// between them, so both become pieces and no byte is ever dropped. This is the semantics
// llama.cpp uses for its pre-tokenizer lists (e.g. "\p{N}" then the GPT-2 pattern for
// SmolLM), which tandem must reproduce to produce the same token ids.
//
// Thread safety: immutable after Create(); Split() may run concurrently from any thread
// (each call owns its PCRE2 match data).
// Invariants: the pieces returned by Split() are non-empty, in order, and tile the input.
#ifndef TANDEM_MODEL_UNICODE_REGEX_SPLITTER_H_
#define TANDEM_MODEL_UNICODE_REGEX_SPLITTER_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace tandem::model {

class RegexSplitter {
 public:
  // A piece of the input: [begin, end) in bytes.
  using Piece = std::pair<size_t, size_t>;

  // Compiles `patterns` (PCRE2 syntax). InvalidArgument names the pattern and the offset
  // of the error when one does not compile.
  static absl::StatusOr<std::unique_ptr<RegexSplitter>> Create(std::vector<std::string> patterns);
  ~RegexSplitter();
  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;

  // Splits `text`, which must be valid UTF-8 (see unicode::RepairInputUtf8), and replaces
  // `*pieces` with the result. Empty text gives no pieces.
  void Split(std::string_view text, std::vector<Piece>* pieces) const;

  const std::vector<std::string>& patterns() const { return patterns_; }
  bool jit() const { return jit_; }

 private:
  struct Compiled;
  RegexSplitter() = default;

  // Constant after construction.
  std::vector<std::string> patterns_;
  std::vector<std::unique_ptr<Compiled>> compiled_;  // one per pattern
  bool jit_ = false;                                 // every pattern is JIT-compiled
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_UNICODE_REGEX_SPLITTER_H_
