// GenerationServiceImpl and ModelsServiceImpl: the tandem.v1 gRPC services
// (proto/tandem/v1/generation.proto) over a server::Frontend, on gRPC's callback API. They only
// translate: proto in, Frontend call, proto out, absl::Status -> grpc::Status
// (status_convert.h). Validation, tokenization and generation are the Frontend's.
//
// Generate checks the call and starts the Frontend's stream on the gRPC thread that received
// it, then hands the stream to a GenerateReactor (generate_reactor.h), which writes its output
// as the engine produces it: an open stream holds no thread, only its reactor, so hundreds of
// concurrent streams cost a few gRPC threads and the ReactorPool's. A client that goes away (or
// a server shutdown past its deadline) cancels the stream at once, which frees the request's
// sequences in the engine. Tokenize, Detokenize and List answer inline.
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
// constants, the Frontend, which is thread-safe, and the ReactorPool. The Frontend must outlive
// the services. Destroying GenerationServiceImpl waits for its last reactor (grpc::Server
// waits for their OnDone; posted pumps may hold them a moment longer).
#ifndef TANDEM_SERVER_GRPC_GENERATION_SERVICE_H_
#define TANDEM_SERVER_GRPC_GENERATION_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <string>

#include "server/frontend.h"
#include "server/grpc/generate_reactor.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::server::grpc_api {

// Told the status of every answered call (metrics), once per call, before the client sees
// it; may be empty. Called on gRPC threads and ReactorPool threads.
using StatusObserver = std::function<void(grpc::StatusCode code)>;

// OK when `api_key` is empty or the call carries `authorization: Bearer <api_key>`.
grpc::Status CheckApiKey(const grpc::ServerContextBase& context, const std::string& api_key);

class GenerationServiceImpl final : public tandem::v1::Generation::CallbackService {
 public:
  // `stream_threads`: the ReactorPool's threads, which take streams' output and start writes.
  GenerationServiceImpl(Frontend& frontend, std::string api_key, int stream_threads = 2,
                        StatusObserver on_status = nullptr);

  grpc::ServerWriteReactor<tandem::v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const tandem::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const tandem::v1::TokenizeRequest* request,
                                     tandem::v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const tandem::v1::DetokenizeRequest* request,
                                       tandem::v1::DetokenizeResponse* response) override;

  // Blocks until every Generate reactor is gone. Call once the grpc::Server has shut down.
  void WaitForStreams() { pool_.WaitIdle(); }

 private:
  grpc::Status DoTokenize(grpc::CallbackServerContext* context,
                          const tandem::v1::TokenizeRequest* request,
                          tandem::v1::TokenizeResponse* response);
  grpc::Status DoDetokenize(grpc::CallbackServerContext* context,
                            const tandem::v1::DetokenizeRequest* request,
                            tandem::v1::DetokenizeResponse* response);
  grpc::Status Report(grpc::Status status) const {
    if (on_status_) on_status_(status.error_code());
    return status;
  }

  // Constant after construction.
  Frontend& frontend_;
  const std::string api_key_;
  const StatusObserver on_status_;
  // Last member: its destructor waits for the reactors, which call on_status_.
  ReactorPool pool_;
};

class ModelsServiceImpl final : public tandem::v1::Models::CallbackService {
 public:
  ModelsServiceImpl(Frontend& frontend, std::string api_key, StatusObserver on_status = nullptr);

  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* context,
                                 const tandem::v1::ListModelsRequest* request,
                                 tandem::v1::ListModelsResponse* response) override;

 private:
  // Constant after construction.
  Frontend& frontend_;
  const std::string api_key_;
  const StatusObserver on_status_;
};

}  // namespace tandem::server::grpc_api

#endif  // TANDEM_SERVER_GRPC_GENERATION_SERVICE_H_
