// tandem_metrics: a small Prometheus registry. A Registry owns metric families (one name, one
// help text, one kind, fixed label names); a family owns one series per label-value tuple.
// Registry::Render() produces the text exposition format 0.0.4 served on GET /metrics.
//
// Usage:
//   Registry registry;
//   auto& requests = registry.AddCounter("tandem:request_success_total", "Finished requests.",
//                                        {"finished_reason"});
//   Counter& stopped = requests.WithLabels({"stop"});   // look up once, keep the reference
//   stopped.Increment();                                 // hot path: one relaxed atomic add
//   auto& ttft = registry.AddHistogram("tandem:time_to_first_token_seconds", "TTFT.",
//                                      Histogram::ExponentialBuckets(0.001, 2, 16));
//   ttft.Get().Observe(0.042);                          // Get() = the unlabelled series
//   std::string body = registry.Render();               // Content-Type: kContentType
//
// Rendering order: families in registration order; within a family, series sorted by label
// values. A family with no label names has its single series created at registration, so it
// renders as 0 before the first update; a labelled family renders only the series created so
// far through WithLabels().
//
// Thread safety: every method may be called from any thread. Families and series are never
// destroyed before the Registry, so references returned by Add*() and WithLabels() stay valid
// for the Registry's lifetime. WithLabels() takes the family's mutex (look series up once, off
// the hot path); updates on a series take no lock (metric.h).
//
// Invariants (checked, a violation aborts): metric names match [a-zA-Z_:][a-zA-Z0-9_:]*, label
// names match [a-zA-Z_][a-zA-Z0-9_]* and do not start with "__" (histograms may not use "le");
// WithLabels() gets exactly one value per label name; a name is registered once, except that
// registering it again with the same kind, help, label names (and bounds) returns the existing
// family.
#ifndef TANDEM_SERVER_METRICS_REGISTRY_H_
#define TANDEM_SERVER_METRICS_REGISTRY_H_

#include <functional>
#include <map>
#include <memory>
#include <mutex>  // std::mutex, not absl::Mutex: Debian's Abseil is not TSan-instrumented
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "server/metrics/metric.h"

namespace tandem::server::metrics {

// The Content-Type of Registry::Render()'s output.
inline constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

namespace internal {

// What the Registry needs from a family of any kind.
class FamilyBase {
 public:
  FamilyBase(std::string name, std::string help, std::vector<std::string> label_names)
      : name_(std::move(name)), help_(std::move(help)), label_names_(std::move(label_names)) {}
  virtual ~FamilyBase() = default;

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  virtual std::string_view type() const = 0;
  // Appends the # HELP and # TYPE lines and every series.
  virtual void Render(std::string* out) const = 0;

 protected:
  // Renders `a="x",b="y"` with label values escaped.
  std::string RenderLabels(const std::vector<std::string>& values) const;
  void RenderHeader(std::string* out) const;

 private:
  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
};

}  // namespace internal

// All series of one metric. T is Counter, Gauge or Histogram.
template <typename T>
class Family final : public internal::FamilyBase {
 public:
  Family(std::string name, std::string help, std::vector<std::string> label_names,
         std::function<std::unique_ptr<T>()> make)
      : FamilyBase(std::move(name), std::move(help), std::move(label_names)),
        make_(std::move(make)) {
    if (this->label_names().empty()) WithLabels({});
  }

  // The series for `label_values` (one per label name, in order), created on first use.
  T& WithLabels(const std::vector<std::string>& label_values);
  // The series of a family without labels.
  T& Get() { return WithLabels({}); }

  std::string_view type() const override { return T::kType; }
  void Render(std::string* out) const override;

 private:
  // Constant after construction.
  const std::function<std::unique_ptr<T>()> make_;

  mutable std::mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<T>> series_ ABSL_GUARDED_BY(mu_);
};

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  Family<Counter>& AddCounter(std::string name, std::string help,
                              std::vector<std::string> label_names = {});
  Family<Gauge>& AddGauge(std::string name, std::string help,
                          std::vector<std::string> label_names = {});
  Family<Histogram>& AddHistogram(std::string name, std::string help, std::vector<double> bounds,
                                  std::vector<std::string> label_names = {});

  // The whole registry in the Prometheus text format 0.0.4.
  std::string Render() const;

 private:
  // Returns the existing family named `name` if it matches (else aborts), or nullptr.
  internal::FamilyBase* FindCompatible(const std::string& name, std::string_view type,
                                       const std::string& help,
                                       const std::vector<std::string>& label_names) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<internal::FamilyBase>> families_ ABSL_GUARDED_BY(mu_);
  // Bounds of each histogram family, to check re-registrations.
  std::map<std::string, std::vector<double>> histogram_bounds_ ABSL_GUARDED_BY(mu_);
};

// ---- implementation of the templates ----

namespace internal {
[[noreturn]] void LabelCountMismatch(const std::string& name, size_t want, size_t got);
}  // namespace internal

template <typename T>
T& Family<T>::WithLabels(const std::vector<std::string>& label_values) {
  if (label_values.size() != label_names().size()) {
    internal::LabelCountMismatch(name(), label_names().size(), label_values.size());
  }
  std::lock_guard<std::mutex> lock(mu_);
  std::unique_ptr<T>& slot = series_[label_values];
  if (slot == nullptr) slot = make_();
  return *slot;
}

template <typename T>
void Family<T>::Render(std::string* out) const {
  RenderHeader(out);
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [values, series] : series_) {
    series->AppendSamples(name(), RenderLabels(values), out);
  }
}

}  // namespace tandem::server::metrics

#endif  // TANDEM_SERVER_METRICS_REGISTRY_H_
