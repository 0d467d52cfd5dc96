// FakeOpenAiServer: a scripted OpenAI-compatible server for tandem-bench's tests. It listens
// on 127.0.0.1 (a free port) and serves, on its own io thread:
//   POST /v1/completions, /v1/chat/completions  SSE token stream following a FakeBehavior:
//        first token `first_token_ms` after the request was read, then one token every
//        `itl_ms` (an absolute schedule, so delays do not accumulate), then a usage chunk and
//        data: [DONE]; or a scripted failure (HTTP status, connection cut mid-stream, a hang,
//        an error object in the stream)
//   POST /tokenize   {"tokens": [...]} with one token per whitespace-separated word; the request
//                    form is llama.cpp's {"content"} or vLLM's {"model", "prompt"} (TokenizeForm)
//   GET  /v1/models  one model, "fake-model"
//   GET  /metrics    tandem: counters (requests completed, prompt and generated tokens)
// Thread safety: the constructor, destructor and accessors may be called from the test
// thread; the behaviour callback runs on the server's io thread.
#ifndef TANDEM_TESTS_BENCH_FAKE_OPENAI_SERVER_H_
#define TANDEM_TESTS_BENCH_FAKE_OPENAI_SERVER_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace tandem::bench::testing {

struct FakeBehavior {
  int status = 200;            // != 200: answer this status with an OpenAI-style error body
  double first_token_ms = 50;  // request read -> first token chunk
  double itl_ms = 20;          // between token chunks
  int tokens = -1;             // token chunks to send; -1: the request's max_tokens
  int break_after = -1;        // >= 0: cut the connection after this many token chunks
  int error_after = -1;        // >= 0: send an error object after this many token chunks
  double hang_ms = 0;          // > 0: send the headers, then nothing for this long, then cut
  bool split_events = false;   // write each SSE event in two pieces, 1 ms apart
};

// Called once per generation request with its JSON body and the number of generation
// requests in flight when it arrived (itself included).
using BehaviorFn = std::function<FakeBehavior(const nlohmann::json& body, int in_flight)>;

enum class TokenizeForm { kLlamaCpp, kVllm, kNone };

class FakeOpenAiServer {
 public:
  explicit FakeOpenAiServer(BehaviorFn behavior, bool serve_metrics = true,
                            TokenizeForm tokenize = TokenizeForm::kLlamaCpp);
  ~FakeOpenAiServer();
  FakeOpenAiServer(const FakeOpenAiServer&) = delete;
  FakeOpenAiServer& operator=(const FakeOpenAiServer&) = delete;

  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int generation_requests() const { return generation_requests_.load(); }

  // What the server actually did for one generation request, on the process's steady clock
  // (the tests' client runs in the same process): when it had read the request and when each
  // token chunk's write completed. Lets tests tell the client's timing from the server's own
  // lateness on a loaded machine.
  struct StreamLog {
    std::string prompt;
    std::chrono::steady_clock::time_point read;
    std::vector<std::chrono::steady_clock::time_point> token_writes;
  };
  std::vector<StreamLog> streams() const;
  int max_in_flight() const { return max_in_flight_.load(); }
  // The body of the last generation request.
  nlohmann::json last_body() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
  int port_ = 0;
  std::atomic<int> generation_requests_{0};
  std::atomic<int> max_in_flight_{0};
};

}  // namespace tandem::bench::testing

#endif  // TANDEM_TESTS_BENCH_FAKE_OPENAI_SERVER_H_
