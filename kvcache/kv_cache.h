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
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kvcache/block_pool.h"

namespace tandem::kvcache {

// How the model's layers share a page (block id) of the cache. Every layer whose KV covers the
// whole context is in a full group; with `window_local`, layers that attend to a sliding
// window only are in local groups, whose tables keep just the pages of the last `window`
// positions (the rest go back to the pool as a sequence moves on). A page holds one block of
// `layers_per_group` layers, so pages of every group come from one pool and the split between
// full and local KV follows the load. Group 0 is always full: it is the one a sequence's
// length and the prefix cache's chain are read from. Without local groups there is one group
// of all layers, and the layout is the plain [n_layers, n_blocks, ...].
struct KvGroups {
  int layers_per_group = 0;   // KvCacheView::n_layers
  std::vector<int> window;    // [n_groups]: 0 for a full group, else its layers' window
  std::vector<int> group_of;  // [n_layers]: the group of each layer
  std::vector<int> slot_of;   // [n_layers]: the layer's index within its group's pages
  // [n_layers]: each layer's attention window (0: the whole context), whether or not its
  // group keeps only that.
  std::vector<int> layer_window;

  int n_groups() const { return static_cast<int>(window.size()); }
  bool windowed() const { return n_groups() > 1 && window.back() > 0; }
  // The first position a chunk starting at `start` reads in a group of this window: keys before
  // it are outside every query's window (llama.cpp's rule, kernels::AttentionParams::window).
  static int FirstNeeded(int start, int window) {
    return window > 0 && start > window - 1 ? start - (window - 1) : 0;
  }
  // The first of positions [0, n_tokens) of `layer` that a table of this grouping keeps (its
  // group's window of position n_tokens), and the first that position n_tokens reads (its own
  // window, kept or not).
  int FirstKept(int layer, int n_tokens) const {
    return FirstNeeded(n_tokens, window[group_of[layer]]);
  }
  int FirstRead(int layer, int n_tokens) const {
    return FirstNeeded(n_tokens, layer_window[layer]);
  }
};

// The largest block a KV cache takes (tokens); flags that set the block size check against it.
inline constexpr int kMaxBlockSize = 256;

struct KvCacheConfig {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;  // tokens per page
  kernels::KvDType dtype = kernels::KvDType::kF16;
  // Size of the cache: num_blocks when > 0, else as many blocks as fit in memory_bytes.
  int num_blocks = 0;
  size_t memory_bytes = 0;
  // Sliding-window layers (Gemma 2/3): the model's facts. With window_local set, those layers
  // keep only their window's pages (KvGroups); otherwise every layer keeps the whole context.
  // Local groups need at least one full layer; without one the layout stays whole-context.
  int sliding_window = 0;
  std::vector<bool> sliding_layers;  // [n_layers], or empty
  bool window_local = false;
  // The most tokens one step computes for a sequence (a prefill chunk): bounds the local pages
  // a sequence holds, for capacity_tokens(). 0: a whole prompt in one step.
  int max_step_tokens = 0;

  absl::Status Validate() const;
  // The layers' grouping into pages.
  KvGroups Groups() const;
  // Bytes one block (page) takes: K and V of Groups().layers_per_group layers, scales included.
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
