// tandem-bench-engine: the engine's own speed on one GGUF on the CPU (or a GPU), the figures
// bench/engine/run sets beside llama.cpp's llama-bench and llama-batched-bench.
//
//   tandem-bench-engine --model PATH [--threads 1,2] [--isa auto] [--reps 5] [--json]
//       [--prefill 128,512] [--batches 1,8,32] [--context 128] [--steps 32]
//       [--kv_cache_dtype f16] [--block_size 16] [--membw_mib 1024] [--device cpu|cuda:N]
//
// With --device cuda:N the same figures come from the CUDA backend (one row; scripts/gpu-check
// turns them into % of the GPU's HBM roofline and tensor-core peak with the JSON's
// weight_bytes.per_token and matmul_weights).
// For each thread count (one CpuBackend and one loaded model per count):
//   prefill tok/s: one sequence, a prompt of P tokens run in Forwards of up to 512 tokens,
//     logits for each chunk's last row only; tok/s = P / time.
//   decode tok/s: B sequences whose first --context tokens are already in the KV cache
//     (prefilled untimed), then --steps steps, each one Forward of B tokens returning B logit
//     rows; tok/s = B * steps / time. No sampling: the fed tokens are fixed pseudo-random ids,
//     so the figure is the model's alone.
//   roofline: a batch-1 decode step streams every linear weight and the output head once,
//     so decode tok/s <= streaming read GB/s / weight bytes per token. Bytes are the GGUF
//     tensors' sizes; the token embedding counts only when it is also the (tied) output head,
//     since otherwise one row per token is gathered, not streamed.
//   bound: the roofline with the KV cache a batch-1 step reads added to the weights (K and V
//     of every attended position, a sliding-window layer's window only, int8's scales), the
//     mean over the timed steps: at --context 4096 it is as many bytes as the weights.
// Each figure is the median of --reps timed repetitions after one untimed warm-up.
// Bad arguments or a bad model: a one-line error on stderr and exit code 2.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/engine/stream_read.h"
#include "common/check.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvcache/block_table.h"
#include "kvcache/kv_cache.h"
#include "model/batch_builder.h"
#include "model/gguf_file.h"
#include "model/llama_model.h"
#include "model/model_config.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, model, "", "GGUF model file (required)");
ABSL_FLAG(std::vector<std::string>, threads, std::vector<std::string>({"1", "2"}),
          "comma-separated thread counts; each gets its own backend and model");
ABSL_FLAG(std::string, isa, "auto", "CPU kernels: auto, scalar, avx2, avx512 or amx");
ABSL_FLAG(int, reps, 5, "timed repetitions per figure (the median is reported)");
ABSL_FLAG(bool, json, false, "print one JSON object instead of the table");
ABSL_FLAG(std::vector<std::string>, prefill, std::vector<std::string>({"128", "512"}),
          "prompt lengths for prefill tok/s");
ABSL_FLAG(std::vector<std::string>, batches, std::vector<std::string>({"1", "8", "32"}),
          "decode batch sizes (sequences per step)");
ABSL_FLAG(int, context, 128, "tokens already in each decode sequence's KV cache");
ABSL_FLAG(int, steps, 32, "timed decode steps per repetition");
ABSL_FLAG(int, chunk, 512, "most tokens per prefill Forward");
ABSL_FLAG(std::string, kv_cache_dtype, "f16", "KV cache type: f16, f32 or int8");
ABSL_FLAG(int, block_size, 16, "tokens per KV cache block (tandemd's --block-size)");
ABSL_FLAG(int, membw_mib, 1024, "streaming-read buffer for the roofline, MiB (0: skip)");
ABSL_FLAG(std::string, device, "cpu",
          "cpu, or cuda:N (a build with the CUDA backend and a GPU; --threads and --isa are then "
          "ignored, and the host streaming-read roofline is skipped)");

namespace tandem::bench {
namespace {

constexpr int kUsageError = 2;
using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

absl::StatusOr<std::vector<int>> ParseIntList(const std::vector<std::string>& items,
                                              const char* flag, int min) {
  std::vector<int> out;
  for (const std::string& s : items) {
    int v = 0;
    if (!absl::SimpleAtoi(s, &v) || v < min) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": bad entry '", s, "'"));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  return out;
}

// Bytes a batch-1 decode step must stream from memory, from the GGUF's tensor sizes.
struct WeightBytes {
  uint64_t linear = 0;          // every 2-D tensor of the blocks (attention and FFN projections)
  uint64_t head = 0;            // output.weight, or token_embd.weight when the head is tied to it
  uint64_t norms = 0;           // 1-D tensors (read too, but negligible; not in per_token)
  uint64_t matmul_weights = 0;  // elements of linear + head: a token's GEMM FLOPs are twice it
  bool tied = false;
  uint64_t per_token() const { return linear + head; }
};

WeightBytes CountWeightBytes(const model::GgufFile& file) {
  WeightBytes w;
  const model::GgufTensor* output = file.FindTensor("output.weight");
  w.tied = output == nullptr;
  for (const model::GgufTensor& t : file.tensors()) {
    const uint64_t elems = t.dims.size() >= 2 ? static_cast<uint64_t>(t.Rows()) * t.dims[0] : 0;
    if (t.name == "output.weight") {
      w.head += t.bytes;
      w.matmul_weights += elems;
    } else if (t.name == "token_embd.weight") {
      if (w.tied) {
        w.head += t.bytes;  // gathered by row otherwise
        w.matmul_weights += elems;
      }
    } else if (t.dims.size() >= 2 && t.Rows() > 1) {
      w.linear += t.bytes;
      w.matmul_weights += elems;
    } else {
      w.norms += t.bytes;
    }
  }
  return w;
}

// Bytes of KV cache one batch-1 decode step reads, the mean over steps at positions
// context .. context + steps - 1: each attends its own window of positions (all before it
// and itself, or a sliding-window layer's last `sliding_window`), K and V rows of every KV
// head, and for int8 each row's (scale, zero) pair.
double KvBytesPerDecodeStep(const model::ModelConfig& mc, kernels::KvDType dtype, int context,
                            int steps) {
  const double row = static_cast<double>(mc.n_kv_heads) *
                     (static_cast<double>(mc.head_dim) * kernels::KvElemBytes(dtype) +
                      (dtype == kernels::KvDType::kInt8 ? 2 * sizeof(float) : 0));
  double total = 0;
  for (int step = 0; step < steps; ++step) {
    const int attended = context + step + 1;
    for (int il = 0; il < mc.n_layers; ++il) {
      const int window = mc.LayerWindow(il);
      total += 2 * row * (window > 0 ? std::min(attended, window) : attended);
    }
  }
  return total / steps;
}

struct Config {
  std::string model_path;
  std::string device;
  std::vector<int> threads, prefill, batches;
  kernels::cpu::Isa isa;
  kernels::KvDType kv_dtype;
  int reps, context, steps, chunk, membw_mib, block_size;
  bool json;
};

// One thread count: a backend, the model loaded into it and a KV cache big enough for the
// largest figure. Sequences are created and released per repetition.
class EngineBench {
 public:
  static absl::StatusOr<std::unique_ptr<EngineBench>> Create(const Config& cfg,
                                                             const model::GgufFile& file,
                                                             int threads) {
    auto b = std::unique_ptr<EngineBench>(new EngineBench(cfg));
    kernels::BackendConfig bc;
    bc.device = cfg.device;
    bc.cpu.threads = threads;
    bc.cpu.isa = cfg.isa;
    TANDEM_ASSIGN_OR_RETURN(const model::ModelConfig file_config,
                            model::ModelConfig::FromGguf(file));
    bc.cuda_activations = file_config.DefaultActivations();  // tandemd's --activations=auto
    TANDEM_ASSIGN_OR_RETURN(b->backend_, kernels::CreateBackend(bc));
    const int max_batch = *std::max_element(cfg.batches.begin(), cfg.batches.end());
    const int max_prompt = *std::max_element(cfg.prefill.begin(), cfg.prefill.end());
    model::ModelOptions opts;
    opts.max_batch_tokens = std::max(cfg.chunk, max_batch);
    // The untimed context fill packs chunk / context sequences into one Forward.
    const int fill_seqs = std::max(1, cfg.chunk / cfg.context);
    opts.max_logit_rows = std::max(max_batch, fill_seqs);
    opts.max_seqs = std::max(max_batch, fill_seqs);
    opts.block_size = cfg.block_size;
    TANDEM_ASSIGN_OR_RETURN(b->model_, model::LlamaModel::Load(file, *b->backend_, opts));
    const model::ModelConfig& mc = b->model_->config();
    const int decode_len = cfg.context + cfg.steps;
    if (std::max(max_prompt, decode_len) > mc.context_length) {
      return absl::InvalidArgumentError(
          absl::StrCat("a benchmark sequence of ", std::max(max_prompt, decode_len),
                       " tokens exceeds the model's context of ", mc.context_length));
    }
    kvcache::KvCacheConfig kc = b->model_->KvCacheLayout(cfg.kv_dtype);
    const int per_seq = (decode_len + kc.block_size - 1) / kc.block_size;
    kc.num_blocks = std::max(max_batch * per_seq, (max_prompt + kc.block_size - 1) / kc.block_size);
    TANDEM_ASSIGN_OR_RETURN(b->cache_, kvcache::KvCache::Create(kc, *b->backend_));
    b->logits_.resize(static_cast<size_t>(max_batch) * mc.vocab_size);
    b->builder_ = std::make_unique<model::BatchBuilder>(b->model_->max_blocks_per_seq());
    return b;
  }

  std::string backend_name() const { return backend_->Name(); }

  // Seconds for one prompt of n tokens in one fresh sequence.
  absl::StatusOr<double> PrefillOnce(int n) {
    const std::vector<int32_t> prompt = Tokens(n);
    kvcache::BlockTable table(cache_->config().block_size);
    TANDEM_RETURN_IF_ERROR(table.Reserve(cache_->pool(), n));
    const auto t0 = Clock::now();
    absl::Status s = RunPrefill(table, prompt);
    const auto t1 = Clock::now();
    table.Release(cache_->pool());
    TANDEM_RETURN_IF_ERROR(s);
    return std::chrono::duration<double>(t1 - t0).count();
  }

  // Seconds for cfg.steps decode steps of `batch` sequences with cfg.context tokens each.
  absl::StatusOr<double> DecodeOnce(int batch) {
    const int bs = cache_->config().block_size;
    std::vector<kvcache::BlockTable> tables(batch, kvcache::BlockTable(bs));
    auto release = [&] {
      for (kvcache::BlockTable& t : tables) t.Release(cache_->pool());
    };
    for (kvcache::BlockTable& t : tables) {
      absl::Status s = t.Reserve(cache_->pool(), cfg_.context + cfg_.steps);
      if (!s.ok()) {
        release();
        return s;
      }
    }
    // Untimed: fill each sequence's context, packing whole sequences into a Forward.
    const std::vector<int32_t> ctx = Tokens(cfg_.context);
    for (int i = 0; i < batch;) {
      builder_->Clear();
      int used = 0;
      while (i < batch && (used == 0 || used + cfg_.context <= cfg_.chunk)) {
        builder_->AddSequence(tables[i], ctx, 0, /*want_logits=*/true);
        used += cfg_.context;
        ++i;
      }
      absl::Status s = model_->Forward(builder_->batch(), cache_->view(), logits_.data());
      if (!s.ok()) {
        release();
        return s;
      }
    }
    for (kvcache::BlockTable& t : tables) t.SetNumTokens(cfg_.context);

    const std::vector<int32_t> fed = Tokens(cfg_.steps * batch);
    const auto t0 = Clock::now();
    for (int step = 0; step < cfg_.steps; ++step) {
      builder_->Clear();
      const int pos = cfg_.context + step;
      for (int i = 0; i < batch; ++i) {
        builder_->AddSequence(tables[i], std::span(&fed[step * batch + i], 1), pos, true);
      }
      absl::Status s = model_->Forward(builder_->batch(), cache_->view(), logits_.data());
      if (!s.ok()) {
        release();
        return s;
      }
      for (kvcache::BlockTable& t : tables) t.SetNumTokens(pos + 1);
    }
    const auto t1 = Clock::now();
    release();
    return std::chrono::duration<double>(t1 - t0).count();
  }

 private:
  explicit EngineBench(const Config& cfg) : cfg_(cfg) {}

  // Fixed pseudo-random token ids (the same every run), avoiding the first 256 ids where
  // special and byte tokens live.
  std::vector<int32_t> Tokens(int n) const {
    std::mt19937 rng(1234 + n);
    const int vocab = model_->config().vocab_size;
    std::uniform_int_distribution<int32_t> dist(std::min(256, vocab - 1), vocab - 1);
    std::vector<int32_t> out(n);
    for (int32_t& t : out) t = dist(rng);
    return out;
  }

  absl::Status RunPrefill(kvcache::BlockTable& table, const std::vector<int32_t>& prompt) {
    const int total = static_cast<int>(prompt.size());
    for (int pos = 0; pos < total;) {
      const int n = std::min(cfg_.chunk, total - pos);
      builder_->Clear();
      // Each chunk returns one row, its last (the model needs at least one logit row).
      builder_->AddSequence(table, std::span(prompt).subspan(pos, n), pos, true);
      TANDEM_RETURN_IF_ERROR(model_->Forward(builder_->batch(), cache_->view(), logits_.data()));
      pos += n;
      table.SetNumTokens(pos);
    }
    return absl::OkStatus();
  }

  const Config cfg_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<model::LlamaModel> model_;
  std::unique_ptr<kvcache::KvCache> cache_;
  std::unique_ptr<model::BatchBuilder> builder_;
  std::vector<float> logits_;
};

// Runs `once` reps + 1 times (the first is a warm-up) and returns the timed seconds.
template <typename F>
absl::StatusOr<std::vector<double>> Repeat(int reps, F once) {
  TANDEM_RETURN_IF_ERROR(once().status());
  std::vector<double> secs;
  for (int r = 0; r < reps; ++r) {
    TANDEM_ASSIGN_OR_RETURN(double s, once());
    secs.push_back(s);
  }
  return secs;
}

absl::StatusOr<Config> ParseConfig() {
  Config c;
  c.model_path = absl::GetFlag(FLAGS_model);
  if (c.model_path.empty()) return absl::InvalidArgumentError("--model is required");
  c.device = absl::GetFlag(FLAGS_device);
  TANDEM_ASSIGN_OR_RETURN(c.threads, ParseIntList(absl::GetFlag(FLAGS_threads), "threads", 1));
  if (c.device != "cpu") c.threads = {1};  // a GPU backend has no thread count
  TANDEM_ASSIGN_OR_RETURN(c.prefill, ParseIntList(absl::GetFlag(FLAGS_prefill), "prefill", 1));
  TANDEM_ASSIGN_OR_RETURN(c.batches, ParseIntList(absl::GetFlag(FLAGS_batches), "batches", 1));
  TANDEM_ASSIGN_OR_RETURN(c.isa, kernels::cpu::ParseIsa(absl::GetFlag(FLAGS_isa)));
  TANDEM_ASSIGN_OR_RETURN(c.kv_dtype, kvcache::ParseKvDType(absl::GetFlag(FLAGS_kv_cache_dtype)));
  c.reps = absl::GetFlag(FLAGS_reps);
  c.context = absl::GetFlag(FLAGS_context);
  c.steps = absl::GetFlag(FLAGS_steps);
  c.chunk = absl::GetFlag(FLAGS_chunk);
  c.membw_mib = absl::GetFlag(FLAGS_membw_mib);
  c.block_size = absl::GetFlag(FLAGS_block_size);
  c.json = absl::GetFlag(FLAGS_json);
  if (c.reps < 1) return absl::InvalidArgumentError("--reps must be >= 1");
  if (c.context < 1) return absl::InvalidArgumentError("--context must be >= 1");
  if (c.steps < 1) return absl::InvalidArgumentError("--steps must be >= 1");
  if (c.chunk < 1) return absl::InvalidArgumentError("--chunk must be >= 1");
  if (c.context > c.chunk) return absl::InvalidArgumentError("--context must be <= --chunk");
  if (c.membw_mib < 0) return absl::InvalidArgumentError("--membw_mib must be >= 0");
  if (c.block_size < 1 || c.block_size > kvcache::kMaxBlockSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("--block_size must be in 1..", kvcache::kMaxBlockSize));
  }
  if (c.device != "cpu") c.membw_mib = 0;  // the host's bandwidth says nothing of a GPU's
  return c;
}

absl::Status Run(const Config& cfg) {
  TANDEM_ASSIGN_OR_RETURN(auto file, model::GgufFile::Open(cfg.model_path));
  const WeightBytes wb = CountWeightBytes(*file);
  TANDEM_ASSIGN_OR_RETURN(const model::ModelConfig mc, model::ModelConfig::FromGguf(*file));
  const double kv_bytes = KvBytesPerDecodeStep(mc, cfg.kv_dtype, cfg.context, cfg.steps);

  nlohmann::json out;
  out["model"] = cfg.model_path;
  out["device"] = cfg.device;
  out["isa"] = std::string(kernels::cpu::IsaName(cfg.isa));
  out["reps"] = cfg.reps;
  out["kv_cache_dtype"] = std::string(kvcache::KvDTypeName(cfg.kv_dtype));
  out["block_size"] = cfg.block_size;
  out["decode_context"] = cfg.context;
  out["decode_steps"] = cfg.steps;
  out["prefill_chunk"] = cfg.chunk;
  out["weight_bytes"] = {{"linear", wb.linear},
                         {"head", wb.head},
                         {"head_tied_to_embedding", wb.tied},
                         {"norms", wb.norms},
                         {"per_token", wb.per_token()},
                         {"matmul_weights", wb.matmul_weights}};
  out["kv_bytes_decode_b1"] = kv_bytes;

  std::unique_ptr<StreamReadBuffer> membw;
  for (int threads : cfg.threads) {
    nlohmann::json r;
    r["threads"] = threads;
    {
      TANDEM_ASSIGN_OR_RETURN(auto bench, EngineBench::Create(cfg, *file, threads));
      r["backend"] = bench->backend_name();
      for (int n : cfg.prefill) {
        TANDEM_ASSIGN_OR_RETURN(auto secs, Repeat(cfg.reps, [&] { return bench->PrefillOnce(n); }));
        std::vector<double> rates;
        for (double s : secs) rates.push_back(n / s);
        r["prefill"].push_back({{"tokens", n}, {"tok_s", Median(rates)}, {"runs_tok_s", rates}});
      }
      for (int b : cfg.batches) {
        TANDEM_ASSIGN_OR_RETURN(auto secs, Repeat(cfg.reps, [&] { return bench->DecodeOnce(b); }));
        std::vector<double> rates;
        for (double s : secs) rates.push_back(static_cast<double>(b) * cfg.steps / s);
        r["decode"].push_back({{"batch", b}, {"tok_s", Median(rates)}, {"runs_tok_s", rates}});
      }
    }  // the model's memory is freed before the bandwidth buffer is touched
    if (cfg.membw_mib > 0) {
      if (membw == nullptr) {
        membw = std::make_unique<StreamReadBuffer>(static_cast<size_t>(cfg.membw_mib) << 20);
        if (!membw->ok()) return absl::ResourceExhaustedError("cannot allocate the membw buffer");
      }
      const StreamIsa sisa = BestStreamIsa();
      const double gbps = membw->MedianGbps(sisa, threads, cfg.reps);
      r["membw_gbps"] = gbps;
      r["membw_isa"] = StreamIsaName(sisa);
      r["roofline_decode_b1_tok_s"] = gbps * 1e9 / static_cast<double>(wb.per_token());
      r["bound_decode_b1_tok_s"] = gbps * 1e9 / (static_cast<double>(wb.per_token()) + kv_bytes);
    }
    out["results"].push_back(r);
  }
  if (membw != nullptr) out["membw_checksum"] = membw->sink();

  if (cfg.json) {
    std::printf("%s\n", out.dump(2).c_str());
    return absl::OkStatus();
  }
  std::printf("model %s\nweights streamed per decode token: %.1f MB (linear %.1f + head %.1f%s)\n",
              cfg.model_path.c_str(), wb.per_token() / 1e6, wb.linear / 1e6, wb.head / 1e6,
              wb.tied ? ", tied to the embedding" : "");
  std::printf("KV cache read per batch-1 decode step: %.1f MB (%s, mean of the steps)\n",
              kv_bytes / 1e6, std::string(kvcache::KvDTypeName(cfg.kv_dtype)).c_str());
  std::printf("medians of %d reps; decode: context %d, %d steps\n\n", cfg.reps, cfg.context,
              cfg.steps);
  std::printf("%-8s %-26s", "threads", "backend");
  for (int n : cfg.prefill) std::printf(" %12s", absl::StrCat("pp", n, " tok/s").c_str());
  for (int b : cfg.batches) std::printf(" %12s", absl::StrCat("tg b", b, " tok/s").c_str());
  if (cfg.membw_mib > 0) {
    std::printf(" %9s %13s %8s %11s %9s", "GB/s", "roofline b1", "b1/roof", "bound b1", "b1/bound");
  }
  std::printf("\n");
  for (const nlohmann::json& r : out["results"]) {
    std::printf("%-8d %-26s", r["threads"].get<int>(), r["backend"].get<std::string>().c_str());
    for (const nlohmann::json& p : r["prefill"]) std::printf(" %12.1f", p["tok_s"].get<double>());
    for (const nlohmann::json& d : r["decode"]) std::printf(" %12.1f", d["tok_s"].get<double>());
    if (r.contains("membw_gbps")) {
      const double roof = r["roofline_decode_b1_tok_s"].get<double>();
      const double bound = r["bound_decode_b1_tok_s"].get<double>();
      std::printf(" %9.2f %13.1f", r["membw_gbps"].get<double>(), roof);
      // Only meaningful when batch 1 was measured.
      for (const nlohmann::json& d : r["decode"]) {
        if (d["batch"].get<int>() == 1) {
          std::printf(" %7.0f%% %11.1f %8.0f%%", 100 * d["tok_s"].get<double>() / roof, bound,
                      100 * d["tok_s"].get<double>() / bound);
        }
      }
    }
    std::printf("\n");
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "tandem-bench-engine --model PATH [--threads 1,2] [--isa auto] [--reps 5] [--json]");
  absl::ParseCommandLine(argc, argv);
  absl::StatusOr<tandem::bench::Config> cfg = tandem::bench::ParseConfig();
  if (!cfg.ok()) {
    std::fprintf(stderr, "tandem-bench-engine: %s (see --help)\n",
                 std::string(cfg.status().message()).c_str());
    return tandem::bench::kUsageError;
  }
  absl::Status s = tandem::bench::Run(*cfg);
  if (!s.ok()) {
    std::fprintf(stderr, "tandem-bench-engine: %s\n", std::string(s.message()).c_str());
    return tandem::bench::kUsageError;
  }
  return 0;
}
