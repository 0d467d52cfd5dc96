// BlockTable: one sequence's list of KV blocks, in position order, and its token count.
// Position p of the sequence lives in slot blocks[p / block_size] * block_size + p % block_size.
// With local layer groups (kvcache::KvGroups), the table has one such list per group: group 0
// (blocks()) covers every position, a local group only its window's, its earlier entries -1
// once their blocks went back to the pool. KvManager keeps the groups; the table only holds
// them.
//
// Thread safety: engine thread only.
// Invariants: blocks().size() * block_size >= num_tokens(); every block (not -1) of every group
// holds a reference in the pool it came from until Release().
#ifndef TANDEM_KVCACHE_BLOCK_TABLE_H_
#define TANDEM_KVCACHE_BLOCK_TABLE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kvcache/block_pool.h"

namespace tandem::kvcache {

class BlockTable {
 public:
  explicit BlockTable(int block_size) : block_size_(block_size) {}
  // A table over `blocks` (in position order) that someone already holds one reference on
  // each of, e.g. a KV lease's, holding the first `n_tokens` positions (CHECKed to fit). It
  // takes no reference of its own: either the reference moves to it (KvManager::Import) and
  // it is released as usual, or it only addresses the blocks and is never released.
  static BlockTable Adopt(int block_size, std::vector<int32_t> blocks, int n_tokens);

  int block_size() const { return block_size_; }
  int num_tokens() const { return num_tokens_; }
  const std::vector<int32_t>& blocks() const { return groups_[0]; }
  // Layer groups (KvGroups): 1 unless KvManager gave the table local groups.
  int num_groups() const { return static_cast<int>(groups_.size()); }
  const std::vector<int32_t>& group(int g) const { return groups_[g]; }
  // KvManager only: sizes the table to n groups (the new ones empty), and the lists themselves.
  void SetNumGroups(int n) { groups_.resize(n); }
  std::vector<int32_t>& mutable_group(int g) { return groups_[g]; }

  // Blocks needed beyond those held to store `n_tokens` tokens in total.
  int BlocksNeeded(int n_tokens) const;
  // Grows the table to hold `n_tokens` tokens, all or nothing.
  absl::Status Reserve(BlockPool& pool, int n_tokens);
  // Records that the first `n` positions now hold KV (n <= capacity).
  void SetNumTokens(int n);
  int32_t SlotFor(int position) const;
  // Returns every block of every group to the pool; the table becomes empty (one group).
  void Release(BlockPool& pool);

  // Prefix caching's place in the table (KvManager only): its first prefix_blocks() blocks
  // are in the prefix cache (registered, shared from it, or equal to a cached copy of the same
  // chain another sequence registered first), the last of them under chain hash prefix_hash(),
  // the cached block standing for it being prefix_tail() (-1 before any) as registered at
  // prefix_tail_generation(); once a block could not be registered, none after it is
  // (prefix_closed()).
  int prefix_blocks() const { return prefix_blocks_; }
  uint64_t prefix_hash() const { return prefix_hash_; }
  bool prefix_closed() const { return prefix_closed_; }
  int32_t prefix_tail() const { return prefix_tail_; }
  uint64_t prefix_tail_generation() const { return prefix_tail_generation_; }
  void SetPrefix(int blocks, uint64_t hash, bool closed, int32_t tail = -1,
                 uint64_t tail_generation = 0) {
    prefix_blocks_ = blocks;
    prefix_hash_ = hash;
    prefix_closed_ = closed;
    prefix_tail_ = tail;
    prefix_tail_generation_ = tail_generation;
  }

 private:
  int block_size_;
  int num_tokens_ = 0;
  std::vector<std::vector<int32_t>> groups_{1};  // [0] is blocks()
  int prefix_blocks_ = 0;
  uint64_t prefix_hash_ = 0;
  bool prefix_closed_ = false;
  int32_t prefix_tail_ = -1;
  uint64_t prefix_tail_generation_ = 0;
};

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_BLOCK_TABLE_H_
