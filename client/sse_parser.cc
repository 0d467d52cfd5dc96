#include "client/sse_parser.h"

#include <utility>

namespace tandem::client {

SseParser::SseParser(EventCallback on_event) : on_event_(std::move(on_event)) {}

bool SseParser::Feed(std::string_view bytes) {
  for (char c : bytes) {
    if (stopped_) return false;
    if (c == '\n' && last_was_cr_) {  // second half of "\r\n": the line already ended
      last_was_cr_ = false;
      continue;
    }
    last_was_cr_ = c == '\r';
    if (c == '\n' || c == '\r') {
      if (!Line(pending_)) stopped_ = true;
      pending_.clear();
    } else {
      pending_.push_back(c);
    }
  }
  return !stopped_;
}

bool SseParser::Finish() {
  if (stopped_) return false;
  if (!pending_.empty()) {
    if (!Line(pending_)) return !(stopped_ = true);
    pending_.clear();
  }
  if (!Line("")) return !(stopped_ = true);
  return true;
}

bool SseParser::Line(std::string_view line) {
  if (line.empty()) {
    if (!has_data_) return true;
    std::string data = std::move(data_);
    data_.clear();
    has_data_ = false;
    return on_event_(data);
  }
  if (line.front() == ':') return true;  // comment (keep-alive)
  const size_t colon = line.find(':');
  const std::string_view field = line.substr(0, colon);
  if (field != "data") return true;
  std::string_view value = colon == std::string_view::npos ? "" : line.substr(colon + 1);
  if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  if (has_data_) data_.push_back('\n');
  data_.append(value);
  has_data_ = true;
  return true;
}

}  // namespace tandem::client
