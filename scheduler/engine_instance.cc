#include "scheduler/engine_instance.h"

#include <algorithm>
#include <span>
#include <utility>

#include "common/check.h"
#include "common/str_cat.h"

namespace tandem::scheduler {

absl::Status EngineInstanceConfig::Validate() const {
  TANDEM_RETURN_IF_ERROR(scheduler.Validate());
  TANDEM_RETURN_IF_ERROR(kernels::cpu::ValidateCpuBackendConfig(cpu));
  if (max_queue < 0) return absl::InvalidArgumentError("max_queue must be >= 0");
  if (block_size < 1) return absl::InvalidArgumentError("block_size must be >= 1");
  if (kv_cache_bytes == 0) return absl::InvalidArgumentError("kv_cache_bytes must be > 0");
  return absl::OkStatus();
}

EngineInstance::EngineInstance(const EngineInstanceConfig& config) : config_(config) {}

absl::StatusOr<std::unique_ptr<EngineInstance>> EngineInstance::Create(
    const EngineInstanceConfig& config, const model::GgufFile& file) {
  TANDEM_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<EngineInstance> inst(new EngineInstance(config));

  kernels::cpu::CpuBackendConfig cpu = config.cpu;
  cpu.max_batch_tokens = std::max(cpu.max_batch_tokens, config.scheduler.max_batch_tokens);
  TANDEM_ASSIGN_OR_RETURN(inst->backend_, kernels::cpu::CreateCpuBackend(cpu));

  model::ModelOptions mo;
  mo.max_batch_tokens = config.scheduler.max_batch_tokens;
  mo.max_logit_rows = config.scheduler.max_num_seqs;
  mo.max_seqs = config.scheduler.max_num_seqs;
  mo.block_size = config.block_size;
  mo.load_progress = config.load_progress;
  TANDEM_ASSIGN_OR_RETURN(inst->model_, model::LlamaModel::Load(file, *inst->backend_, mo));
  const model::ModelConfig& mc = inst->model_->config();

  kvcache::KvCacheConfig kc = inst->model_->KvCacheLayout(config.kv_dtype);
  kc.memory_bytes = config.kv_cache_bytes;
  if (config.kv_cache_bytes < kc.BytesPerBlock()) {
    return absl::InvalidArgumentError(
        StrCat("KV cache memory of ", config.kv_cache_bytes, " bytes holds no block (one block of ",
               config.block_size, " tokens takes ", kc.BytesPerBlock(), " bytes)"));
  }
  TANDEM_ASSIGN_OR_RETURN(inst->cache_, kvcache::KvCache::Create(kc, *inst->backend_));
  inst->kv_capacity_tokens_ = inst->cache_->pool().num_total() * config.block_size;

  inst->scheduler_ = std::make_unique<Scheduler>(config.scheduler, inst->cache_->pool());
  inst->builder_ = std::make_unique<model::BatchBuilder>(inst->model_->max_blocks_per_seq());
  inst->logits_.resize(static_cast<size_t>(config.scheduler.max_num_seqs) * mc.vocab_size);
  inst->PublishStats();
  inst->thread_ = std::thread([p = inst.get()] { p->Loop(); });
  return inst;
}

EngineInstance::~EngineInstance() { Stop(); }

absl::Status EngineInstance::Submit(SequenceRequest request) {
  const model::ModelConfig& mc = model_->config();
  if (request.sink == nullptr) return absl::InvalidArgumentError("a sequence needs a sink");
  if (request.prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  for (int32_t t : request.prompt) {
    if (t < 0 || t >= mc.vocab_size) {
      return absl::InvalidArgumentError(
          StrCat("prompt token id ", t, " is outside the vocabulary [0, ", mc.vocab_size, ")"));
    }
  }
  if (request.max_tokens < 1) {
    return absl::InvalidArgumentError(
        StrCat("max_tokens must be >= 1, got ", request.max_tokens));
  }
  TANDEM_RETURN_IF_ERROR(request.sampling.Validate(mc.vocab_size));
  const int64_t total = static_cast<int64_t>(request.prompt.size()) + request.max_tokens;
  if (total > mc.context_length) {
    return absl::OutOfRangeError(StrCat(
        "this model's maximum context length is ", mc.context_length, " tokens; the prompt has ",
        request.prompt.size(), " tokens and ", request.max_tokens,
        " more were requested (", total, " in all)"));
  }
  if (total > kv_capacity_tokens_) {
    return absl::OutOfRangeError(StrCat("the prompt (", request.prompt.size(),
                                        " tokens) plus max_tokens (", request.max_tokens,
                                        ") exceeds the KV cache of ", kv_capacity_tokens_,
                                        " tokens"));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the engine is shutting down");
    if (queued_.load() >= config_.max_queue) {
      return absl::ResourceExhaustedError(
          StrCat("the queue is full (", config_.max_queue, " waiting sequences)"));
    }
    queued_.fetch_add(1);
    inbox_.push_back(std::move(request));
  }
  cv_.notify_one();
  return absl::OkStatus();
}

void EngineInstance::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

InstanceStats EngineInstance::stats() const {
  InstanceStats s;
  s.running = running_.load();
  s.waiting = waiting_.load();
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.waiting += static_cast<int>(inbox_.size());
  }
  s.kv_blocks_total = cache_->pool().num_total();
  s.kv_blocks_free = kv_free_.load();
  s.kv_usage = s.kv_blocks_total > 0
                   ? 1.0 - static_cast<double>(s.kv_blocks_free) / s.kv_blocks_total
                   : 0.0;
  s.steps = steps_.load();
  s.prefill_tokens = prefill_tokens_.load();
  s.decode_tokens = decode_tokens_.load();
  s.preemptions = preemptions_.load();
  return s;
}

void EngineInstance::Loop() {
  while (Admit()) {
    const SchedulerOutput& out = ScheduleStep();
    if (!out.chunks.empty()) {
      Prepare(out);
      absl::Status s = Execute();
      if (s.ok()) {
        scheduler_->Complete(out);
        Emit(out);
      } else {
        const absl::Status failure =
            absl::InternalError(StrCat("model step failed: ", std::string(s.message())));
        for (const ScheduledChunk& c : out.chunks) Finish(c.seq, SequenceEnd::kFailed, failure);
      }
      steps_.fetch_add(1);
      prefill_tokens_.fetch_add(out.num_tokens - out.num_decode);
      decode_tokens_.fetch_add(out.num_decode);
    }
    PublishStats();
  }
  FailAll(absl::UnavailableError("the engine is shutting down"));
  PublishStats();
}

bool EngineInstance::Admit() {
  std::vector<SequenceRequest> incoming;
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return stopping_ || !inbox_.empty() || !scheduler_->empty(); });
    if (stopping_) return false;
    incoming.swap(inbox_);
  }
  const model::ModelConfig& mc = model_->config();
  for (SequenceRequest& r : incoming) {
    scheduler_->Add(std::make_unique<Sequence>(std::move(r), mc.vocab_size,
                                               config_.eos_token_id, config_.block_size));
  }
  // Collected first: Finish removes sequences from the scheduler.
  cancelled_.clear();
  scheduler_->ForEach([this](Sequence* s) {
    if (s->sink->cancelled()) cancelled_.push_back(s);
  });
  for (Sequence* s : cancelled_) Finish(s, SequenceEnd::kCancelled, absl::OkStatus());
  return true;
}

const SchedulerOutput& EngineInstance::ScheduleStep() {
  scheduler_->Schedule(&plan_);
  const SchedulerOutput& out = plan_;
  for (Sequence* s : out.failed) {
    Finish(s, SequenceEnd::kFailed,
           absl::ResourceExhaustedError(
               StrCat("the sequence needs ", s->num_tokens() + 1,
                      " tokens of KV cache, more than the cache holds (", kv_capacity_tokens_,
                      ")")));
  }
  preemptions_.fetch_add(out.preempted.size());
  for (const ScheduledChunk& c : out.chunks) {
    if (!c.seq->scheduled_once) {
      c.seq->scheduled_once = true;
      queued_.fetch_sub(1);
      c.seq->sink->OnScheduled();
    }
  }
  return out;
}

void EngineInstance::Prepare(const SchedulerOutput& out) {
  builder_->Clear();
  chunk_rows_.clear();
  for (const ScheduledChunk& c : out.chunks) {
    chunk_rows_.push_back(builder_->AddSequence(
        c.seq->table, std::span<const int32_t>(c.seq->tokens).subspan(c.start, c.num_tokens),
        c.start, c.want_logits));
  }
}

absl::Status EngineInstance::Execute() {
  return model_->Forward(builder_->batch(), cache_->view(), logits_.data());
}

void EngineInstance::Emit(const SchedulerOutput& out) {
  const int vocab = model_->config().vocab_size;
  for (size_t i = 0; i < out.chunks.size(); ++i) {
    const ScheduledChunk& c = out.chunks[i];
    if (chunk_rows_[i] < 0) continue;
    Sequence* s = c.seq;
    const model::SampleResult r =
        s->sampler.Sample(logits_.data() + static_cast<size_t>(chunk_rows_[i]) * vocab, vocab);
    if (s->sampler.IsStopToken(r.token)) {
      Finish(s, SequenceEnd::kStopToken, absl::OkStatus());
      continue;
    }
    s->tokens.push_back(r.token);
    s->sink->OnToken(r);
    if (s->num_generated() >= s->max_tokens) Finish(s, SequenceEnd::kLength, absl::OkStatus());
  }
}

void EngineInstance::Finish(Sequence* seq, SequenceEnd end, const absl::Status& status) {
  if (!seq->scheduled_once) queued_.fetch_sub(1);
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
  }
  for (SequenceRequest& r : incoming) {
    queued_.fetch_sub(1);
    r.sink->OnFinish(SequenceEnd::kFailed, status);
  }
  for (Sequence* s : scheduler_->All()) Finish(s, SequenceEnd::kFailed, status);
}

void EngineInstance::PublishStats() {
  running_.store(scheduler_->num_running());
  waiting_.store(scheduler_->num_waiting());
  kv_free_.store(cache_->pool().num_free());
}

}  // namespace tandem::scheduler
