// KvManager: the scheduler's only door to one instance's KV cache. It owns the KvCache (the
// memory and its BlockPool) and answers the few questions a scheduler asks (how many blocks,
// can this sequence grow) and performs the few changes it makes: grow a sequence's
// BlockTable, free it, reserve blocks for a remote sender under a lease, commit a lease into
// a table, and say where a sequence's blocks of one layer live so that a transfer can read or
// write them. BlockPool and BlockTable internals stay behind this interface.
//
// Mutating calls: Append, Free, Reserve, Renew, Import, Abort, ExpireLeases, AddRef, DropRef.
// Append is the one the scheduler uses to grow a sequence; everything else is a query.
//
// Thread safety: not synchronized. Owned and called by its instance's engine thread only;
// a transfer thread must go through the engine thread to touch leases or tables.
//
// Invariants:
// - Every block is in exactly one of: the free list (ref 0), one or more BlockTables, or one
//   lease (ref 1). num_free() + blocks held by tables + num_leased_blocks() == num_total()
//   when no block is shared.
// - A lease's blocks are never on the free list and are not in any table until Import.
// - Leases expire only in ExpireLeases: there is no clock in here, the caller passes `now`.
#ifndef TANDEM_KVCACHE_KV_MANAGER_H_
#define TANDEM_KVCACHE_KV_MANAGER_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/backend.h"
#include "kvcache/block_table.h"
#include "kvcache/kv_cache.h"

namespace tandem::kvcache {

// Blocks reserved for a remote sender (the prefill side of a KV transfer) until `expires`.
struct KvLease {
  uint64_t id = 0;              // > 0
  std::vector<int32_t> blocks;  // reserved block ids, in position order
  absl::Time expires;
};

// One block of one layer as stored: K and V [n_kv_heads, block_size, head_dim] of the cache
// dtype, and for int8 the per-token per-head (scale, zero) pairs [n_kv_heads, block_size, 2].
// Pointers are into the cache's memory (device memory on a GPU backend).
struct BlockLayerView {
  void* k = nullptr;              // [n_kv_heads, block_size, head_dim] of dtype
  void* v = nullptr;              // same shape as k
  float* k_scale_zero = nullptr;  // int8 only, else null: [n_kv_heads, block_size, 2]
  float* v_scale_zero = nullptr;  // same shape
};

class KvManager {
 public:
  explicit KvManager(std::unique_ptr<KvCache> cache);  // CHECKs cache is non-null
  static absl::StatusOr<std::unique_ptr<KvManager>> Create(const KvCacheConfig& config,
                                                           kernels::Backend& backend);
  KvManager(const KvManager&) = delete;
  KvManager& operator=(const KvManager&) = delete;

  const KvCacheConfig& config() const { return cache_->config(); }
  // What the model's kernels read and write.
  const kernels::KvCacheView& view() const { return cache_->view(); }
  int block_size() const { return config().block_size; }
  int num_total() const { return cache_->pool().num_total(); }  // blocks
  int num_free() const { return cache_->pool().num_free(); }    // leased blocks are not free
  int capacity_tokens() const { return num_total() * block_size(); }
  double Usage() const { return cache_->Usage(); }  // 1 - free / total

  // Queries. Tables must have been made with this manager's block size (CHECKed).
  // Blocks beyond those `table` holds needed to store `n_tokens` tokens in total.
  int BlocksNeeded(const BlockTable& table, int n_tokens) const;
  bool CanAllocate(int n_blocks) const { return cache_->pool().CanAllocate(n_blocks); }
  bool CanAppend(const BlockTable& table, int n_tokens) const;

  // Grows `table` to hold `n_tokens` tokens in total, all or nothing: ResourceExhausted when
  // short, and then the table and the pool are unchanged. Does not touch num_tokens(): the
  // positions hold KV only once the step that computes them has run (BlockTable::SetNumTokens).
  absl::Status Append(BlockTable& table, int n_tokens);
  // Returns one reference on every block of `table`; the table becomes empty.
  void Free(BlockTable& table);

  // Remote reservations (the decode side of a transfer). Reserve takes n_blocks off the free
  // list for a sender to fill: ResourceExhausted when short, InvalidArgument when n_blocks < 1.
  absl::StatusOr<KvLease> Reserve(int n_blocks, absl::Time expires);
  // Moves a live lease's deadline to `expires`. NotFound when the id is unknown, already
  // imported, aborted or expired by ExpireLeases.
  absl::Status Renew(uint64_t lease_id, absl::Time expires);
  // Commits all of a lease's blocks, in order, into `table` (which must be empty and of this
  // block size, CHECKed) as holding `n_tokens` tokens; the lease ends. NotFound for an unknown
  // lease; InvalidArgument when n_tokens < 0 or n_tokens > blocks * block_size, and then the
  // lease stays. A lease past its deadline that ExpireLeases has not swept still imports.
  absl::Status Import(uint64_t lease_id, int n_tokens, BlockTable& table);
  // Frees a lease's blocks; an unknown id is a no-op (it may have expired meanwhile).
  void Abort(uint64_t lease_id);
  // Frees every lease with expires <= now; returns how many ended.
  int ExpireLeases(absl::Time now);
  int num_leases() const { return static_cast<int>(leases_.size()); }
  int num_leased_blocks() const { return num_leased_blocks_; }

  // Export: where one block of one layer lives (CHECKs block and layer), and the per-layer
  // views of a table's blocks in position order (*out is cleared first).
  BlockLayerView LayerView(int32_t block, int layer) const;
  void ExportLayer(const BlockTable& table, int layer, std::vector<BlockLayerView>* out) const;
  // Bytes of one BlockLayerView's k (== its v).
  size_t LayerBlockBytes() const;
  // Bytes of one BlockLayerView's k_scale_zero (== its v_scale_zero); 0 unless int8.
  size_t LayerBlockScaleBytes() const;

  // Reference counts, for sharing blocks between sequences (the prefix cache, later).
  // AddRef takes one more reference on an in-use block; DropRef returns one (the block is
  // free again at zero). Both CHECK the block is in use.
  void AddRef(int32_t block);
  void DropRef(int32_t block);
  int RefCount(int32_t block) const;

 private:
  void CheckTable(const BlockTable& table) const;

  // Constant after construction.
  std::unique_ptr<KvCache> cache_;

  // Engine thread only. Ordered by id, so ExpireLeases frees in the order leases were made.
  std::map<uint64_t, KvLease> leases_;
  int num_leased_blocks_ = 0;
  uint64_t next_lease_id_ = 1;
};

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_KV_MANAGER_H_
