#include "kvcache/kv_manager.h"

#include <cstddef>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/quant.h"

namespace tandem::kvcache {
namespace {

using kernels::KvDType;

constexpr absl::Time kT0 = absl::UnixEpoch();

std::unique_ptr<kernels::Backend> MakeBackend() {
  auto backend = kernels::cpu::CreateCpuBackend(kernels::cpu::CpuBackendConfig{});
  EXPECT_TRUE(backend.ok()) << backend.status();
  return std::move(*backend);
}

KvCacheConfig SmallConfig(KvDType dtype, int num_blocks, int block_size) {
  KvCacheConfig c;
  c.n_layers = 3;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.block_size = block_size;
  c.dtype = dtype;
  c.num_blocks = num_blocks;
  return c;
}

class KvManagerTest : public ::testing::Test {
 protected:
  void Make(KvDType dtype = KvDType::kF16, int num_blocks = 8, int block_size = 4) {
    auto m = KvManager::Create(SmallConfig(dtype, num_blocks, block_size), *backend_);
    ASSERT_TRUE(m.ok()) << m.status();
    kv_ = std::move(*m);
  }

  std::unique_ptr<kernels::Backend> backend_ = MakeBackend();
  std::unique_ptr<KvManager> kv_;
};

TEST_F(KvManagerTest, AppendAndFreeKeepCountsAndAreAllOrNothing) {
  Make();
  EXPECT_EQ(kv_->num_total(), 8);
  EXPECT_EQ(kv_->capacity_tokens(), 32);
  EXPECT_EQ(kv_->Usage(), 0);
  BlockTable a(4);
  EXPECT_EQ(kv_->BlocksNeeded(a, 10), 3);
  ASSERT_TRUE(kv_->Append(a, 10).ok());
  EXPECT_EQ(a.blocks().size(), 3u);
  EXPECT_EQ(a.num_tokens(), 0);  // capacity only; SetNumTokens after the step
  EXPECT_EQ(kv_->num_free(), 5);
  EXPECT_EQ(kv_->BlocksNeeded(a, 12), 0);
  ASSERT_TRUE(kv_->Append(a, 12).ok());
  EXPECT_EQ(kv_->num_free(), 5);
  EXPECT_DOUBLE_EQ(kv_->Usage(), 3.0 / 8);

  BlockTable b(4);
  EXPECT_TRUE(kv_->CanAppend(b, 20));
  EXPECT_FALSE(kv_->CanAppend(b, 21));
  EXPECT_FALSE(kv_->CanAllocate(6));
  absl::Status s = kv_->Append(b, 21);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(b.blocks().empty());
  EXPECT_EQ(kv_->num_free(), 5);
  ASSERT_TRUE(kv_->Append(b, 20).ok());
  EXPECT_EQ(kv_->num_free(), 0);
  std::set<int32_t> all(a.blocks().begin(), a.blocks().end());
  all.insert(b.blocks().begin(), b.blocks().end());
  EXPECT_EQ(all.size(), 8u);

  kv_->Free(a);
  EXPECT_TRUE(a.blocks().empty());
  EXPECT_EQ(kv_->num_free(), 3);
  kv_->Free(b);
  EXPECT_EQ(kv_->num_free(), 8);
}

TEST_F(KvManagerTest, ReserveThenImportGivesTheLeasedBlocks) {
  Make();
  BlockTable other(4);
  ASSERT_TRUE(kv_->Append(other, 4).ok());  // so the lease does not start at block 0
  absl::StatusOr<KvLease> lease = kv_->Reserve(3, kT0 + absl::Seconds(5));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_GT(lease->id, 0u);
  EXPECT_EQ(lease->blocks.size(), 3u);
  EXPECT_EQ(kv_->num_free(), 4);
  EXPECT_EQ(kv_->num_leases(), 1);
  EXPECT_EQ(kv_->num_leased_blocks(), 3);

  BlockTable table(4);
  ASSERT_TRUE(kv_->Import(lease->id, 10, table).ok());
  EXPECT_EQ(table.blocks(), lease->blocks);
  EXPECT_EQ(table.num_tokens(), 10);
  EXPECT_EQ(table.SlotFor(9), lease->blocks[2] * 4 + 1);
  for (int32_t b : table.blocks()) EXPECT_EQ(kv_->RefCount(b), 1);
  EXPECT_EQ(kv_->num_leases(), 0);
  EXPECT_EQ(kv_->num_leased_blocks(), 0);
  EXPECT_EQ(kv_->num_free(), 4);

  BlockTable again(4);
  EXPECT_EQ(kv_->Import(lease->id, 1, again).code(), absl::StatusCode::kNotFound);
  kv_->Free(table);
  kv_->Free(other);
  EXPECT_EQ(kv_->num_free(), 8);
}

TEST_F(KvManagerTest, ImportPastLeaseCapacityIsRefusedAndLeaseSurvives) {
  Make();
  absl::StatusOr<KvLease> lease = kv_->Reserve(2, kT0 + absl::Seconds(5));
  ASSERT_TRUE(lease.ok());
  BlockTable table(4);
  EXPECT_EQ(kv_->Import(lease->id, 9, table).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kv_->Import(lease->id, -1, table).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(table.blocks().empty());
  EXPECT_EQ(kv_->num_leases(), 1);
  EXPECT_EQ(kv_->num_leased_blocks(), 2);
  ASSERT_TRUE(kv_->Import(lease->id, 8, table).ok());
  EXPECT_EQ(table.blocks(), lease->blocks);
  kv_->Free(table);
  EXPECT_EQ(kv_->num_free(), 8);
}

TEST_F(KvManagerTest, ReserveRefusesBadCountsAndShortPools) {
  Make();
  EXPECT_EQ(kv_->Reserve(0, kT0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kv_->Reserve(9, kT0).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(kv_->num_free(), 8);
  EXPECT_EQ(kv_->num_leases(), 0);
  absl::StatusOr<KvLease> a = kv_->Reserve(8, kT0);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(kv_->Reserve(1, kT0).status().code(), absl::StatusCode::kResourceExhausted);
  BlockTable t(4);
  EXPECT_FALSE(kv_->CanAppend(t, 1));
  kv_->Abort(a->id);
  EXPECT_EQ(kv_->num_free(), 8);
}

TEST_F(KvManagerTest, AbortAndExpiryReturnBlocksAndRenewExtends) {
  Make();
  absl::StatusOr<KvLease> a = kv_->Reserve(2, kT0 + absl::Seconds(1));
  absl::StatusOr<KvLease> b = kv_->Reserve(2, kT0 + absl::Seconds(2));
  absl::StatusOr<KvLease> c = kv_->Reserve(3, kT0 + absl::Seconds(3));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_NE(a->id, b->id);
  EXPECT_EQ(kv_->num_free(), 1);

  kv_->Abort(b->id);
  kv_->Abort(b->id);  // unknown now: no-op
  kv_->Abort(12345);  // never existed: no-op
  EXPECT_EQ(kv_->num_free(), 3);
  EXPECT_EQ(kv_->num_leases(), 2);

  ASSERT_TRUE(kv_->Renew(c->id, kT0 + absl::Seconds(10)).ok());
  EXPECT_EQ(kv_->ExpireLeases(kT0 + absl::Seconds(1)), 1);  // expires <= now
  EXPECT_EQ(kv_->num_free(), 5);
  EXPECT_EQ(kv_->Renew(a->id, kT0 + absl::Seconds(10)).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(kv_->ExpireLeases(kT0 + absl::Seconds(5)), 0);  // c was renewed past 3s
  EXPECT_EQ(kv_->num_leases(), 1);
  EXPECT_EQ(kv_->num_leased_blocks(), 3);
  EXPECT_EQ(kv_->ExpireLeases(kT0 + absl::Seconds(10)), 1);
  EXPECT_EQ(kv_->num_leases(), 0);
  EXPECT_EQ(kv_->num_leased_blocks(), 0);
  EXPECT_EQ(kv_->num_free(), kv_->num_total());
}

TEST_F(KvManagerTest, SharedBlockFreesOnLastReference) {
  Make();
  BlockTable t(4);
  ASSERT_TRUE(kv_->Append(t, 4).ok());
  const int32_t b = t.blocks()[0];
  kv_->AddRef(b);
  EXPECT_EQ(kv_->RefCount(b), 2);
  kv_->Free(t);
  EXPECT_EQ(kv_->RefCount(b), 1);
  EXPECT_EQ(kv_->num_free(), 7);
  kv_->DropRef(b);
  EXPECT_EQ(kv_->RefCount(b), 0);
  EXPECT_EQ(kv_->num_free(), 8);
}

// Runs `tokens` as one sequence would: takes the cached prefix, appends blocks for the rest,
// marks them computed and registers the whole blocks. Returns the tokens that were hits.
int RunSequence(KvManager& kv, const std::vector<int32_t>& tokens, BlockTable& t) {
  const int hit = kv.MatchPrefix(tokens, static_cast<int>(tokens.size()) - 1, t);
  EXPECT_TRUE(kv.Append(t, static_cast<int>(tokens.size())).ok());
  t.SetNumTokens(static_cast<int>(tokens.size()));
  kv.CacheFullBlocks(tokens, t);
  return hit;
}

TEST_F(KvManagerTest, PrefixCacheSharesWholeBlocksOfTheSamePrefixOnly) {
  Make(KvDType::kF16, /*num_blocks=*/16, /*block_size=*/4);
  BlockTable off(4);
  EXPECT_EQ(kv_->MatchPrefix(std::vector<int32_t>{1, 2, 3, 4, 5}, 4, off), 0);  // off: no-op
  kv_->EnablePrefixCaching();
  const std::vector<int32_t> a = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};  // 2 whole blocks + 2
  BlockTable ta(4);
  EXPECT_EQ(RunSequence(*kv_, a, ta), 0);
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 2);

  // The same first 8 tokens, then others: both whole blocks are shared, the tail is its own.
  const std::vector<int32_t> b = {1, 2, 3, 4, 5, 6, 7, 8, 42, 43, 44};
  BlockTable tb(4);
  EXPECT_EQ(kv_->PeekPrefix(b, 10), 8);  // what a match would share, taking nothing
  EXPECT_EQ(kv_->RefCount(ta.blocks()[0]), 2);
  EXPECT_EQ(kv_->PeekPrefix(b, 7), 4);
  EXPECT_EQ(RunSequence(*kv_, b, tb), 8);
  EXPECT_EQ(tb.blocks()[0], ta.blocks()[0]);
  EXPECT_EQ(tb.blocks()[1], ta.blocks()[1]);
  EXPECT_NE(tb.blocks()[2], ta.blocks()[2]);
  EXPECT_EQ(kv_->RefCount(ta.blocks()[0]), 3);  // two tables and the cache

  // The same second block after another first one: no hit (a chain, not a set of blocks).
  BlockTable tc(4);
  EXPECT_EQ(kv_->MatchPrefix(std::vector<int32_t>{9, 2, 3, 4, 5, 6, 7, 8, 1}, 8, tc), 0);
  EXPECT_TRUE(tc.blocks().empty());
  // At most max_tokens: a prompt of exactly 8 tokens computes its last one, so shares 1 block.
  EXPECT_EQ(kv_->MatchPrefix(std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8}, 7, tc), 4);
  EXPECT_EQ(tc.num_tokens(), 4);
  kv_->Free(tc);

  // Freed, the cached blocks stay cached and count as free; the uncached ones are free.
  kv_->Free(ta);
  kv_->Free(tb);
  EXPECT_EQ(kv_->num_free(), 16);
  EXPECT_EQ(kv_->Usage(), 0);
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 2);  // the tails (2 and 3 tokens) are not whole
  EXPECT_EQ(kv_->prefix_stats().evictable_blocks, 2);
  BlockTable td(4);
  EXPECT_EQ(RunSequence(*kv_, b, td), 8);  // its last token (and block) is computed again
  kv_->Free(td);
}

TEST_F(KvManagerTest, PrefixCacheEvictsOnlyWhenTheFreeListRunsDryTailFirst) {
  Make(KvDType::kF16, /*num_blocks=*/6, /*block_size=*/2);
  kv_->EnablePrefixCaching();
  const std::vector<int32_t> a = {1, 2, 3, 4, 5, 6, 7};  // 3 whole blocks + 1
  BlockTable ta(2);
  RunSequence(*kv_, a, ta);
  kv_->Free(ta);
  EXPECT_EQ(kv_->prefix_stats().evictable_blocks, 3);
  EXPECT_EQ(kv_->num_free(), 6);
  // 3 blocks come off the free list without touching the cache...
  BlockTable x(2);
  ASSERT_TRUE(kv_->Append(x, 6).ok());
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 3);
  // ...the next one evicts a's last whole block, not its first.
  BlockTable y(2);
  ASSERT_TRUE(kv_->Append(y, 2).ok());
  EXPECT_EQ(kv_->prefix_stats().evicted_blocks, 1u);
  BlockTable probe(2);
  EXPECT_EQ(kv_->MatchPrefix(a, 6, probe), 4);
  kv_->Free(probe);
  // Everything else taken: the whole cache goes, and a short pool is still short.
  BlockTable z(2);
  EXPECT_FALSE(kv_->CanAppend(z, 7));
  EXPECT_EQ(kv_->Append(z, 7).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 2);  // a refusal evicts nothing
  ASSERT_TRUE(kv_->Append(z, 4).ok());
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 0);
  EXPECT_EQ(kv_->num_free(), 0);
  EXPECT_EQ(kv_->MatchPrefix(a, 6, probe), 0);
  kv_->Free(x);
  kv_->Free(y);
  kv_->Free(z);
  EXPECT_EQ(kv_->num_free(), 6);
}

TEST_F(KvManagerTest, PrefixCacheKeepsOneCopyOfAChain) {
  Make(KvDType::kF16, /*num_blocks=*/12, /*block_size=*/2);
  kv_->EnablePrefixCaching();
  const std::vector<int32_t> a = {1, 2, 3, 4, 5};
  // Two sequences compute the same prefix at once (neither finds it cached).
  BlockTable t1(2), t2(2);
  ASSERT_TRUE(kv_->Append(t1, 5).ok());
  ASSERT_TRUE(kv_->Append(t2, 5).ok());
  t1.SetNumTokens(5);
  t2.SetNumTokens(5);
  kv_->CacheFullBlocks(a, t1);
  kv_->CacheFullBlocks(a, t2);  // already cached: t2's copies stay its own
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 2);
  EXPECT_EQ(kv_->RefCount(t2.blocks()[0]), 1);
  kv_->Free(t2);
  EXPECT_EQ(kv_->num_free(), 12 - 3);

  // The chain's tail is evicted before its head.
  kv_->Free(t1);
  BlockTable fill(2);
  ASSERT_TRUE(kv_->Append(fill, 2 * 10).ok());  // the free list's 10 blocks
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 2);
  BlockTable more(2);
  ASSERT_TRUE(kv_->Append(more, 2).ok());
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 1);
  BlockTable probe(2);
  EXPECT_EQ(kv_->MatchPrefix(a, 4, probe), 2);
  kv_->Free(probe);
  kv_->Free(fill);
  kv_->Free(more);
  EXPECT_EQ(kv_->num_free(), 12);
}

// A sequence whose prefix another registered first goes on past it: its later blocks join the
// cached chain after the other's copy.
TEST_F(KvManagerTest, PrefixCacheChainGoesOnPastAnotherCopy) {
  Make(KvDType::kF16, /*num_blocks=*/12, /*block_size=*/2);
  kv_->EnablePrefixCaching();
  const std::vector<int32_t> a = {1, 2, 3, 4, 5, 6, 7};
  BlockTable t1(2), t2(2);
  ASSERT_TRUE(kv_->Append(t1, 4).ok());
  ASSERT_TRUE(kv_->Append(t2, 4).ok());
  t1.SetNumTokens(4);
  t2.SetNumTokens(4);
  kv_->CacheFullBlocks(a, t1);
  kv_->CacheFullBlocks(a, t2);
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 2);
  ASSERT_TRUE(kv_->Append(t2, 7).ok());
  t2.SetNumTokens(7);
  kv_->CacheFullBlocks(a, t2);
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 3);
  BlockTable probe(2);
  EXPECT_EQ(kv_->MatchPrefix(std::vector<int32_t>{1, 2, 3, 4, 5, 6, 9}, 6, probe), 6);
  EXPECT_EQ(probe.blocks(), (std::vector<int32_t>{t1.blocks()[0], t1.blocks()[1], t2.blocks()[2]}));
  // A different block under the chain: no hit past the shared part.
  EXPECT_EQ(kv_->PeekPrefix(std::vector<int32_t>{1, 2, 3, 4, 9, 9, 9}, 6), 4);
  kv_->Free(probe);
  kv_->Free(t1);
  kv_->Free(t2);
  EXPECT_EQ(kv_->num_free(), 12);
}

TEST_F(KvManagerTest, LeasesEvictCachedBlocksToo) {
  Make(KvDType::kF16, /*num_blocks=*/4, /*block_size=*/2);
  kv_->EnablePrefixCaching();
  BlockTable t(2);
  RunSequence(*kv_, {1, 2, 3, 4, 5, 6, 7, 8}, t);
  kv_->Free(t);
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 4);
  auto lease = kv_->Reserve(3, kT0 + absl::Seconds(1));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(kv_->prefix_stats().cached_blocks, 1);
  kv_->Abort(lease->id);
  EXPECT_EQ(kv_->num_free(), 4);
}

// Every (layer, block) view is distinct, lies inside the cache arrays at the offset the
// layout [n_layers, n_blocks, ...] gives, and agrees with what the kernels' KvAppend wrote.
void CheckLayerViews(KvManager& kv, kernels::Backend& backend) {
  const kernels::KvCacheView& v = kv.view();
  const KvCacheConfig& c = kv.config();
  const size_t bytes = kv.LayerBlockBytes();
  EXPECT_EQ(bytes, static_cast<size_t>(c.n_kv_heads) * c.block_size * c.head_dim *
                       kernels::KvElemBytes(c.dtype));
  std::set<const void*> seen;
  const char* k0 = static_cast<const char*>(v.k);
  const char* v0 = static_cast<const char*>(v.v);
  const size_t total = bytes * c.n_layers * kv.num_total();
  for (int layer = 0; layer < c.n_layers; ++layer) {
    for (int32_t block = 0; block < kv.num_total(); ++block) {
      const BlockLayerView lv = kv.LayerView(block, layer);
      const size_t index = static_cast<size_t>(layer) * kv.num_total() + block;
      EXPECT_EQ(static_cast<const char*>(lv.k) - k0, static_cast<ptrdiff_t>(index * bytes));
      EXPECT_EQ(static_cast<const char*>(lv.v) - v0, static_cast<ptrdiff_t>(index * bytes));
      EXPECT_LE(index * bytes + bytes, total);
      EXPECT_TRUE(seen.insert(lv.k).second);
      EXPECT_TRUE(seen.insert(lv.v).second);
      if (c.dtype == KvDType::kInt8) {
        ASSERT_NE(lv.k_scale_zero, nullptr);
        EXPECT_EQ(lv.k_scale_zero - v.k_scale_zero,
                  static_cast<ptrdiff_t>(index * kv.LayerBlockScaleBytes() / sizeof(float)));
        EXPECT_EQ(lv.v_scale_zero - v.v_scale_zero, lv.k_scale_zero - v.k_scale_zero);
      } else {
        EXPECT_EQ(lv.k_scale_zero, nullptr);
        EXPECT_EQ(lv.v_scale_zero, nullptr);
        EXPECT_EQ(kv.LayerBlockScaleBytes(), 0u);
      }
    }
  }

  // Write one token through the kernels, read it through the view of its block.
  const int layer = 1, block = 5, offset = 3, head = 1;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(0.25f, 2.f);
  std::vector<float> k(c.n_kv_heads * c.head_dim), val(k.size());
  for (auto& x : k) x = dist(rng);
  for (auto& x : val) x = -dist(rng);
  const int32_t slot = block * c.block_size + offset;
  kernels::KvAppendParams p{k.data(), val.data(), &slot, 1, layer, v};
  backend.KvAppend(p, backend.DefaultStream());
  backend.Synchronize(backend.DefaultStream());
  const BlockLayerView lv = kv.LayerView(block, layer);
  const size_t row = static_cast<size_t>(head) * c.block_size + offset;
  for (int i = 0; i < c.head_dim; ++i) {
    const float want_k = k[head * c.head_dim + i];
    const float want_v = val[head * c.head_dim + i];
    if (c.dtype == KvDType::kF16) {
      EXPECT_EQ(static_cast<const uint16_t*>(lv.k)[row * c.head_dim + i],
                kernels::FloatToHalf(want_k));
      EXPECT_EQ(static_cast<const uint16_t*>(lv.v)[row * c.head_dim + i],
                kernels::FloatToHalf(want_v));
    } else {
      const float* sz = lv.k_scale_zero + row * 2;
      const float got = static_cast<const uint8_t*>(lv.k)[row * c.head_dim + i] * sz[0] + sz[1];
      EXPECT_NEAR(got, want_k, sz[0] / 2 + 1e-6f);  // half a quantization step
    }
  }

  // And the other way: bytes written through a view land where view() says they are.
  const BlockLayerView last = kv.LayerView(kv.num_total() - 1, c.n_layers - 1);
  std::memset(last.v, 0x5a, bytes);
  const size_t index = static_cast<size_t>(c.n_layers - 1) * kv.num_total() + kv.num_total() - 1;
  for (size_t i = 0; i < bytes; ++i) ASSERT_EQ(static_cast<uint8_t>(v0[index * bytes + i]), 0x5a);
}

TEST_F(KvManagerTest, LayerViewsMatchTheCacheLayoutF16) {
  Make(KvDType::kF16, 8, 4);
  CheckLayerViews(*kv_, *backend_);
}

TEST_F(KvManagerTest, LayerViewsMatchTheCacheLayoutInt8) {
  Make(KvDType::kInt8, 8, 4);
  CheckLayerViews(*kv_, *backend_);
}

TEST_F(KvManagerTest, ExportLayerListsViewsInPositionOrder) {
  Make();
  BlockTable junk(4), t(4);
  ASSERT_TRUE(kv_->Append(junk, 8).ok());
  ASSERT_TRUE(kv_->Append(t, 12).ok());
  kv_->Free(junk);
  ASSERT_TRUE(kv_->Append(t, 20).ok());  // reuses the freed blocks after the first three
  std::vector<BlockLayerView> out(7);
  kv_->ExportLayer(t, 2, &out);
  ASSERT_EQ(out.size(), t.blocks().size());
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_EQ(out[i].k, kv_->LayerView(t.blocks()[i], 2).k);
    EXPECT_EQ(out[i].v, kv_->LayerView(t.blocks()[i], 2).v);
  }
  kv_->Free(t);
}

}  // namespace
}  // namespace tandem::kvcache
