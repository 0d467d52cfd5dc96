#include "kvcache/kv_cache.h"

#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace tandem::kvcache {

using kernels::KvDType;

absl::Status KvCacheConfig::Validate() const {
  if (n_layers <= 0 || n_kv_heads <= 0 || head_dim <= 0) {
    return absl::InvalidArgumentError("KV cache: layers, kv heads and head dim must be > 0");
  }
  if (block_size <= 0 || block_size > kMaxBlockSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: block size must be in 1..", kMaxBlockSize, ", got ", block_size));
  }
  if (num_blocks < 0) return absl::InvalidArgumentError("KV cache: num_blocks must be >= 0");
  if (sliding_window < 0 || max_step_tokens < 0) {
    return absl::InvalidArgumentError("KV cache: sliding window and step tokens must be >= 0");
  }
  if (!sliding_layers.empty() && static_cast<int>(sliding_layers.size()) != n_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache: ", sliding_layers.size(), " sliding-layer flags for ", n_layers, " layers"));
  }
  if (num_blocks == 0 && memory_bytes < BytesPerBlock()) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: memory of ", memory_bytes,
                                                   " bytes holds no block of ", BytesPerBlock(),
                                                   " bytes"));
  }
  return absl::OkStatus();
}

KvGroups KvCacheConfig::Groups() const {
  KvGroups g;
  std::vector<int> full, local;
  for (int il = 0; il < n_layers; ++il) {
    const bool sliding = sliding_window > 0 && !sliding_layers.empty() && sliding_layers[il];
    (sliding ? local : full).push_back(il);
  }
  g.group_of.assign(n_layers, 0);
  g.slot_of.resize(n_layers);
  g.layer_window.assign(n_layers, 0);
  for (int il : local) g.layer_window[il] = sliding_window;
  if (!window_local || local.empty() || full.empty()) {
    g.layers_per_group = n_layers;
    g.window = {0};
    std::iota(g.slot_of.begin(), g.slot_of.end(), 0);
    return g;
  }
  // Equal pages for both kinds: as many layers per page as divide both counts (Gemma 3 270M:
  // 3 full and 15 local layers, so pages of 3 layers, 1 full group and 5 local ones).
  g.layers_per_group = std::gcd(static_cast<int>(full.size()), static_cast<int>(local.size()));
  auto place = [&](const std::vector<int>& layers, int window) {
    for (size_t i = 0; i < layers.size(); ++i) {
      if (i % g.layers_per_group == 0) g.window.push_back(window);
      g.group_of[layers[i]] = g.n_groups() - 1;
      g.slot_of[layers[i]] = static_cast<int>(i % g.layers_per_group);
    }
  };
  place(full, 0);
  place(local, sliding_window);
  return g;
}

size_t KvCacheConfig::BytesPerBlock() const {
  const size_t layers = static_cast<size_t>(Groups().layers_per_group);
  const size_t elems = layers * n_kv_heads * block_size * head_dim;
  size_t bytes = 2 * elems * kernels::KvElemBytes(dtype);
  if (dtype == KvDType::kInt8) bytes += 2 * layers * n_kv_heads * block_size * 2 * sizeof(float);
  return bytes;
}

absl::StatusOr<KvDType> ParseKvDType(std::string_view name) {
  if (name == "f32" || name == "float32") return KvDType::kF32;
  if (name == "f16" || name == "float16" || name == "auto") return KvDType::kF16;
  if (name == "int8") return KvDType::kInt8;
  return absl::InvalidArgumentError(absl::StrCat("unknown KV cache dtype '", std::string(name),
                                                 "' (supported: auto, f16, f32, int8)"));
}

std::string_view KvDTypeName(KvDType dtype) {
  switch (dtype) {
    case KvDType::kF32:
      return "f32";
    case KvDType::kF16:
      return "f16";
    case KvDType::kInt8:
      return "int8";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const KvCacheConfig& config,
                                                         kernels::Backend& backend) {
  TANDEM_RETURN_IF_ERROR(config.Validate());
  const int num_blocks = config.num_blocks > 0
                             ? config.num_blocks
                             : static_cast<int>(config.memory_bytes / config.BytesPerBlock());
  std::unique_ptr<KvCache> cache(new KvCache(config, backend, num_blocks));
  kernels::KvCacheView& v = cache->view_;
  const int layers = config.Groups().layers_per_group;
  v.dtype = config.dtype;
  v.n_layers = layers;
  v.n_blocks = num_blocks;
  v.block_size = config.block_size;
  v.n_kv_heads = config.n_kv_heads;
  v.head_dim = config.head_dim;
  const size_t slots =
      static_cast<size_t>(layers) * num_blocks * config.n_kv_heads * config.block_size;
  const size_t data_bytes = slots * config.head_dim * kernels::KvElemBytes(config.dtype);
  TANDEM_ASSIGN_OR_RETURN(cache->buffers_[0], backend.Allocate(data_bytes));
  TANDEM_ASSIGN_OR_RETURN(cache->buffers_[1], backend.Allocate(data_bytes));
  v.k = cache->buffers_[0].ptr;
  v.v = cache->buffers_[1].ptr;
  if (config.dtype == KvDType::kInt8) {
    const size_t scale_bytes = slots * 2 * sizeof(float);
    TANDEM_ASSIGN_OR_RETURN(cache->buffers_[2], backend.Allocate(scale_bytes));
    TANDEM_ASSIGN_OR_RETURN(cache->buffers_[3], backend.Allocate(scale_bytes));
    v.k_scale_zero = static_cast<float*>(cache->buffers_[2].ptr);
    v.v_scale_zero = static_cast<float*>(cache->buffers_[3].ptr);
  }
  return cache;
}

KvCache::KvCache(const KvCacheConfig& config, kernels::Backend& backend, int num_blocks)
    : config_(config), backend_(backend), pool_(num_blocks) {}

KvCache::~KvCache() {
  for (auto& b : buffers_) {
    if (b.ptr != nullptr) backend_.Free(b);
  }
}

double KvCache::Usage() const {
  if (pool_.num_total() == 0) return 0;
  return 1.0 - static_cast<double>(pool_.num_free()) / pool_.num_total();
}

}  // namespace tandem::kvcache
