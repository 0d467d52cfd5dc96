#include "server/serving_metrics.h"

#include <algorithm>
#include <cmath>

namespace tandem::server {
namespace {

using metrics::Histogram;

std::vector<double> LatencyBuckets() {  // 1 ms .. ~65 s
  return Histogram::ExponentialBuckets(0.001, 2, 17);
}
std::vector<double> TokenLatencyBuckets() {  // 0.5 ms .. ~8 s
  return Histogram::ExponentialBuckets(0.0005, 2, 15);
}
std::vector<double> RelativeErrorBuckets() {  // 1% .. ~10x
  return Histogram::ExponentialBuckets(0.01, 1.6, 20);
}

}  // namespace

ServingMetrics::ServingMetrics(const scheduler::Engine& engine)
    : engine_(engine),
      requests_(registry_.AddCounter(
          "tandem:requests_total", "API requests answered, by API and status.", {"api", "status"})),
      success_(registry_.AddCounter("tandem:request_success_total",
                                    "Sequences (choices) that ended normally, by finish reason.",
                                    {"finished_reason"})),
      aborted_(registry_.AddCounter("tandem:sequences_aborted_total",
                                    "Sequences that did not end normally: client gone "
                                    "(cancelled) or engine failure (failed).",
                                    {"reason"})),
      prompt_tokens_(
          registry_.AddCounter("tandem:prompt_tokens_total", "Prompt tokens of finished sequences.")
              .Get()),
      generation_tokens_(
          registry_.AddCounter("tandem:generation_tokens_total", "Tokens generated.").Get()),
      ttft_(registry_
                .AddHistogram("tandem:time_to_first_token_seconds",
                              "Time from request to first token, per sequence.", LatencyBuckets())
                .Get()),
      tpot_(registry_
                .AddHistogram("tandem:time_per_output_token_seconds",
                              "(e2e - ttft) / (output tokens - 1), per sequence with >= 2 tokens.",
                              TokenLatencyBuckets())
                .Get()),
      itl_(registry_
               .AddHistogram("tandem:inter_token_latency_seconds",
                             "Every gap between consecutive tokens of a sequence.",
                             TokenLatencyBuckets())
               .Get()),
      e2e_(registry_
               .AddHistogram("tandem:e2e_request_latency_seconds",
                             "Time from request to the sequence's end.", LatencyBuckets())
               .Get()),
      queue_(registry_
                 .AddHistogram("tandem:request_queue_time_seconds",
                               "Time from request to the sequence's first engine step.",
                               LatencyBuckets())
                 .Get()),
      slo_judged_(registry_
                      .AddCounter("tandem:slo_judged_total",
                                  "Sequences judged against their TTFT/TPOT SLOs.")
                      .Get()),
      slo_ttft_met_(
          registry_.AddCounter("tandem:slo_ttft_met_total", "Judged sequences with TTFT <= SLO.")
              .Get()),
      slo_tpot_met_(
          registry_.AddCounter("tandem:slo_tpot_met_total", "Judged sequences with TPOT <= SLO.")
              .Get()),
      slo_met_(registry_
                   .AddCounter("tandem:slo_met_total",
                               "Judged sequences meeting both SLOs (goodput numerator).")
                   .Get()),
      running_(registry_.AddGauge("tandem:num_requests_running", "Sequences holding KV.").Get()),
      waiting_(registry_.AddGauge("tandem:num_requests_waiting", "Sequences queued.").Get()),
      kv_usage_(
          registry_.AddGauge("tandem:kv_cache_usage_ratio", "Share of KV blocks in use.").Get()),
      preemptions_(registry_
                       .AddCounter("tandem:num_preemptions_total",
                                   "Sequences preempted (KV freed, recomputed later).")
                       .Get()),
      steps_(registry_.AddGauge("tandem:engine_steps", "Engine steps run since start.").Get()),
      best_effort_(registry_
                       .AddCounter("tandem:best_effort_sequences_total",
                                   "Finished sequences with no SLO (never judged).")
                       .Get()),
      rejections_(registry_.AddCounter(
          "tandem:slo_rejections_total",
          "Requests refused with 429, by reason: ttft (predicted late), tpot (no decode "
          "capacity within the TPOT SLOs), queued_ttft (would make queued requests late), "
          "expired (queued until its deadline was out of reach), queue_full.",
          {"reason"})),
      goodput_(registry_
                   .AddGauge("tandem:goodput_requests_per_second",
                             "Judged sequences that met both SLOs, per second, over the last "
                             "60 s (or since start).")
                   .Get()),
      attainment_(registry_.AddGauge(
          "tandem:slo_attainment_ratio",
          "Share of judged sequences of the last 60 s meeting the SLO (ttft, tpot or both).",
          {"slo"})),
      predicted_ttft_(registry_
                          .AddHistogram("tandem:predicted_ttft_seconds",
                                        "Admission's predicted time to first token, per "
                                        "sequence that got one.",
                                        LatencyBuckets())
                          .Get()),
      ttft_error_(registry_
                      .AddHistogram("tandem:ttft_prediction_relative_error",
                                    "|predicted - measured| / measured TTFT, per sequence.",
                                    RelativeErrorBuckets())
                      .Get()),
      step_error_(registry_
                      .AddHistogram("tandem:step_time_prediction_relative_error",
                                    "The latency model's |predicted - measured| / measured "
                                    "step time, per engine step.",
                                    RelativeErrorBuckets())
                      .Get()),
      correction_(registry_
                      .AddGauge("tandem:latency_model_correction",
                                "The latency model's online correction (measured / fitted "
                                "step time, smoothed).")
                      .Get()),
      deferred_(registry_
                    .AddCounter("tandem:decode_deferred_total",
                                "Decode tokens left out of a step by the TPOT cap.")
                    .Get()),
      handovers_(registry_
                     .AddCounter("tandem:kv_handover_sequences_total",
                                 "Sequences whose KV moved from the prefill to the decode "
                                 "instance (--disaggregation on).")
                     .Get()),
      handover_bytes_(registry_
                          .AddCounter("tandem:kv_handover_bytes_total",
                                      "KV bytes copied out of the prefill instance's cache.")
                          .Get()),
      handover_seconds_(registry_
                            .AddCounter("tandem:kv_handover_seconds_total",
                                        "Time the prefill instance spent copying KV out.")
                            .Get()),
      arrivals_waiting_(registry_
                            .AddGauge("tandem:decode_arrivals_waiting",
                                      "Prefilled sequences waiting for room on the decode "
                                      "instance.")
                            .Get()),
      decode_joins_(registry_
                        .AddCounter("tandem:decode_queue_sequences_total",
                                    "Prefilled sequences that joined a decode instance's running "
                                    "set (the decode phase's queue; the prefill phase's is "
                                    "tandem:request_queue_time_seconds).")
                        .Get()),
      decode_queue_seconds_(registry_
                                .AddCounter("tandem:decode_queue_seconds_total",
                                            "Time those sequences waited, from the arrival of "
                                            "their KV to joining the running set.")
                                .Get()),
      nano_steps_(registry_
                      .AddCounter("tandem:nano_batched_steps_total",
                                  "Engine steps run as two concurrent nano-batches "
                                  "(--nano-batching).")
                      .Get()),
      prefix_queried_(registry_
                          .AddCounter("tandem:prefix_cache_queried_tokens_total",
                                      "Prompt tokens of sequences that started (prefix caching).")
                          .Get()),
      prefix_hit_(registry_
                      .AddCounter("tandem:prefix_cache_hit_tokens_total",
                                  "Of those, tokens whose KV came from the prefix cache.")
                      .Get()),
      prefix_hit_ratio_(registry_
                            .AddGauge("tandem:prefix_cache_hit_ratio",
                                      "Hit tokens over queried tokens, since the start.")
                            .Get()),
      prefix_blocks_(registry_
                         .AddGauge("tandem:prefix_cache_blocks",
                                   "KV blocks in the prefix cache now (in use or evictable).")
                         .Get()) {}

void ServingMetrics::AddSource(std::function<std::string()> source) {
  sources_.push_back(std::move(source));
}

void ServingMetrics::OnTokenGap(absl::Duration gap) { itl_.Observe(absl::ToDoubleSeconds(gap)); }

void ServingMetrics::OnSequenceDone(const SequenceRecord& r) {
  if (r.finish == "stop" || r.finish == "length") {
    success_.WithLabels({r.finish}).Increment();
  } else {
    aborted_.WithLabels({r.finish}).Increment();
  }
  prompt_tokens_.Increment(r.prompt_tokens);
  generation_tokens_.Increment(r.output_tokens);
  e2e_.Observe(absl::ToDoubleSeconds(r.e2e));
  queue_.Observe(absl::ToDoubleSeconds(r.queue_time));
  double tpot_s = 0;
  if (r.ttft) {
    ttft_.Observe(absl::ToDoubleSeconds(*r.ttft));
    if (r.output_tokens > 1) {
      tpot_s = absl::ToDoubleSeconds(r.e2e - *r.ttft) / (r.output_tokens - 1);
      tpot_.Observe(tpot_s);
    }
  }
  if (r.predicted_ttft && r.ttft) {
    const double predicted = absl::ToDoubleSeconds(*r.predicted_ttft);
    const double actual = absl::ToDoubleSeconds(*r.ttft);
    predicted_ttft_.Observe(predicted);
    if (actual > 0) ttft_error_.Observe(std::abs(predicted - actual) / actual);
  }
  if (r.finish == "rejected") {  // admission gave up on it while it queued: never served
    rejections_.WithLabels({"expired"}).Increment();
    return;
  }
  if (r.finish == "cancelled") return;  // the client went away: not judged
  if (r.ttft_slo_ms <= 0 && r.tpot_slo_ms <= 0) {
    best_effort_.Increment();
    return;
  }
  slo_judged_.Increment();
  // An SLO that is not set is met.
  const bool ttft_ok =
      r.ttft && (r.ttft_slo_ms <= 0 || absl::ToDoubleMilliseconds(*r.ttft) <= r.ttft_slo_ms);
  const bool tpot_ok = r.ttft && (r.tpot_slo_ms <= 0 || tpot_s * 1000 <= r.tpot_slo_ms);
  if (ttft_ok) slo_ttft_met_.Increment();
  if (tpot_ok) slo_tpot_met_.Increment();
  if (ttft_ok && tpot_ok) slo_met_.Increment();
  std::lock_guard<std::mutex> lock(window_mu_);
  window_.push_back({absl::Now(), ttft_ok, tpot_ok});
}

void ServingMetrics::OnRejected(const std::string& reason, int sequences) {
  (void)sequences;
  rejections_.WithLabels({reason}).Increment();
}

void ServingMetrics::OnStep(double predicted, double measured) {
  if (measured > 0 && predicted > 0) step_error_.Observe(std::abs(predicted - measured) / measured);
}

void ServingMetrics::UpdateWindowGauges(absl::Time now) {
  std::lock_guard<std::mutex> lock(window_mu_);
  while (!window_.empty() && window_.front().at < now - kGoodputWindow) window_.pop_front();
  int ttft = 0, tpot = 0, both = 0;
  for (const Judged& j : window_) {
    ttft += j.ttft_ok;
    tpot += j.tpot_ok;
    both += j.ttft_ok && j.tpot_ok;
  }
  const double span = absl::ToDoubleSeconds(std::min(kGoodputWindow, now - start_));
  goodput_.Set(span > 0 ? both / span : 0);
  const double n = static_cast<double>(window_.size());
  attainment_.WithLabels({"ttft"}).Set(n > 0 ? ttft / n : 0);
  attainment_.WithLabels({"tpot"}).Set(n > 0 ? tpot / n : 0);
  attainment_.WithLabels({"all"}).Set(n > 0 ? both / n : 0);
}

void ServingMetrics::OnRequest(const std::string& api, const std::string& status) {
  requests_.WithLabels({api, status}).Increment();
}

std::string ServingMetrics::Render() {
  std::lock_guard<std::mutex> lock(render_mu_);
  const scheduler::InstanceStats s = engine_.stats();
  running_.Set(s.running);
  waiting_.Set(s.waiting);
  kv_usage_.Set(s.kv_usage);
  const double new_preemptions = static_cast<double>(s.preemptions) - preemptions_.Value();
  if (new_preemptions > 0) preemptions_.Increment(new_preemptions);
  steps_.Set(static_cast<double>(s.steps));
  correction_.Set(s.latency_correction);
  const double new_deferred = static_cast<double>(s.decode_deferred) - deferred_.Value();
  if (new_deferred > 0) deferred_.Increment(new_deferred);
  // Engine totals become counters by their growth since the last scrape.
  auto advance = [](metrics::Counter& c, double total) {
    if (total > c.Value()) c.Increment(total - c.Value());
  };
  advance(handovers_, static_cast<double>(s.handovers));
  advance(handover_bytes_, static_cast<double>(s.handover_bytes));
  advance(handover_seconds_, s.handover_seconds);
  arrivals_waiting_.Set(s.decode_arrivals_waiting);
  advance(decode_joins_, static_cast<double>(s.decode_joins));
  advance(decode_queue_seconds_, s.decode_queue_seconds);
  advance(nano_steps_, static_cast<double>(s.nano_steps));
  advance(prefix_queried_, static_cast<double>(s.prefix_queried_tokens));
  advance(prefix_hit_, static_cast<double>(s.prefix_hit_tokens));
  prefix_hit_ratio_.Set(s.prefix_queried_tokens > 0
                            ? static_cast<double>(s.prefix_hit_tokens) / s.prefix_queried_tokens
                            : 0.0);
  prefix_blocks_.Set(s.prefix_cached_blocks);
  UpdateWindowGauges(absl::Now());
  std::string out = registry_.Render();
  for (const auto& source : sources_) out += source();
  return out;
}

}  // namespace tandem::server
