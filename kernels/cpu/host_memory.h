// Host memory for the CPU backend's large buffers (the KV cache, packed weights, activations
// of long prompts): anonymous mappings aligned to 2 MiB and marked MADV_HUGEPAGE, so that the
// kernel backs them with transparent huge pages where it can.
//
// Why: a decode step streams every weight and, at long context, scattered KV blocks. On 4 KiB
// pages each page costs a TLB miss, and under a hypervisor (nested paging, as on every cloud
// VM) a miss walks two page tables: on an Intel Xeon KVM guest a plain streaming read went
// from 9.1 to 13.2 GB/s on huge pages, and the attention op at 4,096 positions 1.46x faster
// (bench/RESULTS.md). Most distributions ship THP in "madvise" mode, so the buffers must ask.
// With THP off ("never") the mappings are plain 4 KiB pages and everything still works.
//
// Small buffers (below kHugeMinBytes) come from aligned_alloc: a huge page for them would
// commit up to 2 MiB each. Under AddressSanitizer every buffer comes from aligned_alloc, so
// ASan's redzones guard the KV cache and the weights in the sanitizer runs.
//
// Thread safety: the functions are thread-safe; a HostRegion is not shared mutably.
#ifndef TANDEM_KERNELS_CPU_HOST_MEMORY_H_
#define TANDEM_KERNELS_CPU_HOST_MEMORY_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace tandem::kernels::cpu {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;
// Buffers at least this large are mapped on huge pages.
inline constexpr size_t kHugeMinBytes = kHugePageBytes;

// True when large buffers are mapped on huge pages in this build (false under ASan).
bool HostHugePagesInBuild();

// `bytes` (> 0) of host memory, 64-byte aligned, or null when out of memory. Buffers of at
// least kHugeMinBytes (in a build where HostHugePagesInBuild()) are 2 MiB aligned and marked
// MADV_HUGEPAGE. Free with FreeHostBuffer and the same `bytes`.
void* AllocateHostBuffer(size_t bytes);
void FreeHostBuffer(void* p, size_t bytes);

// One buffer from AllocateHostBuffer, freed on destruction.
class HostRegion {
 public:
  // Null when out of memory.
  static std::shared_ptr<HostRegion> Create(size_t bytes);
  ~HostRegion() { FreeHostBuffer(data_, bytes_); }
  HostRegion(const HostRegion&) = delete;
  HostRegion& operator=(const HostRegion&) = delete;

  uint8_t* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  HostRegion(uint8_t* data, size_t bytes) : data_(data), bytes_(bytes) {}
  uint8_t* const data_;
  const size_t bytes_;
};

// A piece of a HostRegion; keeps the region alive.
struct HostSlice {
  std::shared_ptr<HostRegion> region;
  uint8_t* data = nullptr;  // 64-byte aligned, inside region
};

// Packs many buffers (the weights of a model, a few hundred KiB to a few MiB each) into
// regions of kChunkBytes, so that they share huge pages instead of each rounding up to its
// own. A region is freed when the last slice of it is (the arena itself holds the one it is
// filling). Buffers of kChunkBytes / 4 or more get a region of their own.
// Thread safety: Allocate may be called from any thread.
class HostArena {
 public:
  static constexpr size_t kChunkBytes = size_t{32} << 20;

  // A slice of `bytes` (> 0) or one with null data when out of memory.
  HostSlice Allocate(size_t bytes);

 private:
  std::mutex mu_;
  std::shared_ptr<HostRegion> chunk_ ABSL_GUARDED_BY(mu_);
  size_t used_ ABSL_GUARDED_BY(mu_) = 0;  // bytes of chunk_ handed out, a multiple of 64
};

}  // namespace tandem::kernels::cpu

#endif  // TANDEM_KERNELS_CPU_HOST_MEMORY_H_
