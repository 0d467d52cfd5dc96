// StepBatch: the plain value one engine step hands the model: which tokens to run, where
// each sits in which sequence, where that sequence's KV lives, and whose logits to return.
// A batch mixes prefill chunks and decode tokens of different sequences freely; a
// sequence's result does not depend on what else is in the batch.
//
// Thread safety: a value; built by the engine thread, read by Model::Forward.
// Invariants (checked by Model::Forward, errors returned): equal lengths of tokens, positions
// and token_seq; every token_seq < n_seqs; block_tables has n_seqs * n_groups *
// max_blocks_per_seq entries and covers every position a token reads (a local group: its
// window); each logit row indexes a token.
#ifndef TANDEM_MODEL_STEP_BATCH_H_
#define TANDEM_MODEL_STEP_BATCH_H_

#include <cstdint>
#include <vector>

namespace tandem::model {

struct StepBatch {
  std::vector<int32_t> tokens;     // [n_tokens] token ids
  std::vector<int32_t> positions;  // [n_tokens] absolute position in its sequence
  std::vector<int32_t> token_seq;  // [n_tokens] sequence row of each token in block_tables
  // [n_seqs, n_groups, max_blocks_per_seq] KV block ids, -1 padded: a row per sequence of its
  // table in each layer group of the cache (kvcache::KvGroups; one group unless the cache
  // keeps sliding-window layers apart).
  std::vector<int32_t> block_tables;
  int n_seqs = 0;
  int n_groups = 1;
  int max_blocks_per_seq = 0;
  std::vector<int32_t> logit_rows;  // [n_out] token indices whose logits Forward returns

  int n_tokens() const { return static_cast<int>(tokens.size()); }
  // Empties the batch and keeps capacity, so a reused batch does not allocate.
  void Clear() {
    tokens.clear();
    positions.clear();
    token_seq.clear();
    block_tables.clear();
    logit_rows.clear();
    n_seqs = 0;
    n_groups = 1;
    max_blocks_per_seq = 0;
  }
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_STEP_BATCH_H_
