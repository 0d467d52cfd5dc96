// KvCache: one instance's paged KV cache: the device memory (through kernels::Backend) and
// the BlockPool that hands out its pages. The model reads and writes the memory only through
// the KvCacheView this returns; schedulers reach it only through pool() and BlockTable.
//
// Thread safety: engine thread only. Memory is allocated once at Create and freed on
// destruction.
#ifndef TANDEM_KVCACHE_KV_CACHE_H_
#define TANDEM_KVCACHE_KV_CACHE_H_

#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kvcache/block_pool.h"

namespace tandem::kvcache {

struct KvCacheConfig {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;  // tokens per page
  kernels::KvDType dtype = kernels::KvDType::kF16;
  // Size of the cache: num_blocks when > 0, else as many blocks as fit in memory_bytes.
  int num_blocks = 0;
  size_t memory_bytes = 0;

  absl::Status Validate() const;
  // Bytes one block takes over all layers, K and V, scales included.
  size_t BytesPerBlock() const;
};

absl::StatusOr<kernels::KvDType> ParseKvDType(std::string_view name);  // "f32" "f16" "int8"
std::string_view KvDTypeName(kernels::KvDType dtype);

class KvCache {
 public:
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const KvCacheConfig& config,
                                                         kernels::Backend& backend);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const KvCacheConfig& config() const { return config_; }
  const kernels::KvCacheView& view() const { return view_; }
  BlockPool& pool() { return pool_; }
  const BlockPool& pool() const { return pool_; }
  // Share of blocks in use, 0..1.
  double Usage() const;

 private:
  KvCache(const KvCacheConfig& config, kernels::Backend& backend, int num_blocks);

  // Constant after construction.
  const KvCacheConfig config_;
  kernels::Backend& backend_;
  kernels::KvCacheView view_;
  kernels::DeviceBuffer buffers_[4];  // k, v, k scales, v scales

  BlockPool pool_;
};

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_KV_CACHE_H_
