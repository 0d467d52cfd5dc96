// GrpcClient: tandem's gRPC client (proto/tandem/v1/generation.proto and grpc.health.v1).
// Implements the transport-neutral Client and also exposes the full proto API (GenerateProto,
// Tokenize) for callers that need every field (logprobs, token ids, batches).
//
// Thread safety: one call at a time per GrpcClient (the channel itself is thread-safe; create
// one GrpcClient per thread to share nothing).
#ifndef TANDEM_CLIENT_GRPC_CLIENT_H_
#define TANDEM_CLIENT_GRPC_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::client {

struct GrpcClientOptions {
  std::string target = "127.0.0.1:50051";  // host:port (any gRPC target string)
  std::string api_key;                     // sent as `authorization: Bearer <key>` when set
  // Per-call deadline; infinite: none.
  absl::Duration timeout = absl::InfiniteDuration();
};

// gRPC status -> absl::Status with the same code and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

class GrpcClient final : public Client {
 public:
  // InvalidArgument for an empty target. Connecting is lazy: an unreachable server shows up as
  // Unavailable on the first call.
  static absl::StatusOr<std::unique_ptr<GrpcClient>> Create(const GrpcClientOptions& options);

  // Client.
  absl::StatusOr<Usage> Generate(const GenerateParams& params,
                                 const DeltaCallback& on_delta) override;
  // grpc.health.v1 Check of the whole server: OK when SERVING, Unavailable otherwise.
  absl::Status Health() override;
  absl::StatusOr<std::vector<ModelEntry>> ListModels() override;

  // Generation.Generate with the proto request as it is. `on_delta` sees every ChoiceDelta in
  // order; returning false cancels the call (Cancelled). Returns the final message's usage.
  absl::StatusOr<tandem::v1::Usage> GenerateProto(
      const tandem::v1::GenerateRequest& request,
      const std::function<bool(const tandem::v1::ChoiceDelta&)>& on_delta);
  absl::StatusOr<tandem::v1::TokenizeResponse> Tokenize(const tandem::v1::TokenizeRequest& request);
  // grpc.health.v1 Check of one service ("" = the whole server).
  absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> HealthStatus(
      const std::string& service);

  // The request GenerateProto sends for `params` (exposed for tests and callers that want to
  // add proto-only fields).
  static tandem::v1::GenerateRequest ToProto(const GenerateParams& params);

 private:
  explicit GrpcClient(const GrpcClientOptions& options);
  void Prepare(grpc::ClientContext* context) const;

  // Constant after construction.
  const GrpcClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tandem::v1::Generation::Stub> generation_;
  std::unique_ptr<tandem::v1::Models::Stub> models_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

}  // namespace tandem::client

#endif  // TANDEM_CLIENT_GRPC_CLIENT_H_
