// ServingMetrics: tandemd's Prometheus metrics (names prefixed `tandem:`, units in the name).
// It is the engine frontend's ServingObserver (per-sequence latencies, token counts, SLO
// attainment) and is told of every API request's status by the HTTP and gRPC layers; gauges
// (running, waiting, KV usage) are read from the engine instance at scrape time.
//
// Latencies are per sequence (one choice) and measured server-side from the moment the request
// was parsed: TTFT to the first token, TPOT = (e2e - ttft) / (tokens - 1), ITL every gap. SLO
// attainment counts sequences that ended normally (stop or length) or failed; a sequence whose
// client went away is not judged. No peer exports goodput server-side; these counters let a
// scraper compute attainment = tandem:slo_met_total / tandem:slo_judged_total. The daemon also
// keeps its own sliding window (kGoodputWindow) for a goodput gauge (judged sequences that met
// both SLOs per second) and attainment gauges per SLO. Sequences without an SLO (best-effort)
// are counted apart and never judged.
//
// SLO enforcement: requests refused by admission (429) by reason, admission's predicted TTFT
// against the measured one, and the latency model's error on every step.
//
// Thread safety: every method may be called from any thread.
#ifndef TANDEM_SERVER_SERVING_METRICS_H_
#define TANDEM_SERVER_SERVING_METRICS_H_

#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "scheduler/engine.h"
#include "server/engine_frontend.h"
#include "server/metrics/registry.h"

namespace tandem::server {

class ServingMetrics : public ServingObserver {
 public:
  explicit ServingMetrics(const scheduler::Engine& engine);

  void OnTokenGap(absl::Duration gap) override;
  void OnSequenceDone(const SequenceRecord& record) override;
  void OnRejected(const std::string& reason, int sequences) override;
  // One engine step: predicted and measured seconds (the engine's step observer).
  void OnStep(double predicted, double measured);

  static constexpr absl::Duration kGoodputWindow = absl::Seconds(60);
  // One API request answered: api is "http" or "grpc", status the HTTP status code or the gRPC
  // code name.
  void OnRequest(const std::string& api, const std::string& status);

  // Refreshes the gauges and renders everything (Content-Type metrics::kContentType).
  std::string Render();
  // More metrics, rendered after these at every scrape (a cluster role's own: the router's
  // worker registry, a worker's KV transfers). Call before serving.
  void AddSource(std::function<std::string()> source);

 private:
  const scheduler::Engine& engine_;
  // Prunes the window to `now` and refreshes the gauges computed from it.
  void UpdateWindowGauges(absl::Time now);

  std::mutex render_mu_;  // one scrape at a time updates the gauges
  struct Judged {
    absl::Time at;
    bool ttft_ok, tpot_ok;
  };
  std::mutex window_mu_;
  std::deque<Judged> window_;  // guarded by window_mu_; judged sequences of the last window
  const absl::Time start_ = absl::Now();
  metrics::Registry registry_;
  metrics::Family<metrics::Counter>& requests_;
  metrics::Family<metrics::Counter>& success_;
  metrics::Family<metrics::Counter>& aborted_;
  metrics::Counter& prompt_tokens_;
  metrics::Counter& generation_tokens_;
  metrics::Histogram& ttft_;
  metrics::Histogram& tpot_;
  metrics::Histogram& itl_;
  metrics::Histogram& e2e_;
  metrics::Histogram& queue_;
  metrics::Counter& slo_judged_;
  metrics::Counter& slo_ttft_met_;
  metrics::Counter& slo_tpot_met_;
  metrics::Counter& slo_met_;
  metrics::Gauge& running_;
  metrics::Gauge& waiting_;
  metrics::Gauge& kv_usage_;
  metrics::Counter& preemptions_;
  metrics::Gauge& steps_;
  metrics::Counter& best_effort_;
  metrics::Family<metrics::Counter>& rejections_;
  metrics::Gauge& goodput_;
  metrics::Family<metrics::Gauge>& attainment_;
  metrics::Histogram& predicted_ttft_;
  metrics::Histogram& ttft_error_;
  metrics::Histogram& step_error_;
  metrics::Gauge& correction_;
  metrics::Counter& deferred_;
  metrics::Counter& handovers_;
  metrics::Counter& handover_bytes_;
  metrics::Counter& handover_seconds_;
  metrics::Gauge& arrivals_waiting_;
  metrics::Counter& decode_joins_;
  metrics::Counter& decode_queue_seconds_;
  metrics::Counter& nano_steps_;
  metrics::Counter& prefix_queried_;
  metrics::Counter& prefix_hit_;
  metrics::Gauge& prefix_hit_ratio_;
  metrics::Gauge& prefix_blocks_;
  std::vector<std::function<std::string()>> sources_;  // set before serving
};

}  // namespace tandem::server

#endif  // TANDEM_SERVER_SERVING_METRICS_H_
