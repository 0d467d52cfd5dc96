#include "kvcache/transfer/kv_frame.h"

#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace tandem::kvcache {
namespace {

using kernels::KvDType;

// Payload layouts, all fields little-endian (sizes in bytes):
//   Reserve:   transfer_id u64 | n_tokens i32 | n_layers i32 | n_kv_heads i32 | head_dim i32 |
//              dtype u8                                                               = 25
//   ReserveOk: transfer_id u64 | lease_id u64 | expires_unix_ms i64                   = 24
//   Layer:     transfer_id u64 | layer i32 | n_tokens i32 | first i32 | n_kv_heads i32 |
//              head_dim i32 | dtype u8 | data (LayerPayloadBytes)                     = 29 + data
//   Commit:    transfer_id u64 | first_token i32 | seed u64                           = 20
//   Abort:     transfer_id u64 | code u32 | reason (the rest)                         = 12 + reason
constexpr size_t kReserveBytes = 25;
constexpr size_t kReserveOkBytes = 24;
constexpr size_t kLayerFixedBytes = 29;
constexpr size_t kCommitBytes = 20;
constexpr size_t kAbortFixedBytes = 12;

// Wire codes of KvDType; explicit so that reordering the enum cannot change the format.
uint8_t DTypeCode(KvDType d) {
  switch (d) {
    case KvDType::kF32:
      return 0;
    case KvDType::kF16:
      return 1;
    case KvDType::kInt8:
      return 2;
  }
  return 0xff;
}

std::optional<KvDType> DTypeFromCode(uint8_t c) {
  switch (c) {
    case 0:
      return KvDType::kF32;
    case 1:
      return KvDType::kF16;
    case 2:
      return KvDType::kInt8;
  }
  return std::nullopt;
}

struct Crc32cTable {
  uint32_t t[256];
  constexpr Crc32cTable() : t() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
  }
};
constexpr Crc32cTable kCrcTable;

void PutU8(std::string* out, uint8_t v) { out->push_back(static_cast<char>(v)); }
void PutU16(std::string* out, uint16_t v) {
  for (int i = 0; i < 2; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void PutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void PutI32(std::string* out, int32_t v) { PutU32(out, static_cast<uint32_t>(v)); }

// Reads fixed-width little-endian fields from a bounded view; every read checks what is left.
class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  size_t left() const { return s_.size(); }
  bool U8(uint8_t* v) {
    uint64_t x;
    if (!Le(1, &x)) return false;
    *v = static_cast<uint8_t>(x);
    return true;
  }
  bool U16(uint16_t* v) {
    uint64_t x;
    if (!Le(2, &x)) return false;
    *v = static_cast<uint16_t>(x);
    return true;
  }
  bool U32(uint32_t* v) {
    uint64_t x;
    if (!Le(4, &x)) return false;
    *v = static_cast<uint32_t>(x);
    return true;
  }
  bool U64(uint64_t* v) { return Le(8, v); }
  bool I32(int32_t* v) {
    uint32_t x;
    if (!U32(&x)) return false;
    *v = static_cast<int32_t>(x);
    return true;
  }
  bool I64(int64_t* v) {
    uint64_t x;
    if (!U64(&x)) return false;
    *v = static_cast<int64_t>(x);
    return true;
  }
  std::string_view Rest() {
    std::string_view r = s_;
    s_ = {};
    return r;
  }

 private:
  bool Le(size_t n, uint64_t* v) {
    if (s_.size() < n) return false;
    uint64_t x = 0;
    for (size_t i = 0; i < n; ++i) x |= uint64_t{static_cast<uint8_t>(s_[i])} << (8 * i);
    s_.remove_prefix(n);
    *v = x;
    return true;
  }

  std::string_view s_;
};

absl::Status Malformed(const char* what, size_t len) {
  return absl::InvalidArgumentError(
      absl::StrCat("kv frame: malformed ", what, " payload (", len, " bytes)"));
}

absl::Status CheckCounts(const char* what, int32_t n_tokens, int32_t n_kv_heads, int32_t head_dim) {
  if (n_tokens < 1 || n_kv_heads < 1 || head_dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat("kv frame: ", what, " with n_tokens ", n_tokens,
                                                   ", n_kv_heads ", n_kv_heads, ", head_dim ",
                                                   head_dim, " (each must be >= 1)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<KvDType> ReadDType(Reader& r, const char* what, size_t len) {
  uint8_t code;
  if (!r.U8(&code)) return Malformed(what, len);
  std::optional<KvDType> d = DTypeFromCode(code);
  if (!d) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv frame: ", what, " with unknown dtype code ", code));
  }
  return *d;
}

absl::StatusOr<Frame> ParsePayload(FrameType type, std::string_view p) {
  Reader r(p);
  switch (type) {
    case FrameType::kReserve: {
      if (p.size() != kReserveBytes) return Malformed("reserve", p.size());
      ReserveFrame f;
      r.U64(&f.transfer_id);
      r.I32(&f.n_tokens);
      r.I32(&f.n_layers);
      r.I32(&f.n_kv_heads);
      r.I32(&f.head_dim);
      absl::StatusOr<KvDType> d = ReadDType(r, "reserve", p.size());
      if (!d.ok()) return d.status();
      f.dtype = *d;
      if (absl::Status s = CheckCounts("reserve", f.n_tokens, f.n_kv_heads, f.head_dim); !s.ok()) {
        return s;
      }
      if (f.n_layers < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("kv frame: reserve with n_layers ", f.n_layers, " (must be >= 1)"));
      }
      return Frame(std::move(f));
    }
    case FrameType::kReserveOk: {
      if (p.size() != kReserveOkBytes) return Malformed("reserve-ok", p.size());
      ReserveOkFrame f;
      r.U64(&f.transfer_id);
      r.U64(&f.lease_id);
      r.I64(&f.expires_unix_ms);
      return Frame(f);
    }
    case FrameType::kLayer: {
      if (p.size() < kLayerFixedBytes) return Malformed("layer", p.size());
      LayerFrame f;
      r.U64(&f.transfer_id);
      r.I32(&f.layer);
      r.I32(&f.n_tokens);
      r.I32(&f.first);
      r.I32(&f.n_kv_heads);
      r.I32(&f.head_dim);
      absl::StatusOr<KvDType> d = ReadDType(r, "layer", p.size());
      if (!d.ok()) return d.status();
      f.dtype = *d;
      if (f.layer < 0) {
        return absl::InvalidArgumentError(absl::StrCat("kv frame: layer index ", f.layer));
      }
      if (absl::Status s = CheckCounts("layer", f.n_tokens, f.n_kv_heads, f.head_dim); !s.ok()) {
        return s;
      }
      if (f.first < 0 || f.first >= f.n_tokens) {
        return absl::InvalidArgumentError(absl::StrCat("kv frame: layer ", f.layer,
                                                       " starts at position ", f.first,
                                                       ", outside [0, ", f.n_tokens, ")"));
      }
      // Checked before copying, so a lying header costs no allocation beyond the buffered bytes.
      const size_t want =
          LayerPayloadBytes(f.dtype, f.n_kv_heads, f.n_tokens - f.first, f.head_dim);
      if (r.left() != want) {
        return absl::InvalidArgumentError(absl::StrCat("kv frame: layer ", f.layer, " carries ",
                                                       r.left(), " data bytes, its layout needs ",
                                                       want));
      }
      f.payload = std::string(r.Rest());
      return Frame(std::move(f));
    }
    case FrameType::kCommit: {
      if (p.size() != kCommitBytes) return Malformed("commit", p.size());
      CommitFrame f;
      r.U64(&f.transfer_id);
      r.I32(&f.first_token);
      r.U64(&f.seed);
      if (f.first_token < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("kv frame: commit with first_token ", f.first_token));
      }
      return Frame(f);
    }
    case FrameType::kAbort: {
      if (p.size() < kAbortFixedBytes) return Malformed("abort", p.size());
      AbortFrame f;
      r.U64(&f.transfer_id);
      uint32_t code = 0;
      r.U32(&code);
      f.code = static_cast<absl::StatusCode>(code);
      f.reason = std::string(r.Rest());
      return Frame(std::move(f));
    }
  }
  return absl::InvalidArgumentError("kv frame: unknown type");  // not reached: type checked
}

}  // namespace

FrameType TypeOf(const Frame& f) {
  switch (f.index()) {
    case 0:
      return FrameType::kReserve;
    case 1:
      return FrameType::kReserveOk;
    case 2:
      return FrameType::kLayer;
    case 3:
      return FrameType::kCommit;
    default:
      return FrameType::kAbort;
  }
}

uint64_t TransferIdOf(const Frame& f) {
  return std::visit([](const auto& x) { return x.transfer_id; }, f);
}

absl::Status AbortStatus(const AbortFrame& f) {
  const int c = static_cast<int>(f.code);
  // absl's codes are 0..16; 0 (OK) would make an abort look like success.
  const absl::StatusCode code = c >= 1 && c <= 16 ? f.code : absl::StatusCode::kUnknown;
  return absl::Status(code, f.reason);
}

#if defined(__x86_64__)
// The SSE4.2 crc32 instruction, 8 bytes at a time: ~8 GB/s against the table's ~0.5, which
// made the checksum (twice per layer: sender and receiver) the handover's bottleneck.
__attribute__((target("sse4.2"))) uint32_t Crc32cSse42(std::string_view bytes) {
  const char* p = bytes.data();
  size_t n = bytes.size();
  uint64_t c = 0xFFFFFFFFu;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c = __builtin_ia32_crc32di(c, w);
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  for (; n > 0; ++p, --n) c32 = __builtin_ia32_crc32qi(c32, static_cast<unsigned char>(*p));
  return c32 ^ 0xFFFFFFFFu;
}
#endif

uint32_t Crc32c(std::string_view bytes) {
#if defined(__x86_64__)
  static const bool sse42 = __builtin_cpu_supports("sse4.2");
  if (sse42) return Crc32cSse42(bytes);
#endif
  uint32_t c = 0xFFFFFFFFu;
  for (char ch : bytes) c = kCrcTable.t[(c ^ static_cast<uint8_t>(ch)) & 0xff] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

size_t LayerPayloadBytes(KvDType dtype, int32_t n_kv_heads, int32_t n_tokens, int32_t head_dim) {
  if (n_kv_heads < 1 || n_tokens < 1 || head_dim < 1) return 0;
  constexpr size_t kMax = std::numeric_limits<size_t>::max();
  size_t rows, elems, kv, scales, total;
  if (__builtin_mul_overflow(static_cast<size_t>(n_kv_heads), static_cast<size_t>(n_tokens),
                             &rows) ||
      __builtin_mul_overflow(rows, static_cast<size_t>(head_dim), &elems) ||
      __builtin_mul_overflow(elems, 2 * kernels::KvElemBytes(dtype), &kv)) {
    return kMax;
  }
  if (dtype != KvDType::kInt8) return kv;
  // K and V (scale, zero) float pairs per head and token.
  if (__builtin_mul_overflow(rows, size_t{2 * 2 * sizeof(float)}, &scales) ||
      __builtin_add_overflow(kv, scales, &total)) {
    return kMax;
  }
  return total;
}

void EncodeFrame(const Frame& f, std::string* out) {
  std::string p;
  std::visit(
      [&p](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        PutU64(&p, x.transfer_id);
        if constexpr (std::is_same_v<T, ReserveFrame>) {
          PutI32(&p, x.n_tokens);
          PutI32(&p, x.n_layers);
          PutI32(&p, x.n_kv_heads);
          PutI32(&p, x.head_dim);
          PutU8(&p, DTypeCode(x.dtype));
        } else if constexpr (std::is_same_v<T, ReserveOkFrame>) {
          PutU64(&p, x.lease_id);
          PutU64(&p, static_cast<uint64_t>(x.expires_unix_ms));
        } else if constexpr (std::is_same_v<T, LayerFrame>) {
          PutI32(&p, x.layer);
          PutI32(&p, x.n_tokens);
          PutI32(&p, x.first);
          PutI32(&p, x.n_kv_heads);
          PutI32(&p, x.head_dim);
          PutU8(&p, DTypeCode(x.dtype));
          p.append(x.payload);
        } else if constexpr (std::is_same_v<T, CommitFrame>) {
          PutI32(&p, x.first_token);
          PutU64(&p, x.seed);
        } else {
          PutU32(&p, static_cast<uint32_t>(x.code));
          p.append(x.reason);
        }
      },
      f);
  TANDEM_CHECK_LE(p.size(), size_t{std::numeric_limits<uint32_t>::max()});
  out->reserve(out->size() + kFrameHeaderBytes + p.size());
  PutU32(out, kFrameMagic);
  PutU8(out, static_cast<uint8_t>(TypeOf(f)));
  PutU8(out, kFrameVersion);
  PutU16(out, 0);
  PutU32(out, static_cast<uint32_t>(p.size()));
  PutU32(out, Crc32c(p));
  out->append(p);
}

absl::Status FrameParser::Fail(absl::Status s) {
  error_ = std::move(s);
  buf_.clear();
  buf_.shrink_to_fit();
  pos_ = 0;
  return error_;
}

absl::Status FrameParser::Feed(std::string_view bytes) {
  if (!error_.ok()) return error_;
  buf_.append(bytes);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Frame>> FrameParser::Next() {
  if (!error_.ok()) return error_;
  const std::string_view avail = std::string_view(buf_).substr(pos_);
  if (avail.size() < kFrameHeaderBytes) return std::nullopt;
  Reader h(avail.substr(0, kFrameHeaderBytes));
  uint32_t magic, payload_len, crc;
  uint8_t type, version;
  uint16_t reserved;
  h.U32(&magic);
  h.U8(&type);
  h.U8(&version);
  h.U16(&reserved);
  h.U32(&payload_len);
  h.U32(&crc);
  // The header is judged before waiting for the payload: a stream that is not ours, or that
  // announces more than we accept, fails now instead of after buffering what it announced.
  if (magic != kFrameMagic) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("kv frame: bad magic 0x", absl::Hex(magic, absl::kZeroPad8))));
  }
  if (type < static_cast<uint8_t>(FrameType::kReserve) ||
      type > static_cast<uint8_t>(FrameType::kAbort)) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("kv frame: unknown type ", type)));
  }
  if (version != kFrameVersion) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("kv frame: version ", version, ", this build speaks ", kFrameVersion)));
  }
  if (reserved != 0) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("kv frame: reserved header field is ", reserved, ", must be 0")));
  }
  if (payload_len > max_payload_bytes_) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "kv frame: payload of ", payload_len, " bytes over the limit of ", max_payload_bytes_)));
  }
  if (avail.size() - kFrameHeaderBytes < payload_len) return std::nullopt;
  const std::string_view payload = avail.substr(kFrameHeaderBytes, payload_len);
  const uint32_t actual = Crc32c(payload);
  if (actual != crc) {
    return Fail(absl::DataLossError(absl::StrCat("kv frame: checksum mismatch (header 0x",
                                                 absl::Hex(crc, absl::kZeroPad8), ", payload 0x",
                                                 absl::Hex(actual, absl::kZeroPad8), ")")));
  }
  absl::StatusOr<Frame> f = ParsePayload(static_cast<FrameType>(type), payload);
  if (!f.ok()) return Fail(f.status());
  pos_ += kFrameHeaderBytes + payload_len;
  // Drop consumed bytes once they are the larger part, so memory stays O(unconsumed) and the
  // copying stays amortized linear.
  if (pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pos_ > buf_.size() / 2) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  return std::optional<Frame>(std::move(*f));
}

const char* StateName(KvReceiveSession::State s) {
  switch (s) {
    case KvReceiveSession::State::kAwaitReserve:
      return "await-reserve";
    case KvReceiveSession::State::kReceiving:
      return "receiving";
    case KvReceiveSession::State::kCommitted:
      return "committed";
    case KvReceiveSession::State::kAborted:
      return "aborted";
    case KvReceiveSession::State::kFailed:
      return "failed";
  }
  return "?";
}

absl::Status KvReceiveSession::OnFrame(const Frame& f) {
  if (state_ == State::kFailed) return error_;
  absl::Status s = Check(f);
  if (!s.ok() && (state_ == State::kAwaitReserve || state_ == State::kReceiving)) {
    state_ = State::kFailed;
    error_ = s;
  }
  return s;
}

absl::Status KvReceiveSession::Check(const Frame& f) {
  if (state_ == State::kCommitted || state_ == State::kAborted) {
    return absl::FailedPreconditionError(absl::StrCat(
        "kv transfer ", transfer_id_, ": frame after the transfer was ", StateName(state_)));
  }
  if (TransferIdOf(f) != transfer_id_) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv transfer ", transfer_id_, ": frame of transfer ", TransferIdOf(f)));
  }
  switch (TypeOf(f)) {
    case FrameType::kAbort:
      state_ = State::kAborted;
      abort_reason_ = std::get<AbortFrame>(f).reason;
      return absl::OkStatus();
    case FrameType::kReserveOk:
      return absl::InvalidArgumentError(absl::StrCat(
          "kv transfer ", transfer_id_, ": reserve-ok is sent by decode, never received"));
    case FrameType::kReserve: {
      if (state_ != State::kAwaitReserve) {
        return absl::FailedPreconditionError(
            absl::StrCat("kv transfer ", transfer_id_, ": second reserve"));
      }
      const auto& r = std::get<ReserveFrame>(f);
      if (r.n_layers < 1 || LayerPayloadBytes(r.dtype, r.n_kv_heads, r.n_tokens, r.head_dim) == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("kv transfer ", transfer_id_, ": reserve with a count < 1"));
      }
      reserve_ = r;
      state_ = State::kReceiving;
      return absl::OkStatus();
    }
    case FrameType::kLayer: {
      if (state_ != State::kReceiving) {
        return absl::FailedPreconditionError(
            absl::StrCat("kv transfer ", transfer_id_, ": layer before reserve"));
      }
      const auto& l = std::get<LayerFrame>(f);
      if (absl::Status s = CheckLayer(l); !s.ok()) return s;
      if (!received_.insert(l.layer).second) {
        return absl::FailedPreconditionError(
            absl::StrCat("kv transfer ", transfer_id_, ": layer ", l.layer, " sent twice"));
      }
      return absl::OkStatus();
    }
    case FrameType::kCommit: {
      if (state_ != State::kReceiving) {
        return absl::FailedPreconditionError(
            absl::StrCat("kv transfer ", transfer_id_, ": commit before reserve"));
      }
      if (layers_received() != reserve_->n_layers) {
        return absl::FailedPreconditionError(absl::StrCat("kv transfer ", transfer_id_,
                                                          ": commit after ", layers_received(),
                                                          " of ", reserve_->n_layers, " layers"));
      }
      commit_ = std::get<CommitFrame>(f);
      state_ = State::kCommitted;
      return absl::OkStatus();
    }
  }
  return absl::InternalError("kv transfer: unhandled frame type");
}

absl::Status KvReceiveSession::CheckLayer(const LayerFrame& l) const {
  const ReserveFrame& r = *reserve_;
  if (l.layer < 0 || l.layer >= r.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("kv transfer ", transfer_id_, ": layer ",
                                                   l.layer, " outside [0, ", r.n_layers, ")"));
  }
  if (l.n_tokens != r.n_tokens || l.dtype != r.dtype || l.n_kv_heads != r.n_kv_heads ||
      l.head_dim != r.head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv transfer ", transfer_id_, ": layer ", l.layer, " layout (n_tokens ",
                     l.n_tokens, ", n_kv_heads ", l.n_kv_heads, ", head_dim ", l.head_dim,
                     ", dtype ", DTypeCode(l.dtype), ") differs from the reservation (", r.n_tokens,
                     ", ", r.n_kv_heads, ", ", r.head_dim, ", ", DTypeCode(r.dtype), ")"));
  }
  if (l.first < 0 || l.first >= l.n_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("kv transfer ", transfer_id_, ": layer ",
                                                   l.layer, " starts at position ", l.first));
  }
  const size_t want = LayerPayloadBytes(r.dtype, r.n_kv_heads, r.n_tokens - l.first, r.head_dim);
  if (l.payload.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat("kv transfer ", transfer_id_, ": layer ",
                                                   l.layer, " payload of ", l.payload.size(),
                                                   " bytes, its layout needs ", want));
  }
  return absl::OkStatus();
}

}  // namespace tandem::kvcache
