#include "client/sse_parser.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace tandem::client {
namespace {

std::vector<std::string> ParseInPieces(const std::string& body, size_t piece_size) {
  std::vector<std::string> events;
  SseParser parser([&](const std::string& data) {
    events.push_back(data);
    return true;
  });
  for (size_t i = 0; i < body.size(); i += piece_size) {
    EXPECT_TRUE(parser.Feed(std::string_view(body).substr(i, piece_size)));
  }
  EXPECT_TRUE(parser.Finish());
  return events;
}

TEST(SseParserTest, SplitsEventsWhateverThePieceSize) {
  const std::string body =
      ": keep-alive comment\n\n"
      "data: {\"a\":1}\n\n"
      "event: message\r\nid: 7\r\ndata:{\"b\":2}\r\n\r\n"
      "data: line one\ndata: line two\n\n"
      "retry: 100\n\n"
      "data: [DONE]\r\r";
  const std::vector<std::string> expected = {"{\"a\":1}", "{\"b\":2}", "line one\nline two",
                                             "[DONE]"};
  for (size_t piece : {1, 2, 3, 5, 7, 64, 1000}) {
    EXPECT_EQ(ParseInPieces(body, piece), expected) << "piece size " << piece;
  }
}

TEST(SseParserTest, OnlyTheFirstSpaceAfterTheColonIsDropped) {
  EXPECT_EQ(ParseInPieces("data:  two spaces\n\ndata\n\n", 4),
            (std::vector<std::string>{" two spaces", ""}));
}

TEST(SseParserTest, FinishDispatchesAnUnterminatedLastEvent) {
  EXPECT_EQ(ParseInPieces("data: a\n\ndata: b", 3), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(ParseInPieces("data: a\n\ndata: b\n", 3), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(ParseInPieces("", 1).empty());
}

TEST(SseParserTest, CallbackCanStopParsing) {
  std::vector<std::string> events;
  SseParser parser([&](const std::string& data) {
    events.push_back(data);
    return data != "stop";
  });
  EXPECT_FALSE(parser.Feed("data: a\n\ndata: stop\n\ndata: c\n\n"));
  EXPECT_FALSE(parser.Feed("data: d\n\n"));
  EXPECT_FALSE(parser.Finish());
  EXPECT_EQ(events, (std::vector<std::string>{"a", "stop"}));
}

}  // namespace
}  // namespace tandem::client
