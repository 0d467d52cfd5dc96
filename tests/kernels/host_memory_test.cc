#include "kernels/cpu/host_memory.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace tandem::kernels::cpu {
namespace {

uintptr_t Addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }

// The VmFlags line of the mapping in /proc/self/smaps that holds `p`, or "" if none does.
std::string VmFlagsOf(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t start = 0, end = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> start >> dash >> end && dash == '-') {
      inside = start <= Addr(p) && Addr(p) < end;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line + " ";
    }
  }
  return "";
}

// Writes a pattern over [p, p + bytes) and checks it reads back.
void FillAndCheck(uint8_t* p, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(i * 31 + 7);
  for (size_t i = 0; i < bytes; i += 4093) ASSERT_EQ(p[i], static_cast<uint8_t>(i * 31 + 7)) << i;
  ASSERT_EQ(p[bytes - 1], static_cast<uint8_t>((bytes - 1) * 31 + 7));
}

TEST(HostMemoryTest, SmallBuffersAreAlignedAndUsable) {
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{63}, size_t{4096}, kHugeMinBytes - 1}) {
    auto* p = static_cast<uint8_t*>(AllocateHostBuffer(bytes));
    ASSERT_NE(p, nullptr) << bytes;
    EXPECT_EQ(Addr(p) % 64, 0u) << bytes;
    FillAndCheck(p, std::max<size_t>(bytes, 1));
    FreeHostBuffer(p, bytes);
  }
}

TEST(HostMemoryTest, LargeBuffersAreHugePageMappingsInThisBuild) {
  const size_t bytes = 3 * kHugePageBytes + 5;
  auto* p = static_cast<uint8_t*>(AllocateHostBuffer(bytes));
  ASSERT_NE(p, nullptr);
  FillAndCheck(p, bytes);
  const std::string flags = VmFlagsOf(p);
  ASSERT_NE(flags, "") << "no mapping in /proc/self/smaps holds the buffer";
  if (HostHugePagesInBuild()) {
    // Its own mapping, on a huge-page boundary, advised for huge pages ("hg"): whether THP
    // then backs it is the kernel's setting, not ours.
    EXPECT_EQ(Addr(p) % kHugePageBytes, 0u);
    EXPECT_NE(flags.find(" hg "), std::string::npos) << flags;
  } else {
    // ASan: from malloc, so its redzones guard the buffer.
    EXPECT_EQ(Addr(p) % 64, 0u);
    EXPECT_EQ(flags.find(" hg "), std::string::npos) << flags;
  }
  FreeHostBuffer(p, bytes);
}

TEST(HostMemoryTest, ArenaPacksSmallSlicesAndFreesARegionWithItsLastSlice) {
  std::weak_ptr<HostRegion> first_region;
  {
    HostArena arena;
    std::vector<HostSlice> slices;
    for (size_t bytes : {size_t{100}, size_t{64}, size_t{1} << 20, size_t{3}, size_t{5000}}) {
      slices.push_back(arena.Allocate(bytes));
      ASSERT_NE(slices.back().data, nullptr);
      EXPECT_EQ(Addr(slices.back().data) % 64, 0u);
      FillAndCheck(slices.back().data, bytes);
    }
    for (size_t i = 1; i < slices.size(); ++i) {
      if (HostHugePagesInBuild()) {
        EXPECT_EQ(slices[i].region, slices[0].region) << i;  // packed into one chunk
      } else {
        EXPECT_NE(slices[i].region, slices[0].region) << i;  // ASan: each its own buffer
      }
    }
    // Slices in one region do not overlap: each starts at or past the end of the previous.
    if (HostHugePagesInBuild()) {
      EXPECT_GE(slices[1].data, slices[0].data + 100);
      EXPECT_GE(slices[3].data, slices[2].data + (size_t{1} << 20));
    }
    // A buffer of a quarter chunk or more gets its own region.
    const HostSlice big = arena.Allocate(HostArena::kChunkBytes / 4);
    ASSERT_NE(big.data, nullptr);
    EXPECT_NE(big.region, slices[0].region);
    FillAndCheck(big.data, HostArena::kChunkBytes / 4);
    first_region = slices[0].region;
    slices.erase(slices.begin());
    slices.pop_back();
    if (HostHugePagesInBuild()) {
      EXPECT_FALSE(first_region.expired()) << "freed while slices (or the arena) still use it";
    } else {
      EXPECT_TRUE(first_region.expired()) << "ASan: a slice's own buffer goes with it";
    }
    // The arena gone, the remaining slices still keep their region.
  }
  EXPECT_TRUE(first_region.expired());
}

TEST(HostMemoryTest, ArenaStartsANewChunkWhenTheCurrentIsFull) {
  HostArena arena;
  const size_t quarter_less = HostArena::kChunkBytes / 4 - 64;
  std::vector<HostSlice> slices;
  for (int i = 0; i < 5; ++i) slices.push_back(arena.Allocate(quarter_less));
  for (int i = 1; i < 4; ++i) {
    // ASan: every slice is its own buffer.
    EXPECT_EQ(slices[i].region == slices[0].region, HostHugePagesInBuild()) << i;
  }
  EXPECT_NE(slices[4].region, slices[0].region);  // four fill a chunk, the fifth does not fit
  std::weak_ptr<HostRegion> full = slices[0].region;
  slices.clear();
  EXPECT_TRUE(full.expired()) << "the arena keeps only the chunk it is filling";
}

TEST(HostMemoryTest, ArenaSlicesFromManyThreadsDoNotOverlap) {
  HostArena arena;
  constexpr int kThreads = 4, kPerThread = 200;
  std::vector<std::vector<HostSlice>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        HostSlice s = arena.Allocate(1000 + 64 * t);
        if (s.data != nullptr) std::memset(s.data, t, 1000 + 64 * t);
        got[t].push_back(std::move(s));
      }
    });
  }
  for (auto& th : threads) th.join();
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
  for (int t = 0; t < kThreads; ++t) {
    for (const HostSlice& s : got[t]) {
      ASSERT_NE(s.data, nullptr);
      for (int i = 0; i < 1000 + 64 * t; i += 97) ASSERT_EQ(s.data[i], t);
      ranges.emplace_back(Addr(s.data), Addr(s.data) + 1000 + 64 * t);
    }
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) EXPECT_LE(ranges[i - 1].second, ranges[i].first);
}

}  // namespace
}  // namespace tandem::kernels::cpu
