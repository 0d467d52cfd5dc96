#include "model/batch_builder.h"

#include <algorithm>

#include "common/check.h"

namespace tandem::model {

int BatchBuilder::AddSequence(const kvcache::BlockTable& table, std::span<const int32_t> tokens,
                              int start_pos, bool want_logits) {
  TANDEM_CHECK(!tokens.empty());
  TANDEM_CHECK_LE(table.num_groups(), n_groups_);
  const int seq = batch_.n_seqs++;
  batch_.max_blocks_per_seq = max_blocks_per_seq_;
  batch_.n_groups = n_groups_;
  const size_t row = batch_.block_tables.size();
  batch_.block_tables.resize(row + static_cast<size_t>(n_groups_) * max_blocks_per_seq_, -1);
  for (int g = 0; g < table.num_groups(); ++g) {
    const std::vector<int32_t>& blocks = table.group(g);
    TANDEM_CHECK_LE(static_cast<int>(blocks.size()), max_blocks_per_seq_);
    std::copy(blocks.begin(), blocks.end(),
              batch_.block_tables.begin() + row + static_cast<size_t>(g) * max_blocks_per_seq_);
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    batch_.tokens.push_back(tokens[i]);
    batch_.positions.push_back(start_pos + static_cast<int>(i));
    batch_.token_seq.push_back(seq);
  }
  if (!want_logits) return -1;
  batch_.logit_rows.push_back(batch_.n_tokens() - 1);
  return static_cast<int>(batch_.logit_rows.size()) - 1;
}

}  // namespace tandem::model
