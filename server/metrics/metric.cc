#include "server/metrics/metric.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "common/check.h"

namespace tandem::server::metrics {
namespace {

void AppendSample(std::string_view name, std::string_view suffix, std::string_view labels,
                  std::string_view value, std::string* out) {
  out->append(name);
  out->append(suffix);
  if (!labels.empty()) {
    out->push_back('{');
    out->append(labels);
    out->push_back('}');
  }
  out->push_back(' ');
  out->append(value);
  out->push_back('\n');
}

}  // namespace

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  TANDEM_CHECK(ec == std::errc());
  return std::string(buf, end);
}

void Counter::Increment(double amount) {
  TANDEM_CHECK_GE(amount, 0.0);
  value_.fetch_add(amount, std::memory_order_relaxed);
}

void Counter::AppendSamples(std::string_view name, std::string_view labels,
                            std::string* out) const {
  AppendSample(name, "", labels, FormatValue(Value()), out);
}

void Gauge::AppendSamples(std::string_view name, std::string_view labels, std::string* out) const {
  AppendSample(name, "", labels, FormatValue(Value()), out);
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      counts_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    TANDEM_CHECK(std::isfinite(bounds_[i]));
    if (i > 0) TANDEM_CHECK_LT(bounds_[i - 1], bounds_[i]);
  }
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

std::vector<double> Histogram::ExponentialBuckets(double start, double factor, int count) {
  TANDEM_CHECK_GT(start, 0.0);
  TANDEM_CHECK_GT(factor, 1.0);
  TANDEM_CHECK_GE(count, 1);
  std::vector<double> bounds(count);
  double bound = start;
  for (int i = 0; i < count; ++i, bound *= factor) bounds[i] = bound;
  return bounds;
}

std::vector<double> Histogram::LinearBuckets(double start, double width, int count) {
  TANDEM_CHECK_GT(width, 0.0);
  TANDEM_CHECK_GE(count, 1);
  std::vector<double> bounds(count);
  for (int i = 0; i < count; ++i) bounds[i] = start + width * i;
  return bounds;
}

void Histogram::Observe(double value) {
  size_t bucket = bounds_.size();
  if (!std::isnan(value)) {
    bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  }
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::BucketCounts() const {
  std::vector<uint64_t> counts(bounds_.size() + 1);
  for (size_t i = 0; i < counts.size(); ++i) {
    counts[i] = counts_[i].load(std::memory_order_relaxed);
  }
  return counts;
}

uint64_t Histogram::Count() const {
  uint64_t total = 0;
  for (uint64_t c : BucketCounts()) total += c;
  return total;
}

void Histogram::AppendSamples(std::string_view name, std::string_view labels,
                              std::string* out) const {
  const std::vector<uint64_t> counts = BucketCounts();
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    cumulative += counts[i];
    const std::string le = i < bounds_.size() ? FormatValue(bounds_[i]) : "+Inf";
    AppendSample(name, "_bucket", std::string(labels) + sep + "le=\"" + le + "\"",
                 std::to_string(cumulative), out);
  }
  AppendSample(name, "_sum", labels, FormatValue(Sum()), out);
  AppendSample(name, "_count", labels, std::to_string(cumulative), out);
}

}  // namespace tandem::server::metrics
