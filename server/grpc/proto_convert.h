// Conversions between the public proto messages (proto/tandem/v1/generation.proto) and the
// API-neutral request/response types the Frontend speaks (server/generation_request.h,
// server/frontend.h). Only what the proto types cannot express is checked here (which input of
// a oneof is set); value ranges are the Frontend's job, so HTTP and gRPC share one validation.
//
// Thread safety: pure functions.
#ifndef TANDEM_SERVER_GRPC_PROTO_CONVERT_H_
#define TANDEM_SERVER_GRPC_PROTO_CONVERT_H_

#include "absl/status/statusor.h"
#include "server/frontend.h"
#include "server/generation_request.h"
#include "tandem/v1/generation.pb.h"

namespace tandem::server::grpc_api {

// InvalidArgument when no input (text, token_ids, batch, chat) is set or a batch prompt is
// empty. The result has stream and include_usage set: gRPC always streams and ends with usage.
absl::StatusOr<GenerationRequest> FromProto(const tandem::v1::GenerateRequest& proto);

// InvalidArgument when neither text nor chat is set.
absl::StatusOr<TokenizeRequest> FromProto(const tandem::v1::TokenizeRequest& proto);

void ToProto(const ChoiceDelta& delta, tandem::v1::ChoiceDelta* proto);
void ToProto(const Usage& usage, tandem::v1::Usage* proto);
void ToProto(const ModelInfo& info, tandem::v1::ModelInfo* proto);

}  // namespace tandem::server::grpc_api

#endif  // TANDEM_SERVER_GRPC_PROTO_CONVERT_H_
