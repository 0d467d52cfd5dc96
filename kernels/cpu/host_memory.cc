#include "kernels/cpu/host_memory.h"

#include <sys/mman.h>

#include <cstdlib>

namespace tandem::kernels::cpu {
namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kHugeInBuild = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kHugeInBuild = false;
#else
constexpr bool kHugeInBuild = true;
#endif
#else
constexpr bool kHugeInBuild = true;
#endif

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

bool Mapped(size_t bytes) { return kHugeInBuild && bytes >= kHugeMinBytes; }

}  // namespace

bool HostHugePagesInBuild() { return kHugeInBuild; }

void* AllocateHostBuffer(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (!Mapped(bytes)) return std::aligned_alloc(64, RoundUp(bytes, 64));
  // Map one huge page more than needed and unmap the misaligned head and the tail, so the
  // buffer starts on a 2 MiB boundary and every 2 MiB of it can be one huge page.
  const size_t size = RoundUp(bytes, kHugePageBytes);
  const size_t over = size + kHugePageBytes;
  void* raw = mmap(nullptr, over, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = RoundUp(start, kHugePageBytes);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = start + over;
  if (end > aligned + size) munmap(reinterpret_cast<void*>(aligned + size), end - aligned - size);
  void* p = reinterpret_cast<void*>(aligned);
  // Advice only: without THP (or on a kernel that refuses it) the pages stay 4 KiB.
  madvise(p, size, MADV_HUGEPAGE);
  return p;
}

void FreeHostBuffer(void* p, size_t bytes) {
  if (p == nullptr) return;
  if (bytes == 0) bytes = 1;
  if (!Mapped(bytes)) {
    std::free(p);
    return;
  }
  munmap(p, RoundUp(bytes, kHugePageBytes));
}

std::shared_ptr<HostRegion> HostRegion::Create(size_t bytes) {
  if (bytes == 0) bytes = 1;
  void* p = AllocateHostBuffer(bytes);
  if (p == nullptr) return nullptr;
  return std::shared_ptr<HostRegion>(new HostRegion(static_cast<uint8_t*>(p), bytes));
}

HostSlice HostArena::Allocate(size_t bytes) {
  bytes = RoundUp(bytes == 0 ? 1 : bytes, 64);
  if (!kHugeInBuild || bytes >= kChunkBytes / 4) {
    HostSlice s;
    s.region = HostRegion::Create(bytes);
    if (s.region != nullptr) s.data = s.region->data();
    return s;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (chunk_ == nullptr || used_ + bytes > chunk_->bytes()) {
    // The old chunk's tail is left unused; its slices keep it alive.
    chunk_ = HostRegion::Create(kChunkBytes);
    used_ = 0;
    if (chunk_ == nullptr) return HostSlice{};
  }
  HostSlice s{chunk_, chunk_->data() + used_};
  used_ += bytes;
  return s;
}

}  // namespace tandem::kernels::cpu
