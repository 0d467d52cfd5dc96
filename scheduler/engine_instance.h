// EngineInstance: one model replica on one device with its own KV cache, scheduler and engine
// thread: the scheduling side of an instance over a model::ModelRunner (the device side:
// backend from the factory, model, KV storage). It runs continuous batching with chunked
// prefill: sequences are submitted from any thread, and every step of the engine thread reads
// as six verbs: Admit (queue -> scheduler, drop cancelled and, in admission mode "queue",
// expired; import sequences that arrived with KV), Schedule (pick the step's chunks and
// reserve KV), Prepare (lay the chunks out on the runner), Execute (Model::Forward), Sample
// (the rows that want a token, in parallel on the backend's threads) and Emit (report tokens,
// hand off or retire sequences).
//
// Roles: kColocated runs sequences from prompt to end. kPrefill runs prompts to their first
// token, then hands each sequence (its KV, then itself) to a PrefillHandoff. kDecode also
// takes sequences that arrive with their prompt's KV (SubmitArriving) and decodes them.
//
// SLOs: the instance owns a LatencyModel, fitted at start by profiling synthetic steps on its
// own device (or loaded from a saved profile) and corrected from every measured step. The
// scheduler plans each step with it, and Submit admits or rejects a request from it
// (slo_admission.h) against a snapshot of the load the engine thread publishes every step.
//
// Thread safety: Submit, SubmitArriving, Stop and stats() may be called from any thread.
// Everything else happens on the engine thread. Sinks and the handoff are called on the engine
// thread only.
// Must not: parse requests, tokenize or know about HTTP/gRPC.
#ifndef TANDEM_SCHEDULER_ENGINE_INSTANCE_H_
#define TANDEM_SCHEDULER_ENGINE_INSTANCE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/backend_factory.h"
#include "kvcache/kv_manager.h"
#include "kvcache/transfer/kv_data_plane.h"
#include "kvcache/transfer/kv_receiver.h"
#include "model/gguf_file.h"
#include "model/llama_weights.h"
#include "model/model_runner.h"
#include "scheduler/engine.h"
#include "scheduler/latency_model.h"
#include "scheduler/load_snapshot.h"
#include "scheduler/nano_batch.h"
#include "scheduler/scheduler.h"
#include "scheduler/sequence.h"
#include "scheduler/slo_admission.h"

namespace tandem::scheduler {

enum class InstanceRole { kColocated, kPrefill, kDecode };
const char* InstanceRoleName(InstanceRole role);  // "colocated", "prefill", "decode"

class EngineInstance;

// The prefill role's way out: the disaggregated engine implements it over a KV transport.
// Called on the prefill instance's engine thread (but Attach and Detach, see there).
class PrefillHandoff {
 public:
  virtual ~PrefillHandoff() = default;
  // `seq`'s first token has just been sampled and reported: send its KV (positions
  // [0, seq.num_computed), still in `kv`). An error fails the sequence with that status. A
  // handoff that sends from the blocks themselves (the direct transport) may hold them past
  // this call with kv.AddRef, and must return each reference on the engine thread (Post) or
  // in Detach.
  virtual absl::Status SendKv(const Sequence& seq, kvcache::KvManager& kv) = 0;
  // Then, its blocks here freed, the sequence itself (tokens, sampler state, sink, SLOs and
  // timings) goes to the decode side, which now owns its end.
  virtual void Commit(std::unique_ptr<Sequence> seq) = 0;
  // Whether the decode side takes more SLO work now (any thread). Submit asks after its own
  // checks, before its SLO admission; a non-OK status (ResourceExhausted with a retry-after
  // and a reject reason) refuses the request with it.
  virtual absl::Status CanAccept() const { return absl::OkStatus(); }

  // Layer-wise hand-off (optional). When streams_layers(), the instance calls OnLayer after
  // each layer's KV of a step is appended, for the sequences whose prompt completes in that
  // step (they sample their first token at its end): their KV can leave while later layers
  // still compute. `ready` was recorded on the model's stream right after the layer's append
  // (on an asynchronous backend the KV is written once it has happened; the CPU's has). It is
  // one of the instance's per-layer events, recorded again at the same layer of later steps:
  // a wait queued on it before then waits for this layer, one queued later for a later step
  // (on the same stream: this layer too). Each of them then either hands off (SendKv, Commit)
  // or ends on this side, and is then Dropped (also called for sequences that never streamed:
  // a no-op).
  virtual bool streams_layers() const { return false; }
  virtual void OnLayer(int layer, std::span<Sequence* const> completing, kvcache::KvManager& kv,
                       kernels::Event ready) {}
  virtual void Drop(const Sequence& seq) {}

  // The instance this handoff serves: Attach before its engine thread starts; Detach once that
  // thread has ended, on the thread that stops the instance, while the cache still exists. A
  // handoff holding blocks of the cache must, in Detach, stop every read of them and return
  // its references to `kv` (which the calling thread may use then).
  virtual void Attach(EngineInstance& instance) {}
  virtual void Detach(kvcache::KvManager& kv) {}
};

// A sequence that arrives at a decode instance with its prompt's KV computed elsewhere.
struct ArrivingSequence {
  // num_computed tokens have KV; exactly one token (the first sampled one) is left to run. Its
  // table is empty: the instance gives it blocks of its own.
  std::unique_ptr<Sequence> seq;
  // Where its KV is: exactly one of these two.
  // (a) Called on the decode engine thread once `table` holds blocks for num_computed tokens:
  // writes their KV into them (re-paging and converting as needed). An error fails the
  // sequence.
  std::function<absl::Status(const kvcache::KvManager& kv, const kvcache::BlockTable& table)>
      import;
  // (b) Already written into the blocks of this lease (EngineInstance::ReserveKv), which the
  // sequence takes over when it joins.
  uint64_t lease_id = 0;
  // Set by SubmitArriving: the decode phase's queue time runs from here.
  absl::Time arrived;
};

struct EngineInstanceConfig {
  std::string name = "colocated";  // for logs and metrics
  InstanceRole role = InstanceRole::kColocated;
  PrefillHandoff* handoff = nullptr;  // role kPrefill: required, must outlive the instance
  kernels::BackendConfig backend;     // the device: "cpu" with threads, pinned cores, ISA
  // Tests: makes the backends in place of kernels::CreateBackend (model::ModelRunnerConfig's).
  std::function<absl::StatusOr<std::unique_ptr<kernels::Backend>>(const kernels::BackendConfig&)>
      make_backend;
  SchedulerConfig scheduler;
  int max_queue = 1024;  // waiting sequences; Submit fails beyond
  kernels::KvDType kv_dtype = kernels::KvDType::kF16;
  size_t kv_cache_bytes = size_t{1} << 30;
  int block_size = 16;
  // Prefix caching (kvcache::KvManager): sequences share the KV of whole blocks of a prompt
  // prefix another sequence computed. Colocated and prefill instances only (a decode instance
  // receives its KV).
  bool prefix_caching = true;
  // A sliding-window model's local layers keep only their window's KV (kvcache::KvGroups), so
  // long contexts take a fraction of the memory. Every role: a prefill instance sends only the
  // window of those layers, a decode instance writes only the window of what it receives.
  bool window_local_kv = true;
  // Nano-batching (CPU with >= 2 threads, or a GPU): the runner also holds two groups
  // (model::ModelRunner::ExecuteNano: thread groups of half the threads, or two streams on the
  // GPU), the instance profiles a latency model of one group at start besides the whole
  // device's (on a GPU, of a nano-batch running beside another), and a decode-only step runs as
  // two concurrent nano-batches when the planner (scheduler/nano_batch.h) predicts it at least
  // `nano_min_gain` faster than one batch. Off by default: on 2 cores it wins only for decode
  // batches of ~64 (bench/RESULTS.md). Steps with prefill chunks always run as one batch (they
  // check for cancellation between layers and feed the KV hand-off).
  bool nano_batching = false;
  double nano_min_gain = 0.05;
  // Where rows are sampled (model::ModelRunner): auto is the device on a GPU (only ids and
  // logprobs cross to the host), the host on the CPU.
  model::SamplingPlace sampling = model::SamplingPlace::kAuto;
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

class EngineInstance : public Engine {
 public:
  // Loads the model from `file` onto a new backend, sizes the KV cache and starts the engine
  // thread. `file` may be closed afterwards.
  static absl::StatusOr<std::unique_ptr<EngineInstance>> Create(const EngineInstanceConfig& config,
                                                                const model::GgufFile& file);
  // The same on weights another instance loaded (one copy per process for instances on the
  // same kind of device).
  static absl::StatusOr<std::unique_ptr<EngineInstance>> Create(
      const EngineInstanceConfig& config, std::shared_ptr<const model::LlamaWeights> weights);
  ~EngineInstance() override;  // Stop()
  EngineInstance(const EngineInstance&) = delete;
  EngineInstance& operator=(const EngineInstance&) = delete;

  // Queues the sequences of one request (its choices), all or none. Errors (no sink is
  // called then): InvalidArgument (empty prompt, bad sampling params, tokens outside the
  // vocabulary), OutOfRange (prompt + max_tokens past the context, or more than the whole KV
  // cache), ResourceExhausted (queue full, or SLO admission said no: the status carries a
  // retry-after, common/retry_after.h), Unavailable (stopped).
  absl::StatusOr<Admission> Submit(std::vector<SequenceRequest> requests) override;
  absl::Status Submit(SequenceRequest request);
  // When the first tokens of `requests` (the choices of one request, as Submit takes them)
  // would come if they were submitted now: the latency model's simulation of this instance's
  // queue with them added, counting only what the prefix cache lacks of the prompt, as
  // admission predicts (any thread; nothing is queued). nullopt without a fitted model;
  // InfiniteDuration past two minutes.
  std::optional<absl::Duration> PredictFirstToken(
      const std::vector<SequenceRequest>& requests) const;
  // The prompt tokens the prefix cache holds of `prompt` now (any thread).
  int CachedPrefixTokens(std::span<const int32_t> prompt) const;
  // Role kDecode: queues a sequence that arrives with its KV; it starts decoding once this
  // instance has room for it (running set and KV). Unavailable when stopped (no sink is called
  // then), FailedPrecondition for another role.
  absl::Status SubmitArriving(ArrivingSequence arriving);
  // Role kDecode: blocks for n_tokens positions that a sender outside the engine thread fills
  // (a KV transfer), leased until imported by an arrival (lease_id) or released (any thread;
  // waits for the engine thread, at most one step). The lease has no deadline here: whoever
  // reserved it releases it when its transfer fails (kvcache::KvReceiver does, at once or at
  // its transfer timeout). ResourceExhausted when the cache has no room now, InvalidArgument
  // for n_tokens < 1, Unavailable when stopped, FailedPrecondition for another role.
  absl::StatusOr<kvcache::KvReservation> ReserveKv(int n_tokens);
  // Frees a lease of ReserveKv that no arrival took (any thread; done on the engine thread).
  void ReleaseKv(uint64_t lease_id);
  // Leases made by ReserveKv and not yet imported or released, as of the last step.
  int num_leases() const { return leases_.load(); }
  // A sequence of this instance for `request` (validated as Submit validates it), not queued:
  // for a decode worker that builds a sequence whose KV arrives from another process.
  absl::StatusOr<std::unique_ptr<Sequence>> MakeSequence(SequenceRequest request) const;
  // Fails every queued and running sequence with Unavailable and joins the engine thread
  // (then detaches the handoff). Idempotent.
  void Stop() override;
  // Queues `task` for the engine thread, which runs it at its next Admit with its KV manager
  // (stopping false), or as it stops (stopping true); once the thread has stopped, the caller
  // runs it at once with kv null (any thread).
  void Post(std::function<void(kvcache::KvManager* kv, bool stopping)> task);

  InstanceStats stats() const override;
  // Role kDecode: sequences that arrived with KV and found no room at the last step (any
  // thread). Those that arrived since are not counted: they may well fit.
  int num_arrivals_waiting() const;
  const model::ModelConfig& model_config() const override { return runner_->model_config(); }
  const EngineInstanceConfig& config() const { return config_; }
  // Tokens the whole KV cache holds.
  int kv_capacity_tokens() const override { return kv_capacity_tokens_; }
  std::shared_ptr<const model::LlamaWeights> weights() const { return runner_->weights(); }
  // The latency model as of the last step (a copy; any thread).
  LatencyModel latency_model() const;
  // How the model was obtained: "profiled", "loaded", or "none".
  const std::string& latency_source() const { return latency_source_; }
  std::string device_name() const { return runner_->backend().Name(); }
  // Where this instance's rows are sampled (model::ModelRunner::samples_on_device).
  bool samples_on_device() const { return runner_->samples_on_device(); }
  // How the KV cache keeps layers, for the startup log: "" for whole contexts, else e.g.
  // "; 15 sliding-window layers keep their last 512 positions".
  std::string kv_layout() const;
  // The cache's layout as the direct (block-to-block) KV transport compares it between the
  // two sides (kvcache::KvDirectLayout; any thread).
  kvcache::KvDirectLayout direct_kv_layout() const;

 private:
  EngineInstance(const EngineInstanceConfig& config);
  static absl::StatusOr<std::unique_ptr<EngineInstance>> Start(
      std::unique_ptr<EngineInstance> inst);
  // Engine thread, before serving: load or profile the latency model.
  absl::Status InitLatencyModel();
  absl::Status InitWholeLatencyModel();
  // The profile's steps, timed on the whole device or (on_group) on nano group 0 alone (groups
  // that share the device: on alternate chunks in both groups, as group 0's half).
  absl::StatusOr<std::vector<StepSample>> Profile(bool on_group = false);
  absl::Status ValidateRequest(const SequenceRequest& request) const;
  // What admission simulates for `requests` (one request's choices): the prompt less its
  // cached prefix, from the position it starts at, with the request's deadline.
  std::vector<PrefillWork> WorkOf(const std::vector<SequenceRequest>& requests) const;
  std::string ProfileKey() const;
  void Loop();
  // The step's verbs.
  bool Admit();                           // false: stopping
  const SchedulerOutput& ScheduleStep();  // fills plan_
  void Prepare(const SchedulerOutput& out);
  absl::Status Execute(const SchedulerOutput& out);
  void Sample(const SchedulerOutput& out);
  void Emit(const SchedulerOutput& out);
  // Role kDecode: moves arrived sequences into the scheduler while they fit.
  void ImportArrived();
  // An arrival joined the running set: counts its wait.
  void CountJoin(const ArrivingSequence& a);
  // Runs the queued tasks.
  void RunTasks(bool stopping);
  // Role kPrefill: sends seq's KV and hands it over; false if it failed instead.
  void HandOff(Sequence* seq);
  void Finish(Sequence* seq, SequenceEnd end, const absl::Status& status);
  void FailAll(const absl::Status& status);
  void PublishStats();
  // Publishes what admission simulates from: the load once `out` completes.
  void PublishLoad(const SchedulerOutput& out, absl::Time step_start, double predicted);

  // Constant after construction.
  const EngineInstanceConfig config_;
  std::unique_ptr<model::ModelRunner> runner_;
  int kv_capacity_tokens_ = 0;
  int kv_blocks_total_ = 0;  // pages of every layer group (kvcache::KvGroups)
  std::string latency_source_ = "none";

  // Engine thread only.
  std::unique_ptr<Scheduler> scheduler_;
  std::vector<int> chunk_rows_;            // [chunks] logit row of each chunk, -1 if none
  std::vector<model::SampleJob> samples_;  // this step's rows to sample, in chunk order
  std::vector<Sequence*> completing_;      // role kPrefill: this step's prompts that complete
  // Role kPrefill with a layer-wise handoff: one per model layer, recorded after its KV append
  // (PrefillHandoff::OnLayer). Made at Start, destroyed with the instance.
  std::vector<kernels::Event> layer_events_;
  std::vector<ArrivingSequence> arrived_;  // role kDecode: taken from arriving_, not yet in
  // Refilled every step, kept for their capacity.
  SchedulerOutput plan_;              // this step's chunks, preempted and failed
  std::vector<Sequence*> cancelled_;  // Admit's sweep: sequences whose sink was cancelled
  std::vector<Sequence*> expired_;    // Admit's sweep (mode queue): deadlines out of reach
  LatencyModel model_live_;           // the scheduler plans with it; corrected every step
  LatencyModel group_model_;          // nano-batching: a step on one thread group (not corrected)
  std::unique_ptr<NanoBatchPlanner> planner_;  // nano-batching only
  std::vector<NanoChunk> nano_chunks_;         // scratch of Execute
  NanoBatchPlan nano_plan_;                    // the last step's plan
  std::vector<int> group_zeros_;               // Profile(on_group): every chunk on group 0

  // Submission queue.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<SequenceRequest> inbox_ ABSL_GUARDED_BY(mu_);
  std::vector<ArrivingSequence> arriving_ ABSL_GUARDED_BY(mu_);
  // Work for the engine thread (ReserveKv, ReleaseKv, a handoff's releases): run at its next Admit,
  // or as it stops, with its KV manager and whether it is stopping; posted once it stops, run by
  // the poster with nullptr.
  std::vector<std::function<void(kvcache::KvManager*, bool stopping)>> tasks_ ABSL_GUARDED_BY(mu_);
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
  std::atomic<int> arrived_count_{0};  // arrived_.size()
  std::atomic<int> leases_{0};         // the KV manager's num_leases()
  std::atomic<uint64_t> prefix_queried_{0}, prefix_hit_{0};
  std::atomic<int> prefix_blocks_{0};
  std::atomic<uint64_t> steps_{0}, prefill_tokens_{0}, decode_tokens_{0}, preemptions_{0};
  std::atomic<uint64_t> decode_deferred_{0};
  std::atomic<double> correction_{1.0};
  std::atomic<uint64_t> decode_joins_{0};
  std::atomic<uint64_t> nano_steps_{0};
  std::atomic<double> decode_queue_seconds_{0};  // one writer: the engine thread

  std::thread thread_;
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_ENGINE_INSTANCE_H_
