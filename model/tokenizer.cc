#include "model/tokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/check.h"
#include "model/unicode_util.h"

namespace tandem::model {
namespace {

// Pre-tokenizer patterns. They are the pre-tokenizers published with each model family's
// tokenizer.json, written for PCRE2. Whitespace is spelled [\s\x{85}] rather than \s
// because PCRE2's \s (Unicode mode) omits U+0085 while the reference (llama.cpp, and the
// Unicode White_Space property) counts it as whitespace.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\x{85}\p{L}\p{N}]+)"
    R"(|[\s\x{85}]+(?![^\s\x{85}]))";
constexpr char kLlama3Pattern[] =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+)"
    R"(|\p{N}{1,3}| ?[^\s\x{85}\p{L}\p{N}]+[\r\n]*|[\s\x{85}]*[\r\n]+)"
    R"(|[\s\x{85}]+(?![^\s\x{85}])|[\s\x{85}]+)";
constexpr char kQwen2Pattern[] =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+)"
    R"(|\p{N}| ?[^\s\x{85}\p{L}\p{N}]+[\r\n]*|[\s\x{85}]*[\r\n]+)"
    R"(|[\s\x{85}]+(?![^\s\x{85}])|[\s\x{85}]+)";

struct PreTokenizer {
  std::vector<std::string> patterns;
  bool ignore_merges = false;  // a piece that is already a token is emitted whole
  bool default_add_bos = false;
};

constexpr char kSupportedPre[] =
    "default, gpt-2 (also gpt2, phi-2, roberta-bpe, mpt, olmo, jais), smollm (also "
    "starcoder, refact, command-r, codeshell, exaone, minerva-7b), llama3 (also llama-v3, "
    "llama-bpe, falcon3, dbrx, smaug-bpe), qwen2 (also deepseek-r1-qwen, stablelm2, megrez)";

// This abseil build has its own string_view type; heterogeneous lookups and StrCat need it.
absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool OneOf(std::string_view s, std::initializer_list<std::string_view> names) {
  return std::find(names.begin(), names.end(), s) != names.end();
}

absl::StatusOr<PreTokenizer> PreTokenizerFor(std::string_view pre) {
  if (pre.empty() || pre == "default") {
    // llama.cpp's fallback for BPE vocabularies that name no pre-tokenizer.
    return PreTokenizer{{R"([\p{P}\$\+<=>\^~\|]+)", kGpt2Pattern, R"(\p{N}+)", "[0-9][0-9][0-9]"}};
  }
  if (OneOf(pre, {"gpt-2", "gpt2", "phi-2", "roberta-bpe", "mpt", "olmo", "jais"})) {
    return PreTokenizer{{kGpt2Pattern}};
  }
  if (OneOf(pre,
            {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"})) {
    // Every digit is its own piece before the GPT-2 split.
    return PreTokenizer{{R"(\p{N})", kGpt2Pattern}};
  }
  if (OneOf(pre, {"llama3", "llama-v3", "llama-bpe", "falcon3"})) {
    return PreTokenizer{{kLlama3Pattern}, /*ignore_merges=*/true, /*default_add_bos=*/true};
  }
  if (OneOf(pre, {"dbrx", "smaug-bpe"})) return PreTokenizer{{kLlama3Pattern}};
  if (OneOf(pre, {"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"})) {
    return PreTokenizer{{kQwen2Pattern}};
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported pre-tokenizer '", Absl(pre),
                   "' (tokenizer.ggml.pre); supported: ", kSupportedPre));
}

// Control-token texts that end a turn in the chat formats tandem serves.
constexpr std::string_view kEndOfTurnTexts[] = {
    "<|im_end|>",    "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>",
    "<end_of_turn>", "<|eom_id|>",    "</s>",       "<EOT>",
};

// SentencePiece's visible space, U+2581.
constexpr char kSpmSpace[] = "\xE2\x96\x81";

// "<0x41>" -> 0x41; -1 when `text` is not a byte token's text.
int ParseByteToken(std::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return -1;
  int value = 0;
  for (char c : text.substr(3, 2)) {
    value <<= 4;
    if (c >= '0' && c <= '9') {
      value |= c - '0';
    } else if (c >= 'A' && c <= 'F') {
      value |= c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      value |= c - 'a' + 10;
    } else {
      return -1;
    }
  }
  return value;
}

std::string ByteTokenText(uint8_t byte) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  return std::string{'<', '0', 'x', kHex[byte >> 4], kHex[byte & 15], '>'};
}

bool IsSpecialType(TokenType t) { return t == TokenType::kControl || t == TokenType::kUnknown; }

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromData(TokenizerData data) {
  const bool spm = data.model == "llama";
  if (data.model != "gpt2" && !spm) {
    return absl::UnimplementedError(
        absl::StrCat("unsupported tokenizer model '", data.model, "' (supported: gpt2, llama)"));
  }
  PreTokenizer pre;
  if (!spm) {
    TANDEM_ASSIGN_OR_RETURN(pre, PreTokenizerFor(data.pre));
  }
  const size_t n = data.tokens.size();
  if (n == 0) return absl::InvalidArgumentError("tokenizer has an empty vocabulary");
  if (n > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("tokenizer vocabulary is too large");
  }
  if (!data.token_types.empty() && data.token_types.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer has ", n, " tokens but ", data.token_types.size(), " token types"));
  }
  const std::initializer_list<std::pair<const char*, int32_t>> special_ids = {
      {"bos", data.bos},
      {"eos", data.eos},
      {"eot", data.eot},
      {"unknown", data.unk},
      {"padding", data.pad}};
  for (const auto& [name, id] : special_ids) {
    if (id < -1 || id >= static_cast<int64_t>(n)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tokenizer ", name, " token id ", id, " is outside the vocabulary (", n, " tokens)"));
    }
  }

  if (spm && !data.scores.empty() && data.scores.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer has ", n, " tokens but ", data.scores.size(), " scores"));
  }

  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->spm_ = spm;
  t->add_space_prefix_ = spm && data.add_space_prefix;
  if (spm) {
    t->scores_ = data.scores.empty() ? std::vector<float>(n, 0.0f) : std::move(data.scores);
  }
  t->pre_ = spm ? data.pre : (data.pre.empty() ? "default" : data.pre);
  t->ignore_merges_ = pre.ignore_merges;
  t->bos_ = data.bos;
  t->eos_ = data.eos;
  t->eot_ = data.eot;
  t->unk_ = data.unk;
  t->pad_ = data.pad;
  t->add_bos_ = data.add_bos;
  t->add_eos_ = data.add_eos;
  if (!spm) {
    TANDEM_ASSIGN_OR_RETURN(t->splitter_, RegexSplitter::Create(std::move(pre.patterns)));
  }

  t->types_.resize(n, TokenType::kNormal);
  for (size_t i = 0; i < data.token_types.size(); ++i) {
    const int32_t v = data.token_types[i];
    if (v < 0 || v > static_cast<int32_t>(TokenType::kByte)) {
      return absl::InvalidArgumentError(absl::StrCat("token ", i, " has unknown token type ", v));
    }
    t->types_[i] = static_cast<TokenType>(v);
  }
  t->tokens_ = std::move(data.tokens);
  t->token_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    // A repeated text maps to its last id, as in the reference implementation.
    t->token_to_id_[t->tokens_[i]] = static_cast<int32_t>(i);
  }

  // Decoded bytes of every token. Normal gpt2 tokens are spelled in the byte alphabet (a
  // character outside it, in a malformed vocabulary, is kept as its own UTF-8); normal
  // llama tokens spell spaces as U+2581; byte tokens "<0xXX>" stand for one byte.
  t->pieces_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& text = t->tokens_[i];
    switch (t->types_[i]) {
      case TokenType::kNormal: {
        if (spm) {
          t->pieces_[i] = absl::StrReplaceAll(text, {{kSpmSpace, " "}});
          break;
        }
        std::string& piece = t->pieces_[i];
        for (size_t pos = 0; pos < text.size();) {
          const size_t start = pos;
          const uint32_t cp = unicode::NextCodepoint(text, &pos);
          const int byte = unicode::CodepointToByte(cp);
          if (byte >= 0) {
            piece.push_back(static_cast<char>(byte));
          } else {
            piece.append(text, start, pos - start);
          }
        }
        break;
      }
      case TokenType::kControl:
      case TokenType::kUnknown:
      case TokenType::kUserDefined:
        t->pieces_[i] = text;
        break;
      case TokenType::kByte: {
        const int byte = ParseByteToken(text);
        if (byte >= 0) t->pieces_[i] = std::string(1, static_cast<char>(byte));
        break;
      }
      default:
        break;  // unused and undefined tokens render as nothing
    }
  }

  for (int b = 0; b < 256; ++b) {
    int32_t id = -1;
    if (spm) {
      // llama.cpp's order: the <0xXX> byte token, else a token that is the byte itself.
      id = t->TokenId(ByteTokenText(static_cast<uint8_t>(b)));
      if (id < 0) id = t->TokenId(std::string(1, static_cast<char>(b)));
    } else {
      id = t->TokenId(unicode::ByteToUtf8(static_cast<uint8_t>(b)));
    }
    t->byte_token_[b] = id;
  }

  if (spm) data.merges.clear();  // SentencePiece vocabularies merge by score, not rank
  t->merges_.reserve(data.merges.size());
  std::string joined;
  for (size_t rank = 0; rank < data.merges.size(); ++rank) {
    const std::string& m = data.merges[rank];
    const size_t space = m.find(' ', 1);
    if (space == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer merge #", rank, " '", m, "' is not two space-separated parts"));
    }
    const std::string_view left = std::string_view(m).substr(0, space);
    const std::string_view right = std::string_view(m).substr(space + 1);
    joined.assign(left);
    joined.append(right);
    auto l = t->token_to_id_.find(Absl(left));
    auto r = t->token_to_id_.find(Absl(right));
    auto j = t->token_to_id_.find(joined);
    // A merge whose parts or result are not tokens can never apply to token symbols.
    if (l == t->token_to_id_.end() || r == t->token_to_id_.end() || j == t->token_to_id_.end()) {
      continue;
    }
    // The first (lowest-rank) occurrence of a pair wins.
    t->merges_.try_emplace(PairKey(l->second, r->second),
                           Merge{static_cast<int32_t>(rank), j->second});
  }

  t->end_of_generation_.assign(n, false);
  for (size_t i = 0; i < n; ++i) {
    const TokenType type = t->types_[i];
    if (type == TokenType::kControl || type == TokenType::kUnknown ||
        type == TokenType::kUserDefined) {
      if (t->tokens_[i].empty()) continue;  // an empty text can never be matched
      t->special_all_.push_back(static_cast<int32_t>(i));
      if (type == TokenType::kUserDefined) t->special_user_.push_back(static_cast<int32_t>(i));
    }
    if (type == TokenType::kControl &&
        std::find(std::begin(kEndOfTurnTexts), std::end(kEndOfTurnTexts), t->tokens_[i]) !=
            std::end(kEndOfTurnTexts)) {
      t->end_of_generation_[i] = true;
    }
  }
  for (int32_t id : {t->eos_, t->eot_}) {
    if (id >= 0) t->end_of_generation_[id] = true;
  }
  auto longer_first = [&](int32_t a, int32_t b) {
    return t->tokens_[a].size() > t->tokens_[b].size();
  };
  std::stable_sort(t->special_all_.begin(), t->special_all_.end(), longer_first);
  std::stable_sort(t->special_user_.begin(), t->special_user_.end(), longer_first);
  return t;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& gguf) {
  TokenizerData data;
  TANDEM_ASSIGN_OR_RETURN(data.model, gguf.GetString("tokenizer.ggml.model"));
  const bool spm = data.model == "llama";
  if (data.model != "gpt2" && !spm) {
    return absl::UnimplementedError(absl::StrCat("unsupported tokenizer model '", data.model,
                                                 "' (supported: gpt2, llama) in ", gguf.path()));
  }
  if (gguf.Has("tokenizer.ggml.pre")) {
    TANDEM_ASSIGN_OR_RETURN(data.pre, gguf.GetString("tokenizer.ggml.pre"));
  }
  {
    TANDEM_ASSIGN_OR_RETURN(auto tokens, gguf.GetStringArray("tokenizer.ggml.tokens"));
    data.tokens.assign(tokens.begin(), tokens.end());
  }
  if (gguf.Has("tokenizer.ggml.token_type")) {
    TANDEM_ASSIGN_OR_RETURN(data.token_types, gguf.GetI32Array("tokenizer.ggml.token_type"));
  }
  if (!spm) {
    TANDEM_ASSIGN_OR_RETURN(auto merges, gguf.GetStringArray("tokenizer.ggml.merges"));
    data.merges.assign(merges.begin(), merges.end());
  } else {
    if (gguf.Has("tokenizer.ggml.scores")) {
      TANDEM_ASSIGN_OR_RETURN(data.scores, gguf.GetF32Array("tokenizer.ggml.scores"));
    }
    if (gguf.Has("tokenizer.ggml.add_space_prefix")) {
      TANDEM_ASSIGN_OR_RETURN(data.add_space_prefix,
                              gguf.GetBool("tokenizer.ggml.add_space_prefix"));
    }
  }
  const std::initializer_list<std::pair<const char*, int32_t*>> id_keys = {
      {"tokenizer.ggml.bos_token_id", &data.bos},
      {"tokenizer.ggml.eos_token_id", &data.eos},
      {"tokenizer.ggml.eot_token_id", &data.eot},
      {"tokenizer.ggml.unknown_token_id", &data.unk},
      {"tokenizer.ggml.padding_token_id", &data.pad}};
  for (const auto& [key, field] : id_keys) {
    if (!gguf.Has(key)) continue;
    TANDEM_ASSIGN_OR_RETURN(uint32_t id, gguf.GetU32(key));
    if (id >= data.tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat(gguf.path(), ": ", key, " = ", id,
                                                     " is outside the vocabulary (",
                                                     data.tokens.size(), " tokens)"));
    }
    *field = static_cast<int32_t>(id);
  }
  // Without the flag, the vocabulary's convention decides: SentencePiece and Llama 3 add
  // BOS, other byte-level BPE vocabularies do not.
  if (spm) {
    data.add_bos = true;
  } else {
    TANDEM_ASSIGN_OR_RETURN(PreTokenizer pre, PreTokenizerFor(data.pre));
    data.add_bos = pre.default_add_bos;
  }
  if (gguf.Has("tokenizer.ggml.add_bos_token")) {
    TANDEM_ASSIGN_OR_RETURN(data.add_bos, gguf.GetBool("tokenizer.ggml.add_bos_token"));
  }
  if (gguf.Has("tokenizer.ggml.add_eos_token")) {
    TANDEM_ASSIGN_OR_RETURN(data.add_eos, gguf.GetBool("tokenizer.ggml.add_eos_token"));
  }
  return FromData(std::move(data));
}

Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool parse_special,
                                       bool add_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_special && add_bos_ && bos_ >= 0) out.push_back(bos_);

  // Cut special tokens out of the raw bytes: each token, longest first, takes all of its
  // non-overlapping occurrences in the fragments still unclaimed.
  struct Fragment {
    size_t begin, end;
    int32_t token;  // -1: text still to be tokenized
  };
  std::vector<Fragment> fragments, next;
  if (!text.empty()) fragments.push_back({0, text.size(), -1});
  for (int32_t id : parse_special ? special_all_ : special_user_) {
    const std::string& special = tokens_[id];
    if (text.find(special) == std::string_view::npos) continue;
    next.clear();
    for (const Fragment& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      const std::string_view window = text.substr(0, f.end);
      size_t pos = f.begin;
      for (size_t m; (m = window.find(special, pos)) != std::string_view::npos;) {
        if (m > pos) next.push_back({pos, m, -1});
        next.push_back({m, m + special.size(), id});
        pos = m + special.size();
      }
      if (pos < f.end) next.push_back({pos, f.end, -1});
    }
    fragments.swap(next);
  }

  // SentencePiece vocabularies prefix a space to text that starts the input or follows a
  // special token, as the reference does.
  bool after_special = true;
  std::string escaped;
  for (const Fragment& f : fragments) {
    const std::string_view fragment = text.substr(f.begin, f.end - f.begin);
    if (f.token >= 0) {
      out.push_back(f.token);
      after_special = true;
    } else if (spm_) {
      escaped.clear();
      if (add_space_prefix_ && after_special) escaped = kSpmSpace;
      for (char c : fragment) {
        if (c == ' ') {
          escaped += kSpmSpace;
        } else {
          escaped.push_back(c);
        }
      }
      EncodeSpm(escaped, &out);
      after_special = false;
    } else {
      EncodeText(fragment, &out);
    }
  }
  if (add_special && add_eos_ && eos_ >= 0) out.push_back(eos_);
  return out;
}

void Tokenizer::EncodeText(std::string_view fragment, std::vector<int32_t>* out) const {
  const std::string text = unicode::RepairInputUtf8(fragment);
  std::vector<RegexSplitter::Piece> pieces;
  splitter_->Split(text, &pieces);
  BpeScratch scratch;
  for (const auto& [begin, end] : pieces) {
    EncodePiece(std::string_view(text).substr(begin, end - begin), &scratch, out);
  }
}

void Tokenizer::EncodePiece(std::string_view piece, BpeScratch* scratch,
                            std::vector<int32_t>* out) const {
  const int32_t n = static_cast<int32_t>(piece.size());
  if (n == 0) return;
  if (ignore_merges_) {
    std::string spelled;
    for (char c : piece) spelled.append(unicode::ByteToUtf8(static_cast<uint8_t>(c)));
    auto it = token_to_id_.find(spelled);
    if (it != token_to_id_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  if (n == 1) {
    const int32_t id = byte_token_[static_cast<uint8_t>(piece[0])];
    if (id >= 0) out->push_back(id);
    return;
  }

  // Symbols form a doubly linked list over byte positions; a merge folds the right symbol
  // into the left one. Candidate pairs wait in a min-heap ordered by (rank, left position)
  // and are re-validated when popped, since either side may have changed since the push:
  // a symbol's id only ever changes to a longer token, so matching ids mean an intact pair.
  std::vector<int32_t>& ids = scratch->ids;
  std::vector<int32_t>& prev = scratch->prev;
  std::vector<int32_t>& next = scratch->next;
  ids.resize(n);
  prev.resize(n);
  next.resize(n);
  for (int32_t i = 0; i < n; ++i) {
    ids[i] = byte_token_[static_cast<uint8_t>(piece[i])];
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  using Candidate = BpeScratch::Candidate;
  auto after = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
  };
  std::vector<Candidate>& heap = scratch->heap;
  heap.clear();
  auto consider = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0 || ids[left] < 0 || ids[right] < 0) return;
    auto it = merges_.find(PairKey(ids[left], ids[right]));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, left, right, ids[left], ids[right], it->second.merged});
    std::push_heap(heap.begin(), heap.end(), after);
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i, i + 1);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), after);
    const Candidate c = heap.back();
    heap.pop_back();
    if (ids[c.left] != c.left_id || ids[c.right] != c.right_id || next[c.left] != c.right) {
      continue;  // stale
    }
    ids[c.left] = c.merged;
    ids[c.right] = -2;  // folded away
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    consider(prev[c.left], c.left);
    consider(c.left, next[c.left]);
  }
  // A byte without an alphabet token (malformed vocabulary) stays -1 and is dropped.
  for (int32_t i = 0; i >= 0; i = next[i]) {
    if (ids[i] >= 0) out->push_back(ids[i]);
  }
}

void Tokenizer::EncodeSpm(std::string_view text, std::vector<int32_t>* out) const {
  // Symbols start as UTF-8 characters (a stray byte is its own symbol) in a linked list.
  // Candidate pairs whose concatenation is a token wait in a max-heap by (score, -left);
  // a popped pair is stale unless both symbols still have the lengths it was made from.
  std::vector<int32_t> start, len, prev, next, ids;
  for (size_t pos = 0; pos < text.size();) {
    const uint8_t lead = static_cast<uint8_t>(text[pos]);
    const size_t want = lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
    const size_t l = std::min(want, text.size() - pos);
    const int32_t i = static_cast<int32_t>(start.size());
    start.push_back(static_cast<int32_t>(pos));
    len.push_back(static_cast<int32_t>(l));
    prev.push_back(i - 1);
    next.push_back(pos + l < text.size() ? i + 1 : -1);
    ids.push_back(-1);
    pos += l;
  }
  if (start.empty()) return;
  struct Candidate {
    float score;
    int32_t left, right, size, id;
  };
  auto after = [](const Candidate& a, const Candidate& b) {
    return a.score != b.score ? a.score < b.score : a.left > b.left;
  };
  std::vector<Candidate> heap;
  auto consider = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const int32_t size = len[left] + len[right];
    const int32_t id = TokenId(text.substr(start[left], size));
    if (id < 0) return;
    heap.push_back({scores_[id], left, right, size, id});
    std::push_heap(heap.begin(), heap.end(), after);
  };
  for (size_t i = 0; i + 1 < start.size(); ++i) {
    consider(static_cast<int32_t>(i), static_cast<int32_t>(i + 1));
  }
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), after);
    const Candidate c = heap.back();
    heap.pop_back();
    if (len[c.left] == 0 || len[c.right] == 0 || len[c.left] + len[c.right] != c.size ||
        next[c.left] != c.right) {
      continue;
    }
    len[c.left] = c.size;
    ids[c.left] = c.id;
    len[c.right] = 0;
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    consider(prev[c.left], c.left);
    consider(c.left, next[c.left]);
  }
  for (int32_t i = 0; i >= 0; i = next[i]) {
    const int32_t id = ids[i] >= 0 ? ids[i] : TokenId(text.substr(start[i], len[i]));
    if (id >= 0) {
      out->push_back(id);
      continue;
    }
    // Not a token: spell it as byte tokens (the unknown token where even those are missing).
    for (int32_t k = 0; k < len[i]; ++k) {
      const int32_t b = byte_token_[static_cast<uint8_t>(text[start[i] + k])];
      if (b >= 0) {
        out->push_back(b);
      } else if (unk_ >= 0) {
        out->push_back(unk_);
      }
    }
  }
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool render_special) const {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    const size_t before = out.size();
    AppendPiece(ids[i], render_special, &out);
    if (i == 0 && strips_leading_space() && out.size() > before && out[before] == ' ') {
      out.erase(before, 1);
    }
  }
  return out;
}

void Tokenizer::AppendPiece(int32_t id, bool render_special, std::string* out) const {
  if (id < 0 || id >= vocab_size()) return;
  if (!render_special && IsSpecialType(types_[id])) return;
  out->append(pieces_[id]);
}

const std::string& Tokenizer::TokenText(int32_t id) const {
  TANDEM_CHECK(id >= 0 && id < vocab_size());
  return tokens_[id];
}

TokenType Tokenizer::TokenTypeOf(int32_t id) const {
  TANDEM_CHECK(id >= 0 && id < vocab_size());
  return types_[id];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && IsSpecialType(types_[id]);
}

bool Tokenizer::IsEndOfGeneration(int32_t id) const {
  return id >= 0 && id < vocab_size() && end_of_generation_[id];
}

int32_t Tokenizer::TokenId(std::string_view text) const {
  auto it = token_to_id_.find(Absl(text));
  return it == token_to_id_.end() ? -1 : it->second;
}

std::string StreamDecoder::Push(int32_t id) {
  const size_t before = pending_.size();
  tokenizer_.AppendPiece(id, render_special_, &pending_);
  if (first_ && tokenizer_.strips_leading_space() && pending_.size() > before &&
      pending_[before] == ' ') {
    pending_.erase(before, 1);
  }
  first_ = false;
  std::string out;
  const size_t consumed = unicode::AppendValidUtf8(pending_, /*final=*/false, &out);
  pending_.erase(0, consumed);
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out;
  unicode::AppendValidUtf8(pending_, /*final=*/true, &out);
  pending_.clear();
  return out;
}

}  // namespace tandem::model
