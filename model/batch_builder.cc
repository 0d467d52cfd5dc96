#include "model/batch_builder.h"

#include <algorithm>

#include "common/check.h"

namespace tandem::model {

int BatchBuilder::AddSequence(const kvcache::BlockTable& table, std::span<const int32_t> tokens,
                              int start_pos, bool want_logits) {
  TANDEM_CHECK(!tokens.empty());
  TANDEM_CHECK_LE(static_cast<int>(table.blocks().size()), max_blocks_per_seq_);
  const int seq = batch_.n_seqs++;
  batch_.max_blocks_per_seq = max_blocks_per_seq_;
  const size_t row = batch_.block_tables.size();
  batch_.block_tables.resize(row + max_blocks_per_seq_, -1);
  std::copy(table.blocks().begin(), table.blocks().end(), batch_.block_tables.begin() + row);
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
