#include "bench/tandem_bench/length_dist.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/str_cat.h"

namespace tandem::bench {

absl::StatusOr<LengthDist> LengthDist::Parse(std::string_view spec) {
  std::vector<std::string> parts = absl::StrSplit(absl::string_view(spec.data(), spec.size()), ':');
  auto bad = [&](const char* why) {
    return absl::InvalidArgumentError(
        StrCat("bad length spec '", spec, "' (", why,
               "): want N, fixed:N, uniform:LO:HI or lognormal:MEAN:SIGMA"));
  };
  std::vector<double> nums;
  for (size_t i = (parts.size() == 1 ? 0 : 1); i < parts.size(); ++i) {
    double v = 0;
    if (!absl::SimpleAtod(parts[i], &v) || !std::isfinite(v)) return bad("not a number");
    nums.push_back(v);
  }
  if (parts.size() == 1 || parts[0] == "fixed") {
    if (nums.size() != 1 || nums[0] < 1) return bad("need one length >= 1");
    return LengthDist(Kind::kFixed, std::round(nums[0]), 0);
  }
  if (parts[0] == "uniform") {
    if (nums.size() != 2 || nums[0] < 1 || nums[1] < nums[0]) return bad("need 1 <= LO <= HI");
    return LengthDist(Kind::kUniform, std::round(nums[0]), std::round(nums[1]));
  }
  if (parts[0] == "lognormal") {
    if (nums.size() != 2 || nums[0] < 1 || nums[1] < 0) return bad("need MEAN >= 1, SIGMA >= 0");
    return LengthDist(Kind::kLognormal, nums[0], nums[1]);
  }
  return bad("unknown kind");
}

int LengthDist::Sample(std::mt19937_64& rng) const {
  switch (kind_) {
    case Kind::kFixed:
      return static_cast<int>(a_);
    case Kind::kUniform:
      return static_cast<int>(
          std::uniform_int_distribution<long>(static_cast<long>(a_), static_cast<long>(b_))(rng));
    case Kind::kLognormal: {
      std::lognormal_distribution<double> d(std::log(a_) - b_ * b_ / 2, b_);
      const double v = std::round(d(rng));
      return static_cast<int>(std::clamp(v, 1.0, 16.0 * a_));
    }
  }
  return 1;
}

double LengthDist::Mean() const {
  switch (kind_) {
    case Kind::kFixed:
      return a_;
    case Kind::kUniform:
      return (a_ + b_) / 2;
    case Kind::kLognormal:
      return a_;
  }
  return a_;
}

std::string LengthDist::ToString() const {
  switch (kind_) {
    case Kind::kFixed:
      return StrCat("fixed:", a_);
    case Kind::kUniform:
      return StrCat("uniform:", a_, ":", b_);
    case Kind::kLognormal:
      return StrCat("lognormal:", a_, ":", b_);
  }
  return "";
}

}  // namespace tandem::bench
