#include "server/grpc/generation_service.h"

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/check.h"
#include "server/grpc/proto_convert.h"
#include "server/grpc/status_convert.h"
#include "server/openai/slo.h"

namespace tandem::server::grpc_api {
namespace {

// Compares without an early exit, so the time taken does not reveal how much of a guessed
// key was right.
bool SameKey(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// The x-slo-ttft-ms / x-slo-tpot-ms metadata, which override the request's fields.
absl::Status ApplySloMetadata(const grpc::ServerContextBase& context, GenerationRequest* r) {
  const std::pair<const char*, double*> keys[] = {{openai::kSloTtftHeader, &r->ttft_slo_ms},
                                                  {openai::kSloTpotHeader, &r->tpot_slo_ms}};
  const auto& metadata = context.client_metadata();
  for (const auto& [key, out] : keys) {
    auto it = metadata.find(key);
    if (it == metadata.end()) continue;
    TANDEM_ASSIGN_OR_RETURN(
        *out, openai::ParseSloHeader(key, std::string_view(it->second.data(), it->second.size())));
  }
  return absl::OkStatus();
}

}  // namespace

grpc::Status CheckApiKey(const grpc::ServerContextBase& context, const std::string& api_key) {
  if (api_key.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing API key: send metadata 'authorization: Bearer <key>'");
  }
  std::string_view value(it->second.data(), it->second.size());
  constexpr std::string_view kBearer = "Bearer ";
  if (value.substr(0, kBearer.size()) != kBearer ||
      !SameKey(value.substr(kBearer.size()), api_key)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid API key");
  }
  return grpc::Status::OK;
}

GenerationServiceImpl::GenerationServiceImpl(Frontend& frontend, std::string api_key,
                                             int stream_threads, StatusObserver on_status)
    : frontend_(frontend),
      api_key_(std::move(api_key)),
      on_status_(std::move(on_status)),
      pool_(stream_threads) {}

grpc::ServerWriteReactor<tandem::v1::GenerateResponse>* GenerationServiceImpl::Generate(
    grpc::CallbackServerContext* context, const tandem::v1::GenerateRequest* request) {
  auto refuse = [this](grpc::Status status) {
    return GenerateReactor::Refuse(Report(std::move(status)));
  };
  if (grpc::Status auth = CheckApiKey(*context, api_key_); !auth.ok()) return refuse(auth);
  absl::StatusOr<GenerationRequest> converted = FromProto(*request);
  if (!converted.ok()) return refuse(ToGrpcStatus(converted.status()));
  if (absl::Status s = ApplySloMetadata(*context, &*converted); !s.ok()) {
    return refuse(ToGrpcStatus(s));
  }
  absl::StatusOr<std::unique_ptr<GenerationStream>> started =
      frontend_.Generate(*std::move(converted));
  if (!started.ok()) return refuse(ToGrpcStatus(started.status(), *context));
  return GenerateReactor::Start(context, *std::move(started), pool_,
                                [this](const grpc::Status& status) { Report(status); });
}

grpc::ServerUnaryReactor* GenerationServiceImpl::Tokenize(
    grpc::CallbackServerContext* context, const tandem::v1::TokenizeRequest* request,
    tandem::v1::TokenizeResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(Report(DoTokenize(context, request, response)));
  return reactor;
}

grpc::ServerUnaryReactor* GenerationServiceImpl::Detokenize(
    grpc::CallbackServerContext* context, const tandem::v1::DetokenizeRequest* request,
    tandem::v1::DetokenizeResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(Report(DoDetokenize(context, request, response)));
  return reactor;
}

grpc::Status GenerationServiceImpl::DoTokenize(grpc::CallbackServerContext* context,
                                               const tandem::v1::TokenizeRequest* request,
                                               tandem::v1::TokenizeResponse* response) {
  if (grpc::Status auth = CheckApiKey(*context, api_key_); !auth.ok()) return auth;
  absl::StatusOr<TokenizeRequest> converted = FromProto(*request);
  if (!converted.ok()) return ToGrpcStatus(converted.status());
  absl::StatusOr<std::vector<int32_t>> tokens = frontend_.Tokenize(*converted);
  if (!tokens.ok()) return ToGrpcStatus(tokens.status());
  response->mutable_token_ids()->Add(tokens->begin(), tokens->end());
  response->set_max_model_len(frontend_.Model().max_model_len);
  return grpc::Status::OK;
}

grpc::Status GenerationServiceImpl::DoDetokenize(grpc::CallbackServerContext* context,
                                                 const tandem::v1::DetokenizeRequest* request,
                                                 tandem::v1::DetokenizeResponse* response) {
  if (grpc::Status auth = CheckApiKey(*context, api_key_); !auth.ok()) return auth;
  std::vector<int32_t> tokens(request->token_ids().begin(), request->token_ids().end());
  absl::StatusOr<std::string> text = frontend_.Detokenize(request->model(), tokens);
  if (!text.ok()) return ToGrpcStatus(text.status());
  response->set_text(*std::move(text));
  return grpc::Status::OK;
}

ModelsServiceImpl::ModelsServiceImpl(Frontend& frontend, std::string api_key,
                                     StatusObserver on_status)
    : frontend_(frontend), api_key_(std::move(api_key)), on_status_(std::move(on_status)) {}

grpc::ServerUnaryReactor* ModelsServiceImpl::List(grpc::CallbackServerContext* context,
                                                  const tandem::v1::ListModelsRequest* request,
                                                  tandem::v1::ListModelsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  grpc::Status status = CheckApiKey(*context, api_key_);
  if (status.ok()) ToProto(frontend_.Model(), response->add_models());
  if (on_status_) on_status_(status.error_code());
  reactor->Finish(status);
  return reactor;
}

}  // namespace tandem::server::grpc_api
