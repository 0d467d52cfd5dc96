#include "tests/support/greedy_judge.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include "gtest/gtest.h"
#include "tests/support/reference_cases.h"

namespace tandem::testing {

GreedyReference GreedyReference::FromJson(const nlohmann::json& prompt) {
  GreedyReference r;
  r.tokens = prompt["tokens"].get<std::vector<int32_t>>();
  r.gaps = prompt["top2_gap"].get<std::vector<double>>();
  r.exact = prompt["exact_argmax"].get<std::vector<int32_t>>();
  r.exact_gaps = prompt["exact_gap"].get<std::vector<double>>();
  return r;
}

void GreedyJudge::Judge(const GreedyReference& ref, const float* row, int vocab, size_t k,
                        const std::string& where) {
  const int32_t got = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
  ++positions_;
  exact_differs_ += got != ref.exact[k];
  llama_exact_differs_ += ref.tokens[k] != ref.exact[k];
  if (got == ref.tokens[k]) return;
  ++mismatches_;
  if (got == ref.exact[k]) {  // the exact model sides with the model under test
    ++exact_sides_;
    return;
  }
  const double gap = std::min(ref.gaps[k], ref.exact_gaps[k]);
  worst_gap_ = std::max(worst_gap_, gap);
  EXPECT_LT(gap, near_tie_) << where << " token " << k << ": llama.cpp " << ref.tokens[k]
                            << " (logit " << row[ref.tokens[k]] << " here), got " << got
                            << " (logit " << row[got] << "), exact model " << ref.exact[k];
}

nlohmann::json ReadReferenceJson(const std::string& relative) {
  std::ifstream in(SourceDir() + "/tests/reference/" + relative);
  EXPECT_TRUE(in.good()) << "missing tests/reference/" << relative;
  if (!in.good()) return nlohmann::json();
  return nlohmann::json::parse(in);
}

double TopLogitError(const nlohmann::json& top, const float* logits) {
  const std::vector<int32_t> ids = top["ids"].get<std::vector<int32_t>>();
  const std::vector<double> values = top["values"].get<std::vector<double>>();
  double err = 0;
  for (size_t k = 0; k < ids.size(); ++k)
    err = std::max(err, std::fabs(logits[ids[k]] - values[k]));
  return err / top["max_abs"].get<double>();
}

}  // namespace tandem::testing
