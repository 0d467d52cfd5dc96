#include "scheduler/latency_model.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "common/str_cat.h"
#include "nlohmann/json.hpp"

namespace tandem::scheduler {
namespace {

constexpr int kN = LatencyModel::kNumCoefficients;
constexpr const char* kNames[kN] = {"step", "prefill_token", "prefill_pair", "decode_seq",
                                    "decode_context"};

std::array<double, kN> Features(const StepShape& s) {
  return {1.0, static_cast<double>(s.prefill_tokens), s.prefill_pairs,
          static_cast<double>(s.decode_seqs), static_cast<double>(s.decode_context)};
}

// Solves the n x n system m x = v in place by Gaussian elimination with partial pivoting.
// False when singular.
bool Solve(std::vector<std::vector<double>>& m, std::vector<double>& v) {
  const size_t n = v.size();
  for (size_t col = 0; col < n; ++col) {
    size_t piv = col;
    for (size_t r = col + 1; r < n; ++r) {
      if (std::abs(m[r][col]) > std::abs(m[piv][col])) piv = r;
    }
    if (std::abs(m[piv][col]) < 1e-12) return false;
    std::swap(m[col], m[piv]);
    std::swap(v[col], v[piv]);
    for (size_t r = 0; r < n; ++r) {
      if (r == col) continue;
      const double f = m[r][col] / m[col][col];
      for (size_t k = col; k < n; ++k) m[r][k] -= f * m[col][k];
      v[r] -= f * v[col];
    }
  }
  for (size_t i = 0; i < n; ++i) v[i] /= m[i][i];
  return true;
}

}  // namespace

LatencyModel::LatencyModel(const Coefficients& c, const LatencyModelOptions& options)
    : options_(options), c_(c), fitted_(true) {}

absl::StatusOr<LatencyModel> LatencyModel::Fit(const std::vector<StepSample>& samples,
                                               const LatencyModelOptions& options) {
  if (samples.size() < static_cast<size_t>(kN)) {
    return absl::InvalidArgumentError(
        StrCat("a latency fit needs at least ", kN, " samples, got ", samples.size()));
  }
  // Rows scaled by 1/y: least squares of the relative error. Columns scaled to unit maximum
  // so the normal equations stay well conditioned (pairs run to ~1e6, the intercept is 1).
  std::vector<std::array<double, kN>> rows;
  rows.reserve(samples.size());
  std::array<double, kN> scale{};
  for (const StepSample& s : samples) {
    if (!(s.seconds > 0) || !std::isfinite(s.seconds)) {
      return absl::InvalidArgumentError(StrCat("a step time must be > 0, got ", s.seconds));
    }
    std::array<double, kN> f = Features(s.shape);
    for (int j = 0; j < kN; ++j) {
      f[j] /= s.seconds;
      scale[j] = std::max(scale[j], std::abs(f[j]));
    }
    rows.push_back(f);
  }
  // Active set: solve over the free coefficients; pin the most negative one to 0 and repeat.
  std::array<bool, kN> free{};
  for (int j = 0; j < kN; ++j) free[j] = scale[j] > 0;  // a feature never seen stays 0
  Coefficients c{};
  for (int iter = 0; iter <= kN; ++iter) {
    std::vector<int> idx;
    for (int j = 0; j < kN; ++j) {
      if (free[j]) idx.push_back(j);
    }
    if (idx.empty()) return absl::InvalidArgumentError("no feature varies in the samples");
    const size_t n = idx.size();
    std::vector<std::vector<double>> ata(n, std::vector<double>(n, 0.0));
    std::vector<double> atb(n, 0.0);
    for (const auto& r : rows) {
      for (size_t a = 0; a < n; ++a) {
        const double xa = r[idx[a]] / scale[idx[a]];
        atb[a] += xa;  // b = 1 for every row
        for (size_t b = 0; b < n; ++b) ata[a][b] += xa * r[idx[b]] / scale[idx[b]];
      }
    }
    for (size_t a = 0; a < n; ++a) ata[a][a] += 1e-12;  // keeps collinear columns solvable
    if (!Solve(ata, atb)) return absl::InvalidArgumentError("the latency fit is singular");
    c = {};
    int worst = -1;
    for (size_t a = 0; a < n; ++a) {
      c[idx[a]] = atb[a] / scale[idx[a]];
      if (c[idx[a]] < 0 && (worst < 0 || c[idx[a]] < c[worst])) worst = idx[a];
    }
    if (worst < 0) break;
    free[worst] = false;
    c[worst] = 0;
  }
  for (double& v : c) v = std::max(v, 0.0);
  LatencyModel m(c, options);
  std::vector<double> errs;
  for (const StepSample& s : samples) {
    errs.push_back(std::abs(m.PredictFitted(s.shape) - s.seconds) / s.seconds);
  }
  std::nth_element(errs.begin(), errs.begin() + errs.size() / 2, errs.end());
  m.fit_error_ = errs[errs.size() / 2];
  return m;
}

double LatencyModel::PredictFitted(const StepShape& shape) const {
  if (!fitted_) return 0;
  const std::array<double, kN> f = Features(shape);
  double t = 0;
  for (int j = 0; j < kN; ++j) t += c_[j] * f[j];
  return t;
}

double LatencyModel::Predict(const StepShape& shape) const {
  return PredictFitted(shape) * correction_;
}

double LatencyModel::Observe(const StepShape& shape, double measured_seconds) {
  const double fitted = PredictFitted(shape);
  if (!fitted_ || !(measured_seconds > 0) || !(fitted > 0)) return 0;
  const double err = (fitted * correction_ - measured_seconds) / measured_seconds;
  const double ratio =
      std::clamp(measured_seconds / fitted, 1.0 / options_.max_correction, options_.max_correction);
  correction_ += options_.correction_rate * (ratio - correction_);
  ++observed_;
  return err;
}

std::string LatencyModel::ToJson(const std::string& key) const {
  nlohmann::json j;
  j["version"] = 1;
  j["key"] = key;
  nlohmann::json c;
  for (int i = 0; i < kN; ++i) c[kNames[i]] = c_[i];
  j["seconds_per"] = c;
  j["correction"] = correction_;
  j["fit_error"] = fit_error_;
  return j.dump(2) + "\n";
}

absl::StatusOr<LatencyModel> LatencyModel::FromJson(const std::string& json,
                                                    const std::string& expected_key,
                                                    const LatencyModelOptions& options) {
  nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("the latency profile is not a JSON object");
  }
  if (!j.contains("version") || !j["version"].is_number_integer() || j["version"] != 1) {
    return absl::InvalidArgumentError("the latency profile has no supported 'version' (1)");
  }
  if (!j.contains("key") || !j["key"].is_string()) {
    return absl::InvalidArgumentError("the latency profile has no 'key'");
  }
  const std::string key = j["key"].get<std::string>();
  if (key != expected_key) {
    return absl::FailedPreconditionError(
        StrCat("the latency profile was taken on '", key, "', not on '", expected_key, "'"));
  }
  if (!j.contains("seconds_per") || !j["seconds_per"].is_object()) {
    return absl::InvalidArgumentError("the latency profile has no 'seconds_per' object");
  }
  Coefficients c{};
  for (int i = 0; i < kN; ++i) {
    const auto it = j["seconds_per"].find(kNames[i]);
    if (it == j["seconds_per"].end() || !it->is_number() || !std::isfinite(it->get<double>()) ||
        it->get<double>() < 0) {
      return absl::InvalidArgumentError(
          StrCat("the latency profile's seconds_per.", kNames[i], " is missing or not >= 0"));
    }
    c[i] = it->get<double>();
  }
  LatencyModel m(c, options);
  if (j.contains("correction") && j["correction"].is_number()) {
    m.correction_ = std::clamp(j["correction"].get<double>(), 1.0 / options.max_correction,
                               options.max_correction);
  }
  if (j.contains("fit_error") && j["fit_error"].is_number()) {
    m.fit_error_ = j["fit_error"].get<double>();
  }
  return m;
}

absl::Status LatencyModel::Save(const std::string& path, const std::string& key) const {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f) return absl::InternalError(StrCat("cannot write the latency profile ", tmp));
    f << ToJson(key);
    if (!f.flush()) return absl::InternalError(StrCat("cannot write the latency profile ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<LatencyModel> LatencyModel::Load(const std::string& path,
                                                const std::string& expected_key,
                                                const LatencyModelOptions& options) {
  std::ifstream f(path);
  if (!f) return absl::NotFoundError(StrCat("no latency profile at ", path));
  std::stringstream ss;
  ss << f.rdbuf();
  absl::StatusOr<LatencyModel> m = FromJson(ss.str(), expected_key, options);
  if (!m.ok()) {
    return absl::Status(m.status().code(), StrCat(path, ": ", m.status().message()));
  }
  return m;
}

}  // namespace tandem::scheduler
