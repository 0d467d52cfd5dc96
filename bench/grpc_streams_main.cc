// tandem-bench-grpc-streams: many concurrent tandem.v1.Generation/Generate streams against a
// GrpcServer over an in-bench Frontend whose "engine" is one timer thread: every tick (a decode
// step) gives each running stream one token and notifies it, as the real engine does. No model,
// so the figures are the gRPC layer's: did every stream complete, how long each took against
// the ideal (tokens x step), and how many threads the process needed.
//
// Client and server share the process (the client on gRPC's callback API, no thread per
// stream either), so the thread figures cover both. All streams are opened at once.
//
//   tandem-bench-grpc-streams [--streams 1000] [--tokens 32] [--step_ms 20] [--channels 1]
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "server/frontend.h"
#include "server/grpc/grpc_server.h"

ABSL_FLAG(int, streams, 1000, "Generate streams opened at once");
ABSL_FLAG(int, tokens, 32, "tokens per stream, one per step");
ABSL_FLAG(int, step_ms, 20, "the timer engine's step: one token for every running stream");
ABSL_FLAG(int, channels, 1, "client connections the streams are spread over");
ABSL_FLAG(int, stream_threads, 2, "GrpcServerConfig::stream_threads");

namespace tandem::bench {
namespace {

using Clock = std::chrono::steady_clock;

int ThreadCount() {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) {
    (void)entry;
    ++n;
  }
  return n;
}

// One stream's output so far, shared by the engine thread and the stream's consumer.
struct TimerState {
  std::mutex mu;
  std::condition_variable cv;  // signalled with each token and on Cancel
  int total = 0;               // constant after construction
  int produced ABSL_GUARDED_BY(mu) = 0;
  int taken ABSL_GUARDED_BY(mu) = 0;
  bool cancelled ABSL_GUARDED_BY(mu) = false;
  std::function<void()> notify ABSL_GUARDED_BY(mu);
};

class TimerStream final : public server::GenerationStream {
 public:
  explicit TimerStream(std::shared_ptr<TimerState> state) : state_(std::move(state)) {}
  ~TimerStream() override { Cancel(); }

  void SetNotify(std::function<void()> notify) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->notify = std::move(notify);
  }
  bool Take(std::vector<server::ChoiceDelta>* out) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    return TakeLocked(out);
  }
  // For a synchronous server (the bench's baseline); the callback server only Takes when
  // notified.
  bool WaitAndTake(std::vector<server::ChoiceDelta>* out, absl::Duration timeout) override {
    std::unique_lock<std::mutex> lock(state_->mu);
    state_->cv.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] {
      return state_->cancelled || state_->produced > state_->taken ||
             state_->taken == state_->total;
    });
    return TakeLocked(out);
  }
  absl::Status status() const override {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->cancelled ? absl::CancelledError("cancelled") : absl::OkStatus();
  }
  server::Usage usage() const override {
    std::lock_guard<std::mutex> lock(state_->mu);
    return {1, state_->produced};
  }
  void Cancel() override {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->cancelled = true;
    state_->cv.notify_all();
  }

 private:
  bool TakeLocked(std::vector<server::ChoiceDelta>* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    if (state_->cancelled) return true;
    if (state_->produced > state_->taken) {
      server::ChoiceDelta d;
      for (; state_->taken < state_->produced; ++state_->taken) {
        d.text += "x";
        d.token_ids.push_back(state_->taken);
      }
      if (state_->taken == state_->total) d.finish = server::FinishReason::kLength;
      out->push_back(std::move(d));
    }
    return state_->taken == state_->total;
  }

  std::shared_ptr<TimerState> state_;
};

// The engine: one thread that, every step, gives each running stream a token.
class TimerFrontend final : public server::Frontend {
 public:
  TimerFrontend(int tokens, absl::Duration step) : tokens_(tokens), step_(step) {
    thread_ = std::thread([this] { Run(); });
  }
  ~TimerFrontend() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    thread_.join();
  }

  absl::StatusOr<std::unique_ptr<server::GenerationStream>> Generate(
      server::GenerationRequest) override {
    auto state = std::make_shared<TimerState>();
    state->total = tokens_;
    std::lock_guard<std::mutex> lock(mu_);
    running_.push_back(state);
    return std::unique_ptr<server::GenerationStream>(new TimerStream(state));
  }
  absl::StatusOr<std::vector<int32_t>> Tokenize(const server::TokenizeRequest&) override {
    return std::vector<int32_t>{1};
  }
  absl::StatusOr<std::string> Detokenize(const std::string&, const std::vector<int32_t>&) override {
    return std::string();
  }
  server::ModelInfo Model() const override { return {"timer", 0, 1 << 20}; }

 private:
  void Run() {
    for (auto next = Clock::now();; next += absl::ToChronoNanoseconds(step_)) {
      std::this_thread::sleep_until(next);
      std::vector<std::shared_ptr<TimerState>> running;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stop_) return;
        running.swap(running_);
      }
      std::vector<std::shared_ptr<TimerState>> still;
      for (const auto& s : running) {
        std::function<void()> notify;
        {
          std::lock_guard<std::mutex> lock(s->mu);
          if (s->cancelled) continue;
          ++s->produced;
          s->cv.notify_all();
          notify = s->notify;
          if (s->produced < s->total) still.push_back(s);
        }
        if (notify) notify();  // must not block: the reactor only posts
      }
      std::lock_guard<std::mutex> lock(mu_);
      running_.insert(running_.end(), still.begin(), still.end());
    }
  }

  const int tokens_;
  const absl::Duration step_;
  std::mutex mu_;
  std::vector<std::shared_ptr<TimerState>> running_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// Counts finished streams; main waits for all.
struct Done {
  std::mutex mu;
  std::condition_variable cv;
  int n = 0;
};

class StreamCall final : public grpc::ClientReadReactor<tandem::v1::GenerateResponse> {
 public:
  StreamCall(tandem::v1::Generation::Stub& stub, Done& done) : done_(done) {
    request_.set_text("x");
    stub.async()->Generate(&context_, &request_, this);
    start_ = Clock::now();
    StartRead(&response_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    for (const auto& c : response_.choices()) tokens_ += c.token_ids_size();
    if (first_ == Clock::time_point()) first_ = Clock::now();
    StartRead(&response_);
  }
  void OnDone(const grpc::Status& status) override {
    end_ = Clock::now();
    ok_ = status.ok();
    std::lock_guard<std::mutex> lock(done_.mu);
    ++done_.n;
    done_.cv.notify_all();
  }

  // Valid once OnDone ran.
  bool ok() const { return ok_; }
  int tokens() const { return tokens_; }
  double latency_ms() const { return Ms(end_ - start_); }
  double ttft_ms() const { return Ms(first_ - start_); }

 private:
  static double Ms(Clock::duration d) {
    return std::chrono::duration<double, std::milli>(d).count();
  }

  Done& done_;
  grpc::ClientContext context_;
  tandem::v1::GenerateRequest request_;
  tandem::v1::GenerateResponse response_;
  Clock::time_point start_, first_, end_;
  int tokens_ = 0;
  bool ok_ = false;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

int Main() {
  const int streams = absl::GetFlag(FLAGS_streams);
  const int tokens = absl::GetFlag(FLAGS_tokens);
  const int step_ms = absl::GetFlag(FLAGS_step_ms);
  const int channels = std::max(1, absl::GetFlag(FLAGS_channels));
  const int threads_at_start = ThreadCount();

  TimerFrontend frontend(tokens, absl::Milliseconds(step_ms));
  server::grpc_api::GrpcServerConfig config;
  config.host = "127.0.0.1";
  config.port = 0;
  config.stream_threads = absl::GetFlag(FLAGS_stream_threads);
  auto server = server::grpc_api::GrpcServer::Start(config, frontend);
  TANDEM_CHECK_OK(server.status());
  const std::string target = absl::StrCat("127.0.0.1:", (*server)->port());

  std::vector<std::unique_ptr<tandem::v1::Generation::Stub>> stubs;
  for (int i = 0; i < channels; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("tandem.bench.channel", i);  // a distinct argument: a connection of its own
    stubs.push_back(tandem::v1::Generation::NewStub(
        grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
  }
  {
    // Warm up: connect every channel and start gRPC's lazy threads.
    Done done;
    std::vector<std::unique_ptr<StreamCall>> warm;
    for (auto& stub : stubs) warm.push_back(std::make_unique<StreamCall>(*stub, done));
    std::unique_lock<std::mutex> lock(done.mu);
    done.cv.wait(lock, [&] { return done.n == channels; });
  }
  const int threads_before = ThreadCount();

  std::atomic<bool> sampling{true};
  std::atomic<int> peak{threads_before};
  std::thread sampler([&] {
    while (sampling.load()) {
      peak.store(std::max(peak.load(), ThreadCount()));
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });

  Done done;
  std::vector<std::unique_ptr<StreamCall>> calls;
  calls.reserve(streams);
  const auto start = Clock::now();
  for (int i = 0; i < streams; ++i) {
    calls.push_back(std::make_unique<StreamCall>(*stubs[i % channels], done));
  }
  {
    std::unique_lock<std::mutex> lock(done.mu);
    done.cv.wait(lock, [&] { return done.n == streams; });
  }
  const double wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  sampling.store(false);
  sampler.join();

  int ok = 0;
  std::vector<double> latency, ttft;
  for (const auto& c : calls) {
    if (c->ok() && c->tokens() == tokens) ++ok;
    latency.push_back(c->latency_ms());
    ttft.push_back(c->ttft_ms());
  }
  std::printf(
      "streams %d, tokens %d, step %d ms (ideal stream %d ms), channels %d, "
      "stream_threads %d\n",
      streams, tokens, step_ms, tokens * step_ms, channels, config.stream_threads);
  std::printf("completed OK with every token: %d / %d in %.2f s\n", ok, streams, wall_s);
  std::printf("stream latency ms: p50 %.1f  p99 %.1f  max %.1f\n", Percentile(latency, 0.5),
              Percentile(latency, 0.99), Percentile(latency, 1.0));
  std::printf("first token ms:    p50 %.1f  p99 %.1f  max %.1f\n", Percentile(ttft, 0.5),
              Percentile(ttft, 0.99), Percentile(ttft, 1.0));
  std::printf("threads: %d at start, %d with server and client idle, peak %d with the streams\n",
              threads_at_start, threads_before, peak.load());
  calls.clear();
  (*server)->Shutdown(absl::Seconds(1));
  return ok == streams ? 0 : 1;
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Opens --streams concurrent gRPC Generate streams against a GrpcServer over a timer "
      "engine; reports completion, stream latency and peak thread count.");
  absl::ParseCommandLine(argc, argv);
  return tandem::bench::Main();
}
