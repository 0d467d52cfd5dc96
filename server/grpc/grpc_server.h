// GrpcServer: tandemd's gRPC endpoint. Owns a grpc::Server serving tandem.v1.Generation and
// tandem.v1.Models over a Frontend, the standard grpc.health.v1 health service (gRPC's built-in
// one) and server reflection, so grpcurl and standard health probes work unchanged.
//
// Health: the overall status ("") and "tandem.v1.Generation" / "tandem.v1.Models" are SERVING
// after Start; SetServing(false) turns them NOT_SERVING while draining.
//
// Threads: the tandem.v1 services and health use gRPC's callback API, so an open Generate
// stream holds no thread (generation_service.h). The process keeps gRPC's own callback and
// polling threads, the GenerateReactors' pool (`stream_threads`) and a small synchronous pool
// for server reflection, however many streams are open.
//
// Thread safety: port() and SetServing() may be called from any thread; Shutdown() from one
// thread, once (the destructor calls it with no grace period if it was not called).
// The Frontend must outlive the GrpcServer.
#ifndef TANDEM_SERVER_GRPC_GRPC_SERVER_H_
#define TANDEM_SERVER_GRPC_GRPC_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/frontend.h"
#include "server/grpc/generation_service.h"

namespace tandem::server::grpc_api {

struct GrpcServerConfig {
  std::string host = "0.0.0.0";  // address to bind; "::" or an IPv6 address works too
  int port = 50051;              // 0: let the kernel pick (see GrpcServer::port())
  std::string api_key;           // empty: no authentication
  // Largest request or response message, bytes (gRPC's default is 4 MiB for requests).
  int max_message_bytes = 64 << 20;
  // Threads that take Generate streams' output and start their writes (ReactorPool).
  int stream_threads = 2;
  // Told the status code of every answered tandem.v1 call (metrics); may be empty.
  StatusObserver on_status;
};

class GrpcServer {
 public:
  // Binds and starts serving. Unavailable when the address cannot be bound,
  // InvalidArgument for a bad config.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(const GrpcServerConfig& config,
                                                           Frontend& frontend);
  ~GrpcServer();

  GrpcServer(const GrpcServer&) = delete;
  GrpcServer& operator=(const GrpcServer&) = delete;

  // The port actually bound.
  int port() const { return port_; }

  // Health status of every service this server reports: SERVING or NOT_SERVING.
  void SetServing(bool serving);

  // Stops accepting calls, lets running calls finish until `deadline` from now, then cancels
  // the rest (their reactors cancel their GenerationStreams) and waits until every call is done
  // and every GenerationStream it held is destroyed.
  void Shutdown(absl::Duration deadline);

 private:
  GrpcServer(Frontend& frontend, const GrpcServerConfig& config);

  // Constant after construction. The services outlive server_, which calls into them.
  GenerationServiceImpl generation_;
  ModelsServiceImpl models_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;

  bool shut_down_ = false;  // Shutdown() caller's thread only
};

}  // namespace tandem::server::grpc_api

#endif  // TANDEM_SERVER_GRPC_GRPC_SERVER_H_
