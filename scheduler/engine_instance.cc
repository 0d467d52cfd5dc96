#include "scheduler/engine_instance.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <random>
#include <span>
#include <utility>

#include "common/check.h"
#include "common/retry_after.h"
#include "common/str_cat.h"

namespace tandem::scheduler {

const char* InstanceRoleName(InstanceRole role) {
  switch (role) {
    case InstanceRole::kColocated:
      return "colocated";
    case InstanceRole::kPrefill:
      return "prefill";
    case InstanceRole::kDecode:
      return "decode";
  }
  return "?";
}

absl::Status EngineInstanceConfig::Validate() const {
  TANDEM_RETURN_IF_ERROR(scheduler.Validate());
  TANDEM_RETURN_IF_ERROR(backend.Validate());
  if (role == InstanceRole::kPrefill && handoff == nullptr) {
    return absl::InvalidArgumentError("a prefill instance needs a handoff to a decode side");
  }
  if (max_queue < 0) return absl::InvalidArgumentError("max_queue must be >= 0");
  if (block_size < 1) return absl::InvalidArgumentError("block_size must be >= 1");
  if (kv_cache_bytes == 0) return absl::InvalidArgumentError("kv_cache_bytes must be > 0");
  return absl::OkStatus();
}

EngineInstance::EngineInstance(const EngineInstanceConfig& config) : config_(config) {}

namespace {

model::ModelRunnerConfig RunnerConfig(const EngineInstanceConfig& config) {
  model::ModelRunnerConfig rc;
  rc.backend = config.backend;
  rc.model.max_batch_tokens = config.scheduler.max_batch_tokens;
  rc.model.max_logit_rows = config.scheduler.max_num_seqs;
  rc.model.max_seqs = config.scheduler.max_num_seqs;
  rc.model.block_size = config.block_size;
  rc.model.load_progress = config.load_progress;
  rc.kv_dtype = config.kv_dtype;
  rc.kv_cache_bytes = config.kv_cache_bytes;
  // Every role may keep only the window of its sliding-window layers: the KV transfer sends a
  // local layer's window and receives into local layer groups.
  rc.window_local_kv = config.window_local_kv;
  rc.nano_groups = config.nano_batching ? 2 : 0;
  rc.sampling = config.sampling;
  rc.make_backend = config.make_backend;
  return rc;
}

}  // namespace

absl::StatusOr<std::unique_ptr<EngineInstance>> EngineInstance::Create(
    const EngineInstanceConfig& config, const model::GgufFile& file) {
  TANDEM_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<EngineInstance> inst(new EngineInstance(config));
  TANDEM_ASSIGN_OR_RETURN(inst->runner_, model::ModelRunner::Create(RunnerConfig(config), file));
  return Start(std::move(inst));
}

absl::StatusOr<std::unique_ptr<EngineInstance>> EngineInstance::Create(
    const EngineInstanceConfig& config, std::shared_ptr<const model::LlamaWeights> weights) {
  TANDEM_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<EngineInstance> inst(new EngineInstance(config));
  TANDEM_ASSIGN_OR_RETURN(inst->runner_,
                          model::ModelRunner::Create(RunnerConfig(config), std::move(weights)));
  return Start(std::move(inst));
}

absl::StatusOr<std::unique_ptr<EngineInstance>> EngineInstance::Start(
    std::unique_ptr<EngineInstance> inst) {
  const EngineInstanceConfig& config = inst->config_;
  inst->kv_capacity_tokens_ = inst->runner_->kv().capacity_tokens();
  inst->kv_blocks_total_ = inst->runner_->kv().num_total();
  if (config.prefix_caching && config.role != InstanceRole::kDecode) {
    inst->runner_->kv().EnablePrefixCaching();
  }
  inst->scheduler_ = std::make_unique<Scheduler>(config.scheduler, inst->runner_->kv());
  inst->scheduler_->set_latency_model(&inst->model_live_);
  if (config.role == InstanceRole::kPrefill && config.handoff->streams_layers()) {
    for (int l = 0; l < inst->runner_->model_config().n_layers; ++l) {
      TANDEM_ASSIGN_OR_RETURN(kernels::Event e, inst->runner_->backend().CreateEvent());
      inst->layer_events_.push_back(e);
    }
  }
  if (config.role == InstanceRole::kPrefill) config.handoff->Attach(*inst);
  inst->PublishStats();
  // The engine thread first gets its latency model (profiling runs on the thread, and cores,
  // that will run the steps), then serves.
  inst->thread_ = std::thread([p = inst.get()] {
    absl::Status s = p->InitLatencyModel();
    {
      std::lock_guard<std::mutex> lock(p->mu_);
      p->started_ = true;
      p->start_status_ = s;
      p->load_.model = p->model_live_;
      p->load_.max_num_seqs = p->config_.scheduler.max_num_seqs;
      p->load_.max_batch_tokens = p->config_.scheduler.max_batch_tokens;
      p->load_.budget_margin = p->config_.scheduler.budget_margin;
      p->load_.step_end = absl::Now();
      if (!s.ok()) p->stopping_ = true;
    }
    p->cv_.notify_all();
    p->Loop();
  });
  {
    std::unique_lock<std::mutex> lock(inst->mu_);
    inst->cv_.wait(lock, [&] { return inst->started_; });
    if (!inst->start_status_.ok()) {
      const absl::Status s = inst->start_status_;
      lock.unlock();
      inst->Stop();
      return s;
    }
  }
  return inst;
}

std::string EngineInstance::ProfileKey() const {
  const model::ModelConfig& mc = runner_->model_config();
  return StrCat(mc.architecture, " l", mc.n_layers, " h", mc.hidden, " ffn", mc.ffn_dim, " v",
                mc.vocab_size, "; ", runner_->backend().Name(), "; kv ",
                kvcache::KvDTypeName(config_.kv_dtype), "/", config_.block_size, "; batch ",
                config_.scheduler.max_batch_tokens, "x", config_.scheduler.max_num_seqs,
                config_.latency_profile_key.empty() ? "" : "; ", config_.latency_profile_key);
}

absl::Status EngineInstance::InitLatencyModel() {
  TANDEM_RETURN_IF_ERROR(InitWholeLatencyModel());
  if (!runner_->has_nano_groups()) return absl::OkStatus();
  NanoBatchOptions options;
  options.min_gain = config_.nano_min_gain;
  planner_ = std::make_unique<NanoBatchPlanner>(&model_live_, &group_model_, options);
  // The group model: the same profile run on one thread group. Without it (no profiling, a
  // cache too small) every plan is monolithic.
  if (!config_.profile || !model_live_.fitted()) return absl::OkStatus();
  TANDEM_ASSIGN_OR_RETURN(std::vector<StepSample> samples, Profile(/*on_group=*/true));
  if (samples.size() < static_cast<size_t>(LatencyModel::kNumCoefficients)) {
    return absl::OkStatus();
  }
  absl::StatusOr<LatencyModel> fitted = LatencyModel::Fit(samples);
  if (!fitted.ok()) {
    return absl::InternalError(StrCat(
        "the nano-batch group's latency profile could not be fitted: ", fitted.status().message()));
  }
  group_model_ = *fitted;
  return absl::OkStatus();
}

absl::Status EngineInstance::InitWholeLatencyModel() {
  const std::string key = ProfileKey();
  if (!config_.latency_profile.empty()) {
    absl::StatusOr<LatencyModel> loaded = LatencyModel::Load(config_.latency_profile, key);
    if (loaded.ok()) {
      model_live_ = *loaded;
      latency_source_ = "loaded";
      return absl::OkStatus();
    }
    if (!absl::IsNotFound(loaded.status()) && !absl::IsFailedPrecondition(loaded.status())) {
      return loaded.status();  // a corrupt file is the user's to fix, not to overwrite
    }
    // Not there yet, or taken elsewhere: profile anew and replace it.
  }
  if (!config_.profile) return absl::OkStatus();
  TANDEM_ASSIGN_OR_RETURN(std::vector<StepSample> samples, Profile());
  // A KV cache too small for the profile's shapes leaves too few samples: no model then
  // (latency_source() says so), rather than no instance.
  if (samples.size() < static_cast<size_t>(LatencyModel::kNumCoefficients)) {
    return absl::OkStatus();
  }
  absl::StatusOr<LatencyModel> fitted = LatencyModel::Fit(samples);
  if (!fitted.ok()) {
    return absl::InternalError(
        StrCat("the latency profile could not be fitted: ", fitted.status().message()));
  }
  model_live_ = *fitted;
  latency_source_ = "profiled";
  if (!config_.latency_profile.empty()) {
    TANDEM_RETURN_IF_ERROR(model_live_.Save(config_.latency_profile, key));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<StepSample>> EngineInstance::Profile(bool on_group) {
  // The shapes: decode batches of every size class at a short and a long context, prefill
  // chunks up to the step budget at the start of a prompt and deep into one, and mixes.
  // After one warm-up, each shape runs once, and short ones (noisier, and cheap) kShortReps
  // times in all, keeping the median: about 3 s on the default model on 2 cores.
  constexpr int kShortReps = 3;
  constexpr double kShort = 0.03;  // seconds
  const int max_seqs = config_.scheduler.max_num_seqs;
  const int max_tokens = config_.scheduler.max_batch_tokens;
  const int context = runner_->model_config().context_length;
  const int long_ctx =
      std::clamp(kv_capacity_tokens_ / (2 * (max_seqs + 1)), 8, std::min(1024, context / 2));
  struct Shape {
    std::vector<int> decode_ctx;
    int prefill = 0;
    int start = 0;
  };
  std::vector<Shape> plan;
  std::vector<int> sizes;
  for (int n = 1; n < max_seqs; n *= 2) sizes.push_back(n);
  sizes.push_back(max_seqs);
  for (int n : sizes) {
    for (int ctx : {std::min(32, long_ctx), long_ctx}) {
      plan.push_back({std::vector<int>(std::min(n, max_tokens), ctx), 0, 0});
    }
  }
  std::vector<int> chunks;
  for (int n = 16; n < max_tokens; n *= 4) chunks.push_back(n);
  chunks.push_back(max_tokens);
  for (int n : chunks) {
    for (int start : {0, long_ctx}) {
      if (start + n < context) plan.push_back({{}, n, start});
    }
  }
  // Mixed steps hold one prefilling sequence besides the decoding ones (max_num_seqs in all).
  for (int d : {std::min(4, max_seqs - 1), max_seqs / 4, max_seqs / 2}) {
    for (int p : {std::max(1, max_tokens / 8), std::max(1, max_tokens / 2)}) {
      if (d >= 1 && d < max_seqs && d + p <= max_tokens) {
        plan.push_back({std::vector<int>(d, long_ctx / 2 + 1), p, 0});
      }
    }
  }

  const model::ModelConfig& mc = runner_->model_config();
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> token(0, mc.vocab_size - 1);
  kvcache::KvManager& kv = runner_->kv();
  std::vector<StepSample> samples;
  std::vector<std::unique_ptr<Sequence>> seqs;
  SchedulerOutput out;
  int done = 0;
  const int total = static_cast<int>(plan.size());
  auto make = [&](int len, int computed) -> Sequence* {
    SequenceRequest r;
    r.prompt.resize(len);
    for (int32_t& t : r.prompt) t = token(rng);
    r.max_tokens = 1;
    seqs.push_back(std::make_unique<Sequence>(std::move(r), mc.vocab_size, -1, config_.block_size));
    Sequence* s = seqs.back().get();
    s->num_computed = computed;
    return s;
  };
  // Groups on one device (a GPU's streams): a nano-batch's time is its time beside the other's,
  // so both run, on alternate chunks (group_zeros_ then alternates), and the step is timed as
  // group 0's half.
  const bool halves = on_group && runner_->nano_groups_share_device();
  for (size_t si = 0; si <= plan.size(); ++si) {
    // Shape 0 runs once more first, as the warm-up of caches and thread pool.
    const Shape& shape = plan[si == 0 ? 0 : si - 1];
    seqs.clear();
    out.Clear();
    // What the time is of: the step, or (groups sharing the device) group 0's half of it.
    StepShape timed;
    auto timed_too = [&] { return !halves || out.chunks.size() % 2 == 1; };
    for (int ctx : shape.decode_ctx) {
      Sequence* s = make(ctx, ctx - 1);
      out.chunks.push_back({s, ctx - 1, 1, true});
      out.shape.AddDecode(ctx);
      if (timed_too()) timed.AddDecode(ctx);
    }
    if (shape.prefill > 0) {
      Sequence* s = make(shape.start + shape.prefill, shape.start);
      out.chunks.push_back({s, shape.start, shape.prefill, true});
      out.shape.AddPrefill(shape.prefill, shape.start);
      if (timed_too()) timed.AddPrefill(shape.prefill, shape.start);
    }
    bool fits = true;
    for (const auto& s : seqs) {
      if (!kv.CanAppend(s->table, s->num_tokens()) || !kv.Append(s->table, s->num_tokens()).ok()) {
        fits = false;
        break;
      }
    }
    std::vector<double> times;
    for (int rep = 0; fits && rep < (si == 0 ? 1 : kShortReps); ++rep) {
      if (rep == 1 && times[0] > kShort) break;
      const auto t0 = std::chrono::steady_clock::now();
      Prepare(out);
      if (halves) {
        group_zeros_.resize(out.chunks.size());
        for (size_t i = 0; i < group_zeros_.size(); ++i) group_zeros_[i] = static_cast<int>(i % 2);
        TANDEM_RETURN_IF_ERROR(runner_->ExecuteNano(group_zeros_));
      } else if (on_group) {
        group_zeros_.assign(out.chunks.size(), 0);
        TANDEM_RETURN_IF_ERROR(runner_->ExecuteNano(group_zeros_));
      } else {
        TANDEM_RETURN_IF_ERROR(runner_->Execute());
      }
      Sample(out);
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    for (const auto& s : seqs) kv.Free(s->table);
    if (si == 0) continue;
    if (!times.empty()) {
      std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
      samples.push_back({timed, times[times.size() / 2]});
    }
    ++done;
    if (config_.profile_progress) config_.profile_progress(done, total);
  }
  seqs.clear();
  return samples;
}

LatencyModel EngineInstance::latency_model() const {
  std::lock_guard<std::mutex> lock(mu_);
  return load_.model;
}

EngineInstance::~EngineInstance() {
  Stop();
  for (kernels::Event e : layer_events_) runner_->backend().DestroyEvent(e);
}

absl::Status EngineInstance::ValidateRequest(const SequenceRequest& request) const {
  const model::ModelConfig& mc = runner_->model_config();
  if (request.sink == nullptr) return absl::InvalidArgumentError("a sequence needs a sink");
  if (request.prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  for (int32_t t : request.prompt) {
    if (t < 0 || t >= mc.vocab_size) {
      return absl::InvalidArgumentError(
          StrCat("prompt token id ", t, " is outside the vocabulary [0, ", mc.vocab_size, ")"));
    }
  }
  if (request.max_tokens < 1) {
    return absl::InvalidArgumentError(StrCat("max_tokens must be >= 1, got ", request.max_tokens));
  }
  if (request.ttft_slo <= absl::ZeroDuration() || request.tpot_slo <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("SLOs must be > 0 (or infinite: none)");
  }
  TANDEM_RETURN_IF_ERROR(request.sampling.Validate(mc.vocab_size));
  const int64_t total = static_cast<int64_t>(request.prompt.size()) + request.max_tokens;
  if (total > mc.context_length) {
    return absl::OutOfRangeError(StrCat("this model's maximum context length is ",
                                        mc.context_length, " tokens; the prompt has ",
                                        request.prompt.size(), " tokens and ", request.max_tokens,
                                        " more were requested (", total, " in all)"));
  }
  if (total > kv_capacity_tokens_) {
    return absl::OutOfRangeError(
        StrCat("the prompt (", request.prompt.size(), " tokens) plus max_tokens (",
               request.max_tokens, ") exceeds the KV cache of ", kv_capacity_tokens_, " tokens"));
  }
  return absl::OkStatus();
}

absl::Status EngineInstance::Submit(SequenceRequest request) {
  std::vector<SequenceRequest> one;
  one.push_back(std::move(request));
  return Submit(std::move(one)).status();
}

int EngineInstance::CachedPrefixTokens(std::span<const int32_t> prompt) const {
  if (prompt.empty()) return 0;
  return runner_->kv().PeekPrefix(prompt, static_cast<int>(prompt.size()) - 1);
}

std::vector<PrefillWork> EngineInstance::WorkOf(
    const std::vector<SequenceRequest>& requests) const {
  const absl::Duration aging = config_.scheduler.best_effort_aging;
  std::vector<PrefillWork> work;
  work.reserve(requests.size());
  // With prefix caching, what the cache holds of the prompt now is what admission expects
  // it will not compute (the choices share one prompt).
  const int cached = CachedPrefixTokens(requests[0].prompt);
  for (const SequenceRequest& r : requests) {
    PrefillWork w;
    w.id = r.id;
    w.remaining = static_cast<int>(r.prompt.size()) - cached;
    w.start = cached;
    // A prefill instance keeps a sequence until its first token only.
    w.generate = config_.role == InstanceRole::kPrefill ? 0 : r.max_tokens - 1;
    w.slo = r.ttft_slo != absl::InfiniteDuration() || r.tpot_slo != absl::InfiniteDuration();
    w.deadline = r.arrival + (r.ttft_slo == absl::InfiniteDuration() ? aging : r.ttft_slo);
    w.tpot_slo = r.tpot_slo;
    work.push_back(w);
  }
  return work;
}

std::optional<absl::Duration> EngineInstance::PredictFirstToken(
    const std::vector<SequenceRequest>& requests) const {
  if (requests.empty() || requests[0].prompt.empty()) return std::nullopt;
  const std::vector<PrefillWork> candidates = WorkOf(requests);
  std::lock_guard<std::mutex> lock(mu_);
  if (!load_.model.fitted()) return std::nullopt;
  // The snapshot's own work, what arrived since it was taken, then the candidates.
  std::vector<PrefillWork> work = load_.prefilling;
  work.insert(work.end(), inbox_work_.begin(), inbox_work_.end());
  work.insert(work.end(), candidates.begin(), candidates.end());
  const absl::Time now = absl::Now();
  const SimulationResult r = SimulateSteps(load_, work, now, absl::Seconds(120));
  absl::Duration latest = absl::ZeroDuration();
  for (size_t i = work.size() - candidates.size(); i < work.size(); ++i) {
    latest = std::max(latest, r.first_token[i]);
  }
  return latest;
}

absl::StatusOr<Admission> EngineInstance::Submit(std::vector<SequenceRequest> requests) {
  if (requests.empty()) return absl::InvalidArgumentError("no sequences to submit");
  for (const SequenceRequest& r : requests) TANDEM_RETURN_IF_ERROR(ValidateRequest(r));
  const std::vector<PrefillWork> work = WorkOf(requests);
  // The decode side's back-pressure, for SLO work (best-effort work waits instead).
  if (config_.handoff != nullptr && config_.admission != AdmissionMode::kOff && work[0].slo) {
    TANDEM_RETURN_IF_ERROR(config_.handoff->CanAccept());
  }
  Admission admission;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the engine is shutting down");
    const int n = static_cast<int>(requests.size());
    if (queued_.load() + n > config_.max_queue) {
      absl::Status full =
          WithRetryAfter(absl::ResourceExhaustedError(StrCat(
                             "the queue is full (", config_.max_queue, " waiting sequences)")),
                         absl::Seconds(1));
      full.SetPayload(kRejectReasonPayloadUrl, absl::Cord(kRejectQueueFull));
      return full;
    }
    if (config_.admission == AdmissionMode::kReject && load_.model.fitted()) {
      // The snapshot plus what arrived since it was taken.
      const size_t own = load_.prefilling.size();
      load_.prefilling.insert(load_.prefilling.end(), inbox_work_.begin(), inbox_work_.end());
      const AdmissionVerdict v = CheckAdmission(load_, work, absl::Now());
      load_.prefilling.resize(own);
      if (!v.admit) {
        const absl::Duration slo = requests[0].ttft_slo;
        return RejectionStatus(v, slo);
      }
      admission.predicted_ttft = v.predicted_ttft;
      admission.predicted = true;
      for (SequenceRequest& r : requests) r.sink->OnAdmitted(v.predicted_ttft);
    }
    queued_.fetch_add(n);
    for (SequenceRequest& r : requests) inbox_.push_back(std::move(r));
    inbox_work_.insert(inbox_work_.end(), work.begin(), work.end());
  }
  cv_.notify_one();
  return admission;
}

absl::Status EngineInstance::SubmitArriving(ArrivingSequence arriving) {
  if (config_.role != InstanceRole::kDecode) {
    return absl::FailedPreconditionError(StrCat("instance '", config_.name, "' (",
                                                InstanceRoleName(config_.role),
                                                ") does not take sequences with KV"));
  }
  TANDEM_CHECK(arriving.seq != nullptr);
  TANDEM_CHECK((arriving.import != nullptr) != (arriving.lease_id != 0));
  TANDEM_CHECK_EQ(arriving.seq->num_uncomputed(), 1);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the engine is shutting down");
    arriving.arrived = absl::Now();
    arriving_.push_back(std::move(arriving));
  }
  cv_.notify_one();
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Sequence>> EngineInstance::MakeSequence(
    SequenceRequest request) const {
  TANDEM_RETURN_IF_ERROR(ValidateRequest(request));
  return std::make_unique<Sequence>(std::move(request), runner_->model_config().vocab_size,
                                    config_.eos_token_id, config_.block_size);
}

void EngineInstance::Post(std::function<void(kvcache::KvManager*, bool stopping)> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      tasks_.push_back(std::move(task));
      cv_.notify_one();
      return;
    }
  }
  task(nullptr, true);
}

void EngineInstance::RunTasks(bool stopping) {
  std::vector<std::function<void(kvcache::KvManager*, bool stopping)>> tasks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks.swap(tasks_);
  }
  for (auto& t : tasks) t(&runner_->kv(), stopping);
  leases_.store(runner_->kv().num_leases());
  kv_free_.store(runner_->kv().num_free());  // a task may have freed blocks
}

absl::StatusOr<kvcache::KvReservation> EngineInstance::ReserveKv(int n_tokens) {
  if (config_.role != InstanceRole::kDecode) {
    return absl::FailedPreconditionError(StrCat("instance '", config_.name, "' (",
                                                InstanceRoleName(config_.role),
                                                ") does not take KV transfers"));
  }
  if (n_tokens < 1) {
    return absl::InvalidArgumentError(StrCat("a KV reservation of ", n_tokens, " tokens"));
  }
  auto result = std::make_shared<std::promise<absl::StatusOr<kvcache::KvReservation>>>();
  std::future<absl::StatusOr<kvcache::KvReservation>> f = result->get_future();
  Post([this, n_tokens, result](kvcache::KvManager* kv, bool stopping) {
    if (stopping) {
      result->set_value(absl::UnavailableError("the decode engine is shutting down"));
      return;
    }
    absl::StatusOr<kvcache::KvLease> lease = kv->ReserveTokens(n_tokens, absl::InfiniteFuture());
    if (!lease.ok()) {
      result->set_value(absl::ResourceExhaustedError(
          StrCat("the decode instance has no room for the KV of ", n_tokens, " tokens now (",
                 kv->num_free(), " of ", kv->num_total(), " blocks free)")));
      return;
    }
    kvcache::KvReservation r;
    r.lease_id = lease->id;
    r.view = kv->view();
    r.groups = kv->groups();
    r.table = kv->LeaseTable(*lease, n_tokens);
    kv_free_.store(kv->num_free());
    result->set_value(std::move(r));
  });
  return f.get();
}

void EngineInstance::ReleaseKv(uint64_t lease_id) {
  // Once the engine thread is gone its cache goes with the instance: nothing to free then.
  Post([lease_id](kvcache::KvManager* kv, bool) {
    if (kv != nullptr) kv->Abort(lease_id);
  });
}

void EngineInstance::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (!thread_.joinable()) return;
  thread_.join();
  if (config_.role == InstanceRole::kPrefill) {
    // The thread is gone: this thread may use the cache now.
    config_.handoff->Detach(runner_->kv());
    PublishStats();
  }
}

std::string EngineInstance::kv_layout() const {
  const kvcache::KvGroups& g = runner_->kv().groups();
  if (!g.windowed()) return "";
  int local = 0;
  for (int w : g.window) local += w > 0 ? g.layers_per_group : 0;
  return StrCat("; ", local, " sliding-window layers keep their last ", g.window.back(),
                " positions");
}

kvcache::KvDirectLayout EngineInstance::direct_kv_layout() const {
  const kvcache::KvManager& kv = runner_->kv();  // its view and groups are set at creation
  return kvcache::DirectLayoutOf(kv.view(), kv.groups(), kv.config().n_layers);
}

int EngineInstance::num_arrivals_waiting() const { return arrived_count_.load(); }

InstanceStats EngineInstance::stats() const {
  InstanceStats s;
  s.running = running_.load();
  s.waiting = waiting_.load();
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.waiting += static_cast<int>(inbox_.size() + arriving_.size());
  }
  s.waiting += arrived_count_.load();
  s.kv_blocks_total = kv_blocks_total_;
  s.kv_blocks_free = kv_free_.load();
  s.prefix_queried_tokens = prefix_queried_.load();
  s.prefix_hit_tokens = prefix_hit_.load();
  s.prefix_cached_blocks = prefix_blocks_.load();
  s.kv_usage =
      s.kv_blocks_total > 0 ? 1.0 - static_cast<double>(s.kv_blocks_free) / s.kv_blocks_total : 0.0;
  s.steps = steps_.load();
  s.prefill_tokens = prefill_tokens_.load();
  s.decode_tokens = decode_tokens_.load();
  s.preemptions = preemptions_.load();
  s.decode_deferred = decode_deferred_.load();
  s.decode_joins = decode_joins_.load();
  s.nano_steps = nano_steps_.load();
  s.decode_queue_seconds = decode_queue_seconds_.load();
  s.latency_correction = correction_.load();
  return s;
}

void EngineInstance::Loop() {
  while (Admit()) {
    const auto t0 = std::chrono::steady_clock::now();
    const absl::Time step_start = absl::Now();
    const SchedulerOutput& out = ScheduleStep();
    if (!out.chunks.empty()) {
      const double predicted = model_live_.Predict(out.shape);
      PublishLoad(out, step_start, predicted);
      Prepare(out);
      absl::Status s = Execute(out);
      if (s.ok()) {
        scheduler_->Complete(out);
        Sample(out);
        Emit(out);
        const double measured =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (nano_plan_.split()) {
          // A split step's time is not the whole device's: it corrects nothing.
          if (config_.step_observer) {
            config_.step_observer(out.shape, nano_plan_.split_seconds, measured);
          }
        } else {
          model_live_.Observe(out.shape, measured);
          correction_.store(model_live_.correction());
          if (config_.step_observer) config_.step_observer(out.shape, predicted, measured);
        }
      } else if (absl::IsCancelled(s)) {
        // Every sequence of the step was cancelled while it ran (see Execute): dropped now,
        // their KV of this step half written and freed with them.
        for (const ScheduledChunk& c : out.chunks) {
          Finish(c.seq, SequenceEnd::kCancelled, absl::OkStatus());
        }
      } else {
        const absl::Status failure =
            absl::InternalError(StrCat("model step failed: ", std::string(s.message())));
        for (const ScheduledChunk& c : out.chunks) Finish(c.seq, SequenceEnd::kFailed, failure);
      }
      steps_.fetch_add(1);
      prefill_tokens_.fetch_add(out.num_tokens - out.num_decode);
      decode_tokens_.fetch_add(out.num_decode);
      decode_deferred_.fetch_add(out.num_deferred);
    } else {
      PublishLoad(out, step_start, 0);
    }
    PublishStats();
  }
  FailAll(absl::UnavailableError("the engine is shutting down"));
  RunTasks(/*stopping=*/true);
  PublishStats();
}

void EngineInstance::PublishLoad(const SchedulerOutput& out, absl::Time step_start,
                                 double predicted) {
  // Built outside the lock into a scratch snapshot, swapped in under it.
  LoadSnapshot snap;
  scheduler_->ExportLoad(out, step_start + absl::Seconds(predicted), &snap);
  if (config_.role == InstanceRole::kPrefill) {
    // Its sequences leave at their first token: none decodes here, now or later.
    snap.decoding.clear();
    for (PrefillWork& w : snap.prefilling) w.generate = 0;
  }
  snap.model = model_live_;
  std::lock_guard<std::mutex> lock(mu_);
  std::swap(load_, snap);
}

bool EngineInstance::Admit() {
  std::vector<SequenceRequest> incoming;
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] {
      // arrived_: arrivals that did not fit yet, and may now that sequences have finished.
      return stopping_ || !inbox_.empty() || !arriving_.empty() || !arrived_.empty() ||
             !tasks_.empty() || !scheduler_->empty();
    });
    if (stopping_) return false;
    incoming.swap(inbox_);
    inbox_work_.clear();
    for (ArrivingSequence& a : arriving_) arrived_.push_back(std::move(a));
    arriving_.clear();
  }
  const model::ModelConfig& mc = runner_->model_config();
  for (SequenceRequest& r : incoming) {
    scheduler_->Add(std::make_unique<Sequence>(std::move(r), mc.vocab_size, config_.eos_token_id,
                                               config_.block_size));
  }
  // Collected first: Finish removes sequences from the scheduler.
  cancelled_.clear();
  scheduler_->ForEach([this](Sequence* s) {
    if (s->sink->cancelled()) cancelled_.push_back(s);
  });
  for (Sequence* s : cancelled_) Finish(s, SequenceEnd::kCancelled, absl::OkStatus());
  RunTasks(/*stopping=*/false);
  ImportArrived();
  if (config_.admission == AdmissionMode::kQueue) {
    expired_.clear();
    const absl::Time now = absl::Now();
    scheduler_->CollectExpired(now, &expired_);
    for (Sequence* s : expired_) {
      AdmissionVerdict v;
      v.admit = false;
      v.reason = kRejectExpired;
      v.retry_after = std::max(absl::Seconds(1), s->ttft_slo);
      Finish(s, SequenceEnd::kRejected, RejectionStatus(v, s->ttft_slo));
    }
  }
  return true;
}

const SchedulerOutput& EngineInstance::ScheduleStep() {
  scheduler_->Schedule(&plan_);
  const SchedulerOutput& out = plan_;
  for (Sequence* s : out.failed) {
    Finish(s, SequenceEnd::kFailed,
           absl::ResourceExhaustedError(StrCat("the sequence needs ", s->num_tokens() + 1,
                                               " tokens of KV cache, more than the cache holds (",
                                               kv_capacity_tokens_, ")")));
  }
  preemptions_.fetch_add(out.preempted.size());
  for (const ScheduledChunk& c : out.chunks) {
    if (!c.seq->scheduled_once) {
      c.seq->scheduled_once = true;
      queued_.fetch_sub(1);
      c.seq->sink->OnScheduled(c.start);
    }
  }
  return out;
}

void EngineInstance::ImportArrived() {
  // In arrival order; one that does not fit yet waits, and so do those behind it (FIFO).
  size_t taken = 0;
  for (; taken < arrived_.size(); ++taken) {
    ArrivingSequence& a = arrived_[taken];
    Sequence* s = a.seq.get();
    kvcache::KvManager& kv = runner_->kv();
    if (s->sink->cancelled()) {
      if (a.lease_id != 0) kv.Abort(a.lease_id);
      s->sink->OnFinish(SequenceEnd::kCancelled, absl::OkStatus());
      continue;
    }
    s->table = kvcache::BlockTable(config_.block_size);
    // Room for it: a slot, decode capacity within the running TPOTs, and KV for its tokens
    // (beyond the lease's blocks, if it brings them).
    if (!scheduler_->CanAddRunning(*s)) break;
    if (a.lease_id != 0) {
      absl::StatusOr<int> extra =
          kv.BlocksToGrowImport(a.lease_id, s->num_computed, s->num_tokens());
      if (extra.ok() && !kv.CanAllocate(*extra)) break;
      if (absl::Status st = kv.Import(a.lease_id, s->num_computed, s->table); !st.ok()) {
        s->sink->OnFinish(SequenceEnd::kFailed,
                          absl::InternalError(StrCat("KV import failed: ", st.message())));
        continue;
      }
      TANDEM_CHECK_OK(kv.Append(s->table, s->num_tokens()));
      CountJoin(a);
      scheduler_->AddRunning(std::move(a.seq));
      continue;
    }
    // The blocks its computed tokens keep (a local layer group's: the window only), as a lease
    // taken and imported at once, then room for the rest.
    absl::StatusOr<kvcache::KvLease> lease =
        kv.ReserveTokens(s->num_computed, absl::InfiniteFuture());
    if (!lease.ok()) break;
    absl::StatusOr<int> grow = kv.BlocksToGrowImport(lease->id, s->num_computed, s->num_tokens());
    if (!grow.ok() || !kv.CanAllocate(*grow)) {
      kv.Abort(lease->id);
      break;
    }
    TANDEM_CHECK_OK(kv.Import(lease->id, s->num_computed, s->table));
    TANDEM_CHECK_OK(kv.Append(s->table, s->num_tokens()));
    if (absl::Status st = a.import(kv, s->table); !st.ok()) {
      kv.Free(s->table);
      s->sink->OnFinish(SequenceEnd::kFailed,
                        absl::InternalError(StrCat("KV import failed: ", st.message())));
      continue;
    }
    CountJoin(a);
    scheduler_->AddRunning(std::move(a.seq));
  }
  arrived_.erase(arrived_.begin(), arrived_.begin() + static_cast<ptrdiff_t>(taken));
  arrived_count_.store(static_cast<int>(arrived_.size()));
}

void EngineInstance::CountJoin(const ArrivingSequence& a) {
  decode_joins_.fetch_add(1);
  decode_queue_seconds_.store(decode_queue_seconds_.load() +
                              absl::ToDoubleSeconds(absl::Now() - a.arrived));
}

void EngineInstance::Prepare(const SchedulerOutput& out) {
  runner_->BeginStep();
  chunk_rows_.clear();
  for (const ScheduledChunk& c : out.chunks) {
    chunk_rows_.push_back(runner_->AddChunk(
        c.seq->table, std::span<const int32_t>(c.seq->tokens).subspan(c.start, c.num_tokens),
        c.start, c.want_logits));
  }
}

absl::Status EngineInstance::Execute(const SchedulerOutput& out) {
  const bool streams = config_.role == InstanceRole::kPrefill && config_.handoff->streams_layers();
  completing_.clear();
  if (streams) {
    for (const ScheduledChunk& c : out.chunks) {
      if (c.want_logits) completing_.push_back(c.seq);
    }
  }
  // A step with prefill work may take long: between layers it checks whether every sequence
  // in it was cancelled meanwhile (the clients went away), and if so stops there, so that a
  // client gone mid-prefill costs at most one layer more. (Decode-only steps are short.)
  const bool has_prefill = out.num_tokens > out.num_decode;
  nano_plan_.num_batches = 1;
  if (completing_.empty() && !has_prefill) {
    if (planner_ != nullptr) {
      nano_chunks_.clear();
      for (const ScheduledChunk& c : out.chunks) {
        nano_chunks_.push_back(NanoChunk::Decode(c.start + c.num_tokens));
      }
      planner_->Plan(nano_chunks_, &nano_plan_);
      if (nano_plan_.split()) {
        nano_steps_.fetch_add(1);
        return runner_->ExecuteNano(nano_plan_.batch_of);
      }
    }
    return runner_->Execute();
  }
  return runner_->Execute([this, &out, has_prefill](int layer) {
    if (has_prefill &&
        std::all_of(out.chunks.begin(), out.chunks.end(),
                    [](const ScheduledChunk& c) { return c.seq->sink->cancelled(); })) {
      return false;
    }
    if (!completing_.empty()) {
      kernels::Backend& be = runner_->backend();
      be.RecordEvent(layer_events_[layer], be.DefaultStream());
      config_.handoff->OnLayer(layer, std::span<Sequence* const>(completing_), runner_->kv(),
                               layer_events_[layer]);
    }
    return true;
  });
}

void EngineInstance::Sample(const SchedulerOutput& out) {
  samples_.clear();
  for (size_t i = 0; i < out.chunks.size(); ++i) {
    if (chunk_rows_[i] < 0) continue;
    samples_.push_back({&out.chunks[i].seq->sampler, chunk_rows_[i], {}});
  }
  runner_->Sample(std::span<model::SampleJob>(samples_));
}

void EngineInstance::Emit(const SchedulerOutput& out) {
  size_t next = 0;  // samples_ are in chunk order
  for (size_t i = 0; i < out.chunks.size(); ++i) {
    const ScheduledChunk& c = out.chunks[i];
    if (chunk_rows_[i] < 0) continue;
    Sequence* s = c.seq;
    const model::SampleResult& r = samples_[next++].result;
    if (s->sampler.IsStopToken(r.token)) {
      Finish(s, SequenceEnd::kStopToken, absl::OkStatus());
      continue;
    }
    s->tokens.push_back(r.token);
    s->sink->OnToken(r);
    if (s->num_generated() >= s->max_tokens) {
      Finish(s, SequenceEnd::kLength, absl::OkStatus());
    } else if (config_.role == InstanceRole::kPrefill) {
      HandOff(s);
    }
  }
}

void EngineInstance::HandOff(Sequence* seq) {
  if (absl::Status st = config_.handoff->SendKv(*seq, runner_->kv()); !st.ok()) {
    Finish(seq, SequenceEnd::kFailed,
           absl::UnavailableError(StrCat("KV handover failed: ", st.message())));
    return;
  }
  std::unique_ptr<Sequence> owned = scheduler_->Remove(seq);
  PublishStats();
  config_.handoff->Commit(std::move(owned));
}

void EngineInstance::Finish(Sequence* seq, SequenceEnd end, const absl::Status& status) {
  if (!seq->scheduled_once) queued_.fetch_sub(1);
  // Whatever of its KV a layer-wise hand-off started to send is called off.
  if (config_.role == InstanceRole::kPrefill) config_.handoff->Drop(*seq);
  std::unique_ptr<Sequence> owned = scheduler_->Remove(seq);
  // Published first, so whoever hears of the end also sees its blocks freed.
  PublishStats();
  owned->sink->OnFinish(end, status);
}

void EngineInstance::FailAll(const absl::Status& status) {
  std::vector<SequenceRequest> incoming;
  {
    std::lock_guard<std::mutex> lock(mu_);
    incoming.swap(inbox_);
    inbox_work_.clear();
    for (ArrivingSequence& a : arriving_) arrived_.push_back(std::move(a));
    arriving_.clear();
  }
  for (SequenceRequest& r : incoming) {
    queued_.fetch_sub(1);
    r.sink->OnFinish(SequenceEnd::kFailed, status);
  }
  for (ArrivingSequence& a : arrived_) {
    if (a.lease_id != 0) runner_->kv().Abort(a.lease_id);
    a.seq->sink->OnFinish(SequenceEnd::kFailed, status);
  }
  arrived_.clear();
  arrived_count_.store(0);
  for (Sequence* s : scheduler_->All()) Finish(s, SequenceEnd::kFailed, status);
}

void EngineInstance::PublishStats() {
  running_.store(scheduler_->num_running());
  waiting_.store(scheduler_->num_waiting());
  kv_free_.store(runner_->kv().num_free());
  const kvcache::KvManager::PrefixCacheStats p = runner_->kv().prefix_stats();
  prefix_queried_.store(p.queried_tokens);
  prefix_hit_.store(p.hit_tokens);
  prefix_blocks_.store(p.cached_blocks);
}

}  // namespace tandem::scheduler
