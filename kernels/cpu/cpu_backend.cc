#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "kernels/cpu/host_memory.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/sample.h"
#include "kernels/cpu/thread_pool.h"

namespace tandem::kernels::cpu {
namespace {

// Below this many multiply-adds a chunk is not worth handing to another thread. Measured
// on Zen 4 (decode, cache-resident Q4_1 weights, p50): 576x576 (332K MACs) 3.5 us on one
// thread, 3.25 us on two; 1536x576 (885K) 9.2 us vs 6.0 us. The hand-off costs ~1.5 us.
constexpr int64_t kMinChunkMacs = int64_t{1} << 17;
// Up to this many activation rows, every thread quantizes them itself (decode).
constexpr int64_t kSmallM = 4;
// Element-wise ops: items per chunk below which one thread does it all.
constexpr int64_t kMinChunkElems = 16384;

size_t RoundUp64(size_t n) { return (n + 63) / 64 * 64; }

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
using AlignedBytes = std::unique_ptr<uint8_t, AlignedFree>;

AlignedBytes AllocAligned(size_t bytes) {
  return AlignedBytes(
      static_cast<uint8_t*>(std::aligned_alloc(64, RoundUp64(std::max<size_t>(bytes, 1)))));
}

OpsIsa ToOpsIsa(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return OpsIsa::kScalar;
    case Isa::kAvx2:
      return OpsIsa::kAvx2;
    case Isa::kAvx512:
    case Isa::kAmx:
      return OpsIsa::kAvx512;
  }
  return OpsIsa::kScalar;
}

// A weight in host memory: quantized types in the packed layout of matmul.h, float types as
// GGUF rows. The layout does not depend on the ISA or on the backend, so every CpuBackend
// can read a weight any of them packed (AdoptWeight sizes its scratch first); `magic` lets
// ops check that a Weight is a CpuWeight at all.
class CpuWeight : public Weight {
 public:
  static constexpr uint64_t kMagic = 0x7461'6e64'6370'7577;  // "tandcpuw"
  CpuWeight(DType type, int64_t rows, int64_t cols, HostSlice data, PackedLayout layout)
      : Weight(type, rows, cols), data_(std::move(data)), layout_(layout) {}
  bool valid() const { return magic_ == kMagic; }
  const uint8_t* data() const { return data_.data; }
  const PackedLayout& layout() const { return layout_; }

 private:
  const uint64_t magic_ = kMagic;
  HostSlice data_;       // in a region of the uploading backend's weight arena
  PackedLayout layout_;  // quantized types only
};

class CpuBackend : public Backend {
 public:
  CpuBackend(const CpuBackendConfig& config, std::unique_ptr<ThreadPool> pool)
      : config_(config), pool_(std::move(pool)) {
    SetOpsIsa(ToOpsIsa(config.isa));
  }

  std::string Name() const override {
    return absl::StrCat("cpu/", IsaName(config_.isa), " x", config_.threads);
  }
  bool IsHostMemory() const override { return true; }

  absl::StatusOr<DeviceBuffer> Allocate(size_t bytes) override {
    void* p = AllocateHostBuffer(bytes);
    if (p == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes"));
    }
    return DeviceBuffer{p, bytes};
  }
  void Free(DeviceBuffer buffer) override { FreeHostBuffer(buffer.ptr, buffer.bytes); }
  void CopyToDevice(void* dst, const void* src, size_t bytes, Stream) override {
    std::memcpy(dst, src, bytes);
  }
  void CopyToHost(void* dst, const void* src, size_t bytes, Stream) override {
    std::memcpy(dst, src, bytes);
  }
  void Memset(void* dst, int value, size_t bytes, Stream) override {
    std::memset(dst, value, bytes);
  }
  ActivationDType activation_dtype() const override { return ActivationDType::kF32; }

  // Every op has finished when its call returns, so streams are all the one stream and every
  // event has happened by the time anyone can wait on it.
  Stream DefaultStream() override { return Stream{}; }
  absl::StatusOr<Stream> CreateStream() override { return Stream{}; }
  void DestroyStream(Stream) override {}
  void Synchronize(Stream) override {}
  absl::StatusOr<Event> CreateEvent() override { return Event{}; }
  void DestroyEvent(Event) override {}
  void RecordEvent(Event, Stream) override {}
  void StreamWaitEvent(Stream, Event) override {}
  void SynchronizeEvent(Event) override {}

  void HostParallelFor(int n, absl::FunctionRef<void(int begin, int end)> fn) override {
    pool_->ParallelFor(
        n, [&](int64_t b, int64_t e, int) { fn(static_cast<int>(b), static_cast<int>(e)); });
  }

  // The CPU's op scratch is sized by PackWeight (activations) and here (split attention's
  // states, prefill's query tiles); attention's other scratch is on the stack.
  absl::Status ReserveStepScratch(const StepShape& shape) override {
    const int64_t floats = AttentionSplitScratchFloats(
        pool_->size(), shape.max_tokens, shape.n_heads, shape.head_dim, shape.max_context);
    if (static_cast<int64_t>(split_scratch_.size()) < floats) split_scratch_.resize(floats);
    if (tile_starts_.size() < static_cast<size_t>(shape.max_tokens) + 1) {
      tile_starts_.resize(shape.max_tokens + 1);
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::unique_ptr<Weight>> PackWeight(const WeightDesc& desc) override;
  absl::Status AdoptWeight(const Weight& w) override;
  void Matmul(const Weight& w, const float* x, int m, float* y, Stream s) override;
  void MatmulSameInput(std::span<const Weight* const> ws, const float* x, int m,
                       std::span<float* const> ys, Stream s) override;
  void EmbeddingGather(const Weight& w, const int32_t* ids, int n, float* out, Stream s) override;

  void RmsNorm(const float* x, const float* weight, int rows, int dim, float eps, float* out,
               Stream) override {
    pool_->ParallelFor(rows, RowsPerChunk(dim), [&](int64_t b, int64_t e, int) {
      RmsNormRange(x, weight, dim, eps, out, b, e);
    });
  }
  void AddBias(float* x, const float* bias, int rows, int dim, Stream) override {
    pool_->ParallelFor(rows, RowsPerChunk(dim),
                       [&](int64_t b, int64_t e, int) { AddBiasRange(x, bias, dim, b, e); });
  }
  void Add(float* x, const float* y, int64_t n, Stream) override {
    pool_->ParallelFor(n, kMinChunkElems, [&](int64_t b, int64_t e, int) { AddRange(x, y, b, e); });
  }
  void SwiGlu(const float* gate, const float* up, int rows, int dim, float* out, Stream) override {
    // exp() makes each element ~4x the work of an add.
    pool_->ParallelFor(rows, std::max<int64_t>(1, RowsPerChunk(dim) / 4),
                       [&](int64_t b, int64_t e, int) { SwiGluRange(gate, up, dim, out, b, e); });
  }
  void GeGlu(const float* gate, const float* up, int rows, int dim, float* out, Stream) override {
    // Like SwiGlu: an exp and a division per element.
    pool_->ParallelFor(rows, std::max<int64_t>(1, RowsPerChunk(dim) / 4),
                       [&](int64_t b, int64_t e, int) { GeGluRange(gate, up, dim, out, b, e); });
  }
  void Scale(float* x, float factor, int64_t n, Stream) override {
    pool_->ParallelFor(n, kMinChunkElems,
                       [&](int64_t b, int64_t e, int) { ScaleRange(x, factor, b, e); });
  }
  void ToF32(const float* x, int64_t n, float* out, Stream) override {
    if (out != x) std::memcpy(out, x, static_cast<size_t>(n) * sizeof(float));
  }
  void GatherRows(const float* x, const int32_t* idx, int n, int dim, float* out, Stream) override {
    pool_->ParallelFor(n, RowsPerChunk(dim),
                       [&](int64_t b, int64_t e, int) { GatherRowsRange(x, idx, dim, out, b, e); });
  }
  void Rope(const RopeParams& p, Stream) override {
    const int64_t per_token = static_cast<int64_t>(p.n_heads + p.n_kv_heads) * p.rot_dim * 4;
    pool_->ParallelFor(p.n_tokens, RowsPerChunk(per_token),
                       [&](int64_t b, int64_t e, int) { RopeRange(p, b, e); });
  }
  void KvAppend(const KvAppendParams& p, Stream) override {
    const int64_t per_token = static_cast<int64_t>(p.cache.n_kv_heads) * p.cache.head_dim * 2;
    pool_->ParallelFor(p.n_tokens, RowsPerChunk(per_token),
                       [&](int64_t b, int64_t e, int) { KvAppendRange(p, b, e); });
  }
  void Attention(const AttentionParams& p, Stream) override {
    // Three ways to share the work (kernels/README.md, "Attention"): a decode step with too
    // few (token, kv_head) items for the threads splits each item's context; a step with runs
    // of consecutive tokens (prefill) goes by query tiles where this ISA has a tiled kernel;
    // anything else by items, where even one item per thread is worth handing out (an item
    // reads its whole context).
    const int splits = AttentionSplitCount(p, pool_->size());
    if (splits <= 1 && p.n_tokens > 1 && AttentionTilesPay(p)) {
      // Prefill chunks: tiles of consecutive tokens share their K/V reads.
      // Sized by ReserveStepScratch; grown here only for a caller that did not reserve.
      if (tile_starts_.size() < static_cast<size_t>(p.n_tokens) + 1) {
        tile_starts_.resize(p.n_tokens + 1);
      }
      AttentionTiles tiles;
      tiles.starts = tile_starts_.data();
      tiles.n_tiles = AttentionQueryTiles(p, tile_starts_.data());
      if (tiles.n_tiles < p.n_tokens) {
        pool_->ParallelFor(static_cast<int64_t>(tiles.n_tiles) * p.n_kv_heads, 1,
                           [&](int64_t b, int64_t e, int) { AttentionTileRange(p, tiles, b, e); });
        return;
      }
    }
    if (splits <= 1) {
      pool_->ParallelFor(AttentionItems(p), 1,
                         [&](int64_t b, int64_t e, int) { AttentionRange(p, b, e); });
      return;
    }
    // Few items (a decode step of one or a few sequences): split each one's context so that
    // every thread gets the same share, then merge on this thread (a few KiB of states).
    const int64_t units = AttentionItems(p) * splits;
    const int64_t heads = units * (p.n_heads / p.n_kv_heads);
    const size_t floats = static_cast<size_t>(heads) * (p.head_dim + 2);
    // Sized by ReserveStepScratch; grown here only for a caller that did not reserve.
    if (split_scratch_.size() < floats) split_scratch_.resize(floats);
    AttentionSplits s;
    s.n_splits = splits;
    s.acc = split_scratch_.data();
    s.max = s.acc + heads * p.head_dim;
    s.sum = s.max + heads;
    pool_->ParallelFor(units, 1,
                       [&](int64_t b, int64_t e, int) { AttentionSplitRange(p, s, b, e); });
    AttentionMergeRange(p, s, 0, AttentionItems(p));
  }
  void Sample(const SampleParams& p, Stream) override;

 private:
  static int64_t RowsPerChunk(int64_t elems_per_row) {
    return std::max<int64_t>(1, kMinChunkElems / std::max<int64_t>(1, elems_per_row));
  }
  void EnsureScratch(int64_t cols);
  // Sizes each thread's sampling scratch for rows of `vocab` logits (PackWeight / AdoptWeight
  // call it with the weight's rows: the output projection's rows are the vocabulary).
  void EnsureSampleScratch(int64_t vocab);
  // Scratch rows [first_row, ...) viewed as quantized activations of `cols` columns.
  QuantizedActs ScratchView(int64_t first_row, int64_t cols) const;
  // Splits rows [0, m) x units [0, n_units) (16-row groups) into items for the pool and
  // calls fn(m0, m1, u0, u1, thread) on each contiguous run.
  template <typename Fn>
  void ParallelGemm(int64_t m, int64_t n_units, int64_t cols, Fn&& fn);
  // Decode (m <= kSmallM) of up to kMaxFused quantized weights of equal cols:
  // ys[i] = x * ws[i]^T, their row groups one weight after another in one thread hand-off.
  static constexpr size_t kMaxFused = 4;
  void DecodeMatmuls(std::span<const Weight* const> ws, const float* x, int m,
                     std::span<float* const> ys);

  // Constant after construction.
  const CpuBackendConfig config_;
  const std::unique_ptr<ThreadPool> pool_;

  // Packed weights, several to a huge-page region (a weight keeps its region alive after
  // the backend is gone: weights may outlive the backend that packed them).
  HostArena weight_arena_;

  // Activation scratch, grown only by PackWeight: rows [0, max_batch_tokens + 16) are shared
  // (quantized once, read by every thread); then kSmallM private rows per thread.
  int64_t scratch_cols_ = 0;
  AlignedBytes q_;
  AlignedBytes d_;
  AlignedBytes s_;
  AlignedBytes bias_;

  // Sampling scratch, grown only by PackWeight and AdoptWeight: one SampleScratch per thread
  // for up to sample_vocab_ logits per row.
  int64_t sample_vocab_ = 0;
  AlignedBytes sample_mem_;
  std::vector<SampleScratch> sample_scratch_;

  // Split attention's per-unit softmax states (AttentionSplits), sized by ReserveStepScratch
  // for the largest step; a decode step of one sequence needs a few KiB.
  std::vector<float> split_scratch_;
  // Query tiles of a prefill step (AttentionTiles::starts), sized by ReserveStepScratch.
  std::vector<int32_t> tile_starts_;
};

QuantizedActs CpuBackend::ScratchView(int64_t first_row, int64_t cols) const {
  const int64_t nb = cols / kQuantBlock;
  return QuantizedActs{reinterpret_cast<int8_t*>(q_.get()) + first_row * cols,
                       reinterpret_cast<float*>(d_.get()) + first_row * nb,
                       reinterpret_cast<float*>(s_.get()) + first_row * nb,
                       reinterpret_cast<int32_t*>(bias_.get()) + first_row * nb,
                       cols,
                       nb};
}

void CpuBackend::EnsureScratch(int64_t cols) {
  if (cols <= scratch_cols_) return;
  const int64_t rows = config_.max_batch_tokens + kGroupRows + int64_t{config_.threads} * kSmallM;
  const int64_t nb = cols / kQuantBlock;
  q_ = AllocAligned(rows * cols);
  d_ = AllocAligned(rows * nb * sizeof(float));
  s_ = AllocAligned(rows * nb * sizeof(float));
  bias_ = AllocAligned(rows * nb * sizeof(int32_t));
  TANDEM_CHECK(q_ && d_ && s_ && bias_);
  // The AMX kernel may read whole 16-row tiles; keep unused rows defined.
  std::memset(q_.get(), 0, rows * cols);
  scratch_cols_ = cols;
}

void CpuBackend::EnsureSampleScratch(int64_t vocab) {
  if (vocab <= sample_vocab_) return;
  TANDEM_CHECK_LE(vocab, int64_t{std::numeric_limits<int>::max()});
  const int v = static_cast<int>(vocab);
  const size_t per_thread = SampleScratchBytes(v);
  sample_mem_ = AllocAligned(per_thread * pool_->size());
  TANDEM_CHECK(sample_mem_);
  sample_scratch_.clear();
  for (int t = 0; t < pool_->size(); ++t) {
    sample_scratch_.push_back(SampleScratchAt(sample_mem_.get() + t * per_thread, v));
  }
  sample_vocab_ = vocab;
}

void CpuBackend::Sample(const SampleParams& p, Stream) {
  TANDEM_CHECK_GE(p.rows, 0);
  TANDEM_CHECK_GE(p.vocab, 1);
  // The scratch comes from packing or adopting the weight that produced these logits.
  TANDEM_CHECK_LE(p.vocab, sample_vocab_);
  if (p.rows == 0) return;
  TANDEM_CHECK(p.logits && p.temperature && p.top_k && p.top_p && p.min_p && p.seed && p.counter &&
               p.out_ids);
  // A row is a few passes over the vocabulary (an exp each): rows are worth splitting once
  // they are a few thousand entries long.
  pool_->ParallelFor(p.rows, RowsPerChunk(int64_t{p.vocab} * 4),
                     [&](int64_t b, int64_t e, int t) { SampleRows(p, b, e, sample_scratch_[t]); });
}

absl::StatusOr<std::unique_ptr<Weight>> CpuBackend::PackWeight(const WeightDesc& desc) {
  if (!IsSupported(desc.type)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight ", desc.name, ": unsupported type ", static_cast<int>(desc.type)));
  }
  if (desc.rows <= 0 || desc.cols <= 0 || desc.cols % BlockElems(desc.type) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("weight ", desc.name, ": bad shape [", desc.rows,
                                                   ", ", desc.cols, "] for type ",
                                                   std::string(DTypeName(desc.type))));
  }
  if (desc.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("weight ", desc.name, ": no data"));
  }
  PackedLayout layout;
  HostSlice data;
  if (IsQuantized(desc.type)) {
    layout = MakePackedLayout(desc.type, desc.rows, desc.cols);
    data = weight_arena_.Allocate(layout.total_bytes());
    if (data.data == nullptr)
      return absl::ResourceExhaustedError(absl::StrCat("weight ", desc.name, ": out of memory"));
    PackQuantized(layout, desc.data, data.data);
    EnsureScratch(desc.cols);
  } else {
    const size_t bytes = desc.rows * RowBytes(desc.type, desc.cols);
    data = weight_arena_.Allocate(bytes);
    if (data.data == nullptr)
      return absl::ResourceExhaustedError(absl::StrCat("weight ", desc.name, ": out of memory"));
    std::memcpy(data.data, desc.data, bytes);
  }
  EnsureSampleScratch(desc.rows);
  return std::make_unique<CpuWeight>(desc.type, desc.rows, desc.cols, std::move(data), layout);
}

absl::Status CpuBackend::AdoptWeight(const Weight& w) {
  // Weight has a virtual destructor, so RTTI can tell a CpuWeight from another backend's.
  const auto* cw = dynamic_cast<const CpuWeight*>(&w);
  if (cw == nullptr || !cw->valid()) {
    return absl::FailedPreconditionError("the weight was packed by another kind of backend");
  }
  if (IsQuantized(cw->type())) EnsureScratch(cw->cols());
  EnsureSampleScratch(cw->rows());
  return absl::OkStatus();
}

template <typename Fn>
void CpuBackend::ParallelGemm(int64_t m, int64_t n_units, int64_t cols, Fn&& fn) {
  const int threads = pool_->size();
  // Split m only when there are too few row groups to keep every thread busy.
  int64_t n_mt = 1;
  if (threads > 1 && n_units < 4 * threads && m >= 2 * kGroupRows) {
    n_mt =
        std::min<int64_t>((m + kGroupRows - 1) / kGroupRows, (4 * threads + n_units - 1) / n_units);
  }
  const int64_t mt_rows = ((m + n_mt - 1) / n_mt + kGroupRows - 1) / kGroupRows * kGroupRows;
  n_mt = (m + mt_rows - 1) / mt_rows;
  const int64_t item_macs = std::min(mt_rows, m) * kGroupRows * cols;
  const int64_t min_chunk = std::max<int64_t>(1, kMinChunkMacs / std::max<int64_t>(1, item_macs));
  pool_->ParallelFor(n_mt * n_units, min_chunk, [&](int64_t b, int64_t e, int thread) {
    while (b < e) {
      const int64_t mt = b / n_units;
      const int64_t u0 = b % n_units;
      const int64_t u1 = std::min(n_units, u0 + (e - b));
      fn(mt * mt_rows, std::min(m, (mt + 1) * mt_rows), u0, u1, thread);
      b += u1 - u0;
    }
  });
}

void CpuBackend::Matmul(const Weight& w, const float* x, int m, float* y, Stream) {
  const auto& cw = static_cast<const CpuWeight&>(w);
  TANDEM_CHECK(cw.valid());
  TANDEM_CHECK_GE(m, 0);
  if (m == 0) return;
  const Isa isa = config_.isa;
  const int64_t cols = cw.cols();
  const int64_t rows = cw.rows();
  const int64_t n_groups = (rows + kGroupRows - 1) / kGroupRows;
  if (!IsQuantized(cw.type())) {
    const FloatGemmArgs args{cw.type(), cw.data(), cols, x, y, rows};
    ParallelGemm(m, n_groups, cols, [&](int64_t m0, int64_t m1, int64_t g0, int64_t g1, int) {
      FloatGemm(isa, args, m0, m1, g0 * kGroupRows, std::min(rows, g1 * kGroupRows));
    });
    return;
  }
  TANDEM_CHECK_LE(cols, scratch_cols_);
  const int32_t offset = ActOffset(cw.type(), isa);
  if (m <= kSmallM) {
    const Weight* one[] = {&w};
    float* const out[] = {y};
    DecodeMatmuls(one, x, m, out);
    return;
  }
  const QuantizedActs acts = ScratchView(0, cols);
  for (int64_t base = 0; base < m; base += config_.max_batch_tokens) {
    const int64_t mc = std::min<int64_t>(config_.max_batch_tokens, m - base);
    const float* xc = x + base * cols;
    pool_->ParallelFor(mc, RowsPerChunk(cols), [&](int64_t b, int64_t e, int) {
      QuantizeActs(isa, xc, offset, acts, b, e);
    });
    const QuantGemmArgs args{&cw.layout(), cw.data(), &acts, y + base * rows, rows};
    ParallelGemm(mc, n_groups, cols, [&](int64_t m0, int64_t m1, int64_t g0, int64_t g1, int) {
      QuantGemm(isa, args, m0, m1, g0, g1);
    });
  }
}

void CpuBackend::MatmulSameInput(std::span<const Weight* const> ws, const float* x, int m,
                                 std::span<float* const> ys, Stream s) {
  TANDEM_CHECK_EQ(ws.size(), ys.size());
  bool fuse = m > 0 && m <= kSmallM && ws.size() > 1 && ws.size() <= kMaxFused;
  for (size_t i = 0; fuse && i < ws.size(); ++i) {
    const auto& cw = static_cast<const CpuWeight&>(*ws[i]);
    fuse = IsQuantized(cw.type()) && cw.cols() == static_cast<const CpuWeight&>(*ws[0]).cols();
  }
  if (!fuse) {
    for (size_t i = 0; i < ws.size(); ++i) Matmul(*ws[i], x, m, ys[i], s);
    return;
  }
  DecodeMatmuls(ws, x, m, ys);
}

void CpuBackend::DecodeMatmuls(std::span<const Weight* const> ws, const float* x, int m,
                               std::span<float* const> ys) {
  TANDEM_CHECK_LE(ws.size(), kMaxFused);
  const Isa isa = config_.isa;
  const int64_t cols = static_cast<const CpuWeight&>(*ws[0]).cols();
  TANDEM_CHECK_LE(cols, scratch_cols_);
  std::array<int64_t, kMaxFused + 1> first{};  // first[i]: weight i's first unit
  for (size_t i = 0; i < ws.size(); ++i) {
    first[i + 1] = first[i] + static_cast<const CpuWeight&>(*ws[i]).layout().n_groups;
  }
  // Each thread quantizes the few activation rows itself, into its own scratch, which saves
  // a serial step before the hand-off and the activations' trip across cores (measured:
  // 1536x576 Q4_1 on two threads, 7.2 -> 6.0 us); again only where the weights' activation
  // offsets differ (K-quant layers mix types).
  ParallelGemm(m, first[ws.size()], cols,
               [&](int64_t m0, int64_t m1, int64_t u0, int64_t u1, int thread) {
                 const QuantizedActs own =
                     ScratchView(config_.max_batch_tokens + kGroupRows + thread * kSmallM, cols);
                 int32_t quantized_offset = 0;
                 bool quantized = false;
                 for (size_t i = 0; i < ws.size(); ++i) {
                   const int64_t g0 = std::max(u0, first[i]) - first[i];
                   const int64_t g1 = std::min(u1, first[i + 1]) - first[i];
                   if (g0 >= g1) continue;
                   const auto& cw = static_cast<const CpuWeight&>(*ws[i]);
                   const int32_t offset = ActOffset(cw.type(), isa);
                   if (!quantized || offset != quantized_offset) {
                     QuantizeActs(isa, x, offset, own, m0, m1);
                     quantized_offset = offset;
                     quantized = true;
                   }
                   const QuantGemmArgs args{&cw.layout(), cw.data(), &own, ys[i], cw.rows()};
                   QuantGemm(isa, args, m0, m1, g0, g1);
                 }
               });
}

void CpuBackend::EmbeddingGather(const Weight& w, const int32_t* ids, int n, float* out, Stream) {
  const auto& cw = static_cast<const CpuWeight&>(w);
  TANDEM_CHECK(cw.valid());
  const int64_t cols = cw.cols();
  pool_->ParallelFor(n, RowsPerChunk(cols), [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      TANDEM_CHECK(ids[i] >= 0 && ids[i] < cw.rows());
      if (IsQuantized(cw.type())) {
        DequantizePackedRow(cw.layout(), cw.data(), ids[i], out + i * cols);
      } else {
        DequantizeRow(cw.type(), cw.data() + ids[i] * RowBytes(cw.type(), cols), cols,
                      out + i * cols);
      }
    }
  });
}

// The AMX kernel cannot be tested on machines without AMX, so before a backend uses it we
// check it once against the AVX-512 VNNI kernel on a small random problem of every
// quantized type. Both compute the same integer dot products; only fp32 rounding differs.
absl::Status CheckAmxAgainstAvx512() {
  constexpr int64_t kRows = 48, kCols = 128, kM = 32;
  std::vector<float> wf(kRows * kCols), x(kM * kCols);
  uint32_t state = 12345;
  auto next = [&state] {
    state = state * 1664525u + 1013904223u;
    return static_cast<float>(static_cast<int32_t>(state >> 8) - (1 << 23)) / (1 << 23);
  };
  for (auto& v : wf) v = next();
  for (auto& v : x) v = next();
  for (DType type : {DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ8_0}) {
    const int64_t row_bytes = RowBytes(type, kCols);
    std::vector<uint8_t> gguf(kRows * row_bytes);
    for (int64_t r = 0; r < kRows; ++r) {
      QuantizeRow(type, wf.data() + r * kCols, kCols, gguf.data() + r * row_bytes);
    }
    const PackedLayout layout = MakePackedLayout(type, kRows, kCols);
    AlignedBytes packed = AllocAligned(layout.total_bytes());
    PackQuantized(layout, gguf.data(), packed.get());
    std::vector<float> y_ref(kM * kRows), y_amx(kM * kRows);
    for (Isa isa : {Isa::kAvx512, Isa::kAmx}) {
      const int64_t nb = kCols / kQuantBlock;
      AlignedBytes q = AllocAligned(kM * kCols);
      std::vector<float> d(kM * nb), s(kM * nb);
      std::vector<int32_t> bias(kM * nb);
      const QuantizedActs acts{
          reinterpret_cast<int8_t*>(q.get()), d.data(), s.data(), bias.data(), kCols, nb};
      QuantizeActs(isa, x.data(), ActOffset(type, isa), acts, 0, kM);
      float* y = isa == Isa::kAmx ? y_amx.data() : y_ref.data();
      const QuantGemmArgs args{&layout, packed.get(), &acts, y, kRows};
      QuantGemm(isa, args, 0, kM, 0, layout.n_groups);
    }
    float max_ref = 0, max_err = 0;
    for (size_t i = 0; i < y_ref.size(); ++i) {
      max_ref = std::max(max_ref, std::fabs(y_ref[i]));
      max_err = std::max(max_err, std::fabs(y_ref[i] - y_amx[i]));
    }
    if (!(max_err <= 1e-5f * max_ref)) {
      return absl::InternalError(absl::StrCat(
          "cpu backend: the AMX GEMM disagrees with AVX-512 on ", std::string(DTypeName(type)),
          " (max error ", max_err, " of ", max_ref, "); run with isa=avx512"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateCpuBackendConfig(const CpuBackendConfig& config) {
  if (config.threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cpu backend: threads must be >= 1, got ", config.threads));
  }
  if (!config.cpus.empty() && static_cast<int>(config.cpus.size()) != config.threads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cpu backend: ", config.cpus.size(), " CPUs listed for ", config.threads, " threads"));
  }
  if (!IsaAvailable(config.isa)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cpu backend: ISA ", IsaName(config.isa),
                     " is not available on this CPU (best: ", IsaName(BestIsa()), ")"));
  }
  if (!OpsIsaSupported(ToOpsIsa(config.isa))) {
    return absl::FailedPreconditionError(
        absl::StrCat("cpu backend: ops have no variant for ISA ", IsaName(config.isa)));
  }
  if (config.max_batch_tokens < 1) {
    return absl::InvalidArgumentError("cpu backend: max_batch_tokens must be >= 1");
  }
  if (config.spin_us < 0) return absl::InvalidArgumentError("cpu backend: spin_us must be >= 0");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const CpuBackendConfig& config) {
  TANDEM_RETURN_IF_ERROR(ValidateCpuBackendConfig(config));
  if (config.isa == Isa::kAmx) {
    static const absl::Status amx_status = CheckAmxAgainstAvx512();
    TANDEM_RETURN_IF_ERROR(amx_status);
  }
  ThreadPoolOptions options;
  options.threads = config.threads;
  options.cpus = config.cpus;
  options.spin_us = config.spin_us;
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<ThreadPool> pool, ThreadPool::Create(options));
  return std::make_unique<CpuBackend>(config, std::move(pool));
}

}  // namespace tandem::kernels::cpu
