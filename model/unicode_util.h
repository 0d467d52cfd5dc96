// UTF-8 helpers for the tokenizer: a lenient decoder that repairs input the way llama.cpp
// does (so token ids match it on malformed text), a strict validator/repairer for output
// (what a client may safely receive), and GPT-2's byte-level BPE alphabet.
//
// Thread safety: pure functions over their arguments; the alphabet tables are immutable
// statics initialised on first use.
#ifndef TANDEM_MODEL_UNICODE_UTIL_H_
#define TANDEM_MODEL_UNICODE_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tandem::model::unicode {

inline constexpr uint32_t kReplacementChar = 0xFFFD;

// Appends the UTF-8 encoding of `cp` (which must be <= 0x10FFFF) to `out`.
void AppendUtf8(uint32_t cp, std::string* out);

// Rewrites `text` into well-formed UTF-8 the way the reference tokenizer (llama.cpp) reads
// input: a byte that does not start a sequence whose continuation bytes are all present
// becomes one U+FFFD and decoding resumes at the next byte. Overlong forms are accepted
// and re-encoded canonically (llama.cpp accepts them too). Surrogates and values past
// U+10FFFF, which llama.cpp would pass through or reject with an exception, become U+FFFD
// so that the result is always valid UTF-8 (PCRE2 requires that).
std::string RepairInputUtf8(std::string_view text);

// Strict UTF-8 (RFC 3629: no overlongs, no surrogates, <= U+10FFFF) repair for output.
// Appends to `out` every complete, valid sequence of `in`, each invalid byte run as one
// U+FFFD per maximal ill-formed subpart (the WHATWG / Python "replace" convention), and
// returns how many bytes of `in` were consumed. With `final` false, a trailing sequence
// that is still incomplete-but-valid-so-far is left unconsumed so that a later call with
// more bytes can finish it; with `final` true it is replaced by U+FFFD. Because the
// decision for each byte depends only on bytes already seen, feeding the input in pieces
// (carrying unconsumed bytes forward) gives the same output as one call on the whole.
size_t AppendValidUtf8(std::string_view in, bool final, std::string* out);

// AppendValidUtf8 over a whole string.
std::string SanitizeUtf8(std::string_view in);

bool IsValidUtf8(std::string_view in);

// GPT-2 byte-level alphabet: each byte maps to one printable code point (printable ASCII
// and most of Latin-1 map to themselves, the rest to U+0100..U+0143), so any byte string
// can be spelled with vocabulary characters.
uint32_t ByteToCodepoint(uint8_t byte);
// The UTF-8 spelling of ByteToCodepoint(byte) (1 or 2 bytes).
std::string_view ByteToUtf8(uint8_t byte);
// Inverse of ByteToCodepoint; -1 when `cp` is not in the alphabet.
int CodepointToByte(uint32_t cp);

// Decodes one code point from valid UTF-8 at `s[*pos]` and advances `*pos`. Requires
// well-formed input (e.g. a vocabulary string or RepairInputUtf8 output); a malformed
// byte is returned as itself (a value < 0x100) and skipped.
uint32_t NextCodepoint(std::string_view s, size_t* pos);

}  // namespace tandem::model::unicode

#endif  // TANDEM_MODEL_UNICODE_UTIL_H_
