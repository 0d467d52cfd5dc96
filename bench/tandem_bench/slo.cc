#include "bench/tandem_bench/slo.h"

#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/str_cat.h"

namespace tandem::bench {

std::string SloSpec::ToString() const {
  std::string out;
  auto add = [&out](const char* name, const std::optional<double>& v) {
    if (!v) return;
    if (!out.empty()) out += ",";
    out += StrCat(name, ":", *v);
  };
  add("ttft", ttft_ms);
  add("tpot", tpot_ms);
  add("e2e", e2e_ms);
  return out;
}

absl::StatusOr<SloSpec> ParseSlo(std::string_view text) {
  SloSpec spec;
  if (text.empty()) return spec;
  for (absl::string_view part : absl::StrSplit(absl::string_view(text.data(), text.size()), ',')) {
    part = absl::StripAsciiWhitespace(part);
    std::vector<absl::string_view> kv = absl::StrSplit(part, ':');
    double ms = 0;
    if (kv.size() != 2 || !absl::SimpleAtod(kv[1], &ms) || !(ms > 0)) {
      return absl::InvalidArgumentError(StrCat("bad SLO item '", std::string(part),
                                               "': want NAME:MILLISECONDS with MILLISECONDS > 0, ",
                                               "e.g. --slo ttft:250,tpot:100"));
    }
    if (kv[0] == "ttft") {
      spec.ttft_ms = ms;
    } else if (kv[0] == "tpot") {
      spec.tpot_ms = ms;
    } else if (kv[0] == "e2e") {
      spec.e2e_ms = ms;
    } else {
      return absl::InvalidArgumentError(
          StrCat("unknown SLO '", std::string(kv[0]), "': known are ttft, tpot, e2e"));
    }
  }
  return spec;
}

}  // namespace tandem::bench
