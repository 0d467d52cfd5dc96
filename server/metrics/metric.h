// The three Prometheus metric kinds tandem exports: Counter, Gauge and Histogram. Each object
// is one time series (one label set); a Family (registry.h) owns them and renders them.
//
// Thread safety: every method may be called from any thread. Updates are lock-free (relaxed
// atomics, no allocation), so engine and io threads can update them on hot paths; readers see
// each value atomically, but a Histogram read concurrently with Observe() may see the sum and
// the bucket counts of slightly different moments (Prometheus tolerates this).
//
// Invariants: a Counter never decreases; Histogram bucket bounds are finite and strictly
// increasing (the +Inf bucket is implicit).
#ifndef TANDEM_SERVER_METRICS_METRIC_H_
#define TANDEM_SERVER_METRICS_METRIC_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::server::metrics {

// A monotonically increasing value (requests served, tokens generated).
class Counter {
 public:
  static constexpr std::string_view kType = "counter";

  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  // `amount` must be >= 0 (checked).
  void Increment(double amount = 1.0);
  double Value() const { return value_.load(std::memory_order_relaxed); }

  // Appends `name{labels} value\n`; `labels` is the rendered label list without braces.
  void AppendSamples(std::string_view name, std::string_view labels, std::string* out) const;

 private:
  std::atomic<double> value_{0.0};
};

// A value that goes up and down (running sequences, KV usage ratio).
class Gauge {
 public:
  static constexpr std::string_view kType = "gauge";

  Gauge() = default;
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Increment(double amount = 1.0) { value_.fetch_add(amount, std::memory_order_relaxed); }
  void Decrement(double amount = 1.0) { value_.fetch_sub(amount, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

  void AppendSamples(std::string_view name, std::string_view labels, std::string* out) const;

 private:
  std::atomic<double> value_{0.0};
};

// Counts observations into buckets with upper bounds `bounds` (le = "less or equal") plus an
// implicit +Inf bucket, and keeps their sum. Rendered cumulatively as Prometheus expects.
class Histogram {
 public:
  static constexpr std::string_view kType = "histogram";

  // `bounds`: finite, strictly increasing (checked); may be empty (only the +Inf bucket).
  explicit Histogram(std::vector<double> bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  // `count` bounds start, start*factor, ...; start > 0, factor > 1.
  static std::vector<double> ExponentialBuckets(double start, double factor, int count);
  // `count` bounds start, start+width, ...; width > 0.
  static std::vector<double> LinearBuckets(double start, double width, int count);

  // O(log buckets), no allocation. NaN goes to the +Inf bucket.
  void Observe(double value);

  const std::vector<double>& bounds() const { return bounds_; }
  // Non-cumulative counts per bucket; the last entry is the +Inf bucket.
  std::vector<uint64_t> BucketCounts() const;
  uint64_t Count() const;
  double Sum() const { return sum_.load(std::memory_order_relaxed); }

  // Appends the _bucket (cumulative, ending with le="+Inf"), _sum and _count lines; _count
  // equals the +Inf bucket even while observations race with the rendering.
  void AppendSamples(std::string_view name, std::string_view labels, std::string* out) const;

 private:
  // Constant after construction.
  const std::vector<double> bounds_;
  // bounds_.size() + 1 entries; the last is the +Inf bucket.
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<double> sum_{0.0};
};

// Formats a sample value or bucket bound as Prometheus does: shortest round-trip decimal,
// "+Inf", "-Inf", "NaN".
std::string FormatValue(double value);

}  // namespace tandem::server::metrics

#endif  // TANDEM_SERVER_METRICS_METRIC_H_
