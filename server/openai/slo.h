// Per-request SLO values: the one range rule every API applies to a TTFT / TPOT target, and the
// parser of one header (HTTP `x-slo-ttft-ms` / `x-slo-tpot-ms`, gRPC metadata of the same
// names) into such a value. The JSON body's `slo` object and its older spellings are parsed by
// request_parser.h, the stored GenerationRequest fields are checked by validate.h; both use
// CheckSloMs, so the body, the headers, the metadata and the proto fields cannot drift apart.
//
// Precedence (applied by the API layers, documented in docs/api.md): a header / metadata value
// overrides the body / proto value, which overrides the daemon's --ttft-slo-ms / --tpot-slo-ms.
//
// Thread safety: pure functions.
#ifndef TANDEM_SERVER_OPENAI_SLO_H_
#define TANDEM_SERVER_OPENAI_SLO_H_

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tandem::server::openai {

// The largest SLO a request may ask for: one hour. Past it a target means nothing to the
// scheduler, and a typo (seconds given as microseconds) should fail loudly.
inline constexpr double kMaxSloMs = 3600000;

// Header and gRPC metadata keys (lower case, as gRPC requires; HTTP matches them ignoring
// case).
inline constexpr char kSloTtftHeader[] = "x-slo-ttft-ms";
inline constexpr char kSloTpotHeader[] = "x-slo-tpot-ms";

// OK when `ms` is finite, > 0 and <= kMaxSloMs; else InvalidArgument naming `param`, e.g.
// "'slo.ttft_ms' must be a number of milliseconds > 0 and <= 3600000 (one hour), got 0".
absl::Status CheckSloMs(std::string_view param, double ms);

// One header value: a decimal number (JSON's number syntax, surrounding spaces and tabs
// ignored) that passes CheckSloMs. Errors are InvalidArgument naming `name` as the param; the
// message quotes at most 64 bytes of `value`, which may hold any bytes.
absl::StatusOr<double> ParseSloHeader(std::string_view name, std::string_view value);

}  // namespace tandem::server::openai

#endif  // TANDEM_SERVER_OPENAI_SLO_H_
