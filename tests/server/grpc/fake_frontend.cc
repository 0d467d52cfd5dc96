#include "tests/server/grpc/fake_frontend.h"

#include <algorithm>
#include <functional>
#include <utility>

namespace tandem::server::testing {

void BatchGate::Release(int n) {
  released_.fetch_add(n);
  std::vector<std::shared_ptr<Listener>> listeners;
  {
    std::lock_guard<std::mutex> lock(mu_);
    listeners = listeners_;
  }
  for (const std::shared_ptr<Listener>& l : listeners) {
    std::function<void()> notify;
    {
      std::lock_guard<std::mutex> lock(l->mu);
      if (l->ready) notify = l->ready();
    }
    if (notify) notify();
  }
}

void BatchGate::Listen(std::shared_ptr<Listener> listener) {
  std::lock_guard<std::mutex> lock(mu_);
  listeners_.push_back(std::move(listener));
}

void StreamRecord::NotifyCancelled() {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_ = true;
  cv_.notify_all();
}

void StreamRecord::NotifyDestroyed() {
  std::lock_guard<std::mutex> lock(mu_);
  destroyed_ = true;
}

bool StreamRecord::destroyed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return destroyed_;
}

bool StreamRecord::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

bool StreamRecord::WaitForCancel(absl::Duration timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout), [this]() { return cancelled_; });
}

FakeStream::FakeStream(StreamScript script, std::shared_ptr<StreamRecord> record)
    : record_(std::move(record)), script_(std::move(script)) {
  if (script_.gate == nullptr) return;
  listener_ = std::make_shared<BatchGate::Listener>();
  listener_->ready = [this]() -> std::function<void()> {
    std::lock_guard<std::mutex> lock(mu_);
    cv_.notify_all();
    if (cancelled_ || next_batch_ >= Available()) return nullptr;
    return notify_;
  };
  script_.gate->Listen(listener_);
}

FakeStream::~FakeStream() {
  if (listener_ != nullptr) {
    std::lock_guard<std::mutex> lock(listener_->mu);
    listener_->ready = nullptr;
  }
  Cancel();
  record_->NotifyDestroyed();
}

void FakeStream::SetNotify(std::function<void()> notify) {
  std::lock_guard<std::mutex> lock(mu_);
  notify_ = std::move(notify);
}

size_t FakeStream::Available() const {
  if (script_.gate == nullptr) return script_.batches.size();
  return std::min(script_.batches.size(), static_cast<size_t>(script_.gate->released()));
}

bool FakeStream::Ended() const {
  return cancelled_ || (next_batch_ >= script_.batches.size() && !script_.hang_after_batches);
}

bool FakeStream::Take(std::vector<ChoiceDelta>* out) {
  std::function<void()> notify;
  bool done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    done = TakeLocked(out);
    // More batches are ready: say so, as the engine does when it produces output.
    if (!done && next_batch_ < Available()) notify = notify_;
  }
  if (notify) notify();
  return done;
}

bool FakeStream::TakeLocked(std::vector<ChoiceDelta>* out) {
  if (cancelled_) return true;
  if (next_batch_ < Available()) {
    const std::vector<ChoiceDelta>& batch = script_.batches[next_batch_++];
    out->insert(out->end(), batch.begin(), batch.end());
  }
  return Ended();
}

bool FakeStream::WaitAndTake(std::vector<ChoiceDelta>* out, absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  // Only a hanging or gated stream has nothing ready: wait for Cancel, a release or the
  // timeout.
  cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout), [this]() {
    return cancelled_ || next_batch_ < Available() ||
           (next_batch_ >= script_.batches.size() && !script_.hang_after_batches);
  });
  return TakeLocked(out);
}

absl::Status FakeStream::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (cancelled_) return absl::CancelledError("cancelled");
  return Ended() ? script_.final_status : absl::OkStatus();
}

Usage FakeStream::usage() const {
  std::lock_guard<std::mutex> lock(mu_);
  return script_.usage;
}

void FakeStream::Cancel() {
  std::function<void()> notify;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancelled_ || Ended()) return;  // a finished stream has nothing to cancel
    cancelled_ = true;
    record_->NotifyCancelled();
    cv_.notify_all();
    notify = notify_;
  }
  if (notify) notify();  // the stream has ended: its consumer takes the end
}

FakeFrontend::FakeFrontend() = default;

void FakeFrontend::SetGenerateError(absl::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  generate_error_ = std::move(status);
}

void FakeFrontend::SetScript(StreamScript script) {
  std::lock_guard<std::mutex> lock(mu_);
  script_ = std::move(script);
}

void FakeFrontend::SetTokenizeError(absl::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  tokenize_error_ = std::move(status);
}

absl::StatusOr<std::unique_ptr<GenerationStream>> FakeFrontend::Generate(
    GenerationRequest request) {
  std::lock_guard<std::mutex> lock(mu_);
  ++generate_calls_;
  generate_requests_.push_back(std::move(request));
  if (!generate_error_.ok()) return generate_error_;
  streams_.push_back(std::make_shared<StreamRecord>());
  return std::unique_ptr<GenerationStream>(new FakeStream(script_, streams_.back()));
}

absl::StatusOr<std::vector<int32_t>> FakeFrontend::Tokenize(const TokenizeRequest& request) {
  std::lock_guard<std::mutex> lock(mu_);
  tokenize_requests_.push_back(request);
  if (!tokenize_error_.ok()) return tokenize_error_;
  std::vector<int32_t> tokens;
  if (request.add_special_tokens) tokens.push_back(kFakeBos);
  std::string text = request.text;
  for (const model::ChatMessage& m : request.messages) text += m.role + ":" + m.content + "\n";
  for (unsigned char c : text) tokens.push_back(c);
  return tokens;
}

absl::StatusOr<std::string> FakeFrontend::Detokenize(const std::string& model,
                                                     const std::vector<int32_t>& tokens) {
  std::string text;
  for (int32_t t : tokens) {
    if (t < 0 || t > 255) return absl::InvalidArgumentError("token id out of range");
    text.push_back(static_cast<char>(t));
  }
  return text;
}

ModelInfo FakeFrontend::Model() const { return {"fake-model", 1700000000, 2048}; }

std::vector<GenerationRequest> FakeFrontend::generate_requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return generate_requests_;
}

std::vector<TokenizeRequest> FakeFrontend::tokenize_requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tokenize_requests_;
}

std::shared_ptr<StreamRecord> FakeFrontend::last_stream() const {
  std::lock_guard<std::mutex> lock(mu_);
  return streams_.empty() ? nullptr : streams_.back();
}

std::vector<std::shared_ptr<StreamRecord>> FakeFrontend::streams() const {
  std::lock_guard<std::mutex> lock(mu_);
  return streams_;
}

int FakeFrontend::generate_calls() const {
  std::lock_guard<std::mutex> lock(mu_);
  return generate_calls_;
}

}  // namespace tandem::server::testing
