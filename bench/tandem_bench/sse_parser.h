// SseParser: incremental parser of a text/event-stream body (the WHATWG EventSource format
// as OpenAI-compatible servers use it). Bytes arrive in arbitrary pieces; each complete event
// (terminated by a blank line) yields its `data` payload (several data: lines are joined with
// "\n"). Comment lines (":...") and other fields (event:, id:, retry:) are skipped. Accepts
// "\n", "\r\n" and "\r" line ends.
// Thread safety: none; one per stream.
#ifndef TANDEM_BENCH_TANDEM_BENCH_SSE_PARSER_H_
#define TANDEM_BENCH_TANDEM_BENCH_SSE_PARSER_H_

#include <string>
#include <string_view>
#include <vector>

namespace tandem::bench {

class SseParser {
 public:
  // Feeds body bytes; appends the data payload of every event completed by them to `events`.
  void Feed(std::string_view bytes, std::vector<std::string>& events);

  // True when bytes of an unfinished event are buffered (a stream ending here was cut).
  bool HasPartialEvent() const { return !line_.empty() || has_data_; }

 private:
  void EndLine();

  std::string line_;  // the current, unterminated line
  std::string data_;  // data of the current event so far
  bool has_data_ = false;
  bool last_was_cr_ = false;
  std::vector<std::string>* out_ = nullptr;
};

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_SSE_PARSER_H_
