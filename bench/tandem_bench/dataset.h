// Datasets: the requests a run sends, from one of three sources.
//   Synthetic   input/output lengths drawn from LengthDists (fixed seed); prompt text is a
//               window of a corpus file (real prose), sized by PromptBuilder to the wanted
//               token count, each request starting at a different word so prompts differ.
//               With a shared prefix (SGLang's generated-shared-prefix workload): every
//               prompt starts with one of `prefix_groups` prefixes of `shared_prefix_tokens`
//               tokens (corpus windows of their own), drawn with the seed, then its own text.
//   ShareGPT    a JSON array of {"conversations": [{"from","value"}...]}; vLLM's filter: the
//               first two turns are prompt and reply; drop prompt < 4 or reply < 4 tokens,
//               prompt > 1024 or prompt + reply > 2048; shuffled with the seed; the reply's
//               length is the request's max_tokens (unless an output length is forced).
//   JSONL       one object per line: {"prompt": TEXT | "messages": [...], "max_tokens": N,
//               optional "slo": {"ttft_ms", "tpot_ms", "e2e_ms"}} (a per-request SLO).
// Thread safety: pure functions over the given TokenCounter (used from the calling thread).
#ifndef TANDEM_BENCH_TANDEM_BENCH_DATASET_H_
#define TANDEM_BENCH_TANDEM_BENCH_DATASET_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/tandem_bench/length_dist.h"
#include "bench/tandem_bench/slo.h"
#include "bench/tandem_bench/token_counter.h"

namespace tandem::bench {

struct BenchRequest {
  std::string prompt;          // the text (for chat: the user message when `messages` is null)
  nlohmann::json messages;     // chat messages when the dataset gave them, else null
  int prompt_tokens = 0;       // counted with the run's TokenCounter
  int max_tokens = 0;          // output length asked for (enforced with ignore_eos when allowed)
  std::optional<SloSpec> slo;  // per-request SLO from the dataset; overrides --slo
};

// Whitespace-separated words of a text file; fails when missing or empty.
absl::StatusOr<std::vector<std::string>> LoadCorpusWords(const std::string& path);

// Builds prompts of a wanted token length from corpus words.
// Invariant: the returned text's counted length is the closest to the target among the word
// counts tried (word granularity: it can miss by a token or two when words are long).
class PromptBuilder {
 public:
  PromptBuilder(std::vector<std::string> words, TokenCounter* counter);

  struct Prompt {
    std::string text;
    int tokens = 0;
  };
  absl::StatusOr<Prompt> Build(int target_tokens, size_t start_word);

 private:
  std::string Window(size_t start, int n_words) const;

  std::vector<std::string> words_;
  TokenCounter* counter_;
  double tokens_per_word_ = 4.0 / 3.0;  // refined from every count
};

struct SyntheticConfig {
  int num_requests = 0;
  LengthDist input = *LengthDist::Parse("128");
  LengthDist output = *LengthDist::Parse("128");
  uint64_t seed = 0;
  int shared_prefix_tokens = 0;  // 0: none
  int prefix_groups = 1;         // distinct prefixes, >= 1
};
absl::StatusOr<std::vector<BenchRequest>> SynthesizeRequests(const SyntheticConfig& config,
                                                             std::vector<std::string> corpus_words,
                                                             TokenCounter* counter);

// `output_len` forces every max_tokens (vLLM's --sharegpt-output-len).
absl::StatusOr<std::vector<BenchRequest>> LoadShareGpt(const std::string& path, int num_requests,
                                                       uint64_t seed, TokenCounter* counter,
                                                       std::optional<int> output_len);

// Rows without max_tokens get `default_max_tokens`. Returns at most `num_requests` rows
// (all when <= 0).
absl::StatusOr<std::vector<BenchRequest>> LoadJsonl(const std::string& path, int num_requests,
                                                    int default_max_tokens, TokenCounter* counter);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_DATASET_H_
