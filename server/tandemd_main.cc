// tandemd: the tandem serving daemon. An engine behind an OpenAI-compatible HTTP API and the
// tandem.v1 gRPC API: one colocated instance (prefill and decode together, continuous batching
// with chunked prefill), a prefill and a decode instance in one process (--disaggregation on),
// or one role of a cluster (--role=router|prefill|decode: the router serves the API and
// dispatches to workers, which register with it and move KV to each other;
// docs/disaggregation.md). Flags are read here only and turned into each module's config.
//
// Lifecycle: load (with progress on stderr), serve, and on SIGTERM / SIGINT drain: readiness
// goes false, new requests get 503 / UNAVAILABLE (a worker reports draining and refuses new
// phases), requests in flight finish (up to --shutdown-timeout), then exit 0. A second signal
// stops at once.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/check.h"
#include "common/flag_names.h"
#include "common/str_cat.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/thread_pool.h"
#include "kvcache/kv_cache.h"
#include "kvcache/transfer/kv_data_plane.h"
#include "kvcache/transfer/kv_nccl_plane.h"
#include "kvcache/transfer/kv_nccl_transport.h"
#include "kvcache/transfer/kv_receiver.h"
#include "kvcache/transfer/kv_shm.h"
#include "kvcache/transfer/kv_tcp.h"
#include "model/chat_template.h"
#include "model/gguf_file.h"
#include "model/tokenizer.h"
#include "scheduler/disaggregated_engine.h"
#include "scheduler/engine_instance.h"
#include "scheduler/kv_arrivals.h"
#include "scheduler/remote_handoff.h"
#include "server/cluster/cluster_metrics.h"
#include "server/cluster/router_engine.h"
#include "server/cluster/worker_agent.h"
#include "server/cluster/worker_service.h"
#include "server/engine_frontend.h"
#include "server/grpc/grpc_server.h"
#include "server/grpc/status_convert.h"
#include "server/http/http_server.h"
#include "server/http_api.h"
#include "server/serving_metrics.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, model, "", "Path of the GGUF model file (required).");
ABSL_FLAG(std::string, served_model_name, "",
          "Model name the API answers to (default: the file name without .gguf).");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address the HTTP and gRPC servers bind.");
ABSL_FLAG(int, port, 8000, "HTTP port (0: pick a free one).");
ABSL_FLAG(int, grpc_port, 50051, "gRPC port (0: pick a free one; -1: no gRPC server).");
ABSL_FLAG(std::string, api_key, "", "If set, requests must carry 'Authorization: Bearer KEY'.");
ABSL_FLAG(bool, no_ui, false,
          "Serve no chat page at GET / (404 instead). The page (docs/chat-page.md) is served by "
          "colocated daemons and routers, never by prefill/decode workers.");
ABSL_FLAG(int, max_num_seqs, 64, "Most sequences running at once.");
ABSL_FLAG(int, max_num_batched_tokens, 512,
          "Token budget of one engine step (decode tokens plus prefill chunks).");
ABSL_FLAG(int, max_queue, 1024, "Most sequences waiting; beyond, requests get 429.");
ABSL_FLAG(std::string, device, "cpu",
          "Device of the engine instance: cpu, or cuda:N in a build with the CUDA backend.");
ABSL_FLAG(std::string, activations, "auto",
          "Activation dtype on a GPU (--device cuda:N): f16, bf16, or auto (bf16 for models whose "
          "activations pass fp16's range, Gemma 3; f16 otherwise). The CPU computes in f32.");
ABSL_FLAG(std::string, sampling, "auto",
          "Where tokens are sampled: device (the backend's sampling op: on a GPU only the ids and "
          "logprobs cross to the host; rows with penalties or top_logprobs are still sampled on "
          "the host), host, or auto (device on a GPU, host on the CPU).");
ABSL_FLAG(int, threads, 0, "CPU threads of the engine instance (0: every core).");
ABSL_FLAG(std::string, disaggregation, "off",
          "on: prefill and decode run as separate instances on disjoint sets of the --threads "
          "cores (pinned), the KV cache handed over in process; off: one colocated instance.");
ABSL_FLAG(bool, enable_prefix_caching, true,
          "Prefix caching: a prompt's whole KV blocks that another prompt already computed (the "
          "same tokens from the start) are shared instead of computed again; cached blocks no "
          "request holds are evicted, least recently used first, only when the cache runs out. "
          "Colocated and prefill instances (--enable-prefix-caching=false turns it off).");
ABSL_FLAG(int, prefill_instances, 1,
          "With --disaggregation=on: prefill instances (each on cores of its own; together with "
          "--decode-instances at most --threads).");
ABSL_FLAG(int, decode_instances, 1,
          "With --disaggregation=on: decode instances (each on cores of its own).");
ABSL_FLAG(std::string, role, "colocated",
          "colocated (one process serves everything), or a cluster role: router (the public API, "
          "no weights; dispatches to workers), prefill or decode (workers that register with "
          "--router).");
ABSL_FLAG(std::string, router, "",
          "Workers: the router's cluster address, host:port (its --cluster-port).");
ABSL_FLAG(int, cluster_port, 50052,
          "Router: where workers register. Workers: their control-plane port (0: pick a free "
          "one).");
ABSL_FLAG(int, kv_port, 0, "Decode workers: where prefill workers push KV (0: pick a free one).");
ABSL_FLAG(std::string, advertise_host, "",
          "Workers: the host the router and the other workers dial to reach this one (default: "
          "--host, or this machine's host name when --host is a wildcard).");
ABSL_FLAG(std::string, kv_advertise_address, "",
          "Decode workers: the host:port prefill workers dial for KV (default: "
          "--advertise-host and the KV port), e.g. another network or a proxy.");
ABSL_FLAG(std::string, kv_direct_host, "",
          "Prefill workers with --kv-transport=direct: this host's address that decode workers "
          "connect to for the data plane, a port of its own per connection (default: "
          "--advertise-host), e.g. its address on a separate KV network.");
ABSL_FLAG(std::string, kv_push, "layer",
          "Prefill workers: layer (each layer's KV leaves as soon as the prefill step has it, "
          "while later layers compute) or after-prefill (the whole KV after the step).");
ABSL_FLAG(int, kv_transfer_timeout_ms, 30000,
          "Decode workers (and prefill workers with --kv-transport=direct or nccl): a KV "
          "transfer not committed this long after its reservation is aborted and its blocks "
          "freed.");
ABSL_FLAG(std::string, cluster_secret_file, "",
          "A file holding the secret every cluster peer must present (router, workers, KV "
          "transfers). Without one, only loopback peers are accepted.");
ABSL_FLAG(int, heartbeat_ms, 1000, "Router: how often workers report their load.");
ABSL_FLAG(int, worker_timeout_ms, 3000,
          "Router: a worker silent for this long is dropped, and its requests fail.");
ABSL_FLAG(bool, prefix_aware_routing, true,
          "Router: a prompt's prefix that a prefill worker's cache is predicted to hold (from "
          "the prompts the router sent it) counts in that worker's predicted TTFT, so prompts "
          "sharing a prefix go where it is cached unless that worker's queue costs more than "
          "the prefix saves. false: placement as if every cache were empty.");
ABSL_FLAG(std::string, kv_transport, "inproc",
          "With --disaggregation=on, how KV moves from prefill to decode: inproc (the copy is "
          "handed over in memory), tcp (the protocol between processes, over loopback: decode "
          "leases blocks, prefill pushes the layers into them, then commits) or shm (that "
          "protocol over shared memory). Decode workers (--role=decode): tcp (on --kv-port; the "
          "default), shm (a shared-memory listener, for prefill workers on the same host), "
          "direct (block to block, no re-paging: the layers go from the prefill cache's blocks "
          "into the reserved ones over a second TCP connection; CPU workers) or nccl (the same "
          "over NCCL, between GPUs). Prefill workers: direct or nccl to send that way (the "
          "decode workers must use the same); otherwise tcp or shm, as each decode worker's "
          "address says.");
ABSL_FLAG(
    std::string, kv_transfer_dtype, "auto",
    "With --kv-transport=tcp or shm, the KV dtype on the wire: auto (the cache's), f16, f32 or "
    "int8 (quantized per token and head).");
ABSL_FLAG(std::string, kv_cache_memory, "1GiB",
          "KV cache size: bytes, or with a KiB/MiB/GiB suffix.");
ABSL_FLAG(std::string, kv_cache_dtype, "f16", "KV cache element type: f16, f32 or int8.");
ABSL_FLAG(int, block_size, 16,
          "Tokens per KV cache block (1..256): the unit of allocation, prefix caching and KV "
          "transfer. Larger blocks make long-context decode attention read longer contiguous "
          "runs (faster on the CPU) at the cost of coarser prefix reuse and more memory left "
          "in each sequence's last block.");
ABSL_FLAG(bool, kv_window_local, true,
          "Sliding-window models (Gemma 3): the local layers keep only their window's KV "
          "(every role; a prefill worker sends only the window of those layers).");
ABSL_FLAG(bool, nano_batching, false,
          "CPU with >= 2 threads per instance, or a GPU: decode-only steps that the latency "
          "models predict faster run as two concurrent nano-batches, on halves of the threads "
          "(CPU) or on two streams pipelined so that one's GEMMs run beside the other's "
          "attention (GPU; not yet run on one). One more latency profile at start. Off by "
          "default: on 2 cores it pays only for decode batches of ~64 (bench/RESULTS.md).");
ABSL_FLAG(std::string, isa, "auto", "CPU kernels: auto, scalar, avx2, avx512 or amx.");
ABSL_FLAG(std::string, chat_template, "",
          "Chat template: chatml, llama3, mistral, llama2 or gemma (default: from the GGUF; a "
          "model without one serves completions only).");
ABSL_FLAG(double, ttft_slo_ms, 1000,
          "TTFT SLO (ms) of requests that name none (0: none). A request with neither a TTFT "
          "nor a TPOT SLO is best-effort.");
ABSL_FLAG(double, tpot_slo_ms, 100, "TPOT SLO (ms) of requests that name none (0: none).");
ABSL_FLAG(std::string, slo_admission, "reject",
          "reject: a request that cannot meet its SLO (or would make others miss theirs) gets "
          "429 at once; queue: it waits until its deadline is out of reach, then 429; off: "
          "admit everything.");
ABSL_FLAG(std::string, scheduling_policy, "slo",
          "slo: deadline-ordered steps sized to the tightest TPOT by the latency model; "
          "fcfs: first come first served under the token budget alone.");
ABSL_FLAG(std::string, latency_profile, "",
          "File of the latency model: loaded when it exists and was taken on the same model, "
          "device and settings, else profiled and written there.");
ABSL_FLAG(bool, profile_latency, true,
          "Profile the step latency at start when no --latency-profile loads (a few seconds). "
          "Without a latency model SLO admission admits everything.");
ABSL_FLAG(double, slo_budget_margin, 0.9,
          "Share of the tightest running TPOT SLO one engine step may take.");
ABSL_FLAG(double, best_effort_aging_ms, 5000,
          "Best-effort requests are scheduled as if due this long after they arrive.");
ABSL_FLAG(int, spin_us, 200,
          "How long idle CPU worker threads poll for work before sleeping (microseconds).");
ABSL_FLAG(double, shutdown_timeout, 30, "Seconds to let requests in flight finish on SIGTERM.");
ABSL_FLAG(int64_t, max_body_bytes, 8 << 20, "Largest HTTP request body.");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error or off.");

namespace tandem::server {
namespace {

absl::StatusOr<size_t> ParseBytes(std::string s) {
  size_t mult = 1;
  for (auto [suffix, m] : {std::pair{"KiB", size_t{1} << 10}, std::pair{"MiB", size_t{1} << 20},
                           std::pair{"GiB", size_t{1} << 30}}) {
    if (s.size() > 3 && s.compare(s.size() - 3, 3, suffix) == 0) {
      mult = m;
      s.resize(s.size() - 3);
    }
  }
  uint64_t v = 0;
  if (!absl::SimpleAtoi(s, &v) || v == 0 || v > (uint64_t{1} << 50) / mult) {
    return absl::InvalidArgumentError(StrCat("--kv-cache-memory: not a size: '", s, "'"));
  }
  return v * mult;
}

// The device the weights go to, for the startup log: "the CPU backend (2 threads)" or
// "cuda:0".
std::string BackendWords(const kernels::BackendConfig& b) {
  return b.device == "cpu" ? StrCat("the CPU backend (", b.cpu.threads, " threads)") : b.device;
}

// The CPU's model name (/proc/cpuinfo), part of the latency profile's key: a profile taken on
// one CPU model does not describe another.
std::string CpuModelName() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown cpu";
}

// A worker's face to server/: the HTTP and gRPC servers of a worker answer health, readiness
// and metrics from its instance, and refuse generation (that is the router's).
class WorkerFacade : public scheduler::Engine {
 public:
  // `waiting_elsewhere`: sequences the worker holds outside its instance (a decode worker's
  // requests whose KV has not arrived), counted as waiting; may be null.
  WorkerFacade(scheduler::EngineInstance& inst, std::string role,
               std::function<int()> waiting_elsewhere)
      : inst_(inst), role_(std::move(role)), waiting_elsewhere_(std::move(waiting_elsewhere)) {}
  absl::StatusOr<scheduler::Admission> Submit(std::vector<scheduler::SequenceRequest>) override {
    return absl::UnavailableError(
        StrCat("this tandemd is a ", role_, " worker: send requests to the router"));
  }
  void Stop() override { inst_.Stop(); }
  scheduler::InstanceStats stats() const override {
    scheduler::InstanceStats s = inst_.stats();
    if (waiting_elsewhere_) s.waiting += waiting_elsewhere_();
    return s;
  }
  const model::ModelConfig& model_config() const override { return inst_.model_config(); }
  int kv_capacity_tokens() const override { return inst_.kv_capacity_tokens(); }

 private:
  scheduler::EngineInstance& inst_;
  const std::string role_;
  const std::function<int()> waiting_elsewhere_;
};

absl::StatusOr<std::string> ReadSecret(const std::string& path) {
  if (path.empty()) return std::string();
  std::ifstream f(path);
  if (!f) return absl::InvalidArgumentError(StrCat("--cluster-secret-file: cannot read ", path));
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  if (s.empty())
    return absl::InvalidArgumentError(StrCat("--cluster-secret-file: ", path, " is empty"));
  return s;
}

std::string AdvertiseHost() {
  std::string h = absl::GetFlag(FLAGS_advertise_host);
  if (!h.empty()) return h;
  h = absl::GetFlag(FLAGS_host);
  if (h != "0.0.0.0" && h != "::" && h != "[::]") return h;
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) == 0 && name[0] != 0) return name;
  return "127.0.0.1";
}

std::string HostPort(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? StrCat("[", host, "]:", port)
                                             : StrCat(host, ":", port);
}

// The transport a decode worker's KV address names: "shm" (shm:NAME), "direct" or "nccl"
// (direct:HOST:PORT, nccl:HOST:PORT: the block-to-block protocol, its control connection on
// HOST:PORT), else "tcp" (HOST:PORT).
std::string KvAddressTransport(const std::string& address) {
  for (const char* kind : {"shm", "direct", "nccl"}) {
    if (address.rfind(StrCat(kind, ":"), 0) == 0) return kind;
  }
  return "tcp";
}

bool IsDirectTransport(const std::string& transport) {
  return transport == "direct" || transport == "nccl";
}

// The data plane of --kv-transport=direct (the byte plane, between CPU workers) or nccl
// (between GPUs).
absl::StatusOr<std::unique_ptr<kvcache::KvDataPlaneFactory>> MakeKvPlanes(
    const std::string& transport, const kernels::BackendConfig& backend) {
  if (transport == "nccl") {
    kvcache::NcclPlaneConfig nc;
    nc.device = backend.cuda_ordinal();
    if (nc.device < 0) {
      return absl::InvalidArgumentError(
          "--kv-transport=nccl moves KV between GPUs: it needs --device cuda:N (CPU workers "
          "use direct, tcp or shm)");
    }
    return kvcache::MakeNcclDataPlaneFactory(nc);
  }
  if (backend.device != "cpu") {
    return absl::InvalidArgumentError(
        StrCat("--kv-transport=direct moves KV between host memories (CPU workers): with --device ",
               backend.device, " use nccl"));
  }
  const std::string host = absl::GetFlag(FLAGS_kv_direct_host);
  return kvcache::MakeByteDataPlaneFactory(host.empty() ? AdvertiseHost() : host);
}

// What identifies the model across processes: a router and its workers must agree on it.
std::string ModelFingerprint(const std::string& path, const model::ModelConfig& mc) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  return StrCat(mc.architecture, " ", mc.n_layers, "x", mc.hidden, " vocab ", mc.vocab_size, ", ",
                ec ? 0 : size, " bytes");
}

absl::Status Run() {
  const std::string model_path = absl::GetFlag(FLAGS_model);
  if (model_path.empty()) return absl::InvalidArgumentError("--model is required");
  const auto level = spdlog::level::from_str(absl::GetFlag(FLAGS_log_level));
  if (level == spdlog::level::off && absl::GetFlag(FLAGS_log_level) != "off") {
    return absl::InvalidArgumentError("--log-level must be trace, debug, info, warn, error or off");
  }
  spdlog::set_level(level);

  // Everything that can be checked before the model loads.
  TANDEM_ASSIGN_OR_RETURN(size_t kv_bytes, ParseBytes(absl::GetFlag(FLAGS_kv_cache_memory)));
  TANDEM_ASSIGN_OR_RETURN(kernels::KvDType kv_dtype,
                          kvcache::ParseKvDType(absl::GetFlag(FLAGS_kv_cache_dtype)));
  TANDEM_ASSIGN_OR_RETURN(kernels::cpu::Isa isa, kernels::cpu::ParseIsa(absl::GetFlag(FLAGS_isa)));
  int threads = absl::GetFlag(FLAGS_threads);
  if (threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  kernels::BackendConfig backend;
  backend.device = absl::GetFlag(FLAGS_device);
  if (const std::string a = absl::GetFlag(FLAGS_activations); a == "f16") {
    backend.cuda_activations = kernels::ActivationDType::kF16;
  } else if (a == "bf16") {
    backend.cuda_activations = kernels::ActivationDType::kBF16;
  } else if (a != "auto") {
    return absl::InvalidArgumentError(
        StrCat("--activations must be auto, f16 or bf16, got '", a, "'"));
  }
  TANDEM_ASSIGN_OR_RETURN(const model::SamplingPlace sampling,
                          model::ParseSamplingPlace(absl::GetFlag(FLAGS_sampling)));
  backend.cpu.threads = threads;
  backend.cpu.isa = isa;
  backend.cpu.spin_us = absl::GetFlag(FLAGS_spin_us);
  TANDEM_RETURN_IF_ERROR(backend.Validate());
  if (absl::GetFlag(FLAGS_shutdown_timeout) < 0) {
    return absl::InvalidArgumentError("--shutdown-timeout must be >= 0");
  }
  TANDEM_ASSIGN_OR_RETURN(scheduler::AdmissionMode admission,
                          scheduler::ParseAdmissionMode(absl::GetFlag(FLAGS_slo_admission)));
  TANDEM_ASSIGN_OR_RETURN(scheduler::SchedulePolicy policy,
                          scheduler::ParseSchedulePolicy(absl::GetFlag(FLAGS_scheduling_policy)));
  for (auto [name, v] :
       {std::pair{"--ttft-slo-ms", absl::GetFlag(FLAGS_ttft_slo_ms)},
        std::pair{"--tpot-slo-ms", absl::GetFlag(FLAGS_tpot_slo_ms)},
        std::pair{"--best-effort-aging-ms", absl::GetFlag(FLAGS_best_effort_aging_ms)}}) {
    if (!std::isfinite(v) || v < 0) {
      return absl::InvalidArgumentError(StrCat(name, " must be a finite number >= 0"));
    }
  }
  if (absl::GetFlag(FLAGS_best_effort_aging_ms) <= 0) {
    return absl::InvalidArgumentError("--best-effort-aging-ms must be > 0");
  }
  if (absl::GetFlag(FLAGS_spin_us) < 0) return absl::InvalidArgumentError("--spin-us must be >= 0");

  const absl::Time t0 = absl::Now();
  spdlog::info("loading {}", model_path);
  TANDEM_ASSIGN_OR_RETURN(auto file, model::GgufFile::Open(model_path));
  TANDEM_ASSIGN_OR_RETURN(auto tokenizer, model::Tokenizer::FromGguf(*file));
  const std::string tmpl_flag = absl::GetFlag(FLAGS_chat_template);
  absl::StatusOr<model::ChatTemplate> tmpl =
      tmpl_flag.empty() ? model::ChatTemplate::FromGgufTemplate(
                              file->GetString("tokenizer.chat_template").value_or(""))
                        : model::ChatTemplate::FromName(tmpl_flag);
  if (!tmpl.ok()) return tmpl.status();
  if (tmpl->kind() == model::ChatTemplateKind::kNone) {
    spdlog::info(
        "[1/3] tokenizer: {} tokens, chat template none: the model file has no "
        "tokenizer.chat_template, so /v1/chat/completions is off (400); completions are served, "
        "or pass --chat-template NAME",
        tokenizer->vocab_size());
  } else {
    spdlog::info("[1/3] tokenizer: {} tokens, chat template {}", tokenizer->vocab_size(),
                 std::string(tmpl->name()));
  }

  scheduler::EngineInstanceConfig ic;
  ic.backend = backend;
  ic.scheduler.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  ic.scheduler.max_batch_tokens = absl::GetFlag(FLAGS_max_num_batched_tokens);
  ic.scheduler.policy = policy;
  ic.scheduler.budget_margin = absl::GetFlag(FLAGS_slo_budget_margin);
  ic.scheduler.best_effort_aging =
      absl::Microseconds(absl::GetFlag(FLAGS_best_effort_aging_ms) * 1000);
  ic.admission = admission;
  ic.profile = absl::GetFlag(FLAGS_profile_latency);
  ic.latency_profile = absl::GetFlag(FLAGS_latency_profile);
  {
    std::error_code ec;
    const auto size = std::filesystem::file_size(model_path, ec);
    ic.latency_profile_key = StrCat(CpuModelName(), "; model bytes ", ec ? 0 : size);
  }
  int last_profile_pct = -1;
  ic.profile_progress = [&last_profile_pct](int done, int total) {
    const int pct = 100 * done / total;
    if (pct >= last_profile_pct + 25 || done == total) {
      spdlog::info("[2/3] latency profile: {}/{} step shapes ({}%)", done, total, pct);
      last_profile_pct = pct;
    }
  };
  std::atomic<ServingMetrics*> step_metrics{nullptr};
  ic.step_observer = [&step_metrics](const scheduler::StepShape&, double predicted,
                                     double measured) {
    if (ServingMetrics* m = step_metrics.load(std::memory_order_acquire)) {
      m->OnStep(predicted, measured);
    }
  };
  ic.max_queue = absl::GetFlag(FLAGS_max_queue);
  ic.kv_dtype = kv_dtype;
  ic.kv_cache_bytes = kv_bytes;
  ic.block_size = absl::GetFlag(FLAGS_block_size);
  if (ic.block_size < 1 || ic.block_size > kvcache::kMaxBlockSize) {
    return absl::InvalidArgumentError(StrCat("--block-size must be in 1..", kvcache::kMaxBlockSize,
                                             " tokens, got ", ic.block_size));
  }
  ic.prefix_caching = absl::GetFlag(FLAGS_enable_prefix_caching);
  ic.window_local_kv = absl::GetFlag(FLAGS_kv_window_local);
  ic.nano_batching = absl::GetFlag(FLAGS_nano_batching);
  ic.sampling = sampling;
  ic.eos_token_id = tokenizer->eos_id();
  int last_pct = 0;
  ic.load_progress = [&last_pct](int done, int total) {
    const int pct = 100 * done / total;
    if (pct >= last_pct + 25 || done == total) {
      spdlog::info("[2/3] weights: {}/{} layers ({}%)", done, total, pct);
      last_pct = pct;
    }
  };
  TANDEM_RETURN_IF_ERROR(ic.Validate());
  const std::string role = absl::GetFlag(FLAGS_role);
  if (role != "colocated" && role != "router" && role != "prefill" && role != "decode") {
    return absl::InvalidArgumentError("--role must be colocated, router, prefill or decode");
  }
  if (role != "colocated" && absl::GetFlag(FLAGS_disaggregation) == "on") {
    return absl::InvalidArgumentError(
        "--disaggregation=on runs both phases in one process; with --role=" + role +
        " the phases are separate processes already");
  }
  if ((role == "prefill" || role == "decode") && absl::GetFlag(FLAGS_router).empty()) {
    return absl::InvalidArgumentError("--role=" + role + " needs --router HOST:PORT");
  }
  if (role == "router" && absl::GetFlag(FLAGS_cluster_port) <= 0) {
    return absl::InvalidArgumentError("--role=router needs a --cluster-port > 0 for workers");
  }
  if (absl::GetFlag(FLAGS_heartbeat_ms) <= 0 ||
      absl::GetFlag(FLAGS_worker_timeout_ms) <= absl::GetFlag(FLAGS_heartbeat_ms)) {
    return absl::InvalidArgumentError(
        "--heartbeat-ms must be > 0 and --worker-timeout-ms greater than it");
  }
  TANDEM_ASSIGN_OR_RETURN(const std::string secret,
                          ReadSecret(absl::GetFlag(FLAGS_cluster_secret_file)));
  if (role != "colocated" && secret.empty()) {
    spdlog::warn(
        "no --cluster-secret-file: cluster peers are accepted from loopback only, "
        "unauthenticated");
  }
  std::optional<kernels::KvDType> wire_dtype;
  if (const std::string wire = absl::GetFlag(FLAGS_kv_transfer_dtype); wire != "auto") {
    TANDEM_ASSIGN_OR_RETURN(wire_dtype, kvcache::ParseKvDType(wire));
  }
  // The cluster's pieces of this process, by role (all null for colocated).
  // Declared so that each outlives what calls it: the instance calls the handoff, the
  // arrivals and the receiver call the instance, the servers call the services.
  cluster::RouterEngine* router = nullptr;                 // owned by `engine`
  std::unique_ptr<kvcache::KvDataPlaneFactory> kv_planes;  // --kv-transport=direct or nccl
  std::unique_ptr<scheduler::RemoteHandoff> handoff;
  std::unique_ptr<scheduler::EngineInstance> worker_instance;
  std::unique_ptr<scheduler::KvArrivals> arrivals;
  std::unique_ptr<kvcache::KvReceiver> kv_receiver;
  std::unique_ptr<kvcache::KvNcclReceiver> kv_direct_receiver;
  std::unique_ptr<cluster::WorkerService> worker_service;
  std::unique_ptr<grpc::Server> cluster_server;
  std::unique_ptr<cluster::WorkerAgent> agent;
  // Starts the cluster port with `service`; returns the port bound.
  auto start_cluster_server = [&](grpc::Service* service) -> absl::StatusOr<int> {
    grpc::ServerBuilder b;
    int bound = 0;
    b.AddListeningPort(HostPort(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_cluster_port)),
                       grpc::InsecureServerCredentials(), &bound);
    b.RegisterService(service);
    b.SetMaxReceiveMessageSize(64 << 20);
    // The router pings idle connections to notice lost workers (and workers the router): let
    // it, at most once a second.
    b.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    b.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
    b.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
    cluster_server = b.BuildAndStart();
    if (!cluster_server || bound == 0) {
      return absl::UnavailableError(
          StrCat("cannot bind the cluster port ", absl::GetFlag(FLAGS_cluster_port)));
    }
    return bound;
  };
  const std::string disaggregation = absl::GetFlag(FLAGS_disaggregation);
  if (disaggregation != "on" && disaggregation != "off") {
    return absl::InvalidArgumentError("--disaggregation must be on or off");
  }
  if (role == "colocated" && disaggregation == "off" &&
      (absl::GetFlag(FLAGS_kv_transport) != "inproc" ||
       absl::GetFlag(FLAGS_kv_transfer_dtype) != "auto")) {
    return absl::InvalidArgumentError(
        "--kv-transport and --kv-transfer-dtype need --disaggregation=on");
  }
  if (disaggregation == "off" &&
      (absl::GetFlag(FLAGS_prefill_instances) != 1 || absl::GetFlag(FLAGS_decode_instances) != 1)) {
    return absl::InvalidArgumentError(
        "--prefill-instances and --decode-instances need --disaggregation=on");
  }
  std::unique_ptr<scheduler::Engine> engine;
  std::vector<scheduler::EngineInstance*> instances;
  if (role == "router") {
    cluster::RouterConfig rc;
    TANDEM_ASSIGN_OR_RETURN(rc.model, model::ModelConfig::FromGguf(*file));
    rc.model_fingerprint = ModelFingerprint(model_path, rc.model);
    rc.secret = secret;
    rc.heartbeat_interval = absl::Milliseconds(absl::GetFlag(FLAGS_heartbeat_ms));
    rc.worker_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_worker_timeout_ms));
    rc.prefix_aware = absl::GetFlag(FLAGS_prefix_aware_routing);
    auto r = std::make_unique<cluster::RouterEngine>(rc);
    router = r.get();
    engine = std::move(r);
    TANDEM_ASSIGN_OR_RETURN(const int port, start_cluster_server(router));
    spdlog::info("[2/3] router: no weights; workers register on port {} (model '{}')", port,
                 rc.model_fingerprint);
  } else if (role == "prefill" || role == "decode") {
    scheduler::EngineInstanceConfig wc = ic;
    wc.name = role;
    const std::string kv_transport = absl::GetFlag(FLAGS_kv_transport);
    if (kv_transport != "inproc" && kv_transport != "tcp" && kv_transport != "shm" &&
        !IsDirectTransport(kv_transport)) {
      return absl::InvalidArgumentError(
          StrCat("--kv-transport of a ", role, " worker must be tcp, shm, direct or nccl"));
    }
    if (absl::GetFlag(FLAGS_kv_transfer_timeout_ms) <= 0) {
      return absl::InvalidArgumentError("--kv-transfer-timeout-ms must be > 0");
    }
    const absl::Duration kv_transfer_timeout =
        absl::Milliseconds(absl::GetFlag(FLAGS_kv_transfer_timeout_ms));
    const bool kv_direct = IsDirectTransport(kv_transport);
    if (kv_direct) {
      if (wire_dtype.has_value()) {
        return absl::InvalidArgumentError(
            "--kv-transfer-dtype needs --kv-transport=tcp or shm: direct and nccl move the "
            "cache's blocks as they are");
      }
      TANDEM_ASSIGN_OR_RETURN(kv_planes, MakeKvPlanes(kv_transport, backend));
    }
    if (role == "prefill") {
      scheduler::RemoteHandoffConfig hc;
      hc.connect = [secret, kv_transport, kv_direct](const std::string& address)
          -> absl::StatusOr<std::unique_ptr<kvcache::KvConnection>> {
        // The decode worker's kv_address says its transport; this worker's must be the same
        // protocol (tcp and shm carry the same one).
        const std::string theirs = KvAddressTransport(address);
        if (kv_direct ? theirs != kv_transport : IsDirectTransport(theirs)) {
          // The cluster's set-up, not the request, is wrong: a 503, which the router may try
          // on another decode worker.
          return absl::UnavailableError(StrCat("the decode worker at ", address, " takes KV over ",
                                               theirs, ", this prefill worker sends it over ",
                                               kv_direct ? kv_transport : "tcp/shm",
                                               ": start both roles with the same --kv-transport"));
        }
        if (theirs == "shm") return kvcache::ConnectShm(address, absl::Seconds(5), secret);
        return kvcache::ConnectTcp(theirs == "tcp" ? address : address.substr(theirs.size() + 1),
                                   absl::Seconds(5), secret);
      };
      hc.wire_dtype = wire_dtype;
      hc.direct_planes = kv_planes.get();
      hc.transfer_timeout = kv_transfer_timeout;
      const std::string push = absl::GetFlag(FLAGS_kv_push);
      if (push != "layer" && push != "after-prefill") {
        return absl::InvalidArgumentError("--kv-push must be layer or after-prefill");
      }
      hc.layer_wise = push == "layer";
      handoff = std::make_unique<scheduler::RemoteHandoff>(hc);
      wc.role = scheduler::InstanceRole::kPrefill;
      wc.handoff = handoff.get();
    } else {
      wc.role = scheduler::InstanceRole::kDecode;
    }
    spdlog::info("[2/3] {} worker: loading weights onto {}...", role, BackendWords(backend));
    TANDEM_ASSIGN_OR_RETURN(worker_instance, scheduler::EngineInstance::Create(wc, *file));
    instances = {worker_instance.get()};
    std::string kv_address;
    if (role == "decode") {
      arrivals = std::make_unique<scheduler::KvArrivals>(*worker_instance);
      const bool kv_shm = kv_transport == "shm";
      TANDEM_ASSIGN_OR_RETURN(
          auto listener,
          kv_shm ? kvcache::ListenShm("")
                 : kvcache::ListenTcp(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_kv_port)));
      const std::string bound = listener->address();
      const int kv_port = kv_shm ? 0 : std::stoi(bound.substr(bound.rfind(':') + 1));
      auto on_refused_peer = [](const absl::Status& s) {
        spdlog::warn("KV receiver: refused a connection: {}", std::string(s.message()));
      };
      if (kv_direct) {
        kvcache::KvNcclReceiverConfig nrc;
        nrc.layout = worker_instance->direct_kv_layout();
        nrc.transfer_timeout = kv_transfer_timeout;
        nrc.secret = secret;
        nrc.on_refused_peer = on_refused_peer;
        kv_direct_receiver =
            kvcache::KvNcclReceiver::Start(std::move(listener), *arrivals, *kv_planes, nrc);
      } else {
        kvcache::KvReceiverConfig krc;
        krc.secret = secret;
        krc.transfer_timeout = kv_transfer_timeout;
        krc.on_refused_peer = on_refused_peer;
        kv_receiver = kvcache::KvReceiver::Start(std::move(listener), *arrivals, krc);
      }
      kv_address = absl::GetFlag(FLAGS_kv_advertise_address).empty()
                       ? HostPort(AdvertiseHost(), kv_port)
                       : absl::GetFlag(FLAGS_kv_advertise_address);
      if (kv_shm) kv_address = bound;  // "shm:NAME", for workers on this host
      // Prefill workers learn the protocol from the address: "direct:HOST:PORT".
      if (kv_direct && KvAddressTransport(kv_address) != kv_transport) {
        kv_address = StrCat(kv_transport, ":", kv_address);
      }
      worker_service = cluster::WorkerService::ForDecode(*worker_instance, *arrivals, secret);
    } else {
      worker_service = cluster::WorkerService::ForPrefill(*worker_instance, *handoff, secret);
    }
    TANDEM_ASSIGN_OR_RETURN(const int port, start_cluster_server(worker_service.get()));
    cluster::WorkerAgentConfig ac;
    ac.router_address = absl::GetFlag(FLAGS_router);
    ac.secret = secret;
    ac.registration.set_role(role == "prefill" ? tandem::v1::WORKER_ROLE_PREFILL
                                               : tandem::v1::WORKER_ROLE_DECODE);
    ac.registration.set_name(StrCat(role, "@", HostPort(AdvertiseHost(), port)));
    ac.registration.set_control_address(HostPort(AdvertiseHost(), port));
    ac.registration.set_kv_address(kv_address);
    TANDEM_ASSIGN_OR_RETURN(const model::ModelConfig wmc, model::ModelConfig::FromGguf(*file));
    ac.registration.set_model_fingerprint(ModelFingerprint(model_path, wmc));
    ac.registration.set_kv_capacity_tokens(worker_instance->kv_capacity_tokens());
    scheduler::EngineInstance* wi = worker_instance.get();
    scheduler::RemoteHandoff* ho = handoff.get();
    scheduler::KvArrivals* ar = arrivals.get();
    cluster::WorkerService* ws = worker_service.get();
    ac.load = [wi, ho, ar, ws] {
      const scheduler::InstanceStats st = wi->stats();
      tandem::v1::WorkerLoad l;
      l.set_running(st.running);
      l.set_waiting(st.waiting);
      l.set_kv_blocks_free(st.kv_blocks_free);
      l.set_kv_blocks_total(st.kv_blocks_total);
      l.set_handoffs_waiting(ho ? ho->queued() : wi->num_arrivals_waiting() + ar->num_waiting());
      l.set_latency_correction(st.latency_correction);
      l.set_steps(st.steps);
      if (const scheduler::LatencyModel lm = wi->latency_model(); lm.fitted()) {
        for (double c : lm.coefficients()) l.add_latency_coefficients(c);
      }
      l.set_kv_block_size(wi->config().block_size);
      l.set_draining(ws->draining());
      return l;
    };
    spdlog::info("[2/3] {} worker: control port {}{}; registering with the router at {}", role,
                 port, kv_address.empty() ? "" : StrCat(", KV at ", kv_address), ac.router_address);
    agent = std::make_unique<cluster::WorkerAgent>(ac);
    engine = std::make_unique<WorkerFacade>(
        *worker_instance, role,
        ar != nullptr ? std::function<int()>([ar] { return ar->num_waiting(); }) : nullptr);
  } else if (disaggregation == "on") {
    const int num_prefill = absl::GetFlag(FLAGS_prefill_instances);
    const int num_decode = absl::GetFlag(FLAGS_decode_instances);
    if (num_prefill < 1 || num_decode < 1) {
      return absl::InvalidArgumentError(
          "--prefill-instances and --decode-instances must be at least 1");
    }
    const int num_instances = num_prefill + num_decode;
    if (threads < num_instances) {
      return absl::InvalidArgumentError(
          StrCat("--disaggregation=on needs a core or more for each instance: --threads ", threads,
                 " is fewer than ", num_prefill, " prefill + ", num_decode, " decode instance(s)"));
    }
    // The cores this process may run on, in order (a container's cpuset may skip some).
    TANDEM_ASSIGN_OR_RETURN(const std::vector<int> allowed, kernels::cpu::AllowedCpus());
    if (static_cast<int>(allowed.size()) < threads) {
      return absl::InvalidArgumentError(
          StrCat("--threads ", threads, " but this process may run on ", allowed.size(), " cores"));
    }
    // Disjoint, pinned sets of the cores: prefill instances first, then decode. Each instance
    // gets threads / instances cores; the cores left over go to decode instances first (with
    // one of each on 3 cores: prefill 1, decode 2).
    scheduler::DisaggregatedEngineConfig dc;
    const int base = threads / num_instances, extra = threads % num_instances;
    int next_cpu = 0;
    std::string layout;
    for (int i = 0; i < num_instances; ++i) {
      const bool prefill = i < num_prefill;
      const int j = prefill ? i : i - num_prefill;  // index within its role
      const int cores = base + ((prefill ? num_decode + j : j) < extra ? 1 : 0);
      scheduler::EngineInstanceConfig c = ic;
      c.backend.cpu.threads = cores;
      c.backend.cpu.cpus.assign(allowed.begin() + next_cpu, allowed.begin() + next_cpu + cores);
      const std::string name =
          StrCat(prefill ? "prefill" : "decode",
                 (prefill ? num_prefill : num_decode) == 1 ? "" : StrCat("-", j));
      if (!ic.latency_profile.empty()) c.latency_profile = ic.latency_profile + "." + name;
      absl::StrAppend(&layout, layout.empty() ? "" : ", ", name, " on ", cores,
                      " core(s) from cpu ", allowed[next_cpu]);
      next_cpu += cores;
      (prefill ? dc.prefill : dc.decode).push_back(std::move(c));
    }
    const std::string transport = absl::GetFlag(FLAGS_kv_transport);
    if (transport == "tcp") {
      dc.transport = scheduler::KvTransportKind::kTcp;
    } else if (transport == "shm") {
      dc.transport = scheduler::KvTransportKind::kShm;
    } else if (transport != "inproc") {
      return absl::InvalidArgumentError(
          StrCat("--kv-transport must be inproc, tcp or shm",
                 IsDirectTransport(transport)
                     ? " in one process (direct and nccl are for --role=prefill and decode workers)"
                     : ""));
    }
    if (const std::string wire = absl::GetFlag(FLAGS_kv_transfer_dtype); wire != "auto") {
      if (dc.transport == scheduler::KvTransportKind::kInProcess) {
        return absl::InvalidArgumentError("--kv-transfer-dtype needs --kv-transport=tcp or shm");
      }
      TANDEM_ASSIGN_OR_RETURN(dc.wire_dtype, kvcache::ParseKvDType(wire));
    }
    spdlog::info("[2/3] disaggregated: {}; KV over {}; loading the weights once for all...", layout,
                 transport);
    TANDEM_ASSIGN_OR_RETURN(auto pair, scheduler::DisaggregatedEngine::Create(dc, *file));
    for (int i = 0; i < pair->num_prefill(); ++i) instances.push_back(&pair->prefill(i));
    for (int i = 0; i < pair->num_decode(); ++i) instances.push_back(&pair->decode(i));
    engine = std::move(pair);
  } else {
    spdlog::info("[2/3] loading weights onto {}...", BackendWords(backend));
    TANDEM_ASSIGN_OR_RETURN(auto one, scheduler::EngineInstance::Create(ic, *file));
    instances = {one.get()};
    engine = std::move(one);
  }
  const model::ModelConfig& mc = engine->model_config();
  for (scheduler::EngineInstance* inst : instances) {
    spdlog::info("[2/3] {} on {}, sampling on the {}", inst->config().name, inst->device_name(),
                 inst->samples_on_device() ? "device (Backend::Sample)" : "host");
    const scheduler::LatencyModel lm = inst->latency_model();
    if (lm.fitted()) {
      const auto& c = lm.coefficients();
      spdlog::info(
          "[2/3] {} latency model ({}{}): step {:.2f} ms + {:.3f} ms/prefill token + {:.2e} "
          "ms/attention pair + {:.3f} ms/decode seq + {:.2e} ms/context token; fit error "
          "{:.1f}% (median)",
          inst->config().name, inst->latency_source(),
          inst->config().latency_profile.empty() ? "" : StrCat(" ", inst->config().latency_profile),
          c[0] * 1e3, c[1] * 1e3, c[2] * 1e3, c[3] * 1e3, c[4] * 1e3, lm.fit_error() * 100);
    } else {
      spdlog::warn(
          "[2/3] no latency model (--profile-latency=false): SLO admission admits "
          "everything and steps have no time budget");
    }
  }
  {
    spdlog::info("[2/3] SLOs: admission {}, policy {}, default TTFT {} ms, TPOT {} ms",
                 scheduler::AdmissionModeName(admission), absl::GetFlag(FLAGS_scheduling_policy),
                 absl::GetFlag(FLAGS_ttft_slo_ms), absl::GetFlag(FLAGS_tpot_slo_ms));
  }
  for (scheduler::EngineInstance* inst : instances) {
    spdlog::info(
        "[2/3] {} instance: {}: {} layers, hidden {}, context {}; backend {}; KV cache "
        "{} tokens ({}, blocks of {}){}",
        inst->config().name, mc.architecture, mc.n_layers, mc.hidden, mc.context_length,
        inst->device_name(), inst->kv_capacity_tokens(),
        std::string(kvcache::KvDTypeName(kv_dtype)), inst->config().block_size, inst->kv_layout());
  }
  file.reset();

  std::string name = absl::GetFlag(FLAGS_served_model_name);
  if (name.empty()) name = std::filesystem::path(model_path).stem().string();
  ServingMetrics metrics(*engine);
  if (router != nullptr) {
    metrics.AddSource([router] { return cluster::RenderRouterMetrics(*router); });
  }
  if (handoff) {
    metrics.AddSource([h = handoff.get()] { return cluster::RenderPrefillMetrics(h->stats()); });
  }
  if (kv_receiver) {
    metrics.AddSource([r = kv_receiver.get(), a = arrivals.get()] {
      return cluster::RenderDecodeMetrics(r->stats(), r->open_transfers(), *a);
    });
  }
  if (kv_direct_receiver) {
    metrics.AddSource([r = kv_direct_receiver.get(), a = arrivals.get()] {
      const kvcache::KvNcclStats d = r->stats();
      kvcache::KvReceiverStats t;
      t.connections = d.connections;
      t.committed = d.committed;
      t.aborted = d.failed;
      t.refused = d.refused;
      t.bytes = d.bytes;
      t.refused_peers = d.refused_peers;
      return cluster::RenderDecodeMetrics(t, r->open_transfers(), *a);
    });
  }
  step_metrics.store(&metrics, std::memory_order_release);
  EngineFrontendConfig fc;
  fc.served_model_name = name;
  fc.default_ttft_slo_ms = absl::GetFlag(FLAGS_ttft_slo_ms);
  fc.default_tpot_slo_ms = absl::GetFlag(FLAGS_tpot_slo_ms);
  EngineFrontend frontend(fc, std::move(tokenizer), std::move(*tmpl), *engine, &metrics);

  std::atomic<bool> ready{true};
  HttpApiConfig hc;
  hc.api_key = absl::GetFlag(FLAGS_api_key);
  // Workers refuse generation, so a chat page there could only fail.
  hc.chat_page = !absl::GetFlag(FLAGS_no_ui) && (role == "colocated" || role == "router");
  HttpApi api(
      hc, frontend,
      [&] {
        // A router is ready once it can place both phases; a worker once the router knows it.
        return ready.load() && (router == nullptr || router->ready()) &&
               (agent == nullptr || agent->registered());
      },
      [&] { return metrics.Render(); },
      [&](int code) { metrics.OnRequest("http", std::to_string(code)); });
  http::HttpServerConfig http_config;
  http_config.host = absl::GetFlag(FLAGS_host);
  http_config.port = absl::GetFlag(FLAGS_port);
  http_config.max_body_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_body_bytes));
  TANDEM_ASSIGN_OR_RETURN(
      auto http_server,
      http::HttpServer::Start(http_config,
                              [&](http::HttpRequest r, std::shared_ptr<http::ResponseWriter> w) {
                                api.Handle(std::move(r), std::move(w));
                              }));
  std::unique_ptr<grpc_api::GrpcServer> grpc_server;
  if (absl::GetFlag(FLAGS_grpc_port) >= 0) {
    grpc_api::GrpcServerConfig gc;
    gc.host = absl::GetFlag(FLAGS_host);
    gc.port = absl::GetFlag(FLAGS_grpc_port);
    gc.api_key = absl::GetFlag(FLAGS_api_key);
    gc.on_status = [&metrics](::grpc::StatusCode code) {
      metrics.OnRequest("grpc", grpc_api::GrpcCodeName(code));
    };
    TANDEM_ASSIGN_OR_RETURN(grpc_server, grpc_api::GrpcServer::Start(gc, frontend));
  }
  spdlog::info("[3/3] ready in {:.1f} s: model '{}' at http://{}:{}/v1{}",
               absl::ToDoubleSeconds(absl::Now() - t0), name, http_config.host, http_server->port(),
               grpc_server ? StrCat(", gRPC on ", http_config.host, ":", grpc_server->port()) : "");

  // Wait for SIGTERM / SIGINT (blocked in every thread since main's start).
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("signal {}: draining ({} sequences in flight, up to {} s)", sig,
               frontend.in_flight(), absl::GetFlag(FLAGS_shutdown_timeout));
  ready.store(false);
  frontend.SetDraining(true);
  if (grpc_server) grpc_server->SetServing(false);
  // A worker stops taking phases; the router learns it from the next heartbeat and sends no
  // more (requests already routed here still come, and are refused).
  if (worker_service) worker_service->SetDraining(true);

  // A second signal ends the wait early.
  std::atomic<bool> second{false};
  std::thread waiter([&] {
    int s2 = 0;
    sigwait(&set, &s2);
    second.store(true);
  });
  const absl::Time deadline = absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_shutdown_timeout));
  auto in_flight = [&] {
    return frontend.in_flight() + (worker_service ? worker_service->open_streams() : 0);
  };
  while (in_flight() > 0 && absl::Now() < deadline && !second.load()) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (in_flight() > 0) {
    spdlog::warn("stopping with {} sequences still in flight", in_flight());
  }
  // A worker leaves the cluster first: no heartbeats, no new calls; the calls left are
  // cancelled and end (their sequences drop their KV), then the transfers stop.
  if (agent) agent->Stop();
  if (cluster_server && !router) {
    cluster_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
  if (kv_receiver) kv_receiver->Stop();
  if (kv_direct_receiver) kv_direct_receiver->Stop();
  if (arrivals) arrivals->Close();
  if (handoff) handoff->Stop();
  engine->Stop();  // fails what is left with 503 / UNAVAILABLE
  if (cluster_server && router) {
    cluster_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
  step_metrics.store(nullptr, std::memory_order_release);
  // Let the pumps write the last responses before connections close.
  absl::SleepFor(absl::Milliseconds(100));
  http_server->Shutdown();
  if (grpc_server) grpc_server->Shutdown(absl::Seconds(1));
  if (!second.load()) {
    pthread_kill(waiter.native_handle(), SIGTERM);
  }
  waiter.join();
  spdlog::info("stopped");
  return absl::OkStatus();
}

}  // namespace
}  // namespace tandem::server

int main(int argc, char** argv) {
  // Block the shutdown signals before any thread starts, so only sigwait receives them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  absl::SetProgramUsageMessage("tandemd --model PATH [flags]: the tandem LLM serving daemon");
  // vLLM spells flags with dashes (--max-num-seqs); Abseil names them with underscores.
  std::vector<std::string> args = tandem::UnderscoreFlagNames(argc, argv);
  std::vector<char*> cargs;
  for (std::string& a : args) cargs.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(cargs.size()), cargs.data());
  absl::Status s = tandem::server::Run();
  if (!s.ok()) {
    std::fprintf(stderr, "tandemd: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  return 0;
}
