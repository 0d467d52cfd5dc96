// LoadRunner: sends a run's requests to an OpenAI-compatible server and times every token.
// All requests are in flight on one io thread (Boost.Asio C++20 coroutines over Beast HTTP/1.1,
// one connection per request): no thread per request. Each request streams (SSE); the time of
// each chunk is taken when its bytes are read, before parsing. A request whose send time has
// come waits for a slot when --max-concurrency requests are in flight; its send time (and so
// its TTFT) starts when it is actually sent, as in vLLM's benchmark.
// Failures are records, never dropped: HTTP errors, broken streams (connection closed or
// malformed before "data: [DONE]"), timeouts (--timeout for the whole request), connect errors,
// error objects in the stream.
// Thread safety: Run blocks the calling thread and runs the io loop on it; one Run at a time.
#ifndef TANDEM_BENCH_TANDEM_BENCH_LOAD_RUNNER_H_
#define TANDEM_BENCH_TANDEM_BENCH_LOAD_RUNNER_H_

#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/tandem_bench/dataset.h"
#include "bench/tandem_bench/http_fetch.h"
#include "bench/tandem_bench/progress_reporter.h"
#include "bench/tandem_bench/request_record.h"
#include "bench/tandem_bench/slo.h"

namespace tandem::bench {

enum class Endpoint { kCompletions, kChat };

struct LoadConfig {
  ServerUrl server;
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;
  std::string api_key;
  double timeout_s = 600;   // per request, send to last byte
  int max_concurrency = 0;  // 0 = unlimited
  bool ignore_eos = true;   // ask the server to generate exactly max_tokens
  nlohmann::json extra_body = nlohmann::json::object();  // merged into every request body
  SloSpec slo;                                           // for requests whose dataset row has none
};

// The JSON body sent for `request` (streaming, usage included, temperature 0).
nlohmann::json BuildRequestBody(const LoadConfig& config, const BenchRequest& request);
// "/v1/completions" or "/v1/chat/completions".
std::string EndpointPath(Endpoint e);

// One entry of a schedule: which request, and when (seconds after the run starts).
struct Scheduled {
  size_t request = 0;
  double offset_s = 0;
};
using ScheduleFn = std::function<std::optional<Scheduled>()>;

struct RunResult {
  std::vector<RequestRecord> records;  // in send order
  double duration_s = 0;               // first send -> last completion
};

class LoadRunner {
 public:
  explicit LoadRunner(LoadConfig config) : config_(std::move(config)) {}

  // Dispatches entries of `next` until it returns nullopt or `stop_after_s` (> 0) has passed,
  // then waits for every request in flight. `expected` (> 0) scales the progress bar; with 0
  // progress follows time against stop_after_s. `progress` may be null.
  absl::StatusOr<RunResult> Run(const std::vector<BenchRequest>& requests, const ScheduleFn& next,
                                double stop_after_s, int expected, ProgressReporter* progress);

  const LoadConfig& config() const { return config_; }

 private:
  LoadConfig config_;
};

// A schedule of `offsets` over requests 0, 1, 2, ... (cycling through `n_requests`).
ScheduleFn ScheduleFromOffsets(std::vector<double> offsets, size_t n_requests);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_LOAD_RUNNER_H_
