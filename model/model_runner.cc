#include "model/model_runner.h"

#include <algorithm>
#include <array>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>

#include "common/check.h"
#include "common/str_cat.h"

namespace tandem::model {

absl::StatusOr<SamplingPlace> ParseSamplingPlace(std::string_view name) {
  if (name == "auto") return SamplingPlace::kAuto;
  if (name == "host") return SamplingPlace::kHost;
  if (name == "device") return SamplingPlace::kDevice;
  return absl::InvalidArgumentError(
      StrCat("--sampling must be auto, host or device, got '", name, "'"));
}

absl::Status ModelRunnerConfig::Validate() const {
  TANDEM_RETURN_IF_ERROR(backend.Validate());
  TANDEM_RETURN_IF_ERROR(model.Validate());
  if (kv_cache_bytes == 0) return absl::InvalidArgumentError("kv_cache_bytes must be > 0");
  if (nano_groups != 0 && nano_groups != 2) {
    return absl::InvalidArgumentError(StrCat("nano_groups is ", nano_groups, "; 0 or 2"));
  }
  if (nano_groups == 2 && backend.device == "cpu" && backend.cpu.threads < 2) {
    return absl::InvalidArgumentError(StrCat(
        "nano-batching on the cpu device needs at least 2 threads (", backend.cpu.threads, ")"));
  }
  return absl::OkStatus();
}

namespace {

// The T array at `offset` bytes into a sample buffer.
template <typename T>
T* At(uint8_t* base, size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

// The backend for this model: the CPU backend's activation scratch (max_batch_tokens rows)
// sized for its steps, and a 16-bit device's activation dtype the model's own unless the
// configuration names one.
kernels::BackendConfig SizedFor(kernels::BackendConfig b, const ModelOptions& mo,
                                const ModelConfig& mc) {
  b.cpu.max_batch_tokens = std::max(b.cpu.max_batch_tokens, mo.max_batch_tokens);
  if (!b.cuda_activations) b.cuda_activations = mc.DefaultActivations();
  return b;
}

absl::StatusOr<std::unique_ptr<kernels::Backend>> MakeBackend(const ModelRunnerConfig& config,
                                                              const kernels::BackendConfig& b) {
  return config.make_backend ? config.make_backend(b) : kernels::CreateBackend(b);
}

}  // namespace

// The two groups of ExecuteNano (thread groups on the CPU, streams on a GPU) and the thread
// that drives group 1.
struct ModelRunner::NanoGroups {
  struct Group {
    std::unique_ptr<kernels::Backend> backend;  // declared first: the model's scratch is its
    std::unique_ptr<LlamaModel> model;
    StepBatch batch;  // this step's nano-batch (engine thread writes it before the hand-off)
  };
  std::array<Group, 2> group;

  // GPU groups (two backends on one device, a stream each) are pipelined: group 1's layer l
  // starts on its stream once group 0's layer l has appended its KV (its Q/K/V GEMMs done),
  // and group 0's layer l + 1 once group 1's layer l has, so each group's GEMMs run beside the
  // other's attention instead of beside its GEMMs (NanoFlow's overlap of compute-bound and
  // memory-bound work; REFERENCE.md). The order is kept by events on the streams; the host only
  // makes sure an event is recorded before a stream is told to wait on it. CPU groups, on
  // disjoint threads, run free.
  bool pipelined = false;
  std::array<std::vector<kernels::Event>, 2> kv_done;  // [group][layer], recorded after KvAppend
  std::mutex pipe_mu;
  std::condition_variable pipe_cv;
  std::array<int, 2> recorded{0, 0};         // guarded by pipe_mu: kv_done events this step
  std::array<bool, 2> returned{true, true};  // guarded by pipe_mu: Forward returned this step

  // Before group g queues layer `layer`: its stream waits for the other group's event.
  bool Begin(int g, int layer) {
    const int other = 1 - g;
    const int need = g == 1 ? layer : layer - 1;
    if (need < 0) return true;
    {
      std::unique_lock<std::mutex> lock(pipe_mu);
      pipe_cv.wait(lock, [&] { return recorded[other] > need || returned[other]; });
      // A group that returned before recording it (an error) has nothing left to wait for.
      if (recorded[other] <= need) return true;
    }
    kernels::Backend& be = *group[g].backend;
    be.StreamWaitEvent(be.DefaultStream(), kv_done[other][need]);
    return true;
  }
  bool KvDone(int g, int layer) {
    kernels::Backend& be = *group[g].backend;
    be.RecordEvent(kv_done[g][layer], be.DefaultStream());
    {
      std::lock_guard<std::mutex> lock(pipe_mu);
      recorded[g] = layer + 1;
    }
    pipe_cv.notify_all();
    return true;
  }
  // Before a step: which groups run (a group that does not is finished at once).
  void StartStep(bool run0, bool run1) {
    std::lock_guard<std::mutex> lock(pipe_mu);
    recorded = {0, 0};
    returned = {!run0, !run1};
  }
  absl::Status Run(int g, const kernels::KvCacheView& cache, float* logits) {
    if (!pipelined) return group[g].model->Forward(group[g].batch, cache, logits);
    absl::Status s = group[g].model->Forward(
        group[g].batch, cache, logits, [this, g](int l) { return KvDone(g, l); },
        [this, g](int l) { return Begin(g, l); });
    {
      std::lock_guard<std::mutex> lock(pipe_mu);
      returned[g] = true;
    }
    pipe_cv.notify_all();
    return s;
  }

  // Group 1's driver. The engine thread fills group[1].batch, cache and logits, then bumps
  // `requested` under mu; the worker runs the Forward and sets `finished` = requested.
  std::thread worker;
  std::mutex mu;
  std::condition_variable cv;
  uint64_t requested = 0;  // guarded by mu
  uint64_t finished = 0;   // guarded by mu
  bool quit = false;       // guarded by mu
  kernels::KvCacheView cache;
  float* logits = nullptr;
  absl::Status status;  // group 1's result, read after `finished` catches up

  void Loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return quit || requested != seen; });
        if (quit) return;
        seen = requested;
      }
      absl::Status s = Run(1, cache, logits);
      {
        std::lock_guard<std::mutex> lock(mu);
        status = std::move(s);
        finished = seen;
      }
      cv.notify_all();
    }
  }
  ~NanoGroups() {
    if (worker.joinable()) {
      {
        std::lock_guard<std::mutex> lock(mu);
        quit = true;
      }
      cv.notify_all();
      worker.join();
    }
    for (int g = 0; g < 2; ++g) {
      for (kernels::Event e : kv_done[g]) group[g].backend->DestroyEvent(e);
    }
  }
};

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(const ModelRunnerConfig& config,
                                                                 const GgufFile& file) {
  TANDEM_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<ModelRunner> r(new ModelRunner(config));
  TANDEM_ASSIGN_OR_RETURN(const ModelConfig mc, ModelConfig::FromGguf(file));
  TANDEM_ASSIGN_OR_RETURN(r->backend_,
                          MakeBackend(config, SizedFor(config.backend, config.model, mc)));
  TANDEM_ASSIGN_OR_RETURN(r->model_, LlamaModel::Load(file, *r->backend_, config.model));
  return Finish(std::move(r));
}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(
    const ModelRunnerConfig& config, std::shared_ptr<const LlamaWeights> weights) {
  TANDEM_RETURN_IF_ERROR(config.Validate());
  if (weights == nullptr) return absl::InvalidArgumentError("no weights to share");
  std::unique_ptr<ModelRunner> r(new ModelRunner(config));
  TANDEM_ASSIGN_OR_RETURN(
      r->backend_, MakeBackend(config, SizedFor(config.backend, config.model, weights->config())));
  TANDEM_ASSIGN_OR_RETURN(r->model_,
                          LlamaModel::Create(std::move(weights), *r->backend_, config.model));
  return Finish(std::move(r));
}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Finish(std::unique_ptr<ModelRunner> r) {
  const ModelRunnerConfig& config = r->config_;
  kvcache::KvCacheConfig kc = r->model_->KvCacheLayout(config.kv_dtype, config.window_local_kv);
  kc.memory_bytes = config.kv_cache_bytes;
  if (config.kv_cache_bytes < kc.BytesPerBlock()) {
    return absl::InvalidArgumentError(
        StrCat("KV cache memory of ", config.kv_cache_bytes, " bytes holds no block (one block of ",
               config.model.block_size, " tokens takes ", kc.BytesPerBlock(), " bytes)"));
  }
  TANDEM_ASSIGN_OR_RETURN(r->kv_, kvcache::KvManager::Create(kc, *r->backend_));
  r->builder_ =
      std::make_unique<BatchBuilder>(r->model_->max_blocks_per_seq(), r->kv_->groups().n_groups());
  r->logits_.resize(static_cast<size_t>(config.model.max_logit_rows) *
                    r->model_->config().vocab_size);
  if (config.nano_groups == 2) TANDEM_RETURN_IF_ERROR(r->CreateNanoGroups());
  r->sample_on_device_ = config.sampling == SamplingPlace::kDevice ||
                         (config.sampling == SamplingPlace::kAuto && !r->backend_->IsHostMemory());
  if (r->sample_on_device_) TANDEM_RETURN_IF_ERROR(r->AllocateSampleBuffers());
  return r;
}

absl::Status ModelRunner::AllocateSampleBuffers() {
  const size_t rows = static_cast<size_t>(config_.model.max_logit_rows);
  SampleLayout& l = sample_layout_;
  size_t at = 0;
  // Every array starts 8-byte aligned (the u64 ones need it; rows * 4 may be odd multiples).
  const auto place = [&](size_t element_bytes) {
    const size_t offset = at;
    at = (at + rows * element_bytes + 7) / 8 * 8;
    return offset;
  };
  l.seed = place(sizeof(uint64_t));
  l.counter = place(sizeof(uint64_t));
  l.temperature = place(sizeof(float));
  l.top_k = place(sizeof(int32_t));
  l.top_p = place(sizeof(float));
  l.min_p = place(sizeof(float));
  l.inputs_end = at;
  l.ids = place(sizeof(int32_t));
  l.logprobs = place(sizeof(float));
  l.bytes = at;
  TANDEM_ASSIGN_OR_RETURN(sample_device_, backend_->Allocate(l.bytes));
  sample_host_.assign(l.bytes, 0);
  row_on_host_.assign(rows, 0);
  host_jobs_.reserve(rows);
  device_jobs_.reserve(rows);
  return absl::OkStatus();
}

absl::Status ModelRunner::CreateNanoGroups() {
  const kernels::BackendConfig whole = SizedFor(config_.backend, config_.model, model_->config());
  if (backend_->Name().rfind("cpu", 0) != 0) {
    // A GPU: two more backends on the same device, each with a stream and scratch of its own,
    // running the shared weights; pipelined by events (NanoGroups::pipelined).
    auto nano = std::make_unique<NanoGroups>();
    nano->pipelined = true;
    for (int g = 0; g < 2; ++g) {
      TANDEM_ASSIGN_OR_RETURN(nano->group[g].backend, MakeBackend(config_, whole));
      TANDEM_ASSIGN_OR_RETURN(
          nano->group[g].model,
          LlamaModel::Create(model_->weights(), *nano->group[g].backend, config_.model));
      for (int l = 0; l < model_->config().n_layers; ++l) {
        TANDEM_ASSIGN_OR_RETURN(kernels::Event e, nano->group[g].backend->CreateEvent());
        nano->kv_done[g].push_back(e);
      }
    }
    nano->worker = std::thread([p = nano.get()] { p->Loop(); });
    nano_ = std::move(nano);
    return absl::OkStatus();
  }
  const int threads = whole.cpu.threads;
  const int first = (threads + 1) / 2;
  auto nano = std::make_unique<NanoGroups>();
  for (int g = 0; g < 2; ++g) {
    kernels::BackendConfig bc = whole;
    const int begin = g == 0 ? 0 : first;
    const int end = g == 0 ? first : threads;
    bc.cpu.threads = end - begin;
    if (!whole.cpu.cpus.empty()) {
      bc.cpu.cpus.assign(whole.cpu.cpus.begin() + begin, whole.cpu.cpus.begin() + end);
    }
    TANDEM_ASSIGN_OR_RETURN(nano->group[g].backend, MakeBackend(config_, bc));
    TANDEM_ASSIGN_OR_RETURN(
        nano->group[g].model,
        LlamaModel::Create(model_->weights(), *nano->group[g].backend, config_.model));
  }
  nano->worker = std::thread([p = nano.get()] { p->Loop(); });
  nano_ = std::move(nano);
  return absl::OkStatus();
}

ModelRunner::ModelRunner(const ModelRunnerConfig& config) : config_(config) {}

bool ModelRunner::nano_groups_share_device() const { return nano_ && nano_->pipelined; }

ModelRunner::~ModelRunner() {
  if (sample_device_.ptr != nullptr) backend_->Free(sample_device_);
}

void ModelRunner::BeginStep() {
  builder_->Clear();
  num_chunks_ = 0;
  if (nano_) {
    chunk_token_end_.clear();
    chunk_row_.clear();
  }
}

int ModelRunner::AddChunk(const kvcache::BlockTable& table, std::span<const int32_t> tokens,
                          int start, bool want_logits) {
  ++num_chunks_;
  const int row = builder_->AddSequence(table, tokens, start, want_logits);
  if (nano_) {
    chunk_token_end_.push_back(builder_->batch().n_tokens());
    chunk_row_.push_back(row);
  }
  return row;
}

absl::Status ModelRunner::Execute(const LlamaModel::LayerHook& on_layer_kv) {
  row_in_logits_.clear();
  logits_on_device_ = sample_on_device_;
  if (logits_on_device_) {
    std::fill(row_on_host_.begin(), row_on_host_.end(), 0);
    return model_->Forward(builder_->batch(), kv_->view(), nullptr, on_layer_kv);
  }
  return model_->Forward(builder_->batch(), kv_->view(), logits_.data(), on_layer_kv);
}

absl::Status ModelRunner::ExecuteNano(std::span<const int> batch_of) {
  if (!nano_) return absl::FailedPreconditionError("the runner has no nano-batch groups");
  if (static_cast<int>(batch_of.size()) != num_chunks_) {
    return absl::InvalidArgumentError(
        StrCat("nano-batch plan for ", batch_of.size(), " chunks; the step has ", num_chunks_));
  }
  const StepBatch& b = builder_->batch();
  // Group 0's rows go first in logits_, group 1's after them, each in step order.
  std::array<int, 2> next_row{0, 0};
  for (int i = 0; i < num_chunks_; ++i) {
    if (batch_of[i] != 0 && batch_of[i] != 1) {
      return absl::InvalidArgumentError(
          StrCat("chunk ", i, " placed in nano-batch ", batch_of[i], "; 0 or 1"));
    }
    if (chunk_row_[i] >= 0 && batch_of[i] == 0) ++next_row[1];
  }
  for (NanoGroups::Group& g : nano_->group) {
    g.batch.Clear();
    g.batch.n_groups = b.n_groups;
    g.batch.max_blocks_per_seq = b.max_blocks_per_seq;
  }
  row_in_logits_.assign(b.logit_rows.size(), -1);
  const size_t table_width = static_cast<size_t>(b.n_groups) * b.max_blocks_per_seq;
  for (int i = 0; i < num_chunks_; ++i) {
    StepBatch& gb = nano_->group[batch_of[i]].batch;
    const int seq = gb.n_seqs++;
    // Chunk i is sequence row i of the monolithic batch (one AddSequence per chunk).
    const auto table = b.block_tables.begin() + static_cast<ptrdiff_t>(i * table_width);
    gb.block_tables.insert(gb.block_tables.end(), table, table + table_width);
    const int t0 = i == 0 ? 0 : chunk_token_end_[i - 1];
    for (int t = t0; t < chunk_token_end_[i]; ++t) {
      gb.tokens.push_back(b.tokens[t]);
      gb.positions.push_back(b.positions[t]);
      gb.token_seq.push_back(seq);
    }
    if (chunk_row_[i] >= 0) {
      gb.logit_rows.push_back(gb.n_tokens() - 1);
      row_in_logits_[chunk_row_[i]] = next_row[batch_of[i]]++;
    }
  }

  logits_on_device_ = false;  // the groups' Forwards write host logits
  const kernels::KvCacheView cache = kv_->view();
  const bool run0 = nano_->group[0].batch.n_seqs > 0;
  const bool run1 = nano_->group[1].batch.n_seqs > 0;
  nano_->StartStep(run0, run1);
  uint64_t ticket = 0;
  if (run1) {
    std::lock_guard<std::mutex> lock(nano_->mu);
    nano_->cache = cache;
    nano_->logits = logits_.data() + static_cast<size_t>(next_row[0]) * model_config().vocab_size;
    ticket = ++nano_->requested;
  }
  if (run1) nano_->cv.notify_all();
  absl::Status s0;
  if (run0) s0 = nano_->Run(0, cache, logits_.data());
  absl::Status s1;
  if (run1) {
    std::unique_lock<std::mutex> lock(nano_->mu);
    nano_->cv.wait(lock, [&] { return nano_->finished == ticket; });
    s1 = nano_->status;
  }
  return s0.ok() ? s1 : s0;
}

const float* ModelRunner::logits(int row) {
  TANDEM_CHECK(row >= 0 && row < config_.model.max_logit_rows);
  const size_t vocab = model_->config().vocab_size;
  if (logits_on_device_) {
    TANDEM_CHECK_LT(row, static_cast<int>(builder_->batch().logit_rows.size()));
    if (!row_on_host_[row]) {
      model_->CopyLogitsToHost(row, 1, logits_.data() + row * vocab);
      row_on_host_[row] = 1;
    }
    return logits_.data() + row * vocab;
  }
  if (!row_in_logits_.empty()) {
    TANDEM_CHECK_LT(row, static_cast<int>(row_in_logits_.size()));
    row = row_in_logits_[row];
  }
  return logits_.data() + static_cast<size_t>(row) * model_->config().vocab_size;
}

void ModelRunner::Sample(std::span<SampleJob> jobs) {
  const int vocab = model_->config().vocab_size;
  host_jobs_.clear();
  device_jobs_.clear();
  for (SampleJob& job : jobs) {
    if (logits_on_device_ && job.sampler->DeviceSamplable()) {
      device_jobs_.push_back(&job);
    } else {
      // Copied out here, on this thread: logits() may call the backend, the pool's fn may not.
      (void)logits(job.row);
      host_jobs_.push_back(&job);
    }
  }
  if (!device_jobs_.empty()) SampleOnDevice(device_jobs_);
  auto run = [&](int begin, int end) {
    for (int i = begin; i < end; ++i) {
      SampleJob& job = *host_jobs_[i];
      job.result = job.sampler->Sample(logits(job.row), vocab);
    }
  };
  // One row is cheaper inline than waking the pool.
  if (host_jobs_.size() <= 1) {
    run(0, static_cast<int>(host_jobs_.size()));
  } else {
    backend_->HostParallelFor(static_cast<int>(host_jobs_.size()), run);
  }
}

void ModelRunner::SampleOnDevice(std::span<SampleJob* const> jobs) {
  const SampleLayout& l = sample_layout_;
  // The op samples rows [0, rows): the jobs' rows with their parameters, any row between them
  // that no job wants as a greedy row (an argmax, no random number) whose id is dropped.
  int rows = 0;
  for (const SampleJob* job : jobs) rows = std::max(rows, job->row + 1);
  uint8_t* h = sample_host_.data();
  float* temperature = At<float>(h, l.temperature);
  int32_t* top_k = At<int32_t>(h, l.top_k);
  float* top_p = At<float>(h, l.top_p);
  float* min_p = At<float>(h, l.min_p);
  uint64_t* seed = At<uint64_t>(h, l.seed);
  uint64_t* counter = At<uint64_t>(h, l.counter);
  std::fill_n(temperature, rows, 0.0f);
  std::fill_n(top_k, rows, 0);
  std::fill_n(top_p, rows, 1.0f);
  std::fill_n(min_p, rows, 0.0f);
  std::fill_n(seed, rows, 0);
  std::fill_n(counter, rows, 0);
  bool want_logprobs = false;
  for (const SampleJob* job : jobs) {
    const SamplingParams& sp = job->sampler->params();
    const int r = job->row;
    temperature[r] = sp.temperature;
    top_k[r] = sp.top_k;
    top_p[r] = sp.top_p;
    min_p[r] = sp.min_p;
    seed[r] = job->sampler->seed();
    counter[r] = static_cast<uint64_t>(job->sampler->num_generated());
    want_logprobs |= sp.logprobs;
  }
  kernels::Backend& be = *backend_;
  const kernels::Stream s = be.DefaultStream();
  auto* d = static_cast<uint8_t*>(sample_device_.ptr);
  be.CopyToDevice(d, h, l.inputs_end, s);
  kernels::SampleParams p;
  p.logits = model_->device_logits();
  p.temperature = At<float>(d, l.temperature);
  p.top_k = At<int32_t>(d, l.top_k);
  p.top_p = At<float>(d, l.top_p);
  p.min_p = At<float>(d, l.min_p);
  p.seed = At<uint64_t>(d, l.seed);
  p.counter = At<uint64_t>(d, l.counter);
  p.out_ids = At<int32_t>(d, l.ids);
  p.out_logprobs = want_logprobs ? At<float>(d, l.logprobs) : nullptr;
  p.rows = rows;
  p.vocab = model_->config().vocab_size;
  be.Sample(p, s);
  // The outputs are contiguous: ids, then (8-byte aligned) logprobs.
  const size_t out_bytes =
      want_logprobs ? l.logprobs + rows * sizeof(float) - l.ids : rows * sizeof(int32_t);
  be.CopyToHost(h + l.ids, d + l.ids, out_bytes, s);
  be.Synchronize(s);
  const int32_t* ids = At<int32_t>(h, l.ids);
  const float* logprobs = At<float>(h, l.logprobs);
  for (SampleJob* job : jobs) {
    job->result = job->sampler->AcceptDeviceSample(ids[job->row], logprobs[job->row]);
  }
}

}  // namespace tandem::model
