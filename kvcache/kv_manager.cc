#include "kvcache/kv_manager.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace tandem::kvcache {

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
  // BlockPool::Allocate is all or nothing, so a refusal leaves table and pool unchanged.
  return table.Reserve(cache_->pool(), n_tokens);
}

void KvManager::Free(BlockTable& table) {
  CheckTable(table);
  table.Release(cache_->pool());
}

absl::StatusOr<KvLease> KvManager::Reserve(int n_blocks, absl::Time expires) {
  if (n_blocks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV lease: need at least one block, got ", n_blocks));
  }
  KvLease lease;
  lease.expires = expires;
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

void KvManager::AddRef(int32_t block) { cache_->pool().AddRef(block); }

void KvManager::DropRef(int32_t block) {
  const int32_t one[] = {block};
  cache_->pool().Free(one);
}

int KvManager::RefCount(int32_t block) const { return cache_->pool().RefCount(block); }

}  // namespace tandem::kvcache
