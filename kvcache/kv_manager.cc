#include "kvcache/kv_manager.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace tandem::kvcache {
namespace {

// splitmix64's finalizer: a cheap, well-mixed 64-bit permutation.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The chain hash of a block: its tokens after the chain hash of the block before it (0 for
// the first). Only an index: a hit is verified token by token (see MatchPrefix).
uint64_t ChainHash(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = Mix(parent ^ 0x243f6a8885a308d3ull);
  for (int32_t t : tokens) h = Mix(h ^ static_cast<uint32_t>(t));
  return h;
}

}  // namespace

KvManager::KvManager(std::unique_ptr<KvCache> cache) : cache_(std::move(cache)) {
  TANDEM_CHECK(cache_ != nullptr);
}

absl::StatusOr<std::unique_ptr<KvManager>> KvManager::Create(const KvCacheConfig& config,
                                                             kernels::Backend& backend) {
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, KvCache::Create(config, backend));
  return std::make_unique<KvManager>(std::move(cache));
}

void KvManager::CheckTable(const BlockTable& table) const {
  // A table of another block size would map positions to the wrong slots of this cache.
  TANDEM_CHECK_EQ(table.block_size(), block_size());
}

int KvManager::BlocksNeeded(const BlockTable& table, int n_tokens) const {
  CheckTable(table);
  return table.BlocksNeeded(n_tokens);
}

bool KvManager::CanAppend(const BlockTable& table, int n_tokens) const {
  return CanAllocate(BlocksNeeded(table, n_tokens));
}

absl::Status KvManager::Append(BlockTable& table, int n_tokens) {
  CheckTable(table);
  const int needed = table.BlocksNeeded(n_tokens);
  if (needed > num_free()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache: need ", needed, " blocks, ", num_free(), " free"));
  }
  MakeRoom(needed);
  // BlockPool::Allocate is all or nothing, so a refusal leaves table and pool unchanged.
  return table.Reserve(cache_->pool(), n_tokens);
}

void KvManager::Free(BlockTable& table) {
  CheckTable(table);
  if (!prefix_caching_) {
    table.Release(cache_->pool());
    return;
  }
  const std::vector<int32_t> blocks = table.blocks();
  table.Release(cache_->pool());
  // The chain's tail first in line for eviction: its head is what other prompts share.
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) OnReleased(*it);
}

double KvManager::Usage() const {
  return num_total() > 0 ? 1.0 - static_cast<double>(num_free()) / num_total() : 0.0;
}

void KvManager::OnReleased(int32_t block) {
  if (!prefix_caching_) return;
  CachedBlock& c = cached_[block];
  if (c.cached && !c.evictable && cache_->pool().RefCount(block) == 1) {
    c.evictable = true;
    c.lru_pos = lru_.insert(lru_.end(), block);
  }
}

void KvManager::MakeRoom(int n) {
  while (cache_->pool().num_free() < n && !lru_.empty()) {
    const int32_t b = lru_.front();
    lru_.pop_front();
    CachedBlock& c = cached_[b];
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      auto it = by_hash_.find(c.hash);
      if (it != by_hash_.end() && it->second == b) by_hash_.erase(it);
      c.cached = false;
      c.tokens.clear();
    }
    c.evictable = false;
    --num_cached_;
    ++stats_.evicted_blocks;
    const int32_t one[] = {b};
    cache_->pool().Free(one);  // the cache's reference, its last
  }
}

void KvManager::EnablePrefixCaching() {
  if (prefix_caching_) return;
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    cached_.assign(num_total(), CachedBlock{});
  }
  prefix_caching_ = true;
}

void KvManager::FindPrefix(std::span<const int32_t> tokens, int max_tokens,
                           std::vector<int32_t>* blocks, uint64_t* hash) const {
  const int bs = block_size();
  const int n_blocks = std::max(0, std::min(max_tokens, static_cast<int>(tokens.size()))) / bs;
  uint64_t h = 0;
  int32_t prev = -1;
  for (int i = 0; i < n_blocks; ++i) {
    const std::span<const int32_t> mine = tokens.subspan(static_cast<size_t>(i) * bs, bs);
    const uint64_t hi = ChainHash(h, mine);
    auto it = by_hash_.find(hi);
    if (it == by_hash_.end()) break;
    const CachedBlock& c = cached_[it->second];
    // Exact: the same tokens, after the very block matched before (as it was when this one
    // was registered).
    if (c.parent != prev || (prev >= 0 && c.parent_generation != cached_[prev].generation) ||
        !std::equal(mine.begin(), mine.end(), c.tokens.begin(), c.tokens.end())) {
      break;
    }
    blocks->push_back(it->second);
    prev = it->second;
    h = hi;
  }
  *hash = h;
}

int KvManager::MatchPrefix(std::span<const int32_t> tokens, int max_tokens, BlockTable& table) {
  CheckTable(table);
  TANDEM_CHECK(table.blocks().empty());
  if (!prefix_caching_) return 0;
  std::vector<int32_t> hit;
  uint64_t h = 0;
  FindPrefix(tokens, max_tokens, &hit, &h);  // the engine thread: no lock to read
  if (hit.empty()) return 0;
  for (int32_t b : hit) AddRef(b);  // the table's reference
  const int n = static_cast<int>(hit.size());
  table = BlockTable::Adopt(block_size(), std::move(hit), n * block_size());
  table.SetPrefix(n, h, false);
  return n * block_size();
}

int KvManager::PeekPrefix(std::span<const int32_t> tokens, int max_tokens) const {
  if (!prefix_caching_) return 0;
  std::vector<int32_t> hit;
  uint64_t h = 0;
  std::lock_guard<std::mutex> lock(index_mu_);
  FindPrefix(tokens, max_tokens, &hit, &h);
  return static_cast<int>(hit.size()) * block_size();
}

void KvManager::RecordPrefixQuery(int queried, int hit) {
  stats_.queried_tokens += queried;
  stats_.hit_tokens += hit;
}

void KvManager::CacheFullBlocks(std::span<const int32_t> tokens, BlockTable& table) {
  if (!prefix_caching_ || table.prefix_closed()) return;
  CheckTable(table);
  const int bs = block_size();
  const int full = table.num_tokens() / bs;
  if (table.prefix_blocks() >= full) return;
  TANDEM_CHECK_LE(table.num_tokens(), static_cast<int>(tokens.size()));
  uint64_t h = table.prefix_hash();
  for (int i = table.prefix_blocks(); i < full; ++i) {
    const int32_t b = table.blocks()[i];
    const std::span<const int32_t> mine = tokens.subspan(static_cast<size_t>(i) * bs, bs);
    const uint64_t hi = ChainHash(h, mine);
    if (cached_[b].cached || by_hash_.count(hi) > 0) {
      // Another copy of this chain is cached already (or, rarely, another chain under the
      // same hash): this table's blocks from here on stay its own.
      table.SetPrefix(i, h, /*closed=*/true);
      return;
    }
    CachedBlock& c = cached_[b];
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      c.cached = true;
      c.hash = hi;
      c.parent = i > 0 ? table.blocks()[i - 1] : -1;
      c.parent_generation = i > 0 ? cached_[c.parent].generation : 0;
      c.generation = ++generation_;
      c.tokens.assign(mine.begin(), mine.end());
      by_hash_.emplace(hi, b);
    }
    c.evictable = false;
    cache_->pool().AddRef(b);  // the cache's own reference
    ++num_cached_;
    h = hi;
  }
  table.SetPrefix(full, h, false);
}

KvManager::PrefixCacheStats KvManager::prefix_stats() const {
  PrefixCacheStats s = stats_;
  s.cached_blocks = num_cached_;
  s.evictable_blocks = static_cast<int>(lru_.size());
  return s;
}

absl::StatusOr<KvLease> KvManager::Reserve(int n_blocks, absl::Time expires) {
  if (n_blocks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV lease: need at least one block, got ", n_blocks));
  }
  KvLease lease;
  lease.expires = expires;
  MakeRoom(n_blocks);
  absl::Status s = cache_->pool().Allocate(n_blocks, &lease.blocks);
  if (!s.ok()) return absl::ResourceExhaustedError(absl::StrCat("KV lease: ", s.message()));
  lease.id = next_lease_id_++;
  num_leased_blocks_ += n_blocks;
  leases_.emplace(lease.id, lease);
  return lease;
}

absl::Status KvManager::Renew(uint64_t lease_id, absl::Time expires) {
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) {
    return absl::NotFoundError(
        absl::StrCat("KV lease ", lease_id, " is unknown, imported, aborted or expired"));
  }
  it->second.expires = expires;
  return absl::OkStatus();
}

absl::Status KvManager::Import(uint64_t lease_id, int n_tokens, BlockTable& table) {
  CheckTable(table);
  TANDEM_CHECK(table.blocks().empty());
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) {
    return absl::NotFoundError(
        absl::StrCat("KV lease ", lease_id, " is unknown, imported, aborted or expired"));
  }
  const std::vector<int32_t>& blocks = it->second.blocks;
  const int capacity = static_cast<int>(blocks.size()) * block_size();
  if (n_tokens < 0 || n_tokens > capacity) {
    return absl::InvalidArgumentError(absl::StrCat("KV lease ", lease_id, ": cannot import ",
                                                   n_tokens, " tokens into ", blocks.size(),
                                                   " blocks of ", block_size()));
  }
  // The lease's reference on each block moves to the table.
  table = BlockTable::Adopt(block_size(), blocks, n_tokens);
  num_leased_blocks_ -= static_cast<int>(blocks.size());
  leases_.erase(it);
  return absl::OkStatus();
}

void KvManager::Abort(uint64_t lease_id) {
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) return;
  cache_->pool().Free(it->second.blocks);
  num_leased_blocks_ -= static_cast<int>(it->second.blocks.size());
  leases_.erase(it);
}

int KvManager::ExpireLeases(absl::Time now) {
  int n = 0;
  for (auto it = leases_.begin(); it != leases_.end();) {
    if (it->second.expires <= now) {
      cache_->pool().Free(it->second.blocks);
      num_leased_blocks_ -= static_cast<int>(it->second.blocks.size());
      it = leases_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

size_t KvManager::LayerBlockBytes() const {
  const KvCacheConfig& c = config();
  return static_cast<size_t>(c.n_kv_heads) * c.block_size * c.head_dim *
         kernels::KvElemBytes(c.dtype);
}

size_t KvManager::LayerBlockScaleBytes() const {
  const KvCacheConfig& c = config();
  if (c.dtype != kernels::KvDType::kInt8) return 0;
  return static_cast<size_t>(c.n_kv_heads) * c.block_size * 2 * sizeof(float);
}

BlockLayerView KvManager::LayerView(int32_t block, int layer) const {
  const kernels::KvCacheView& v = view();
  TANDEM_CHECK(block >= 0 && block < v.n_blocks);
  TANDEM_CHECK(layer >= 0 && layer < v.n_layers);
  // Layout [n_layers, n_blocks, n_kv_heads, block_size, ...]: one (layer, block) is one
  // contiguous run, the (layer * n_blocks + block)-th of its size.
  const size_t index = static_cast<size_t>(layer) * v.n_blocks + block;
  BlockLayerView out;
  out.k = static_cast<char*>(v.k) + index * LayerBlockBytes();
  out.v = static_cast<char*>(v.v) + index * LayerBlockBytes();
  if (v.dtype == kernels::KvDType::kInt8) {
    const size_t floats = LayerBlockScaleBytes() / sizeof(float);
    out.k_scale_zero = v.k_scale_zero + index * floats;
    out.v_scale_zero = v.v_scale_zero + index * floats;
  }
  return out;
}

void KvManager::ExportLayer(const BlockTable& table, int layer,
                            std::vector<BlockLayerView>* out) const {
  CheckTable(table);
  out->clear();
  out->reserve(table.blocks().size());
  for (int32_t b : table.blocks()) out->push_back(LayerView(b, layer));
}

void KvManager::AddRef(int32_t block) {
  cache_->pool().AddRef(block);
  if (prefix_caching_ && cached_[block].evictable) {  // held by a table again
    lru_.erase(cached_[block].lru_pos);
    cached_[block].evictable = false;
  }
}

void KvManager::DropRef(int32_t block) {
  const int32_t one[] = {block};
  cache_->pool().Free(one);
  OnReleased(block);
}

int KvManager::RefCount(int32_t block) const { return cache_->pool().RefCount(block); }

}  // namespace tandem::kvcache
