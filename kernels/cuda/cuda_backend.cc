// CudaBackend (cuda_backend.h). Memory, streams and events are the only parts that differ
// between the GPU build and the harness build (the two Device* sections below); every op is
// the same launcher call in both.
#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/check.h"
#include "common/str_cat.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/dense_matmul.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/glu.h"
#include "kernels/cuda/kv_append.h"
#include "kernels/cuda/quant_matmul.h"
#include "kernels/cuda/rms_norm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/sample.h"
#include "kernels/quant.h"

#if !defined(TANDEM_CUDA_EMU)
#include <cuda_runtime_api.h>

#include "kernels/cuda/cublas_gemm.h"
#endif

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {
namespace {

#if defined(TANDEM_CUDA_EMU)
// ---------------------------------------------------------------------------------------------
// The harness: "device" memory is host memory and every launch has finished when it returns,
// so streams and events are names only (as on the CPU backend).
constexpr char kKind[] = "cuda-emu";
constexpr uint64_t kWeightMagic = 0x7461'6e64'6375'6565;  // "tandcuee"

absl::StatusOr<void*> DeviceAlloc(size_t bytes) {
  void* p = std::aligned_alloc(256, (std::max<size_t>(bytes, 1) + 255) / 256 * 256);
  if (p == nullptr) return absl::ResourceExhaustedError(StrCat("cannot allocate ", bytes));
  return p;
}
void DeviceFree(void* p) { std::free(p); }
void CopyAsync(void* dst, const void* src, size_t bytes, Stream) { std::memcpy(dst, src, bytes); }
void SetAsync(void* dst, int value, size_t bytes, Stream) { std::memset(dst, value, bytes); }
absl::StatusOr<Stream> NewStream() { return Stream{}; }
void DeleteStream(Stream) {}
void WaitStream(Stream) {}
absl::StatusOr<Event> NewEvent() { return Event{}; }
void DeleteEvent(Event) {}
void Record(Event, Stream) {}
void StreamWait(Stream, Event) {}
void WaitEvent(Event) {}
absl::StatusOr<std::string> OpenDevice(int device) {
  if (device != 0) {
    return absl::FailedPreconditionError(
        StrCat("the CUDA-on-CPU harness has one device, 0; asked for ", device));
  }
  return std::string("CUDA-on-CPU harness");
}
void UseDevice(int) {}
#else
// ---------------------------------------------------------------------------------------------
// A GPU: cudart on device `device_` (made current before every call that allocates or launches,
// since one process may drive several GPUs from several threads).
constexpr char kKind[] = "cuda";
constexpr uint64_t kWeightMagic = 0x7461'6e64'6375'6770;  // "tandcugp"

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::FailedPreconditionError(
      StrCat(what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
}
void Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    ::tandem::internal::CheckFailed(__FILE__, __LINE__, what, cudaGetErrorString(e));
  }
}
cudaStream_t Raw(Stream s) { return static_cast<cudaStream_t>(s.handle); }
cudaEvent_t Raw(Event e) { return static_cast<cudaEvent_t>(e.handle); }

absl::StatusOr<void*> DeviceAlloc(size_t bytes) {
  void* p = nullptr;
  if (const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1)); e != cudaSuccess) {
    cudaGetLastError();  // an allocation failure is not sticky; clear it
    return absl::ResourceExhaustedError(
        StrCat("cannot allocate ", bytes, " bytes on the GPU: ", cudaGetErrorName(e)));
  }
  return p;
}
void DeviceFree(void* p) { Check(cudaFree(p), "cudaFree"); }
void CopyAsync(void* dst, const void* src, size_t bytes, Stream s) {
  Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, Raw(s)), "cudaMemcpyAsync");
}
void SetAsync(void* dst, int value, size_t bytes, Stream s) {
  Check(cudaMemsetAsync(dst, value, bytes, Raw(s)), "cudaMemsetAsync");
}
absl::StatusOr<Stream> NewStream() {
  cudaStream_t s = nullptr;
  TANDEM_RETURN_IF_ERROR(
      CudaStatus(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"));
  return Stream{s};
}
void DeleteStream(Stream s) { Check(cudaStreamDestroy(Raw(s)), "cudaStreamDestroy"); }
void WaitStream(Stream s) { Check(cudaStreamSynchronize(Raw(s)), "cudaStreamSynchronize"); }
absl::StatusOr<Event> NewEvent() {
  cudaEvent_t e = nullptr;
  TANDEM_RETURN_IF_ERROR(
      CudaStatus(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"));
  return Event{e};
}
void DeleteEvent(Event e) { Check(cudaEventDestroy(Raw(e)), "cudaEventDestroy"); }
void Record(Event e, Stream s) { Check(cudaEventRecord(Raw(e), Raw(s)), "cudaEventRecord"); }
void StreamWait(Stream s, Event e) {
  Check(cudaStreamWaitEvent(Raw(s), Raw(e), 0), "cudaStreamWaitEvent");
}
void WaitEvent(Event e) { Check(cudaEventSynchronize(Raw(e)), "cudaEventSynchronize"); }
absl::StatusOr<std::string> OpenDevice(int device) {
  int count = 0;
  TANDEM_RETURN_IF_ERROR(CudaStatus(cudaGetDeviceCount(&count), "no usable CUDA GPU"));
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(
        StrCat("no CUDA GPU ", device, ": this machine has ", count));
  }
  cudaDeviceProp prop{};
  TANDEM_RETURN_IF_ERROR(CudaStatus(cudaGetDeviceProperties(&prop, device), "CUDA GPU"));
  if (prop.major < 8) {
    return absl::FailedPreconditionError(
        StrCat("CUDA GPU ", device, " (", prop.name, ") has compute capability ", prop.major, ".",
               prop.minor, "; tandem's kernels need 8.0 or newer"));
  }
  TANDEM_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "cudaSetDevice"));
  return StrCat(prop.name, " sm_", prop.major, prop.minor);
}
void UseDevice(int device) { Check(cudaSetDevice(device), "cudaSetDevice"); }
#endif

// Device memory a weight owns, freed with it.
class DeviceBytes {
 public:
  DeviceBytes() = default;
  explicit DeviceBytes(void* p) : p_(p) {}
  DeviceBytes(DeviceBytes&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  DeviceBytes& operator=(DeviceBytes&& o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~DeviceBytes() {
    if (p_ != nullptr) DeviceFree(p_);
  }
  void* get() const { return p_; }

 private:
  void* p_ = nullptr;
};

class CudaWeight : public Weight {
 public:
  CudaWeight(DType type, int64_t rows, int64_t cols, int device)
      : Weight(type, rows, cols), device_(device) {}
  bool valid() const { return magic_ == kWeightMagic; }
  int device() const { return device_; }

  // A dense matrix (F32/F16/BF16 in the GGUF): [rows, cols] of the activation dtype, multiplied
  // by DenseMatmul. Empty otherwise.
  bool has_dense = false;
  DeviceBytes dense;
  // Matmul's packed layout (q_ and scales_ hold it); empty for a gather-only weight.
  bool has_matmul = false;
  QuantWeights matmul;
  DeviceBytes q;
  DeviceBytes scales;
  // EmbeddingGather's GGUF rows; null for a matmul-only weight and for a table gathered from
  // the packed layout (types the row gather does not read).
  DeviceBytes rows_data;

 private:
  const uint64_t magic_ = kWeightMagic;
  const int device_;
};

absl::StatusOr<DeviceBytes> Upload(const void* host, size_t bytes, Stream s) {
  TANDEM_ASSIGN_OR_RETURN(void* p, DeviceAlloc(bytes));
  CopyAsync(p, host, bytes, s);
  return DeviceBytes(p);
}

// Splits of attention's workspace: enough for `decode_tokens` tokens to spread the longest
// context over splits of kAttentionDefaultSplit, and for a whole step of tokens in few splits.
constexpr int kDecodeTokensAtFullSplit = 64;
constexpr int kMinSplitsPerStepToken = 4;
// Attention: steps with at least this many tokens per sequence run the tiled prefill kernel.
constexpr int kPrefillTokensPerSeq = 4;

// Every call that touches the device first makes config_.device current: the current device
// is per host thread, and the engine thread that drives the ops is not the one that created
// the backend (one process may drive several GPUs).
class CudaBackend : public Backend {
 public:
  CudaBackend(const CudaBackendConfig& config, std::string device_name)
      : config_(config), device_name_(std::move(device_name)) {}

  ~CudaBackend() override {
    UseDevice(config_.device);
    if (workspace_ != nullptr) DeviceFree(workspace_);
    if (owns_stream_) DeleteStream(stream_);
  }

  absl::Status Init() {
#if !defined(TANDEM_CUDA_EMU)
    TANDEM_ASSIGN_OR_RETURN(stream_, NewStream());
    owns_stream_ = true;
#endif
    return absl::OkStatus();
  }

  std::string Name() const override {
    return StrCat(kKind, ":", config_.device, " (", device_name_, ", ",
                  config_.activations == ActivationDType::kBF16 ? "bf16" : "f16", " activations)");
  }
#if defined(TANDEM_CUDA_EMU)
  bool IsHostMemory() const override { return true; }
#else
  bool IsHostMemory() const override { return false; }
#endif

  absl::StatusOr<DeviceBuffer> Allocate(size_t bytes) override {
    UseDevice(config_.device);
    TANDEM_ASSIGN_OR_RETURN(void* p, DeviceAlloc(bytes));
    allocations_[reinterpret_cast<uintptr_t>(p)] = bytes;
    return DeviceBuffer{p, bytes};
  }
  void Free(DeviceBuffer buffer) override {
    if (buffer.ptr == nullptr) return;
    UseDevice(config_.device);
    allocations_.erase(reinterpret_cast<uintptr_t>(buffer.ptr));
    DeviceFree(buffer.ptr);
  }
  void CopyToDevice(void* dst, const void* src, size_t bytes, Stream s) override {
    UseDevice(config_.device);
    CopyAsync(dst, src, bytes, s);
  }
  void CopyToHost(void* dst, const void* src, size_t bytes, Stream s) override {
    UseDevice(config_.device);
    CopyAsync(dst, src, bytes, s);
  }
  void Memset(void* dst, int value, size_t bytes, Stream s) override {
    UseDevice(config_.device);
    SetAsync(dst, value, bytes, s);
  }
  ActivationDType activation_dtype() const override { return config_.activations; }

  Stream DefaultStream() override { return stream_; }
  absl::StatusOr<Stream> CreateStream() override {
    UseDevice(config_.device);
    return NewStream();
  }
  void DestroyStream(Stream s) override { DeleteStream(s); }
  void Synchronize(Stream s) override {
    UseDevice(config_.device);
    WaitStream(s);
  }
  absl::StatusOr<Event> CreateEvent() override {
    UseDevice(config_.device);
    return NewEvent();
  }
  void DestroyEvent(Event e) override { DeleteEvent(e); }
  void RecordEvent(Event e, Stream s) override {
    UseDevice(config_.device);
    Record(e, s);
  }
  void StreamWaitEvent(Stream s, Event e) override {
    UseDevice(config_.device);
    StreamWait(s, e);
  }
  void SynchronizeEvent(Event e) override {
    UseDevice(config_.device);
    WaitEvent(e);
  }

  // The host work of a step (sampling rows on the host, for now) runs on the calling thread.
  void HostParallelFor(int n, absl::FunctionRef<void(int begin, int end)> fn) override {
    if (n > 0) fn(0, n);
  }

  absl::Status ReserveStepScratch(const StepShape& shape) override {
    if (shape.max_tokens <= 0 || shape.n_heads <= 0 || shape.head_dim <= 0 ||
        shape.max_context <= 0) {
      return absl::InvalidArgumentError("step shape: every field must be > 0");
    }
    step_.max_tokens = std::max(step_.max_tokens, shape.max_tokens);
    step_.n_heads = std::max(step_.n_heads, shape.n_heads);
    step_.head_dim = std::max(step_.head_dim, shape.head_dim);
    step_.max_context = std::max(step_.max_context, shape.max_context);
    const int64_t full_splits =
        (step_.max_context + kAttentionDefaultSplit - 1) / kAttentionDefaultSplit;
    const int64_t token_splits = std::max<int64_t>(
        static_cast<int64_t>(std::min(step_.max_tokens, kDecodeTokensAtFullSplit)) * full_splits,
        static_cast<int64_t>(step_.max_tokens) * kMinSplitsPerStepToken);
    const size_t floats = static_cast<size_t>(token_splits) * step_.n_heads *
                          (static_cast<size_t>(step_.head_dim) + 2);
    if (floats <= workspace_floats_) return absl::OkStatus();
    UseDevice(config_.device);
    TANDEM_ASSIGN_OR_RETURN(void* p, DeviceAlloc(floats * sizeof(float)));
    if (workspace_ != nullptr) {
      WaitStream(stream_);  // the old workspace may still be read
      DeviceFree(workspace_);
    }
    workspace_ = static_cast<float*>(p);
    workspace_floats_ = floats;
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Weight>> PackWeight(const WeightDesc& desc) override {
    UseDevice(config_.device);
    auto w = std::make_unique<CudaWeight>(desc.type, desc.rows, desc.cols, config_.device);
    const Stream s = stream_;
    // A token table keeps its GGUF rows where the gather kernel reads them (bit-exact); the
    // packed layout serves Matmul and the other tables (Q5, K-quants: gathered from it).
    const bool gguf_rows = desc.use != WeightUse::kMatmul && EmbeddingTypeSupported(desc.type);
    const bool dense =
        desc.type == DType::kF32 || desc.type == DType::kF16 || desc.type == DType::kBF16;
    if (desc.use != WeightUse::kGather && dense) {
      TANDEM_RETURN_IF_ERROR(EnsureDenseGemm());
      TANDEM_ASSIGN_OR_RETURN(std::vector<uint16_t> values, ToActivations(desc));
      TANDEM_ASSIGN_OR_RETURN(w->dense, Upload(values.data(), values.size() * 2, s));
      w->has_dense = true;
      WaitStream(s);  // `values` dies on return
    } else if (desc.use != WeightUse::kGather || !gguf_rows) {
      if (!QuantMatmulTypeSupported(desc.type)) {
        return absl::UnimplementedError(
            StrCat("tensor ", desc.name, " is ", DTypeName(desc.type),
                   desc.use == WeightUse::kGather
                       ? "; the CUDA backend gathers F32, F16, BF16 and quantized rows only"
                       : "; the CUDA backend multiplies F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, "
                         "Q8_0 and K-quant (Q2_K..Q6_K) weights"));
      }
      TANDEM_ASSIGN_OR_RETURN(PackedQuantWeight packed, RepackGguf(desc));
      TANDEM_ASSIGN_OR_RETURN(w->q, Upload(packed.q.data(), packed.q.size() * sizeof(uint32_t), s));
      TANDEM_ASSIGN_OR_RETURN(
          w->scales, Upload(packed.scales.data(), packed.scales.size() * sizeof(uint32_t), s));
      w->has_matmul = true;
      w->matmul.q = static_cast<const uint32_t*>(w->q.get());
      w->matmul.scales = static_cast<const uint32_t*>(w->scales.get());
      w->matmul.bits = packed.bits;
      w->matmul.n = static_cast<int>(packed.n);
      w->matmul.k = static_cast<int>(packed.k);
      w->matmul.n_pad = static_cast<int>(packed.n_pad);
      w->matmul.k_pad = static_cast<int>(packed.k_pad);
      w->matmul.group = packed.group;
      // `packed` dies on return; the copies must have read it.
      WaitStream(s);
    }
    if (gguf_rows) {
      const size_t bytes = static_cast<size_t>(desc.rows) * RowBytes(desc.type, desc.cols);
      TANDEM_ASSIGN_OR_RETURN(w->rows_data, Upload(desc.data, bytes, s));
      WaitStream(s);  // desc.data must outlive PackWeight only
    }
    return std::unique_ptr<Weight>(std::move(w));
  }

  absl::Status AdoptWeight(const Weight& w) override {
    const auto* cw = dynamic_cast<const CudaWeight*>(&w);
    if (cw == nullptr || !cw->valid()) {
      return absl::FailedPreconditionError(
          StrCat("weight was not packed by a ", kKind, " backend"));
    }
    if (cw->device() != config_.device) {
      return absl::FailedPreconditionError(StrCat("weight lives on ", kKind, ":", cw->device(),
                                                  ", this backend is ", kKind, ":",
                                                  config_.device));
    }
    if (cw->has_dense) return EnsureDenseGemm();
    return absl::OkStatus();
  }

  void Matmul(const Weight& w, const float* x, int m, float* y, Stream s) override {
    UseDevice(config_.device);
    const CudaWeight& cw = Cast(w);
    if (cw.has_dense) {
      DenseMatmulParams p;
      p.x = x;
      p.w = cw.dense.get();
      p.y = y;
      p.m = m;
      p.n = static_cast<int>(cw.rows());
      p.k = static_cast<int>(cw.cols());
      p.dtype = config_.activations;
#if defined(TANDEM_CUDA_EMU)
      DenseMatmulSimt(p, s);
#else
      TANDEM_CHECK(cublas_ != nullptr);  // EnsureDenseGemm ran at PackWeight / AdoptWeight
      cublas_->Run(p, s);
#endif
      return;
    }
    TANDEM_CHECK(cw.has_matmul && "Matmul on a weight packed for EmbeddingGather only");
    QuantMatmulParams p;
    p.x = x;
    p.y = y;
    p.m = m;
    p.w = cw.matmul;
    p.dtype = config_.activations;
    QuantMatmul(p, s);
  }
  void EmbeddingGather(const Weight& w, const int32_t* ids, int n, float* out, Stream s) override {
    UseDevice(config_.device);
    const CudaWeight& cw = Cast(w);
    if (cw.rows_data.get() == nullptr) {  // gathered from the packed layout
      TANDEM_CHECK(cw.has_matmul && "EmbeddingGather on a weight with neither layout");
      PackedEmbeddingParams p;
      p.table = cw.matmul;
      p.ids = ids;
      p.n = n;
      p.out = out;
      p.dtype = config_.activations;
      cuda::EmbeddingGatherPacked(p, s);
      return;
    }
    EmbeddingParams p;
    p.table = cw.rows_data.get();
    p.table_type = cw.type();
    p.table_rows = cw.rows();
    p.cols = static_cast<int>(cw.cols());
    p.ids = ids;
    p.n = n;
    p.out = out;
    p.dtype = config_.activations;
    cuda::EmbeddingGather(p, s);
  }
  void RmsNorm(const float* x, const float* weight, int rows, int dim, float eps, float* out,
               Stream s) override {
    UseDevice(config_.device);
    RmsNormParams p;
    p.x = x;
    p.weight = weight;
    p.out = out;
    p.rows = rows;
    p.dim = dim;
    p.eps = eps;
    p.dtype = config_.activations;
    cuda::RmsNorm(p, s);
  }
  void AddBias(float* x, const float* bias, int rows, int dim, Stream s) override {
    UseDevice(config_.device);
    ElementwiseParams p =
        ElementwiseOf(ElementwiseOp::kAddBias, x, static_cast<int64_t>(rows) * dim);
    p.bias = bias;
    p.dim = dim;
    Elementwise(p, s);
  }
  void Add(float* x, const float* y, int64_t n, Stream s) override {
    UseDevice(config_.device);
    ElementwiseParams p = ElementwiseOf(ElementwiseOp::kAdd, x, n);
    p.y = y;
    Elementwise(p, s);
  }
  void SwiGlu(const float* gate, const float* up, int rows, int dim, float* out,
              Stream s) override {
    UseDevice(config_.device);
    RunGlu(gate, up, rows, dim, out, GluKind::kSwiGlu, s);
  }
  void GeGlu(const float* gate, const float* up, int rows, int dim, float* out, Stream s) override {
    UseDevice(config_.device);
    RunGlu(gate, up, rows, dim, out, GluKind::kGeGlu, s);
  }
  void Scale(float* x, float factor, int64_t n, Stream s) override {
    UseDevice(config_.device);
    ElementwiseParams p = ElementwiseOf(ElementwiseOp::kScale, x, n);
    p.factor = factor;
    Elementwise(p, s);
  }
  void ToF32(const float* x, int64_t n, float* out, Stream s) override {
    UseDevice(config_.device);
    ConvertParams p;
    p.in = x;
    p.out = out;
    p.n = n;
    p.in_dtype = config_.activations;
    p.out_dtype = ActivationDType::kF32;
    Convert(p, s);
  }
  void GatherRows(const float* x, const int32_t* idx, int n, int dim, float* out,
                  Stream s) override {
    UseDevice(config_.device);
    GatherRowsParams p;
    p.x = x;
    p.idx = idx;
    p.out = out;
    p.n = n;
    p.dim = dim;
    // The rows x may hold: to the end of its allocation (the kernel traps on an id past them).
    p.x_rows = static_cast<int>(
        std::min<size_t>(BytesAfter(x) / (static_cast<size_t>(dim) * ElemBytes()), INT32_MAX));
    p.dtype = config_.activations;
    cuda::GatherRows(p, s);
  }
  void Rope(const RopeParams& p, Stream s) override {
    UseDevice(config_.device);
    cuda::Rope(p, config_.activations, s);
  }
  void KvAppend(const KvAppendParams& p, Stream s) override {
    UseDevice(config_.device);
    cuda::KvAppend(p, config_.activations, s);
  }
  void Attention(const AttentionParams& p, Stream s) override {
    UseDevice(config_.device);
    // A step that is mostly prefill chunks (at least kPrefillTokensPerSeq tokens per sequence)
    // takes the tiled kernel, which reads each K/V row once per chunk (on tensor cores for head
    // sizes 64 and 128); decode-heavy steps the split-K one, which spreads a long context over
    // blocks.
    if (p.n_tokens >= kPrefillTokensPerSeq * p.n_seqs) {
      if (cuda::AttentionPrefillMmaSupports(p, config_.activations)) {
        cuda::AttentionPrefillMma(p, config_.activations, s);
        return;
      }
      if (p.n_heads / p.n_kv_heads <= AttentionPrefillTileTokens(p.head_dim, 1)) {
        cuda::AttentionPrefill(p, config_.activations, s);
        return;
      }
    }
    TANDEM_CHECK(workspace_ != nullptr && "Attention before ReserveStepScratch");
    TANDEM_CHECK(p.n_tokens <= step_.max_tokens && p.n_heads <= step_.n_heads &&
                 p.head_dim <= step_.head_dim);
    const int max_context = p.max_context > 0 ? p.max_context : step_.max_context;
    // Splits of kAttentionDefaultSplit positions while the workspace holds them (decode);
    // longer splits for a step of many tokens (prefill), so the workspace always suffices.
    const size_t per_split =
        static_cast<size_t>(std::max(p.n_tokens, 1)) * p.n_heads * (p.head_dim + 2);
    const int64_t max_splits = std::max<int64_t>(1, workspace_floats_ / per_split);
    const int split = std::max<int>(kAttentionDefaultSplit,
                                    static_cast<int>((max_context + max_splits - 1) / max_splits));
    TANDEM_CHECK_LE(AttentionWorkspaceFloats(p, max_context, split), workspace_floats_);
    cuda::Attention(p, config_.activations, max_context, workspace_, s, split);
  }
  void Sample(const SampleParams& p, Stream s) override {
    UseDevice(config_.device);
    cuda::Sample(p, config_.activations, s);
  }

 private:
  // The dense GEMM's library: cuBLAS, loaded once per backend (GPU build); nothing in the
  // harness, which runs DenseMatmulSimt.
  absl::Status EnsureDenseGemm() {
#if !defined(TANDEM_CUDA_EMU)
    if (cublas_ == nullptr) {
      UseDevice(config_.device);
      TANDEM_ASSIGN_OR_RETURN(cublas_, CublasGemm::Create());
    }
#endif
    return absl::OkStatus();
  }
  // A dense matrix's values as the activation dtype's bits. Fails, naming the tensor, on a
  // value past f16's range (an F32 or BF16 matrix on an f16 backend).
  absl::StatusOr<std::vector<uint16_t>> ToActivations(const WeightDesc& desc) const {
    const size_t count = static_cast<size_t>(desc.rows) * desc.cols;
    std::vector<uint16_t> out(count);
    const bool bf16 = config_.activations == ActivationDType::kBF16;
    for (size_t i = 0; i < count; ++i) {
      float v;
      if (desc.type == DType::kF32) {
        v = static_cast<const float*>(desc.data)[i];
      } else {
        const uint16_t bits = static_cast<const uint16_t*>(desc.data)[i];
        if ((desc.type == DType::kBF16) == bf16) {  // already the activation dtype
          out[i] = bits;
          continue;
        }
        v = desc.type == DType::kF16 ? HalfToFloat(bits) : Bf16ToFloat(bits);
      }
      out[i] = bf16 ? FloatToBf16(v) : FloatToHalf(v);
      if (!bf16 && std::isfinite(v) && !std::isfinite(HalfToFloat(out[i]))) {
        return absl::InvalidArgumentError(StrCat(
            "tensor ", desc.name, " has the value ", v, " at ", i,
            ", past f16's range: run this model with bf16 activations (--activations=bf16)"));
      }
    }
    return out;
  }
  static const CudaWeight& Cast(const Weight& w) {
    const auto* cw = dynamic_cast<const CudaWeight*>(&w);
    TANDEM_CHECK(cw != nullptr && cw->valid() && "weight not packed by a CUDA backend");
    return *cw;
  }
  ElementwiseParams ElementwiseOf(ElementwiseOp op, float* x, int64_t n) const {
    ElementwiseParams p;
    p.op = op;
    p.x = x;
    p.n = n;
    p.dtype = config_.activations;
    return p;
  }
  size_t ElemBytes() const { return config_.activations == ActivationDType::kF32 ? 4 : 2; }
  // Bytes from p to the end of the allocation holding it (0 when no allocation of this backend
  // holds it).
  size_t BytesAfter(const void* p) const {
    const auto a = reinterpret_cast<uintptr_t>(p);
    auto it = allocations_.upper_bound(a);
    if (it == allocations_.begin()) return 0;
    --it;
    if (a >= it->first + it->second) return 0;
    return it->first + it->second - a;
  }
  void RunGlu(const float* gate, const float* up, int rows, int dim, float* out, GluKind kind,
              Stream s) {
    GluParams p;
    p.gate = gate;
    p.up = up;
    p.out = out;
    p.rows = rows;
    p.dim = dim;
    p.kind = kind;
    p.dtype = config_.activations;
    Glu(p, s);
  }

  // Constant after Init.
  const CudaBackendConfig config_;
  const std::string device_name_;
  Stream stream_;  // the model's stream (the harness: the one synchronous stream)
  bool owns_stream_ = false;

  // Set-up time state (ReserveStepScratch, Allocate); read by ops.
  StepShape step_;
  float* workspace_ = nullptr;  // attention's split-K partials
  size_t workspace_floats_ = 0;
  std::map<uintptr_t, size_t> allocations_;  // base -> bytes, for GatherRows' bound
#if !defined(TANDEM_CUDA_EMU)
  std::unique_ptr<CublasGemm> cublas_;  // made by the first dense weight
#endif
};

}  // namespace

absl::Status CudaBackendConfig::Validate() const {
  if (device < 0) return absl::InvalidArgumentError("CUDA device ordinal must be >= 0");
  if (activations != ActivationDType::kF16 && activations != ActivationDType::kBF16) {
    return absl::InvalidArgumentError("the CUDA backend runs f16 or bf16 activations");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendConfig& config) {
  TANDEM_RETURN_IF_ERROR(config.Validate());
  TANDEM_ASSIGN_OR_RETURN(std::string name, OpenDevice(config.device));
  auto backend = std::make_unique<CudaBackend>(config, std::move(name));
  TANDEM_RETURN_IF_ERROR(backend->Init());
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda
