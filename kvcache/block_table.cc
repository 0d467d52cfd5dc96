#include "kvcache/block_table.h"

#include <utility>

#include "common/check.h"

namespace tandem::kvcache {

BlockTable BlockTable::Adopt(int block_size, std::vector<int32_t> blocks, int n_tokens) {
  BlockTable t(block_size);
  t.blocks_ = std::move(blocks);
  t.SetNumTokens(n_tokens);
  return t;
}

int BlockTable::BlocksNeeded(int n_tokens) const {
  const int needed = (n_tokens + block_size_ - 1) / block_size_;
  return needed > static_cast<int>(blocks_.size()) ? needed - static_cast<int>(blocks_.size()) : 0;
}

absl::Status BlockTable::Reserve(BlockPool& pool, int n_tokens) {
  return pool.Allocate(BlocksNeeded(n_tokens), &blocks_);
}

void BlockTable::SetNumTokens(int n) {
  TANDEM_CHECK_LE(n, static_cast<int>(blocks_.size()) * block_size_);
  num_tokens_ = n;
}

int32_t BlockTable::SlotFor(int position) const {
  TANDEM_CHECK_LT(position / block_size_, static_cast<int>(blocks_.size()));
  return blocks_[position / block_size_] * block_size_ + position % block_size_;
}

void BlockTable::Release(BlockPool& pool) {
  pool.Free(blocks_);
  blocks_.clear();
  num_tokens_ = 0;
  SetPrefix(0, 0, false);
}

}  // namespace tandem::kvcache
