// KvManager: the scheduler's only door to one instance's KV cache. It owns the KvCache (the
// memory and its BlockPool) and answers the few questions a scheduler asks (how many blocks,
// can this sequence grow) and performs the few changes it makes: grow a sequence's
// BlockTable, free it, reserve blocks for a remote sender under a lease, commit a lease into
// a table, and say where a sequence's blocks of one layer live so that a transfer can read or
// write them. BlockPool and BlockTable internals stay behind this interface.
//
// Prefix caching (off until EnablePrefixCaching; vLLM's automatic prefix caching): every whole
// block of computed KV is registered under the hash of its token chain (its tokens and every
// token before them); a sequence about to start takes the blocks of its longest cached prefix
// (MatchPrefix) instead of computing them. A cached block that no table holds stays cached
// (evictable, least recently freed first) until the free list runs dry, and counts as free.
// A hit is exact, not a hash match: the block's tokens are compared, and its parent must be
// the very block matched before it, registered no later than it (a generation number), so by
// induction from the first block the whole prefix is the same.
//
// Mutating calls: Append, Free, Reserve, Renew, Import, Abort, ExpireLeases, AddRef, DropRef,
// MatchPrefix, CacheFullBlocks. Append is the one the scheduler uses to grow a sequence.
//
// Local layer groups (KvGroups, when the cache config asks for them): a table holds a list of
// blocks per group; a local group's blocks before its window are returned by Append (the
// sequence never reads them again), so a sliding-window model's local layers hold about
// window + one step of KV per sequence whatever the context. A "block" in every count below is
// one page of any group. With local groups, the prefix cache registers each group's page of a
// block beside the group-0 page (its anchor) and a hit also needs, in every other group, the
// pages the first uncomputed position reads (the whole prefix for a full group, the window for
// a local one): a local page that left the window is cached as long as it is not evicted.
// A lease for a grouped cache is made by ReserveTokens (the blocks of every group that n tokens
// keep) and imported with exactly those tokens; Reserve (by blocks) and the layer export
// (LayerView, ExportLayer: the sending side) are for one-group caches only (Reserve refuses,
// the export CHECKs).
//
// Thread safety: not synchronized, except PeekPrefix (any thread). Owned and called by its
// instance's engine thread only; a transfer thread must go through the engine thread to touch
// leases or tables.
//
// Invariants:
// - Every block is in exactly one of: the free list (ref 0), one or more BlockTables, or one
//   lease (ref 1), or the prefix cache alone (ref 1, evictable). A block belongs to one group
//   from allocation until it is free again. A cached block holds one
//   reference of the cache's besides its tables'. num_free() (free list plus evictable) +
//   blocks held by tables + num_leased_blocks() == num_total() when no block is shared.
// - A lease's blocks are never on the free list and are not in any table until Import.
// - Leases expire only in ExpireLeases: there is no clock in here, the caller passes `now`.
#ifndef TANDEM_KVCACHE_KV_MANAGER_H_
#define TANDEM_KVCACHE_KV_MANAGER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
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
  std::vector<int32_t> blocks;  // reserved block ids, in position order (group 0)
  // With local layer groups (ReserveTokens): groups 1.. (groups[g - 1]), a local one -1 before
  // the window of position n_tokens, and the positions it was made for.
  std::vector<std::vector<int32_t>> groups;
  int n_tokens = 0;
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
  const KvGroups& groups() const { return groups_; }
  // What the model's kernels read and write.
  const kernels::KvCacheView& view() const { return cache_->view(); }
  int block_size() const { return config().block_size; }
  int num_total() const { return cache_->pool().num_total(); }  // blocks
  // Free blocks, cached ones no table holds included (leased blocks are not free).
  int num_free() const { return cache_->pool().num_free() + static_cast<int>(lru_.size()); }
  // The longest sequence the whole cache can hold (with local groups, counting a local
  // group's window plus one step, config().max_step_tokens, per sequence).
  int capacity_tokens() const;
  double Usage() const;  // 1 - num_free / total

  // Queries. Tables must have been made with this manager's block size (CHECKed).
  // Blocks beyond those `table` holds needed to store `n_tokens` tokens in total, in every
  // group (a local group: the positions from its window before num_tokens() on).
  int BlocksNeeded(const BlockTable& table, int n_tokens) const;
  bool CanAllocate(int n_blocks) const { return n_blocks <= num_free(); }
  // Whether Append(table, n_tokens) would succeed now (counting the local blocks it returns).
  bool CanAppend(const BlockTable& table, int n_tokens) const;

  // Grows `table` to hold `n_tokens` tokens in total, all or nothing: ResourceExhausted when
  // short, and then the pool holds the same blocks for the table (only local blocks before the
  // window may have gone back). Does not touch num_tokens(): the positions hold KV only once
  // the step that computes them has run (BlockTable::SetNumTokens), and the window is counted
  // from num_tokens(), the first position the next step computes.
  absl::Status Append(BlockTable& table, int n_tokens);
  // Returns one reference on every block of `table`; the table becomes empty. Its cached
  // blocks no other table holds become evictable, its last block first in line.
  void Free(BlockTable& table);

  // Prefix caching (see the top). Enabling takes effect for tables started after it.
  void EnablePrefixCaching();
  bool prefix_caching() const { return prefix_caching_.load(); }
  // For a sequence about to start (`table` empty): shares into `table` the cached blocks of the
  // longest cached prefix of `tokens` made of whole blocks and at most max_tokens tokens long,
  // sets its num_tokens() to the tokens they hold, and returns that (0 when off or no hit).
  // Counts nothing: the caller reports what it used with RecordPrefixQuery.
  int MatchPrefix(std::span<const int32_t> tokens, int max_tokens, BlockTable& table);
  // How many tokens MatchPrefix would share now (0 when off), taking nothing: SLO admission's
  // estimate for a request not yet queued. Any thread; may be stale by the time it starts.
  int PeekPrefix(std::span<const int32_t> tokens, int max_tokens) const;
  // A sequence started with `hit` of its `queried` prompt tokens from the cache (metrics).
  void RecordPrefixQuery(int queried, int hit);
  // Registers the whole blocks among `table`'s first num_tokens() positions that are not in
  // the cache yet (`tokens`: the sequence's tokens, at least num_tokens() of them). A block
  // whose chain is already cached (another sequence computed the same prefix) is not
  // registered, and neither is any after it in this table. No-op when off.
  void CacheFullBlocks(std::span<const int32_t> tokens, BlockTable& table);
  struct PrefixCacheStats {
    uint64_t queried_tokens = 0;  // prompt tokens of sequences that started
    uint64_t hit_tokens = 0;      // of those, taken from the cache
    int cached_blocks = 0;        // blocks in the cache now (held by tables or evictable)
    int evictable_blocks = 0;     // of those, held by no table
    uint64_t evicted_blocks = 0;  // taken out of the cache to be reused
  };
  PrefixCacheStats prefix_stats() const;

  // Remote reservations (the decode side of a transfer). Reserve takes n_blocks off the free
  // list for a sender to fill: ResourceExhausted when short, InvalidArgument when n_blocks < 1,
  // FailedPrecondition with local groups. ReserveTokens takes the blocks that n_tokens positions
  // keep in every group (a local one: those of the window of position n_tokens, the next to
  // compute): ResourceExhausted when short, InvalidArgument when n_tokens < 1.
  absl::StatusOr<KvLease> Reserve(int n_blocks, absl::Time expires);
  absl::StatusOr<KvLease> ReserveTokens(int n_tokens, absl::Time expires);
  // Moves a live lease's deadline to `expires`. NotFound when the id is unknown, already
  // imported, aborted or expired by ExpireLeases.
  absl::Status Renew(uint64_t lease_id, absl::Time expires);
  // Commits all of a lease's blocks, in order, into `table` (which must be empty and of this
  // block size, CHECKed) as holding `n_tokens` tokens; the lease ends. NotFound for an unknown
  // lease; InvalidArgument when n_tokens < 0 or n_tokens > blocks * block_size, or (a lease of
  // ReserveTokens with local groups) n_tokens is not the lease's, and then the lease stays. A
  // lease past its deadline that ExpireLeases has not swept still imports.
  absl::Status Import(uint64_t lease_id, int n_tokens, BlockTable& table);
  // The table Import(lease, n_tokens) makes, every group's blocks, taking no reference: what a
  // transfer writing into the lease addresses.
  BlockTable LeaseTable(const KvLease& lease, int n_tokens) const;
  // Blocks Append(table, n_total) would take beyond a live lease once imported with
  // n_imported tokens, the blocks Append returns counted (NotFound for an unknown lease).
  absl::StatusOr<int> BlocksToGrowImport(uint64_t lease_id, int n_imported, int n_total) const;
  // Frees a lease's blocks; an unknown id is a no-op (it may have expired meanwhile).
  void Abort(uint64_t lease_id);
  // Frees every lease with expires <= now; returns how many ended.
  int ExpireLeases(absl::Time now);
  int num_leases() const { return static_cast<int>(leases_.size()); }
  int num_leased_blocks() const { return num_leased_blocks_; }

  // Export: where one block of one layer lives (CHECKs block and layer, and one group), and the
  // per-layer views of a table's blocks in position order (*out is cleared first).
  BlockLayerView LayerView(int32_t block, int layer) const;
  void ExportLayer(const BlockTable& table, int layer, std::vector<BlockLayerView>* out) const;
  // Bytes of one BlockLayerView's k (== its v).
  size_t LayerBlockBytes() const;
  // Bytes of one BlockLayerView's k_scale_zero (== its v_scale_zero); 0 unless int8.
  size_t LayerBlockScaleBytes() const;

  // Reference counts, for sharing blocks between sequences (the prefix cache, later).
  // AddRef takes one more reference on an in-use block; DropRef returns one (the block is
  // free again at zero, evictable at the cache's own one). Both CHECK the block is in use.
  void AddRef(int32_t block);
  void DropRef(int32_t block);
  int RefCount(int32_t block) const;

 private:
  void CheckTable(const BlockTable& table) const;
  // Evicts cached blocks no table holds, least recently freed first, until the free list has
  // n blocks (or nothing is left to evict).
  void MakeRoom(int n);
  // After a reference on `block` was returned: evictable if only the cache holds it now.
  void OnReleased(int32_t block);
  // The cached blocks of the longest cached prefix of tokens[0, max_tokens) into *blocks, and
  // the chain hash of the last. Reads the index only: the engine thread, or under index_mu_.
  // A hit: the chain's blocks and, with local groups, each other group's pages of them (-1
  // before its window).
  struct PrefixHit {
    std::vector<int32_t> blocks;               // group 0
    std::vector<std::vector<int32_t>> groups;  // [n_groups], [0] unused
    uint64_t hash = 0;                         // chain hash of the last of blocks
  };
  void FindPrefix(std::span<const int32_t> tokens, int max_tokens, PrefixHit* hit) const;
  // Returns local blocks of `table` wholly before the window of its next step; how many of
  // them that frees (CountReleasable) without doing it.
  void ReleaseOutOfWindow(BlockTable& table);
  int CountReleasable(const BlockTable& table) const;
  // Registers `table`'s pages of block `index` in the groups other than 0, anchored to the
  // cached group-0 block `anchor`, where that block has none yet.
  void AnchorPages(const BlockTable& table, int index, int32_t anchor);
  // Takes a cached block out of the cache (the index and its reference): an evictable one goes
  // back to the free list. A group-0 block takes its anchored pages out with it.
  void Uncache(int32_t block);
  // Returns every block of a lease to the pool.
  void FreeLease(const KvLease& lease);

  // Prefix cache, per block (sized num_total() once enabled).
  struct CachedBlock {
    bool cached = false;
    int group = 0;        // 0: a chain block; else anchored to the group-0 block `parent`
    uint64_t hash = 0;    // chain hash it is registered under (group 0)
    int32_t parent = -1;  // the block before it in its chain (-1: the first), or the anchor
    uint64_t parent_generation = 0;
    uint64_t generation = 0;      // when it was registered (unique, increasing)
    std::vector<int32_t> tokens;  // its block_size tokens
    bool evictable = false;       // on lru_
    std::list<int32_t>::iterator lru_pos;
  };

  // Constant after construction.
  std::unique_ptr<KvCache> cache_;
  KvGroups groups_;

  // Engine thread only. Ordered by id, so ExpireLeases frees in the order leases were made.
  std::map<uint64_t, KvLease> leases_;
  int num_leased_blocks_ = 0;
  uint64_t next_lease_id_ = 1;
  std::atomic<bool> prefix_caching_{false};
  // The index (cached_'s registrations, by_hash_) changes on the engine thread only, under
  // index_mu_, so that PeekPrefix can read it from another.
  mutable std::mutex index_mu_;
  std::vector<CachedBlock> cached_;
  std::unordered_map<uint64_t, int32_t> by_hash_;  // chain hash -> block
  // [n_groups][group-0 block] -> that block's cached page of the group, or -1 ([0] unused).
  std::vector<std::vector<int32_t>> anchored_;
  std::list<int32_t> lru_;  // evictable, front evicted first
  uint64_t generation_ = 0;
  int num_cached_ = 0;
  PrefixCacheStats stats_;
};

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_KV_MANAGER_H_
