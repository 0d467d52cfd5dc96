// CheckSloMs and ParseSloHeader: the SLO range rule and the x-slo-*-ms header / metadata values.
#include "server/openai/slo.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "nlohmann/json.hpp"
#include "server/openai/errors.h"

namespace tandem::server::openai {
namespace {

TEST(CheckSloMs, AcceptsPositiveUpToOneHour) {
  for (double ms : {0.001, 1.0, 250.0, 40.5, 3600000.0}) {
    EXPECT_TRUE(CheckSloMs("slo.ttft_ms", ms).ok()) << ms;
  }
}

TEST(CheckSloMs, RejectsZeroNegativeHugeAndNonFinite) {
  for (double ms : {0.0, -0.0, -1.0, 3600000.001, 1e300, std::nan(""),
                    std::numeric_limits<double>::infinity()}) {
    const absl::Status s = CheckSloMs("slo.tpot_ms", ms);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << ms;
    EXPECT_EQ(ParamOf(s), "slo.tpot_ms") << ms;
    EXPECT_NE(s.message().find("'slo.tpot_ms' must be > 0 and <= 3600000"), std::string::npos) << s;
  }
  // The value is printed exactly, not rounded to six digits next to the limit.
  EXPECT_NE(CheckSloMs("x", 3600001).message().find("got 3600001"), std::string::npos);
}

TEST(ParseSloHeader, Numbers) {
  struct Case {
    const char* value;
    double want;
  };
  for (const Case& c :
       {Case{"250", 250}, Case{"40.5", 40.5}, Case{" 100\t", 100}, Case{"1e3", 1000},
        Case{"2.5E+2", 250}, Case{"0.25", 0.25}, Case{"3600000", 3600000}, Case{"007", 7}}) {
    absl::StatusOr<double> ms = ParseSloHeader(kSloTtftHeader, c.value);
    ASSERT_TRUE(ms.ok()) << c.value << ": " << ms.status();
    EXPECT_EQ(*ms, c.want) << c.value;
  }
}

TEST(ParseSloHeader, NotANumberNamesTheHeader) {
  for (const char* value : {"", " ", "abc", "100ms", "1,5", "0x10", "+5", ".5", "5.", "1e", "inf",
                            "nan", "Infinity", "100 200", "1e999", "\xff\xfe"}) {
    const absl::Status s = ParseSloHeader(kSloTpotHeader, value).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << value;
    EXPECT_EQ(ParamOf(s), "x-slo-tpot-ms") << value;
    EXPECT_NE(s.message().find("'x-slo-tpot-ms' must be a number of milliseconds"),
              std::string::npos)
        << s;
    EXPECT_EQ(HttpStatusFor(s), 400);
    EXPECT_TRUE(nlohmann::json::accept(ErrorBody(s))) << value;  // any bytes stay valid JSON
  }
}

TEST(ParseSloHeader, OutOfRangeNamesTheHeader) {
  for (const char* value : {"0", "-1", "-0.5", "3600000.5", "1e7"}) {
    const absl::Status s = ParseSloHeader(kSloTtftHeader, value).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << value;
    EXPECT_EQ(ParamOf(s), "x-slo-ttft-ms") << value;
    EXPECT_NE(s.message().find("'x-slo-ttft-ms' must be > 0 and <= 3600000"), std::string::npos)
        << s;
  }
}

TEST(ParseSloHeader, LongValuesAreCutInTheMessage) {
  const std::string value(10000, '9');  // a number, but far past one hour
  const absl::Status s = ParseSloHeader(kSloTtftHeader, value).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  const std::string junk = "x" + std::string(10000, 'y');
  const absl::Status j = ParseSloHeader(kSloTtftHeader, junk).status();
  EXPECT_LT(j.message().size(), 200u) << j;
}

}  // namespace
}  // namespace tandem::server::openai
