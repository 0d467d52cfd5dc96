#include "bench/tandem_bench/sse_parser.h"

namespace tandem::bench {

void SseParser::Feed(std::string_view bytes, std::vector<std::string>& events) {
  out_ = &events;
  for (char c : bytes) {
    if (c == '\n' && last_was_cr_) {  // the \n of a \r\n pair: the line already ended
      last_was_cr_ = false;
      continue;
    }
    last_was_cr_ = (c == '\r');
    if (c == '\n' || c == '\r') {
      EndLine();
    } else {
      line_.push_back(c);
    }
  }
  out_ = nullptr;
}

void SseParser::EndLine() {
  if (line_.empty()) {  // blank line: dispatch
    if (has_data_) out_->push_back(std::move(data_));
    data_.clear();
    has_data_ = false;
    return;
  }
  if (line_[0] != ':') {
    const size_t colon = line_.find(':');
    std::string_view field(line_);
    std::string_view value;
    if (colon != std::string::npos) {
      field = std::string_view(line_).substr(0, colon);
      value = std::string_view(line_).substr(colon + 1);
      if (!value.empty() && value[0] == ' ') value.remove_prefix(1);
    }
    if (field == "data") {
      if (has_data_) data_.push_back('\n');
      data_.append(value);
      has_data_ = true;
    }
  }
  line_.clear();
}

}  // namespace tandem::bench
