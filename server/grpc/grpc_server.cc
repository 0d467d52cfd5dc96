#include "server/grpc/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tandem::server::grpc_api {
namespace {

constexpr const char* kServiceNames[] = {"", "tandem.v1.Generation", "tandem.v1.Models"};

std::string ListenAddress(const std::string& host, int port) {
  // An IPv6 literal needs brackets before the port.
  if (host.find(':') != std::string::npos && host.front() != '[') {
    return absl::StrCat("[", host, "]:", port);
  }
  return absl::StrCat(host, ":", port);
}

}  // namespace

GrpcServer::GrpcServer(Frontend& frontend, const GrpcServerConfig& config)
    : generation_(frontend, config.api_key, config.stream_threads, config.on_status),
      models_(frontend, config.api_key, config.on_status) {}

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(const GrpcServerConfig& config,
                                                              Frontend& frontend) {
  if (config.port < 0 || config.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("gRPC port out of range: ", config.port));
  }
  if (config.host.empty()) return absl::InvalidArgumentError("gRPC host is empty");
  if (config.max_message_bytes <= 0) {
    return absl::InvalidArgumentError("gRPC max_message_bytes must be positive");
  }
  if (config.stream_threads <= 0) {
    return absl::InvalidArgumentError("gRPC stream_threads must be positive");
  }

  // Both are process-wide switches read by every ServerBuilder created afterwards.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  std::unique_ptr<GrpcServer> server(new GrpcServer(frontend, config));
  const std::string address = ListenAddress(config.host, config.port);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &server->port_);
  // gRPC binds with SO_REUSEPORT by default: a second daemon on the same port would then
  // share its traffic instead of failing to start.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(config.max_message_bytes);
  builder.SetMaxSendMessageSize(config.max_message_bytes);
  builder.RegisterService(&server->generation_);
  builder.RegisterService(&server->models_);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    server->server_.reset();
    return absl::UnavailableError(absl::StrCat("gRPC: cannot listen on ", address));
  }
  server->SetServing(true);
  return server;
}

GrpcServer::~GrpcServer() {
  // server_ is null only when Start failed to bind.
  if (server_ != nullptr && !shut_down_) Shutdown(absl::ZeroDuration());
}

void GrpcServer::SetServing(bool serving) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  for (const char* name : kServiceNames) health->SetServingStatus(name, serving);
}

void GrpcServer::Shutdown(absl::Duration deadline) {
  if (shut_down_) return;
  shut_down_ = true;
  SetServing(false);
  // Returns once every callback call has seen OnDone (cancelled past the deadline).
  server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(deadline));
  server_->Wait();
  generation_.WaitForStreams();  // pumps still posted hold reactors a moment longer
}

}  // namespace tandem::server::grpc_api
