#include "model/tokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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
  if (OneOf(pre, {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
                  "minerva-7b"})) {
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
  return absl::InvalidArgumentError(absl::StrCat("unsupported pre-tokenizer '", Absl(pre),
                                                 "' (tokenizer.ggml.pre); supported: ",
                                                 kSupportedPre));
}

// Control-token texts that end a turn in the chat formats tandem serves.
constexpr std::string_view kEndOfTurnTexts[] = {
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>",
    "<end_of_turn>", "<|eom_id|>", "</s>", "<EOT>",
};

bool IsSpecialType(TokenType t) {
  return t == TokenType::kControl || t == TokenType::kUnknown;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromData(TokenizerData data) {
  if (data.model != "gpt2") {
    return absl::UnimplementedError(absl::StrCat("unsupported tokenizer model '", data.model,
                                                 "' (supported: gpt2)"));
  }
  TANDEM_ASSIGN_OR_RETURN(PreTokenizer pre, PreTokenizerFor(data.pre));
  const size_t n = data.tokens.size();
  if (n == 0) return absl::InvalidArgumentError("tokenizer has an empty vocabulary");
  if (n > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("tokenizer vocabulary is too large");
  }
  if (!data.token_types.empty() && data.token_types.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer has ", n, " tokens but ",
                                                   data.token_types.size(), " token types"));
  }
  const std::initializer_list<std::pair<const char*, int32_t>> special_ids = {
      {"bos", data.bos}, {"eos", data.eos}, {"eot", data.eot}, {"unknown", data.unk},
      {"padding", data.pad}};
  for (const auto& [name, id] : special_ids) {
    if (id < -1 || id >= static_cast<int64_t>(n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer ", name, " token id ", id, " is outside the vocabulary (",
                       n, " tokens)"));
    }
  }

  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->pre_ = data.pre.empty() ? "default" : data.pre;
  t->ignore_merges_ = pre.ignore_merges;
  t->bos_ = data.bos;
  t->eos_ = data.eos;
  t->eot_ = data.eot;
  t->unk_ = data.unk;
  t->pad_ = data.pad;
  t->add_bos_ = data.add_bos;
  t->add_eos_ = data.add_eos;
  TANDEM_ASSIGN_OR_RETURN(t->splitter_, RegexSplitter::Create(std::move(pre.patterns)));

  t->types_.resize(n, TokenType::kNormal);
  for (size_t i = 0; i < data.token_types.size(); ++i) {
    const int32_t v = data.token_types[i];
    if (v < 0 || v > static_cast<int32_t>(TokenType::kByte)) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", i, " has unknown token type ", v));
    }
    t->types_[i] = static_cast<TokenType>(v);
  }
  t->tokens_ = std::move(data.tokens);
  t->token_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    // A repeated text maps to its last id, as in the reference implementation.
    t->token_to_id_[t->tokens_[i]] = static_cast<int32_t>(i);
  }

  // Decoded bytes of every token. Normal tokens are spelled in the byte alphabet; a
  // character outside it (a malformed vocabulary) is kept as its own UTF-8.
  t->pieces_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& text = t->tokens_[i];
    switch (t->types_[i]) {
      case TokenType::kNormal: {
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
      default:
        break;  // unused, byte and undefined tokens render as nothing
    }
  }

  for (int b = 0; b < 256; ++b) {
    auto it = t->token_to_id_.find(Absl(unicode::ByteToUtf8(static_cast<uint8_t>(b))));
    t->byte_token_[b] = it == t->token_to_id_.end() ? -1 : it->second;
  }

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
    if (l == t->token_to_id_.end() || r == t->token_to_id_.end() ||
        j == t->token_to_id_.end()) {
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
  if (data.model != "gpt2") {
    return absl::UnimplementedError(absl::StrCat("unsupported tokenizer model '", data.model,
                                                 "' (supported: gpt2) in ", gguf.path()));
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
  {
    TANDEM_ASSIGN_OR_RETURN(auto merges, gguf.GetStringArray("tokenizer.ggml.merges"));
    data.merges.assign(merges.begin(), merges.end());
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
  // Without the flag, the pre-tokenizer family's convention decides (Llama 3 adds BOS).
  TANDEM_ASSIGN_OR_RETURN(PreTokenizer pre, PreTokenizerFor(data.pre));
  data.add_bos = pre.default_add_bos;
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

  for (const Fragment& f : fragments) {
    if (f.token >= 0) {
      out.push_back(f.token);
    } else {
      EncodeText(text.substr(f.begin, f.end - f.begin), &out);
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

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool render_special) const {
  std::string out;
  for (int32_t id : ids) AppendPiece(id, render_special, &out);
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
  tokenizer_.AppendPiece(id, render_special_, &pending_);
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
