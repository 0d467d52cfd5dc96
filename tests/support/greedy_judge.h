// Judging a model's greedy choices against a llama.cpp reference with the float64 model's
// choices beside it (tests/reference/gemma3/greedy.json and last_logits.json; the criterion is
// tests/reference/README.md's): a position where the model's argmax is not llama.cpp's token
// passes only where the exact model picks the model's token (llama.cpp's rounding is what
// differs there) or where llama.cpp's or the exact model's top-2 gap is below the near-tie
// bound. The tests bound the counts themselves.
//
// Thread safety: a GreedyJudge is used by one test thread.
#ifndef TANDEM_TESTS_SUPPORT_GREEDY_JUDGE_H_
#define TANDEM_TESTS_SUPPORT_GREEDY_JUDGE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace tandem::testing {

// One prompt of a greedy.json with `exact_argmax` / `exact_gap`.
struct GreedyReference {
  std::vector<int32_t> tokens;  // llama.cpp's greedy tokens
  std::vector<double> gaps;     // llama.cpp's top-2 gap at each
  std::vector<int32_t> exact;   // the float64 model's argmax, teacher-forced on `tokens`
  std::vector<double> exact_gaps;

  static GreedyReference FromJson(const nlohmann::json& prompt);
};

class GreedyJudge {
 public:
  explicit GreedyJudge(double near_tie) : near_tie_(near_tie) {}

  // Judges `row` (the model's `vocab` logits for generated position k of `ref`); a mismatch
  // that is neither sided by the exact model nor at a near-tie adds a test failure naming
  // `where`.
  void Judge(const GreedyReference& ref, const float* row, int vocab, size_t k,
             const std::string& where);

  int positions() const { return positions_; }
  int mismatches() const { return mismatches_; }        // positions off llama.cpp's token
  int exact_sides() const { return exact_sides_; }      // of those, where the exact model agrees
  int exact_differs() const { return exact_differs_; }  // positions off the exact model's token
  int llama_exact_differs() const { return llama_exact_differs_; }  // llama.cpp's, likewise
  double worst_gap() const { return worst_gap_; }  // largest near-tie gap at a mismatch

 private:
  const double near_tie_;
  int positions_ = 0, mismatches_ = 0, exact_sides_ = 0, exact_differs_ = 0,
      llama_exact_differs_ = 0;
  double worst_gap_ = 0;
};

// tests/reference/<relative> parsed (a test failure, and an empty value, when it is missing).
nlohmann::json ReadReferenceJson(const std::string& relative);

// max |logits[id] - value| over a last_logits.json prompt's top ids, over its max |logit|.
double TopLogitError(const nlohmann::json& top, const float* logits);

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_SUPPORT_GREEDY_JUDGE_H_
