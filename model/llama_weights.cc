#include "model/llama_weights.h"

#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace tandem::model {
namespace {

absl::StatusOr<const GgufTensor*> FindTensor(const GgufFile& file, const std::string& name) {
  const GgufTensor* t = file.FindTensor(name);
  if (t == nullptr) return absl::NotFoundError(absl::StrCat("model: missing tensor ", name));
  return t;
}

absl::StatusOr<std::unique_ptr<kernels::Weight>> PackMatrix(const GgufFile& file,
                                                            kernels::Backend& backend,
                                                            const std::string& name, int64_t rows,
                                                            int64_t cols, kernels::WeightUse use) {
  TANDEM_ASSIGN_OR_RETURN(const GgufTensor* t, FindTensor(file, name));
  if (t->dims.size() != 2 || t->dims[0] != cols || t->dims[1] != rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model: tensor ", name, " has the wrong shape, expected [", cols, ", ", rows, "]"));
  }
  return backend.PackWeight({t->type, rows, cols, t->data, name, use});
}

}  // namespace

std::string DeviceKind(const kernels::Backend& backend) {
  std::string name = backend.Name();
  return name.substr(0, name.find(' '));
}

void LlamaWeights::FreeHost::operator()(float* p) const { std::free(p); }

LlamaWeights::LlamaWeights(const ModelConfig& config, const kernels::Backend& backend)
    : config_(config), device_kind_(DeviceKind(backend)) {}

LlamaWeights::~LlamaWeights() {
  for (const kernels::DeviceBuffer& b : device_vectors_) device_backend_->Free(b);
}

absl::StatusOr<std::shared_ptr<const LlamaWeights>> LlamaWeights::Load(
    const GgufFile& file, kernels::Backend& backend, const WeightOptions& options) {
  TANDEM_ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromGguf(file));
  std::shared_ptr<LlamaWeights> w(new LlamaWeights(config, backend));
  TANDEM_RETURN_IF_ERROR(w->LoadAll(file, backend, options));
  return std::shared_ptr<const LlamaWeights>(std::move(w));
}

absl::StatusOr<const float*> LlamaWeights::UploadVector(const GgufFile& file,
                                                        kernels::Backend& backend,
                                                        const std::string& name, int64_t n) {
  TANDEM_ASSIGN_OR_RETURN(const GgufTensor* t, FindTensor(file, name));
  int64_t elems = 1;
  for (int64_t d : t->dims) elems *= d;
  if (elems != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("model: tensor ", name, " has ", elems, " elements, expected ", n));
  }
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  if (backend.IsHostMemory()) {
    // The backend's device pointers are host pointers, so memory the weights own serves its
    // ops as well as its own would, and does not tie the weights' lifetime to the backend.
    // 64-byte aligned like the CPU backend's Allocate.
    std::unique_ptr<float, FreeHost> host(
        static_cast<float*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
    if (host == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("model: out of memory for ", name));
    }
    kernels::DequantizeRow(t->type, t->data, n, host.get());
    host_vectors_.push_back(std::move(host));
    return host_vectors_.back().get();
  }
  std::vector<float> host(n);
  kernels::DequantizeRow(t->type, t->data, n, host.data());
  TANDEM_ASSIGN_OR_RETURN(kernels::DeviceBuffer buf, backend.Allocate(bytes));
  device_backend_ = &backend;
  device_vectors_.push_back(buf);
  backend.CopyToDevice(buf.ptr, host.data(), bytes, backend.DefaultStream());
  // `host` dies on return; an asynchronous copy must have read it by then.
  backend.Synchronize(backend.DefaultStream());
  return static_cast<const float*>(buf.ptr);
}

absl::Status LlamaWeights::LoadAll(const GgufFile& file, kernels::Backend& be,
                                   const WeightOptions& options) {
  const ModelConfig& c = config_;
  const int64_t q_dim = c.q_dim();
  const int64_t kv_dim = c.kv_dim();
  using kernels::WeightUse;
  constexpr WeightUse kMatmul = WeightUse::kMatmul;
  TANDEM_ASSIGN_OR_RETURN(token_embd_,
                          PackMatrix(file, be, "token_embd.weight", c.vocab_size, c.hidden,
                                     c.tied_embeddings ? WeightUse::kBoth : WeightUse::kGather));
  if (!c.tied_embeddings) {
    TANDEM_ASSIGN_OR_RETURN(output_,
                            PackMatrix(file, be, "output.weight", c.vocab_size, c.hidden, kMatmul));
  }
  TANDEM_ASSIGN_OR_RETURN(output_norm_, UploadVector(file, be, "output_norm.weight", c.hidden));
  layers_.resize(c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {
    Layer& l = layers_[i];
    const std::string p = absl::StrCat("blk.", i, ".");
    TANDEM_ASSIGN_OR_RETURN(l.attn_norm, UploadVector(file, be, p + "attn_norm.weight", c.hidden));
    TANDEM_ASSIGN_OR_RETURN(l.ffn_norm, UploadVector(file, be, p + "ffn_norm.weight", c.hidden));
    TANDEM_ASSIGN_OR_RETURN(l.wq,
                            PackMatrix(file, be, p + "attn_q.weight", q_dim, c.hidden, kMatmul));
    TANDEM_ASSIGN_OR_RETURN(l.wk,
                            PackMatrix(file, be, p + "attn_k.weight", kv_dim, c.hidden, kMatmul));
    TANDEM_ASSIGN_OR_RETURN(l.wv,
                            PackMatrix(file, be, p + "attn_v.weight", kv_dim, c.hidden, kMatmul));
    TANDEM_ASSIGN_OR_RETURN(
        l.wo, PackMatrix(file, be, p + "attn_output.weight", c.hidden, q_dim, kMatmul));
    TANDEM_ASSIGN_OR_RETURN(
        l.w_gate, PackMatrix(file, be, p + "ffn_gate.weight", c.ffn_dim, c.hidden, kMatmul));
    TANDEM_ASSIGN_OR_RETURN(
        l.w_up, PackMatrix(file, be, p + "ffn_up.weight", c.ffn_dim, c.hidden, kMatmul));
    TANDEM_ASSIGN_OR_RETURN(
        l.w_down, PackMatrix(file, be, p + "ffn_down.weight", c.hidden, c.ffn_dim, kMatmul));
    if (c.has_qkv_bias) {
      TANDEM_ASSIGN_OR_RETURN(l.bq, UploadVector(file, be, p + "attn_q.bias", q_dim));
      TANDEM_ASSIGN_OR_RETURN(l.bk, UploadVector(file, be, p + "attn_k.bias", kv_dim));
      TANDEM_ASSIGN_OR_RETURN(l.bv, UploadVector(file, be, p + "attn_v.bias", kv_dim));
    }
    if (c.has_qk_norm) {
      TANDEM_ASSIGN_OR_RETURN(l.q_norm,
                              UploadVector(file, be, p + "attn_q_norm.weight", c.head_dim));
      TANDEM_ASSIGN_OR_RETURN(l.k_norm,
                              UploadVector(file, be, p + "attn_k_norm.weight", c.head_dim));
    }
    if (c.has_post_norms) {
      TANDEM_ASSIGN_OR_RETURN(l.post_attn_norm,
                              UploadVector(file, be, p + "post_attention_norm.weight", c.hidden));
      TANDEM_ASSIGN_OR_RETURN(l.post_ffn_norm,
                              UploadVector(file, be, p + "post_ffw_norm.weight", c.hidden));
    }
    if (options.load_progress) options.load_progress(i + 1, c.n_layers);
  }
  return absl::OkStatus();
}

absl::Status LlamaWeights::PrepareBackend(kernels::Backend& backend) const {
  TANDEM_RETURN_IF_ERROR(backend.AdoptWeight(*token_embd_));
  if (output_) TANDEM_RETURN_IF_ERROR(backend.AdoptWeight(*output_));
  for (const Layer& l : layers_) {
    for (const auto* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
      TANDEM_RETURN_IF_ERROR(backend.AdoptWeight(**w));
    }
  }
  return absl::OkStatus();
}

}  // namespace tandem::model
