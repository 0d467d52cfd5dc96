// NanoBatchPlanner: decides whether one engine step runs as a single batch (monolithic) or as
// two nano-batches that run at the same time on disjoint halves of the device (NanoFlow,
// REFERENCE.md), and which chunks go in which, from the latency model alone. Device-agnostic:
// it sees chunk shapes and two LatencyModels, never tensors, threads or streams.
//
// Two models, because a nano-batch runs on part of the device:
//   - `whole`: the instance's model, a step on the whole device (all its threads);
//   - `group`: a step on one nano-batch's share (on the CPU: one thread group, half the
//     threads), profiled the same way on that share.
// A split step takes t = max over nano-batches of group.Predict(that nano-batch's shape): the
// nano-batches run concurrently, each on its own share. The planner splits only when that is
// below whole.Predict(step) by options.min_gain.
//
// Why two nano-batches and no more: on the CPU each nano-batch costs one pass over the weights
// per group (every group streams all of them), so more groups only add memory traffic, and a
// 2-core machine has no third group to give; NanoFlow's GPU pipeline uses more, but only for
// some ops, which is the CUDA executor's business, not this plan's.
//
// A chunk is never split across nano-batches: the two run concurrently, and a prompt chunk's
// later tokens attend to the K/V its earlier tokens write in the same step, so halves of one
// chunk in different nano-batches would race (a sequence has at most one chunk per step).
//
// Balancing: the fitted model is linear in the chunks (t = c0 + sum of per-chunk terms), so a
// nano-batch's time is the group's c0 plus its chunks' marginal costs; chunks are placed
// largest cost first onto the lighter nano-batch (LPT; within 4/3 of the best split).
//
// Thread safety: one thread at a time calls Plan (it keeps scratch); it reads the two models
// through the pointers given at construction, which the caller must not change during a Plan
// (the engine thread owns both). Must not: run anything, or keep pointers into the chunks.
//
// Header-only: the planner is small, and tandem_scheduler names its sources one by one.
//
// Invariants of a plan: batch_of has one entry per chunk, each in [0, num_batches); with
// num_batches == 2 both nano-batches hold at least one chunk; chunks_of(b) lists b's chunks
// in step order (the executor keeps that order, so logit rows map back by it).
#ifndef TANDEM_SCHEDULER_NANO_BATCH_H_
#define TANDEM_SCHEDULER_NANO_BATCH_H_

#include <algorithm>
#include <array>
#include <span>
#include <vector>

#include "scheduler/latency_model.h"

namespace tandem::scheduler {

inline constexpr int kMaxNanoBatches = 2;

// One chunk of a step, as the planner sees it.
struct NanoChunk {
  int num_tokens = 1;   // >= 1
  int start = 0;        // position of the first token
  bool decode = false;  // one decode token at position `start` (it attends to start + 1)

  static NanoChunk Prefill(int n, int start) { return {n, start, false}; }
  static NanoChunk Decode(int context) { return {1, context - 1, true}; }
  void AddTo(StepShape* shape) const {
    if (decode) {
      shape->AddDecode(start + 1);
    } else {
      shape->AddPrefill(num_tokens, start);
    }
  }
};

struct NanoBatchOptions {
  // Split only when the predicted split time <= (1 - min_gain) * the monolithic one: the
  // split has costs the model does not see (a second thread to wake, rows to gather).
  double min_gain = 0.05;
};

struct NanoBatchPlan {
  int num_batches = 1;                           // 1: monolithic; 2: split
  std::vector<int> batch_of;                     // [n_chunks] nano-batch of each chunk
  std::array<StepShape, kMaxNanoBatches> shape;  // each nano-batch's shape (split plans)
  double monolithic_seconds = 0;                 // whole.Predict(the step)
  double split_seconds = 0;  // max of group.Predict(shape[b]) of the best split; 0 if none
  bool split() const { return num_batches > 1; }
  // Chunk indices of nano-batch b, in step order.
  std::vector<int> chunks_of(int b) const {
    std::vector<int> out;
    for (int i = 0; i < static_cast<int>(batch_of.size()); ++i) {
      if (batch_of[i] == b) out.push_back(i);
    }
    return out;
  }
};

class NanoBatchPlanner {
 public:
  // Both models must outlive the planner; an unfitted one makes every plan monolithic.
  NanoBatchPlanner(const LatencyModel* whole, const LatencyModel* group,
                   const NanoBatchOptions& options = {})
      : whole_(whole), group_(group), options_(options) {}

  // Plans a step of `chunks` (in step order) into *plan, reusing its vectors' capacity.
  void Plan(std::span<const NanoChunk> chunks, NanoBatchPlan* plan) const {
    const int n = static_cast<int>(chunks.size());
    plan->num_batches = 1;
    plan->batch_of.assign(n, 0);
    plan->shape = {};
    plan->split_seconds = 0;
    StepShape whole_shape;
    for (const NanoChunk& c : chunks) c.AddTo(&whole_shape);
    plan->monolithic_seconds = whole_->Predict(whole_shape);
    if (n < 2 || !whole_->fitted() || !group_->fitted()) return;

    // Marginal cost of each chunk on a group: the model is linear, so the step's prediction
    // is the fixed cost plus these.
    const double fixed = group_->Predict(StepShape{});
    cost_.resize(n);
    order_.resize(n);
    for (int i = 0; i < n; ++i) {
      StepShape s;
      chunks[i].AddTo(&s);
      cost_[i] = group_->Predict(s) - fixed;
      order_[i] = i;
    }
    std::stable_sort(order_.begin(), order_.end(),
                     [&](int a, int b) { return cost_[a] > cost_[b]; });
    std::array<double, kMaxNanoBatches> load{};
    std::array<int, kMaxNanoBatches> count{};
    for (int i : order_) {
      const int b = load[1] < load[0] ? 1 : 0;
      plan->batch_of[i] = b;
      load[b] += cost_[i];
      ++count[b];
    }
    // Equal costs put every other chunk in batch 1, so both are non-empty for n >= 2.
    if (count[0] == 0 || count[1] == 0) {
      plan->batch_of.assign(n, 0);
      return;
    }
    for (int i = 0; i < n; ++i) chunks[i].AddTo(&plan->shape[plan->batch_of[i]]);
    plan->split_seconds =
        std::max(group_->Predict(plan->shape[0]), group_->Predict(plan->shape[1]));
    if (plan->split_seconds <= (1.0 - options_.min_gain) * plan->monolithic_seconds) {
      plan->num_batches = 2;
    } else {
      plan->batch_of.assign(n, 0);
    }
  }

 private:
  // Constant after construction.
  const LatencyModel* whole_;
  const LatencyModel* group_;
  const NanoBatchOptions options_;
  // Scratch of Plan, kept for its capacity (Plan is called by one thread at a time).
  mutable std::vector<double> cost_;
  mutable std::vector<int> order_;
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_NANO_BATCH_H_
