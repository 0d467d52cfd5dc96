// Tokenizer: text <-> token ids for GGUF models, producing the same ids as llama.cpp for the
// same GGUF file. Two vocabulary kinds (tokenizer.ggml.model):
//   "gpt2"  byte-level BPE with merge ranks (GPT-2, SmolLM, Llama 3, Qwen2, ...);
//   "llama" SentencePiece-style BPE with token scores and <0xXX> byte fallback (Llama 1/2,
//           Mistral, TinyLlama, ...).
// StreamDecoder turns a stream of ids into text that is always valid UTF-8, for streaming.
//
// Byte-level BPE encoding, in order:
//   1. Special tokens (control, user-defined and unknown types) are cut out of the raw text
//      first, longest text first, each token taking all its non-overlapping occurrences
//      left to right before the next token is tried. With parse_special = false only
//      user-defined tokens are cut (control tokens' text is then ordinary text).
//   2. Each remaining text fragment is repaired to valid UTF-8 (unicode::RepairInputUtf8:
//      each invalid byte becomes U+FFFD) and split by the pre-tokenizer patterns chosen by
//      tokenizer.ggml.pre (see RegexSplitter).
//   3. Each piece is spelled in GPT-2's byte alphabet and merged by BPE: repeatedly the
//      adjacent pair with the lowest merge rank, leftmost first.
// Decoding maps normal tokens back through the byte alphabet and "<0xXX>" byte tokens to
// their byte; control tokens render as their text (or nothing, when asked), user-defined
// tokens as their text. A byte whose alphabet character is not in the vocabulary cannot be
// encoded and is dropped, as llama.cpp drops it (SmolLM2 lacks 04 06 13 14 16 1D F1 F2).
//
// SentencePiece-style encoding: special tokens are cut out as above; each text fragment
// that starts the input or follows a special token gets a leading space (when
// tokenizer.ggml.add_space_prefix, the default), spaces become U+2581, and adjacent symbols
// (initially UTF-8 characters) merge while their concatenation is a token, highest score
// first, leftmost on ties. A final symbol that is not a token is spelled as <0xXX> byte
// tokens. Input bytes are used as given (no UTF-8 repair). Decoding turns U+2581 back into
// spaces, byte tokens into their byte, and drops the one space the prefix added.
//
// Not supported: the "bert" (WordPiece), "t5" (Unigram) and "rwkv" vocabularies; FromGguf
// says so with an Unimplemented error.
//
// Known differences from llama.cpp (deliberate): a surrogate (ED A0..BF xx) or a value past
// U+10FFFF in the input becomes U+FFFD, where llama.cpp passes the raw value on (or throws);
// special tokens of equal length are tried in id order (llama.cpp's order is unspecified);
// pre-tokenizer character classes come from PCRE2's Unicode tables (10.42: Unicode 14),
// llama.cpp's from its own (newer) ones, so characters assigned after Unicode 14 may split
// differently.
//
// Invariants: the vocabulary is non-empty; every id stored (bos, eos, ..., merge results)
// is a valid index; Encode only returns valid ids.
//
// Thread safety: a Tokenizer is immutable after construction; all const methods may run
// concurrently. A StreamDecoder is a small mutable object owned by one stream (one thread at
// a time); it borrows the Tokenizer, which must outlive it.
#ifndef TANDEM_MODEL_TOKENIZER_H_
#define TANDEM_MODEL_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/gguf_file.h"
#include "model/unicode_regex_splitter.h"

namespace tandem::model {

// GGUF tokenizer.ggml.token_type values.
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// Everything the tokenizer reads from a model file, as plain values (FromGguf fills it;
// tests can build one by hand).
struct TokenizerData {
  std::string model = "gpt2";        // tokenizer.ggml.model: "gpt2" or "llama"
  std::string pre;                   // tokenizer.ggml.pre; empty = "default" (gpt2 only)
  std::vector<std::string> tokens;   // tokenizer.ggml.tokens, indexed by id
  std::vector<int32_t> token_types;  // tokenizer.ggml.token_type; empty = all normal
  std::vector<std::string> merges;   // tokenizer.ggml.merges, "left right", by rank (gpt2)
  std::vector<float> scores;         // tokenizer.ggml.scores (llama); empty = all 0
  bool add_space_prefix = true;      // tokenizer.ggml.add_space_prefix (llama)
  int32_t bos = -1, eos = -1, eot = -1, unk = -1, pad = -1;  // -1: not set
  bool add_bos = false;                                      // tokenizer.ggml.add_bos_token
  bool add_eos = false;                                      // tokenizer.ggml.add_eos_token
};

class Tokenizer {
 public:
  // Validates `data` (ids in range, a known model and pre-tokenizer, parsable merges).
  // Errors: Unimplemented for a tokenizer model other than "gpt2" and "llama";
  // InvalidArgument for an unknown pre-tokenizer (the message lists the supported ones) or
  // malformed data.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromData(TokenizerData data);
  // Reads the tokenizer.ggml.* metadata of `gguf`, then FromData.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& gguf);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids for `text` (any bytes; for gpt2 vocabularies invalid UTF-8 is read as U+FFFD
  // per bad byte, for llama ones it falls back to byte tokens). With
  // `parse_special`, control tokens written in the text (e.g. "<|im_start|>") become their
  // ids. With `add_special`, BOS / EOS are added when the model's metadata asks for them
  // (add_bos() / add_eos()); by default nothing is added.
  std::vector<int32_t> Encode(std::string_view text, bool parse_special = true,
                              bool add_special = false) const;

  // The bytes that `ids` stand for. With `render_special` (the default, so that
  // Decode(Encode(s)) == s) control and unknown tokens render as their text; without, as
  // nothing. The result is not necessarily valid UTF-8 (an id sequence may end inside a
  // character); use StreamDecoder or unicode::SanitizeUtf8 for text shown to users.
  // Out-of-range ids render as nothing. For SentencePiece vocabularies with a space prefix,
  // one leading space of the first token is dropped (the one Encode added).
  std::string Decode(absl::Span<const int32_t> ids, bool render_special = true) const;
  // Appends the bytes of one token (see Decode), without the first-token space rule.
  void AppendPiece(int32_t id, bool render_special, std::string* out) const;
  // Whether Decode drops one leading space of the first token (see above).
  bool strips_leading_space() const { return spm_ && add_space_prefix_; }
  // "gpt2" or "llama".
  std::string_view model() const { return spm_ ? "llama" : "gpt2"; }

  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  // The vocabulary entry as stored (byte-alphabet spelling for normal tokens).
  const std::string& TokenText(int32_t id) const;
  TokenType TokenTypeOf(int32_t id) const;
  // Control or unknown tokens: structure, not text.
  bool IsSpecial(int32_t id) const;
  // Whether generation should stop at `id`: EOS, EOT, and control tokens whose text is a
  // known end-of-turn marker ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", ...).
  bool IsEndOfGeneration(int32_t id) const;
  // The id whose vocabulary text is exactly `text`, or -1.
  int32_t TokenId(std::string_view text) const;

  int32_t bos_id() const { return bos_; }
  int32_t eos_id() const { return eos_; }
  int32_t eot_id() const { return eot_; }
  int32_t pad_id() const { return pad_; }
  int32_t unk_id() const { return unk_; }
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  const std::string& pre() const { return pre_; }
  // The pre-tokenizer (gpt2 vocabularies only).
  const RegexSplitter& splitter() const { return *splitter_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t merged;  // id of the concatenation
  };

  // Working memory of EncodePiece, reused across the pieces of one Encode call.
  struct BpeScratch {
    struct Candidate {
      int32_t rank, left, right, left_id, right_id, merged;
    };
    std::vector<int32_t> ids, prev, next;  // per byte position: symbol id, linked list
    std::vector<Candidate> heap;           // pending merges, min-heap by (rank, left)
  };

  Tokenizer() = default;
  // Appends the ids of one pre-tokenized piece (UTF-8 bytes) to `out`.
  void EncodePiece(std::string_view piece, BpeScratch* scratch, std::vector<int32_t>* out) const;
  // Appends the ids of a text fragment without special tokens.
  void EncodeText(std::string_view fragment, std::vector<int32_t>* out) const;
  // SentencePiece-style: appends the ids of an escaped (U+2581 for spaces) fragment.
  void EncodeSpm(std::string_view text, std::vector<int32_t>* out) const;

  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  // Constant after construction.
  std::string pre_;
  std::vector<std::string> tokens_;
  std::vector<TokenType> types_;
  std::vector<std::string> pieces_;  // decoded bytes of each normal / user-defined token
  absl::flat_hash_map<std::string, int32_t> token_to_id_;
  absl::flat_hash_map<uint64_t, Merge> merges_;  // (left id, right id) -> rank, result
  // gpt2: id of each byte's alphabet character; llama: id of its <0xXX> token; or -1.
  int32_t byte_token_[256];
  // Tokens cut out before BPE: all special kinds (longest first), and user-defined only.
  std::vector<int32_t> special_all_;
  std::vector<int32_t> special_user_;
  std::vector<bool> end_of_generation_;
  std::unique_ptr<RegexSplitter> splitter_;  // gpt2 only
  bool ignore_merges_ = false;  // llama3-style: a piece that is a whole token is not merged
  bool spm_ = false;            // a "llama" (SentencePiece-style) vocabulary
  bool add_space_prefix_ = false;
  std::vector<float> scores_;  // spm: merge priority of each token
  int32_t bos_ = -1, eos_ = -1, eot_ = -1, unk_ = -1, pad_ = -1;
  bool add_bos_ = false, add_eos_ = false;
};

// Incremental detokenizer for streaming: Push() returns the text that became complete with
// this token, never part of a UTF-8 character; bytes of an unfinished character are held
// until the next Push. Invalid byte sequences come out as U+FFFD (one per maximal
// ill-formed subpart); Flush() ends the stream, emitting held bytes of a character that
// never completed as U+FFFD. The concatenated output equals
// unicode::SanitizeUtf8(tokenizer.Decode(ids, render_special)).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool render_special = true)
      : tokenizer_(tokenizer), render_special_(render_special) {}

  std::string Push(int32_t id);
  std::string Flush();
  // Bytes held back, waiting for the rest of a character.
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer& tokenizer_;
  const bool render_special_;
  bool first_ = true;  // no token pushed yet (for the leading-space rule)
  std::string pending_;
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_TOKENIZER_H_
