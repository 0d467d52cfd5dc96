// GrpcServer end to end over a scripted FakeFrontend: a real server on an ephemeral port,
// called through tandem's GrpcClient, raw generated stubs, the health protocol and server
// reflection.
#include "server/grpc/grpc_server.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/impl/codegen/sync_stream.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cli.h"
#include "client/grpc_client.h"
#include "common/retry_after.h"
#include "server/grpc/proto_convert.h"
#include "server/grpc/status_convert.h"
#include "tests/server/grpc/fake_frontend.h"

namespace tandem::server::grpc_api {
namespace {

using ::tandem::server::testing::FakeFrontend;
using ::tandem::server::testing::StreamScript;

ChoiceDelta Delta(int index, std::string text, std::vector<int32_t> tokens,
                  std::optional<FinishReason> finish = std::nullopt) {
  ChoiceDelta d;
  d.index = index;
  d.text = std::move(text);
  d.token_ids = std::move(tokens);
  d.finish = finish;
  return d;
}

// Two choices interleaved over three batches, logprobs on the first delta.
StreamScript TwoChoiceScript() {
  StreamScript script;
  ChoiceDelta first = Delta(0, "Hel", {10, 11});
  for (int32_t t : first.token_ids) {
    LogprobEntry entry;
    entry.chosen = {t, "x", {0x78}, -0.5f};
    entry.top = {{t, "x", {0x78}, -0.5f}, {99, "y", {0x79}, -1.25f}};
    first.logprobs.push_back(entry);
  }
  script.batches = {{first, Delta(1, "Good", {20})},
                    {Delta(0, "lo", {12}, FinishReason::kStop)},
                    {Delta(1, "bye", {21, 22}, FinishReason::kLength)}};
  script.usage = {7, 6};
  return script;
}

class GrpcServerTest : public ::testing::Test {
 protected:
  void StartServer(const std::string& api_key = "") {
    GrpcServerConfig config;
    config.host = "127.0.0.1";
    config.port = 0;
    config.api_key = api_key;
    absl::StatusOr<std::unique_ptr<GrpcServer>> server = GrpcServer::Start(config, frontend_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    ASSERT_GT(server_->port(), 0);
    target_ = absl::StrCat("127.0.0.1:", server_->port());
    channel_ = grpc::CreateChannel(target_, grpc::InsecureChannelCredentials());
    stub_ = tandem::v1::Generation::NewStub(channel_);
  }

  std::unique_ptr<client::GrpcClient> Client(const std::string& api_key = "") {
    client::GrpcClientOptions options;
    options.target = target_;
    options.api_key = api_key;
    options.timeout = absl::Seconds(20);
    absl::StatusOr<std::unique_ptr<client::GrpcClient>> client =
        client::GrpcClient::Create(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return std::move(*client);
  }

  // Raw stub call: every message of the stream, and the final status.
  grpc::Status RawGenerate(const tandem::v1::GenerateRequest& request,
                           std::vector<tandem::v1::GenerateResponse>* responses,
                           const std::string& authorization = "") {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    if (!authorization.empty()) context.AddMetadata("authorization", authorization);
    auto reader = stub_->Generate(&context, request);
    tandem::v1::GenerateResponse response;
    while (reader->Read(&response)) responses->push_back(response);
    return reader->Finish();
  }

  // RawGenerate with metadata; the server's trailing metadata goes to *trailers.
  grpc::Status RawGenerateWith(const tandem::v1::GenerateRequest& request,
                               const std::vector<std::pair<std::string, std::string>>& metadata,
                               std::multimap<std::string, std::string>* trailers) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    for (const auto& [key, value] : metadata) context.AddMetadata(key, value);
    auto reader = stub_->Generate(&context, request);
    tandem::v1::GenerateResponse response;
    while (reader->Read(&response)) {
    }
    grpc::Status status = reader->Finish();
    for (const auto& [key, value] : context.GetServerTrailingMetadata()) {
      trailers->emplace(std::string(key.data(), key.size()),
                        std::string(value.data(), value.size()));
    }
    return status;
  }

  FakeFrontend frontend_;
  std::unique_ptr<GrpcServer> server_;
  std::string target_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tandem::v1::Generation::Stub> stub_;
};

TEST_F(GrpcServerTest, StreamsDeltasInOrderThenUsage) {
  frontend_.SetScript(TwoChoiceScript());
  StartServer();

  tandem::v1::GenerateRequest request;
  request.set_text("Hi");
  std::vector<tandem::v1::GenerateResponse> responses;
  grpc::Status status = RawGenerate(request, &responses);
  ASSERT_TRUE(status.ok()) << status.error_message();

  // One message per Take batch, then the usage message.
  ASSERT_EQ(responses.size(), 4u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_FALSE(responses[i].has_usage()) << i;
    EXPECT_GT(responses[i].choices_size(), 0) << i;
  }
  EXPECT_EQ(responses[3].choices_size(), 0);
  ASSERT_TRUE(responses[3].has_usage());
  EXPECT_EQ(responses[3].usage().prompt_tokens(), 7);
  EXPECT_EQ(responses[3].usage().completion_tokens(), 6);
  EXPECT_EQ(responses[3].usage().total_tokens(), 13);

  ASSERT_EQ(responses[0].choices_size(), 2);
  const tandem::v1::ChoiceDelta& first = responses[0].choices(0);
  EXPECT_EQ(first.index(), 0);
  EXPECT_EQ(first.text(), "Hel");
  EXPECT_EQ(std::vector<int32_t>(first.token_ids().begin(), first.token_ids().end()),
            (std::vector<int32_t>{10, 11}));
  EXPECT_EQ(first.finish_reason(), tandem::v1::FINISH_REASON_UNSPECIFIED);
  ASSERT_EQ(first.logprobs_size(), 2);
  EXPECT_EQ(first.logprobs(1).chosen().token(), 11);
  EXPECT_FLOAT_EQ(first.logprobs(1).chosen().logprob(), -0.5f);
  ASSERT_EQ(first.logprobs(1).top_size(), 2);
  EXPECT_EQ(first.logprobs(1).top(1).token(), 99);
  EXPECT_EQ(first.logprobs(1).top(1).text(), "y");
  EXPECT_EQ(first.logprobs(1).top(1).bytes(), "y");
  EXPECT_FLOAT_EQ(first.logprobs(1).top(1).logprob(), -1.25f);
  EXPECT_EQ(responses[0].choices(1).text(), "Good");
  EXPECT_EQ(responses[1].choices(0).finish_reason(), tandem::v1::FINISH_REASON_STOP);
  EXPECT_EQ(responses[2].choices(0).finish_reason(), tandem::v1::FINISH_REASON_LENGTH);
}

TEST_F(GrpcServerTest, GrpcClientReassemblesChoices) {
  frontend_.SetScript(TwoChoiceScript());
  StartServer();
  auto client = Client();

  client::GenerateParams params;
  params.prompt = "Hi";
  params.n = 2;
  params.max_tokens = 5;
  params.temperature = 0.0f;
  params.seed = 42;
  params.stop = {"\n"};
  std::vector<std::string> texts(2);
  std::vector<std::string> finish(2);
  std::vector<int> order;
  absl::StatusOr<client::Usage> usage = client->Generate(params, [&](const client::TextDelta& d) {
    texts.at(d.index) += d.text;
    if (!d.finish_reason.empty()) finish.at(d.index) = d.finish_reason;
    order.push_back(d.index);
    return true;
  });
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_EQ(texts[0], "Hello");
  EXPECT_EQ(texts[1], "Goodbye");
  EXPECT_EQ(finish[0], "stop");
  EXPECT_EQ(finish[1], "length");
  EXPECT_EQ(order, (std::vector<int>{0, 1, 0, 1}));
  EXPECT_EQ(usage->prompt_tokens, 7);
  EXPECT_EQ(usage->completion_tokens, 6);

  // The client's fields arrived in the Frontend's request.
  std::vector<GenerationRequest> requests = frontend_.generate_requests();
  ASSERT_EQ(requests.size(), 1u);
  const GenerationRequest& r = requests[0];
  EXPECT_EQ(r.kind, GenerationRequest::Kind::kCompletion);
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, "Hi");
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.max_tokens, 5);
  EXPECT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_TRUE(r.sampling.has_seed);
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n"}));
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
}

TEST_F(GrpcServerTest, EveryRequestFieldReachesTheFrontend) {
  StartServer();
  tandem::v1::GenerateRequest request;
  request.set_model("fake-model");
  tandem::v1::ChatMessage* m = request.mutable_chat()->add_messages();
  m->set_role("system");
  m->set_content("be brief");
  m = request.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("hi");
  request.set_max_tokens(9);
  request.set_n(3);
  request.set_temperature(0.5f);
  request.set_top_p(0.9f);
  request.set_top_k(40);
  request.set_min_p(0.05f);
  request.set_presence_penalty(0.25f);
  request.set_frequency_penalty(-0.5f);
  request.set_repetition_penalty(1.1f);
  request.set_seed(18446744073709551615ull);
  request.add_stop("END");
  request.add_stop("###");
  request.add_stop_token_ids(2);
  request.set_ignore_eos(true);
  request.set_logprobs(true);
  request.set_top_logprobs(3);
  request.set_user("u1");
  request.set_ttft_slo_ms(250);
  request.set_tpot_slo_ms(40);
  std::vector<tandem::v1::GenerateResponse> responses;
  ASSERT_TRUE(RawGenerate(request, &responses).ok());

  std::vector<GenerationRequest> requests = frontend_.generate_requests();
  ASSERT_EQ(requests.size(), 1u);
  const GenerationRequest& r = requests[0];
  EXPECT_EQ(r.kind, GenerationRequest::Kind::kChat);
  EXPECT_EQ(r.model, "fake-model");
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "hi");
  EXPECT_EQ(r.max_tokens, 9);
  EXPECT_EQ(r.n, 3);
  EXPECT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 40);
  EXPECT_EQ(r.sampling.min_p, 0.05f);
  EXPECT_EQ(r.sampling.presence_penalty, 0.25f);
  EXPECT_EQ(r.sampling.frequency_penalty, -0.5f);
  EXPECT_EQ(r.sampling.repetition_penalty, 1.1f);
  EXPECT_TRUE(r.sampling.has_seed);
  EXPECT_EQ(r.sampling.seed, 18446744073709551615ull);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"END", "###"}));
  EXPECT_EQ(r.sampling.stop_token_ids, (std::vector<int32_t>{2}));
  EXPECT_TRUE(r.sampling.ignore_eos);
  EXPECT_TRUE(r.sampling.logprobs);
  EXPECT_EQ(r.sampling.top_logprobs, 3);
  EXPECT_EQ(r.user, "u1");
  EXPECT_EQ(r.ttft_slo_ms, 250);
  EXPECT_EQ(r.tpot_slo_ms, 40);
}

TEST_F(GrpcServerTest, UnsetOptionalFieldsKeepTheDefaults) {
  StartServer();
  tandem::v1::GenerateRequest request;
  request.mutable_batch()->add_prompts()->set_text("a");
  request.mutable_batch()->add_prompts()->mutable_token_ids()->add_ids(5);
  std::vector<tandem::v1::GenerateResponse> responses;
  ASSERT_TRUE(RawGenerate(request, &responses).ok());
  const GenerationRequest r = frontend_.generate_requests().at(0);
  const GenerationRequest defaults;
  EXPECT_EQ(r.kind, GenerationRequest::Kind::kCompletion);
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_FALSE(r.prompts[0].is_tokens);
  EXPECT_EQ(r.prompts[0].text, "a");
  EXPECT_TRUE(r.prompts[1].is_tokens);
  EXPECT_EQ(r.prompts[1].tokens, (std::vector<int32_t>{5}));
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_EQ(r.n, 1);
  EXPECT_EQ(r.sampling.temperature, defaults.sampling.temperature);
  EXPECT_EQ(r.sampling.top_p, defaults.sampling.top_p);
  EXPECT_EQ(r.sampling.repetition_penalty, defaults.sampling.repetition_penalty);
  EXPECT_FALSE(r.sampling.has_seed);
  EXPECT_FALSE(r.sampling.logprobs);
}

TEST_F(GrpcServerTest, MissingInputIsInvalidArgumentBeforeTheFrontend) {
  StartServer();
  std::vector<tandem::v1::GenerateResponse> responses;
  tandem::v1::GenerateRequest request;
  request.set_max_tokens(3);
  grpc::Status status = RawGenerate(request, &responses);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("text, token_ids, batch or chat"), std::string::npos);

  request.mutable_batch()->add_prompts();  // a prompt with neither text nor tokens
  status = RawGenerate(request, &responses);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("batch.prompts[0]"), std::string::npos);
  EXPECT_EQ(frontend_.generate_calls(), 0);
  EXPECT_TRUE(responses.empty());
}

struct CodeCase {
  absl::StatusCode absl_code;
  grpc::StatusCode grpc_code;
};

class StatusMappingTest : public GrpcServerTest, public ::testing::WithParamInterface<CodeCase> {};

TEST_P(StatusMappingTest, GenerateFailureKeepsCodeAndMessage) {
  const CodeCase c = GetParam();
  const absl::Status error(c.absl_code, "scripted failure");
  frontend_.SetGenerateError(error);
  StartServer();
  std::vector<tandem::v1::GenerateResponse> responses;
  tandem::v1::GenerateRequest request;
  request.set_text("x");
  grpc::Status status = RawGenerate(request, &responses);
  EXPECT_EQ(status.error_code(), c.grpc_code);
  EXPECT_EQ(status.error_message(), "scripted failure");
  EXPECT_TRUE(responses.empty());

  // The same through the client library, back as the original absl code (INTERNAL for the
  // codes the server does not pass through).
  auto client = Client();
  client::GenerateParams params;
  params.prompt = "x";
  absl::StatusOr<client::Usage> usage =
      client->Generate(params, [](const client::TextDelta&) { return true; });
  EXPECT_EQ(usage.status().code(), static_cast<absl::StatusCode>(c.grpc_code));
  EXPECT_EQ(usage.status().message(), "scripted failure");
}

TEST_P(StatusMappingTest, FailureMidStreamAfterDeltas) {
  const CodeCase c = GetParam();
  StreamScript script;
  script.batches = {{Delta(0, "partial", {1})}};
  script.final_status = absl::Status(c.absl_code, "died mid-stream");
  frontend_.SetScript(script);
  StartServer();
  std::vector<tandem::v1::GenerateResponse> responses;
  tandem::v1::GenerateRequest request;
  request.set_text("x");
  grpc::Status status = RawGenerate(request, &responses);
  EXPECT_EQ(status.error_code(), c.grpc_code);
  EXPECT_EQ(status.error_message(), "died mid-stream");
  ASSERT_EQ(responses.size(), 1u);  // the delta, and no usage message
  EXPECT_EQ(responses[0].choices(0).text(), "partial");
  EXPECT_FALSE(responses[0].has_usage());
}

TEST_P(StatusMappingTest, TokenizeFailure) {
  const CodeCase c = GetParam();
  frontend_.SetTokenizeError(absl::Status(c.absl_code, "no tokens"));
  StartServer();
  grpc::ClientContext context;
  tandem::v1::TokenizeRequest request;
  request.set_text("x");
  tandem::v1::TokenizeResponse response;
  grpc::Status status = stub_->Tokenize(&context, request, &response);
  EXPECT_EQ(status.error_code(), c.grpc_code);
  EXPECT_EQ(status.error_message(), "no tokens");
}

INSTANTIATE_TEST_SUITE_P(
    Codes, StatusMappingTest,
    ::testing::Values(
        CodeCase{absl::StatusCode::kInvalidArgument, grpc::StatusCode::INVALID_ARGUMENT},
        CodeCase{absl::StatusCode::kNotFound, grpc::StatusCode::NOT_FOUND},
        CodeCase{absl::StatusCode::kOutOfRange, grpc::StatusCode::OUT_OF_RANGE},
        CodeCase{absl::StatusCode::kResourceExhausted, grpc::StatusCode::RESOURCE_EXHAUSTED},
        CodeCase{absl::StatusCode::kUnavailable, grpc::StatusCode::UNAVAILABLE},
        CodeCase{absl::StatusCode::kUnauthenticated, grpc::StatusCode::UNAUTHENTICATED},
        CodeCase{absl::StatusCode::kInternal, grpc::StatusCode::INTERNAL},
        CodeCase{absl::StatusCode::kFailedPrecondition, grpc::StatusCode::INTERNAL},
        CodeCase{absl::StatusCode::kUnknown, grpc::StatusCode::INTERNAL},
        CodeCase{absl::StatusCode::kDataLoss, grpc::StatusCode::INTERNAL}));

TEST_F(GrpcServerTest, SloMetadataOverridesTheRequestFields) {
  StartServer();
  tandem::v1::GenerateRequest request;
  request.set_text("x");
  request.set_ttft_slo_ms(250);
  request.set_tpot_slo_ms(40);
  std::multimap<std::string, std::string> trailers;
  grpc::Status status =
      RawGenerateWith(request, {{"x-slo-ttft-ms", "120.5"}}, &trailers);  // only TTFT
  ASSERT_TRUE(status.ok()) << status.error_message();
  status =
      RawGenerateWith(request, {{"x-slo-ttft-ms", "90"}, {"x-slo-tpot-ms", " 25 "}}, &trailers);
  ASSERT_TRUE(status.ok()) << status.error_message();
  tandem::v1::GenerateRequest bare;
  bare.set_text("x");
  status = RawGenerateWith(bare, {{"x-slo-tpot-ms", "3600000"}}, &trailers);
  ASSERT_TRUE(status.ok()) << status.error_message();

  const std::vector<GenerationRequest> requests = frontend_.generate_requests();
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[0].ttft_slo_ms, 120.5);
  EXPECT_EQ(requests[0].tpot_slo_ms, 40);  // the field, no metadata
  EXPECT_EQ(requests[1].ttft_slo_ms, 90);
  EXPECT_EQ(requests[1].tpot_slo_ms, 25);
  EXPECT_EQ(requests[2].ttft_slo_ms, 0);  // neither: the daemon's default
  EXPECT_EQ(requests[2].tpot_slo_ms, 3600000);
}

TEST_F(GrpcServerTest, BadSloMetadataIsInvalidArgumentBeforeTheFrontend) {
  StartServer();
  tandem::v1::GenerateRequest request;
  request.set_text("x");
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, std::string>>{{"x-slo-ttft-ms", "fast"},
                                                        {"x-slo-ttft-ms", "0"},
                                                        {"x-slo-tpot-ms", "-3"},
                                                        {"x-slo-tpot-ms", "3600001"},
                                                        {"x-slo-tpot-ms", ""}}) {
    std::multimap<std::string, std::string> trailers;
    grpc::Status status = RawGenerateWith(request, {{key, value}}, &trailers);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << key << ": " << value;
    EXPECT_NE(status.error_message().find("'" + key + "'"), std::string::npos)
        << status.error_message();
  }
  EXPECT_EQ(frontend_.generate_calls(), 0);
}

TEST_F(GrpcServerTest, RetryAfterBecomesTheRetryPushbackTrailer) {
  // Refused at Generate, as a full queue is.
  frontend_.SetGenerateError(
      WithRetryAfter(absl::ResourceExhaustedError("predicted TTFT 2.4 s misses the SLO"),
                     absl::Milliseconds(2500)));
  StartServer();
  tandem::v1::GenerateRequest request;
  request.set_text("x");
  std::multimap<std::string, std::string> trailers;
  grpc::Status status = RawGenerateWith(request, {}, &trailers);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(status.error_message(), "predicted TTFT 2.4 s misses the SLO");
  ASSERT_EQ(trailers.count(kRetryPushbackKey), 1u);
  EXPECT_EQ(trailers.find(kRetryPushbackKey)->second, "2500");

  // Refused after Generate returned (dropped from the queue), before any output.
  frontend_.SetGenerateError(absl::OkStatus());
  StreamScript script;
  script.final_status = WithRetryAfter(absl::ResourceExhaustedError("deadline passed in the queue"),
                                       absl::Milliseconds(800));
  frontend_.SetScript(script);
  trailers.clear();
  status = RawGenerateWith(request, {}, &trailers);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_EQ(trailers.count(kRetryPushbackKey), 1u);
  EXPECT_EQ(trailers.find(kRetryPushbackKey)->second, "800");

  // A 429 without a delay has no trailer (gRPC's retry policy then uses its own backoff).
  frontend_.SetGenerateError(absl::ResourceExhaustedError("the queue is full"));
  trailers.clear();
  status = RawGenerateWith(request, {}, &trailers);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(trailers.count(kRetryPushbackKey), 0u);
}

TEST(StatusConvertTest, OkAndCancelled) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_EQ(ToGrpcCode(absl::StatusCode::kCancelled), grpc::StatusCode::CANCELLED);
}

TEST_F(GrpcServerTest, ApiKeyIsEnforced) {
  frontend_.SetScript(TwoChoiceScript());
  StartServer("secret");
  tandem::v1::GenerateRequest request;
  request.set_text("x");
  std::vector<tandem::v1::GenerateResponse> responses;
  EXPECT_EQ(RawGenerate(request, &responses).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(RawGenerate(request, &responses, "Bearer wrong").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(RawGenerate(request, &responses, "secret").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(RawGenerate(request, &responses, "Bearer secretX").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(responses.empty());
  EXPECT_EQ(frontend_.generate_calls(), 0);
  EXPECT_TRUE(RawGenerate(request, &responses, "Bearer secret").ok());
  EXPECT_EQ(frontend_.generate_calls(), 1);

  // Every tandem.v1 method checks it; health does not need it.
  auto anonymous = Client();
  EXPECT_EQ(anonymous->ListModels().status().code(), absl::StatusCode::kUnauthenticated);
  tandem::v1::TokenizeRequest tokenize;
  tokenize.set_text("ab");
  EXPECT_EQ(anonymous->Tokenize(tokenize).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(anonymous->Health().ok());
  auto client = Client("secret");
  absl::StatusOr<std::vector<client::ModelEntry>> models = client->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->size(), 1u);
  EXPECT_EQ((*models)[0].id, "fake-model");
  EXPECT_EQ((*models)[0].created, 1700000000);
  EXPECT_EQ((*models)[0].max_model_len, 2048);
  EXPECT_TRUE(client->Tokenize(tokenize).ok());
}

TEST_F(GrpcServerTest, TokenizeAndDetokenize) {
  StartServer();
  auto client = Client();
  tandem::v1::TokenizeRequest request;
  request.set_text("ab");
  absl::StatusOr<tandem::v1::TokenizeResponse> response = client->Tokenize(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(std::vector<int32_t>(response->token_ids().begin(), response->token_ids().end()),
            (std::vector<int32_t>{testing::kFakeBos, 'a', 'b'}));
  EXPECT_EQ(response->max_model_len(), 2048);

  // Chat: no BOS unless asked (the template carries it), as in the HTTP API.
  request.mutable_chat()->add_messages()->set_content("c");
  ASSERT_TRUE(client->Tokenize(request).ok());
  request.set_add_special_tokens(true);
  ASSERT_TRUE(client->Tokenize(request).ok());
  std::vector<TokenizeRequest> recorded = frontend_.tokenize_requests();
  ASSERT_EQ(recorded.size(), 3u);
  EXPECT_TRUE(recorded[0].add_special_tokens);
  EXPECT_FALSE(recorded[0].is_chat);
  EXPECT_TRUE(recorded[1].is_chat);
  EXPECT_FALSE(recorded[1].add_special_tokens);
  EXPECT_TRUE(recorded[2].add_special_tokens);

  grpc::ClientContext context;
  tandem::v1::DetokenizeRequest detokenize;
  detokenize.add_token_ids('o');
  detokenize.add_token_ids('k');
  tandem::v1::DetokenizeResponse text;
  ASSERT_TRUE(stub_->Detokenize(&context, detokenize, &text).ok());
  EXPECT_EQ(text.text(), "ok");
  grpc::ClientContext context2;
  detokenize.add_token_ids(-1);
  EXPECT_EQ(stub_->Detokenize(&context2, detokenize, &text).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

// A stream that never ends by itself: only cancellation can end the call.
StreamScript HangingScript() {
  StreamScript script;
  script.batches = {{Delta(0, "first", {1})}};
  script.hang_after_batches = true;
  return script;
}

TEST_F(GrpcServerTest, ClientCallbackStopCancelsTheStream) {
  frontend_.SetScript(HangingScript());
  StartServer();
  auto client = Client();
  client::GenerateParams params;
  params.prompt = "x";
  int deltas = 0;
  absl::StatusOr<client::Usage> usage = client->Generate(params, [&](const client::TextDelta& d) {
    ++deltas;
    EXPECT_EQ(d.text, "first");
    return false;
  });
  EXPECT_EQ(usage.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(deltas, 1);
  ASSERT_NE(frontend_.last_stream(), nullptr);
  EXPECT_TRUE(frontend_.last_stream()->WaitForCancel(absl::Seconds(10)));
}

TEST_F(GrpcServerTest, RawTryCancelReachesTheStream) {
  frontend_.SetScript(HangingScript());
  StartServer();
  grpc::ClientContext context;
  tandem::v1::GenerateRequest request;
  request.set_text("x");
  auto reader = stub_->Generate(&context, request);
  tandem::v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.choices(0).text(), "first");
  context.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(frontend_.last_stream()->WaitForCancel(absl::Seconds(10)));
}

TEST_F(GrpcServerTest, ClientDeadlineCancelsTheStream) {
  frontend_.SetScript(HangingScript());
  StartServer();
  // Connect first, so the deadline below is spent on the call, not on setting up the channel
  // (slow under sanitizers).
  ASSERT_TRUE(Client()->ListModels().ok());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  tandem::v1::GenerateRequest request;
  request.set_text("x");
  auto reader = stub_->Generate(&context, request);
  tandem::v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));  // the call reached the Frontend
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_NE(frontend_.last_stream(), nullptr);
  EXPECT_TRUE(frontend_.last_stream()->WaitForCancel(absl::Seconds(10)));
}

TEST_F(GrpcServerTest, ShutdownPastDeadlineCancelsRunningStreams) {
  frontend_.SetScript(HangingScript());
  StartServer();
  grpc::ClientContext context;
  tandem::v1::GenerateRequest request;
  request.set_text("x");
  auto reader = stub_->Generate(&context, request);
  tandem::v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  server_->Shutdown(absl::Milliseconds(100));  // returns only once the handler has returned
  EXPECT_TRUE(frontend_.last_stream()->cancelled());
  EXPECT_FALSE(reader->Finish().ok());
}

TEST_F(GrpcServerTest, HealthFollowsSetServing) {
  StartServer();
  auto client = Client();
  using Status = grpc::health::v1::HealthCheckResponse;
  for (const char* service : {"", "tandem.v1.Generation", "tandem.v1.Models"}) {
    absl::StatusOr<Status::ServingStatus> s = client->HealthStatus(service);
    ASSERT_TRUE(s.ok()) << service << ": " << s.status();
    EXPECT_EQ(*s, Status::SERVING) << service;
  }
  EXPECT_TRUE(client->Health().ok());
  EXPECT_EQ(client->HealthStatus("no.such.Service").status().code(), absl::StatusCode::kNotFound);

  server_->SetServing(false);
  for (const char* service : {"", "tandem.v1.Generation", "tandem.v1.Models"}) {
    absl::StatusOr<Status::ServingStatus> s = client->HealthStatus(service);
    ASSERT_TRUE(s.ok()) << service << ": " << s.status();
    EXPECT_EQ(*s, Status::NOT_SERVING) << service;
  }
  absl::Status health = client->Health();
  EXPECT_EQ(health.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(health.message().find("NOT_SERVING"), std::string::npos);

  server_->SetServing(true);
  EXPECT_TRUE(client->Health().ok());
}

// Server reflection through its wire protocol. The request/response messages come from the
// descriptors libgrpc++_reflection registers in the generated pool (Debian ships no header
// for them), driven through a raw bidi call.
class ReflectionCall {
 public:
  explicit ReflectionCall(grpc::Channel* channel)
      : method_("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                grpc::internal::RpcMethod::BIDI_STREAMING),
        stream_(
            grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
                channel, method_, &context_)) {
    const google::protobuf::DescriptorPool* pool =
        google::protobuf::DescriptorPool::generated_pool();
    request_type_ = pool->FindMessageTypeByName("grpc.reflection.v1alpha.ServerReflectionRequest");
    response_type_ =
        pool->FindMessageTypeByName("grpc.reflection.v1alpha.ServerReflectionResponse");
  }

  bool ready() const { return request_type_ != nullptr && response_type_ != nullptr; }

  // Sends a request with one string field set; returns the response.
  std::unique_ptr<google::protobuf::Message> Ask(const std::string& field,
                                                 const std::string& value) {
    const google::protobuf::Message* prototype =
        google::protobuf::MessageFactory::generated_factory()->GetPrototype(request_type_);
    std::unique_ptr<google::protobuf::Message> request(prototype->New());
    request->GetReflection()->SetString(request.get(), request_type_->FindFieldByName(field),
                                        value);
    std::string bytes = request->SerializeAsString();
    grpc::Slice slice(bytes);
    grpc::ByteBuffer out(&slice, 1);
    if (!stream_->Write(out)) return nullptr;
    grpc::ByteBuffer in;
    if (!stream_->Read(&in)) return nullptr;
    std::vector<grpc::Slice> slices;
    if (!in.Dump(&slices).ok()) return nullptr;
    std::string received;
    for (const grpc::Slice& s : slices) received.append(s.begin(), s.end());
    std::unique_ptr<google::protobuf::Message> response(
        google::protobuf::MessageFactory::generated_factory()->GetPrototype(response_type_)->New());
    if (!response->ParseFromString(received)) return nullptr;
    return response;
  }

  grpc::Status Finish() {
    stream_->WritesDone();
    return stream_->Finish();
  }

 private:
  grpc::ClientContext context_;
  grpc::internal::RpcMethod method_;
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream_;
  const google::protobuf::Descriptor* request_type_ = nullptr;
  const google::protobuf::Descriptor* response_type_ = nullptr;
};

TEST_F(GrpcServerTest, ReflectionListsTheServices) {
  StartServer();
  ReflectionCall call(channel_.get());
  ASSERT_TRUE(call.ready()) << "reflection descriptors not in the generated pool";

  std::unique_ptr<google::protobuf::Message> listed = call.Ask("list_services", "*");
  ASSERT_NE(listed, nullptr);
  const google::protobuf::Reflection* r = listed->GetReflection();
  const google::protobuf::FieldDescriptor* list_field =
      listed->GetDescriptor()->FindFieldByName("list_services_response");
  ASSERT_TRUE(r->HasField(*listed, list_field)) << listed->DebugString();
  const google::protobuf::Message& list = r->GetMessage(*listed, list_field);
  const google::protobuf::FieldDescriptor* service_field =
      list.GetDescriptor()->FindFieldByName("service");
  std::set<std::string> names;
  for (int i = 0; i < list.GetReflection()->FieldSize(list, service_field); ++i) {
    const google::protobuf::Message& service =
        list.GetReflection()->GetRepeatedMessage(list, service_field, i);
    names.insert(service.GetReflection()->GetString(
        service, service.GetDescriptor()->FindFieldByName("name")));
  }
  EXPECT_TRUE(names.count("tandem.v1.Generation")) << listed->DebugString();
  EXPECT_TRUE(names.count("tandem.v1.Models")) << listed->DebugString();
  EXPECT_TRUE(names.count("grpc.health.v1.Health")) << listed->DebugString();

  // The schema itself is served, as grpcurl needs it to build requests.
  std::unique_ptr<google::protobuf::Message> file =
      call.Ask("file_containing_symbol", "tandem.v1.Generation");
  ASSERT_NE(file, nullptr);
  const google::protobuf::FieldDescriptor* file_field =
      file->GetDescriptor()->FindFieldByName("file_descriptor_response");
  ASSERT_TRUE(file->GetReflection()->HasField(*file, file_field)) << file->DebugString();
  const google::protobuf::Message& files = file->GetReflection()->GetMessage(*file, file_field);
  const google::protobuf::FieldDescriptor* proto_field =
      files.GetDescriptor()->FindFieldByName("file_descriptor_proto");
  ASSERT_GE(files.GetReflection()->FieldSize(files, proto_field), 1);
  google::protobuf::FileDescriptorProto descriptor;
  ASSERT_TRUE(
      descriptor.ParseFromString(files.GetReflection()->GetRepeatedString(files, proto_field, 0)));
  EXPECT_EQ(descriptor.name(), "tandem/v1/generation.proto");
  EXPECT_EQ(descriptor.package(), "tandem.v1");
  EXPECT_TRUE(call.Finish().ok());
}

TEST_F(GrpcServerTest, StartFailsOnABusyPort) {
  StartServer();
  GrpcServerConfig config;
  config.host = "127.0.0.1";
  config.port = server_->port();
  FakeFrontend other;
  absl::StatusOr<std::unique_ptr<GrpcServer>> second = GrpcServer::Start(config, other);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);

  config.port = 70000;
  EXPECT_EQ(GrpcServer::Start(config, other).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(GrpcServerTest, CliCompleteAndModelsOverGrpc) {
  frontend_.SetScript(TwoChoiceScript());
  StartServer("k");
  std::istringstream in;
  std::ostringstream out;
  std::ostringstream err;
  int code = client::RunCli({"--grpc", target_, "--api-key", "k", "complete", "--prompt", "Hi",
                             "--max-tokens", "4", "--seed", "3"},
                            in, out, err);
  EXPECT_EQ(code, 0) << err.str();
  EXPECT_EQ(out.str(), "HelGoodlobye\n");  // deltas printed as they arrive
  EXPECT_EQ(frontend_.generate_requests().at(0).max_tokens, 4);

  std::ostringstream models;
  EXPECT_EQ(client::RunCli({"--grpc", target_, "--api-key", "k", "models"}, in, models, err), 0);
  EXPECT_EQ(models.str(), "fake-model\tmax_model_len=2048\n");

  std::ostringstream err2;
  code = client::RunCli({"--grpc", target_, "complete", "--prompt", "Hi"}, in, out, err2);
  EXPECT_EQ(code, client::kExitServerError);
  const std::string error = err2.str();
  EXPECT_EQ(error.find("tandem: UNAUTHENTICATED"), 0u) << error;
  EXPECT_EQ(std::count(error.begin(), error.end(), '\n'), 1) << error;
}

TEST_F(GrpcServerTest, CliChatKeepsTheConversation) {
  StreamScript script;
  script.batches = {{Delta(0, "Hello!", {1}, FinishReason::kStop)}};
  frontend_.SetScript(script);
  StartServer();
  std::istringstream in("hi\n\nhow are you\n/exit\nnot sent\n");
  std::ostringstream out;
  std::ostringstream err;
  EXPECT_EQ(client::RunCli({"--grpc", target_, "chat", "--system", "be nice"}, in, out, err), 0)
      << err.str();
  EXPECT_EQ(out.str(), "Hello!\nHello!\n");
  std::vector<GenerationRequest> requests = frontend_.generate_requests();
  ASSERT_EQ(requests.size(), 2u);
  ASSERT_EQ(requests[1].messages.size(), 4u);
  EXPECT_EQ(requests[1].messages[0].role, "system");
  EXPECT_EQ(requests[1].messages[0].content, "be nice");
  EXPECT_EQ(requests[1].messages[1].content, "hi");
  EXPECT_EQ(requests[1].messages[2].role, "assistant");
  EXPECT_EQ(requests[1].messages[2].content, "Hello!");
  EXPECT_EQ(requests[1].messages[3].content, "how are you");
}

}  // namespace
}  // namespace tandem::server::grpc_api
