// ModelRunner: the device side of one engine instance: a backend made by the factory, the
// model on it (weights loaded, or shared with other instances on the same kind of device),
// and the KV storage behind a kvcache::KvManager. It runs steps and samples their rows; it
// knows no requests: chunks come in as block tables and token spans, results go out as logits
// and SampleResults.
//
// A step is: BeginStep, AddChunk per chunk (returns the chunk's logit row or -1), Execute
// (Model::Forward, with an optional per-layer hook), then Sample over the rows that want a
// token, spread over the backend's threads (HostParallelFor) rather than one by one.
//
// Where rows are sampled (config `sampling`): on the host, each row's logits copied out of
// the step (the CPU's default: they are in host memory already), or on the device
// (Backend::Sample; a GPU's default): the logits stay where the model wrote them, and only
// the sampled ids and their logprobs come back, one copy each way per step. A row whose
// sampler needs the host (penalties, which read the token history, or top_logprobs: see
// Sampler::DeviceSamplable) has its logits copied out and is sampled there in the same step.
// Both places draw by one definition (Philox at (seed, step), kernels::SampleParams), so a
// sequence's tokens do not depend on where its rows were sampled but where float rounding
// moves a survivor's mass across a boundary.
//
// Nano-batching (config nano_groups = 2): the runner also holds two groups, each a backend
// with its own LlamaModel on the shared weights, writing into the same KV memory: on the CPU,
// a CpuBackend on half the threads (and half the pinned cores); on a GPU, a backend on the
// whole device with a stream of its own, the two pipelined by events so that one nano-batch's
// GEMMs run beside the other's attention (model_runner.cc, NanoGroups). ExecuteNano runs the
// step's chunks as two nano-batches, one per group, concurrently (the calling thread drives
// group 0, a persistent thread group 1); sequences in different nano-batches touch disjoint KV
// blocks. logits(row) then reads the same rows a monolithic Execute would have produced, for
// the same chunks: each sequence's math does not depend on its batch-mates on the CPU kernels,
// so the rows are identical bit for bit (on the CUDA kernels too while both steps take the same
// GEMM path: the quantized GEMV up to 8 rows, the mma GEMM above, which round differently). Which
// chunk goes where is the caller's (scheduler::NanoBatchPlanner); with nano_groups = 0 nothing of
// this exists and Execute is unchanged.
//
// Thread safety: one thread drives a runner (its instance's engine thread), except that
// Sample calls each job's sampler from the backend's threads, one job per thread at a time.
// Must not: know about sequences' lifetimes, SLOs or sinks.
#ifndef TANDEM_MODEL_MODEL_RUNNER_H_
#define TANDEM_MODEL_MODEL_RUNNER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/backend_factory.h"
#include "kvcache/block_table.h"
#include "kvcache/kv_manager.h"
#include "model/batch_builder.h"
#include "model/gguf_file.h"
#include "model/llama_model.h"
#include "model/sampler.h"

namespace tandem::model {

// Where ModelRunner::Sample draws rows (see the file comment).
enum class SamplingPlace {
  kAuto,    // the device when the backend's memory is not the host's, else the host
  kHost,    // every row's logits copied to the host and sampled there
  kDevice,  // Backend::Sample, rows that need the host excepted
};
// "auto", "host" or "device"; InvalidArgument naming the flag otherwise.
absl::StatusOr<SamplingPlace> ParseSamplingPlace(std::string_view name);

struct ModelRunnerConfig {
  kernels::BackendConfig backend;
  ModelOptions model;  // batch limits and the KV block size; load_progress when loading
  kernels::KvDType kv_dtype = kernels::KvDType::kF16;
  size_t kv_cache_bytes = size_t{1} << 30;
  // Sliding-window layers keep only their window's KV (kvcache::KvGroups).
  bool window_local_kv = false;
  // 0, or 2: two groups for ExecuteNano: on device "cpu" (backend.cpu.threads >= 2) the
  // threads and pinned cores split in halves, group 0 taking the first; on a GPU two more
  // backends on the device, a stream each.
  int nano_groups = 0;
  SamplingPlace sampling = SamplingPlace::kAuto;
  // Makes the runner's backends from `backend` (after sizing); null: kernels::CreateBackend.
  // Tests set it to a backend the factory does not offer (the CUDA backend in the harness).
  std::function<absl::StatusOr<std::unique_ptr<kernels::Backend>>(const kernels::BackendConfig&)>
      make_backend;

  absl::Status Validate() const;
};

// One row to sample: `sampler` draws from logits row `row` of the last Execute.
struct SampleJob {
  Sampler* sampler = nullptr;
  int row = -1;
  SampleResult result;  // filled by Sample
};

class ModelRunner {
 public:
  // Loads the weights from `file` (which may be closed afterwards) onto a new backend.
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(const ModelRunnerConfig& config,
                                                             const GgufFile& file);
  // Uses weights another runner loaded (same kind of device; FailedPrecondition otherwise).
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(
      const ModelRunnerConfig& config, std::shared_ptr<const LlamaWeights> weights);
  ~ModelRunner();
  ModelRunner(const ModelRunner&) = delete;
  ModelRunner& operator=(const ModelRunner&) = delete;

  const ModelRunnerConfig& config() const { return config_; }
  const ModelConfig& model_config() const { return model_->config(); }
  std::shared_ptr<const LlamaWeights> weights() const { return model_->weights(); }
  kernels::Backend& backend() { return *backend_; }
  kvcache::KvManager& kv() { return *kv_; }
  const kvcache::KvManager& kv() const { return *kv_; }

  // The step's verbs.
  void BeginStep();
  // Adds `tokens` at positions start.. of the sequence whose KV lives in `table` (blocks
  // reserved for them already). Returns the chunk's row in the logits, or -1 without
  // want_logits.
  int AddChunk(const kvcache::BlockTable& table, std::span<const int32_t> tokens, int start,
               bool want_logits);
  int num_chunks() const { return num_chunks_; }
  absl::Status Execute(const LlamaModel::LayerHook& on_layer_kv = nullptr);
  // Runs the step as nano-batches: chunk i (AddChunk order) on thread group batch_of[i] (0 or
  // 1), the two groups concurrently; a group with no chunk stays idle (all on one group: a
  // step on that group alone, as the planner's group profile needs). FailedPrecondition
  // without nano groups; InvalidArgument when batch_of does not name a group per chunk. No
  // per-layer hook: a step that needs one (a disaggregated prefill's KV push) runs Execute.
  absl::Status ExecuteNano(std::span<const int> batch_of);
  bool has_nano_groups() const { return nano_ != nullptr; }
  // Whether the two groups share the device (a GPU's streams) rather than split it (the CPU's
  // thread groups): a nano-batch's time is then its time beside the other's.
  bool nano_groups_share_device() const;
  // [vocab] f32 logits of `row` of the last Execute or ExecuteNano, in host memory (copied
  // out of the device at the first call for the row when they stayed there).
  const float* logits(int row);
  // Samples every job's row; jobs are independent (each its own sampler).
  void Sample(std::span<SampleJob> jobs);
  // True when Execute leaves the logits on the device for Sample to draw there.
  bool samples_on_device() const { return sample_on_device_; }

 private:
  explicit ModelRunner(
      const ModelRunnerConfig& config);  // out of line: NanoGroups is incomplete here
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Finish(std::unique_ptr<ModelRunner> r);
  struct NanoGroups;  // model_runner.cc
  absl::Status CreateNanoGroups();
  absl::Status AllocateSampleBuffers();
  // Samples `jobs` (all DeviceSamplable) with Backend::Sample on the last Execute's logits.
  void SampleOnDevice(std::span<SampleJob* const> jobs);

  // Constant after construction.
  const ModelRunnerConfig config_;
  // Declared first, destroyed last: the model's buffers and the KV memory are its.
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<kvcache::KvManager> kv_;

  // Engine thread only.
  std::unique_ptr<BatchBuilder> builder_;
  int num_chunks_ = 0;
  std::vector<float> logits_;  // [max_logit_rows, vocab]
  // Nano-batching only (null otherwise).
  std::unique_ptr<NanoGroups> nano_;
  std::vector<int> chunk_token_end_;  // [num_chunks] end of each chunk's tokens in the batch
  std::vector<int> chunk_row_;        // [num_chunks] each chunk's logit row, or -1
  std::vector<int> row_in_logits_;    // [rows] where logits_ holds each row after ExecuteNano;
                                      // empty after Execute (row r at r)
  // Device sampling (sample_on_device_ fixed at creation): the last Execute left its logits on
  // the device; row_on_host_[r] once logits_ holds row r too.
  bool sample_on_device_ = false;
  bool logits_on_device_ = false;
  std::vector<uint8_t> row_on_host_;  // [max_logit_rows]
  // Backend::Sample's per-row inputs and outputs, struct-of-arrays in one device buffer (the
  // inputs first, then the outputs, so each crosses in one copy) and its host mirror.
  struct SampleLayout {
    size_t temperature = 0, top_k = 0, top_p = 0, min_p = 0, seed = 0, counter = 0;  // inputs
    size_t ids = 0, logprobs = 0;  // outputs (byte offsets, like the inputs)
    size_t inputs_end = 0, bytes = 0;
  };
  SampleLayout sample_layout_;
  kernels::DeviceBuffer sample_device_;
  std::vector<uint8_t> sample_host_;
  std::vector<SampleJob*> host_jobs_, device_jobs_;  // Sample's split, reused
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_MODEL_RUNNER_H_
