// BatchBuilder: assembles a StepBatch from sequences' block tables and the tokens each runs
// this step (a prefill chunk or one decode token). Shared by the engine loop, the generate
// tool, benchmarks and tests, so every caller lays out batches the same way.
//
// Thread safety: engine thread only. Reusing one builder keeps the batch's capacity, so a
// steady-state step does not allocate.
#ifndef TANDEM_MODEL_BATCH_BUILDER_H_
#define TANDEM_MODEL_BATCH_BUILDER_H_

#include <cstdint>
#include <span>

#include "kvcache/block_table.h"
#include "model/step_batch.h"

namespace tandem::model {

class BatchBuilder {
 public:
  // max_blocks_per_seq: the width of each block-table row (LlamaModel::max_blocks_per_seq());
  // n_groups: the cache's layer groups (kvcache::KvGroups::n_groups()).
  explicit BatchBuilder(int max_blocks_per_seq, int n_groups = 1)
      : max_blocks_per_seq_(max_blocks_per_seq), n_groups_(n_groups) {}

  void Clear() {
    batch_.Clear();
    batch_.n_groups = n_groups_;
  }
  // Adds `tokens` at positions start_pos.. of the sequence whose KV lives in `table` (which
  // must already hold blocks for them). When want_logits, the last token's logits are
  // requested; returns the index of that row in Forward's output, else -1.
  int AddSequence(const kvcache::BlockTable& table, std::span<const int32_t> tokens, int start_pos,
                  bool want_logits);

  const StepBatch& batch() const { return batch_; }
  StepBatch& mutable_batch() { return batch_; }

 private:
  int max_blocks_per_seq_;
  int n_groups_;
  StepBatch batch_;
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_BATCH_BUILDER_H_
