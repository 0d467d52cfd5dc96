// SseParser: splits a text/event-stream body, fed in arbitrary pieces as it arrives, into
// events and hands each event's data to a callback. Follows the WHATWG rules the OpenAI API
// relies on: lines end with "\n", "\r\n" or "\r"; "data:" lines (one optional space after the
// colon) of one event are joined with "\n"; an empty line ends the event; comment lines
// (":...") and other fields (event, id, retry) are ignored.
//
// Thread safety: one thread at a time.
#ifndef TANDEM_CLIENT_SSE_PARSER_H_
#define TANDEM_CLIENT_SSE_PARSER_H_

#include <functional>
#include <string>
#include <string_view>

namespace tandem::client {

class SseParser {
 public:
  // Called with each complete event's data; return false to stop parsing (Feed then returns
  // false and ignores the rest).
  using EventCallback = std::function<bool(const std::string& data)>;

  explicit SseParser(EventCallback on_event);

  // Consumes `bytes`; returns false once the callback asked to stop.
  bool Feed(std::string_view bytes);
  // End of the body: dispatches a last event not followed by an empty line (servers that
  // close right after the final "data:" line). Returns false if the callback asked to stop.
  bool Finish();

 private:
  bool Line(std::string_view line);

  EventCallback on_event_;
  std::string pending_;       // an incomplete line
  std::string data_;          // data of the event being read
  bool has_data_ = false;     // data_ holds at least one data line
  bool last_was_cr_ = false;  // the previous piece ended with '\r' (a "\r\n" may be split)
  bool stopped_ = false;
};

}  // namespace tandem::client

#endif  // TANDEM_CLIENT_SSE_PARSER_H_
