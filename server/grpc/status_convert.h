// absl::Status -> grpc::Status for the gRPC services, with the codes the Frontend documents
// (server/frontend.h): InvalidArgument, NotFound, OutOfRange, ResourceExhausted, Unavailable and
// Unauthenticated keep their meaning; every other failure becomes INTERNAL. The message passes
// through unchanged, so gRPC clients see the same text HTTP clients do.
//
// Thread safety: pure functions.
#ifndef TANDEM_SERVER_GRPC_STATUS_CONVERT_H_
#define TANDEM_SERVER_GRPC_STATUS_CONVERT_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace tandem::server::grpc_api {

grpc::StatusCode ToGrpcCode(absl::StatusCode code);
grpc::Status ToGrpcStatus(const absl::Status& status);

// The canonical name of a code ("OK", "INVALID_ARGUMENT", ...), for logs and metrics.
const char* GrpcCodeName(grpc::StatusCode code);

}  // namespace tandem::server::grpc_api

#endif  // TANDEM_SERVER_GRPC_STATUS_CONVERT_H_
