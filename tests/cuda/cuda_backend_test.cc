// CudaBackend's own behaviour (the ops themselves are the kernels' tests; the whole model is
// forward_test.cc): configuration checks, which weights it packs or refuses and how it says so,
// adopting weights, ToF32, and the attention workspace sized at set-up time serving both a long
// decode context and a step of many tokens. Host code only, every buffer through the backend,
// so cuda_gpu_test runs the same file against the GPU build.
#include "kernels/cuda/cuda_backend.h"

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/quant.h"
#include "kernels/ref/attention_ref.h"

namespace tandem::kernels::cuda {
namespace {

std::unique_ptr<Backend> MakeBackend(ActivationDType dtype = ActivationDType::kF16) {
  CudaBackendConfig c;
  c.activations = dtype;
  auto b = CreateCudaBackend(c);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : nullptr;
}

TEST(CudaBackendTest, ConfigIsChecked) {
  CudaBackendConfig c;
  c.activations = ActivationDType::kF32;  // QuantMatmul takes f16/bf16 only
  EXPECT_EQ(CreateCudaBackend(c).status().code(), absl::StatusCode::kInvalidArgument);
  c.activations = ActivationDType::kBF16;
  c.device = -1;
  EXPECT_EQ(CreateCudaBackend(c).status().code(), absl::StatusCode::kInvalidArgument);
  c.device = 1000;  // no such device (the harness has one)
  EXPECT_EQ(CreateCudaBackend(c).status().code(), absl::StatusCode::kFailedPrecondition);
  c.device = 0;
  auto b = CreateCudaBackend(c);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->activation_dtype(), ActivationDType::kBF16);
  // Its device kind (the name up to the first space) is not the CPU's.
  EXPECT_EQ((*b)->Name().rfind("cuda", 0), 0u) << (*b)->Name();
}

std::vector<uint8_t> RandomRows(DType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::vector<float> f(static_cast<size_t>(rows * cols));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (float& x : f) x = u(rng);
  std::vector<uint8_t> out(rows * RowBytes(type, cols));
  for (int64_t r = 0; r < rows; ++r) {
    QuantizeRow(type, &f[r * cols], cols, out.data() + r * RowBytes(type, cols));
  }
  return out;
}

TEST(CudaBackendTest, PacksWhatItCanMultiplyAndNamesWhatItCannot) {
  auto be = MakeBackend();
  ASSERT_NE(be, nullptr);
  std::mt19937 rng(7);
  const std::vector<uint8_t> q41 = RandomRows(DType::kQ4_1, 64, 128, rng);
  EXPECT_TRUE(
      be->PackWeight({DType::kQ4_1, 64, 128, q41.data(), "blk.0.ffn_up.weight", WeightUse::kMatmul})
          .ok());
  // Dense matrices go to the dense GEMM; an F32 value past f16's range cannot, on an f16
  // backend: refused at load with the tensor's name and where.
  const std::vector<uint8_t> f16 = RandomRows(DType::kF16, 64, 128, rng);
  EXPECT_TRUE(
      be->PackWeight({DType::kF16, 64, 128, f16.data(), "blk.3.attn_q.weight", WeightUse::kMatmul})
          .ok());
  std::vector<float> f32(64 * 128, 0.5f);
  f32[200] = 1e5f;
  const absl::Status s =
      be->PackWeight({DType::kF32, 64, 128, f32.data(), "blk.4.attn_k.weight", WeightUse::kMatmul})
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("blk.4.attn_k.weight has the value 100000 at 200"), std::string::npos)
      << s;
  // ... but an f16 token table that is only gathered is fine.
  EXPECT_TRUE(
      be->PackWeight({DType::kF16, 64, 128, f16.data(), "token_embd.weight", WeightUse::kGather})
          .ok());
  // A CPU weight cannot be adopted.
  auto cpu = cpu::CreateCpuBackend({});
  ASSERT_TRUE(cpu.ok());
  auto cw = (*cpu)->PackWeight({DType::kQ4_1, 64, 128, q41.data(), "w"});
  ASSERT_TRUE(cw.ok());
  EXPECT_EQ(be->AdoptWeight(**cw).code(), absl::StatusCode::kFailedPrecondition);
  auto own = be->PackWeight({DType::kQ4_1, 64, 128, q41.data(), "w"});
  ASSERT_TRUE(own.ok());
  EXPECT_TRUE(be->AdoptWeight(**own).ok());
}

// A tied token table (kBoth) gathers the rows it stores and multiplies by them: both layouts
// give the dequantized weights (rounded to f16). Q8_0 is gathered from its GGUF rows, Q5_0 from
// the packed layout (the row gather does not read Q5); both dequantize exactly in f32.
class CudaBackendTiedTest : public ::testing::TestWithParam<DType> {};

TEST_P(CudaBackendTiedTest, TiedTableGathersAndMultiplies) {
  const DType type = GetParam();
  auto be = MakeBackend();
  ASSERT_NE(be, nullptr);
  std::mt19937 rng(11);
  const int64_t rows = 70, cols = 64;  // rows not a multiple of the 64-row tile
  const std::vector<uint8_t> q = RandomRows(type, rows, cols, rng);
  auto w = be->PackWeight({type, rows, cols, q.data(), "token_embd.weight"});
  ASSERT_TRUE(w.ok()) << w.status();
  const Stream s = be->DefaultStream();
  // Gather rows 3 and 69; multiply by one-hot rows e_5 and e_63.
  auto ids = be->Allocate(2 * sizeof(int32_t));
  auto gathered = be->Allocate(2 * cols * 2);
  auto x = be->Allocate(2 * cols * 2);
  auto y = be->Allocate(2 * rows * 2);
  auto y32 = be->Allocate(2 * rows * sizeof(float));
  auto g32 = be->Allocate(2 * cols * sizeof(float));
  ASSERT_TRUE(ids.ok() && gathered.ok() && x.ok() && y.ok() && y32.ok() && g32.ok());
  const int32_t want_ids[2] = {3, 69};
  be->CopyToDevice(ids->ptr, want_ids, sizeof(want_ids), s);
  be->EmbeddingGather(**w, static_cast<int32_t*>(ids->ptr), 2, static_cast<float*>(gathered->ptr),
                      s);
  be->ToF32(static_cast<float*>(gathered->ptr), 2 * cols, static_cast<float*>(g32->ptr), s);
  std::vector<uint16_t> onehot(2 * cols, 0);
  onehot[5] = 0x3c00;  // 1.0 in f16
  onehot[cols + 63] = 0x3c00;
  be->CopyToDevice(x->ptr, onehot.data(), onehot.size() * 2, s);
  be->Matmul(**w, static_cast<float*>(x->ptr), 2, static_cast<float*>(y->ptr), s);
  be->ToF32(static_cast<float*>(y->ptr), 2 * rows, static_cast<float*>(y32->ptr), s);
  std::vector<float> g(2 * cols), out(2 * rows);
  be->CopyToHost(g.data(), g32->ptr, g.size() * sizeof(float), s);
  be->CopyToHost(out.data(), y32->ptr, out.size() * sizeof(float), s);
  be->Synchronize(s);
  std::vector<float> deq(cols);
  for (int i = 0; i < 2; ++i) {
    DequantizeRow(type, q.data() + want_ids[i] * RowBytes(type, cols), cols, deq.data());
    for (int c = 0; c < cols; ++c) {
      // The values are exact in f32; the gather rounds them to f16 once.
      EXPECT_EQ(g[i * cols + c], HalfToFloat(FloatToHalf(deq[c]))) << i << " " << c;
    }
  }
  // y[0][r] = w[r][5], y[1][r] = w[r][63]: each dequantized weight rounded to f16.
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeRow(type, q.data() + r * RowBytes(type, cols), cols, deq.data());
    EXPECT_EQ(out[r], HalfToFloat(FloatToHalf(deq[5]))) << r;
    EXPECT_EQ(out[rows + r], HalfToFloat(FloatToHalf(deq[63]))) << r;
  }
  for (auto* b : {&*ids, &*gathered, &*x, &*y, &*y32, &*g32}) be->Free(*b);
}

INSTANTIATE_TEST_SUITE_P(Types, CudaBackendTiedTest, ::testing::Values(DType::kQ8_0, DType::kQ5_0),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// Dense matrices (F32, F16, BF16 in the GGUF) are converted to the activation dtype at load and
// multiplied by the dense GEMM (DenseMatmulSimt here, cuBLAS on a GPU): y equals the reference
// on the converted weights within the f32-sum and output-rounding bound (dense_matmul_test).
TEST(CudaBackendTest, DenseMatricesMultiply) {
  std::mt19937 rng(13);
  const int64_t rows = 70, cols = 96;
  const int m = 3;
  for (ActivationDType act : {ActivationDType::kF16, ActivationDType::kBF16}) {
    auto be = MakeBackend(act);
    ASSERT_NE(be, nullptr);
    const bool bf16 = act == ActivationDType::kBF16;
    auto round = [&](float v) {
      return bf16 ? Bf16ToFloat(FloatToBf16(v)) : HalfToFloat(FloatToHalf(v));
    };
    for (DType type : {DType::kF32, DType::kF16, DType::kBF16}) {
      const std::vector<uint8_t> w = RandomRows(type, rows, cols, rng);
      auto packed = be->PackWeight({type, rows, cols, w.data(), "blk.0.attn_q.weight"});
      ASSERT_TRUE(packed.ok()) << packed.status();
      // The weights as the backend holds them, and activations already of its dtype.
      std::vector<float> wf(rows * cols), row(cols);
      for (int64_t r = 0; r < rows; ++r) {
        DequantizeRow(type, w.data() + r * RowBytes(type, cols), cols, row.data());
        for (int64_t c = 0; c < cols; ++c) wf[r * cols + c] = round(row[c]);
      }
      std::uniform_real_distribution<float> u(-1.f, 1.f);
      std::vector<uint16_t> x_bits(m * cols);
      std::vector<float> xf(m * cols);
      for (size_t i = 0; i < x_bits.size(); ++i) {
        const float v = u(rng);
        x_bits[i] = bf16 ? FloatToBf16(v) : FloatToHalf(v);
        xf[i] = bf16 ? Bf16ToFloat(x_bits[i]) : HalfToFloat(x_bits[i]);
      }
      const Stream s = be->DefaultStream();
      auto x = be->Allocate(x_bits.size() * 2);
      auto y = be->Allocate(m * rows * 2);
      auto y32 = be->Allocate(m * rows * sizeof(float));
      ASSERT_TRUE(x.ok() && y.ok() && y32.ok());
      be->CopyToDevice(x->ptr, x_bits.data(), x_bits.size() * 2, s);
      be->Matmul(**packed, static_cast<float*>(x->ptr), m, static_cast<float*>(y->ptr), s);
      be->ToF32(static_cast<float*>(y->ptr), m * rows, static_cast<float*>(y32->ptr), s);
      std::vector<float> got(m * rows);
      be->CopyToHost(got.data(), y32->ptr, got.size() * sizeof(float), s);
      be->Synchronize(s);
      const double u_act = bf16 ? 0x1p-8 : 0x1p-11;
      for (int i = 0; i < m; ++i) {
        for (int64_t r = 0; r < rows; ++r) {
          double want = 0, sum_abs = 0;
          for (int64_t c = 0; c < cols; ++c) {
            want += double{xf[i * cols + c]} * wf[r * cols + c];
            sum_abs += std::fabs(double{xf[i * cols + c]} * wf[r * cols + c]);
          }
          const double f32 = cols * 0x1p-24 * sum_abs;
          const double tol = f32 + u_act * (std::fabs(want) + f32) + 0x1p-24;
          ASSERT_NEAR(got[i * rows + r], want, tol)
              << DTypeName(type) << (bf16 ? " bf16" : " f16") << " at (" << i << ", " << r << ")";
        }
      }
      for (auto* b : {&*x, &*y, &*y32}) be->Free(*b);
    }
  }
}

// The elementwise ops the backend maps onto one launcher: each element one f32 operation on the
// f16 inputs, rounded once to f16.
TEST(CudaBackendTest, ElementwiseOpsRoundOnce) {
  auto be = MakeBackend();
  ASSERT_NE(be, nullptr);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  const int rows = 3, dim = 40, n = rows * dim;
  std::vector<uint16_t> x(n), y(n);
  std::vector<float> bias(dim);
  for (int i = 0; i < n; ++i) {
    x[i] = FloatToHalf(u(rng));
    y[i] = FloatToHalf(u(rng));
  }
  for (float& b : bias) b = u(rng);
  const Stream s = be->DefaultStream();
  auto dx = be->Allocate(n * 2), dy = be->Allocate(n * 2), db = be->Allocate(dim * 4);
  ASSERT_TRUE(dx.ok() && dy.ok() && db.ok());
  be->CopyToDevice(dx->ptr, x.data(), n * 2, s);
  be->CopyToDevice(dy->ptr, y.data(), n * 2, s);
  be->CopyToDevice(db->ptr, bias.data(), dim * 4, s);
  auto* px = static_cast<float*>(dx->ptr);
  be->AddBias(px, static_cast<const float*>(db->ptr), rows, dim, s);
  be->Add(px, static_cast<const float*>(dy->ptr), n, s);
  be->Scale(px, 0.75f, n, s);
  std::vector<uint16_t> got(n);
  be->CopyToHost(got.data(), px, n * 2, s);
  be->Synchronize(s);
  for (int i = 0; i < n; ++i) {
    const float a = HalfToFloat(FloatToHalf(HalfToFloat(x[i]) + bias[i % dim]));
    const float b = HalfToFloat(FloatToHalf(a + HalfToFloat(y[i])));
    EXPECT_EQ(HalfToFloat(got[i]), HalfToFloat(FloatToHalf(b * 0.75f))) << i;
  }
  for (auto* b : {&*dx, &*dy, &*db}) be->Free(*b);
}

TEST(CudaBackendTest, StepScratchIsChecked) {
  auto be = MakeBackend();
  ASSERT_NE(be, nullptr);
  StepShape shape;
  EXPECT_EQ(be->ReserveStepScratch(shape).code(), absl::StatusCode::kInvalidArgument);
  shape = {16, 4, 32, 4096};
  EXPECT_TRUE(be->ReserveStepScratch(shape).ok());
  shape = {8, 2, 16, 128};  // smaller: keeps the larger reservation
  EXPECT_TRUE(be->ReserveStepScratch(shape).ok());
}

// The attention workspace reserved for StepShape serves a decode step of max_tokens tokens deep
// in a long context (longer splits) and a single decode token at the longest context (default
// splits); a prefill chunk takes the tiled kernel; all against AttentionRef.
TEST(CudaBackendTest, AttentionWorkspaceFitsEveryStepOfTheReservedShape) {
  auto be = MakeBackend(ActivationDType::kF16);
  ASSERT_NE(be, nullptr);
  // 80 tokens of 5 default splits each need 400 splits of workspace; the reservation holds
  // max(64 x 5, 80 x 4) = 320, so that step must run in longer splits.
  const int n_heads = 4, n_kv = 2, hd = 32, bs = 16, max_ctx = 1100, max_tokens = 80;
  ASSERT_TRUE(be->ReserveStepScratch({max_tokens, n_heads, hd, max_ctx}).ok());
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  KvCacheView cache;
  cache.dtype = KvDType::kF16;
  cache.n_layers = 1;
  cache.n_blocks = (max_ctx + bs - 1) / bs;
  cache.block_size = bs;
  cache.n_kv_heads = n_kv;
  cache.head_dim = hd;
  const size_t cache_elems = static_cast<size_t>(cache.n_blocks) * n_kv * bs * hd;
  std::vector<uint16_t> k(cache_elems), v(cache_elems);
  for (auto* a : {&k, &v}) {
    for (uint16_t& e : *a) e = FloatToHalf(u(rng));
  }
  const Stream s = be->DefaultStream();
  std::vector<DeviceBuffer> bufs;
  auto upload = [&](const void* host, size_t bytes) {
    auto b = be->Allocate(bytes);
    EXPECT_TRUE(b.ok());
    bufs.push_back(*b);
    if (host != nullptr) be->CopyToDevice(b->ptr, host, bytes, s);
    return b->ptr;
  };
  cache.k = upload(k.data(), k.size() * 2);
  cache.v = upload(v.data(), v.size() * 2);
  // One table row per token: max_tokens sequences sharing their blocks (as a shared prefix),
  // each decoding one token, so the step is decode-heavy and takes the split-K kernel.
  std::vector<int32_t> table(static_cast<size_t>(max_tokens) * cache.n_blocks);
  for (size_t i = 0; i < table.size(); ++i) table[i] = cache.n_blocks - 1 - i % cache.n_blocks;
  const auto* d_table = static_cast<const int32_t*>(upload(table.data(), table.size() * 4));
  // The reference reads the same cache in host memory.
  KvCacheView host_cache = cache;
  host_cache.k = k.data();
  host_cache.v = v.data();
  // max_tokens decode tokens (split-K, longer splits), one decode token (split-K, default
  // splits), a chunk of max_tokens tokens of one sequence (the tiled prefill kernel).
  for (const auto& [n_tokens, one_seq] :
       {std::pair{max_tokens, false}, std::pair{1, false}, std::pair{max_tokens, true}}) {
    SCOPED_TRACE(::testing::Message() << n_tokens << (one_seq ? " tokens of one sequence" : ""));
    std::vector<int32_t> pos(n_tokens), seq(n_tokens);
    for (int t = 0; t < n_tokens; ++t) {
      pos[t] = max_ctx - n_tokens + t;
      seq[t] = one_seq ? 0 : t;
    }
    std::vector<float> qf(static_cast<size_t>(n_tokens) * n_heads * hd);
    std::vector<uint16_t> q(qf.size()), out(qf.size());
    for (size_t i = 0; i < qf.size(); ++i) {
      q[i] = FloatToHalf(u(rng));
      qf[i] = HalfToFloat(q[i]);
    }
    AttentionParams p;
    p.q = static_cast<const float*>(upload(q.data(), q.size() * 2));
    auto* d_out = static_cast<float*>(upload(nullptr, out.size() * 2));
    p.out = d_out;
    p.token_seq = static_cast<const int32_t*>(upload(seq.data(), seq.size() * 4));
    p.positions = static_cast<const int32_t*>(upload(pos.data(), pos.size() * 4));
    p.block_tables = d_table;
    p.n_tokens = n_tokens;
    p.n_seqs = one_seq ? 1 : n_tokens;
    p.max_blocks_per_seq = cache.n_blocks;
    p.n_heads = n_heads;
    p.n_kv_heads = n_kv;
    p.head_dim = hd;
    p.scale = 1.f / std::sqrt(static_cast<float>(hd));
    p.max_context = max_ctx;
    p.cache = cache;
    be->Attention(p, s);
    be->CopyToHost(out.data(), d_out, out.size() * 2, s);
    be->Synchronize(s);
    // The reference on the same (f16-rounded) inputs, in f32.
    std::vector<float> want(qf.size());
    AttentionParams r = p;
    r.q = qf.data();
    r.out = want.data();
    r.token_seq = seq.data();
    r.positions = pos.data();
    r.block_tables = table.data();
    r.cache = host_cache;
    ref::AttentionRef(r);
    for (size_t i = 0; i < want.size(); ++i) {
      // f16 output: half an ulp (2^-11 relative) plus the f32 merge's rounding.
      EXPECT_NEAR(HalfToFloat(out[i]), want[i], 2e-3 * std::fabs(want[i]) + 1e-5) << i;
    }
  }
  for (const DeviceBuffer& b : bufs) be->Free(b);
}

}  // namespace
}  // namespace tandem::kernels::cuda
