#include "bench/tandem_bench/progress_reporter.h"

#include <unistd.h>

#include <algorithm>

namespace tandem::bench {

ProgressReporter::ProgressReporter(std::string label, const std::string& mode, std::FILE* out)
    : label_(std::move(label)), out_(out) {
  if (mode == "off") {
    enabled_ = false;
  } else if (mode == "bar") {
    bar_ = true;
  } else if (mode == "lines") {
    bar_ = false;
  } else {
    bar_ = isatty(fileno(out_)) == 1;
  }
}

void ProgressReporter::Update(double fraction, const std::string& detail) {
  if (!enabled_) return;
  fraction = std::clamp(fraction, 0.0, 1.0);
  if (bar_) {
    const auto now = std::chrono::steady_clock::now();
    if (drawn_ && fraction < 1.0 && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(fraction * kWidth);
    std::string bar(filled, '#');
    bar.append(kWidth - filled, '.');
    std::fprintf(out_, "\r%s [%s] %3d%% %s\033[K", label_.c_str(), bar.c_str(),
                 static_cast<int>(fraction * 100), detail.c_str());
    std::fflush(out_);
    drawn_ = true;
    return;
  }
  const int decile = static_cast<int>(fraction * 10);
  if (decile > last_decile_) {
    last_decile_ = decile;
    std::fprintf(out_, "%s: %3d%% %s\n", label_.c_str(), decile * 10, detail.c_str());
    std::fflush(out_);
  }
}

void ProgressReporter::Finish(const std::string& detail) {
  if (!enabled_) return;
  if (bar_) {
    drawn_ = false;
    Update(1.0, detail);
    std::fprintf(out_, "\n");
    std::fflush(out_);
  } else if (last_decile_ < 10) {
    last_decile_ = 9;
    Update(1.0, detail);
  }
}

}  // namespace tandem::bench
