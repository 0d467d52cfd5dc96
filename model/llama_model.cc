#include "model/llama_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace tandem::model {

using kernels::DType;

absl::Status ModelOptions::Validate() const {
  if (max_batch_tokens <= 0 || max_logit_rows <= 0 || max_seqs <= 0 || block_size <= 0 ||
      max_blocks_per_seq < 0) {
    return absl::InvalidArgumentError(
        "model options: max_batch_tokens, max_logit_rows, max_seqs and block_size must be > 0");
  }
  return absl::OkStatus();
}

LlamaModel::LlamaModel(std::shared_ptr<const LlamaWeights> weights, const ModelOptions& options,
                       kernels::Backend& backend)
    : weights_(std::move(weights)),
      config_(weights_->config()),
      options_(options),
      backend_(backend) {
  max_blocks_per_seq_ =
      options.max_blocks_per_seq > 0
          ? options.max_blocks_per_seq
          : (config_.context_length + options.block_size - 1) / options.block_size;
  whole_groups_ = KvCacheLayout(kernels::KvDType::kF16, false).Groups();
  windowed_groups_ = KvCacheLayout(kernels::KvDType::kF16, true).Groups();
  max_groups_ = std::max(whole_groups_.n_groups(), windowed_groups_.n_groups());
}

LlamaModel::~LlamaModel() {
  for (auto& b : buffers_) backend_.Free(b);
}

namespace {

// A model whose activations pass fp16's range turns into NaN on an f16 backend: refused.
absl::Status CheckActivations(const ModelConfig& config, const kernels::Backend& backend) {
  if (!config.f16_overflows || backend.activation_dtype() != kernels::ActivationDType::kF16) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(
      absl::StrCat("model: ", config.architecture,
                   "'s activations pass fp16's range (65504) and would turn "
                   "into NaN on backend ",
                   backend.Name(),
                   " with f16 activations; run it with bf16 "
                   "(tandemd --activations=bf16, which --activations=auto picks for this model)"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const GgufFile& file,
                                                             kernels::Backend& backend,
                                                             const ModelOptions& options) {
  TANDEM_RETURN_IF_ERROR(options.Validate());  // before the long part
  TANDEM_ASSIGN_OR_RETURN(const ModelConfig config, ModelConfig::FromGguf(file));
  TANDEM_RETURN_IF_ERROR(CheckActivations(config, backend));
  WeightOptions wo;
  wo.load_progress = options.load_progress;
  TANDEM_ASSIGN_OR_RETURN(std::shared_ptr<const LlamaWeights> weights,
                          LlamaWeights::Load(file, backend, wo));
  return Create(std::move(weights), backend, options);
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Create(
    std::shared_ptr<const LlamaWeights> weights, kernels::Backend& backend,
    const ModelOptions& options) {
  TANDEM_RETURN_IF_ERROR(options.Validate());
  if (weights == nullptr) return absl::InvalidArgumentError("model: no weights");
  // Packed layouts are a device kind's own (see LlamaWeights): only that kind may read them.
  const std::string kind = DeviceKind(backend);
  if (kind != weights->device_kind()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model: the weights were packed for device kind ", weights->device_kind(), " but backend ",
        backend.Name(), " is of kind ", kind, "; load the weights again for this device"));
  }
  TANDEM_RETURN_IF_ERROR(CheckActivations(weights->config(), backend));
  // Weights another backend packed need this one's scratch sized for them.
  TANDEM_RETURN_IF_ERROR(weights->PrepareBackend(backend));
  std::unique_ptr<LlamaModel> model(new LlamaModel(std::move(weights), options, backend));
  TANDEM_RETURN_IF_ERROR(model->AllocateScratch());
  return model;
}

kvcache::KvCacheConfig LlamaModel::KvCacheLayout(kernels::KvDType dtype, bool window_local) const {
  kvcache::KvCacheConfig kc;
  kc.n_layers = config_.n_layers;
  kc.n_kv_heads = config_.n_kv_heads;
  kc.head_dim = config_.head_dim;
  kc.block_size = options_.block_size;
  kc.dtype = dtype;
  kc.sliding_window = config_.sliding_window;
  if (config_.sliding_window > 0) kc.sliding_layers = config_.swa_layers;
  kc.window_local = window_local;
  kc.max_step_tokens = options_.max_batch_tokens;
  return kc;
}

const kvcache::KvGroups* LlamaModel::GroupsOf(const kernels::KvCacheView& cache) const {
  if (cache.n_layers == whole_groups_.layers_per_group) return &whole_groups_;
  if (cache.n_layers == windowed_groups_.layers_per_group) return &windowed_groups_;
  return nullptr;
}

template <typename T>
T* LlamaModel::Scratch(size_t count) {
  auto buf = backend_.Allocate(count * sizeof(T));
  if (!buf.ok()) return nullptr;
  buffers_.push_back(*buf);
  return static_cast<T*>(buf->ptr);
}

absl::Status LlamaModel::AllocateScratch() {
  const ModelConfig& c = config_;
  const size_t t = options_.max_batch_tokens;
  const size_t r = options_.max_logit_rows;
  const size_t q_dim = static_cast<size_t>(c.n_heads) * c.head_dim;
  const size_t kv_dim = static_cast<size_t>(c.n_kv_heads) * c.head_dim;
  x_ = Scratch<float>(t * c.hidden);
  h_ = Scratch<float>(t * c.hidden);
  q_ = Scratch<float>(t * q_dim);
  k_ = Scratch<float>(t * kv_dim);
  v_ = Scratch<float>(t * kv_dim);
  attn_ = Scratch<float>(t * q_dim);
  gate_ = Scratch<float>(t * c.ffn_dim);
  up_ = Scratch<float>(t * c.ffn_dim);
  ffn_ = Scratch<float>(t * c.ffn_dim);
  sel_ = Scratch<float>(r * c.hidden);
  logits_ = Scratch<float>(r * c.vocab_size);
  // Logits leave the device as f32: on an f32 backend straight from logits_.
  logits_f32_ = backend_.activation_dtype() == kernels::ActivationDType::kF32
                    ? logits_
                    : Scratch<float>(r * c.vocab_size);
  d_tokens_ = Scratch<int32_t>(t);
  d_positions_ = Scratch<int32_t>(t);
  d_token_seq_ = Scratch<int32_t>(t);
  d_slots_ = Scratch<int32_t>(t * max_groups_);
  d_rows_ = Scratch<int32_t>(r);
  d_tables_ =
      Scratch<int32_t>(static_cast<size_t>(options_.max_seqs) * max_groups_ * max_blocks_per_seq_);
  for (void* p :
       {static_cast<void*>(x_), static_cast<void*>(h_), static_cast<void*>(q_),
        static_cast<void*>(k_), static_cast<void*>(v_), static_cast<void*>(attn_),
        static_cast<void*>(gate_), static_cast<void*>(up_), static_cast<void*>(ffn_),
        static_cast<void*>(sel_), static_cast<void*>(logits_), static_cast<void*>(logits_f32_),
        static_cast<void*>(d_tokens_), static_cast<void*>(d_positions_),
        static_cast<void*>(d_token_seq_), static_cast<void*>(d_slots_), static_cast<void*>(d_rows_),
        static_cast<void*>(d_tables_)}) {
    if (p == nullptr) {
      return absl::ResourceExhaustedError("model: cannot allocate step scratch buffers");
    }
  }
  slots_.resize(t * max_groups_);
  kernels::StepShape shape;
  shape.max_tokens = options_.max_batch_tokens;
  shape.n_heads = c.n_heads;
  shape.head_dim = c.head_dim;
  shape.max_context = c.context_length;
  return backend_.ReserveStepScratch(shape);
}

absl::Status LlamaModel::ValidateBatch(const StepBatch& b, const kernels::KvCacheView& cache,
                                       const kvcache::KvGroups& groups) const {
  const int n = b.n_tokens();
  if (n == 0) return absl::InvalidArgumentError("step batch is empty");
  if (n > options_.max_batch_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("step batch has ", n, " tokens, max ", options_.max_batch_tokens));
  }
  if (b.positions.size() != b.tokens.size() || b.token_seq.size() != b.tokens.size()) {
    return absl::InvalidArgumentError("step batch: tokens, positions, token_seq lengths differ");
  }
  if (b.n_groups != groups.n_groups()) {
    return absl::InvalidArgumentError(absl::StrCat("step batch: block tables for ", b.n_groups,
                                                   " layer groups, the KV cache has ",
                                                   groups.n_groups()));
  }
  if (b.n_seqs <= 0 || b.n_seqs > options_.max_seqs || b.max_blocks_per_seq <= 0 ||
      b.max_blocks_per_seq > max_blocks_per_seq_ ||
      b.block_tables.size() != static_cast<size_t>(b.n_seqs) * b.n_groups * b.max_blocks_per_seq) {
    return absl::InvalidArgumentError(absl::StrCat(
        "step batch: block tables must be n_seqs (1..", options_.max_seqs, ") x n_groups (",
        b.n_groups, ") x max_blocks_per_seq (1..", max_blocks_per_seq_, ")"));
  }
  if (static_cast<int>(b.logit_rows.size()) > options_.max_logit_rows) {
    return absl::InvalidArgumentError(absl::StrCat("step batch: at most ", options_.max_logit_rows,
                                                   " logit rows allowed, got ",
                                                   b.logit_rows.size()));
  }
  if (cache.block_size != options_.block_size || cache.n_layers != groups.layers_per_group ||
      cache.n_kv_heads != config_.n_kv_heads || cache.head_dim != config_.head_dim) {
    return absl::InvalidArgumentError("KV cache shape does not match the model");
  }
  for (int i = 0; i < n; ++i) {
    if (b.tokens[i] < 0 || b.tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", b.tokens[i], " out of range [0, ", config_.vocab_size, ")"));
    }
    if (b.positions[i] < 0 || b.positions[i] >= config_.context_length) {
      return absl::InvalidArgumentError(absl::StrCat(
          "position ", b.positions[i], " outside the context of ", config_.context_length));
    }
    if (b.token_seq[i] < 0 || b.token_seq[i] >= b.n_seqs) {
      return absl::InvalidArgumentError("step batch: token_seq out of range");
    }
    const int block_index = b.positions[i] / cache.block_size;
    if (block_index >= b.max_blocks_per_seq) {
      return absl::InvalidArgumentError("step batch: position beyond the sequence's block table");
    }
    // Every block the token attends to, in every group, must be a valid id.
    for (int g = 0; g < b.n_groups; ++g) {
      const int32_t* table =
          &b.block_tables[(static_cast<size_t>(b.token_seq[i]) * b.n_groups + g) *
                          b.max_blocks_per_seq];
      const int first =
          kvcache::KvGroups::FirstNeeded(b.positions[i], groups.window[g]) / cache.block_size;
      for (int j = first; j <= block_index; ++j) {
        if (table[j] < 0 || table[j] >= cache.n_blocks) {
          return absl::InvalidArgumentError(absl::StrCat(
              "step batch: block id ", table[j], " out of range [0, ", cache.n_blocks, ")"));
        }
      }
    }
  }
  for (int32_t row : b.logit_rows) {
    if (row < 0 || row >= n)
      return absl::InvalidArgumentError("step batch: logit row out of range");
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::Forward(const StepBatch& b, const kernels::KvCacheView& cache,
                                 float* logits, const LayerHook& on_layer_kv,
                                 const LayerHook& on_layer_begin) {
  const kvcache::KvGroups* groups = GroupsOf(cache);
  if (groups == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache of ", cache.n_layers, " layers per page does not match the model"));
  }
  TANDEM_RETURN_IF_ERROR(ValidateBatch(b, cache, *groups));
  const ModelConfig& c = config_;
  kernels::Backend& be = backend_;
  const kernels::Stream s = be.DefaultStream();
  const int n = b.n_tokens();
  const int n_out = static_cast<int>(b.logit_rows.size());
  const int q_dim = c.n_heads * c.head_dim;
  const int kv_dim = c.n_kv_heads * c.head_dim;

  // prepare: batch metadata to the device; the slots of each group's KV append; the longest
  // context a token reads (a bound the device sizes attention by).
  const int n_groups = b.n_groups;
  const int max_context = 1 + *std::max_element(b.positions.begin(), b.positions.end());
  for (int g = 0; g < n_groups; ++g) {
    for (int i = 0; i < n; ++i) {
      const int32_t* table = &b.block_tables[(static_cast<size_t>(b.token_seq[i]) * n_groups + g) *
                                             b.max_blocks_per_seq];
      const int p = b.positions[i];
      slots_[static_cast<size_t>(g) * n + i] =
          table[p / cache.block_size] * cache.block_size + p % cache.block_size;
    }
  }
  be.CopyToDevice(d_tokens_, b.tokens.data(), n * sizeof(int32_t), s);
  be.CopyToDevice(d_positions_, b.positions.data(), n * sizeof(int32_t), s);
  be.CopyToDevice(d_token_seq_, b.token_seq.data(), n * sizeof(int32_t), s);
  be.CopyToDevice(d_slots_, slots_.data(), static_cast<size_t>(n_groups) * n * sizeof(int32_t), s);
  if (n_out > 0) be.CopyToDevice(d_rows_, b.logit_rows.data(), n_out * sizeof(int32_t), s);
  be.CopyToDevice(d_tables_, b.block_tables.data(), b.block_tables.size() * sizeof(int32_t), s);

  kernels::RopeParams rope;
  rope.q = q_;
  rope.k = k_;
  rope.positions = d_positions_;
  rope.n_tokens = n;
  rope.n_heads = c.n_heads;
  rope.n_kv_heads = c.n_kv_heads;
  rope.head_dim = c.head_dim;
  rope.rot_dim = c.rope_dim;
  rope.theta = c.rope_theta;
  rope.style = c.rope_style;

  kernels::KvAppendParams append;
  append.k = k_;
  append.v = v_;
  append.slots = d_slots_;
  append.n_tokens = n;
  append.cache = cache;

  kernels::AttentionParams attn;
  attn.q = q_;
  attn.out = attn_;
  attn.token_seq = d_token_seq_;
  attn.positions = d_positions_;
  attn.block_tables = d_tables_;
  attn.n_tokens = n;
  attn.n_seqs = b.n_seqs;
  // A sequence's row holds one table per group: each group's table is read with the row's
  // whole width as its stride (attention reads no entry past a token's own block).
  attn.max_blocks_per_seq = n_groups * b.max_blocks_per_seq;
  attn.n_heads = c.n_heads;
  attn.n_kv_heads = c.n_kv_heads;
  attn.head_dim = c.head_dim;
  attn.scale = c.attention_scale;
  attn.cache = cache;

  // execute: embeddings, then each layer, then the head on the selected rows.
  const LlamaWeights& w = *weights_;
  be.EmbeddingGather(w.token_embd(), d_tokens_, n, x_, s);
  if (c.embedding_scale != 1.0f) {
    be.Scale(x_, c.embedding_scale, static_cast<int64_t>(n) * c.hidden, s);
  }
  for (int il = 0; il < c.n_layers; ++il) {
    const LlamaWeights::Layer& l = w.layer(il);
    if (on_layer_begin && !on_layer_begin(il)) {
      return absl::CancelledError(absl::StrCat("the step was stopped before layer ", il));
    }
    be.RmsNorm(x_, l.attn_norm, n, c.hidden, c.rms_eps, h_, s);
    const kernels::Weight* qkv[] = {l.wq.get(), l.wk.get(), l.wv.get()};
    float* const qkv_out[] = {q_, k_, v_};
    be.MatmulSameInput(qkv, h_, n, qkv_out, s);
    if (l.bq != nullptr) {
      be.AddBias(q_, l.bq, n, q_dim, s);
      be.AddBias(k_, l.bk, n, kv_dim, s);
      be.AddBias(v_, l.bv, n, kv_dim, s);
    }
    if (l.q_norm != nullptr) {  // QK-norm: each head normalized on its own
      be.RmsNorm(q_, l.q_norm, n * c.n_heads, c.head_dim, c.rms_eps, q_, s);
      be.RmsNorm(k_, l.k_norm, n * c.n_kv_heads, c.head_dim, c.rms_eps, k_, s);
    }
    rope.theta = c.LayerRopeTheta(il);
    be.Rope(rope, s);
    const int group = groups->group_of[il];
    append.layer = groups->slot_of[il];
    append.slots = d_slots_ + static_cast<size_t>(group) * n;
    be.KvAppend(append, s);
    if (on_layer_kv && !on_layer_kv(il)) {
      return absl::CancelledError(absl::StrCat("the step was stopped after layer ", il));
    }
    attn.layer = groups->slot_of[il];
    attn.block_tables = d_tables_ + static_cast<size_t>(group) * b.max_blocks_per_seq;
    attn.window = c.LayerWindow(il);
    attn.max_context = attn.window > 0 ? std::min(attn.window, max_context) : max_context;
    be.Attention(attn, s);
    be.Matmul(*l.wo, attn_, n, h_, s);
    if (l.post_attn_norm != nullptr) {
      be.RmsNorm(h_, l.post_attn_norm, n, c.hidden, c.rms_eps, h_, s);
    }
    be.Add(x_, h_, static_cast<int64_t>(n) * c.hidden, s);

    be.RmsNorm(x_, l.ffn_norm, n, c.hidden, c.rms_eps, h_, s);
    const kernels::Weight* gate_up[] = {l.w_gate.get(), l.w_up.get()};
    float* const gate_up_out[] = {gate_, up_};
    be.MatmulSameInput(gate_up, h_, n, gate_up_out, s);
    if (c.ffn_activation == FfnActivation::kGeluTanh) {
      be.GeGlu(gate_, up_, n, c.ffn_dim, ffn_, s);
    } else {
      be.SwiGlu(gate_, up_, n, c.ffn_dim, ffn_, s);
    }
    be.Matmul(*l.w_down, ffn_, n, h_, s);
    if (l.post_ffn_norm != nullptr) {
      be.RmsNorm(h_, l.post_ffn_norm, n, c.hidden, c.rms_eps, h_, s);
    }
    be.Add(x_, h_, static_cast<int64_t>(n) * c.hidden, s);
  }
  if (n_out == 0) {  // a prefill chunk in the middle of a prompt needs no logits
    be.Synchronize(s);
    return absl::OkStatus();
  }
  be.GatherRows(x_, d_rows_, n_out, c.hidden, sel_, s);
  be.RmsNorm(sel_, w.output_norm(), n_out, c.hidden, c.rms_eps, sel_, s);
  be.Matmul(w.output(), sel_, n_out, logits_, s);
  if (logits == nullptr) return absl::OkStatus();  // they stay on the device
  CopyLogitsToHost(0, n_out, logits);
  return absl::OkStatus();
}

void LlamaModel::CopyLogitsToHost(int first, int n, float* out) {
  TANDEM_CHECK(first >= 0 && n >= 0 && first + n <= options_.max_logit_rows);
  kernels::Backend& be = backend_;
  const kernels::Stream s = be.DefaultStream();
  const int64_t vocab = config_.vocab_size;
  const int64_t n_logits = n * vocab;
  // logits_f32_ mirrors logits_ row for row (it is logits_ itself on an f32 backend); logits_
  // holds elements of the activation dtype, so its rows are found in bytes.
  const size_t element_bytes =
      be.activation_dtype() == kernels::ActivationDType::kF32 ? sizeof(float) : sizeof(uint16_t);
  const auto* rows = reinterpret_cast<const float*>(reinterpret_cast<const char*>(logits_) +
                                                    first * vocab * element_bytes);
  float* f32 = logits_f32_ + first * vocab;
  be.ToF32(rows, n_logits, f32, s);
  be.CopyToHost(out, f32, static_cast<size_t>(n_logits) * sizeof(float), s);
  be.Synchronize(s);
}

}  // namespace tandem::model
