// GenerationServiceImpl and ModelsServiceImpl: the tandem.v1 gRPC services
// (proto/tandem/v1/generation.proto) over a server::Frontend. They only translate: proto in,
// Frontend call, proto out, absl::Status -> grpc::Status (status_convert.h). Validation,
// tokenization and generation are the Frontend's.
//
// Generate runs on a gRPC synchronous-server thread: it polls the GenerationStream with
// WaitAndTake in short slices so a client that goes away (or a server shutdown past its
// deadline) is noticed within one slice, and cancels the stream, which frees the request's
// sequences in the engine.
//
// Per-request SLOs: the request's ttft_slo_ms / tpot_slo_ms fields, overridden by the call
// metadata x-slo-ttft-ms / x-slo-tpot-ms (openai::ParseSloHeader; a bad value is
// INVALID_ARGUMENT naming the key). A failure that carries a retry delay (a scheduler 429)
// returns it as the trailing metadata grpc-retry-pushback-ms (status_convert.h).
//
// Authentication: when `api_key` is not empty every call must carry the metadata
// `authorization: Bearer <api_key>`; others fail with UNAUTHENTICATED before the Frontend is
// called.
//
// Thread safety: every method may run on many gRPC threads at once; the services hold only
// constants and the Frontend, which is thread-safe. The Frontend must outlive the services.
#ifndef TANDEM_SERVER_GRPC_GENERATION_SERVICE_H_
#define TANDEM_SERVER_GRPC_GENERATION_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <string>

#include "absl/time/time.h"
#include "server/frontend.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::server::grpc_api {

// Told the status of every answered call (metrics); may be empty. Called on gRPC threads.
using StatusObserver = std::function<void(grpc::StatusCode code)>;

// OK when `api_key` is empty or the call carries `authorization: Bearer <api_key>`.
grpc::Status CheckApiKey(const grpc::ServerContext& context, const std::string& api_key);

class GenerationServiceImpl final : public tandem::v1::Generation::Service {
 public:
  // `poll_interval`: how long one WaitAndTake may block before cancellation is checked.
  GenerationServiceImpl(Frontend& frontend, std::string api_key,
                        absl::Duration poll_interval = absl::Milliseconds(50),
                        StatusObserver on_status = nullptr);

  grpc::Status Generate(grpc::ServerContext* context, const tandem::v1::GenerateRequest* request,
                        grpc::ServerWriter<tandem::v1::GenerateResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const tandem::v1::TokenizeRequest* request,
                        tandem::v1::TokenizeResponse* response) override;
  grpc::Status Detokenize(grpc::ServerContext* context,
                          const tandem::v1::DetokenizeRequest* request,
                          tandem::v1::DetokenizeResponse* response) override;

 private:
  grpc::Status DoGenerate(grpc::ServerContext* context, const tandem::v1::GenerateRequest* request,
                          grpc::ServerWriter<tandem::v1::GenerateResponse>* writer);
  grpc::Status DoTokenize(grpc::ServerContext* context, const tandem::v1::TokenizeRequest* request,
                          tandem::v1::TokenizeResponse* response);
  grpc::Status DoDetokenize(grpc::ServerContext* context,
                            const tandem::v1::DetokenizeRequest* request,
                            tandem::v1::DetokenizeResponse* response);
  grpc::Status Report(grpc::Status status) const {
    if (on_status_) on_status_(status.error_code());
    return status;
  }

  // Constant after construction.
  Frontend& frontend_;
  const std::string api_key_;
  const absl::Duration poll_interval_;
  const StatusObserver on_status_;
};

class ModelsServiceImpl final : public tandem::v1::Models::Service {
 public:
  ModelsServiceImpl(Frontend& frontend, std::string api_key, StatusObserver on_status = nullptr);

  grpc::Status List(grpc::ServerContext* context, const tandem::v1::ListModelsRequest* request,
                    tandem::v1::ListModelsResponse* response) override;

 private:
  // Constant after construction.
  Frontend& frontend_;
  const std::string api_key_;
  const StatusObserver on_status_;
};

}  // namespace tandem::server::grpc_api

#endif  // TANDEM_SERVER_GRPC_GENERATION_SERVICE_H_
