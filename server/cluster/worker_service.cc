#include "server/cluster/worker_service.h"

#include <deque>
#include <mutex>
#include <optional>
#include <utility>

#include "common/str_cat.h"
#include "server/cluster/cluster_convert.h"
#include "spdlog/spdlog.h"

namespace tandem::server::cluster {

namespace v1 = tandem::v1;

grpc::Status CheckPeer(const grpc::CallbackServerContext& ctx, const std::string& secret) {
  if (!secret.empty()) {
    const auto& md = ctx.client_metadata();
    auto it = md.find(kSecretKey);
    if (it == md.end() || std::string_view(it->second.data(), it->second.size()) != secret) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "the cluster secret is missing or wrong");
    }
    return grpc::Status::OK;
  }
  const std::string peer = ctx.peer();  // "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:..."
  if (peer.rfind("ipv4:127.", 0) == 0 || peer.rfind("ipv6:[::1]", 0) == 0 ||
      peer.rfind("unix:", 0) == 0) {
    return grpc::Status::OK;
  }
  return grpc::Status(
      grpc::StatusCode::PERMISSION_DENIED,
      StrCat("without --cluster-secret-file only loopback peers are served, not ", peer));
}

namespace {

// The shared state of one stream: events wait here for the one write in flight, and the end
// waits for the last write. The reactor is alive until Finish is called on it (its OnDone
// comes after), and nothing touches it after that.
class StreamState {
 public:
  StreamState(grpc::ServerWriteReactor<v1::PhaseEvent>* reactor, grpc::CallbackServerContext* ctx)
      : reactor_(reactor), ctx_(ctx) {}

  void Send(v1::PhaseEvent ev) {
    v1::PhaseEvent* msg;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finishing_ || broken_) return;
      pending_.push_back(std::move(ev));
      if (writing_) return;
      writing_ = true;
      msg = &pending_.front();
    }
    reactor_->StartWrite(msg);
  }

  // Ends the stream with `s` once every queued event is written. Once only.
  void End(const absl::Status& s) {
    grpc::Status st = ToGrpc(s);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (end_ || finishing_) return;
      // The phase was taken and this is its end, whatever the status (cluster_convert.h). A
      // refusal before (draining, say) goes without: the router then avoids this worker until
      // its next heartbeat.
      ctx_->AddTrailingMetadata(kWorkerEndKey, "1");
      if (!s.ok()) AddPayloadTrailers(s, *ctx_);
      end_ = st;
      if (writing_) return;
      finishing_ = true;
    }
    reactor_->Finish(st);
  }

  void OnWriteDone(bool ok) {
    v1::PhaseEvent* next = nullptr;
    std::optional<grpc::Status> finish;
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.pop_front();
      if (!ok) {
        // The client is gone: nothing more is written; the end still comes through End.
        broken_ = true;
        cancelled_.store(true);
        pending_.clear();
      }
      if (!pending_.empty()) {
        next = &pending_.front();
      } else {
        writing_ = false;
        if (end_ && !finishing_) {
          finishing_ = true;
          finish = end_;
        }
      }
    }
    if (next != nullptr) reactor_->StartWrite(next);
    if (finish) reactor_->Finish(*finish);
  }

  void Cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

 private:
  grpc::ServerWriteReactor<v1::PhaseEvent>* const reactor_;
  grpc::CallbackServerContext* const ctx_;
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  std::deque<v1::PhaseEvent> pending_;  // front: the write in flight while writing_
  bool writing_ = false;
  bool broken_ = false;
  std::optional<grpc::Status> end_;
  bool finishing_ = false;  // Finish called (or about to be, outside the lock)
};

class PhaseReactor : public grpc::ServerWriteReactor<v1::PhaseEvent> {
 public:
  PhaseReactor(grpc::CallbackServerContext* ctx, std::shared_ptr<std::atomic<int>> open)
      : state_(std::make_shared<StreamState>(this, ctx)), open_(std::move(open)) {
    open_->fetch_add(1);
  }
  const std::shared_ptr<StreamState>& state() const { return state_; }
  void set_on_cancel(std::function<void()> f) { on_cancel_ = std::move(f); }

  void OnWriteDone(bool ok) override { state_->OnWriteDone(ok); }
  void OnCancel() override {
    state_->Cancel();
    if (on_cancel_) on_cancel_();
  }
  void OnDone() override {
    open_->fetch_sub(1);
    delete this;
  }

 private:
  std::shared_ptr<StreamState> state_;
  std::shared_ptr<std::atomic<int>> open_;
  std::function<void()> on_cancel_;  // set before the reactor is returned to gRPC
};

// The engine's view of a stream.
class PhaseSink : public scheduler::SequenceSink {
 public:
  PhaseSink(std::shared_ptr<StreamState> state, std::function<void()> on_end)
      : state_(std::move(state)), on_end_(std::move(on_end)) {}

  void OnScheduled(int cached_tokens) override {
    v1::PhaseEvent ev;
    ev.set_scheduled(true);
    ev.set_cached_tokens(cached_tokens);
    state_->Send(std::move(ev));
  }
  void OnToken(const model::SampleResult& token) override {
    v1::PhaseEvent ev;
    ToPhaseToken(token, ev.add_tokens());
    state_->Send(std::move(ev));
  }
  void OnFinish(scheduler::SequenceEnd end, const absl::Status& status) override {
    if (on_end_) on_end_();
    if (end == scheduler::SequenceEnd::kFailed || end == scheduler::SequenceEnd::kRejected) {
      state_->End(status.ok() ? absl::InternalError("the sequence failed") : status);
      return;
    }
    v1::PhaseEvent ev;
    ev.set_end(ToPhaseEnd(end));
    state_->Send(std::move(ev));
    state_->End(absl::OkStatus());
  }
  bool cancelled() const override { return state_->cancelled(); }

 private:
  std::shared_ptr<StreamState> state_;
  std::function<void()> on_end_;
};

}  // namespace

std::unique_ptr<WorkerService> WorkerService::ForPrefill(scheduler::EngineInstance& instance,
                                                         scheduler::RemoteHandoff& handoff,
                                                         std::string secret) {
  return std::unique_ptr<WorkerService>(
      new WorkerService(instance, &handoff, nullptr, std::move(secret)));
}

std::unique_ptr<WorkerService> WorkerService::ForDecode(scheduler::EngineInstance& instance,
                                                        scheduler::KvArrivals& arrivals,
                                                        std::string secret) {
  return std::unique_ptr<WorkerService>(
      new WorkerService(instance, nullptr, &arrivals, std::move(secret)));
}

grpc::Status WorkerService::Admit(const grpc::CallbackServerContext& ctx, bool serves_phase,
                                  const char* phase) const {
  if (grpc::Status peer = CheckPeer(ctx, secret_); !peer.ok()) return peer;
  if (!serves_phase) {
    return grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        StrCat("this worker does not ", phase, "; send the phase to a ", phase, " worker"));
  }
  if (draining_.load()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "this worker is draining");
  }
  return grpc::Status::OK;
}

grpc::ServerWriteReactor<v1::PhaseEvent>* WorkerService::Prefill(grpc::CallbackServerContext* ctx,
                                                                 const v1::PhaseRequest* request) {
  auto* reactor = new PhaseReactor(ctx, open_);
  std::shared_ptr<StreamState> state = reactor->state();
  if (grpc::Status refused = Admit(*ctx, handoff_ != nullptr, "prefill"); !refused.ok()) {
    reactor->Finish(refused);
    return reactor;
  }
  if (request->decode_kv_address().empty()) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "Prefill needs decode_kv_address"));
    return reactor;
  }
  const uint64_t id = request->transfer_id();
  scheduler::RemoteHandoff* handoff = handoff_;
  auto sink = std::make_shared<PhaseSink>(state, [handoff, id] { handoff->Forget(id); });
  handoff_->Route(id, request->decode_kv_address(), [state, id](const absl::Status& s) {
    // Cancelled: a layer-wise push the engine called off because the sequence ended here (at
    // its first token, or it was cancelled or failed); its sink reports that end itself.
    if (absl::IsCancelled(s)) return;
    if (!s.ok()) spdlog::warn("KV push {} failed: {}", id, std::string(s.message()));
    if (s.ok()) {
      v1::PhaseEvent ev;
      ev.set_end(v1::PhaseEvent::END_HANDED_OFF);
      state->Send(std::move(ev));
    }
    state->End(s);
  });
  std::vector<scheduler::SequenceRequest> one;
  one.push_back(FromPhaseRequest(*request, sink));
  absl::StatusOr<scheduler::Admission> admitted = instance_.Submit(std::move(one));
  if (!admitted.ok()) {
    handoff_->Forget(id);
    state->End(admitted.status());
  }
  return reactor;
}

grpc::ServerWriteReactor<v1::PhaseEvent>* WorkerService::Decode(grpc::CallbackServerContext* ctx,
                                                                const v1::PhaseRequest* request) {
  auto* reactor = new PhaseReactor(ctx, open_);
  std::shared_ptr<StreamState> state = reactor->state();
  if (grpc::Status refused = Admit(*ctx, arrivals_ != nullptr, "decode"); !refused.ok()) {
    reactor->Finish(refused);
    return reactor;
  }
  const uint64_t id = request->transfer_id();
  scheduler::KvArrivals* arrivals = arrivals_;
  // Cancelled while it waits for its KV: dropped from the arrivals (its lease, if the
  // transfer still commits, is released then). Once running, the engine sees cancelled().
  reactor->set_on_cancel([arrivals, id] {
    arrivals->Fail(id, absl::CancelledError("the router cancelled the request"));
  });
  arrivals_->ExpectRequest(id,
                           FromPhaseRequest(*request, std::make_shared<PhaseSink>(state, nullptr)));
  return reactor;
}

}  // namespace tandem::server::cluster
