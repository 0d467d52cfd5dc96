#include "kvcache/transfer/kv_connection.h"

#include <cstdint>

#include "common/str_cat.h"

namespace tandem::kvcache {
namespace {

constexpr char kAuthMagic[] = "TKVA";
constexpr size_t kMaxSecretBytes = 4096;

}  // namespace

std::string AuthPreamble(std::string_view secret) {
  std::string out(kAuthMagic, 4);
  const uint32_t n = static_cast<uint32_t>(secret.size());
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(n >> (8 * i)));
  out.append(secret);
  return out;
}

absl::Status CheckAuthPreamble(KvConnection& conn, std::string_view secret,
                               absl::Duration timeout) {
  const absl::Time until = absl::Now() + timeout;
  std::string got;
  size_t want = 8;
  while (got.size() < want) {
    const absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::UnauthenticatedError(
          StrCat("KV peer ", conn.peer(), " sent no credentials in time"));
    }
    char buf[512];
    // Exactly what the preamble still lacks: frames after it belong to the parser.
    absl::StatusOr<size_t> n = conn.Read(buf, std::min(sizeof(buf), want - got.size()), left);
    if (!n.ok()) return n.status();
    got.append(buf, *n);
    if (got.size() == 8 && want == 8) {
      if (got.compare(0, 4, kAuthMagic) != 0) {
        return absl::UnauthenticatedError(
            StrCat("KV peer ", conn.peer(), " did not authenticate (no cluster secret?)"));
      }
      uint32_t len = 0;
      for (int i = 0; i < 4; ++i)
        len |= static_cast<uint32_t>(static_cast<uint8_t>(got[4 + i])) << (8 * i);
      if (len > kMaxSecretBytes) {
        return absl::UnauthenticatedError(StrCat("KV peer ", conn.peer(), ": bad credentials"));
      }
      want = 8 + len;
    }
  }
  const std::string_view theirs = std::string_view(got).substr(8);
  // Compared in full whatever the first difference, so timing says nothing of the secret.
  unsigned diff = theirs.size() != secret.size();
  for (size_t i = 0; i < theirs.size() && i < secret.size(); ++i) diff |= theirs[i] ^ secret[i];
  if (diff != 0) {
    return absl::UnauthenticatedError(StrCat("KV peer ", conn.peer(), ": wrong cluster secret"));
  }
  return absl::OkStatus();
}

bool IsLoopbackPeer(std::string_view peer) {
  return peer.rfind("127.", 0) == 0 || peer.rfind("[::1]", 0) == 0 ||
         peer.rfind("[::ffff:127.", 0) == 0 || peer.rfind("shm:", 0) == 0;
}

}  // namespace tandem::kvcache
