#include "bench/tandem_bench/dataset.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "absl/status/status.h"
#include "common/check.h"
#include "common/str_cat.h"

namespace tandem::bench {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(StrCat("cannot open '", path, "'"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<int> CountMessages(const nlohmann::json& messages, TokenCounter* counter) {
  std::string all;
  for (const auto& m : messages) {
    if (m.is_object() && m.contains("content") && m["content"].is_string()) {
      all += m["content"].get<std::string>();
      all += "\n";
    }
  }
  return counter->Count(all);
}

}  // namespace

absl::StatusOr<std::vector<std::string>> LoadCorpusWords(const std::string& path) {
  TANDEM_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::vector<std::string> words;
  std::istringstream ss(text);
  std::string w;
  while (ss >> w) words.push_back(std::move(w));
  if (words.empty()) return absl::InvalidArgumentError(StrCat("corpus '", path, "' has no words"));
  return words;
}

PromptBuilder::PromptBuilder(std::vector<std::string> words, TokenCounter* counter)
    : words_(std::move(words)), counter_(counter) {
  TANDEM_CHECK(!words_.empty());
}

std::string PromptBuilder::Window(size_t start, int n_words) const {
  std::string out;
  for (int i = 0; i < n_words; ++i) {
    if (i) out.push_back(' ');
    out += words_[(start + i) % words_.size()];
  }
  return out;
}

absl::StatusOr<PromptBuilder::Prompt> PromptBuilder::Build(int target, size_t start_word) {
  if (target < 1) return absl::InvalidArgumentError("prompt length must be >= 1 token");
  start_word %= words_.size();
  std::set<int> tried;
  Prompt best;
  int best_err = -1;
  int w = std::max(1, static_cast<int>(std::lround(target / tokens_per_word_)));
  // Newton-like steps on the word count, then +-1 steps; each costs one count. Bounded so a
  // counter that is not monotonic in the word count cannot loop.
  for (int iter = 0; iter < 12 && !tried.count(w); ++iter) {
    tried.insert(w);
    std::string text = Window(start_word, w);
    TANDEM_ASSIGN_OR_RETURN(int n, counter_->Count(text));
    const int err = std::abs(n - target);
    if (best_err < 0 || err < best_err) {
      best_err = err;
      best = {std::move(text), n};
    }
    if (n == target) break;
    if (n > 0) tokens_per_word_ = 0.5 * tokens_per_word_ + 0.5 * (static_cast<double>(n) / w);
    int step = static_cast<int>(std::lround((target - n) / tokens_per_word_));
    if (step == 0) step = n < target ? 1 : -1;
    int next = std::max(1, w + step);
    if (tried.count(next)) next = std::max(1, w + (n < target ? 1 : -1));
    w = next;
  }
  return best;
}

absl::StatusOr<std::vector<BenchRequest>> SynthesizeRequests(const SyntheticConfig& config,
                                                             std::vector<std::string> corpus_words,
                                                             TokenCounter* counter) {
  if (corpus_words.empty()) return absl::InvalidArgumentError("empty corpus");
  if (config.shared_prefix_tokens < 0 || config.prefix_groups < 1) {
    return absl::InvalidArgumentError("shared prefix tokens must be >= 0 and prefix groups >= 1");
  }
  const size_t n_words = corpus_words.size();
  PromptBuilder builder(std::move(corpus_words), counter);
  std::mt19937_64 rng(config.seed);
  // The shared prefixes and each request's choice of one, from a generator of their own so
  // that the requests' own draws are the same with and without them.
  std::vector<std::string> prefixes;
  std::mt19937_64 prefix_rng(config.seed ^ 0x5eed5eed5eed5eedULL);
  if (config.shared_prefix_tokens > 0) {
    for (int g = 0; g < config.prefix_groups; ++g) {
      const size_t start = std::uniform_int_distribution<size_t>(0, n_words - 1)(prefix_rng);
      TANDEM_ASSIGN_OR_RETURN(PromptBuilder::Prompt p,
                              builder.Build(config.shared_prefix_tokens, start));
      prefixes.push_back(StrCat("Context ", g + 1, ": ", p.text, "\n\n"));
    }
  }
  std::vector<BenchRequest> out;
  out.reserve(config.num_requests);
  for (int i = 0; i < config.num_requests; ++i) {
    const int in_len = config.input.Sample(rng);
    const int out_len = config.output.Sample(rng);
    const size_t start = std::uniform_int_distribution<size_t>(0, n_words - 1)(rng);
    TANDEM_ASSIGN_OR_RETURN(PromptBuilder::Prompt p, builder.Build(in_len, start));
    BenchRequest r;
    r.prompt = std::move(p.text);
    r.prompt_tokens = p.tokens;
    r.max_tokens = out_len;
    if (!prefixes.empty()) {
      const size_t g = std::uniform_int_distribution<size_t>(0, prefixes.size() - 1)(prefix_rng);
      r.prompt = prefixes[g] + r.prompt;
      TANDEM_ASSIGN_OR_RETURN(r.prompt_tokens, counter->Count(r.prompt));
    }
    out.push_back(std::move(r));
  }
  return out;
}

absl::StatusOr<std::vector<BenchRequest>> LoadShareGpt(const std::string& path, int num_requests,
                                                       uint64_t seed, TokenCounter* counter,
                                                       std::optional<int> output_len) {
  TANDEM_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_array()) return absl::InvalidArgumentError(StrCat("'", path, "' is not a JSON array"));
  std::vector<std::pair<std::string, std::string>> pairs;
  for (const auto& e : j) {
    if (!e.is_object() || !e.contains("conversations")) continue;
    const auto& c = e["conversations"];
    if (!c.is_array() || c.size() < 2) continue;
    if (!c[0].is_object() || !c[1].is_object() || !c[0].contains("value") ||
        !c[1].contains("value") || !c[0]["value"].is_string() || !c[1]["value"].is_string()) {
      continue;
    }
    pairs.emplace_back(c[0]["value"].get<std::string>(), c[1]["value"].get<std::string>());
  }
  std::mt19937_64 rng(seed);
  std::shuffle(pairs.begin(), pairs.end(), rng);
  std::vector<BenchRequest> out;
  for (auto& [prompt, reply] : pairs) {
    if (num_requests > 0 && static_cast<int>(out.size()) >= num_requests) break;
    TANDEM_ASSIGN_OR_RETURN(int p_len, counter->Count(prompt));
    int o_len = 0;
    if (output_len) {
      o_len = *output_len;
    } else {
      TANDEM_ASSIGN_OR_RETURN(o_len, counter->Count(reply));
    }
    if (p_len < 4 || o_len < 4) continue;                // too short to time
    if (p_len > 1024 || p_len + o_len > 2048) continue;  // vLLM's length limits
    BenchRequest r;
    r.prompt = std::move(prompt);
    r.prompt_tokens = p_len;
    r.max_tokens = o_len;
    out.push_back(std::move(r));
  }
  if (out.empty())
    return absl::InvalidArgumentError(StrCat("'", path, "': no usable conversations"));
  return out;
}

absl::StatusOr<std::vector<BenchRequest>> LoadJsonl(const std::string& path, int num_requests,
                                                    int default_max_tokens, TokenCounter* counter) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(StrCat("cannot open '", path, "'"));
  std::vector<BenchRequest> out;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    if (num_requests > 0 && static_cast<int>(out.size()) >= num_requests) break;
    auto where = [&] { return StrCat(path, ":", line_no, ": "); };
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object()) return absl::InvalidArgumentError(StrCat(where(), "not a JSON object"));
    BenchRequest r;
    if (j.contains("prompt") && j["prompt"].is_string()) {
      r.prompt = j["prompt"].get<std::string>();
      TANDEM_ASSIGN_OR_RETURN(r.prompt_tokens, counter->Count(r.prompt));
    } else if (j.contains("messages") && j["messages"].is_array()) {
      r.messages = j["messages"];
      TANDEM_ASSIGN_OR_RETURN(r.prompt_tokens, CountMessages(r.messages, counter));
    } else {
      return absl::InvalidArgumentError(
          StrCat(where(), "needs \"prompt\" (string) or \"messages\""));
    }
    r.max_tokens = default_max_tokens;
    if (j.contains("max_tokens")) {
      if (!j["max_tokens"].is_number_integer() || j["max_tokens"].get<int>() < 1) {
        return absl::InvalidArgumentError(StrCat(where(), "max_tokens must be an integer >= 1"));
      }
      r.max_tokens = j["max_tokens"].get<int>();
    }
    if (j.contains("slo")) {
      const auto& s = j["slo"];
      if (!s.is_object())
        return absl::InvalidArgumentError(StrCat(where(), "slo must be an object"));
      SloSpec spec;
      for (auto [key, field] :
           {std::pair{"ttft_ms", &spec.ttft_ms}, std::pair{"tpot_ms", &spec.tpot_ms},
            std::pair{"e2e_ms", &spec.e2e_ms}}) {
        if (!s.contains(key)) continue;
        if (!s[key].is_number() || !(s[key].get<double>() > 0)) {
          return absl::InvalidArgumentError(StrCat(where(), "slo.", key, " must be a number > 0"));
        }
        *field = s[key].get<double>();
      }
      r.slo = spec;
    }
    out.push_back(std::move(r));
  }
  if (out.empty()) return absl::InvalidArgumentError(StrCat("'", path, "': no requests"));
  return out;
}

}  // namespace tandem::bench
