// RecordingSink: a SequenceSink for scheduler tests that records every token and the end of
// one sequence, lets the test wait for that end, and can cancel itself (after `cancel_after`
// tokens, or when told).
#ifndef TANDEM_TESTS_SCHEDULER_RECORDING_SINK_H_
#define TANDEM_TESTS_SCHEDULER_RECORDING_SINK_H_

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <vector>

#include "gtest/gtest.h"
#include "scheduler/sequence.h"

namespace tandem::scheduler {

// Records what the engine reports for one sequence; cancels itself after `cancel_after`
// tokens when that is >= 0.
class RecordingSink : public SequenceSink {
 public:
  explicit RecordingSink(int cancel_after = -1) : cancel_after_(cancel_after) {}
  void OnScheduled(int cached_tokens) override {
    scheduled_ = true;
    cached_tokens_.store(cached_tokens);
  }
  void OnToken(const model::SampleResult& r) override {
    std::lock_guard<std::mutex> lock(mu_);
    tokens_.push_back(r.token);
    if (cancel_after_ >= 0 && static_cast<int>(tokens_.size()) >= cancel_after_) cancel_ = true;
  }
  void OnFinish(SequenceEnd end, const absl::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    EXPECT_FALSE(finished_) << "OnFinish twice";
    finished_ = true;
    end_ = end;
    status_ = status;
    cv_.notify_all();
  }
  bool cancelled() const override { return cancel_.load(); }

  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return finished_; });
  }
  std::vector<int32_t> tokens() {
    std::lock_guard<std::mutex> lock(mu_);
    return tokens_;
  }
  SequenceEnd end() {
    std::lock_guard<std::mutex> lock(mu_);
    return end_;
  }
  absl::Status status() {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }
  void Cancel() { cancel_ = true; }
  // What OnScheduled said came from the prefix cache (-1: not scheduled).
  int cached_tokens() const { return cached_tokens_.load(); }

 private:
  const int cancel_after_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int32_t> tokens_;
  bool finished_ = false;
  bool scheduled_ = false;
  std::atomic<int> cached_tokens_{-1};
  SequenceEnd end_ = SequenceEnd::kFailed;
  absl::Status status_;
  std::atomic<bool> cancel_{false};
};

}  // namespace tandem::scheduler

#endif  // TANDEM_TESTS_SCHEDULER_RECORDING_SINK_H_
