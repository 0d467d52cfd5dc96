#include "kvcache/block_pool.h"

#include <algorithm>
#include <random>
#include <set>

#include "gtest/gtest.h"
#include "kvcache/block_table.h"

namespace tandem::kvcache {
namespace {

TEST(BlockPoolTest, AllocatesDistinctBlocksAndFreesThem) {
  BlockPool pool(8);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(pool.Allocate(5, &a).ok());
  EXPECT_EQ(pool.num_free(), 3);
  ASSERT_TRUE(pool.Allocate(3, &b).ok());
  std::set<int32_t> all(a.begin(), a.end());
  all.insert(b.begin(), b.end());
  EXPECT_EQ(all.size(), 8u);
  EXPECT_EQ(pool.num_free(), 0);
  pool.Free(a);
  EXPECT_EQ(pool.num_free(), 5);
  pool.Free(b);
  EXPECT_EQ(pool.num_free(), 8);
}

TEST(BlockPoolTest, AllocationIsAllOrNothing) {
  BlockPool pool(4);
  std::vector<int32_t> a;
  ASSERT_TRUE(pool.Allocate(3, &a).ok());
  std::vector<int32_t> b;
  absl::Status s = pool.Allocate(2, &b);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("KV cache full"), std::string::npos);
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(pool.num_free(), 1);
}

TEST(BlockPoolTest, SharedBlocksFreeOnLastReference) {
  BlockPool pool(2);
  std::vector<int32_t> a;
  ASSERT_TRUE(pool.Allocate(1, &a).ok());
  pool.AddRef(a[0]);
  EXPECT_EQ(pool.RefCount(a[0]), 2);
  pool.Free(a);
  EXPECT_EQ(pool.num_free(), 1);
  pool.Free(a);
  EXPECT_EQ(pool.num_free(), 2);
  EXPECT_EQ(pool.RefCount(a[0]), 0);
}

TEST(BlockPoolTest, RandomChurnKeepsCountsConsistent) {
  BlockPool pool(64);
  std::mt19937 rng(7);
  std::vector<std::vector<int32_t>> held;
  for (int step = 0; step < 2000; ++step) {
    if (held.empty() || rng() % 2 == 0) {
      std::vector<int32_t> blocks;
      const int n = 1 + rng() % 8;
      const bool ok = pool.Allocate(n, &blocks).ok();
      EXPECT_EQ(ok, n <= pool.num_free() + (ok ? n : 0));
      if (ok) held.push_back(blocks);
    } else {
      const size_t i = rng() % held.size();
      pool.Free(held[i]);
      held.erase(held.begin() + i);
    }
    int in_use = 0;
    for (auto& h : held) in_use += h.size();
    ASSERT_EQ(pool.num_free() + in_use, 64);
  }
}

TEST(BlockTableTest, ReserveGrowsByWholeBlocksAndMapsSlots) {
  BlockPool pool(10);
  BlockTable table(16);
  EXPECT_EQ(table.BlocksNeeded(1), 1);
  ASSERT_TRUE(table.Reserve(pool, 17).ok());
  EXPECT_EQ(table.blocks().size(), 2u);
  ASSERT_TRUE(table.Reserve(pool, 32).ok());
  EXPECT_EQ(table.blocks().size(), 2u);
  ASSERT_TRUE(table.Reserve(pool, 33).ok());
  EXPECT_EQ(table.blocks().size(), 3u);
  table.SetNumTokens(33);
  EXPECT_EQ(table.SlotFor(0), table.blocks()[0] * 16);
  EXPECT_EQ(table.SlotFor(17), table.blocks()[1] * 16 + 1);
  EXPECT_EQ(table.SlotFor(32), table.blocks()[2] * 16);
  table.Release(pool);
  EXPECT_EQ(pool.num_free(), 10);
  EXPECT_TRUE(table.blocks().empty());
  EXPECT_EQ(table.num_tokens(), 0);
}

TEST(BlockTableTest, ReserveFailsCleanlyWhenPoolIsShort) {
  BlockPool pool(2);
  BlockTable table(4);
  EXPECT_FALSE(table.Reserve(pool, 9).ok());
  EXPECT_TRUE(table.blocks().empty());
  EXPECT_EQ(pool.num_free(), 2);
}

}  // namespace
}  // namespace tandem::kvcache
