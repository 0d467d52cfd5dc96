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
