// Status -> HTTP status and OpenAI error bodies; the param / code payloads.
#include "server/openai/errors.h"

#include <gtest/gtest.h>

#include <string>

#include "nlohmann/json.hpp"

namespace tandem::server::openai {
namespace {

using nlohmann::json;

struct Row {
  absl::Status status;
  int http;
  const char* type;
  json code;
};

TEST(Errors, StatusTable) {
  const Row rows[] = {
      {absl::InvalidArgumentError("bad"), 400, "invalid_request_error", nullptr},
      {absl::FailedPreconditionError("pre"), 400, "invalid_request_error", nullptr},
      {absl::UnauthenticatedError("key"), 401, "authentication_error", "invalid_api_key"},
      {absl::NotFoundError("model"), 404, "not_found_error", "not_found"},
      {absl::OutOfRangeError("long"), 413, "invalid_request_error", "context_length_exceeded"},
      {absl::ResourceExhaustedError("full"), 429, "rate_limit_error", "rate_limit_exceeded"},
      {absl::UnavailableError("drain"), 503, "server_error", "service_unavailable"},
      {absl::DeadlineExceededError("slow"), 504, "server_error", "timeout"},
      {absl::InternalError("bug"), 500, "server_error", "internal_error"},
      {absl::UnknownError("?"), 500, "server_error", "internal_error"},
      {absl::CancelledError("gone"), 500, "server_error", "internal_error"},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.status.ToString());
    EXPECT_EQ(HttpStatusFor(row.status), row.http);
    const json body = json::parse(ErrorBody(row.status));
    ASSERT_EQ(body.size(), 1u);
    const json& e = body["error"];
    EXPECT_EQ(e.size(), 4u);
    EXPECT_EQ(e["message"], std::string(row.status.message()));
    EXPECT_EQ(e["type"], row.type);
    EXPECT_TRUE(e["param"].is_null());
    EXPECT_EQ(e["code"], row.code);
  }
  EXPECT_EQ(HttpStatusFor(absl::OkStatus()), 200);
}

TEST(Errors, ParamAndCodePayloads) {
  const absl::Status s = InvalidParamError("temperature", "'temperature' must be a number");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParamOf(s), "temperature");
  EXPECT_FALSE(ErrorCodeOf(s).has_value());
  EXPECT_EQ(ErrorBody(s),
            R"({"error":{"message":"'temperature' must be a number",)"
            R"("type":"invalid_request_error","param":"temperature","code":"invalid_value"}})");

  const absl::Status u = UnsupportedParamError("tools", "'tools' is not supported");
  EXPECT_EQ(ParamOf(u), "tools");
  EXPECT_EQ(ErrorCodeOf(u), "unsupported_parameter");
  EXPECT_EQ(json::parse(ErrorBody(u))["error"]["code"], "unsupported_parameter");

  const absl::Status coded = WithErrorCode(absl::NotFoundError("no route"), "unknown_url");
  EXPECT_EQ(json::parse(ErrorBody(coded))["error"]["code"], "unknown_url");
  EXPECT_FALSE(ParamOf(absl::InvalidArgumentError("x")).has_value());
  EXPECT_TRUE(WithParam(absl::OkStatus(), "x").ok());
  EXPECT_FALSE(ParamOf(WithParam(absl::OkStatus(), "x")).has_value());
}

TEST(Errors, BodyIsValidJsonWhateverTheMessage) {
  const absl::Status s = absl::InvalidArgumentError("bad \xff\xc3 \"quoted\" \n");
  EXPECT_NO_THROW(json::parse(ErrorBody(s)));
}

}  // namespace
}  // namespace tandem::server::openai
