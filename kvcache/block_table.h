// BlockTable: one sequence's list of KV blocks, in position order, and its token count.
// Position p of the sequence lives in slot blocks[p / block_size] * block_size + p % block_size.
//
// Thread safety: engine thread only.
// Invariants: blocks().size() * block_size >= num_tokens(); every block holds a reference in
// the pool it came from until Release().
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
  const std::vector<int32_t>& blocks() const { return blocks_; }

  // Blocks needed beyond those held to store `n_tokens` tokens in total.
  int BlocksNeeded(int n_tokens) const;
  // Grows the table to hold `n_tokens` tokens, all or nothing.
  absl::Status Reserve(BlockPool& pool, int n_tokens);
  // Records that the first `n` positions now hold KV (n <= capacity).
  void SetNumTokens(int n);
  int32_t SlotFor(int position) const;
  // Returns every block to the pool; the table becomes empty.
  void Release(BlockPool& pool);

  // Prefix caching's place in the table (KvManager only): its first prefix_blocks() blocks
  // are in the prefix cache (registered or shared from it), the last of them under chain hash
  // prefix_hash(); once a block could not be registered, none after it is (prefix_closed()).
  int prefix_blocks() const { return prefix_blocks_; }
  uint64_t prefix_hash() const { return prefix_hash_; }
  bool prefix_closed() const { return prefix_closed_; }
  void SetPrefix(int blocks, uint64_t hash, bool closed) {
    prefix_blocks_ = blocks;
    prefix_hash_ = hash;
    prefix_closed_ = closed;
  }

 private:
  int block_size_;
  int num_tokens_ = 0;
  std::vector<int32_t> blocks_;
  int prefix_blocks_ = 0;
  uint64_t prefix_hash_ = 0;
  bool prefix_closed_ = false;
};

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_BLOCK_TABLE_H_
