// absl::Status -> grpc::Status for the gRPC services, with the codes the Frontend documents
// (server/frontend.h): InvalidArgument, NotFound, OutOfRange, ResourceExhausted, Unavailable and
// Unauthenticated keep their meaning; every other failure becomes INTERNAL. The message passes
// through unchanged, so gRPC clients see the same text HTTP clients do.
//
// A status that carries a retry delay (common/retry_after.h: the scheduler's 429s) also sets
// the trailing metadata `grpc-retry-pushback-ms`, the key gRPC's own retry policy honours.
//
// Thread safety: pure functions, except that the ServerContextBase overload writes the call's
// trailing metadata (call it before the call's Finish, from one thread at a time).
#ifndef TANDEM_SERVER_GRPC_STATUS_CONVERT_H_
#define TANDEM_SERVER_GRPC_STATUS_CONVERT_H_

#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace tandem::server::grpc_api {

// Trailing metadata: how long the client should wait before retrying, in whole milliseconds.
inline constexpr char kRetryPushbackKey[] = "grpc-retry-pushback-ms";

grpc::StatusCode ToGrpcCode(absl::StatusCode code);
grpc::Status ToGrpcStatus(const absl::Status& status);
// ToGrpcStatus, and for a failure carrying a retry delay, `kRetryPushbackKey: <ms>` added to
// the call's trailing metadata.
grpc::Status ToGrpcStatus(const absl::Status& status, grpc::ServerContextBase& context);

// The canonical name of a code ("OK", "INVALID_ARGUMENT", ...), for logs and metrics.
const char* GrpcCodeName(grpc::StatusCode code);

}  // namespace tandem::server::grpc_api

#endif  // TANDEM_SERVER_GRPC_STATUS_CONVERT_H_
