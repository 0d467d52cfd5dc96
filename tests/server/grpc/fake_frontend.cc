#include "tests/server/grpc/fake_frontend.h"

#include <utility>

namespace tandem::server::testing {

FakeStream::FakeStream(StreamScript script, std::shared_ptr<StreamRecord> record)
    : record_(std::move(record)), script_(std::move(script)) {}

FakeStream::~FakeStream() { Cancel(); }

void FakeStream::SetNotify(std::function<void()> notify) {}

bool FakeStream::Ended() const {
  return cancelled_ || (next_batch_ >= script_.batches.size() && !script_.hang_after_batches);
}

bool FakeStream::Take(std::vector<ChoiceDelta>* out) {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return true;
  if (next_batch_ < script_.batches.size()) {
    const std::vector<ChoiceDelta>& batch = script_.batches[next_batch_++];
    out->insert(out->end(), batch.begin(), batch.end());
  }
  return Ended();
}

bool FakeStream::WaitAndTake(std::vector<ChoiceDelta>* out, absl::Duration timeout) {
  {
    absl::MutexLock lock(&mu_);
    // Only a hanging stream has nothing ready: wait for Cancel (or the timeout).
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return cancelled_ || next_batch_ < script_.batches.size() || !script_.hang_after_batches;
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  }
  return Take(out);
}

absl::Status FakeStream::status() const {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return absl::CancelledError("cancelled");
  return Ended() ? script_.final_status : absl::OkStatus();
}

Usage FakeStream::usage() const {
  absl::MutexLock lock(&mu_);
  return script_.usage;
}

void FakeStream::Cancel() {
  absl::MutexLock lock(&mu_);
  if (cancelled_ || Ended()) return;  // a finished stream has nothing to cancel
  cancelled_ = true;
  record_->cancelled.Notify();
}

FakeFrontend::FakeFrontend() = default;

void FakeFrontend::SetGenerateError(absl::Status status) {
  absl::MutexLock lock(&mu_);
  generate_error_ = std::move(status);
}

void FakeFrontend::SetScript(StreamScript script) {
  absl::MutexLock lock(&mu_);
  script_ = std::move(script);
}

void FakeFrontend::SetTokenizeError(absl::Status status) {
  absl::MutexLock lock(&mu_);
  tokenize_error_ = std::move(status);
}

absl::StatusOr<std::unique_ptr<GenerationStream>> FakeFrontend::Generate(
    GenerationRequest request) {
  absl::MutexLock lock(&mu_);
  ++generate_calls_;
  generate_requests_.push_back(std::move(request));
  if (!generate_error_.ok()) return generate_error_;
  last_stream_ = std::make_shared<StreamRecord>();
  return std::unique_ptr<GenerationStream>(new FakeStream(script_, last_stream_));
}

absl::StatusOr<std::vector<int32_t>> FakeFrontend::Tokenize(const TokenizeRequest& request) {
  absl::MutexLock lock(&mu_);
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
  absl::MutexLock lock(&mu_);
  return generate_requests_;
}

std::vector<TokenizeRequest> FakeFrontend::tokenize_requests() const {
  absl::MutexLock lock(&mu_);
  return tokenize_requests_;
}

std::shared_ptr<StreamRecord> FakeFrontend::last_stream() const {
  absl::MutexLock lock(&mu_);
  return last_stream_;
}

int FakeFrontend::generate_calls() const {
  absl::MutexLock lock(&mu_);
  return generate_calls_;
}

}  // namespace tandem::server::testing
