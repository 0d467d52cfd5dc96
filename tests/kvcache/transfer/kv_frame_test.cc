// KV handover frames: encode/parse round trips on random fields, incremental feeding, every
// header and payload corruption, sticky failure; KvReceiveSession's protocol order.
#include "kvcache/transfer/kv_frame.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace tandem::kvcache {
namespace {

using kernels::KvDType;
using State = KvReceiveSession::State;

std::string RandomBytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

LayerFrame RandomLayer(std::mt19937_64& rng, KvDType dtype, uint64_t id, int32_t layer,
                       int32_t heads = 2, int32_t tokens = 5, int32_t head_dim = 8,
                       int32_t first = 0) {
  LayerFrame l;
  l.transfer_id = id;
  l.layer = layer;
  l.n_tokens = tokens;
  l.first = first;
  l.n_kv_heads = heads;
  l.head_dim = head_dim;
  l.dtype = dtype;
  l.payload = RandomBytes(rng, LayerPayloadBytes(dtype, heads, tokens - first, head_dim));
  return l;
}

std::vector<Frame> RandomFrames(std::mt19937_64& rng) {
  std::vector<Frame> frames;
  ReserveFrame r;
  r.transfer_id = rng();
  r.n_tokens = 1 + static_cast<int32_t>(rng() % 1000);
  r.n_layers = 1 + static_cast<int32_t>(rng() % 80);
  r.n_kv_heads = 1 + static_cast<int32_t>(rng() % 16);
  r.head_dim = 1 + static_cast<int32_t>(rng() % 256);
  r.dtype = KvDType::kInt8;
  frames.push_back(r);
  ReserveOkFrame ok;
  ok.transfer_id = rng();
  ok.lease_id = rng();
  ok.expires_unix_ms = static_cast<int64_t>(rng());
  frames.push_back(ok);
  frames.push_back(RandomLayer(rng, KvDType::kInt8, rng(), 3, 3, 7, 16));
  frames.push_back(RandomLayer(rng, KvDType::kF16, rng(), 0, 2, 9, 32));
  frames.push_back(RandomLayer(rng, KvDType::kF32, rng(), 11, 1, 1, 4));
  frames.push_back(RandomLayer(rng, KvDType::kInt8, rng(), 5, 2, 600, 8, /*first=*/89));
  CommitFrame c;
  c.transfer_id = rng();
  c.first_token = static_cast<int32_t>(rng() % 150000);
  c.seed = rng();
  frames.push_back(c);
  frames.push_back(AbortFrame{rng(), "peer went away"});
  frames.push_back(AbortFrame{rng(), "odd code", static_cast<absl::StatusCode>(rng())});
  frames.push_back(AbortFrame{rng(), ""});
  return frames;
}

std::string Encode(const Frame& f) {
  std::string s;
  EncodeFrame(f, &s);
  return s;
}

// Parses everything in `bytes` (fed in one go); the stream must be clean and complete.
std::vector<Frame> ParseAll(std::string_view bytes) {
  FrameParser p;
  EXPECT_TRUE(p.Feed(bytes).ok());
  std::vector<Frame> out;
  while (true) {
    auto f = p.Next();
    EXPECT_TRUE(f.ok()) << f.status();
    if (!f.ok() || !f->has_value()) break;
    out.push_back(std::move(**f));
  }
  EXPECT_EQ(p.buffered_bytes(), 0u);
  return out;
}

TEST(Crc32cTest, CheckVector) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(""), 0u);
  // RFC 3720 (iSCSI), B.4: 32 bytes of zeros, of ones, ascending; and a run long enough for
  // the 8-byte steps of the hardware path, at every tail length.
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string ascending;
  for (int i = 0; i < 32; ++i) ascending.push_back(static_cast<char>(i));
  EXPECT_EQ(Crc32c(ascending), 0x46DD794Eu);
  std::string long_run;
  for (int i = 0; i < 1000; ++i) long_run.push_back(static_cast<char>(i * 7 + 3));
  for (size_t n = 990; n <= 1000; ++n) {
    uint32_t c = 0xFFFFFFFFu;  // the bitwise definition
    for (size_t i = 0; i < n; ++i) {
      c ^= static_cast<uint8_t>(long_run[i]);
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    EXPECT_EQ(Crc32c(std::string_view(long_run).substr(0, n)), c ^ 0xFFFFFFFFu) << n;
  }
}

TEST(LayerPayloadBytesTest, Sizes) {
  EXPECT_EQ(LayerPayloadBytes(KvDType::kF16, 2, 5, 8), 2u * 2 * 5 * 8 * 2);
  EXPECT_EQ(LayerPayloadBytes(KvDType::kF32, 2, 5, 8), 2u * 2 * 5 * 8 * 4);
  EXPECT_EQ(LayerPayloadBytes(KvDType::kInt8, 2, 5, 8), 2u * 2 * 5 * 8 + 2u * 2 * 5 * 2 * 4);
  EXPECT_EQ(LayerPayloadBytes(KvDType::kF16, 0, 5, 8), 0u);
  EXPECT_EQ(LayerPayloadBytes(KvDType::kF16, 2, -1, 8), 0u);
}

TEST(FrameTest, EncodedHeader) {
  const std::string s = Encode(AbortFrame{7, "x", absl::StatusCode::kResourceExhausted});
  ASSERT_EQ(s.size(), kFrameHeaderBytes + 13);
  EXPECT_EQ(s.substr(0, 4), "TKV1");
  EXPECT_EQ(s[4], static_cast<char>(FrameType::kAbort));
  EXPECT_EQ(s[5], 3);  // version
  EXPECT_EQ(s[6], 0);
  EXPECT_EQ(s[7], 0);
  EXPECT_EQ(static_cast<uint8_t>(s[8]), 13);
  // transfer id, then the status code as u32, then the reason.
  EXPECT_EQ(static_cast<uint8_t>(s[kFrameHeaderBytes]), 7);
  EXPECT_EQ(static_cast<uint8_t>(s[kFrameHeaderBytes + 8]), 8);  // kResourceExhausted
  EXPECT_EQ(s.back(), 'x');
}

TEST(FrameTest, AbortStatusKeepsTheCodeAndNeverReadsAsOk) {
  EXPECT_TRUE(absl::IsResourceExhausted(
      AbortStatus(AbortFrame{1, "full", absl::StatusCode::kResourceExhausted})));
  EXPECT_EQ(AbortStatus(AbortFrame{1, "full", absl::StatusCode::kResourceExhausted}).message(),
            "full");
  EXPECT_EQ(AbortStatus(AbortFrame{1, "", absl::StatusCode::kOk}).code(),
            absl::StatusCode::kUnknown);
  EXPECT_EQ(AbortStatus(AbortFrame{1, "", static_cast<absl::StatusCode>(1234)}).code(),
            absl::StatusCode::kUnknown);
}

TEST(FrameTest, RoundTripEveryType) {
  std::mt19937_64 rng(1234);
  for (int iter = 0; iter < 20; ++iter) {
    for (const Frame& f : RandomFrames(rng)) {
      std::vector<Frame> back = ParseAll(Encode(f));
      ASSERT_EQ(back.size(), 1u);
      EXPECT_EQ(back[0], f) << "type " << static_cast<int>(TypeOf(f));
    }
  }
}

TEST(FrameTest, SeveralFramesInOneFeed) {
  std::mt19937_64 rng(5);
  const std::vector<Frame> frames = RandomFrames(rng);
  std::string all;
  for (const Frame& f : frames) EncodeFrame(f, &all);
  EXPECT_EQ(ParseAll(all), frames);
}

TEST(FrameTest, ByteAtATime) {
  std::mt19937_64 rng(6);
  const std::vector<Frame> frames = RandomFrames(rng);
  std::string all;
  for (const Frame& f : frames) EncodeFrame(f, &all);
  FrameParser p;
  std::vector<Frame> out;
  for (char c : all) {
    ASSERT_TRUE(p.Feed(std::string_view(&c, 1)).ok());
    auto f = p.Next();
    ASSERT_TRUE(f.ok()) << f.status();
    if (f->has_value()) out.push_back(std::move(**f));
    auto again = p.Next();  // at most one frame completes per byte
    ASSERT_TRUE(again.ok());
    EXPECT_FALSE(again->has_value());
  }
  EXPECT_EQ(out, frames);
  EXPECT_EQ(p.buffered_bytes(), 0u);
}

TEST(FrameTest, TruncatedStreamWaitsThenCompletes) {
  std::mt19937_64 rng(7);
  const Frame f = RandomLayer(rng, KvDType::kInt8, 42, 1);
  const std::string s = Encode(f);
  for (size_t cut : {size_t{0}, size_t{3}, kFrameHeaderBytes - 1, kFrameHeaderBytes,
                     kFrameHeaderBytes + 10, s.size() - 1}) {
    FrameParser p;
    ASSERT_TRUE(p.Feed(std::string_view(s).substr(0, cut)).ok());
    auto partial = p.Next();
    ASSERT_TRUE(partial.ok()) << "cut " << cut << ": " << partial.status();
    EXPECT_FALSE(partial->has_value()) << "cut " << cut;
    ASSERT_TRUE(p.Feed(std::string_view(s).substr(cut)).ok());
    auto full = p.Next();
    ASSERT_TRUE(full.ok()) << full.status();
    ASSERT_TRUE(full->has_value());
    EXPECT_EQ(**full, f);
  }
}

TEST(FrameTest, FlippedPayloadByteIsDataLoss) {
  std::mt19937_64 rng(8);
  for (const Frame& f : RandomFrames(rng)) {
    std::string s = Encode(f);
    s[kFrameHeaderBytes + (rng() % (s.size() - kFrameHeaderBytes))] ^= 0x10;
    FrameParser p;
    ASSERT_TRUE(p.Feed(s).ok());
    auto r = p.Next();
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  }
}

TEST(FrameTest, FlippedChecksumIsDataLoss) {
  std::string s = Encode(CommitFrame{1, 2, 3});
  s[12] ^= 1;
  FrameParser p;
  ASSERT_TRUE(p.Feed(s).ok());
  EXPECT_EQ(p.Next().status().code(), absl::StatusCode::kDataLoss);
}

TEST(FrameTest, BadHeaderFieldsAreInvalidArgument) {
  const std::string good = Encode(ReserveOkFrame{1, 2, 3});
  struct Case {
    size_t offset;
    char value;
  };
  for (Case c : {Case{0, 'X'}, Case{3, '2'}, Case{4, 0}, Case{4, 6}, Case{4, '\xff'}, Case{5, 0},
                 Case{5, 1}, Case{5, 2}, Case{5, 4}, Case{6, 1}, Case{7, 1}}) {
    std::string s = good;
    s[c.offset] = c.value;
    FrameParser p;
    ASSERT_TRUE(p.Feed(std::string_view(s).substr(0, kFrameHeaderBytes)).ok());
    // Judged on the header alone, before the payload arrives.
    auto r = p.Next();
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument)
        << "offset " << c.offset << ": " << r.status();
  }
}

TEST(FrameTest, PayloadOverMaxIsRefusedWithoutBuffering) {
  std::string s = Encode(AbortFrame{1, std::string(100, 'a')});
  FrameParser p(/*max_payload_bytes=*/64);
  ASSERT_TRUE(p.Feed(std::string_view(s).substr(0, kFrameHeaderBytes)).ok());
  auto r = p.Next();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();

  // A header announcing 4 GiB - 1 on a default parser: refused from the 16 header bytes.
  std::string huge = s.substr(0, kFrameHeaderBytes);
  for (int i = 8; i < 12; ++i) huge[i] = '\xff';
  FrameParser q;
  ASSERT_TRUE(q.Feed(huge).ok());
  EXPECT_EQ(q.Next().status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(q.buffered_bytes(), 0u);
}

// Re-frames `payload` as a frame of `type` with a correct checksum.
std::string WithHeader(FrameType type, const std::string& payload) {
  std::string s = Encode(AbortFrame{0, payload.substr(std::min<size_t>(8, payload.size()))});
  s.resize(kFrameHeaderBytes);
  s[4] = static_cast<char>(type);
  const uint32_t len = static_cast<uint32_t>(payload.size());
  const uint32_t crc = Crc32c(payload);
  for (int i = 0; i < 4; ++i) {
    s[8 + i] = static_cast<char>(len >> (8 * i));
    s[12 + i] = static_cast<char>(crc >> (8 * i));
  }
  return s + payload;
}

absl::StatusCode ParseCode(const std::string& bytes) {
  FrameParser p;
  EXPECT_TRUE(p.Feed(bytes).ok());
  return p.Next().status().code();
}

TEST(FrameTest, MalformedPayloadsAreInvalidArgument) {
  std::mt19937_64 rng(9);
  const std::string layer =
      Encode(RandomLayer(rng, KvDType::kF16, 1, 0, 2, 5, 16)).substr(kFrameHeaderBytes);
  // Wrong data size for the layout, either way.
  EXPECT_EQ(ParseCode(WithHeader(FrameType::kLayer, layer + "x")),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseCode(WithHeader(FrameType::kLayer, layer.substr(0, layer.size() - 1))),
            absl::StatusCode::kInvalidArgument);
  // The same bytes under an int8 dtype code: int8 needs 480 bytes for this layout, f16 640.
  std::string as_int8 = layer;
  as_int8[28] = 2;
  EXPECT_EQ(ParseCode(WithHeader(FrameType::kLayer, as_int8)), absl::StatusCode::kInvalidArgument);
  std::string bad_dtype = layer;
  bad_dtype[28] = 9;
  EXPECT_EQ(ParseCode(WithHeader(FrameType::kLayer, bad_dtype)),
            absl::StatusCode::kInvalidArgument);
  std::string neg_layer = layer;
  neg_layer[11] = '\x80';
  EXPECT_EQ(ParseCode(WithHeader(FrameType::kLayer, neg_layer)),
            absl::StatusCode::kInvalidArgument);
  std::string neg_heads = layer;
  neg_heads[23] = '\xff';
  EXPECT_EQ(ParseCode(WithHeader(FrameType::kLayer, neg_heads)),
            absl::StatusCode::kInvalidArgument);
  // A first position outside [0, n_tokens), and one whose data is the whole layer's.
  for (const int32_t first : {-1, 5, 6}) {
    std::string bad_first = layer;
    std::memcpy(&bad_first[16], &first, 4);
    EXPECT_EQ(ParseCode(WithHeader(FrameType::kLayer, bad_first)),
              absl::StatusCode::kInvalidArgument)
        << first;
  }
  std::string first_two = layer;
  first_two[16] = 2;  // positions 2..4 need 3/5 of the data
  EXPECT_EQ(ParseCode(WithHeader(FrameType::kLayer, first_two)),
            absl::StatusCode::kInvalidArgument);
  // Fixed-size payloads of the wrong size, and a reserve with zero layers.
  const std::string reserve =
      Encode(ReserveFrame{1, 4, 2, 2, 8, KvDType::kF16}).substr(kFrameHeaderBytes);
  EXPECT_EQ(ParseCode(WithHeader(FrameType::kReserve, reserve + "x")),
            absl::StatusCode::kInvalidArgument);
  std::string zero_layers = reserve;
  for (int i = 12; i < 16; ++i) zero_layers[i] = 0;
  EXPECT_EQ(ParseCode(WithHeader(FrameType::kReserve, zero_layers)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseCode(WithHeader(FrameType::kReserveOk, std::string(23, 'a'))),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseCode(WithHeader(FrameType::kCommit, std::string(45, 'a'))),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseCode(WithHeader(FrameType::kAbort, std::string(7, 'a'))),
            absl::StatusCode::kInvalidArgument);
  // And the helper itself frames a good payload correctly.
  EXPECT_EQ(ParseCode(WithHeader(FrameType::kLayer, layer)), absl::StatusCode::kOk);
}

TEST(FrameTest, FailureIsSticky) {
  std::string s = Encode(AbortFrame{1, "a"});
  s[kFrameHeaderBytes] ^= 1;
  const std::string good = Encode(AbortFrame{2, "b"});
  FrameParser p;
  ASSERT_TRUE(p.Feed(s + good).ok());
  const absl::Status first = p.Next().status();
  EXPECT_EQ(first.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(p.failed());
  EXPECT_EQ(p.Next().status(), first);
  EXPECT_EQ(p.Feed(good), first);
  EXPECT_EQ(p.Next().status(), first);
}

// --- KvReceiveSession ---

constexpr uint64_t kId = 77;
constexpr int kLayers = 4;

ReserveFrame Reserve(KvDType dtype = KvDType::kInt8) {
  return ReserveFrame{kId, /*n_tokens=*/5, kLayers, /*n_kv_heads=*/2, /*head_dim=*/8, dtype};
}

CommitFrame Commit() { return CommitFrame{kId, 1234, 0x0102030405060708u}; }

TEST(KvReceiveSessionTest, HappyPathLayersOutOfOrder) {
  for (KvDType dtype : {KvDType::kInt8, KvDType::kF16}) {
    std::mt19937_64 rng(10);
    KvReceiveSession s(kId);
    EXPECT_EQ(s.state(), State::kAwaitReserve);
    ASSERT_TRUE(s.OnFrame(Reserve(dtype)).ok());
    EXPECT_EQ(s.state(), State::kReceiving);
    for (int32_t layer : {2, 0, 3, 1}) {
      ASSERT_TRUE(s.OnFrame(RandomLayer(rng, dtype, kId, layer)).ok());
    }
    EXPECT_EQ(s.layers_received(), kLayers);
    EXPECT_FALSE(s.commit().has_value());
    ASSERT_TRUE(s.OnFrame(Commit()).ok());
    EXPECT_EQ(s.state(), State::kCommitted);
    ASSERT_TRUE(s.commit().has_value());
    EXPECT_EQ(*s.commit(), Commit());
  }
}

TEST(KvReceiveSessionTest, OutOfOrderAndDuplicatesAreFailedPrecondition) {
  std::mt19937_64 rng(11);
  auto layer = [&](int32_t i) { return RandomLayer(rng, KvDType::kInt8, kId, i); };
  {
    KvReceiveSession s(kId);  // layer before reserve
    EXPECT_EQ(s.OnFrame(layer(0)).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(s.state(), State::kFailed);
  }
  {
    KvReceiveSession s(kId);  // commit before reserve
    EXPECT_EQ(s.OnFrame(Commit()).code(), absl::StatusCode::kFailedPrecondition);
  }
  {
    KvReceiveSession s(kId);  // second reserve
    ASSERT_TRUE(s.OnFrame(Reserve()).ok());
    EXPECT_EQ(s.OnFrame(Reserve()).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(s.state(), State::kFailed);
  }
  {
    KvReceiveSession s(kId);  // duplicate layer
    ASSERT_TRUE(s.OnFrame(Reserve()).ok());
    ASSERT_TRUE(s.OnFrame(layer(1)).ok());
    EXPECT_EQ(s.OnFrame(layer(1)).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(s.state(), State::kFailed);
  }
  {
    KvReceiveSession s(kId);  // commit with a layer missing
    ASSERT_TRUE(s.OnFrame(Reserve()).ok());
    for (int32_t i : {0, 1, 3}) ASSERT_TRUE(s.OnFrame(layer(i)).ok());
    EXPECT_EQ(s.OnFrame(Commit()).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(s.state(), State::kFailed);
    EXPECT_FALSE(s.commit().has_value());
  }
  {
    KvReceiveSession s(kId);  // anything after commit; the commit stands
    ASSERT_TRUE(s.OnFrame(Reserve()).ok());
    for (int32_t i = 0; i < kLayers; ++i) ASSERT_TRUE(s.OnFrame(layer(i)).ok());
    ASSERT_TRUE(s.OnFrame(Commit()).ok());
    EXPECT_EQ(s.OnFrame(Commit()).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(s.OnFrame(layer(0)).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(s.OnFrame(AbortFrame{kId, "late"}).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(s.state(), State::kCommitted);
    EXPECT_TRUE(s.commit().has_value());
  }
}

TEST(KvReceiveSessionTest, AbortAtEachState) {
  std::mt19937_64 rng(12);
  for (int stage = 0; stage < 3; ++stage) {
    KvReceiveSession s(kId);
    if (stage >= 1) {
      ASSERT_TRUE(s.OnFrame(Reserve()).ok());
    }
    if (stage >= 2) {
      ASSERT_TRUE(s.OnFrame(RandomLayer(rng, KvDType::kInt8, kId, 2)).ok());
    }
    ASSERT_TRUE(s.OnFrame(AbortFrame{kId, "prefill evicted"}).ok()) << "stage " << stage;
    EXPECT_EQ(s.state(), State::kAborted);
    EXPECT_EQ(s.abort_reason(), "prefill evicted");
    EXPECT_EQ(s.OnFrame(Reserve()).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(s.OnFrame(AbortFrame{kId, "again"}).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(s.state(), State::kAborted);
  }
  // A failed session stays failed; even an abort gets the original error back.
  KvReceiveSession f(kId);
  const absl::Status first = f.OnFrame(Commit());
  EXPECT_EQ(f.OnFrame(AbortFrame{kId, "x"}), first);
  EXPECT_EQ(f.OnFrame(Reserve()), first);
  EXPECT_EQ(f.state(), State::kFailed);
  EXPECT_EQ(f.error(), first);
}

TEST(KvReceiveSessionTest, MismatchesAreInvalidArgument) {
  std::mt19937_64 rng(13);
  auto started = [] {
    auto s = std::make_unique<KvReceiveSession>(kId);
    EXPECT_TRUE(s->OnFrame(Reserve()).ok());
    return s;
  };
  {
    KvReceiveSession s(kId);  // wrong transfer id, before and after reserve
    ReserveFrame r = Reserve();
    r.transfer_id = kId + 1;
    EXPECT_EQ(s.OnFrame(r).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(s.state(), State::kFailed);
  }
  {
    auto s = started();
    EXPECT_EQ(s->OnFrame(RandomLayer(rng, KvDType::kInt8, kId + 1, 0)).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(s->state(), State::kFailed);
  }
  std::vector<LayerFrame> bad;
  bad.push_back(RandomLayer(rng, KvDType::kInt8, kId, kLayers));      // index out of range
  bad.push_back(RandomLayer(rng, KvDType::kInt8, kId, -1));           // negative index
  bad.push_back(RandomLayer(rng, KvDType::kF16, kId, 0));             // dtype
  bad.push_back(RandomLayer(rng, KvDType::kInt8, kId, 0, 2, 6, 8));   // n_tokens
  bad.push_back(RandomLayer(rng, KvDType::kInt8, kId, 0, 1, 5, 8));   // heads
  bad.push_back(RandomLayer(rng, KvDType::kInt8, kId, 0, 2, 5, 16));  // head_dim
  bad.push_back(RandomLayer(rng, KvDType::kInt8, kId, 0));
  bad.back().payload.pop_back();  // payload size (a frame built in memory, not parsed)
  for (size_t i = 0; i < bad.size(); ++i) {
    auto s = started();
    EXPECT_EQ(s->OnFrame(bad[i]).code(), absl::StatusCode::kInvalidArgument) << "case " << i;
    EXPECT_EQ(s->state(), State::kFailed);
    EXPECT_EQ(s->layers_received(), 0);
  }
  {
    auto s = started();  // decode never receives reserve-ok
    EXPECT_EQ(s->OnFrame(ReserveOkFrame{kId, 1, 2}).code(), absl::StatusCode::kInvalidArgument);
  }
  {
    KvReceiveSession s(kId);  // a malformed reserve built in memory
    ReserveFrame r = Reserve();
    r.n_layers = 0;
    EXPECT_EQ(s.OnFrame(r).code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace tandem::kvcache
