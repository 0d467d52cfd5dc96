// tandem-bench-membw: streaming-read memory bandwidth, the figure the decode roofline
// divides by (see bench/engine/stream_read.h for the kernel).
//
//   tandem-bench-membw [--threads 1,2] [--mib 1024] [--reps 5] [--isa auto|avx512|avx2|scalar]
//                      [--json]
//
// Prints the median GB/s (1e9 bytes/s) per thread count; --json prints one JSON object.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "bench/engine/stream_read.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::vector<std::string>, threads, std::vector<std::string>({"1", "2"}),
          "comma-separated thread counts");
ABSL_FLAG(int, mib, 1024, "buffer size in MiB (much larger than the caches)");
ABSL_FLAG(int, reps, 5, "timed passes per thread count (the median is reported)");
ABSL_FLAG(std::string, isa, "auto", "load width: auto, avx512, avx2 or scalar");
ABSL_FLAG(bool, json, false, "print one JSON object instead of a table");

namespace tandem::bench {
namespace {

int Main() {
  std::vector<int> threads;
  for (const std::string& s : absl::GetFlag(FLAGS_threads)) {
    int t = 0;
    if (!absl::SimpleAtoi(s, &t) || t < 1) {
      std::fprintf(stderr, "tandem-bench-membw: bad --threads entry '%s'\n", s.c_str());
      return 2;
    }
    threads.push_back(t);
  }
  const std::string isa_name = absl::GetFlag(FLAGS_isa);
  StreamIsa isa = BestStreamIsa();
  if (isa_name == "avx512" && isa == StreamIsa::kAvx512) {
  } else if (isa_name == "avx2" && isa != StreamIsa::kScalar) {
    isa = StreamIsa::kAvx2;
  } else if (isa_name == "scalar") {
    isa = StreamIsa::kScalar;
  } else if (isa_name != "auto") {
    std::fprintf(stderr, "tandem-bench-membw: --isa %s is unknown or not available\n",
                 isa_name.c_str());
    return 2;
  }
  const int mib = absl::GetFlag(FLAGS_mib);
  if (mib < 1) {
    std::fprintf(stderr, "tandem-bench-membw: --mib must be >= 1\n");
    return 2;
  }
  StreamReadBuffer buf(static_cast<size_t>(mib) << 20);
  if (!buf.ok()) {
    std::fprintf(stderr, "tandem-bench-membw: cannot allocate %d MiB\n", mib);
    return 2;
  }
  nlohmann::json out;
  out["isa"] = StreamIsaName(isa);
  out["buffer_bytes"] = buf.bytes();
  out["reps"] = absl::GetFlag(FLAGS_reps);
  for (int t : threads) {
    const double gbps = buf.MedianGbps(isa, t, absl::GetFlag(FLAGS_reps));
    out["results"].push_back({{"threads", t}, {"gbps", gbps}});
    if (!absl::GetFlag(FLAGS_json)) {
      std::printf("stream read  %-6s  threads %2d  %8.2f GB/s (median of %d over %d MiB)\n",
                  StreamIsaName(isa), t, gbps, absl::GetFlag(FLAGS_reps), mib);
    }
  }
  out["checksum"] = buf.sink();
  if (absl::GetFlag(FLAGS_json)) std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("streaming-read memory bandwidth (GB/s)");
  absl::ParseCommandLine(argc, argv);
  return tandem::bench::Main();
}
