// Retry-After on a Status: how long a client should wait before trying a rejected request
// again. The code that rejects (the scheduler's SLO admission, a full queue) attaches it; the
// code that answers (HTTP's Retry-After header, gRPC's trailing metadata) reads it. A payload
// rather than a field because absl::Status crosses module lines as the one error type.
//
// Thread safety: pure functions.
#ifndef TANDEM_COMMON_RETRY_AFTER_H_
#define TANDEM_COMMON_RETRY_AFTER_H_

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/time/time.h"
#include "absl/types/optional.h"

namespace tandem {

// Payload type URL; the bytes are the delay in whole milliseconds, in decimal.
inline constexpr char kRetryAfterPayloadUrl[] = "tandem/retry_after_ms";

// A copy of `status` carrying `delay` (clamped to >= 0). OK statuses are returned unchanged.
inline absl::Status WithRetryAfter(absl::Status status, absl::Duration delay) {
  if (status.ok()) return status;
  const int64_t ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(delay));
  status.SetPayload(kRetryAfterPayloadUrl, absl::Cord(std::to_string(ms)));
  return status;
}

// The delay attached by WithRetryAfter, if any.
inline std::optional<absl::Duration> RetryAfterOf(const absl::Status& status) {
  // absl::optional, not std::optional: Debian's Abseil keeps its own optional type.
  const absl::optional<absl::Cord> p = status.GetPayload(kRetryAfterPayloadUrl);
  if (!p) return std::nullopt;
  int64_t ms = 0;
  if (!absl::SimpleAtoi(std::string(*p), &ms) || ms < 0) return std::nullopt;
  return absl::Milliseconds(ms);
}

// The Retry-After header's value: whole seconds, rounded up, at least 1 (RFC 9110 allows
// only integer seconds).
inline int64_t RetryAfterHeaderSeconds(absl::Duration delay) {
  const int64_t ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(delay));
  return std::max<int64_t>(1, (ms + 999) / 1000);
}

}  // namespace tandem

#endif  // TANDEM_COMMON_RETRY_AFTER_H_
