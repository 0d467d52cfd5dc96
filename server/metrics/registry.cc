#include "server/metrics/registry.h"

#include "common/check.h"

namespace tandem::server::metrics {
namespace {

bool IsMetricName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool IsLabelName(std::string_view name) {
  if (name.empty() || name.substr(0, 2) == "__") return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

// Escapes `\` and newline (HELP text); also `"` for label values.
std::string Escape(std::string_view text, bool quote) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

void CheckNames(const std::string& name, const std::vector<std::string>& label_names,
                bool histogram) {
  if (!IsMetricName(name)) {
    ::tandem::internal::CheckFailed(__FILE__, __LINE__, "IsMetricName(name)", "(" + name + ")");
  }
  for (const std::string& label : label_names) {
    if (!IsLabelName(label) || (histogram && label == "le")) {
      ::tandem::internal::CheckFailed(__FILE__, __LINE__, "IsLabelName(label)",
                                      "(" + name + ": " + label + ")");
    }
  }
}

}  // namespace

namespace internal {

void LabelCountMismatch(const std::string& name, size_t want, size_t got) {
  ::tandem::internal::CheckFailed(
      __FILE__, __LINE__, "label_values.size() == label_names().size()",
      "(" + name + ": " + std::to_string(got) + " vs " + std::to_string(want) + ")");
}

std::string FamilyBase::RenderLabels(const std::vector<std::string>& values) const {
  std::string out;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out.push_back(',');
    out += label_names_[i];
    out += "=\"";
    out += Escape(values[i], /*quote=*/true);
    out.push_back('"');
  }
  return out;
}

void FamilyBase::RenderHeader(std::string* out) const {
  *out += "# HELP " + name_ + " " + Escape(help_, /*quote=*/false) + "\n";
  *out += "# TYPE " + name_ + " " + std::string(type()) + "\n";
}

}  // namespace internal

internal::FamilyBase* Registry::FindCompatible(const std::string& name, std::string_view type,
                                               const std::string& help,
                                               const std::vector<std::string>& label_names) const {
  for (const auto& family : families_) {
    if (family->name() != name) continue;
    if (family->type() != type || family->help() != help || family->label_names() != label_names) {
      ::tandem::internal::CheckFailed(__FILE__, __LINE__, "metric registered twice, differently",
                                      "(" + name + ")");
    }
    return family.get();
  }
  return nullptr;
}

Family<Counter>& Registry::AddCounter(std::string name, std::string help,
                                      std::vector<std::string> label_names) {
  CheckNames(name, label_names, /*histogram=*/false);
  std::lock_guard<std::mutex> lock(mu_);
  if (auto* found = FindCompatible(name, Counter::kType, help, label_names)) {
    return *static_cast<Family<Counter>*>(found);
  }
  auto family =
      std::make_unique<Family<Counter>>(std::move(name), std::move(help), std::move(label_names),
                                        [] { return std::make_unique<Counter>(); });
  Family<Counter>& ref = *family;
  families_.push_back(std::move(family));
  return ref;
}

Family<Gauge>& Registry::AddGauge(std::string name, std::string help,
                                  std::vector<std::string> label_names) {
  CheckNames(name, label_names, /*histogram=*/false);
  std::lock_guard<std::mutex> lock(mu_);
  if (auto* found = FindCompatible(name, Gauge::kType, help, label_names)) {
    return *static_cast<Family<Gauge>*>(found);
  }
  auto family =
      std::make_unique<Family<Gauge>>(std::move(name), std::move(help), std::move(label_names),
                                      [] { return std::make_unique<Gauge>(); });
  Family<Gauge>& ref = *family;
  families_.push_back(std::move(family));
  return ref;
}

Family<Histogram>& Registry::AddHistogram(std::string name, std::string help,
                                          std::vector<double> bounds,
                                          std::vector<std::string> label_names) {
  CheckNames(name, label_names, /*histogram=*/true);
  // Checks the bounds now, not at the first labelled series.
  Histogram check(bounds);
  std::lock_guard<std::mutex> lock(mu_);
  if (auto* found = FindCompatible(name, Histogram::kType, help, label_names)) {
    TANDEM_CHECK(histogram_bounds_[name] == bounds);
    return *static_cast<Family<Histogram>*>(found);
  }
  histogram_bounds_[name] = bounds;
  auto family = std::make_unique<Family<Histogram>>(
      std::move(name), std::move(help), std::move(label_names),
      [bounds = std::move(bounds)] { return std::make_unique<Histogram>(bounds); });
  Family<Histogram>& ref = *family;
  families_.push_back(std::move(family));
  return ref;
}

std::string Registry::Render() const {
  std::string out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& family : families_) family->Render(&out);
  return out;
}

}  // namespace tandem::server::metrics
