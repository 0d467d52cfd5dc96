#include "model/unicode_regex_splitter.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"

namespace tandem::model {

struct RegexSplitter::Compiled {
  pcre2_code* code = nullptr;
  ~Compiled() { pcre2_code_free(code); }
};

namespace {

struct MatchDataDeleter {
  void operator()(pcre2_match_data* md) const { pcre2_match_data_free(md); }
};

// Length of the UTF-8 sequence starting with `lead` (input is valid UTF-8).
size_t SequenceLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RegexSplitter>> RegexSplitter::Create(
    std::vector<std::string> patterns) {
  std::unique_ptr<RegexSplitter> splitter(new RegexSplitter());
  splitter->jit_ = true;
  for (const std::string& pattern : patterns) {
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    auto compiled = std::make_unique<Compiled>();
    compiled->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
    if (compiled->code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return absl::InvalidArgumentError(absl::StrCat("pre-tokenizer pattern '", pattern,
                                                     "' does not compile at offset ", error_offset,
                                                     ": ", reinterpret_cast<const char*>(message)));
    }
    // JIT is an optimisation only: without it pcre2_match interprets the same pattern.
    if (pcre2_jit_compile(compiled->code, PCRE2_JIT_COMPLETE) != 0) splitter->jit_ = false;
    splitter->compiled_.push_back(std::move(compiled));
  }
  splitter->patterns_ = std::move(patterns);
  return splitter;
}

RegexSplitter::~RegexSplitter() = default;

void RegexSplitter::Split(std::string_view text, std::vector<Piece>* pieces) const {
  pieces->clear();
  if (text.empty()) return;
  pieces->emplace_back(0, text.size());
  std::vector<Piece> next;
  const auto* subject_base = reinterpret_cast<PCRE2_SPTR>(text.data());
  for (const auto& compiled : compiled_) {
    std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(
        pcre2_match_data_create_from_pattern(compiled->code, nullptr));
    next.clear();
    next.reserve(pieces->size() * 2);
    for (const auto& [begin, end] : *pieces) {
      // The subject is the piece alone, so look-arounds cannot see across piece boundaries
      // (a pattern's "(?!\S)" treats the end of a piece as the end of the text).
      const PCRE2_SPTR subject = subject_base + begin;
      const size_t length = end - begin;
      size_t pos = 0;   // where the next search starts, relative to begin
      size_t last = 0;  // end of the last emitted piece, relative to begin
      while (pos < length) {
        int rc = pcre2_match(compiled->code, subject, length, pos, PCRE2_NO_UTF_CHECK, md.get(),
                             nullptr);
        if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
          // The JIT's fixed-size stack ran out (e.g. an unusually long run): the interpreter
          // keeps its backtracking state on the heap, so ask it instead.
          rc = pcre2_match(compiled->code, subject, length, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                           md.get(), nullptr);
        }
        // Past the interpreter's limits (default heap limit 20 MB), the rest of the piece
        // is kept whole rather than failing the request.
        if (rc < 0) break;
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
        const size_t ms = ov[0], me = ov[1];
        if (me == ms) {
          if (ms >= length) break;
          // An empty match produces no piece; step over one code point and search again.
          pos = ms + SequenceLength(static_cast<unsigned char>(text[begin + ms]));
          continue;
        }
        if (ms > last) next.emplace_back(begin + last, begin + ms);
        next.emplace_back(begin + ms, begin + me);
        last = pos = me;
      }
      if (last < length) next.emplace_back(begin + last, end);
    }
    pieces->swap(next);
  }
}

}  // namespace tandem::model
