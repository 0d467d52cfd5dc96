#include "server/grpc/generate_reactor.h"

#include <boost/asio/post.hpp>
#include <utility>

#include "common/check.h"
#include "server/grpc/proto_convert.h"
#include "server/grpc/status_convert.h"

namespace tandem::server::grpc_api {
namespace {

// Finishes with its status as soon as gRPC binds it; nothing else to do.
class RefusedGenerate final : public grpc::ServerWriteReactor<tandem::v1::GenerateResponse> {
 public:
  explicit RefusedGenerate(grpc::Status status) { Finish(std::move(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

ReactorPool::ReactorPool(int threads) : pool_(threads) { TANDEM_CHECK_GT(threads, 0); }

ReactorPool::~ReactorPool() {
  WaitIdle();
  pool_.join();
}

void ReactorPool::WaitIdle() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_.wait(lock, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return alive_ == 0; });
}

ReactorPool::Lease::Lease(ReactorPool& pool) : pool_(pool) {
  std::lock_guard<std::mutex> lock(pool_.mu_);
  ++pool_.alive_;
}

ReactorPool::Lease::~Lease() {
  std::lock_guard<std::mutex> lock(pool_.mu_);
  if (--pool_.alive_ == 0) pool_.idle_.notify_all();
}

grpc::ServerWriteReactor<tandem::v1::GenerateResponse>* GenerateReactor::Start(
    grpc::CallbackServerContext* context, std::unique_ptr<GenerationStream> stream,
    ReactorPool& pool, Report report) {
  auto reactor =
      std::make_shared<GenerateReactor>(context, std::move(stream), pool, std::move(report));
  reactor->self_ = reactor;
  std::weak_ptr<GenerateReactor> weak = reactor;
  reactor->stream_->SetNotify([weak] {
    if (auto self = weak.lock()) self->Schedule();
  });
  reactor->Schedule();  // output may be ready already
  return reactor.get();
}

grpc::ServerWriteReactor<tandem::v1::GenerateResponse>* GenerateReactor::Refuse(
    grpc::Status status) {
  return new RefusedGenerate(std::move(status));
}

GenerateReactor::GenerateReactor(grpc::CallbackServerContext* context,
                                 std::unique_ptr<GenerationStream> stream, ReactorPool& pool,
                                 Report report)
    : lease_(pool),
      context_(context),
      stream_(std::move(stream)),
      report_(std::move(report)),
      strand_(boost::asio::make_strand(pool.executor())) {}

GenerateReactor::~GenerateReactor() = default;

void GenerateReactor::OnWriteDone(bool ok) {
  boost::asio::post(strand_, [self = shared_from_this(), ok] { self->WriteDone(ok); });
}

void GenerateReactor::OnCancel() {
  // At once, not on the strand: the engine frees the sequences even while a pump is queued.
  stream_->Cancel();
  boost::asio::post(strand_, [self = shared_from_this()] {
    self->cancelled_ = true;
    self->Pump();
  });
}

void GenerateReactor::OnDone() {
  // May destroy *this; posted pumps that still hold it find finished_ set.
  std::shared_ptr<GenerateReactor> last = std::move(self_);
}

void GenerateReactor::Schedule() {
  if (scheduled_.exchange(true)) return;  // one pending pump takes everything ready
  boost::asio::post(strand_, [self = shared_from_this()] { self->Pump(); });
}

void GenerateReactor::Pump() {
  scheduled_.store(false);
  if (finished_ || writing_) return;  // OnWriteDone pumps again
  if (cancelled_) {
    FinishWith(grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the call"));
    return;
  }
  deltas_.clear();
  const bool done = stream_->Take(&deltas_);
  if (!deltas_.empty()) {
    response_.Clear();
    for (const ChoiceDelta& delta : deltas_) ToProto(delta, response_.add_choices());
    writing_ = true;
    StartWrite(&response_);
    return;  // an ended stream is finished by the pump after this write
  }
  if (!done) return;
  if (absl::Status status = stream_->status(); !status.ok()) {
    FinishWith(ToGrpcStatus(status, *context_));
    return;
  }
  response_.Clear();
  ToProto(stream_->usage(), response_.mutable_usage());
  finished_ = true;
  report_(grpc::Status::OK);
  StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
}

void GenerateReactor::WriteDone(bool ok) {
  writing_ = false;
  if (finished_) return;
  if (!ok && !cancelled_) {
    // The client is gone; nobody will read the rest.
    stream_->Cancel();
    FinishWith(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
    return;
  }
  Pump();
}

void GenerateReactor::FinishWith(const grpc::Status& status) {
  finished_ = true;
  report_(status);
  Finish(status);
}

}  // namespace tandem::server::grpc_api
