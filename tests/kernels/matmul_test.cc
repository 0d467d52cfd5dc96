// CpuBackend::Matmul and EmbeddingGather against the scalar references of
// kernels/ref/matmul_ref.h, for every ISA this machine can run, every weight type, the
// shapes of SmolLM2-135M and ragged ones.
//
// Tolerances, per output element y = sum_k w_k x_k (w dequantized), with
// mass = sum_k |w_k x_k|:
//  - against the reference that quantizes activations exactly like the kernel
//    (ref::MatmulQuantizedActs) only fp32 rounding remains: each block's integer dot is
//    exact, then a few roundings per block and one per accumulation step, so
//    |y - ref_q| <= 1e-5 * mass (nb <= 48 blocks here, ~1e-7 relative per step);
//  - against the fp32-activation reference (ref::Matmul), int8 activation quantization
//    moves each x_k by at most d_b / 2 (d_b = max|x| of its 32-block / 127), hence the
//    rigorous bound |y - ref| <= sum_k |w_k| d_b / 2 + 1e-5 * mass. That worst case adds
//    errors of one sign; real errors are random-signed, so their mean is far below it
//    (~0.6 / sqrt(32) of it for 32-element blocks): we also require the mean error to be
//    <= 0.25 x the mean bound when there are enough outputs for a mean to be meaningful;
//  - float weights (no activation quantization): fp32 accumulation over K terms,
//    |y - ref| <= K * 1.2e-7 * mass.
// A wrong block, row, scale or offset gives errors of the order of the outputs themselves.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/quant.h"
#include "kernels/ref/matmul_ref.h"

namespace tandem::kernels::cpu {
namespace {

std::vector<Isa> RunnableIsas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAmx}) {
    if (IsaAvailable(isa)) out.push_back(isa);
  }
  return out;
}

std::vector<float> RandomFloats(int64_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) {
    do {
      x = dist(rng);
    } while (x == 0.f);
  }
  return v;
}

// Random weights in GGUF layout; each row gets its own magnitude so scales differ per row.
std::vector<uint8_t> RandomWeights(DType type, int64_t rows, int64_t cols, uint32_t seed) {
  std::vector<float> f = RandomFloats(rows * cols, seed);
  std::mt19937 rng(seed + 1);
  std::uniform_real_distribution<float> mag(0.25f, 2.f);
  const int64_t row_bytes = RowBytes(type, cols);
  std::vector<uint8_t> out(rows * row_bytes);
  for (int64_t r = 0; r < rows; ++r) {
    const float s = mag(rng);
    for (int64_t k = 0; k < cols; ++k) f[r * cols + k] *= s;
    QuantizeRow(type, f.data() + r * cols, cols, out.data() + r * row_bytes);
  }
  return out;
}

std::unique_ptr<Backend> MakeBackend(Isa isa, int threads, int max_batch_tokens = 2048) {
  CpuBackendConfig config;
  config.isa = isa;
  config.threads = threads;
  config.max_batch_tokens = max_batch_tokens;
  auto backend = CreateCpuBackend(config);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return std::move(backend).value();
}

struct ErrorStats {
  double max_ref = 0;
  double max_err = 0;
  double mean_err = 0;
};

ErrorStats Compare(const std::vector<float>& y, const std::vector<float>& ref) {
  ErrorStats s;
  for (size_t i = 0; i < y.size(); ++i) {
    s.max_ref = std::max(s.max_ref, std::fabs(static_cast<double>(ref[i])));
    const double e = std::fabs(static_cast<double>(y[i]) - ref[i]);
    s.max_err = std::max(s.max_err, e);
    s.mean_err += e;
  }
  s.mean_err /= std::max<size_t>(1, y.size());
  return s;
}

bool Quantized(DType t) {
  return t == DType::kQ4_0 || t == DType::kQ4_1 || t == DType::kQ5_0 || t == DType::kQ5_1 ||
         t == DType::kQ8_0 || IsKQuant(t);
}

// The K-quants, in the order they matter (Gemma 3's Q4_K_M files use Q4_K and Q6_K).
constexpr DType kKTypes[] = {DType::kQ4_K, DType::kQ6_K, DType::kQ5_K, DType::kQ3_K, DType::kQ2_K};

// Per output [m, rows]: mass = sum |w x| and the activation-quantization bound
// sum |w| d_b / 2 (zero for float weight types, whose activations stay fp32).
void ErrorBounds(DType type, const std::vector<uint8_t>& w, int64_t rows, int64_t cols,
                 const std::vector<float>& x, int m, std::vector<double>* mass,
                 std::vector<double>* act_bound) {
  mass->assign(int64_t{m} * rows, 0);
  act_bound->assign(int64_t{m} * rows, 0);
  std::vector<float> wr(cols);
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeRow(type, w.data() + r * RowBytes(type, cols), cols, wr.data());
    for (int i = 0; i < m; ++i) {
      const float* xi = x.data() + int64_t{i} * cols;
      double ms = 0, ab = 0;
      for (int64_t b = 0; b * 32 < cols; ++b) {
        const int64_t k1 = std::min<int64_t>(cols, (b + 1) * 32);
        double amax = 0;
        for (int64_t k = b * 32; k < k1; ++k) amax = std::max(amax, std::fabs(double{xi[k]}));
        for (int64_t k = b * 32; k < k1; ++k) {
          ms += std::fabs(double{wr[k]} * xi[k]);
          ab += std::fabs(double{wr[k]}) * amax / 127 / 2;
        }
      }
      (*mass)[i * rows + r] = ms;
      (*act_bound)[i * rows + r] = Quantized(type) ? ab : 0;
    }
  }
}

void CheckMatmul(Backend& backend, DType type, int64_t rows, int64_t cols, int m, uint32_t seed) {
  SCOPED_TRACE(std::string(DTypeName(type)) + " rows=" + std::to_string(rows) + " cols=" +
               std::to_string(cols) + " m=" + std::to_string(m) + " on " + backend.Name());
  const std::vector<uint8_t> w = RandomWeights(type, rows, cols, seed);
  const std::vector<float> x = RandomFloats(int64_t{m} * cols, seed + 7);
  auto packed = backend.PackWeight({type, rows, cols, w.data(), "test"});
  ASSERT_TRUE(packed.ok()) << packed.status();
  // NaN-filled output: every element must be written.
  std::vector<float> y(int64_t{m} * rows, std::nanf(""));
  backend.Matmul(**packed, x.data(), m, y.data(), backend.DefaultStream());
  for (float v : y) ASSERT_FALSE(std::isnan(v));

  std::vector<double> mass, act_bound;
  ErrorBounds(type, w, rows, cols, x, m, &mass, &act_bound);
  std::vector<float> ref(y.size());
  ref::Matmul(type, w.data(), rows, cols, x.data(), m, ref.data());
  if (Quantized(type)) {
    std::vector<float> ref_q(y.size());
    ref::MatmulQuantizedActs(type, w.data(), rows, cols, x.data(), m, ref_q.data());
    double sum_err = 0, sum_bound = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      ASSERT_LE(std::fabs(double{y[i]} - ref_q[i]), 1e-5 * mass[i] + 1e-30)
          << "output " << i << ": " << y[i] << " vs " << ref_q[i];
      const double err = std::fabs(double{y[i]} - ref[i]);
      ASSERT_LE(err, act_bound[i] + 1e-5 * mass[i]) << "output " << i;
      sum_err += err;
      sum_bound += act_bound[i];
    }
    if (y.size() >= 64) {
      EXPECT_LE(sum_err, 0.25 * sum_bound);
    }
  } else {
    for (size_t i = 0; i < y.size(); ++i) {
      ASSERT_LE(std::fabs(double{y[i]} - ref[i]), cols * 1.2e-7 * mass[i] + 1e-30)
          << "output " << i << ": " << y[i] << " vs " << ref[i];
    }
  }
}

TEST(MatmulTest, SmolLmShapesEveryIsaAndType) {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {576, 576}, {192, 576}, {1536, 576}, {576, 1536}};
  uint32_t seed = 1;
  for (Isa isa : RunnableIsas()) {
    auto backend = MakeBackend(isa, 2);
    for (DType type : {DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0,
                       DType::kF32, DType::kF16, DType::kBF16}) {
      for (auto [rows, cols] : shapes) {
        for (int m : {1, 3, 17}) CheckMatmul(*backend, type, rows, cols, m, seed++);
      }
    }
  }
}

TEST(MatmulTest, PrefillSizedBatches) {
  uint32_t seed = 100;
  for (Isa isa : RunnableIsas()) {
    for (int threads : {1, 2}) {
      auto backend = MakeBackend(isa, threads);
      for (DType type : {DType::kQ4_1, DType::kQ8_0, DType::kQ4_0, DType::kQ5_0, DType::kQ5_1}) {
        CheckMatmul(*backend, type, 576, 576, 64, seed++);
        CheckMatmul(*backend, type, 192, 576, 64, seed++);
      }
    }
  }
}

TEST(MatmulTest, RaggedShapes) {
  // Rows not a multiple of the 16-row interleave, tiny and odd sizes, float types with a
  // column count off the vector width.
  uint32_t seed = 200;
  for (Isa isa : RunnableIsas()) {
    auto backend = MakeBackend(isa, 2);
    for (DType type : {DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0}) {
      for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{
               {1, 32}, {7, 64}, {40, 96}, {17, 288}, {100, 32}}) {
        for (int m : {1, 3, 17, 64}) CheckMatmul(*backend, type, rows, cols, m, seed++);
      }
    }
    for (DType type : {DType::kF32, DType::kF16, DType::kBF16}) {
      for (auto [rows, cols] :
           std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {7, 37}, {40, 100}, {19, 17}}) {
        for (int m : {1, 3, 17}) CheckMatmul(*backend, type, rows, cols, m, seed++);
      }
    }
  }
}

// MatmulSameInput (q/k/v, gate/up) gives exactly the separate Matmuls' outputs: at decode
// sizes the CPU backend runs all row groups in one hand-off and re-quantizes x where the
// weights' activation offsets differ (Q4_K next to Q6_K, Q4_0 next to Q4_1); above them,
// and with float weights, it runs one Matmul each.
TEST(MatmulTest, SameInputMatchesSeparateMatmuls) {
  const std::vector<std::vector<std::pair<DType, int64_t>>> sets = {
      {{DType::kQ4_1, 576}, {DType::kQ4_1, 192}, {DType::kQ4_1, 192}},
      {{DType::kQ4_K, 40}, {DType::kQ6_K, 17}, {DType::kQ4_K, 33}},
      {{DType::kQ4_0, 48}, {DType::kQ4_1, 16}, {DType::kQ8_0, 7}, {DType::kQ5_1, 64}},
      {{DType::kQ4_1, 32}, {DType::kF16, 24}}};
  const int64_t cols = 512;
  uint32_t seed = 900;
  for (Isa isa : RunnableIsas()) {
    for (int threads : {1, 2}) {
      auto backend = MakeBackend(isa, threads);
      for (const auto& set : sets) {
        std::vector<std::unique_ptr<kernels::Weight>> packed;
        std::vector<const kernels::Weight*> ws;
        for (auto [type, rows] : set) {
          const std::vector<uint8_t> w = RandomWeights(type, rows, cols, seed++);
          auto p = backend->PackWeight({type, rows, cols, w.data(), "test"});
          ASSERT_TRUE(p.ok()) << p.status();
          ws.push_back(p->get());
          packed.push_back(std::move(p).value());
        }
        for (int m : {1, 2, 4, 5, 19}) {
          SCOPED_TRACE(std::string(backend->Name()) + " set of " + std::to_string(set.size()) +
                       " m=" + std::to_string(m));
          const std::vector<float> x = RandomFloats(int64_t{m} * cols, seed++);
          std::vector<std::vector<float>> fused(ws.size()), separate(ws.size());
          std::vector<float*> outs;
          for (size_t i = 0; i < ws.size(); ++i) {
            fused[i].assign(int64_t{m} * ws[i]->rows(), std::nanf(""));
            separate[i].assign(fused[i].size(), std::nanf(""));
            outs.push_back(fused[i].data());
            backend->Matmul(*ws[i], x.data(), m, separate[i].data(), backend->DefaultStream());
          }
          backend->MatmulSameInput(ws, x.data(), m, outs, backend->DefaultStream());
          for (size_t i = 0; i < ws.size(); ++i) {
            for (size_t k = 0; k < fused[i].size(); ++k) {
              ASSERT_EQ(fused[i][k], separate[i][k]) << "weight " << i << " output " << k;
            }
          }
        }
      }
    }
  }
}

TEST(MatmulTest, OutputHeadQ8_0) {
  // SmolLM2's tied embedding used as the output head: 49152 x 576 Q8_0.
  for (Isa isa : RunnableIsas()) {
    auto backend = MakeBackend(isa, 2);
    CheckMatmul(*backend, DType::kQ8_0, 49152, 576, 1, 300);
    CheckMatmul(*backend, DType::kQ8_0, 49152, 576, 3, 301);
  }
}

TEST(MatmulTest, BatchLargerThanScratchRunsInChunks) {
  for (Isa isa : RunnableIsas()) {
    auto backend = MakeBackend(isa, 2, /*max_batch_tokens=*/8);
    CheckMatmul(*backend, DType::kQ4_1, 48, 64, 27, 400);
    CheckMatmul(*backend, DType::kQ8_0, 48, 64, 17, 401);
    CheckMatmul(*backend, DType::kQ5_1, 48, 64, 19, 402);
  }
}

TEST(MatmulTest, WideActivationRange) {
  // Blocks of very different magnitudes in one row (tiny, huge, and one all-zero block):
  // per-block scales must keep each block's relative precision.
  const int64_t rows = 48, cols = 128;
  for (Isa isa : RunnableIsas()) {
    auto backend = MakeBackend(isa, 1);
    for (DType type : {DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0}) {
      SCOPED_TRACE(std::string(DTypeName(type)) + " " + backend->Name());
      const std::vector<uint8_t> w = RandomWeights(type, rows, cols, 500);
      std::vector<float> x = RandomFloats(2 * cols, 501);
      for (int k = 0; k < 32; ++k) x[k] *= 1e-4f;
      for (int k = 32; k < 64; ++k) x[k] *= 1e3f;
      for (int k = 64; k < 96; ++k) x[k] = 0.f;
      for (int k = cols; k < cols + 32; ++k) x[k] *= 1e-30f;
      auto packed = backend->PackWeight({type, rows, cols, w.data(), "wide"});
      ASSERT_TRUE(packed.ok());
      std::vector<float> y(2 * rows), ref_q(2 * rows);
      backend->Matmul(**packed, x.data(), 2, y.data(), backend->DefaultStream());
      ref::MatmulQuantizedActs(type, w.data(), rows, cols, x.data(), 2, ref_q.data());
      const ErrorStats s = Compare(y, ref_q);
      EXPECT_LE(s.max_err, 1e-5 * s.max_ref);
    }
  }
}

TEST(EmbeddingGatherTest, MatchesDequantizeRowExactly) {
  const int64_t rows = 53, kCols = 96;
  const std::vector<int32_t> ids = {0, 52, 17, 16, 15, 31, 32, 17, 1};
  for (Isa isa : RunnableIsas()) {
    auto backend = MakeBackend(isa, 2);
    for (DType type : {DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0,
                       DType::kF32, DType::kF16, DType::kBF16, DType::kQ4_K, DType::kQ6_K,
                       DType::kQ5_K, DType::kQ3_K, DType::kQ2_K}) {
      SCOPED_TRACE(std::string(DTypeName(type)) + " " + backend->Name());
      const int64_t cols = IsKQuant(type) ? 512 : kCols;
      const std::vector<uint8_t> w = RandomWeights(type, rows, cols, 600);
      auto packed = backend->PackWeight({type, rows, cols, w.data(), "embd"});
      ASSERT_TRUE(packed.ok());
      std::vector<float> out(ids.size() * cols, std::nanf(""));
      backend->EmbeddingGather(**packed, ids.data(), static_cast<int>(ids.size()), out.data(),
                               backend->DefaultStream());
      std::vector<float> expect(cols);
      for (size_t i = 0; i < ids.size(); ++i) {
        DequantizeRow(type, w.data() + ids[i] * RowBytes(type, cols), cols, expect.data());
        for (int64_t k = 0; k < cols; ++k) {
          ASSERT_EQ(out[i * cols + k], expect[k]) << "id " << ids[i] << " col " << k;
        }
      }
    }
  }
}

// Q5_0's q - 16 lies in [-16, 15], so matmul.h packs it exactly as the Q8_0 weight holding
// those values with the same scales, and the Q8_0 kernels serve it unchanged.
TEST(PackQuantizedTest, Q5_0PacksToTheBytesOfTheEqualQ8_0Weight) {
  const int64_t rows = 37, cols = 96, nb = cols / kQuantBlock;
  const std::vector<uint8_t> q5 = RandomWeights(DType::kQ5_0, rows, cols, 800);
  std::vector<BlockQ8_0> q8(rows * nb);
  const auto* b5 = reinterpret_cast<const BlockQ5_0*>(q5.data());
  for (int64_t i = 0; i < rows * nb; ++i) {
    uint8_t q[32];
    UnpackQ5(b5[i].qh, b5[i].qs, q);
    q8[i].d = b5[i].d;
    for (int j = 0; j < 32; ++j) q8[i].qs[j] = static_cast<int8_t>(q[j] - 16);
  }
  const PackedLayout l5 = MakePackedLayout(DType::kQ5_0, rows, cols);
  const PackedLayout l8 = MakePackedLayout(DType::kQ8_0, rows, cols);
  ASSERT_EQ(l5.total_bytes(), l8.total_bytes());
  std::vector<uint8_t> p5(l5.total_bytes()), p8(l8.total_bytes());
  PackQuantized(l5, q5.data(), p5.data());
  PackQuantized(l8, q8.data(), p8.data());
  EXPECT_EQ(p5, p8);
  for (Isa isa : RunnableIsas())
    EXPECT_EQ(ActOffset(DType::kQ5_0, isa), ActOffset(DType::kQ8_0, isa));
}

// K-quant weights need cols % 256 == 0; rows are ragged around the 16-row groups. Gemma 3
// 270M's shapes: attn_output [640, 1024] (Q4_K), ffn_down [640, 2048] (Q6_K).
TEST(MatmulTest, KQuantsEveryIsa) {
  uint32_t seed = 900;
  for (Isa isa : RunnableIsas()) {
    auto backend = MakeBackend(isa, 2);
    for (DType type : kKTypes) {
      for (auto [rows, cols] :
           std::vector<std::pair<int64_t, int64_t>>{{1, 256}, {7, 512}, {17, 256}, {40, 768}}) {
        for (int m : {1, 3, 17, 64}) CheckMatmul(*backend, type, rows, cols, m, seed++);
      }
      // Gemma-sized, decode and a small prefill (m = 7 runs a full 6-row tile and a tail).
      for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{640, 1024}, {100, 2048}}) {
        for (int m : {1, 7}) CheckMatmul(*backend, type, rows, cols, m, seed++);
      }
    }
  }
}

TEST(MatmulTest, KQuantsWideActivationRangeAndChunks) {
  const int64_t rows = 48, cols = 512;
  for (Isa isa : RunnableIsas()) {
    auto backend = MakeBackend(isa, 1, /*max_batch_tokens=*/8);
    for (DType type : kKTypes) {
      SCOPED_TRACE(std::string(DTypeName(type)) + " " + backend->Name());
      const std::vector<uint8_t> w = RandomWeights(type, rows, cols, 910);
      std::vector<float> x = RandomFloats(19 * cols, 911);
      for (int k = 0; k < 16; ++k) x[k] *= 1e-4f;  // halves of one block differ widely
      for (int k = 16; k < 64; ++k) x[k] *= 1e3f;
      for (int k = 64; k < 96; ++k) x[k] = 0.f;
      for (int k = cols; k < cols + 32; ++k) x[k] *= 1e-30f;
      auto packed = backend->PackWeight({type, rows, cols, w.data(), "wide"});
      ASSERT_TRUE(packed.ok());
      std::vector<float> y(19 * rows), ref_q(19 * rows);
      backend->Matmul(**packed, x.data(), 19, y.data(), backend->DefaultStream());
      ref::MatmulQuantizedActs(type, w.data(), rows, cols, x.data(), 19, ref_q.data());
      for (int i = 0; i < 19; ++i) {
        std::vector<float> yi(y.begin() + i * rows, y.begin() + (i + 1) * rows);
        std::vector<float> ri(ref_q.begin() + i * rows, ref_q.begin() + (i + 1) * rows);
        const ErrorStats s = Compare(yi, ri);
        EXPECT_LE(s.max_err, 1e-5 * s.max_ref) << "row " << i;
      }
    }
  }
}

TEST(MatmulTest, KQuantsRejectColsNotAMultipleOf256) {
  auto backend = MakeBackend(Isa::kScalar, 1);
  const std::vector<uint8_t> w(4096);
  for (DType type : kKTypes) {
    auto packed = backend->PackWeight({type, 4, 384, w.data(), "blk.0.ffn_down.weight"});
    ASSERT_FALSE(packed.ok());
    EXPECT_NE(packed.status().message().find("blk.0.ffn_down.weight"), std::string::npos)
        << packed.status();
    EXPECT_NE(packed.status().message().find(std::string(DTypeName(type))), std::string::npos)
        << packed.status();
  }
}

// Types tandem has no kernels for (IQ*, TQ*, Q8_K as a weight, ...) are refused by name.
TEST(MatmulTest, UnsupportedTypesAreRefused) {
  auto backend = MakeBackend(Isa::kScalar, 1);
  const std::vector<uint8_t> w(4096);
  for (uint32_t id : {9u, 15u, 16u, 20u, 23u, 34u, 35u}) {  // Q8_1 Q8_K IQ2_XXS IQ4_NL ...
    EXPECT_FALSE(IsSupported(static_cast<DType>(id))) << id;
    auto packed = backend->PackWeight({static_cast<DType>(id), 4, 256, w.data(), "odd.weight"});
    ASSERT_FALSE(packed.ok());
    EXPECT_NE(packed.status().message().find("odd.weight"), std::string::npos);
  }
}

TEST(PackQuantizedTest, KQuantPackedRowsDequantizeLikeGguf) {
  for (DType type : kKTypes) {
    SCOPED_TRACE(DTypeName(type));
    const int64_t rows = 21, cols = 512;
    const std::vector<uint8_t> w = RandomWeights(type, rows, cols, 920);
    const PackedLayout l = MakePackedLayout(type, rows, cols);
    EXPECT_EQ(l.sb_bytes % 64, 0);
    EXPECT_EQ(l.group_bytes, 2 * l.sb_bytes);
    // Bits per weight once packed, as matmul.h documents them: q's bits plus 0.625 for the
    // scales (Q2_K: exactly the file's size).
    const double bits = 8.0 * l.sb_bytes / (kGroupRows * kSuperBlock);
    const double want_bits = type == DType::kQ2_K   ? 2.625
                             : type == DType::kQ3_K ? 3.625
                             : type == DType::kQ4_K ? 4.625
                             : type == DType::kQ5_K ? 5.625
                                                    : 6.625;
    EXPECT_EQ(bits, want_bits);
    std::vector<uint8_t> packed(l.total_bytes());
    PackQuantized(l, w.data(), packed.data());
    std::vector<float> got(cols), want(cols);
    for (int64_t r = 0; r < rows; ++r) {
      DequantizePackedRow(l, packed.data(), r, got.data());
      DequantizeRow(type, w.data() + r * RowBytes(type, cols), cols, want.data());
      ASSERT_EQ(got, want) << "row " << r;
    }
  }
}

TEST(MatmulTest, ThreadCountDoesNotChangeResults) {
  // The split is over whole row groups and activation rows, so results are bit-identical
  // (decode-sized m takes the per-thread activation path, larger m the shared one).
  const std::vector<uint8_t> w = RandomWeights(DType::kQ4_1, 1536, 576, 700);
  const std::vector<float> x = RandomFloats(40 * 576, 701);
  for (Isa isa : RunnableIsas()) {
    auto one = MakeBackend(isa, 1);
    auto two = MakeBackend(isa, 2);
    auto p1 = one->PackWeight({DType::kQ4_1, 1536, 576, w.data(), "w"});
    auto p2 = two->PackWeight({DType::kQ4_1, 1536, 576, w.data(), "w"});
    ASSERT_TRUE(p1.ok() && p2.ok());
    for (int m : {1, 3, 40}) {
      std::vector<float> y1(m * 1536), y2(m * 1536);
      one->Matmul(**p1, x.data(), m, y1.data(), one->DefaultStream());
      two->Matmul(**p2, x.data(), m, y2.data(), two->DefaultStream());
      EXPECT_EQ(y1, y2) << one->Name() << " m=" << m;
    }
  }
}

}  // namespace
}  // namespace tandem::kernels::cpu
