#include "client/grpc_client.h"

#include <chrono>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tandem::client {
namespace {

const char* FinishReasonName(tandem::v1::FinishReason reason) {
  switch (reason) {
    case tandem::v1::FINISH_REASON_STOP:
      return "stop";
    case tandem::v1::FINISH_REASON_LENGTH:
      return "length";
    default:
      return "";
  }
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  // grpc::StatusCode and absl::StatusCode share their numbering (both follow google.rpc.Code).
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

absl::StatusOr<std::unique_ptr<GrpcClient>> GrpcClient::Create(const GrpcClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("gRPC target is empty");
  return std::unique_ptr<GrpcClient>(new GrpcClient(options));
}

GrpcClient::GrpcClient(const GrpcClientOptions& options)
    : options_(options),
      channel_(grpc::CreateChannel(options.target, grpc::InsecureChannelCredentials())),
      generation_(tandem::v1::Generation::NewStub(channel_)),
      models_(tandem::v1::Models::NewStub(channel_)),
      health_(grpc::health::v1::Health::NewStub(channel_)) {}

void GrpcClient::Prepare(grpc::ClientContext* context) const {
  if (!options_.api_key.empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", options_.api_key));
  }
  if (options_.timeout != absl::InfiniteDuration()) {
    context->set_deadline(std::chrono::system_clock::now() +
                          absl::ToChronoMilliseconds(options_.timeout));
  }
}

tandem::v1::GenerateRequest GrpcClient::ToProto(const GenerateParams& params) {
  tandem::v1::GenerateRequest request;
  request.set_model(params.model);
  if (params.chat) {
    tandem::v1::Conversation* chat = request.mutable_chat();
    for (const ChatMessage& m : params.messages) {
      tandem::v1::ChatMessage* out = chat->add_messages();
      out->set_role(m.role);
      out->set_content(m.content);
    }
  } else {
    request.set_text(params.prompt);
  }
  if (params.max_tokens) request.set_max_tokens(*params.max_tokens);
  if (params.temperature) request.set_temperature(*params.temperature);
  if (params.top_p) request.set_top_p(*params.top_p);
  if (params.top_k) request.set_top_k(*params.top_k);
  if (params.seed) request.set_seed(*params.seed);
  for (const std::string& s : params.stop) request.add_stop(s);
  if (params.n != 1) request.set_n(params.n);
  return request;
}

absl::StatusOr<tandem::v1::Usage> GrpcClient::GenerateProto(
    const tandem::v1::GenerateRequest& request,
    const std::function<bool(const tandem::v1::ChoiceDelta&)>& on_delta) {
  grpc::ClientContext context;
  Prepare(&context);
  std::unique_ptr<grpc::ClientReader<tandem::v1::GenerateResponse>> reader =
      generation_->Generate(&context, request);
  tandem::v1::GenerateResponse response;
  tandem::v1::Usage usage;
  bool got_usage = false;
  bool stopped = false;
  while (!stopped && reader->Read(&response)) {
    for (const tandem::v1::ChoiceDelta& delta : response.choices()) {
      if (!on_delta(delta)) {
        stopped = true;
        break;
      }
    }
    if (response.has_usage()) {
      usage = response.usage();
      got_usage = true;
    }
  }
  if (stopped) {
    context.TryCancel();
    reader->Finish().IgnoreError();
    return absl::CancelledError("generation stopped by the caller");
  }
  if (absl::Status status = FromGrpcStatus(reader->Finish()); !status.ok()) return status;
  if (!got_usage) return absl::InternalError("the server ended the stream without usage");
  return usage;
}

absl::StatusOr<Usage> GrpcClient::Generate(const GenerateParams& params,
                                           const DeltaCallback& on_delta) {
  TextDelta text_delta;
  absl::StatusOr<tandem::v1::Usage> usage =
      GenerateProto(ToProto(params), [&](const tandem::v1::ChoiceDelta& delta) {
        text_delta.index = delta.index();
        text_delta.text = delta.text();
        text_delta.finish_reason = FinishReasonName(delta.finish_reason());
        return on_delta(text_delta);
      });
  if (!usage.ok()) return usage.status();
  return Usage{usage->prompt_tokens(), usage->completion_tokens(), usage->cached_tokens()};
}

absl::StatusOr<tandem::v1::TokenizeResponse> GrpcClient::Tokenize(
    const tandem::v1::TokenizeRequest& request) {
  grpc::ClientContext context;
  Prepare(&context);
  tandem::v1::TokenizeResponse response;
  if (absl::Status status = FromGrpcStatus(generation_->Tokenize(&context, request, &response));
      !status.ok()) {
    return status;
  }
  return response;
}

absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> GrpcClient::HealthStatus(
    const std::string& service) {
  grpc::ClientContext context;
  Prepare(&context);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  if (absl::Status status = FromGrpcStatus(health_->Check(&context, request, &response));
      !status.ok()) {
    return status;
  }
  return response.status();
}

absl::Status GrpcClient::Health() {
  absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> status = HealthStatus("");
  if (!status.ok()) return status.status();
  if (*status != grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::UnavailableError(absl::StrCat(
        "server is ", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(*status)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ModelEntry>> GrpcClient::ListModels() {
  grpc::ClientContext context;
  Prepare(&context);
  tandem::v1::ListModelsResponse response;
  if (absl::Status status =
          FromGrpcStatus(models_->List(&context, tandem::v1::ListModelsRequest(), &response));
      !status.ok()) {
    return status;
  }
  std::vector<ModelEntry> models;
  for (const tandem::v1::ModelInfo& m : response.models()) {
    models.push_back({m.id(), m.created(), m.max_model_len()});
  }
  return models;
}

}  // namespace tandem::client
