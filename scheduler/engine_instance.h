// EngineInstance: one model replica on one device (here: a CPU backend on a set of cores) with
// its own KV cache, scheduler and engine thread. It runs continuous batching with chunked
// prefill: sequences are submitted from any thread, and every step of the engine thread reads
// as five verbs: Admit (queue -> scheduler, drop cancelled and, in admission mode "queue",
// expired), Schedule (pick the step's chunks and reserve KV), Prepare (lay the chunks out as a
// StepBatch), Execute (Model::Forward), and Emit (sample the rows that want logits, report
// tokens, retire finished sequences).
//
// SLOs: the instance owns a LatencyModel, fitted at start by profiling synthetic steps on its
// own device (or loaded from a saved profile) and corrected from every measured step. The
// scheduler plans each step with it, and Submit admits or rejects a request from it
// (slo_admission.h) against a snapshot of the load the engine thread publishes every step.
//
// The instance is the unit a deployment places: the colocated daemon runs one; the
// disaggregated daemon will run prefill and decode instances on disjoint devices.
//
// Thread safety: Submit, Stop and stats() may be called from any thread. Everything else
// happens on the engine thread. Sinks are called on the engine thread only.
// Must not: parse requests, tokenize or know about HTTP/gRPC.
#ifndef TANDEM_SCHEDULER_ENGINE_INSTANCE_H_
#define TANDEM_SCHEDULER_ENGINE_INSTANCE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvcache/kv_cache.h"
#include "model/batch_builder.h"
#include "model/gguf_file.h"
#include "model/llama_model.h"
#include "scheduler/latency_model.h"
#include "scheduler/load_snapshot.h"
#include "scheduler/scheduler.h"
#include "scheduler/sequence.h"
#include "scheduler/slo_admission.h"

namespace tandem::scheduler {

struct EngineInstanceConfig {
  std::string name = "colocated";   // for logs and metrics
  kernels::cpu::CpuBackendConfig cpu;  // the device: threads, pinned cores, ISA
  SchedulerConfig scheduler;
  int max_queue = 1024;                // waiting sequences; Submit fails beyond
  kernels::KvDType kv_dtype = kernels::KvDType::kF16;
  size_t kv_cache_bytes = size_t{1} << 30;
  int block_size = 16;
  int32_t eos_token_id = -1;  // from the tokenizer; < 0: none
  // Weight loading progress (see model::ModelOptions::load_progress). May be empty.
  std::function<void(int layers_done, int n_layers)> load_progress;

  // SLOs.
  AdmissionMode admission = AdmissionMode::kReject;
  // Fit the latency model by profiling at start (a few seconds). false: no model unless
  // `latency_profile` loads; the SLO policy then has no time budget and admission takes all.
  bool profile = true;
  // A saved profile: loaded when it exists and its key matches, else written after profiling.
  std::string latency_profile;
  // Appended to the profile's key (the instance adds model, backend and KV layout): what
  // else makes a profile invalid elsewhere, e.g. the CPU model.
  std::string latency_profile_key;
  // Profiling progress (steps done of total) and the outcome, on the engine thread. May be
  // empty.
  std::function<void(int done, int total)> profile_progress;
  // Every executed step: its shape, the time predicted before it ran and the time it took
  // (seconds), on the engine thread; must not block. May be empty.
  std::function<void(const StepShape& shape, double predicted, double measured)> step_observer;

  absl::Status Validate() const;
};

// A snapshot of the instance's load, readable from any thread.
struct InstanceStats {
  int running = 0;        // sequences holding KV
  int waiting = 0;        // submitted, not running (queued or preempted)
  double kv_usage = 0.0;  // share of KV blocks in use
  int kv_blocks_free = 0;
  int kv_blocks_total = 0;
  uint64_t steps = 0;
  uint64_t prefill_tokens = 0;  // tokens run in chunks that were not decode tokens
  uint64_t decode_tokens = 0;
  uint64_t preemptions = 0;
  uint64_t decode_deferred = 0;  // decode tokens left out of a step by the TPOT cap
  double latency_correction = 1.0;  // the latency model's online correction factor
};

// What admission said about an accepted request.
struct Admission {
  // Predicted time from submission to the first token of its last choice (ZeroDuration when
  // no prediction was made: no latency model, or admission off).
  absl::Duration predicted_ttft = absl::ZeroDuration();
  bool predicted = false;
};

class EngineInstance {
 public:
  // Loads the model from `file` onto a new backend, sizes the KV cache and starts the engine
  // thread. `file` may be closed afterwards.
  static absl::StatusOr<std::unique_ptr<EngineInstance>> Create(
      const EngineInstanceConfig& config, const model::GgufFile& file);
  ~EngineInstance();  // Stop()
  EngineInstance(const EngineInstance&) = delete;
  EngineInstance& operator=(const EngineInstance&) = delete;

  // Queues the sequences of one request (its choices), all or none. Errors (no sink is
  // called then): InvalidArgument (empty prompt, bad sampling params, tokens outside the
  // vocabulary), OutOfRange (prompt + max_tokens past the context, or more than the whole KV
  // cache), ResourceExhausted (queue full, or SLO admission said no: the status carries a
  // retry-after, common/retry_after.h), Unavailable (stopped).
  absl::StatusOr<Admission> Submit(std::vector<SequenceRequest> requests);
  absl::Status Submit(SequenceRequest request);
  // Fails every queued and running sequence with Unavailable and joins the engine thread.
  // Idempotent.
  void Stop();

  InstanceStats stats() const;
  const model::ModelConfig& model_config() const { return model_->config(); }
  const EngineInstanceConfig& config() const { return config_; }
  // Tokens the whole KV cache holds.
  int kv_capacity_tokens() const { return kv_capacity_tokens_; }
  // The latency model as of the last step (a copy; any thread).
  LatencyModel latency_model() const;
  // How the model was obtained: "profiled", "loaded", or "none".
  const std::string& latency_source() const { return latency_source_; }
  std::string device_name() const { return backend_->Name(); }

 private:
  EngineInstance(const EngineInstanceConfig& config);
  // Engine thread, before serving: load or profile the latency model.
  absl::Status InitLatencyModel();
  absl::StatusOr<std::vector<StepSample>> Profile();
  std::string ProfileKey() const;
  absl::Status ValidateRequest(const SequenceRequest& request) const;
  void Loop();
  // The step's verbs.
  bool Admit();  // false: stopping
  const SchedulerOutput& ScheduleStep();  // fills plan_
  void Prepare(const SchedulerOutput& out);
  absl::Status Execute();
  void Emit(const SchedulerOutput& out);
  void Finish(Sequence* seq, SequenceEnd end, const absl::Status& status);
  void FailAll(const absl::Status& status);
  void PublishStats();
  // Publishes what admission simulates from: the load once `out` completes.
  void PublishLoad(const SchedulerOutput& out, absl::Time step_start, double predicted);

  // Constant after construction.
  const EngineInstanceConfig config_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<model::LlamaModel> model_;
  std::unique_ptr<kvcache::KvCache> cache_;
  int kv_capacity_tokens_ = 0;
  std::string latency_source_ = "none";

  // Engine thread only.
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<model::BatchBuilder> builder_;
  std::vector<int> chunk_rows_;  // [chunks] logit row of each chunk, -1 if none
  std::vector<float> logits_;    // [max_num_seqs, vocab]
  // Refilled every step, kept for their capacity.
  SchedulerOutput plan_;              // this step's chunks, preempted and failed
  std::vector<Sequence*> cancelled_;  // Admit's sweep: sequences whose sink was cancelled
  std::vector<Sequence*> expired_;    // Admit's sweep (mode queue): deadlines out of reach
  LatencyModel model_live_;           // the scheduler plans with it; corrected every step

  // Submission queue.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<SequenceRequest> inbox_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // The load as of the step in flight, and the model, for Submit's admission.
  LoadSnapshot load_ ABSL_GUARDED_BY(mu_);
  std::vector<PrefillWork> inbox_work_ ABSL_GUARDED_BY(mu_);  // inbox_ as admission sees it
  // Startup: set once the engine thread has its latency model (or failed to get one).
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status start_status_ ABSL_GUARDED_BY(mu_);

  // Published by the engine thread after each step.
  std::atomic<int> queued_{0};  // in inbox_ or the scheduler's queue, never run yet
  std::atomic<int> running_{0};
  std::atomic<int> waiting_{0};
  std::atomic<int> kv_free_{0};
  std::atomic<uint64_t> steps_{0}, prefill_tokens_{0}, decode_tokens_{0}, preemptions_{0};
  std::atomic<uint64_t> decode_deferred_{0};
  std::atomic<double> correction_{1.0};

  std::thread thread_;
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_ENGINE_INSTANCE_H_
