// kernels::Backend: the one interface between the model and a device (CPU cores or a GPU).
// It owns device memory, streams and events, and the ops a Llama-family forward pass needs.
// The model calls ops in order on one stream; a backend may run them asynchronously and
// only Synchronize() (or SynchronizeEvent) guarantees results are visible to the host. Events
// order work across streams: a KV transfer waits on the event a layer's KV append recorded,
// while the compute stream goes on with later layers.
//
// Thread safety: a Backend instance is driven by one thread (its instance's engine thread).
// Ops must not allocate on the hot path: buffers come from Allocate() at set-up time.
// Must not: know about requests, sequences' lifetimes or scheduling. Sequences appear only
// as block tables and positions inside one op's parameters.
#ifndef TANDEM_KERNELS_BACKEND_H_
#define TANDEM_KERNELS_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/quant.h"

namespace tandem::kernels {

// A weight matrix [rows, cols] (rows = output features, cols = input features), quantized
// along cols, as the backend chose to store it (it may repack it at PackWeight time, the
// TurboMind idea: the layout is chosen for the GEMM, the values stay quantized).
class Weight {
 public:
  virtual ~Weight() = default;
  DType type() const { return type_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }

 protected:
  Weight(DType type, int64_t rows, int64_t cols) : type_(type), rows_(rows), cols_(cols) {}

 private:
  DType type_;
  int64_t rows_;
  int64_t cols_;
};

// What the model does with a weight, so a backend may keep the layout each use reads (a GPU
// keeps GGUF rows for EmbeddingGather and a tensor-core layout for Matmul; the CPU reads one
// layout for both).
enum class WeightUse {
  kMatmul,  // Matmul only
  kGather,  // EmbeddingGather only
  kBoth,    // tied embeddings: the token table is also the output projection
};

// Host view of a weight as GGUF stores it: row-major, each row RowBytes(type, cols) bytes.
struct WeightDesc {
  DType type;
  int64_t rows;
  int64_t cols;
  const void* data;  // [rows, RowBytes(type, cols)]; must outlive PackWeight only
  std::string name;  // for error messages
  WeightUse use = WeightUse::kBoth;
};

enum class KvDType { kF32, kF16, kInt8 };

// Device storage of the paged KV cache. kvcache/ decides block ids; kernels only index.
// Invariant: a slot id is block * block_size + offset, 0 <= slot < n_blocks * block_size.
struct KvCacheView {
  KvDType dtype = KvDType::kF16;
  int n_layers = 0;
  int n_blocks = 0;
  int block_size = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  void* k = nullptr;  // [n_layers, n_blocks, n_kv_heads, block_size, head_dim] of dtype
  void* v = nullptr;  // same shape as k
  // int8 only: asymmetric per token per head, x = q * scale + zero with q in [0, 255].
  float* k_scale_zero = nullptr;  // [n_layers, n_blocks, n_kv_heads, block_size, 2]
  float* v_scale_zero = nullptr;  // same shape
};

// Bytes of one of the K/V/scale arrays of a KvCacheView with these dimensions.
size_t KvElemBytes(KvDType dtype);

enum class RopeStyle {
  kNormal,  // rotate adjacent pairs (x[2i], x[2i+1]): llama GGUFs (Q/K permuted at conversion)
  kNeox,    // rotate (x[i], x[i + d/2]): Qwen2, GPT-NeoX
};

struct RopeParams {
  float* q;                  // [n_tokens, n_heads, head_dim], rotated in place
  float* k;                  // [n_tokens, n_kv_heads, head_dim], rotated in place
  const int32_t* positions;  // [n_tokens]
  int n_tokens = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int rot_dim = 0;  // leading dims of each head that rotate (== head_dim for llama)
  float theta = 10000.f;
  RopeStyle style = RopeStyle::kNormal;
};

struct KvAppendParams {
  const float* k;        // [n_tokens, n_kv_heads, head_dim]
  const float* v;        // [n_tokens, n_kv_heads, head_dim]
  const int32_t* slots;  // [n_tokens] slot ids in the cache
  int n_tokens = 0;
  int layer = 0;
  KvCacheView cache;
};

// Causal attention over the paged cache, for a batch mixing prefill chunks and decode tokens
// of different sequences. A token at position p of sequence s attends to positions 0..p of s
// (with a sliding window, only the last `window` of them), which must already be in the cache
// (KvAppend runs first).
struct AttentionParams {
  const float* q;               // [n_tokens, n_heads, head_dim]
  float* out;                   // [n_tokens, n_heads, head_dim]
  const int32_t* token_seq;     // [n_tokens] row of block_tables for each token
  const int32_t* positions;     // [n_tokens] absolute position of each token
  const int32_t* block_tables;  // [n_seqs, max_blocks_per_seq] block ids
  int n_tokens = 0;
  int n_seqs = 0;
  // The row stride of block_tables. A sequence's table may be narrower than its row (the model
  // interleaves one table per KV layer group in a row): entries past a token's block are not
  // read.
  int max_blocks_per_seq = 0;
  int n_heads = 0;
  int n_kv_heads = 0;  // n_heads % n_kv_heads == 0 (GQA)
  int head_dim = 0;
  float scale = 1.f;  // usually 1 / sqrt(head_dim)
  int layer = 0;
  // Sliding-window attention (Gemma 2/3, Mistral): when > 0, a token at position p attends
  // only to positions j with p - j < window, i.e. j in [max(0, p - window + 1), p] (llama.cpp's
  // LLAMA_SWA_TYPE_STANDARD: masked iff p - j >= n_swa). 0: the whole causal context 0..p.
  // Block-table entries of blocks that hold no position of a token's window are not read
  // (they may be stale or -1), and the cost of a token is O(min(window, p + 1)).
  int window = 0;
  // An upper bound on the positions one token reads, max(pos + 1 - first) over the batch, which
  // the host knows without reading `positions` back (a GPU sizes its split-K grid by it).
  // 0: unknown, the backend assumes StepShape::max_context.
  int max_context = 0;
  KvCacheView cache;
};

// The largest step a model will run on a backend, given at set-up time so the backend sizes
// its ops' scratch (a GPU's attention workspace) then, not inside a step.
struct StepShape {
  int max_tokens = 0;  // tokens in one step (rows of every activation)
  int n_heads = 0;     // query heads
  int head_dim = 0;
  int max_context = 0;  // positions one token may attend to (the model's context length)
};

// An opaque ordered queue of work. CPU backends run each op before returning.
struct Stream {
  void* handle = nullptr;
};

// A point in a stream's work: recorded on one stream, waited on by another stream or the host.
// On a synchronous backend (the CPU) everything recorded has already happened.
struct Event {
  void* handle = nullptr;
};

// The dtype of activations between ops (the hidden state, Q/K/V, logits before sampling). The
// CPU keeps f32; GPU backends run f16 or bf16. Every float* of the ops below points at elements
// of this dtype on such a backend.
enum class ActivationDType { kF32, kF16, kBF16 };

// One token per row drawn on the device, so only the ids (and the requested logprobs) cross to
// the host. Per row, the filters run in model::Sampler's order (model/sampler.h), with
// l = the row's logits, NaN read as -inf:
//   * temperature == 0: greedy, the argmax of l, ties to the lowest id; top-k / top-p / min-p
//     do not apply and no random number is used. A row with no finite logit and no +inf gives 0.
//   * otherwise, if max(l) is not finite: the argmax as above (all -inf or NaN: id 0; +inf: the
//     first +inf, which takes all the mass). Else p_i = exp((l_i - max) / temperature), and
//     1. top-k keeps the k most likely (ties to the lower id);
//     2. top-p keeps the smallest prefix of those, in likelihood order (ties to the lower id),
//        whose mass is >= top_p times their mass (the mass after top-k, before min-p);
//     3. min-p keeps p_i >= min_p * p_max, evaluated exactly as
//        double(l_i) - double(max) >= double(temperature) * log(double(min_p)), so every
//        backend keeps the same tokens;
//     then the token is drawn from the survivors' renormalized p: u * (their mass) walked in
//     ascending id order, the first id whose running sum exceeds it.
// u is one uniform float in [0, 1) per row, from Philox4x32-10 (Salmon et al., SC'11, as in
// Random123) keyed by the row's seed (key = {seed low 32 bits, high 32 bits}) at counter
// {counter low 32, counter high 32, 0, 0}: the top 24 bits of the first output word times
// 2^-24. The sequence's step is the counter, so (seed, step) alone fixes the draw: no RNG state
// lives anywhere, and a sequence that moves between workers or backends draws the same numbers.
// kernels/ref/sample_ref.h is the definition. Penalties are not applied here: the logits come
// in already penalized (model::Sampler::ApplyPenalties on the host, for now).
struct SampleParams {
  const float* logits = nullptr;       // [rows, vocab] (activation dtype; penalties applied)
  const float* temperature = nullptr;  // [rows] f32, >= 0 and finite; 0 = greedy
  const int32_t* top_k = nullptr;      // [rows] >= 0; 0 (or >= vocab) = off
  const float* top_p = nullptr;        // [rows] f32 in (0, 1]; 1 = off
  const float* min_p = nullptr;        // [rows] f32 in [0, 1]; 0 = off
  const uint64_t* seed = nullptr;      // [rows] Philox key
  const uint64_t* counter = nullptr;   // [rows] Philox counter: the sequence's step
  int32_t* out_ids = nullptr;          // [rows] the sampled token ids
  float* out_logprobs = nullptr;       // [rows] f32 log_softmax(raw logits)[id], or null = none
  int rows = 0;
  int vocab = 0;
};

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string Name() const = 0;   // e.g. "cpu/avx512-vnni x2"
  virtual bool IsHostMemory() const = 0;  // device pointers are readable by the host

  // Memory. Allocation happens at set-up time, never inside a step.
  virtual absl::StatusOr<DeviceBuffer> Allocate(size_t bytes) = 0;
  virtual void Free(DeviceBuffer buffer) = 0;
  virtual void CopyToDevice(void* dst, const void* src, size_t bytes, Stream s) = 0;
  virtual void CopyToHost(void* dst, const void* src, size_t bytes, Stream s) = 0;
  virtual void Memset(void* dst, int value, size_t bytes, Stream s) = 0;

  // The dtype of activations (see ActivationDType).
  virtual ActivationDType activation_dtype() const = 0;

  // Streams and events. Streams and events are created at set-up time, like memory.
  virtual Stream DefaultStream() = 0;
  virtual absl::StatusOr<Stream> CreateStream() = 0;
  virtual void DestroyStream(Stream s) = 0;
  virtual void Synchronize(Stream s) = 0;
  virtual absl::StatusOr<Event> CreateEvent() = 0;
  virtual void DestroyEvent(Event e) = 0;
  // Marks the point `s` has reached; later waits on `e` wait for the work queued before it.
  virtual void RecordEvent(Event e, Stream s) = 0;
  // Work queued on `s` after this call starts once `e` has happened (the host does not block).
  virtual void StreamWaitEvent(Stream s, Event e) = 0;
  // Blocks the calling thread until `e` has happened.
  virtual void SynchronizeEvent(Event e) = 0;

  // Host work of a step that is not an op (sampling the step's rows on the host, say) spread
  // over the threads this backend already drives: fn(begin, end) runs for disjoint ranges
  // covering [0, n), all done when this returns. A GPU backend may run it on its host threads
  // or serially. fn must not call back into the backend.
  virtual void HostParallelFor(int n, absl::FunctionRef<void(int begin, int end)> fn) = 0;

  // Sizes op scratch for steps up to `shape` (set-up time; several calls keep the largest of
  // each field). ResourceExhausted when the device cannot hold it.
  virtual absl::Status ReserveStepScratch(const StepShape& shape) = 0;

  // Weights: copies (and may repack) a host weight into device memory.
  virtual absl::StatusOr<std::unique_ptr<Weight>> PackWeight(const WeightDesc& desc) = 0;
  // Readies this backend for ops on a weight that another backend packed, so instances on the
  // same kind of device share one copy (sizes scratch; set-up time, like PackWeight).
  // FailedPrecondition when `w` was packed for another kind of device.
  virtual absl::Status AdoptWeight(const Weight& w) = 0;

  // Ops. Pointers are device pointers; shapes are in the comments of each parameter.
  // y[m, w.rows] = x[m, w.cols] * w^T
  virtual void Matmul(const Weight& w, const float* x, int m, float* y, Stream s) = 0;
  // ys[i][m, ws[i].rows] = x[m, cols] * ws[i]^T for weights that share cols (q, k and v; gate
  // and up): one launch where the backend can make one (the CPU backend at decode sizes: one
  // hand-off to its threads instead of one per weight); by default a Matmul each.
  virtual void MatmulSameInput(std::span<const Weight* const> ws, const float* x, int m,
                               std::span<float* const> ys, Stream s) {
    for (size_t i = 0; i < ws.size(); ++i) Matmul(*ws[i], x, m, ys[i], s);
  }
  // out[n, w.cols] = dequantized rows ids[n] of w (embedding lookup)
  virtual void EmbeddingGather(const Weight& w, const int32_t* ids, int n, float* out,
                               Stream s) = 0;
  // out[rows, dim] = x / rms(x) * weight[dim]; out may alias x
  virtual void RmsNorm(const float* x, const float* weight, int rows, int dim, float eps,
                       float* out, Stream s) = 0;
  // x[rows, dim] += bias[dim]
  virtual void AddBias(float* x, const float* bias, int rows, int dim, Stream s) = 0;
  // x[n] += y[n]
  virtual void Add(float* x, const float* y, int64_t n, Stream s) = 0;
  // out[rows, dim] = silu(gate[rows, dim]) * up[rows, dim]
  virtual void SwiGlu(const float* gate, const float* up, int rows, int dim, float* out,
                      Stream s) = 0;
  // out[rows, dim] = gelu(gate[rows, dim]) * up[rows, dim], GELU's tanh approximation
  // gelu(x) = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) (ggml_gelu; Gemma's
  // gelu_pytorch_tanh); out may alias gate or up
  virtual void GeGlu(const float* gate, const float* up, int rows, int dim, float* out,
                     Stream s) = 0;
  // x[n] *= factor (Gemma's embedding scaling by sqrt(hidden))
  virtual void Scale(float* x, float factor, int64_t n, Stream s) = 0;
  // out[n] = x[n] as f32 (x of the activation dtype; out may equal x on an f32 backend, where
  // this is a copy or nothing): logits on their way to the host.
  virtual void ToF32(const float* x, int64_t n, float* out, Stream s) = 0;
  // out[n, dim] = x[idx[i], dim]
  virtual void GatherRows(const float* x, const int32_t* idx, int n, int dim, float* out,
                          Stream s) = 0;
  virtual void Rope(const RopeParams& p, Stream s) = 0;
  virtual void KvAppend(const KvAppendParams& p, Stream s) = 0;
  virtual void Attention(const AttentionParams& p, Stream s) = 0;
  // out_ids[r] (and out_logprobs[r]) for each row r of p.logits; see SampleParams for the
  // filters and the random number. Needs scratch sized by vocab, which a backend sets up when
  // it packs or adopts a weight with rows >= p.vocab (the output projection always is one).
  virtual void Sample(const SampleParams& p, Stream s) = 0;
};

}  // namespace tandem::kernels

#endif  // TANDEM_KERNELS_BACKEND_H_
