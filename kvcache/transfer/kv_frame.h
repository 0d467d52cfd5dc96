// KV handover wire format: the frames a prefill instance and a decode instance exchange to move
// one sequence's KV, the same for every transport (shared memory, TCP), and the decode side's
// state machine for one transfer. No sockets and no KvManager here: a transport feeds bytes to
// a FrameParser, hands each frame to the KvReceiveSession of its transfer, and writes each
// accepted LayerFrame's payload into the lease's blocks itself.
//
// Protocol: (1) prefill sends Reserve, decode reserves blocks and answers ReserveOk (a lease);
// (2) prefill sends one Layer per layer, in any order; (3) prefill sends Commit with the first
// token and the sampler state; (4) either side may send Abort at any time. A bad frame aborts
// that transfer, never the process: everything here returns absl::Status on bad input.
//
// Encoding: each frame is a 16-byte little-endian header
//   magic u32 ('T','K','V','1' in byte order) | type u8 | version u8 (1) | reserved u16 (0) |
//   payload_len u32 | crc32c u32 (CRC-32C of the payload)
// followed by payload_len bytes of fixed-width little-endian fields (see kv_frame.cc for each
// type's layout). Dtypes travel as u8 codes: f32 = 0, f16 = 1, int8 = 2.
//
// Thread safety: frames are values; a FrameParser or KvReceiveSession is used by one thread at
// a time (the transport thread of its connection / transfer). Nothing is synchronized.
//
// Invariants:
// - A FrameParser never reads outside what it was fed and never buffers a payload longer than
//   its max_payload_bytes: an oversized payload_len fails as soon as the header is complete.
// - Every frame the parser returns re-encodes to the bytes it was parsed from.
// - After its first error a FrameParser, and after its first refused frame in a live state a
//   KvReceiveSession, is failed for good: every later call returns that same error.
#ifndef TANDEM_KVCACHE_TRANSFER_KV_FRAME_H_
#define TANDEM_KVCACHE_TRANSFER_KV_FRAME_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <variant>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace tandem::kvcache {

enum class FrameType : uint8_t {
  kReserve = 1,
  kReserveOk = 2,
  kLayer = 3,
  kCommit = 4,
  kAbort = 5
};

inline constexpr uint32_t kFrameMagic = 0x3156'4B54;  // "TKV1" read as little-endian u32
// 2: a layer frame names the first position it carries (a sliding-window layer's window).
// 3: a commit carries the sampler's seed (draws are Philox at (seed, step)), not a generator
//    state.
inline constexpr uint8_t kFrameVersion = 3;
inline constexpr size_t kFrameHeaderBytes = 16;

// prefill -> decode: reserve room for a sequence of n_tokens positions of this layout.
struct ReserveFrame {
  uint64_t transfer_id = 0;
  int32_t n_tokens = 0;                             // >= 1
  int32_t n_layers = 0;                             // >= 1
  int32_t n_kv_heads = 0;                           // >= 1
  int32_t head_dim = 0;                             // >= 1
  kernels::KvDType dtype = kernels::KvDType::kF16;  // of every LayerFrame that follows
  bool operator==(const ReserveFrame&) const = default;
};

// decode -> prefill: blocks are reserved under `lease_id` until `expires_unix_ms`.
struct ReserveOkFrame {
  uint64_t transfer_id = 0;
  uint64_t lease_id = 0;
  int64_t expires_unix_ms = 0;
  bool operator==(const ReserveOkFrame&) const = default;
};

// prefill -> decode: every position of one layer. n_kv_heads and head_dim travel with it so
// that the payload size can be checked by the parser alone, before any session sees it.
struct LayerFrame {
  uint64_t transfer_id = 0;
  int32_t layer = 0;     // [0, n_layers) of the reservation
  int32_t n_tokens = 0;  // >= 1, the reserved n_tokens
  // The first position carried, [0, n_tokens): 0, or for a sliding-window layer whose sender
  // keeps only the window, the first position of the window of position n_tokens.
  int32_t first = 0;
  int32_t n_kv_heads = 0;  // >= 1
  int32_t head_dim = 0;    // >= 1
  kernels::KvDType dtype = kernels::KvDType::kF16;
  // Positions [first, n_tokens): K then V, each [n_kv_heads, n_tokens - first, head_dim] of
  // dtype; for int8 then the K and the V (scale, zero) pairs, each [n_kv_heads, n_tokens -
  // first, 2] floats. LayerPayloadBytes(dtype, n_kv_heads, n_tokens - first, head_dim) long.
  std::string payload;
  bool operator==(const LayerFrame&) const = default;
};

// prefill -> decode: every layer was sent; decode continues from here.
struct CommitFrame {
  uint64_t transfer_id = 0;
  int32_t first_token = 0;  // >= 0, sampled by prefill
  uint64_t seed = 0;        // the sampler's seed (model::Sampler::seed)
  bool operator==(const CommitFrame&) const = default;
};

// either way: the transfer is over, nothing of it is kept. `code` says whether trying again
// may help: kResourceExhausted from a decode side with no room now (retry later), anything
// else ends the transfer for good.
struct AbortFrame {
  uint64_t transfer_id = 0;
  std::string reason;                                  // for logs; any bytes
  absl::StatusCode code = absl::StatusCode::kAborted;  // travels as u32; any value parses
  bool operator==(const AbortFrame&) const = default;
};

// The status an AbortFrame stands for: its code (kUnknown for a value absl does not name)
// with the reason as message.
absl::Status AbortStatus(const AbortFrame& f);

using Frame = std::variant<ReserveFrame, ReserveOkFrame, LayerFrame, CommitFrame, AbortFrame>;

FrameType TypeOf(const Frame& f);
uint64_t TransferIdOf(const Frame& f);

// CRC-32C (Castagnoli, reflected, as iSCSI/ext4): Crc32c("123456789") == 0xE3069283.
uint32_t Crc32c(std::string_view bytes);

// Bytes a LayerFrame's payload must hold for this layout; 0 when any count is < 1, SIZE_MAX
// when the product does not fit in size_t.
size_t LayerPayloadBytes(kernels::KvDType dtype, int32_t n_kv_heads, int32_t n_tokens,
                         int32_t head_dim);

// Appends one encoded frame to `out`. The frame must be well formed (what the parser would
// accept, payload under 4 GiB): CHECKs the payload length fits the u32 header field.
void EncodeFrame(const Frame& f, std::string* out);

// Incremental decoder of one byte stream. Feed bytes as they arrive, then call Next() until it
// returns nullopt (needs more bytes) or an error.
class FrameParser {
 public:
  static constexpr size_t kDefaultMaxPayloadBytes = size_t{1} << 30;

  explicit FrameParser(size_t max_payload_bytes = kDefaultMaxPayloadBytes)
      : max_payload_bytes_(max_payload_bytes) {}

  // Buffers `bytes`. Returns the sticky error once failed (the bytes are dropped then).
  absl::Status Feed(std::string_view bytes);

  // The next complete frame, nullopt when more bytes are needed, or an error that ends the
  // stream: DataLoss on a checksum mismatch; InvalidArgument on a bad magic, type, version or
  // reserved field, a payload_len over the max, or a payload that does not parse as its type
  // (wrong length for its fields, bad dtype code, counts < 1, a LayerFrame payload that is not
  // LayerPayloadBytes long).
  absl::StatusOr<std::optional<Frame>> Next();

  bool failed() const { return !error_.ok(); }
  size_t buffered_bytes() const { return buf_.size() - pos_; }

 private:
  absl::Status Fail(absl::Status s);

  const size_t max_payload_bytes_;  // constant after construction
  std::string buf_;                 // fed bytes; [pos_, size) not yet consumed
  size_t pos_ = 0;
  absl::Status error_;  // first error; OK while healthy
};

// The decode side's view of one transfer: checks that the frames of `transfer_id` arrive in
// protocol order with the reserved layout. Reserve first, then exactly one Layer per layer in
// [0, n_layers), any order, then Commit; Abort at any time before Commit/Abort ends it.
//
// Errors: FailedPrecondition for a frame out of order or repeated (Layer or Commit before
// Reserve, a second Reserve, a duplicate layer, Commit before every layer, anything after
// Commit/Abort); InvalidArgument for a wrong transfer id, a layer out of range, a Layer whose
// layout (n_tokens, dtype, heads, head_dim, payload size) differs from the reservation, a
// ReserveOk (decode sends those, never receives them) or a malformed Reserve. An error in a live
// state (kAwaitReserve, kReceiving) moves the session to kFailed for good; a frame after
// Commit/Abort is refused but leaves that outcome as it was.
class KvReceiveSession {
 public:
  enum class State { kAwaitReserve, kReceiving, kCommitted, kAborted, kFailed };

  explicit KvReceiveSession(uint64_t transfer_id) : transfer_id_(transfer_id) {}

  absl::Status OnFrame(const Frame& f);

  State state() const { return state_; }
  uint64_t transfer_id() const { return transfer_id_; }
  // Set once a Reserve was accepted.
  const std::optional<ReserveFrame>& reserve() const { return reserve_; }
  int layers_received() const { return static_cast<int>(received_.size()); }
  bool has_layer(int32_t layer) const { return received_.count(layer) > 0; }
  // Set once committed.
  const std::optional<CommitFrame>& commit() const { return commit_; }
  // The peer's reason once aborted.
  const std::string& abort_reason() const { return abort_reason_; }
  // The error that failed the session; OK unless state() == kFailed.
  const absl::Status& error() const { return error_; }

 private:
  absl::Status Check(const Frame& f);  // the verdict; OnFrame applies it to state_
  absl::Status CheckLayer(const LayerFrame& l) const;

  const uint64_t transfer_id_;  // constant after construction
  State state_ = State::kAwaitReserve;
  std::optional<ReserveFrame> reserve_;
  // Layers seen; a set, not a bitmap of n_layers, so a hostile n_layers costs nothing.
  std::set<int32_t> received_;
  std::optional<CommitFrame> commit_;
  std::string abort_reason_;
  absl::Status error_;
};

const char* StateName(KvReceiveSession::State s);

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_TRANSFER_KV_FRAME_H_
