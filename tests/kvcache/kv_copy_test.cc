#include "kvcache/kv_copy.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/quant.h"
#include "kernels/ref/ops_ref.h"
#include "kvcache/kv_cache.h"
#include "kvcache/kv_manager.h"

namespace tandem::kvcache {
namespace {

using kernels::KvCacheView;
using kernels::KvDType;

constexpr int kLayers = 2;
constexpr int kHeads = 2;
constexpr int kHeadDim = 32;
constexpr int kTokens = 37;             // not a multiple of any block size: partial last blocks
constexpr int kLayer = 1;               // the copied layer; layer 0 must stay untouched
constexpr uint8_t kSentinel = 0xa5;     // fills the destination before the copy
constexpr uint8_t kSrcSentinel = 0x3c;  // fills the source, so stray copies differ from kSentinel

std::unique_ptr<kernels::Backend> MakeBackend() {
  auto backend = kernels::cpu::CreateCpuBackend(kernels::cpu::CpuBackendConfig{});
  EXPECT_TRUE(backend.ok()) << backend.status();
  return std::move(*backend);
}

std::unique_ptr<KvManager> MakeManager(kernels::Backend& backend, KvDType dtype, int block_size,
                                       int heads = kHeads) {
  KvCacheConfig c;
  c.n_layers = kLayers;
  c.n_kv_heads = heads;
  c.head_dim = kHeadDim;
  c.block_size = block_size;
  c.dtype = dtype;
  c.num_blocks = 2 * kTokens / block_size + 4;
  auto m = KvManager::Create(c, backend);
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(*m);
}

// Fills every byte of the cache so a write outside the copied range shows.
void FillSentinel(const KvManager& kv, uint8_t byte) {
  const size_t bytes = kv.LayerBlockBytes() * kv.num_total() * kLayers;
  std::memset(kv.view().k, byte, bytes);
  std::memset(kv.view().v, byte, bytes);
  if (kv.view().dtype == KvDType::kInt8) {
    const size_t sz = kv.LayerBlockScaleBytes() * kv.num_total() * kLayers;
    std::memset(kv.view().k_scale_zero, byte, sz);
    std::memset(kv.view().v_scale_zero, byte, sz);
  }
}

// A table whose blocks are out of order and not those of the other side: reserve two
// blocks, then `table`, free the two and grow `table` into them.
BlockTable ScatteredTable(KvManager& kv, int n_tokens) {
  BlockTable junk(kv.block_size()), table(kv.block_size());
  EXPECT_TRUE(kv.Append(junk, 2 * kv.block_size()).ok());
  EXPECT_TRUE(kv.Append(table, kv.block_size()).ok());
  kv.Free(junk);
  EXPECT_TRUE(kv.Append(table, n_tokens).ok());
  table.SetNumTokens(n_tokens);
  return table;
}

// Random K/V for positions [0, n), never zero and of both signs, [n, heads, head_dim].
std::vector<float> RandomKv(std::mt19937& rng, int n, int heads) {
  std::uniform_real_distribution<float> mag(0.05f, 3.f);
  std::vector<float> x(static_cast<size_t>(n) * heads * kHeadDim);
  for (auto& e : x) e = (rng() & 1) ? mag(rng) : -mag(rng);
  return x;
}

// Writes the K/V of positions [0, n) of every layer through the backend's KvAppend.
void AppendAll(kernels::Backend& backend, const KvManager& kv, const BlockTable& table,
               const std::vector<float>& k, const std::vector<float>& v, int n) {
  std::vector<int32_t> slots(n);
  for (int p = 0; p < n; ++p) slots[p] = table.SlotFor(p);
  for (int layer = 0; layer < kLayers; ++layer) {
    kernels::KvAppendParams p{k.data(), v.data(), slots.data(), n, layer, kv.view()};
    backend.KvAppend(p, backend.DefaultStream());
  }
  backend.Synchronize(backend.DefaultStream());
}

const uint8_t* RawRow(const KvCacheView& c, bool is_v, int layer, int32_t slot, int head) {
  const int64_t row =
      ((static_cast<int64_t>(layer) * c.n_blocks + slot / c.block_size) * c.n_kv_heads + head) *
          c.block_size +
      slot % c.block_size;
  return static_cast<const uint8_t*>(is_v ? c.v : c.k) +
         row * c.head_dim * kernels::KvElemBytes(c.dtype);
}

std::vector<float> ReadRow(const KvCacheView& c, bool is_v, int layer, int32_t slot, int head) {
  std::vector<float> out(c.head_dim);
  kernels::ref::KvReadRowRef(c, is_v, layer, slot / c.block_size, head, slot % c.block_size,
                             out.data());
  return out;
}

// (source block size, destination block size, source dtype, destination dtype)
using CopyCase = std::tuple<int, int, KvDType, KvDType>;

class CopyLayerTokensTest : public ::testing::TestWithParam<CopyCase> {};

TEST_P(CopyLayerTokensTest, EveryPositionArrivesAndNothingElseIsWritten) {
  const auto [src_bs, dst_bs, src_dtype, dst_dtype] = GetParam();
  std::unique_ptr<kernels::Backend> backend = MakeBackend();
  std::unique_ptr<KvManager> src = MakeManager(*backend, src_dtype, src_bs);
  std::unique_ptr<KvManager> dst = MakeManager(*backend, dst_dtype, dst_bs);
  BlockTable src_table = ScatteredTable(*src, kTokens);
  BlockTable dst_table = ScatteredTable(*dst, kTokens);
  std::mt19937 rng(src_bs * 131 + dst_bs * 7 + static_cast<int>(dst_dtype));
  const std::vector<float> k = RandomKv(rng, kTokens, kHeads);
  const std::vector<float> v = RandomKv(rng, kTokens, kHeads);
  FillSentinel(*src, kSrcSentinel);
  AppendAll(*backend, *src, src_table, k, v, kTokens);
  FillSentinel(*dst, kSentinel);

  ASSERT_TRUE(
      CopyLayerTokens(src->view(), src_table, dst->view(), dst_table, kLayer, kTokens).ok());

  const KvCacheView& s = src->view();
  const KvCacheView& d = dst->view();
  const size_t row_bytes = kHeadDim * kernels::KvElemBytes(d.dtype);
  for (int p = 0; p < kTokens; ++p) {
    for (int h = 0; h < kHeads; ++h) {
      for (bool is_v : {false, true}) {
        SCOPED_TRACE(testing::Message() << "position " << p << " head " << h << " v " << is_v);
        const int32_t ss = src_table.SlotFor(p), ds = dst_table.SlotFor(p);
        const std::vector<float> in = ReadRow(s, is_v, kLayer, ss, h);
        const std::vector<float> out = ReadRow(d, is_v, kLayer, ds, h);
        if (src_dtype == dst_dtype) {
          // Bytes move unchanged, int8 scale pairs included.
          ASSERT_EQ(std::memcmp(RawRow(s, is_v, kLayer, ss, h), RawRow(d, is_v, kLayer, ds, h),
                                row_bytes),
                    0);
          ASSERT_EQ(in, out);
        } else if (dst_dtype == KvDType::kInt8) {
          // Asymmetric int8 over the row's [min, max]: step = (max - min) / 255 and rounding
          // to the nearest level errs by at most step / 2 = (max - min) / 510. The float
          // operations (scale, division, q * scale + zero) add a few ulps of the values'
          // magnitude, covered by 1e-6 * (max|x| + range).
          const auto [mn, mx] = std::minmax_element(in.begin(), in.end());
          const float range = *mx - *mn;
          const float amax = std::max(std::fabs(*mn), std::fabs(*mx));
          const float tol = range / 510.f + 1e-6f * (amax + range);
          for (int i = 0; i < kHeadDim; ++i) ASSERT_NEAR(out[i], in[i], tol) << "dim " << i;
        } else if (dst_dtype == KvDType::kF32) {
          ASSERT_EQ(in, out);  // every f16 and dequantized int8 value is a float
        } else {
          // To f16: the source's (dequantized) float rounded to nearest even, bit exact.
          const uint16_t* o = reinterpret_cast<const uint16_t*>(RawRow(d, is_v, kLayer, ds, h));
          for (int i = 0; i < kHeadDim; ++i) {
            ASSERT_EQ(o[i], kernels::FloatToHalf(in[i])) << "dim " << i;
          }
          // And within f16 rounding (2^-11 relative) of the source's value.
          for (int i = 0; i < kHeadDim; ++i) {
            ASSERT_NEAR(out[i], in[i], std::fabs(in[i]) * 0x1p-11f) << "dim " << i;
          }
        }
      }
    }
  }

  // Nothing outside layer kLayer, positions [0, kTokens) was written: the last block's
  // tail, the other layer and the unused blocks still hold the sentinel.
  const size_t layer_bytes = dst->LayerBlockBytes() * dst->num_total();
  const uint8_t* dk = static_cast<const uint8_t*>(d.k);
  size_t written = 0;
  for (size_t i = 0; i < 2 * layer_bytes; ++i) written += dk[i] != kSentinel;
  // Some written bytes may happen to equal the sentinel, so check an upper bound of exactly
  // the copied rows and that layer 0 is intact.
  EXPECT_LE(written, static_cast<size_t>(kTokens) * kHeads * row_bytes);
  for (size_t i = 0; i < layer_bytes; ++i) ASSERT_EQ(dk[i], kSentinel) << "layer 0 byte " << i;
  for (int p = kTokens; p < static_cast<int>(dst_table.blocks().size()) * dst_bs; ++p) {
    for (int h = 0; h < kHeads; ++h) {
      const uint8_t* r = RawRow(d, false, kLayer, dst_table.SlotFor(p), h);
      for (size_t i = 0; i < row_bytes; ++i) ASSERT_EQ(r[i], kSentinel) << "position " << p;
    }
  }
}

std::string CaseName(const testing::TestParamInfo<CopyCase>& info) {
  const auto [sb, db, st, dt] = info.param;
  return "bs" + std::to_string(sb) + "to" + std::to_string(db) + "_" +
         std::string(KvDTypeName(st)) + "to" + std::string(KvDTypeName(dt));
}

INSTANTIATE_TEST_SUITE_P(BlockSizesAndDTypes, CopyLayerTokensTest,
                         testing::Combine(testing::Values(16, 8), testing::Values(16, 8),
                                          testing::Values(KvDType::kF16),
                                          testing::Values(KvDType::kF16, KvDType::kInt8)),
                         CaseName);

INSTANTIATE_TEST_SUITE_P(ToF16, CopyLayerTokensTest,
                         testing::Combine(testing::Values(16, 8), testing::Values(16, 8),
                                          testing::Values(KvDType::kF32, KvDType::kInt8),
                                          testing::Values(KvDType::kF16)),
                         CaseName);

INSTANTIATE_TEST_SUITE_P(F32AndInt8, CopyLayerTokensTest,
                         testing::Combine(testing::Values(16, 8), testing::Values(8),
                                          testing::Values(KvDType::kF32, KvDType::kInt8),
                                          testing::Values(KvDType::kF32, KvDType::kInt8)),
                         CaseName);

TEST(CopyLayerTokensErrorsTest, RefusesMismatchedShapesAndShortTables) {
  std::unique_ptr<kernels::Backend> backend = MakeBackend();
  std::unique_ptr<KvManager> src = MakeManager(*backend, KvDType::kF16, 16);
  std::unique_ptr<KvManager> three = MakeManager(*backend, KvDType::kF16, 16, /*heads=*/3);
  std::unique_ptr<KvManager> dst = MakeManager(*backend, KvDType::kF16, 8);
  BlockTable st = ScatteredTable(*src, kTokens);
  BlockTable tt = ScatteredTable(*three, kTokens);
  BlockTable dt = ScatteredTable(*dst, kTokens);
  auto code = [](absl::Status s) { return s.code(); };
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code(CopyLayerTokens(src->view(), st, three->view(), tt, 0, 4)), kInvalid);
  EXPECT_EQ(code(CopyLayerTokens(src->view(), st, dst->view(), dt, kLayers, 4)), kInvalid);
  EXPECT_EQ(code(CopyLayerTokens(src->view(), st, dst->view(), dt, 0, -1)), kInvalid);
  EXPECT_EQ(code(CopyLayerTokens(src->view(), st, dst->view(), st, 0, 4)), kInvalid);  // bs
  const int too_many = static_cast<int>(dt.blocks().size()) * 8 + 1;
  EXPECT_EQ(code(CopyLayerTokens(src->view(), st, dst->view(), dt, 0, too_many)), kInvalid);
  EXPECT_TRUE(CopyLayerTokens(src->view(), st, dst->view(), dt, 0, 0).ok());
}

TEST(TokenKvTest, WriteThenReadRoundTripsThroughF32) {
  std::unique_ptr<kernels::Backend> backend = MakeBackend();
  std::unique_ptr<KvManager> kv = MakeManager(*backend, KvDType::kF32, 16);
  std::mt19937 rng(11);
  const std::vector<float> k = RandomKv(rng, 1, kHeads), v = RandomKv(rng, 1, kHeads);
  WriteTokenKv(kv->view(), 1, 21, k.data(), v.data());
  std::vector<float> k2(k.size()), v2(v.size());
  ReadTokenKv(kv->view(), 1, 21, k2.data(), v2.data());
  EXPECT_EQ(k, k2);
  EXPECT_EQ(v, v2);
}

}  // namespace
}  // namespace tandem::kvcache
