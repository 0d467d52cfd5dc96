// libFuzzer target for the KV handover wire format (kvcache/transfer/kv_frame.h): any byte
// stream, split into any chunks, must give frames or an error, never a crash, an out-of-bounds
// read or an allocation beyond the bounded payload; every frame parsed must re-encode to a
// stream that parses back to the same frame; a KvReceiveSession fed those frames must never
// crash. Build and run from the repository root with `make fuzz-kv-frame`, i.e.
//   clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -I. \
//     tests/fuzz/kv_frame_fuzz.cc kvcache/transfer/kv_frame.cc \
//     $(pkg-config --libs absl_statusor absl_status absl_strings absl_cord) -o kv_frame_fuzz
//   ./kv_frame_fuzz -max_len=65536 -rss_limit_mb=2048 corpus/
//
// Input layout: byte 0: bits 0-2 = number of chunk split points, bit 3 = fix checksums; then
// one byte per split point, a chunk length; the rest is the stream. With bit 3 set, the harness
// walks the stream's headers and writes each payload's true CRC-32C, so the fuzzer gets past
// the checksum to the payload parsers (it could not guess a CRC). The first parsed frame's
// transfer id names the session.
// Bit 4 = structured: the stream is not taken as is but built by EncodeFrame from a little
// program in the remaining bytes (see BuildStream), so well-formed Reserve/Layer/Commit frames
// and whole sessions are reached at once; bit 5 then flips one byte of it (position from the
// program's first two bytes) to exercise the payload parsers on near-valid frames.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/transfer/kv_frame.h"

namespace {

using tandem::kvcache::EncodeFrame;
using tandem::kvcache::Frame;
using tandem::kvcache::FrameParser;
using tandem::kvcache::KvReceiveSession;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "kv_frame_fuzz: %s\n", what);
  std::abort();
}

void CheckReencoding(const Frame& f) {
  std::string bytes;
  EncodeFrame(f, &bytes);
  FrameParser p;
  if (!p.Feed(bytes).ok()) Die("feed of a re-encoding failed");
  auto back = p.Next();
  if (!back.ok()) Die("re-encoding does not parse");
  if (!back->has_value()) Die("re-encoding is incomplete");
  if (!(**back == f)) Die("re-encoding parses to a different frame");
  auto end = p.Next();
  if (!end.ok() || end->has_value() || p.buffered_bytes() != 0) Die("re-encoding has extra bytes");
}

// Overwrites the crc32c field of every complete frame header in `s` with its payload's CRC.
void FixChecksums(std::string& s) {
  size_t at = 0;
  while (s.size() - at >= tandem::kvcache::kFrameHeaderBytes) {
    uint32_t len = 0;
    for (int i = 0; i < 4; ++i) len |= uint32_t{static_cast<uint8_t>(s[at + 8 + i])} << (8 * i);
    const size_t body = at + tandem::kvcache::kFrameHeaderBytes;
    if (s.size() - body < len) return;
    const uint32_t crc = tandem::kvcache::Crc32c(std::string_view(s).substr(body, len));
    for (int i = 0; i < 4; ++i) s[at + 12 + i] = static_cast<char>(crc >> (8 * i));
    at = body + len;
  }
}

// Each op: a type byte, then the fields, each from one byte in a small range so that layouts
// of consecutive frames agree often enough for a session to get to Commit.
std::string BuildStream(std::string_view prog) {
  using namespace tandem::kvcache;
  auto take = [&prog]() -> uint8_t {
    if (prog.empty()) return 0;
    const uint8_t b = static_cast<uint8_t>(prog[0]);
    prog.remove_prefix(1);
    return b;
  };
  std::string out;
  while (!prog.empty() && out.size() < 65536) {
    const uint8_t op = take();
    const uint64_t id = take() % 3;
    switch (op % 5) {
      case 0:
        EncodeFrame(ReserveFrame{id, 1 + take() % 4, 1 + take() % 4, 1 + take() % 3, 1 + take() % 8,
                                 static_cast<tandem::kernels::KvDType>(take() % 3)},
                    &out);
        break;
      case 1:
        EncodeFrame(ReserveOkFrame{id, take(), static_cast<int8_t>(take())}, &out);
        break;
      case 2: {
        LayerFrame l{id,
                     take() % 5,
                     1 + take() % 4,
                     0,
                     1 + take() % 3,
                     1 + take() % 8,
                     static_cast<tandem::kernels::KvDType>(take() % 3),
                     {}};
        l.first = take() % l.n_tokens;
        l.payload.assign(LayerPayloadBytes(l.dtype, l.n_kv_heads, l.n_tokens - l.first, l.head_dim),
                         static_cast<char>(take()));
        EncodeFrame(l, &out);
        break;
      }
      case 3:
        EncodeFrame(CommitFrame{id, take(), {take(), 0, 0, take()}}, &out);
        break;
      default:
        EncodeFrame(AbortFrame{id, std::string(take() % 4, 'r')}, &out);
        break;
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<size_t> chunks;
  bool fix_checksums = false;
  if (!in.empty()) {
    const size_t n = static_cast<uint8_t>(in[0]) & 7;
    fix_checksums = (static_cast<uint8_t>(in[0]) & 8) != 0;
    in.remove_prefix(1);
    for (size_t i = 0; i < n && !in.empty(); ++i) {
      chunks.push_back(static_cast<uint8_t>(in[0]));
      in.remove_prefix(1);
    }
  }
  const uint8_t mode = size > 0 ? data[0] : 0;
  std::string stream(in);
  if ((mode & 16) != 0) {
    stream = BuildStream(in);
    if ((mode & 32) != 0 && in.size() >= 2 && !stream.empty()) {
      const size_t at = (static_cast<uint8_t>(in[0]) | static_cast<uint8_t>(in[1]) << 8);
      stream[at % stream.size()] ^= static_cast<char>(in[1] | 1);
    }
  }
  if (fix_checksums) FixChecksums(stream);
  in = stream;
  // A small max so oversized-payload refusals are reachable with short inputs too.
  FrameParser parser(/*max_payload_bytes=*/32768);
  std::optional<KvReceiveSession> session;
  size_t next_chunk = 0;
  bool failed = false;
  while (!failed) {
    size_t take = in.size();
    if (next_chunk < chunks.size()) take = std::min(in.size(), chunks[next_chunk++]);
    const bool last = take == in.size();
    if (!parser.Feed(in.substr(0, take)).ok()) Die("feed failed on a healthy parser");
    in.remove_prefix(take);
    while (true) {
      auto f = parser.Next();
      if (!f.ok()) {
        // Sticky: the same error again, on Next and on Feed.
        if (parser.Next().status() != f.status()) Die("parser error is not sticky");
        if (parser.Feed("x") != f.status()) Die("parser error is not sticky on Feed");
        failed = true;
        break;
      }
      if (!f->has_value()) break;
      const Frame& frame = **f;
      CheckReencoding(frame);
      if (!session) session.emplace(tandem::kvcache::TransferIdOf(frame));
      const auto before = session->state();
      const absl::Status s = session->OnFrame(frame);
      if (before == KvReceiveSession::State::kFailed && s != session->error()) {
        Die("session error is not sticky");
      }
      if (session->state() == KvReceiveSession::State::kCommitted &&
          session->layers_received() != session->reserve()->n_layers) {
        Die("committed without every layer");
      }
    }
    if (last) break;
  }
  return 0;
}
