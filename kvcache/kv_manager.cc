#include "kvcache/kv_manager.h"

#include <algorithm>
#include <limits>
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

// Blocks a lease holds, in every group.
int LeaseBlocks(const KvLease& lease) {
  int n = static_cast<int>(lease.blocks.size());
  for (const std::vector<int32_t>& g : lease.groups) {
    for (int32_t b : g) n += b >= 0;
  }
  return n;
}

}  // namespace

KvManager::KvManager(std::unique_ptr<KvCache> cache) : cache_(std::move(cache)) {
  TANDEM_CHECK(cache_ != nullptr);
  groups_ = cache_->config().Groups();
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
  const int bs = block_size();
  const int end = (n_tokens + bs - 1) / bs;
  int needed = table.BlocksNeeded(n_tokens);
  for (int g = 1; g < groups_.n_groups(); ++g) {
    const int first = KvGroups::FirstNeeded(table.num_tokens(), groups_.window[g]) / bs;
    const std::vector<int32_t>* held = g < table.num_groups() ? &table.group(g) : nullptr;
    for (int i = first; i < end; ++i) {
      if (held == nullptr || i >= static_cast<int>(held->size()) || (*held)[i] < 0) ++needed;
    }
  }
  return needed;
}

int KvManager::CountReleasable(const BlockTable& table) const {
  int n = 0;
  const int groups = std::min(groups_.n_groups(), table.num_groups());
  for (int g = 1; g < groups; ++g) {
    const int first = KvGroups::FirstNeeded(table.num_tokens(), groups_.window[g]) / block_size();
    const std::vector<int32_t>& held = table.group(g);
    for (int i = 0; i < std::min(first, static_cast<int>(held.size())); ++i) {
      if (held[i] < 0) continue;
      // Free once the table lets go, or evictable (which counts as free) if only cached then.
      const int refs = RefCount(held[i]);
      if (refs == 1 || (refs == 2 && prefix_caching_ && cached_[held[i]].cached)) ++n;
    }
  }
  return n;
}

void KvManager::ReleaseOutOfWindow(BlockTable& table) {
  const int groups = std::min(groups_.n_groups(), table.num_groups());
  for (int g = 1; g < groups; ++g) {
    const int first = KvGroups::FirstNeeded(table.num_tokens(), groups_.window[g]) / block_size();
    std::vector<int32_t>& held = table.mutable_group(g);
    for (int i = 0; i < std::min(first, static_cast<int>(held.size())); ++i) {
      if (held[i] < 0) continue;
      DropRef(held[i]);
      held[i] = -1;
    }
  }
}

bool KvManager::CanAppend(const BlockTable& table, int n_tokens) const {
  return BlocksNeeded(table, n_tokens) <= num_free() + CountReleasable(table);
}

absl::Status KvManager::Append(BlockTable& table, int n_tokens) {
  CheckTable(table);
  if (table.num_groups() < groups_.n_groups()) table.SetNumGroups(groups_.n_groups());
  ReleaseOutOfWindow(table);
  const int needed = BlocksNeeded(table, n_tokens);
  if (needed > num_free()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache: need ", needed, " blocks, ", num_free(), " free"));
  }
  MakeRoom(needed);
  // BlockPool::Allocate is all or nothing and MakeRoom made room for all groups at once, so a
  // refusal leaves table and pool unchanged.
  const int own = table.BlocksNeeded(n_tokens);
  TANDEM_RETURN_IF_ERROR(table.Reserve(cache_->pool(), n_tokens));
  if (needed == own) return absl::OkStatus();
  std::vector<int32_t> fresh;
  TANDEM_CHECK_OK(cache_->pool().Allocate(needed - own, &fresh));
  const int bs = block_size();
  const int end = (n_tokens + bs - 1) / bs;
  size_t next = 0;
  for (int g = 1; g < groups_.n_groups(); ++g) {
    const int first = KvGroups::FirstNeeded(table.num_tokens(), groups_.window[g]) / bs;
    std::vector<int32_t>& held = table.mutable_group(g);
    if (static_cast<int>(held.size()) < end) held.resize(end, -1);
    for (int i = first; i < end; ++i) {
      if (held[i] < 0) held[i] = fresh[next++];
    }
  }
  TANDEM_CHECK_EQ(next, fresh.size());
  return absl::OkStatus();
}

void KvManager::Free(BlockTable& table) {
  CheckTable(table);
  if (!prefix_caching_) {
    table.Release(cache_->pool());
    return;
  }
  // The chain's tail first in line for eviction (its head is what other prompts share), and
  // of each block its other groups' pages before its group-0 page, their anchor.
  std::vector<int32_t> order;
  for (int i = static_cast<int>(table.blocks().size()) - 1; i >= 0; --i) {
    for (int g = table.num_groups() - 1; g >= 0; --g) {
      const std::vector<int32_t>& held = table.group(g);
      if (i < static_cast<int>(held.size()) && held[i] >= 0) order.push_back(held[i]);
    }
  }
  table.Release(cache_->pool());
  for (int32_t b : order) OnReleased(b);
}

int KvManager::capacity_tokens() const {
  const int total = num_total();
  const int bs = block_size();
  if (groups_.n_groups() == 1) return total * bs;
  // Blocks a sequence of k blocks of context holds at most: all of them in a full group; in a
  // local group the window before a step's first position plus that step (a chunk of at most
  // max_step_tokens, ending anywhere in a block), and never more than k.
  auto held = [&](int64_t k) {
    int64_t n = 0;
    for (int w : groups_.window) {
      if (w == 0) {
        n += k;
        continue;
      }
      const int64_t step = config().max_step_tokens > 0 ? config().max_step_tokens : k * bs;
      n += std::min<int64_t>(k, (w - 1 + step + bs - 1) / bs + 1);
    }
    return n;
  };
  int64_t lo = 0, hi = total;  // held(lo) <= total; the answer is the largest such k
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (held(mid) <= total) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return static_cast<int>(std::min<int64_t>(lo * bs, std::numeric_limits<int>::max()));
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
  while (cache_->pool().num_free() < n && !lru_.empty()) Uncache(lru_.front());
}

void KvManager::Uncache(int32_t b) {
  CachedBlock& c = cached_[b];
  TANDEM_CHECK(c.cached);
  if (c.group == 0) {
    // Its pages in the other groups are of no use without it.
    for (int g = 1; g < groups_.n_groups(); ++g) {
      if (anchored_[g][b] >= 0) Uncache(anchored_[g][b]);
    }
  }
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    if (c.group == 0) {
      auto it = by_hash_.find(c.hash);
      if (it != by_hash_.end() && it->second == b) by_hash_.erase(it);
    } else {
      anchored_[c.group][c.parent] = -1;
    }
    c.cached = false;
    c.tokens.clear();
  }
  if (c.evictable) {
    lru_.erase(c.lru_pos);
    c.evictable = false;
  }
  --num_cached_;
  ++stats_.evicted_blocks;
  const int32_t one[] = {b};
  cache_->pool().Free(one);  // the cache's reference (the last, if it was evictable)
}

void KvManager::EnablePrefixCaching() {
  if (prefix_caching_) return;
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    cached_.assign(num_total(), CachedBlock{});
    anchored_.assign(groups_.n_groups(), std::vector<int32_t>());
    for (int g = 1; g < groups_.n_groups(); ++g) anchored_[g].assign(num_total(), -1);
  }
  prefix_caching_ = true;
}

void KvManager::FindPrefix(std::span<const int32_t> tokens, int max_tokens, PrefixHit* hit) const {
  std::vector<int32_t>* blocks = &hit->blocks;
  std::vector<uint64_t> hashes;
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
    hashes.push_back(hi);
    prev = it->second;
    h = hi;
  }
  hit->hash = h;
  if (groups_.n_groups() == 1) return;
  // The other groups: the longest k whose first uncomputed position, k * bs, finds every page
  // it reads cached beside the chain's (full groups: all k; local groups: the window's).
  auto present = [&](int g, int k) {
    for (int i = KvGroups::FirstNeeded(k * bs, groups_.window[g]) / bs; i < k; ++i) {
      if (anchored_[g][(*blocks)[i]] < 0) return false;
    }
    return true;
  };
  int k = static_cast<int>(blocks->size());
  for (; k > 0; --k) {
    bool all = true;
    for (int g = 1; all && g < groups_.n_groups(); ++g) all = present(g, k);
    if (all) break;
  }
  blocks->resize(k);
  hit->hash = k > 0 ? hashes[k - 1] : 0;
  hit->groups.assign(groups_.n_groups(), {});
  for (int g = 1; g < groups_.n_groups(); ++g) {
    hit->groups[g].assign(k, -1);
    for (int i = KvGroups::FirstNeeded(k * bs, groups_.window[g]) / bs; i < k; ++i) {
      hit->groups[g][i] = anchored_[g][(*blocks)[i]];
    }
  }
}

int KvManager::MatchPrefix(std::span<const int32_t> tokens, int max_tokens, BlockTable& table) {
  CheckTable(table);
  TANDEM_CHECK(table.blocks().empty());
  if (!prefix_caching_) return 0;
  PrefixHit hit;
  FindPrefix(tokens, max_tokens, &hit);  // the engine thread: no lock to read
  if (hit.blocks.empty()) return 0;
  for (int32_t b : hit.blocks) AddRef(b);  // the table's reference
  const int n = static_cast<int>(hit.blocks.size());
  table = BlockTable::Adopt(block_size(), std::move(hit.blocks), n * block_size());
  if (groups_.n_groups() > 1) {
    table.SetNumGroups(groups_.n_groups());
    for (int g = 1; g < groups_.n_groups(); ++g) {
      for (int32_t b : hit.groups[g]) {
        if (b >= 0) AddRef(b);
      }
      table.mutable_group(g) = std::move(hit.groups[g]);
    }
  }
  const int32_t tail = table.blocks().back();
  table.SetPrefix(n, hit.hash, false, tail, cached_[tail].generation);
  return n * block_size();
}

int KvManager::PeekPrefix(std::span<const int32_t> tokens, int max_tokens) const {
  if (!prefix_caching_) return 0;
  PrefixHit hit;
  std::lock_guard<std::mutex> lock(index_mu_);
  FindPrefix(tokens, max_tokens, &hit);
  return static_cast<int>(hit.blocks.size()) * block_size();
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
  int32_t tail = table.prefix_tail();
  uint64_t tail_generation = table.prefix_tail_generation();
  for (int i = table.prefix_blocks(); i < full; ++i) {
    const int32_t b = table.blocks()[i];
    const std::span<const int32_t> mine = tokens.subspan(static_cast<size_t>(i) * bs, bs);
    const uint64_t hi = ChainHash(h, mine);
    auto it = by_hash_.find(hi);
    if (it != by_hash_.end()) {
      // Another sequence registered this block first (it computed the same prefix at the same
      // time, or a hit was cut short by a local group): when it is exactly this chain, it
      // stands for this table's block, which lends it the pages it lacks in other groups.
      const CachedBlock& twin = cached_[it->second];
      const bool exact =
          twin.parent == tail && (tail < 0 || twin.parent_generation == tail_generation) &&
          std::equal(mine.begin(), mine.end(), twin.tokens.begin(), twin.tokens.end());
      if (!exact || cached_[b].cached) {
        // Another chain under the same hash (rare): this table's blocks stay its own.
        table.SetPrefix(i, h, /*closed=*/true, tail, tail_generation);
        return;
      }
      AnchorPages(table, i, it->second);
      tail = it->second;
      tail_generation = twin.generation;
      h = hi;
      continue;
    }
    CachedBlock& c = cached_[b];
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      c.cached = true;
      c.group = 0;
      c.hash = hi;
      c.parent = tail;
      c.parent_generation = tail_generation;
      c.generation = ++generation_;
      c.tokens.assign(mine.begin(), mine.end());
      by_hash_.emplace(hi, b);
    }
    c.evictable = false;
    cache_->pool().AddRef(b);  // the cache's own reference
    ++num_cached_;
    AnchorPages(table, i, b);
    tail = b;
    tail_generation = c.generation;
    h = hi;
  }
  table.SetPrefix(full, h, false, tail, tail_generation);
}

void KvManager::AnchorPages(const BlockTable& table, int index, int32_t anchor) {
  // A local page of a block just completed is still held: a step returns local pages only
  // before the next one.
  for (int g = 1; g < std::min(groups_.n_groups(), table.num_groups()); ++g) {
    const std::vector<int32_t>& held = table.group(g);
    if (index >= static_cast<int>(held.size()) || held[index] < 0) continue;
    const int32_t page = held[index];
    CachedBlock& pc = cached_[page];
    if (pc.cached || anchored_[g][anchor] >= 0) continue;
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      pc.cached = true;
      pc.group = g;
      pc.hash = 0;
      pc.parent = anchor;
      pc.parent_generation = cached_[anchor].generation;
      pc.generation = ++generation_;
      pc.tokens.clear();
      anchored_[g][anchor] = page;
    }
    pc.evictable = false;
    cache_->pool().AddRef(page);  // the cache's own reference
    ++num_cached_;
  }
}

KvManager::PrefixCacheStats KvManager::prefix_stats() const {
  PrefixCacheStats s = stats_;
  s.cached_blocks = num_cached_;
  s.evictable_blocks = static_cast<int>(lru_.size());
  return s;
}

absl::StatusOr<KvLease> KvManager::Reserve(int n_blocks, absl::Time expires) {
  if (groups_.n_groups() > 1) {
    return absl::FailedPreconditionError(
        "KV lease: this cache keeps sliding-window layers apart (local layer groups): reserve "
        "by tokens");
  }
  if (n_blocks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV lease: need at least one block, got ", n_blocks));
  }
  KvLease lease;
  lease.expires = expires;
  lease.n_tokens = n_blocks * block_size();
  MakeRoom(n_blocks);
  absl::Status s = cache_->pool().Allocate(n_blocks, &lease.blocks);
  if (!s.ok()) return absl::ResourceExhaustedError(absl::StrCat("KV lease: ", s.message()));
  lease.id = next_lease_id_++;
  num_leased_blocks_ += n_blocks;
  leases_.emplace(lease.id, lease);
  return lease;
}

absl::StatusOr<KvLease> KvManager::ReserveTokens(int n_tokens, absl::Time expires) {
  if (n_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV lease: need at least one token, got ", n_tokens));
  }
  const int bs = block_size();
  const int full = (n_tokens + bs - 1) / bs;
  int total = full;
  for (int g = 1; g < groups_.n_groups(); ++g) {
    total += full - KvGroups::FirstNeeded(n_tokens, groups_.window[g]) / bs;
  }
  if (total > num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV lease: ", n_tokens, " tokens need ", total,
                                                     " blocks, ", num_free(), " free"));
  }
  MakeRoom(total);
  std::vector<int32_t> fresh;
  TANDEM_CHECK_OK(cache_->pool().Allocate(total, &fresh));
  KvLease lease;
  lease.expires = expires;
  lease.n_tokens = n_tokens;
  lease.blocks.assign(fresh.begin(), fresh.begin() + full);
  size_t next = full;
  for (int g = 1; g < groups_.n_groups(); ++g) {
    std::vector<int32_t>& blocks = lease.groups.emplace_back(full, -1);
    for (int i = KvGroups::FirstNeeded(n_tokens, groups_.window[g]) / bs; i < full; ++i) {
      blocks[i] = fresh[next++];
    }
  }
  lease.id = next_lease_id_++;
  num_leased_blocks_ += total;
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

BlockTable KvManager::LeaseTable(const KvLease& lease, int n_tokens) const {
  BlockTable table = BlockTable::Adopt(block_size(), lease.blocks, n_tokens);
  if (!lease.groups.empty()) {
    table.SetNumGroups(static_cast<int>(lease.groups.size()) + 1);
    for (size_t g = 0; g < lease.groups.size(); ++g) table.mutable_group(g + 1) = lease.groups[g];
  }
  return table;
}

absl::Status KvManager::Import(uint64_t lease_id, int n_tokens, BlockTable& table) {
  CheckTable(table);
  TANDEM_CHECK(table.blocks().empty());
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) {
    return absl::NotFoundError(
        absl::StrCat("KV lease ", lease_id, " is unknown, imported, aborted or expired"));
  }
  const KvLease& lease = it->second;
  const int capacity = static_cast<int>(lease.blocks.size()) * block_size();
  if (n_tokens < 0 || n_tokens > capacity) {
    return absl::InvalidArgumentError(absl::StrCat("KV lease ", lease_id, ": cannot import ",
                                                   n_tokens, " tokens into ", lease.blocks.size(),
                                                   " blocks of ", block_size()));
  }
  if (!lease.groups.empty() && n_tokens != lease.n_tokens) {
    // Its local groups hold the window of position lease.n_tokens, not of another.
    return absl::InvalidArgumentError(absl::StrCat("KV lease ", lease_id, " holds ", lease.n_tokens,
                                                   " tokens' windows, not ", n_tokens, "'s"));
  }
  // The lease's reference on each block moves to the table.
  table = LeaseTable(lease, n_tokens);
  num_leased_blocks_ -= LeaseBlocks(lease);
  leases_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<int> KvManager::BlocksToGrowImport(uint64_t lease_id, int n_imported,
                                                  int n_total) const {
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) {
    return absl::NotFoundError(
        absl::StrCat("KV lease ", lease_id, " is unknown, imported, aborted or expired"));
  }
  const BlockTable table = LeaseTable(it->second, n_imported);
  return BlocksNeeded(table, n_total) - CountReleasable(table);
}

void KvManager::FreeLease(const KvLease& lease) {
  cache_->pool().Free(lease.blocks);
  for (const std::vector<int32_t>& g : lease.groups) {
    for (int32_t b : g) {
      if (b < 0) continue;
      const int32_t one[] = {b};
      cache_->pool().Free(one);
    }
  }
  num_leased_blocks_ -= LeaseBlocks(lease);
}

void KvManager::Abort(uint64_t lease_id) {
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) return;
  FreeLease(it->second);
  leases_.erase(it);
}

int KvManager::ExpireLeases(absl::Time now) {
  int n = 0;
  for (auto it = leases_.begin(); it != leases_.end();) {
    if (it->second.expires <= now) {
      FreeLease(it->second);
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
  TANDEM_CHECK_EQ(groups_.n_groups(), 1);
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
