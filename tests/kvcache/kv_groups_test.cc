// Local layer groups (kvcache::KvGroups): how layers share pages, a sliding-window group's
// table keeping only its window, the accounting that the scheduler's CanAppend / Append and
// capacity_tokens rest on, and the prefix cache with local groups.
#include <algorithm>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvcache/kv_copy.h"
#include "kvcache/kv_manager.h"
#include "kvcache/transfer/kv_snapshot.h"

namespace tandem::kvcache {
namespace {

std::unique_ptr<kernels::Backend> MakeBackend() {
  auto backend = kernels::cpu::CreateCpuBackend(kernels::cpu::CpuBackendConfig{});
  EXPECT_TRUE(backend.ok()) << backend.status();
  return std::move(*backend);
}

// Gemma 3's pattern: every `period`-th layer global, the others sliding.
KvCacheConfig Pattern(int n_layers, int period, int window) {
  KvCacheConfig c;
  c.n_layers = n_layers;
  c.n_kv_heads = 1;
  c.head_dim = 8;
  c.block_size = 4;
  c.num_blocks = 16;
  c.sliding_window = window;
  c.sliding_layers.resize(n_layers);
  for (int il = 0; il < n_layers; ++il) c.sliding_layers[il] = (il + 1) % period != 0;
  c.window_local = true;
  return c;
}

TEST(KvGroupsTest, GemmaPatternsSharePagesOfEqualSize) {
  // Gemma 3 270M: 18 layers, global 5, 11, 17: pages of 3 layers, 1 full and 5 local groups.
  KvCacheConfig c = Pattern(18, 6, 512);
  KvGroups g = c.Groups();
  EXPECT_EQ(g.layers_per_group, 3);
  EXPECT_EQ(g.window, (std::vector<int>{0, 512, 512, 512, 512, 512}));
  EXPECT_TRUE(g.windowed());
  for (int il : {5, 11, 17}) EXPECT_EQ(g.group_of[il], 0) << il;
  EXPECT_EQ(g.slot_of[5], 0);
  EXPECT_EQ(g.slot_of[17], 2);
  // The local layers in order, three to a page: 0 1 2 | 3 4 6 | 7 8 9 | 10 12 13 | 14 15 16.
  EXPECT_EQ(g.group_of[0], 1);
  EXPECT_EQ(g.group_of[3], 2);
  EXPECT_EQ(g.slot_of[4], 1);
  EXPECT_EQ(g.group_of[6], 2);
  EXPECT_EQ(g.slot_of[6], 2);
  EXPECT_EQ(g.group_of[16], 5);
  KvCacheConfig whole = c;
  whole.window_local = false;
  EXPECT_EQ(c.BytesPerBlock() * 6, whole.BytesPerBlock());

  // Gemma 3 1B: 26 layers, 4 global: pages of 2 layers.
  g = Pattern(26, 6, 512).Groups();
  EXPECT_EQ(g.layers_per_group, 2);
  EXPECT_EQ(g.n_groups(), 13);
  EXPECT_EQ(g.window[1], 0);  // the second full group
  EXPECT_EQ(g.window[2], 512);

  // One group of every layer when off, without sliding layers, or without a global one.
  for (KvCacheConfig one : {whole, Pattern(18, 1, 512), Pattern(4, 100, 512)}) {
    if (one.n_layers == 4) one.sliding_layers.assign(4, true);  // all sliding
    g = one.Groups();
    EXPECT_EQ(g.n_groups(), 1);
    EXPECT_FALSE(g.windowed());
    EXPECT_EQ(g.layers_per_group, one.n_layers);
    std::vector<int> iota(one.n_layers);
    std::iota(iota.begin(), iota.end(), 0);
    EXPECT_EQ(g.slot_of, iota);
  }
  KvCacheConfig bad = Pattern(4, 2, 8);
  bad.sliding_layers.resize(3);  // flags for 3 of 4 layers
  EXPECT_FALSE(bad.Validate().ok());
}

TEST(KvGroupsTest, FirstNeededFollowsTheWindowRule) {
  // A query at p reads keys j with p - j < window.
  EXPECT_EQ(KvGroups::FirstNeeded(0, 6), 0);
  EXPECT_EQ(KvGroups::FirstNeeded(5, 6), 0);
  EXPECT_EQ(KvGroups::FirstNeeded(6, 6), 1);
  EXPECT_EQ(KvGroups::FirstNeeded(100, 6), 95);
  EXPECT_EQ(KvGroups::FirstNeeded(100, 0), 0);  // a full group reads everything
}

class KvGroupsManagerTest : public ::testing::Test {
 protected:
  // 4 layers, 1 and 3 global, 0 and 2 sliding with `window`: pages of 2 layers, groups
  // {1, 3} (full) and {0, 2} (local).
  void Make(int num_blocks, int window, int max_step_tokens = 0) {
    KvCacheConfig c = Pattern(4, 2, window);
    c.num_blocks = num_blocks;
    c.max_step_tokens = max_step_tokens;
    auto m = KvManager::Create(c, *backend_);
    ASSERT_TRUE(m.ok()) << m.status();
    kv_ = std::move(*m);
    ASSERT_EQ(kv_->groups().n_groups(), 2);
    ASSERT_EQ(kv_->view().n_layers, 2);
  }

  // The local group's blocks of `t` that are held, and a check that exactly the blocks
  // from the window of position `next` on are.
  int CheckLocal(const BlockTable& t, int next, int window) {
    const std::vector<int32_t>& local = t.group(1);
    const int first = KvGroups::FirstNeeded(next, window) / 4;
    int held = 0;
    for (int i = 0; i < static_cast<int>(local.size()); ++i) {
      EXPECT_EQ(local[i] >= 0, i >= first) << "block " << i << " at position " << next;
      held += local[i] >= 0;
    }
    EXPECT_EQ(static_cast<int>(local.size()), static_cast<int>(t.blocks().size()));
    return held;
  }

  std::unique_ptr<kernels::Backend> backend_ = MakeBackend();
  std::unique_ptr<KvManager> kv_;
};

TEST_F(KvGroupsManagerTest, LocalGroupKeepsOnlyTheWindow) {
  constexpr int kWindow = 6;
  Make(/*num_blocks=*/40, kWindow);
  BlockTable t(4);
  // A 10-token prompt in chunks of 7 and 3, then decode to 60 tokens.
  int n = 0;
  for (int chunk : {7, 3}) {
    ASSERT_TRUE(kv_->CanAppend(t, n + chunk));
    ASSERT_TRUE(kv_->Append(t, n + chunk).ok());
    EXPECT_EQ(t.num_groups(), 2);
    CheckLocal(t, n, kWindow);
    n += chunk;
    t.SetNumTokens(n);
  }
  std::vector<int32_t> seen;
  while (n < 60) {
    ASSERT_TRUE(kv_->Append(t, n + 1).ok());
    const int local = CheckLocal(t, n, kWindow);
    // The window before the step plus the step: at most ceil((window - 1 + 1) / 4) + 1.
    EXPECT_LE(local, 3);
    EXPECT_EQ(kv_->num_free(), 40 - static_cast<int>(t.blocks().size()) - local);
    ++n;
    t.SetNumTokens(n);
  }
  // Full blocks for every position, and no block in two places.
  EXPECT_EQ(t.blocks().size(), 15u);
  std::vector<int32_t> all = t.blocks();
  for (int32_t b : t.group(1)) {
    if (b >= 0) all.push_back(b);
  }
  std::sort(all.begin(), all.end());
  EXPECT_EQ(std::adjacent_find(all.begin(), all.end()), all.end());
  kv_->Free(t);
  EXPECT_EQ(kv_->num_free(), 40);
  EXPECT_EQ(t.num_groups(), 1);
}

TEST_F(KvGroupsManagerTest, CanAppendCountsTheBlocksAppendReturns) {
  constexpr int kWindow = 4;
  Make(/*num_blocks=*/5, kWindow);
  BlockTable t(4);
  ASSERT_TRUE(kv_->Append(t, 8).ok());  // 2 full + 2 local blocks
  t.SetNumTokens(8);
  EXPECT_EQ(kv_->num_free(), 1);
  // Position 8 needs a third block in both groups (2), and its window starts at 5: the local
  // block 0 goes back first, so 1 free + 1 returned is enough.
  EXPECT_EQ(kv_->BlocksNeeded(t, 9), 2);
  EXPECT_TRUE(kv_->CanAppend(t, 9));
  ASSERT_TRUE(kv_->Append(t, 9).ok());
  EXPECT_EQ(kv_->num_free(), 0);
  EXPECT_EQ(t.group(1)[0], -1);
  t.SetNumTokens(9);
  // Positions 9..11 fit the blocks held; 12 needs two more and returns only one (block 1 of
  // the window at 9 is still read by position 9's successors up to 12 - 3 = 9).
  EXPECT_TRUE(kv_->CanAppend(t, 12));
  EXPECT_EQ(kv_->BlocksNeeded(t, 13), 2);
  EXPECT_FALSE(kv_->CanAppend(t, 13));
  const absl::Status s = kv_->Append(t, 13);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(t.blocks().size(), 3u);  // nothing taken
  kv_->Free(t);
  EXPECT_EQ(kv_->num_free(), 5);
}

TEST_F(KvGroupsManagerTest, CapacityCountsTheWindowPerSequence) {
  // Window 8, steps of at most 4 tokens: a local group holds at most
  // ceil((8 - 1 + 4) / 4) + 1 = 4 blocks, so k blocks of context need k + min(k, 4) <= 20.
  Make(/*num_blocks=*/20, /*window=*/8, /*max_step_tokens=*/4);
  EXPECT_EQ(kv_->capacity_tokens(), 16 * 4);
  // A whole prompt in one step: the local group may need every block (2k <= 20).
  Make(/*num_blocks=*/20, /*window=*/8, /*max_step_tokens=*/0);
  EXPECT_EQ(kv_->capacity_tokens(), 10 * 4);
  // That many tokens do fit, in steps of 4.
  Make(/*num_blocks=*/20, /*window=*/8, /*max_step_tokens=*/4);
  BlockTable t(4);
  for (int n = 0; n < 64; n += 4) {
    ASSERT_TRUE(kv_->Append(t, n + 4).ok()) << n;
    t.SetNumTokens(n + 4);
  }
  kv_->Free(t);
}

TEST_F(KvGroupsManagerTest, LeasesByTokensHoldEachGroupsShare) {
  constexpr int kWindow = 6;
  Make(/*num_blocks=*/12, kWindow);
  // By blocks: refused (a block count does not say which positions).
  EXPECT_EQ(kv_->Reserve(2, absl::InfiniteFuture()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(kv_->ReserveTokens(0, absl::InfiniteFuture()).status().code(),
            absl::StatusCode::kInvalidArgument);
  // 18 tokens: 5 full blocks; position 18 reads from 13 on, so local blocks 3 and 4.
  auto lease = kv_->ReserveTokens(18, absl::InfiniteFuture());
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->blocks.size(), 5u);
  ASSERT_EQ(lease->groups.size(), 1u);
  EXPECT_EQ(lease->groups[0][2], -1);
  EXPECT_GE(lease->groups[0][3], 0);
  EXPECT_EQ(kv_->num_leased_blocks(), 7);
  EXPECT_EQ(kv_->num_free(), 5);
  EXPECT_EQ(kv_->ReserveTokens(30, absl::InfiniteFuture()).status().code(),
            absl::StatusCode::kResourceExhausted);
  // Growing by the first decode token takes nothing (block 4 has room); by 3 tokens, a block
  // in each group.
  EXPECT_EQ(*kv_->BlocksToGrowImport(lease->id, 18, 19), 0);
  EXPECT_EQ(*kv_->BlocksToGrowImport(lease->id, 18, 21), 2);
  // Imported with its own token count only: the local blocks are that position's window.
  BlockTable t(4);
  EXPECT_EQ(kv_->Import(lease->id, 17, t).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(kv_->Import(lease->id, 18, t).ok());
  EXPECT_EQ(t.num_tokens(), 18);
  EXPECT_EQ(t.group(1), lease->groups[0]);
  EXPECT_EQ(kv_->num_leased_blocks(), 0);
  ASSERT_TRUE(kv_->Append(t, 19).ok());
  EXPECT_EQ(kv_->num_free(), 5);
  kv_->Free(t);
  EXPECT_EQ(kv_->num_free(), 12);
  // Aborted and expired leases give every group's blocks back.
  auto a = kv_->ReserveTokens(18, absl::InfiniteFuture());
  auto b = kv_->ReserveTokens(3, absl::UnixEpoch());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(kv_->num_free(), 12 - 7 - 2);
  kv_->Abort(a->id);
  EXPECT_EQ(kv_->ExpireLeases(absl::UnixEpoch()), 1);
  EXPECT_EQ(kv_->num_free(), 12);
  EXPECT_EQ(kv_->num_leased_blocks(), 0);
}

// Runs `tokens` as a sequence would (chunks of `chunk`, the cache registering each step's
// whole blocks) and returns its prefix hit.
int RunChunked(KvManager& kv, const std::vector<int32_t>& tokens, int chunk, BlockTable& t) {
  const int hit = kv.MatchPrefix(tokens, static_cast<int>(tokens.size()) - 1, t);
  for (int n = t.num_tokens(); n < static_cast<int>(tokens.size());) {
    const int next = std::min<int>(n + chunk, tokens.size());
    EXPECT_TRUE(kv.Append(t, next).ok());
    t.SetNumTokens(next);
    kv.CacheFullBlocks(tokens, t);
    n = next;
  }
  return hit;
}

TEST_F(KvGroupsManagerTest, PrefixHitsNeedTheWindowsPagesCached) {
  constexpr int kWindow = 6;
  Make(/*num_blocks=*/40, kWindow);
  kv_->EnablePrefixCaching();
  std::vector<int32_t> a(26);
  std::iota(a.begin(), a.end(), 100);  // 6 whole blocks and 2 tokens
  BlockTable ta(4);
  EXPECT_EQ(RunChunked(*kv_, a, 8, ta), 0);
  // Every whole block is cached in both groups, the local pages that left A's window too.
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 12);

  // B shares A's first 24 tokens: its next position (24) reads local blocks 4 and 5.
  std::vector<int32_t> b(a.begin(), a.begin() + 24);
  b.push_back(7);
  EXPECT_EQ(kv_->PeekPrefix(b, 24), 24);
  BlockTable tb(4);
  EXPECT_EQ(RunChunked(*kv_, b, 8, tb), 24);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(tb.blocks()[i], ta.blocks()[i]) << i;
  EXPECT_EQ(tb.group(1)[3], -1);
  EXPECT_EQ(tb.group(1)[4], ta.group(1)[4]);
  EXPECT_EQ(tb.group(1)[5], ta.group(1)[5]);
  EXPECT_EQ(kv_->RefCount(ta.group(1)[4]), 3);  // A, B and the cache
  EXPECT_NE(tb.group(1)[6], ta.group(1)[6]);

  // Freed, everything cached is evictable; the least recently released first: the local pages
  // that left A's window during its run (0, 1, then 2, 3), then the chain's tail.
  kv_->Free(tb);
  kv_->Free(ta);
  EXPECT_EQ(kv_->num_free(), 40);
  EXPECT_EQ(kv_->prefix_stats().evictable_blocks, 12);
  // C shares A's first 12 tokens: position 12 reads local blocks 1 and 2.
  std::vector<int32_t> c(a.begin(), a.begin() + 12);
  c.push_back(9);
  EXPECT_EQ(kv_->PeekPrefix(c, 12), 12);
  // A sequence that takes all 28 free blocks and 2 more evicts local pages 0 and 1: C's hit is
  // gone (every shorter prefix needs one of them too), B's still whole.
  BlockTable big(4);
  ASSERT_TRUE(kv_->Append(big, 60).ok());  // 15 blocks in each group
  EXPECT_EQ(kv_->prefix_stats().evicted_blocks, 2u);
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 10);
  EXPECT_EQ(kv_->PeekPrefix(c, 12), 0);
  EXPECT_EQ(kv_->PeekPrefix(b, 24), 24);
  kv_->Free(big);
  // Four more (local 2, 3 and 5, then the chain's block 5): no prefix of B keeps its window.
  ASSERT_TRUE(kv_->Append(big, 68).ok());  // 34 blocks: 30 free and 4 evicted
  EXPECT_EQ(kv_->prefix_stats().evicted_blocks, 6u);
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 6);
  EXPECT_EQ(kv_->PeekPrefix(b, 24), 0);
  kv_->Free(big);
  // A sequence that computes A again registers its pages afresh and is hit whole again.
  BlockTable again(4);
  EXPECT_EQ(RunChunked(*kv_, a, 8, again), 0);
  kv_->Free(again);
  EXPECT_EQ(kv_->PeekPrefix(b, 24), 24);
  EXPECT_EQ(kv_->num_free(), 40);
}

// Where position p of model layer `layer` lives in `t` of `kv`: (view layer, slot).
std::pair<int, int32_t> Locate(const KvManager& kv, const BlockTable& t, int layer, int p) {
  const KvGroups& g = kv.groups();
  const int32_t block = t.group(g.group_of[layer])[p / 4];
  EXPECT_GE(block, 0) << "layer " << layer << " position " << p;
  return {g.slot_of[layer], block * 4 + p % 4};
}

// A snapshot of a windowed cache holds a local layer's window only; written into a cache that
// keeps whole contexts it fills that part (the rest is never read), into a windowed one the
// window; a destination that would read earlier positions is refused.
TEST_F(KvGroupsManagerTest, SnapshotsCarryALocalLayersWindowOnly) {
  constexpr int kWindow = 6, kTokens = 14;
  Make(/*num_blocks=*/40, kWindow);
  BlockTable t(4);
  ASSERT_TRUE(kv_->Append(t, kTokens).ok());
  t.SetNumTokens(kTokens);
  std::vector<float> k(8), v(8);
  auto value = [](int layer, int p, int i) { return 0.25f * layer + 0.5f * p + 0.125f * i; };
  for (int layer = 0; layer < 4; ++layer) {
    for (int p = 0; p < kTokens; ++p) {
      for (int i = 0; i < 8; ++i) {
        k[i] = value(layer, p, i);
        v[i] = -value(layer, p, i);
      }
      const auto [slot_layer, slot] = Locate(*kv_, t, layer, p);
      WriteTokenKv(kv_->view(), slot_layer, slot, k.data(), v.data());
    }
  }
  auto snap = KvSnapshot::Take(*kv_, t, kTokens);
  ASSERT_TRUE(snap.ok()) << snap.status();
  // Layers 0 and 2 slide (window of position 14: 9..13), 1 and 3 are global.
  EXPECT_EQ((*snap)->first(0), 9);
  EXPECT_EQ((*snap)->first(1), 0);
  std::string payload;
  (*snap)->LayerPayload(2, kernels::KvDType::kF16, &payload);
  EXPECT_EQ(payload.size(), LayerPayloadBytes(kernels::KvDType::kF16, 1, 5, 8));

  auto check = [&](const KvManager& dst, const BlockTable& dt, bool whole) {
    std::vector<float> rk(8), rv(8);
    for (int layer = 0; layer < 4; ++layer) {
      const int first = layer % 2 == 0 ? 9 : 0;
      for (int p = whole ? 0 : first; p < kTokens; ++p) {
        const auto [slot_layer, slot] = Locate(dst, dt, layer, p);
        ReadTokenKv(dst.view(), slot_layer, slot, rk.data(), rv.data());
        // f16 holds these multiples of 1/8 exactly; positions before the window stay 7.
        const float want = p < first ? 7.0f : value(layer, p, 3);
        EXPECT_EQ(rk[3], want) << "layer " << layer << " position " << p;
        EXPECT_EQ(rv[3], p < first ? -7.0f : -want) << "layer " << layer << " position " << p;
      }
    }
  };
  // Into a cache that keeps every position of every layer.
  KvCacheConfig wc = Pattern(4, 2, kWindow);
  wc.window_local = false;
  auto whole = KvManager::Create(wc, *backend_);
  ASSERT_TRUE(whole.ok());
  BlockTable wt(4);
  ASSERT_TRUE((*whole)->Append(wt, kTokens).ok());
  wt.SetNumTokens(kTokens);
  std::fill(k.begin(), k.end(), 7.0f);
  std::fill(v.begin(), v.end(), -7.0f);
  for (int layer = 0; layer < 4; ++layer) {
    for (int p = 0; p < kTokens; ++p) {
      const auto [slot_layer, slot] = Locate(**whole, wt, layer, p);
      WriteTokenKv((*whole)->view(), slot_layer, slot, k.data(), v.data());
    }
  }
  ASSERT_TRUE((*snap)->WriteTo(**whole, wt).ok());
  check(**whole, wt, /*whole=*/true);
  // Into a windowed cache, through a lease as a decode instance takes it.
  auto windowed = KvManager::Create(Pattern(4, 2, kWindow), *backend_);
  ASSERT_TRUE(windowed.ok());
  auto lease = (*windowed)->ReserveTokens(kTokens, absl::InfiniteFuture());
  ASSERT_TRUE(lease.ok());
  BlockTable dt(4);
  ASSERT_TRUE((*windowed)->Import(lease->id, kTokens, dt).ok());
  ASSERT_TRUE((*snap)->WriteTo(**windowed, dt).ok());
  check(**windowed, dt, /*whole=*/false);
  // A destination whose local layers read 10 positions back needs more than the snapshot has.
  auto wider = KvManager::Create(Pattern(4, 2, 10), *backend_);
  ASSERT_TRUE(wider.ok());
  BlockTable xt(4);
  ASSERT_TRUE((*wider)->Append(xt, kTokens).ok());
  xt.SetNumTokens(kTokens);
  const absl::Status s = (*snap)->WriteTo(**wider, xt);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  kv_->Free(t);
  (*whole)->Free(wt);
  (*windowed)->Free(dt);
  (*wider)->Free(xt);
}

}  // namespace
}  // namespace tandem::kvcache
