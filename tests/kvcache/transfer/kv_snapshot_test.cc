// KvSnapshot: a sequence's KV taken out of one cache and written into another, every layer and
// position, across block sizes and dtypes; refusals leave the destination untouched.
#include "kvcache/transfer/kv_snapshot.h"

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvcache/kv_copy.h"
#include "kvcache/kv_manager.h"

namespace tandem::kvcache {
namespace {

using kernels::KvDType;

constexpr int kLayers = 3;
constexpr int kHeads = 2;
constexpr int kHeadDim = 16;
constexpr int kTokens = 29;  // partial last blocks at 4 and 8

struct Cache {
  Cache(KvDType dtype, int block_size, int heads = kHeads) {
    auto b = kernels::cpu::CreateCpuBackend(kernels::cpu::CpuBackendConfig{});
    EXPECT_TRUE(b.ok());
    backend = std::move(*b);
    KvCacheConfig c;
    c.n_layers = kLayers;
    c.n_kv_heads = heads;
    c.head_dim = kHeadDim;
    c.block_size = block_size;
    c.dtype = dtype;
    c.num_blocks = 64;
    auto m = KvManager::Create(c, *backend);
    EXPECT_TRUE(m.ok()) << m.status();
    kv = std::move(*m);
  }
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<KvManager> kv;
};

// Random K/V (never zero, |x| in [0.25, 2]) for every layer and position of `table`.
void Fill(const KvManager& kv, const BlockTable& table, int seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(0.25f, 2.f);
  const int row = kHeads * kHeadDim;
  for (int layer = 0; layer < kLayers; ++layer) {
    std::vector<float> kvs(2 * kTokens * row);
    for (float& x : kvs) x = (rng() % 2 ? 1 : -1) * dist(rng);
    for (int t = 0; t < kTokens; ++t) {
      WriteTokenKv(kv.view(), layer, table.SlotFor(t), &kvs[(2 * t) * row],
                   &kvs[(2 * t + 1) * row]);
    }
  }
}

TEST(KvSnapshotTest, EveryLayerAndPositionArrivesAcrossBlockSizesAndDtypes) {
  struct Case {
    KvDType src, dst;
    int src_block, dst_block;
    // Absolute, for |x| <= 2: f16 keeps 11 significant bits (2 * 2^-11); int8 errs by at most
    // half a step of the row's range (<= 4 / 510), plus float rounding.
    float tol;
  };
  for (const Case& c :
       {Case{KvDType::kF16, KvDType::kF16, 4, 4, 0}, Case{KvDType::kF16, KvDType::kF16, 4, 8, 0},
        Case{KvDType::kF16, KvDType::kF16, 8, 4, 0},
        Case{KvDType::kF32, KvDType::kF16, 8, 4, 2.f / 2048},
        Case{KvDType::kF16, KvDType::kInt8, 4, 8, 4.f / 510 + 1e-5f}}) {
    Cache src(c.src, c.src_block), dst(c.dst, c.dst_block);
    BlockTable st(c.src_block), dt(c.dst_block);
    // Another table first, so the sequence's blocks are not simply 0, 1, 2...
    BlockTable other(c.dst_block);
    ASSERT_TRUE(dst.kv->Append(other, 3 * c.dst_block).ok());
    ASSERT_TRUE(src.kv->Append(st, kTokens).ok());
    st.SetNumTokens(kTokens);
    ASSERT_TRUE(dst.kv->Append(dt, kTokens + 1).ok());
    dt.SetNumTokens(kTokens);
    Fill(*src.kv, st, 7);
    auto snap = KvSnapshot::Take(*src.kv, st, kTokens);
    ASSERT_TRUE(snap.ok()) << snap.status();
    EXPECT_EQ((*snap)->n_tokens(), kTokens);
    EXPECT_GT((*snap)->bytes(), 0u);
    ASSERT_TRUE((*snap)->WriteTo(*dst.kv, dt).ok());
    const int row = kHeads * kHeadDim;
    std::vector<float> k(row), v(row), k0(row), v0(row);
    for (int layer = 0; layer < kLayers; ++layer) {
      for (int t = 0; t < kTokens; ++t) {
        ReadTokenKv(src.kv->view(), layer, st.SlotFor(t), k0.data(), v0.data());
        ReadTokenKv(dst.kv->view(), layer, dt.SlotFor(t), k.data(), v.data());
        for (int i = 0; i < row; ++i) {
          if (c.tol == 0) {
            ASSERT_EQ(k[i], k0[i]) << layer << " " << t << " " << i;
            ASSERT_EQ(v[i], v0[i]) << layer << " " << t << " " << i;
          } else {
            ASSERT_NEAR(k[i], k0[i], c.tol) << layer << " " << t << " " << i;
            ASSERT_NEAR(v[i], v0[i], c.tol) << layer << " " << t << " " << i;
          }
        }
      }
    }
  }
}

TEST(KvSnapshotTest, RefusesBadCountsAndOtherShapes) {
  Cache src(KvDType::kF16, 4), narrow(KvDType::kF16, 4, /*heads=*/1);
  BlockTable st(4);
  ASSERT_TRUE(src.kv->Append(st, 8).ok());
  st.SetNumTokens(8);
  EXPECT_FALSE(KvSnapshot::Take(*src.kv, st, 0).ok());
  EXPECT_FALSE(KvSnapshot::Take(*src.kv, st, 9).ok());  // past what the table holds
  auto snap = KvSnapshot::Take(*src.kv, st, 8);
  ASSERT_TRUE(snap.ok());
  BlockTable nt(4);
  ASSERT_TRUE(narrow.kv->Append(nt, 8).ok());
  nt.SetNumTokens(8);
  const absl::Status s = (*snap)->WriteTo(*narrow.kv, nt);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  BlockTable short_table(4);
  ASSERT_TRUE(src.kv->Append(short_table, 4).ok());
  short_table.SetNumTokens(4);
  EXPECT_TRUE(absl::IsInvalidArgument((*snap)->WriteTo(*src.kv, short_table)));
}

}  // namespace
}  // namespace tandem::kvcache
