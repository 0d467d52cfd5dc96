// FakeFrontend: a scripted server::Frontend for testing the API layers without an engine.
// Generate returns a FakeStream that hands out the scripted delta batches one per Take (or
// hangs until cancelled), then ends with the scripted status and usage; every request is
// recorded. Each stream's cancellation and destruction are observable after the stream is gone.
// The stream's notify callback runs after each Take that leaves more to take and on Cancel, as
// an engine's would, so consumers that only Take when notified (the HTTP API) make progress.
// A script with a BatchGate hands out only the batches the test has released, and notifies
// from the releasing thread, as an engine thread does when it produces tokens.
//
// Thread safety: all methods may be called from any thread (the gRPC server calls them from its
// threads while the test thread inspects the records).
#ifndef TANDEM_TESTS_SERVER_GRPC_FAKE_FRONTEND_H_
#define TANDEM_TESTS_SERVER_GRPC_FAKE_FRONTEND_H_

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "server/frontend.h"

namespace tandem::server::testing {

// Releases scripted batches to every stream that shares it (the test plays the engine).
class BatchGate {
 public:
  // A stream's registration. `ready` (null once the stream is gone) returns the notify to call
  // when a release leaves it something to take; it is called under `mu`, the notify after.
  struct Listener {
    std::mutex mu;
    std::function<std::function<void()>()> ready ABSL_GUARDED_BY(mu);
  };

  // Lets every stream hand out `n` more batches and calls their notify on this thread, with no
  // lock held (a notify may destroy its stream, as an engine's may).
  void Release(int n);
  int released() const { return released_.load(); }
  void Listen(std::shared_ptr<Listener> listener);

 private:
  std::atomic<int> released_{0};
  std::mutex mu_;
  std::vector<std::shared_ptr<Listener>> listeners_ ABSL_GUARDED_BY(mu_);
};

// What one Generate call does.
struct StreamScript {
  std::vector<std::vector<ChoiceDelta>> batches;  // handed out one batch per Take
  absl::Status final_status;                      // status once the batches are out
  Usage usage;
  bool hang_after_batches = false;  // true: never ends by itself, only through Cancel
  std::shared_ptr<BatchGate> gate;  // null: every batch is ready at once
};

// Shared between a FakeStream and the test, so Cancel stays visible after the stream dies.
// (std::mutex, not absl::Mutex: Debian's Abseil is not TSan-instrumented.)
class StreamRecord {
 public:
  void NotifyCancelled();
  void NotifyDestroyed();
  bool cancelled() const;
  bool destroyed() const;
  // True once cancelled, false if `timeout` passed first.
  bool WaitForCancel(absl::Duration timeout) const;

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool destroyed_ ABSL_GUARDED_BY(mu_) = false;
};

class FakeStream final : public GenerationStream {
 public:
  FakeStream(StreamScript script, std::shared_ptr<StreamRecord> record);
  ~FakeStream() override;

  void SetNotify(std::function<void()> notify) override;
  bool Take(std::vector<ChoiceDelta>* out) override;
  bool WaitAndTake(std::vector<ChoiceDelta>* out, absl::Duration timeout) override;
  absl::Status status() const override;
  Usage usage() const override;
  void Cancel() override;

 private:
  bool Ended() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  size_t Available() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);  // batches released so far
  bool TakeLocked(std::vector<ChoiceDelta>* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::shared_ptr<StreamRecord> record_;
  std::shared_ptr<BatchGate::Listener> listener_;  // gated scripts only
  mutable std::mutex mu_;                          // taken after listener_->mu, never before
  std::condition_variable cv_;                     // signalled by Cancel
  StreamScript script_ ABSL_GUARDED_BY(mu_);
  size_t next_batch_ ABSL_GUARDED_BY(mu_) = 0;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void()> notify_ ABSL_GUARDED_BY(mu_);
};

class FakeFrontend final : public Frontend {
 public:
  FakeFrontend();

  // The next Generate calls fail with `status` (OK: they succeed with the script).
  void SetGenerateError(absl::Status status);
  void SetScript(StreamScript script);
  void SetTokenizeError(absl::Status status);

  absl::StatusOr<std::unique_ptr<GenerationStream>> Generate(GenerationRequest request) override;
  absl::StatusOr<std::vector<int32_t>> Tokenize(const TokenizeRequest& request) override;
  absl::StatusOr<std::string> Detokenize(const std::string& model,
                                         const std::vector<int32_t>& tokens) override;
  ModelInfo Model() const override;

  std::vector<GenerationRequest> generate_requests() const;
  std::vector<TokenizeRequest> tokenize_requests() const;
  // The record of the latest stream Generate returned (null before any).
  std::shared_ptr<StreamRecord> last_stream() const;
  // The records of every stream Generate returned, in order.
  std::vector<std::shared_ptr<StreamRecord>> streams() const;
  int generate_calls() const;

 private:
  mutable std::mutex mu_;
  absl::Status generate_error_ ABSL_GUARDED_BY(mu_);
  absl::Status tokenize_error_ ABSL_GUARDED_BY(mu_);
  StreamScript script_ ABSL_GUARDED_BY(mu_);
  std::vector<GenerationRequest> generate_requests_ ABSL_GUARDED_BY(mu_);
  std::vector<TokenizeRequest> tokenize_requests_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<StreamRecord>> streams_ ABSL_GUARDED_BY(mu_);
  int generate_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

// Tokenize's fake vocabulary: one token per byte (its value), plus 1000 for BOS.
inline constexpr int32_t kFakeBos = 1000;

}  // namespace tandem::server::testing

#endif  // TANDEM_TESTS_SERVER_GRPC_FAKE_FRONTEND_H_
