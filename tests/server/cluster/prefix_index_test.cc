// The router's record of the prompt prefixes it sent each prefill worker: block-chain hashes
// that match only whole leading blocks, a least-recently-used bound that drops a chain's tail
// before its root, and one record per worker.
#include "server/cluster/prefix_index.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"

namespace tandem::server::cluster {
namespace {

std::vector<int32_t> Tokens(int n, int32_t first) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

TEST(PrefixIndexTest, HashesCoverTheWholeBlocksAndTheLastTokenAlwaysRuns) {
  // A worker caches every whole block it computed: 32 tokens are 2 blocks of 16, 31 are 1.
  EXPECT_EQ(PrefixIndex::BlockHashes(Tokens(32, 5), 16).size(), 2u);
  EXPECT_EQ(PrefixIndex::BlockHashes(Tokens(31, 5), 16).size(), 1u);
  EXPECT_TRUE(PrefixIndex::BlockHashes(Tokens(15, 5), 16).empty());
  EXPECT_TRUE(PrefixIndex::BlockHashes(Tokens(40, 5), 0).empty());
  EXPECT_TRUE(PrefixIndex::BlockHashes({}, 16).empty());
  // But a prompt's last token always runs (its logits give the first token): of a 32-token
  // prompt whose 2 blocks are cached, 16 tokens come from the cache; of a 33-token one, 32.
  EXPECT_EQ(PrefixIndex::UsableTokens(2, 16, 32), 16);
  EXPECT_EQ(PrefixIndex::UsableTokens(2, 16, 33), 32);
  EXPECT_EQ(PrefixIndex::UsableTokens(1, 16, 100), 16);
  EXPECT_EQ(PrefixIndex::UsableTokens(0, 16, 100), 0);
  EXPECT_EQ(PrefixIndex::UsableTokens(3, 0, 100), 0);
}

TEST(PrefixIndexTest, BlockHashesAreChains) {
  const std::vector<int32_t> a = Tokens(65, 100);
  std::vector<int32_t> b = a;
  b[40] = 7;  // differs in block 2 of 4
  const std::vector<uint64_t> ha = PrefixIndex::BlockHashes(a, 16);
  const std::vector<uint64_t> hb = PrefixIndex::BlockHashes(b, 16);
  ASSERT_EQ(ha.size(), 4u);
  ASSERT_EQ(hb.size(), 4u);
  EXPECT_EQ(ha[0], hb[0]);
  EXPECT_EQ(ha[1], hb[1]);
  // From the first differing block on, every hash differs: a block's hash covers its prefix.
  EXPECT_NE(ha[2], hb[2]);
  EXPECT_NE(ha[3], hb[3]);
  // The same block after another prefix is another block.
  std::vector<int32_t> c = a;
  c[0] = 7;
  EXPECT_NE(PrefixIndex::BlockHashes(c, 16)[3], ha[3]);
  // Another block size never matches.
  const std::vector<uint64_t> h8 = PrefixIndex::BlockHashes(a, 8);
  for (uint64_t h : ha) EXPECT_EQ(std::count(h8.begin(), h8.end(), h), 0);
}

TEST(PrefixIndexTest, MatchesLeadingBlocksPerWorker) {
  PrefixIndex index;
  const std::vector<uint64_t> a = PrefixIndex::BlockHashes(Tokens(65, 100), 16);
  std::vector<int32_t> longer = Tokens(65, 100);
  for (int i = 0; i < 32; ++i) longer.push_back(900 + i);
  const std::vector<uint64_t> b = PrefixIndex::BlockHashes(longer, 16);  // a, then 2 more
  ASSERT_EQ(b.size(), 6u);
  index.Insert(1, a, 100);
  EXPECT_EQ(index.Match(1, a), 4);
  EXPECT_EQ(index.Match(1, b), 4);  // the prompt that continues it: its shared blocks
  EXPECT_EQ(index.Match(2, a), 0);  // another worker
  // A chain whose first block differs matches nothing, even where later hashes were recorded.
  std::vector<uint64_t> skewed = a;
  skewed[0] ^= 1;
  EXPECT_EQ(index.Match(1, skewed), 0);
  index.Insert(1, b, 100);
  EXPECT_EQ(index.Match(1, b), 6);
  EXPECT_EQ(index.size(1), 6);  // shared blocks are held once
  index.Forget(1);
  EXPECT_EQ(index.Match(1, a), 0);
  EXPECT_EQ(index.size(1), 0);
}

TEST(PrefixIndexTest, TheLeastRecentChainsGoFirstTailBeforeRoot) {
  PrefixIndex index;
  const std::vector<uint64_t> a = PrefixIndex::BlockHashes(Tokens(65, 100), 16);   // 4 blocks
  const std::vector<uint64_t> b = PrefixIndex::BlockHashes(Tokens(65, 5000), 16);  // 4 others
  index.Insert(7, a, 6);
  index.Insert(7, b, 6);  // 8 blocks into room for 6: a, the older, loses its last two
  EXPECT_EQ(index.size(7), 6);
  EXPECT_EQ(index.Match(7, b), 4);
  EXPECT_EQ(index.Match(7, a), 2);  // its root survives
  // Using a again makes it the most recent: b loses its tail now.
  index.Insert(7, a, 6);
  EXPECT_EQ(index.Match(7, a), 4);
  EXPECT_EQ(index.Match(7, b), 2);
  // Room for nothing keeps nothing.
  index.Insert(7, a, 0);
  EXPECT_EQ(index.size(7), 0);
}

}  // namespace
}  // namespace tandem::server::cluster
