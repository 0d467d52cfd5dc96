#include "kvcache/block_table.h"

#include <utility>

#include "common/check.h"

namespace tandem::kvcache {

BlockTable BlockTable::Adopt(int block_size, std::vector<int32_t> blocks, int n_tokens) {
  BlockTable t(block_size);
  t.groups_[0] = std::move(blocks);
  t.SetNumTokens(n_tokens);
  return t;
}

int BlockTable::BlocksNeeded(int n_tokens) const {
  const int needed = (n_tokens + block_size_ - 1) / block_size_;
  const int held = static_cast<int>(groups_[0].size());
  return needed > held ? needed - held : 0;
}

absl::Status BlockTable::Reserve(BlockPool& pool, int n_tokens) {
  return pool.Allocate(BlocksNeeded(n_tokens), &groups_[0]);
}

void BlockTable::SetNumTokens(int n) {
  TANDEM_CHECK_LE(n, static_cast<int>(groups_[0].size()) * block_size_);
  num_tokens_ = n;
}

int32_t BlockTable::SlotFor(int position) const {
  TANDEM_CHECK_LT(position / block_size_, static_cast<int>(groups_[0].size()));
  return groups_[0][position / block_size_] * block_size_ + position % block_size_;
}

void BlockTable::Release(BlockPool& pool) {
  for (std::vector<int32_t>& g : groups_) {
    for (int32_t b : g) {
      if (b >= 0) {
        const int32_t one[] = {b};
        pool.Free(one);
      }
    }
  }
  groups_.assign(1, {});
  num_tokens_ = 0;
  SetPrefix(0, 0, false);
}

}  // namespace tandem::kvcache
