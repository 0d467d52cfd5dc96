// TokenCounter: how many tokens a text is, for building prompts of a wanted length and for
// the ShareGPT length filter. Two implementations:
//   ServerTokenCounter  POST {url}/tokenize {"content": TEXT} -> {"tokens": [...]} (tandemd and
//                       llama.cpp's llama-server both serve it): exact for that server's model.
//   WordTokenCounter    no server help: tokens ~= ceil(words * 4 / 3), the usual ratio of
//                       GPT-2-style BPE on English prose (about 0.75 words per token). The
//                       server's own usage numbers still give the real counts in the results.
// Thread safety: Count may be called from one thread at a time.
#ifndef TANDEM_BENCH_TANDEM_BENCH_TOKEN_COUNTER_H_
#define TANDEM_BENCH_TANDEM_BENCH_TOKEN_COUNTER_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "bench/tandem_bench/http_fetch.h"

namespace tandem::bench {

class TokenCounter {
 public:
  virtual ~TokenCounter() = default;
  virtual absl::StatusOr<int> Count(std::string_view text) = 0;
  virtual std::string Name() const = 0;
};

class WordTokenCounter : public TokenCounter {
 public:
  absl::StatusOr<int> Count(std::string_view text) override;
  std::string Name() const override { return "words (~4/3 tokens per word)"; }
};

class ServerTokenCounter : public TokenCounter {
 public:
  ServerTokenCounter(ServerUrl server, std::string api_key)
      : server_(std::move(server)), api_key_(std::move(api_key)) {}
  absl::StatusOr<int> Count(std::string_view text) override;
  std::string Name() const override { return "server /tokenize"; }

 private:
  ServerUrl server_;
  std::string api_key_;
};

// "server": the server's /tokenize (fails if it does not answer); "words": WordTokenCounter;
// "auto": the server's when a probe succeeds, else words (and `note` says why).
absl::StatusOr<std::unique_ptr<TokenCounter>> MakeTokenCounter(std::string_view mode,
                                                               const ServerUrl& server,
                                                               const std::string& api_key,
                                                               std::string* note);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_TOKEN_COUNTER_H_
