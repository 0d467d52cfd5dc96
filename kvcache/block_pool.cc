#include "kvcache/block_pool.h"

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace tandem::kvcache {

BlockPool::BlockPool(int num_blocks) : ref_(num_blocks, 0) {
  TANDEM_CHECK_GE(num_blocks, 0);
  free_.reserve(num_blocks);
  for (int i = num_blocks - 1; i >= 0; --i) free_.push_back(i);
}

absl::Status BlockPool::Allocate(int n, std::vector<int32_t>* out) {
  TANDEM_CHECK_GE(n, 0);
  if (n > num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: ", n, " blocks requested, ",
                                                     num_free(), " of ", num_total(), " free"));
  }
  for (int i = 0; i < n; ++i) {
    const int32_t id = free_.back();
    free_.pop_back();
    TANDEM_CHECK_EQ(ref_[id], 0);
    ref_[id] = 1;
    out->push_back(id);
  }
  return absl::OkStatus();
}

void BlockPool::Free(std::span<const int32_t> blocks) {
  for (int32_t id : blocks) {
    TANDEM_CHECK(id >= 0 && id < num_total());
    TANDEM_CHECK_GT(ref_[id], 0);
    if (--ref_[id] == 0) free_.push_back(id);
  }
}

void BlockPool::AddRef(int32_t block) {
  TANDEM_CHECK(block >= 0 && block < num_total());
  TANDEM_CHECK_GT(ref_[block], 0);
  ++ref_[block];
}

int BlockPool::RefCount(int32_t block) const {
  TANDEM_CHECK(block >= 0 && block < num_total());
  return ref_[block];
}

}  // namespace tandem::kvcache
