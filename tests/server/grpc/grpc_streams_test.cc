// GrpcServer under many concurrent Generate streams, over a FakeFrontend: the streams hold no
// thread each, every one gets its output in order, and client cancellation and shutdown reach
// every GenerationStream. The clients use gRPC's callback API, so the test itself does not
// need a thread per stream either.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/grpc/grpc_server.h"
#include "tests/server/grpc/fake_frontend.h"

namespace tandem::server::grpc_api {
namespace {

using ::tandem::server::testing::BatchGate;
using ::tandem::server::testing::FakeFrontend;
using ::tandem::server::testing::StreamRecord;
using ::tandem::server::testing::StreamScript;

// Far more than any test needs; only a deadlock or a lost wake-up gets near it.
constexpr auto kPatience = std::chrono::seconds(120);

int ThreadCount() {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) {
    (void)entry;
    ++n;
  }
  return n;
}

// Counts events; tests wait for a number of them.
class Counter {
 public:
  void Add() {
    std::lock_guard<std::mutex> lock(mu_);
    ++n_;
    cv_.notify_all();
  }
  bool WaitFor(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kPatience, [&] { return n_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_ = 0;
};

// One Generate call on the client's callback API: keeps every message and the final status.
class StreamCall final : public grpc::ClientReadReactor<tandem::v1::GenerateResponse> {
 public:
  StreamCall(tandem::v1::Generation::Stub& stub, Counter& first, Counter& done)
      : first_(first), done_(done) {
    request_.set_text("Hi");
    stub.async()->Generate(&context_, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  void Cancel() { context_.TryCancel(); }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    {
      std::lock_guard<std::mutex> lock(mu_);
      responses_.push_back(response_);
    }
    if (!seen_first_) {
      seen_first_ = true;
      first_.Add();
    }
    StartRead(&response_);
  }
  void OnDone(const grpc::Status& status) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      status_ = status;
    }
    done_.Add();
  }

  grpc::Status status() {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }
  std::vector<tandem::v1::GenerateResponse> responses() {
    std::lock_guard<std::mutex> lock(mu_);
    return responses_;
  }

 private:
  Counter& first_;
  Counter& done_;
  grpc::ClientContext context_;
  tandem::v1::GenerateRequest request_;
  tandem::v1::GenerateResponse response_;  // reactions only
  bool seen_first_ = false;                // reactions only
  std::mutex mu_;
  std::vector<tandem::v1::GenerateResponse> responses_;
  grpc::Status status_;
};

ChoiceDelta Text(std::string text, std::optional<FinishReason> finish = std::nullopt) {
  ChoiceDelta d;
  d.text = std::move(text);
  d.token_ids = {static_cast<int32_t>(d.text.size())};
  d.finish = finish;
  return d;
}

// Batches "a", "b", ... and a finish on the last.
StreamScript Letters(int batches) {
  StreamScript script;
  for (int i = 0; i < batches; ++i) {
    script.batches.push_back(
        {Text(std::string(1, static_cast<char>('a' + i % 26)),
              i + 1 == batches ? std::optional(FinishReason::kStop) : std::nullopt)});
  }
  script.usage = {2, batches};
  return script;
}

// The choices' text of the messages before the usage; "" when the usage message is missing or
// out of place.
std::string TextOf(const std::vector<tandem::v1::GenerateResponse>& responses) {
  if (responses.empty() || !responses.back().has_usage()) return "";
  std::string text;
  for (size_t i = 0; i + 1 < responses.size(); ++i) {
    if (responses[i].has_usage()) return "";
    for (const auto& c : responses[i].choices()) text += c.text();
  }
  return text;
}

class GrpcStreamsTest : public ::testing::Test {
 protected:
  void StartServer() {
    GrpcServerConfig config;
    config.host = "127.0.0.1";
    config.port = 0;
    config.on_status = [this](grpc::StatusCode code) {
      std::lock_guard<std::mutex> lock(codes_mu_);
      ++codes_[code];
    };
    absl::StatusOr<std::unique_ptr<GrpcServer>> server = GrpcServer::Start(config, frontend_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = tandem::v1::Generation::NewStub(channel_);
  }

  // Every call has ended before its ClientContext goes, even when an assertion failed early.
  void TearDown() override {
    for (auto& call : calls_) call->Cancel();
    done_.WaitFor(static_cast<int>(calls_.size()));
  }

  // Opens `n` streams at once.
  void Open(int n) {
    for (int i = 0; i < n; ++i)
      calls_.push_back(std::make_unique<StreamCall>(*stub_, first_, done_));
  }

  std::map<grpc::StatusCode, int> codes() {
    std::lock_guard<std::mutex> lock(codes_mu_);
    return codes_;
  }

  FakeFrontend frontend_;
  std::unique_ptr<GrpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tandem::v1::Generation::Stub> stub_;
  Counter first_;  // streams that got their first message
  Counter done_;   // streams that ended
  std::vector<std::unique_ptr<StreamCall>> calls_;
  std::mutex codes_mu_;
  std::map<grpc::StatusCode, int> codes_;
};

// The engine (the test thread, through the gate) produces tokens while 400 streams are open:
// each gets every batch in order and its usage, and the process holds far fewer threads than
// streams. The synchronous server held one thread per open stream.
TEST_F(GrpcStreamsTest, ManyStreamsShareAFewThreads) {
  constexpr int kStreams = 400;
  constexpr int kBatches = 5;
  StartServer();
  {
    // Warm up: the first call starts the channel's and the server's lazy threads.
    Counter first, done;
    frontend_.SetScript(Letters(1));
    StreamCall call(*stub_, first, done);
    ASSERT_TRUE(done.WaitFor(1));
    ASSERT_TRUE(call.status().ok()) << call.status().error_message();
  }
  StreamScript script = Letters(kBatches);
  script.gate = std::make_shared<BatchGate>();
  frontend_.SetScript(script);
  const int baseline = ThreadCount();

  Open(kStreams);
  // Every stream is open on the server and waiting for output.
  for (auto deadline = std::chrono::steady_clock::now() + kPatience;
       frontend_.generate_calls() < kStreams + 1 && std::chrono::steady_clock::now() < deadline;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(frontend_.generate_calls(), kStreams + 1);
  int peak = ThreadCount();

  // Release one batch at a time, so every stream is mid-way at once.
  for (int i = 0; i < kBatches; ++i) {
    script.gate->Release(1);
    if (i == 0) {
      ASSERT_TRUE(first_.WaitFor(kStreams));
    }
    peak = std::max(peak, ThreadCount());
  }
  ASSERT_TRUE(done_.WaitFor(kStreams));
  peak = std::max(peak, ThreadCount());

  for (auto& call : calls_) {
    ASSERT_TRUE(call->status().ok()) << call->status().error_message();
    std::vector<tandem::v1::GenerateResponse> responses = call->responses();
    EXPECT_EQ(TextOf(responses), "abcde");
    ASSERT_FALSE(responses.empty());
    EXPECT_EQ(responses.back().usage().completion_tokens(), kBatches);
  }
  EXPECT_LT(peak - baseline, kStreams / 4)
      << "threads: " << baseline << " before the streams, " << peak << " at most with them";
  EXPECT_EQ(codes()[grpc::StatusCode::OK], kStreams + 1);
}

// A stream that never ends by itself: only cancellation can end the call.
StreamScript Hanging() {
  StreamScript script;
  script.batches = {{Text("first")}};
  script.hang_after_batches = true;
  return script;
}

TEST_F(GrpcStreamsTest, ClientCancelsReachEveryStream) {
  constexpr int kStreams = 200;
  frontend_.SetScript(Hanging());
  StartServer();
  Open(kStreams);
  ASSERT_TRUE(first_.WaitFor(kStreams));
  for (auto& call : calls_) call->Cancel();
  ASSERT_TRUE(done_.WaitFor(kStreams));

  for (auto& call : calls_) EXPECT_EQ(call->status().error_code(), grpc::StatusCode::CANCELLED);
  const std::vector<std::shared_ptr<StreamRecord>> streams = frontend_.streams();
  ASSERT_EQ(streams.size(), static_cast<size_t>(kStreams));
  for (const auto& stream : streams) EXPECT_TRUE(stream->WaitForCancel(absl::Seconds(60)));
  // Exactly one status per call, even where the client's cancel raced a write.
  server_->Shutdown(absl::ZeroDuration());
  EXPECT_EQ(codes(), (std::map<grpc::StatusCode, int>{{grpc::StatusCode::CANCELLED, kStreams}}));
  for (const auto& stream : streams) EXPECT_TRUE(stream->destroyed());
}

// Past its deadline, Shutdown cancels every running stream and returns only once every
// GenerationStream is destroyed.
TEST_F(GrpcStreamsTest, ShutdownEndsRunningStreams) {
  constexpr int kStreams = 100;
  frontend_.SetScript(Hanging());
  StartServer();
  Open(kStreams);
  ASSERT_TRUE(first_.WaitFor(kStreams));

  server_->Shutdown(absl::Milliseconds(100));
  const std::vector<std::shared_ptr<StreamRecord>> streams = frontend_.streams();
  ASSERT_EQ(streams.size(), static_cast<size_t>(kStreams));
  for (const auto& stream : streams) {
    EXPECT_TRUE(stream->cancelled());
    EXPECT_TRUE(stream->destroyed());
  }
  ASSERT_TRUE(done_.WaitFor(kStreams));
  for (auto& call : calls_) EXPECT_FALSE(call->status().ok());
  server_.reset();
}

// Within its deadline, Shutdown lets a running stream finish: output produced after Shutdown
// started still reaches the client, and the call ends OK.
TEST_F(GrpcStreamsTest, ShutdownLetsStreamsFinishWithinTheDeadline) {
  StreamScript script = Letters(3);
  script.gate = std::make_shared<BatchGate>();
  frontend_.SetScript(script);
  StartServer();
  Open(1);
  script.gate->Release(1);
  ASSERT_TRUE(first_.WaitFor(1));

  std::thread shutdown([this] { server_->Shutdown(absl::Seconds(60)); });
  // Once new calls are refused, shutdown has started; the running stream goes on.
  for (auto deadline = std::chrono::steady_clock::now() + kPatience;
       std::chrono::steady_clock::now() < deadline;
       std::this_thread::sleep_for(std::chrono::milliseconds(10))) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    tandem::v1::TokenizeRequest request;
    request.set_text("x");
    tandem::v1::TokenizeResponse response;
    if (!stub_->Tokenize(&context, request, &response).ok()) break;
  }
  script.gate->Release(2);
  ASSERT_TRUE(done_.WaitFor(1));
  shutdown.join();
  ASSERT_TRUE(calls_[0]->status().ok()) << calls_[0]->status().error_message();
  EXPECT_EQ(TextOf(calls_[0]->responses()), "abc");
  EXPECT_FALSE(frontend_.streams()[0]->cancelled());
}

// A client that does not read: the server's one outstanding write waits on flow control while
// the rest stays buffered in the stream; once the client reads, every message arrives in order.
TEST_F(GrpcStreamsTest, SlowReaderGetsEveryMessageInOrder) {
  constexpr int kBatches = 300;
  StreamScript script;
  std::string expected;
  for (int i = 0; i < kBatches; ++i) {
    std::string text = absl::StrCat(i, ":", std::string(4096, 'x'), ";");
    expected += text;
    script.batches.push_back({Text(std::move(text))});
  }
  script.usage = {1, kBatches};
  frontend_.SetScript(script);
  StartServer();

  grpc::ClientContext context;
  tandem::v1::GenerateRequest request;
  request.set_text("x");
  auto reader = stub_->Generate(&context, request);
  // Far more than the flow-control window is ready; give the server time to fill it.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  std::vector<tandem::v1::GenerateResponse> responses;
  tandem::v1::GenerateResponse response;
  while (reader->Read(&response)) responses.push_back(response);
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(responses.size(), static_cast<size_t>(kBatches + 1));
  EXPECT_EQ(TextOf(responses), expected);
}

}  // namespace
}  // namespace tandem::server::grpc_api
