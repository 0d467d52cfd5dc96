#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/ops.h"

namespace tandem::kernels::cpu {
namespace {

std::vector<float> RandomFloats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-2.f, 2.f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

TEST(CpuFeaturesTest, ParsesIsaNames) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAmx}) {
    auto parsed = ParseIsa(IsaName(isa));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, isa);
  }
  auto best = ParseIsa("auto");
  ASSERT_TRUE(best.ok());
  EXPECT_EQ(*best, BestIsa());
  EXPECT_FALSE(ParseIsa("sse9").ok());
  EXPECT_TRUE(IsaAvailable(Isa::kScalar));
  EXPECT_TRUE(IsaAvailable(BestIsa()));
  // Tiers are nested.
  EXPECT_TRUE(!IsaAvailable(Isa::kAmx) || IsaAvailable(Isa::kAvx512));
  EXPECT_TRUE(!IsaAvailable(Isa::kAvx512) || IsaAvailable(Isa::kAvx2));
  // Cross-check with the compiler's own detection.
  EXPECT_EQ(IsaAvailable(Isa::kAvx2), __builtin_cpu_supports("avx2") &&
                                          __builtin_cpu_supports("fma") &&
                                          __builtin_cpu_supports("f16c"));
  EXPECT_EQ(GetCpuFeatures().avx512vnni, __builtin_cpu_supports("avx512vnni") != 0);
}

TEST(CpuBackendTest, ValidatesConfig) {
  CpuBackendConfig config;
  config.threads = 0;
  EXPECT_EQ(CreateCpuBackend(config).status().code(), absl::StatusCode::kInvalidArgument);
  config.threads = 2;
  config.cpus = {0};
  EXPECT_EQ(CreateCpuBackend(config).status().code(), absl::StatusCode::kInvalidArgument);
  config.cpus = {};
  config.max_batch_tokens = 0;
  EXPECT_FALSE(CreateCpuBackend(config).ok());
  config.max_batch_tokens = 16;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAmx}) {
    config.isa = isa;
    auto backend = CreateCpuBackend(config);
    if (IsaAvailable(isa)) {
      ASSERT_TRUE(backend.ok()) << backend.status();
      EXPECT_EQ((*backend)->Name(), std::string("cpu/") + IsaName(isa) + " x2");
    } else {
      EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition);
    }
  }
}

TEST(CpuBackendTest, MemoryIsAlignedHostMemory) {
  auto backend = CreateCpuBackend({});
  ASSERT_TRUE(backend.ok());
  Backend& b = **backend;
  EXPECT_TRUE(b.IsHostMemory());
  // 5 MiB: a buffer on huge pages (kernels/cpu/host_memory.h), freed by the same Free.
  for (size_t bytes : {size_t{1}, size_t{100}, size_t{4096}, size_t{0}, size_t{5} << 20}) {
    auto buf = b.Allocate(bytes);
    ASSERT_TRUE(buf.ok());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buf->ptr) % 64, 0u);
    EXPECT_EQ(buf->bytes, bytes);
    if (bytes >= 100) {
      std::vector<uint8_t> src(bytes), dst(bytes);
      for (size_t i = 0; i < bytes; ++i) src[i] = static_cast<uint8_t>(i * 7);
      b.CopyToDevice(buf->ptr, src.data(), bytes, b.DefaultStream());
      b.CopyToHost(dst.data(), buf->ptr, bytes, b.DefaultStream());
      EXPECT_EQ(src, dst);
      b.Memset(buf->ptr, 0xab, bytes, b.DefaultStream());
      b.Synchronize(b.DefaultStream());
      EXPECT_EQ(static_cast<uint8_t*>(buf->ptr)[bytes - 1], 0xab);
    }
    b.Free(*buf);
  }
}

TEST(CpuBackendTest, StreamsAndEventsOrderWorkOnTheSynchronousStream) {
  CpuBackendConfig config;
  config.threads = 2;
  auto backend = CreateCpuBackend(config);
  ASSERT_TRUE(backend.ok());
  Backend& b = **backend;
  EXPECT_EQ(b.activation_dtype(), ActivationDType::kF32);
  auto side = b.CreateStream();
  auto event = b.CreateEvent();
  ASSERT_TRUE(side.ok() && event.ok());
  auto buf = b.Allocate(64);
  ASSERT_TRUE(buf.ok());
  // Written on the default stream, recorded, waited on by the side stream and the host: the
  // write is visible to both.
  b.Memset(buf->ptr, 0x5a, 64, b.DefaultStream());
  b.RecordEvent(*event, b.DefaultStream());
  b.StreamWaitEvent(*side, *event);
  std::vector<uint8_t> host(64);
  b.CopyToHost(host.data(), buf->ptr, 64, *side);
  b.SynchronizeEvent(*event);
  EXPECT_EQ(host, std::vector<uint8_t>(64, 0x5a));
  b.DestroyEvent(*event);
  b.DestroyStream(*side);
  b.Free(*buf);
}

TEST(CpuBackendTest, HostParallelForCoversEveryIndexOnce) {
  CpuBackendConfig config;
  config.threads = 2;
  auto backend = CreateCpuBackend(config);
  ASSERT_TRUE(backend.ok());
  for (int n : {0, 1, 2, 3, 17, 256}) {
    std::vector<int> hits(n, 0);
    (*backend)->HostParallelFor(n, [&](int begin, int end) {
      ASSERT_LE(0, begin);
      ASSERT_LE(begin, end);
      ASSERT_LE(end, n);
      for (int i = begin; i < end; ++i) ++hits[i];
    });
    EXPECT_EQ(hits, std::vector<int>(n, 1)) << n;
  }
}

TEST(CpuBackendTest, PackWeightRejectsBadDescriptions) {
  auto backend = CreateCpuBackend({});
  ASSERT_TRUE(backend.ok());
  std::vector<uint8_t> data(1 << 16);
  EXPECT_EQ((*backend)->PackWeight({DType::kQ4_1, 4, 40, data.data(), "w"}).status().code(),
            absl::StatusCode::kInvalidArgument);  // cols not a multiple of 32
  EXPECT_FALSE((*backend)->PackWeight({DType::kQ8_0, 0, 32, data.data(), "w"}).ok());
  EXPECT_FALSE((*backend)->PackWeight({DType::kF32, 4, 32, nullptr, "w"}).ok());
  // GGML type 9 (Q8_1) is a matmul-internal format that no model file stores.
  EXPECT_FALSE((*backend)->PackWeight({static_cast<DType>(9), 4, 256, data.data(), "w"}).ok());
  auto ok = (*backend)->PackWeight({DType::kQ4_0, 5, 64, data.data(), "w"});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ((*ok)->type(), DType::kQ4_0);
  EXPECT_EQ((*ok)->rows(), 5);
  EXPECT_EQ((*ok)->cols(), 64);
}

TEST(CpuBackendTest, KvElemBytes) {
  EXPECT_EQ(KvElemBytes(KvDType::kF32), 4u);
  EXPECT_EQ(KvElemBytes(KvDType::kF16), 2u);
  EXPECT_EQ(KvElemBytes(KvDType::kInt8), 1u);
}

// The backend's split of row-wise ops over threads must give the same bits as one call
// over all rows (the ops' own numerics are tested with the ops).
TEST(CpuBackendTest, RowOpsSplitAcrossThreadsMatchOneRange) {
  CpuBackendConfig config;
  config.threads = 2;
  auto backend = CreateCpuBackend(config);
  ASSERT_TRUE(backend.ok());
  Backend& b = **backend;
  const int rows = 300, dim = 576;
  const std::vector<float> x = RandomFloats(rows * dim, 1);
  const std::vector<float> w = RandomFloats(dim, 2);
  const std::vector<float> u = RandomFloats(rows * dim, 3);

  std::vector<float> got(rows * dim), want(rows * dim);
  b.RmsNorm(x.data(), w.data(), rows, dim, 1e-5f, got.data(), b.DefaultStream());
  RmsNormRange(x.data(), w.data(), dim, 1e-5f, want.data(), 0, rows);
  EXPECT_EQ(got, want);

  b.SwiGlu(x.data(), u.data(), rows, dim, got.data(), b.DefaultStream());
  SwiGluRange(x.data(), u.data(), dim, want.data(), 0, rows);
  EXPECT_EQ(got, want);

  b.GeGlu(x.data(), u.data(), rows, dim, got.data(), b.DefaultStream());
  GeGluRange(x.data(), u.data(), dim, want.data(), 0, rows);
  EXPECT_EQ(got, want);

  got = x;
  want = x;
  b.Scale(got.data(), 48.f, int64_t{rows} * dim, b.DefaultStream());
  ScaleRange(want.data(), 48.f, 0, int64_t{rows} * dim);
  EXPECT_EQ(got, want);
  EXPECT_EQ(got[5], x[5] * 48.f);

  got = x;
  want = x;
  b.Add(got.data(), u.data(), int64_t{rows} * dim, b.DefaultStream());
  AddRange(want.data(), u.data(), 0, int64_t{rows} * dim);
  EXPECT_EQ(got, want);

  got = x;
  want = x;
  b.AddBias(got.data(), w.data(), rows, dim, b.DefaultStream());
  AddBiasRange(want.data(), w.data(), dim, 0, rows);
  EXPECT_EQ(got, want);

  std::vector<int32_t> idx(rows);
  for (int i = 0; i < rows; ++i) idx[i] = (i * 37) % rows;
  b.GatherRows(x.data(), idx.data(), rows, dim, got.data(), b.DefaultStream());
  for (int i = 0; i < rows; ++i) {
    for (int k = 0; k < dim; ++k) ASSERT_EQ(got[i * dim + k], x[idx[i] * dim + k]);
  }
}

// Rope, KvAppend and Attention through the backend (split over 2 threads) against one
// range call over all items: same bits (attention: see below), and every parameter passed
// through.
TEST(CpuBackendTest, TokenOpsSplitAcrossThreadsMatchOneRange) {
  CpuBackendConfig config;
  config.threads = 2;
  auto backend = CreateCpuBackend(config);
  ASSERT_TRUE(backend.ok());
  Backend& b = **backend;
  const int n_tokens = 100, n_heads = 9, n_kv = 3, head_dim = 64, block_size = 16;
  const int n_blocks = 7;  // 100 positions in blocks of 16
  std::vector<int32_t> positions(n_tokens), slots(n_tokens), token_seq(n_tokens, 0);
  for (int t = 0; t < n_tokens; ++t) positions[t] = slots[t] = t;
  const std::vector<int32_t> block_table = {0, 1, 2, 3, 4, 5, 6};

  std::vector<float> q = RandomFloats(n_tokens * n_heads * head_dim, 4);
  std::vector<float> k = RandomFloats(n_tokens * n_kv * head_dim, 5);
  const std::vector<float> v = RandomFloats(n_tokens * n_kv * head_dim, 6);
  RopeParams rp;
  rp.q = q.data();
  rp.k = k.data();
  rp.positions = positions.data();
  rp.n_tokens = n_tokens;
  rp.n_heads = n_heads;
  rp.n_kv_heads = n_kv;
  rp.head_dim = head_dim;
  rp.rot_dim = head_dim;
  rp.theta = 1e5f;
  std::vector<float> q2 = q, k2 = k;
  b.Rope(rp, b.DefaultStream());
  RopeParams rp2 = rp;
  rp2.q = q2.data();
  rp2.k = k2.data();
  RopeRange(rp2, 0, n_tokens);
  EXPECT_EQ(q, q2);
  EXPECT_EQ(k, k2);

  const size_t cache_elems = size_t{n_blocks} * n_kv * block_size * head_dim;
  std::vector<float> kc(cache_elems, 0.f), vc(cache_elems, 0.f);
  std::vector<float> kc2(cache_elems, 0.f), vc2(cache_elems, 0.f);
  KvCacheView view;
  view.dtype = KvDType::kF32;
  view.n_layers = 1;
  view.n_blocks = n_blocks;
  view.block_size = block_size;
  view.n_kv_heads = n_kv;
  view.head_dim = head_dim;
  view.k = kc.data();
  view.v = vc.data();
  KvAppendParams ap;
  ap.k = k.data();
  ap.v = v.data();
  ap.slots = slots.data();
  ap.n_tokens = n_tokens;
  ap.cache = view;
  b.KvAppend(ap, b.DefaultStream());
  KvAppendParams ap2 = ap;
  ap2.cache.k = kc2.data();
  ap2.cache.v = vc2.data();
  KvAppendRange(ap2, 0, n_tokens);
  EXPECT_EQ(kc, kc2);
  EXPECT_EQ(vc, vc2);

  std::vector<float> out(q.size(), 0.f), out2(q.size(), 0.f);
  AttentionParams atp;
  atp.q = q.data();
  atp.out = out.data();
  atp.token_seq = token_seq.data();
  atp.positions = positions.data();
  atp.block_tables = block_table.data();
  atp.n_tokens = n_tokens;
  atp.n_seqs = 1;
  atp.max_blocks_per_seq = n_blocks;
  atp.n_heads = n_heads;
  atp.n_kv_heads = n_kv;
  atp.head_dim = head_dim;
  atp.scale = 0.125f;
  atp.cache = view;
  b.Attention(atp, b.DefaultStream());
  AttentionParams atp2 = atp;
  atp2.out = out2.data();
  AttentionRange(atp2, 0, AttentionItems(atp2));
  // A prefill of 100 tokens: with AVX-512 the backend takes the query-tiled kernel, which
  // groups the sums differently (within 1e-5 of one range, attention_test.cc); otherwise the
  // same bits.
  auto expect_matches = [&] {
    for (size_t i = 0; i < out.size(); ++i) {
      if (AttentionTilesPay(atp)) {
        ASSERT_NEAR(out[i], out2[i], 1e-5f) << i;
      } else {
        ASSERT_EQ(out[i], out2[i]) << i;
      }
    }
  };
  expect_matches();
  float max_abs = 0;
  for (float o : out) max_abs = std::max(max_abs, std::fabs(o));
  EXPECT_GT(max_abs, 0.f);  // something was computed

  // The window passes through: matches one range, and not full attention.
  atp.window = 20;
  std::vector<float> out_full = out;
  b.Attention(atp, b.DefaultStream());
  atp2.window = 20;
  AttentionRange(atp2, 0, AttentionItems(atp2));
  expect_matches();
  EXPECT_NE(out, out_full);
}

// A decode step of one sequence has n_kv_heads items, fewer than two threads share evenly:
// the backend splits the context (AttentionSplitCount) and merges, and the result matches one
// unsplit range within float rounding; with a window, only the window is split.
TEST(CpuBackendTest, DecodeAttentionSplitsLongContextsAcrossThreads) {
  CpuBackendConfig config;
  config.threads = 2;
  auto backend = CreateCpuBackend(config);
  ASSERT_TRUE(backend.ok());
  Backend& b = **backend;
  const int n_heads = 9, n_kv = 3, head_dim = 64, block_size = 16, n_blocks = 80;
  const int pos = 1100;  // 1101 positions in 69 blocks
  std::vector<int32_t> table(n_blocks);
  for (int i = 0; i < n_blocks; ++i) table[i] = (i * 37) % n_blocks;  // scattered
  const size_t cache_elems = size_t{n_blocks} * n_kv * block_size * head_dim;
  std::vector<float> kc = RandomFloats(cache_elems, 8), vc = RandomFloats(cache_elems, 9);
  std::vector<float> q = RandomFloats(n_heads * head_dim, 10);
  std::vector<float> got(q.size(), 0.f), want(q.size(), 0.f);
  int32_t seq = 0, position = pos;
  AttentionParams p;
  p.q = q.data();
  p.token_seq = &seq;
  p.positions = &position;
  p.block_tables = table.data();
  p.n_tokens = 1;
  p.n_seqs = 1;
  p.max_blocks_per_seq = n_blocks;
  p.n_heads = n_heads;
  p.n_kv_heads = n_kv;
  p.head_dim = head_dim;
  p.scale = 0.125f;
  p.cache.dtype = KvDType::kF32;
  p.cache.n_layers = 1;
  p.cache.n_blocks = n_blocks;
  p.cache.block_size = block_size;
  p.cache.n_kv_heads = n_kv;
  p.cache.head_dim = head_dim;
  p.cache.k = kc.data();
  p.cache.v = vc.data();
  for (int window : {0, 600}) {
    p.window = window;
    ASSERT_EQ(AttentionSplitCount(p, 2), window == 0 ? 4 : 2);
    p.out = got.data();
    b.Attention(p, b.DefaultStream());
    p.out = want.data();
    AttentionRange(p, 0, AttentionItems(p));
    float max_abs = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-5f) << "window " << window << " element " << i;
      max_abs = std::max(max_abs, std::fabs(want[i]));
    }
    EXPECT_GT(max_abs, 0.f);
  }
}

}  // namespace
}  // namespace tandem::kernels::cpu
