// BlockPool: the free list of fixed-size KV pages of one instance's cache.
// It hands out block ids; the memory behind them is a kernels::KvCacheView owned by KvCache.
// Blocks are reference counted so a later prefix cache can share them between sequences.
//
// Thread safety: not synchronized; owned and called by its instance's engine thread only.
// Invariants: every id in [0, num_total) is either free (ref 0, on the free list exactly once)
// or in use (ref >= 1, not on the free list). num_free() == size of the free list.
#ifndef TANDEM_KVCACHE_BLOCK_POOL_H_
#define TANDEM_KVCACHE_BLOCK_POOL_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace tandem::kvcache {

class BlockPool {
 public:
  explicit BlockPool(int num_blocks);

  int num_total() const { return static_cast<int>(ref_.size()); }
  int num_free() const { return static_cast<int>(free_.size()); }
  bool CanAllocate(int n) const { return n <= num_free(); }

  // Appends n fresh blocks (ref 1) to *out, all or nothing: ResourceExhausted when fewer
  // than n are free. This and Free/AddRef are the only calls that mutate the pool.
  absl::Status Allocate(int n, std::vector<int32_t>* out);
  // Drops one reference from each block; a block whose count reaches 0 becomes free.
  void Free(std::span<const int32_t> blocks);
  void AddRef(int32_t block);
  int RefCount(int32_t block) const;

 private:
  std::vector<int32_t> free_;  // stack of free ids; lowest ids handed out first
  std::vector<int32_t> ref_;   // [num_total] reference counts
};

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_BLOCK_POOL_H_
