#include "server/cluster/router_engine.h"

#include <algorithm>
#include <array>
#include <limits>
#include <random>
#include <span>
#include <utility>

#include "common/check.h"
#include "common/str_cat.h"
#include "scheduler/latency_model.h"
#include "server/cluster/cluster_convert.h"
#include "server/cluster/worker_service.h"
#include "spdlog/spdlog.h"

namespace tandem::server::cluster {

namespace v1 = tandem::v1;

// One sequence relayed from a prefill and a decode worker to its sink. Its mutex orders every
// call to the sink; the decode worker's tokens wait until the prefill worker's first token
// went out (the two streams race on the wire).
class RoutedRequest : public std::enable_shared_from_this<RoutedRequest> {
 public:
  // `retry`: this is the second try of a request whose first workers failed before it sent
  // anything (and `scheduled_sent`: whether the sink heard OnScheduled then). `prefill_charge`:
  // the prompt tokens placement counted as queued on the prefill worker for it.
  RoutedRequest(RouterEngine* router, v1::PhaseRequest request,
                std::shared_ptr<scheduler::SequenceSink> sink, uint64_t prefill_worker,
                uint64_t decode_worker, int prefill_charge, bool retry, bool scheduled_sent)
      : router_(router),
        sink_(std::move(sink)),
        id_(request.transfer_id()),
        prefill_worker_(prefill_worker),
        decode_worker_(decode_worker),
        prefill_charge_(prefill_charge),
        request_(std::move(request)),
        is_retry_(retry),
        scheduled_sent_(scheduled_sent) {}

  class Call;
  // Opens the decode stream, then the prefill stream.
  void Start(v1::Worker::Stub* prefill, v1::Worker::Stub* decode, const std::string& kv_address,
             const std::string& secret);
  // Ends the request with `status` (Unavailable for a dropped worker, a stopping router) and
  // cancels both streams.
  void Abandon(const absl::Status& status);
  // Cancels both streams if the client went away.
  void PollCancelled();
  uint64_t id() const { return id_; }
  uint64_t prefill_worker() const { return prefill_worker_; }
  uint64_t decode_worker() const { return decode_worker_; }
  // Whether a call of this request to `worker` is still open and has delivered nothing (since it
  // started, or since its last event) for longer than `quiet`: a worker that the router has
  // dropped for missing its heartbeats has lost such a request, but not one whose stream
  // still flows (the stream is its own proof of life, and a broken connection ends the call).
  bool SilentOn(uint64_t worker, absl::Time now, absl::Duration quiet);

  void OnEvent(bool prefill, const v1::PhaseEvent& ev);
  // `by_worker`: the worker ended the stream itself (its trailers came), whatever the status.
  void OnCallDone(bool prefill, Call* call, const absl::Status& status, bool by_worker);

 private:
  void Emit(const v1::PhaseEvent& ev) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishLocked(scheduler::SequenceEnd end, const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CancelCallsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  RouterEngine* const router_;
  const std::shared_ptr<scheduler::SequenceSink> sink_;
  const uint64_t id_;
  const uint64_t prefill_worker_, decode_worker_;
  const int prefill_charge_;
  const v1::PhaseRequest request_;
  const bool is_retry_;

  std::mutex mu_;
  Call* prefill_call_ ABSL_GUARDED_BY(mu_) = nullptr;  // null once done
  Call* decode_call_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Time prefill_heard_ ABSL_GUARDED_BY(mu_);  // the call's start or its last event
  absl::Time decode_heard_ ABSL_GUARDED_BY(mu_);
  bool first_token_out_ ABSL_GUARDED_BY(mu_) = false;
  bool handed_off_ ABSL_GUARDED_BY(mu_) = false;
  // The decode stream's end event came (emitted, or held until the first token goes out: the
  // decode stream can end before the prefill stream's first event is read).
  bool decode_ended_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool scheduled_sent_ ABSL_GUARDED_BY(mu_);
  // A worker was lost before anything reached the client: try again elsewhere once both
  // calls are done.
  std::optional<absl::Status> retry_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::PhaseEvent> held_ ABSL_GUARDED_BY(mu_);  // decode events before the first token
  // Tokens that reached the sink, and when the first and the last did (for the roles' SLOs).
  int tokens_out_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time first_token_at_ ABSL_GUARDED_BY(mu_);
  absl::Time last_token_at_ ABSL_GUARDED_BY(mu_);
};

// One Prefill or Decode call on gRPC's callback API.
class RoutedRequest::Call : public grpc::ClientReadReactor<v1::PhaseEvent> {
 public:
  Call(std::shared_ptr<RoutedRequest> owner, bool prefill, v1::Worker::Stub* stub,
       v1::PhaseRequest request, const std::string& secret, std::atomic<int>* live)
      : owner_(std::move(owner)), prefill_(prefill), request_(std::move(request)), live_(live) {
    if (!secret.empty()) ctx_.AddMetadata(kSecretKey, secret);
    live_->fetch_add(1);
    if (prefill) {
      stub->async()->Prefill(&ctx_, &request_, this);
    } else {
      stub->async()->Decode(&ctx_, &request_, this);
    }
  }
  void Start() {
    StartRead(&event_);
    StartCall();
  }
  void Cancel() { ctx_.TryCancel(); }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    owner_->OnEvent(prefill_, event_);
    StartRead(&event_);
  }
  void OnDone(const grpc::Status& s) override {
    owner_->OnCallDone(prefill_, this, FromGrpc(s, ctx_), EndedByWorker(ctx_));
    std::atomic<int>* live = live_;
    delete this;
    live->fetch_sub(1);
  }

 private:
  std::shared_ptr<RoutedRequest> owner_;
  const bool prefill_;
  v1::PhaseRequest request_;
  std::atomic<int>* const live_;
  grpc::ClientContext ctx_;
  v1::PhaseEvent event_;
};

void RoutedRequest::Start(v1::Worker::Stub* prefill, v1::Worker::Stub* decode,
                          const std::string& kv_address, const std::string& secret) {
  v1::PhaseRequest p = request_;
  p.set_decode_kv_address(kv_address);
  Call* d = new Call(shared_from_this(), false, decode, request_, secret, &router_->live_calls_);
  Call* f =
      new Call(shared_from_this(), true, prefill, std::move(p), secret, &router_->live_calls_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    decode_call_ = d;
    prefill_call_ = f;
    prefill_heard_ = decode_heard_ = absl::Now();
  }
  // Decode first: it then expects the KV before the prefill worker can send any.
  d->Start();
  f->Start();
}

void RoutedRequest::Abandon(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!finished_) FinishLocked(scheduler::SequenceEnd::kFailed, status);
  CancelCallsLocked();
}

bool RoutedRequest::SilentOn(uint64_t worker, absl::Time now, absl::Duration quiet) {
  std::lock_guard<std::mutex> lock(mu_);
  return (worker == prefill_worker_ && prefill_call_ != nullptr && now - prefill_heard_ > quiet) ||
         (worker == decode_worker_ && decode_call_ != nullptr && now - decode_heard_ > quiet);
}

void RoutedRequest::PollCancelled() {
  if (!sink_->cancelled()) return;
  std::lock_guard<std::mutex> lock(mu_);
  CancelCallsLocked();
}

void RoutedRequest::CancelCallsLocked() {
  if (prefill_call_ != nullptr) prefill_call_->Cancel();
  if (decode_call_ != nullptr) decode_call_->Cancel();
}

void RoutedRequest::Emit(const v1::PhaseEvent& ev) {
  if (ev.scheduled() && !scheduled_sent_) {
    scheduled_sent_ = true;
    sink_->OnScheduled(ev.cached_tokens());
  }
  for (const v1::PhaseToken& t : ev.tokens()) {
    sink_->OnToken(FromPhaseToken(t));
    last_token_at_ = absl::Now();
    if (tokens_out_++ == 0) first_token_at_ = last_token_at_;
  }
  if (ev.end() != v1::PhaseEvent::END_UNSPECIFIED && ev.end() != v1::PhaseEvent::END_HANDED_OFF) {
    FinishLocked(FromPhaseEnd(ev.end()), absl::OkStatus());
    CancelCallsLocked();
  }
}

void RoutedRequest::OnEvent(bool prefill, const v1::PhaseEvent& ev) {
  if (prefill && ev.scheduled()) router_->PrefixReported(ev.cached_tokens());
  std::lock_guard<std::mutex> lock(mu_);
  (prefill ? prefill_heard_ : decode_heard_) = absl::Now();
  if (finished_) return;
  if (!prefill) {
    if (ev.end() != v1::PhaseEvent::END_UNSPECIFIED) decode_ended_ = true;
    if (!first_token_out_) {
      held_.push_back(ev);
      return;
    }
    Emit(ev);
    return;
  }
  if (ev.end() == v1::PhaseEvent::END_HANDED_OFF) handed_off_ = true;
  const bool had_token = ev.tokens_size() > 0;
  Emit(ev);
  if (had_token && !first_token_out_) {
    first_token_out_ = true;
    for (const v1::PhaseEvent& h : held_) {
      if (finished_) break;
      Emit(h);
    }
    held_.clear();
  }
}

void RoutedRequest::OnCallDone(bool prefill, Call* call, const absl::Status& status,
                               bool by_worker) {
  (void)call;
  bool retire;
  std::optional<absl::Status> retry;
  bool scheduled_sent;
  const uint64_t worker = prefill ? prefill_worker_ : decode_worker_;
  if (prefill) router_->PrefillEnded(prefill_worker_, prefill_charge_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (status.code() == absl::StatusCode::kUnavailable && !by_worker) {
      // Unavailable and not the worker's own end: it could not be reached, or the connection
      // to it was lost (refused, reset, a killed process), not a failure it reported (a KV
      // transfer that broke). New requests avoid it until it is heard from again. (The router
      // never takes a request's lock while it holds its own, so taking the router's here, under
      // the request's, is safe.)
      router_->Suspect(worker);
    }
    (prefill ? prefill_call_ : decode_call_) = nullptr;
    if (!finished_ && !retry_) {
      if (!status.ok()) {
        const absl::Status why(
            status.code(), StrCat(prefill ? "prefill" : "decode", " worker: ", status.message()));
        if (status.code() == absl::StatusCode::kUnavailable && !first_token_out_ && !is_retry_ &&
            !sink_->cancelled()) {
          // Nothing reached the client yet: once, on other workers.
          retry_ = why;
        } else {
          const bool rejected = status.code() == absl::StatusCode::kResourceExhausted;
          absl::Status out = why;
          // Keep the payloads (retry-after, reject reason).
          status.ForEachPayload([&out](absl::string_view url, const absl::Cord& value) {
            out.SetPayload(url, value);
          });
          FinishLocked(rejected && !first_token_out_ ? scheduler::SequenceEnd::kRejected
                                                     : scheduler::SequenceEnd::kFailed,
                       out);
        }
        CancelCallsLocked();
      } else if (prefill ? !handed_off_ : !decode_ended_) {
        FinishLocked(scheduler::SequenceEnd::kFailed,
                     absl::InternalError(StrCat("the ", prefill ? "prefill" : "decode",
                                                " worker ended the stream without an end")));
        CancelCallsLocked();
      }
    }
    retire = prefill_call_ == nullptr && decode_call_ == nullptr;
    retry = retry_;
    scheduled_sent = scheduled_sent_;
  }
  if (!retire) return;
  router_->Retire(id_, prefill_worker_, decode_worker_);
  if (retry) {
    spdlog::warn("router: request {} lost a worker before its first token ({}); trying again", id_,
                 std::string(retry->message()));
    router_->retries_.fetch_add(1);
    v1::PhaseRequest again = request_;
    if (absl::Status s = router_->Dispatch(std::move(again), sink_, /*retry=*/true, scheduled_sent);
        !s.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      FinishLocked(
          scheduler::SequenceEnd::kFailed,
          absl::UnavailableError(StrCat(retry->message(), "; no other worker: ", s.message())));
    }
  }
}

void RoutedRequest::FinishLocked(scheduler::SequenceEnd end, const absl::Status& status) {
  finished_ = true;
  held_.clear();
  sink_->OnFinish(end, status);
  // Served to the end: judge each role on its phase's SLO. (The router never takes a request's
  // lock while it holds its own, so taking the router's here is safe.)
  if ((end != scheduler::SequenceEnd::kStopToken && end != scheduler::SequenceEnd::kLength) ||
      tokens_out_ == 0) {
    return;
  }
  if (request_.ttft_slo_ms() > 0) {
    const absl::Time arrival = absl::FromUnixMillis(request_.arrival_unix_ms());
    router_->Judge(prefill_worker_, v1::WORKER_ROLE_PREFILL,
                   absl::ToDoubleMilliseconds(first_token_at_ - arrival) <= request_.ttft_slo_ms());
  }
  if (request_.tpot_slo_ms() > 0 && tokens_out_ >= 2) {
    const double tpot_ms =
        absl::ToDoubleMilliseconds(last_token_at_ - first_token_at_) / (tokens_out_ - 1);
    router_->Judge(decode_worker_, v1::WORKER_ROLE_DECODE, tpot_ms <= request_.tpot_slo_ms());
  }
}

RouterEngine::RouterEngine(RouterConfig config) : config_(std::move(config)) {
  std::random_device rd;
  next_transfer_id_ = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  next_transfer_id_ &= ~uint64_t{0} >> 1;  // room to count up
  // Worker ids start anywhere too: a restarted router does not hand out the ids its
  // predecessor gave, which workers still send until they register again.
  next_worker_id_ = ((static_cast<uint64_t>(rd()) << 32) ^ rd()) & (~uint64_t{0} >> 1);
  if (next_worker_id_ == 0) next_worker_id_ = 1;
  sweeper_ = std::thread([this] { SweepLoop(); });
}

RouterEngine::~RouterEngine() { Stop(); }

absl::StatusOr<scheduler::Admission> RouterEngine::Submit(
    std::vector<scheduler::SequenceRequest> requests) {
  const int vocab = config_.model.vocab_size;
  for (const scheduler::SequenceRequest& r : requests) {
    if (r.prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
    for (int32_t t : r.prompt) {
      if (t < 0 || t >= vocab) {
        return absl::InvalidArgumentError(
            StrCat("prompt token ", t, " is outside the vocabulary (", vocab, " tokens)"));
      }
    }
    TANDEM_RETURN_IF_ERROR(r.sampling.Validate(vocab));
    if (r.max_tokens < 1) return absl::InvalidArgumentError("max_tokens must be >= 1");
    if (static_cast<int64_t>(r.prompt.size()) + r.max_tokens > config_.model.context_length) {
      return absl::OutOfRangeError(StrCat("prompt (", r.prompt.size(), " tokens) + max_tokens (",
                                          r.max_tokens, ") is past the context (",
                                          config_.model.context_length, ")"));
    }
  }
  std::vector<Started> started;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the router is shutting down");
    // All choices or none: every one must find its workers before any starts.
    for (const scheduler::SequenceRequest& r : requests) {
      const int need = static_cast<int>(r.prompt.size()) + r.max_tokens;
      TANDEM_RETURN_IF_ERROR(CanPlaceLocked(need));
    }
    for (scheduler::SequenceRequest& r : requests) {
      v1::PhaseRequest phase;
      ToPhaseRequest(r, 0, &phase);
      started.push_back(PlaceLocked(std::move(phase), std::move(r.sink), false, false));
    }
  }
  // Outside the lock: a call's end takes it (Retire).
  for (Started& s : started) StartPlaced(s);
  return scheduler::Admission{};
}

absl::Status RouterEngine::CanPlaceLocked(int need) {
  if (PickLocked(v1::WORKER_ROLE_PREFILL, 1, need) == nullptr) {
    return absl::UnavailableError(
        "no prefill worker is registered with this router that can hold this request (start "
        "one with --role=prefill --router HOST:PORT)");
  }
  if (PickLocked(v1::WORKER_ROLE_DECODE, 1, need) == nullptr) {
    return absl::UnavailableError(
        "no decode worker is registered with this router that can hold this request (start "
        "one with --role=decode --router HOST:PORT)");
  }
  return absl::OkStatus();
}

RouterEngine::Worker* RouterEngine::PickLocked(v1::WorkerRole role, int prompt, int need,
                                               const std::map<uint64_t, int>& cached) {
  std::vector<const WorkerInfo*> candidates;
  std::vector<int> hit;
  std::map<const WorkerInfo*, Worker*> of;
  for (auto& [id, w] : workers_) {
    if (w.info.role != role) continue;
    candidates.push_back(&w.info);
    auto c = cached.find(id);
    hit.push_back(c == cached.end() ? 0 : c->second);
    of[&w.info] = &w;
  }
  const WorkerInfo* best = PickWorker(candidates, role, prompt, need, hit);
  return best == nullptr ? nullptr : of[best];
}

void RouterEngine::PrefillEnded(uint64_t worker, int charged_tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(worker);
  if (it != workers_.end()) {
    it->second.info.prefill_tokens =
        std::max<int64_t>(0, it->second.info.prefill_tokens - charged_tokens);
  }
}

void RouterEngine::PrefixReported(int tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  prefix_counts_.reported += std::max(0, tokens);
}

RouterEngine::PrefixCounts RouterEngine::prefix_counts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return prefix_counts_;
}

RouterEngine::Started RouterEngine::PlaceLocked(v1::PhaseRequest phase,
                                                std::shared_ptr<scheduler::SequenceSink> sink,
                                                bool retry, bool scheduled_sent) {
  const int prompt = phase.prompt_size();
  const int need = prompt + phase.max_tokens();
  // The prompt's whole blocks as each prefill worker's cache keys them (block sizes may
  // differ), and how many of them each is predicted to hold.
  std::map<int, std::vector<uint64_t>> hashes;  // by block size
  std::map<uint64_t, int> cached;               // by worker id, tokens
  if (config_.prefix_aware) {
    const std::span<const int32_t> tokens(phase.prompt().data(), phase.prompt().size());
    for (auto& [id, w] : workers_) {
      if (w.info.role != v1::WORKER_ROLE_PREFILL) continue;
      const int bs = w.info.load.kv_block_size();
      auto h = hashes.find(bs);
      if (h == hashes.end()) h = hashes.emplace(bs, PrefixIndex::BlockHashes(tokens, bs)).first;
      cached[id] = PrefixIndex::UsableTokens(prefix_index_.Match(id, h->second), bs, prompt);
    }
  }
  Worker* p = PickLocked(v1::WORKER_ROLE_PREFILL, prompt, need, cached);
  Worker* d = PickLocked(v1::WORKER_ROLE_DECODE, prompt, need);
  TANDEM_CHECK(p != nullptr && d != nullptr);
  int hit = 0;
  if (config_.prefix_aware) {
    hit = cached[p->info.id];
    // It computes what it lacks and caches the prompt's whole blocks.
    prefix_index_.Insert(p->info.id, hashes[p->info.load.kv_block_size()],
                         p->info.load.kv_blocks_total());
  }
  prefix_counts_.queried += prompt;
  prefix_counts_.predicted += hit;
  phase.set_transfer_id(next_transfer_id_++);
  ++p->info.in_flight;
  ++d->info.in_flight;
  p->info.prefill_tokens += prompt - hit;
  auto req = std::make_shared<RoutedRequest>(this, std::move(phase), std::move(sink), p->info.id,
                                             d->info.id, prompt - hit, retry, scheduled_sent);
  active_[req->id()] = req;
  return Started{req, p->stub, d->stub, d->info.kv_address};
}

void RouterEngine::StartPlaced(Started& s) {
  s.req->Start(s.prefill.get(), s.decode.get(), s.kv_address, config_.secret);
}

absl::Status RouterEngine::Dispatch(v1::PhaseRequest phase,
                                    std::shared_ptr<scheduler::SequenceSink> sink, bool retry,
                                    bool scheduled_sent) {
  Started s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the router is shutting down");
    TANDEM_RETURN_IF_ERROR(CanPlaceLocked(phase.prompt_size() + phase.max_tokens()));
    s = PlaceLocked(std::move(phase), std::move(sink), retry, scheduled_sent);
  }
  StartPlaced(s);
  return absl::OkStatus();
}

void RouterEngine::Suspect(uint64_t worker) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(worker);
  if (it != workers_.end()) it->second.info.suspect_since = absl::Now();
}

void RouterEngine::Judge(uint64_t worker, v1::WorkerRole role, bool met) {
  std::lock_guard<std::mutex> lock(mu_);
  Attainment& a = role == v1::WORKER_ROLE_PREFILL ? prefill_attainment_ : decode_attainment_;
  ++a.judged;
  a.met += met;
  auto it = workers_.find(worker);
  if (it != workers_.end()) {
    ++it->second.info.slo_judged;
    it->second.info.slo_met += met;
  }
}

RouterEngine::Attainment RouterEngine::attainment(v1::WorkerRole role) const {
  std::lock_guard<std::mutex> lock(mu_);
  return role == v1::WORKER_ROLE_PREFILL ? prefill_attainment_ : decode_attainment_;
}

void RouterEngine::Retire(uint64_t id, uint64_t prefill_worker, uint64_t decode_worker) {
  std::lock_guard<std::mutex> lock(mu_);
  if (active_.erase(id) == 0) return;
  for (uint64_t w : {prefill_worker, decode_worker}) {
    auto it = workers_.find(w);
    if (it != workers_.end()) --it->second.info.in_flight;
  }
  cv_.notify_all();
}

void RouterEngine::Stop() {
  std::vector<std::shared_ptr<RoutedRequest>> active;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !sweeper_.joinable()) return;
    stopping_ = true;
    for (auto& [id, r] : active_) active.push_back(r);
  }
  cv_.notify_all();
  if (sweeper_.joinable()) sweeper_.join();
  for (auto& r : active) r->Abandon(absl::UnavailableError("the router is shutting down"));
  // The calls end promptly once cancelled; they refer to this object until then.
  for (int i = 0; i < 1000 && live_calls_.load() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

scheduler::InstanceStats RouterEngine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  scheduler::InstanceStats s;
  for (const auto& [id, w] : workers_) {
    const v1::WorkerLoad& l = w.info.load;
    s.running += l.running();
    s.waiting += l.waiting();
    s.kv_blocks_free += l.kv_blocks_free();
    s.kv_blocks_total += l.kv_blocks_total();
    if (w.info.role == v1::WORKER_ROLE_DECODE) s.decode_arrivals_waiting += l.handoffs_waiting();
  }
  s.kv_usage =
      s.kv_blocks_total > 0 ? 1.0 - static_cast<double>(s.kv_blocks_free) / s.kv_blocks_total : 0.0;
  return s;
}

int RouterEngine::kv_capacity_tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  // The largest sequence some worker of each role can hold; the context until workers come.
  int p = 0, d = 0;
  for (const auto& [id, w] : workers_) {
    int& c = w.info.role == v1::WORKER_ROLE_PREFILL ? p : d;
    c = std::max(c, w.info.kv_capacity_tokens);
  }
  if (p == 0 || d == 0) return config_.model.context_length;
  return std::min(p, d);
}

bool RouterEngine::ready() const {
  std::lock_guard<std::mutex> lock(mu_);
  bool p = false, d = false;
  for (const auto& [id, w] : workers_) {
    if (w.info.load.draining()) continue;
    (w.info.role == v1::WORKER_ROLE_PREFILL ? p : d) = true;
  }
  return p && d;
}

std::vector<WorkerInfo> RouterEngine::workers() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<WorkerInfo> out;
  for (const auto& [id, w] : workers_) out.push_back(w.info);
  return out;
}

int RouterEngine::in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(active_.size());
}

grpc::ServerUnaryReactor* RouterEngine::Register(grpc::CallbackServerContext* ctx,
                                                 const v1::RegisterRequest* request,
                                                 v1::RegisterResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status peer = CheckPeer(*ctx, config_.secret); !peer.ok()) {
    spdlog::warn("router: refused a worker registration from {}: {}", ctx->peer(),
                 peer.error_message());
    reactor->Finish(peer);
    return reactor;
  }
  if (request->role() != v1::WORKER_ROLE_PREFILL && request->role() != v1::WORKER_ROLE_DECODE) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "role must be prefill or decode"));
    return reactor;
  }
  if (request->model_fingerprint() != config_.model_fingerprint) {
    reactor->Finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                 StrCat("the worker serves model '", request->model_fingerprint(),
                                        "', this router '", config_.model_fingerprint, "'")));
    return reactor;
  }
  if (request->control_address().empty() ||
      (request->role() == v1::WORKER_ROLE_DECODE && request->kv_address().empty())) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "a worker needs a control address, and a decode worker a KV "
                                 "address"));
    return reactor;
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  // Streams to a worker that vanished (a partition, a dead host) end within a few seconds
  // instead of waiting on TCP; heartbeats catch the rest.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  auto channel = grpc::CreateCustomChannel(request->control_address(),
                                           grpc::InsecureChannelCredentials(), args);
  Worker w;
  w.stub = v1::Worker::NewStub(channel);
  w.info.role = request->role();
  w.info.name = request->name();
  w.info.control_address = request->control_address();
  w.info.kv_address = request->kv_address();
  w.info.kv_capacity_tokens = request->kv_capacity_tokens();
  w.info.load = request->load();
  w.info.last_seen = absl::Now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    // The same worker registering again (after being dropped, or restarted) replaces itself.
    for (auto it = workers_.begin(); it != workers_.end(); ++it) {
      if (it->second.info.control_address == w.info.control_address) {
        prefix_index_.Forget(it->first);
        workers_.erase(it);
        break;
      }
    }
    w.info.id = next_worker_id_++;
    response->set_worker_id(w.info.id);
    response->set_heartbeat_interval_ms(absl::ToInt64Milliseconds(config_.heartbeat_interval));
    spdlog::info("router: {} worker '{}' registered (id {}, control {}, kv {})",
                 request->role() == v1::WORKER_ROLE_PREFILL ? "prefill" : "decode", w.info.name,
                 w.info.id, w.info.control_address, w.info.kv_address);
    workers_[w.info.id] = std::move(w);
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* RouterEngine::Heartbeat(grpc::CallbackServerContext* ctx,
                                                  const v1::HeartbeatRequest* request,
                                                  v1::HeartbeatResponse*) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status peer = CheckPeer(*ctx, config_.secret); !peer.ok()) {
    reactor->Finish(peer);
    return reactor;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = workers_.find(request->worker_id());
    // An id of another incarnation of this router may name another worker now.
    if (it == workers_.end() || it->second.info.control_address != request->control_address()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown worker: register again"));
      return reactor;
    }
    it->second.info.load = request->load();
    it->second.info.last_seen = absl::Now();
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

void RouterEngine::SweepLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, std::chrono::milliseconds(20));
    if (stopping_) break;
    const absl::Time now = absl::Now();
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (now - it->second.info.last_seen > config_.worker_timeout) {
        spdlog::warn("router: worker '{}' (id {}) missed its heartbeats for {}; dropped",
                     it->second.info.name, it->first,
                     absl::FormatDuration(now - it->second.info.last_seen));
        dropped_.fetch_add(1);
        dropped_ids_.insert(it->first);
        prefix_index_.Forget(it->first);
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
    // A request on a worker dropped for missed heartbeats (now or before) is lost once its
    // call to that worker has also been silent for the timeout.
    std::vector<std::shared_ptr<RoutedRequest>> active;
    // Per request: its prefill and decode workers where dropped, else 0 (no worker id).
    std::vector<std::array<uint64_t, 2>> dropped;
    std::set<uint64_t> named;  // dropped ids some request still names
    for (auto& [id, r] : active_) {
      active.push_back(r);
      std::array<uint64_t, 2>& u = dropped.emplace_back();
      u = {r->prefill_worker(), r->decode_worker()};
      for (uint64_t& w : u) {
        if (dropped_ids_.contains(w)) {
          named.insert(w);
        } else {
          w = 0;
        }
      }
    }
    dropped_ids_.swap(named);
    lock.unlock();
    for (size_t i = 0; i < active.size(); ++i) {
      RoutedRequest& r = *active[i];
      bool lost = false;
      for (uint64_t w : dropped[i]) {
        if (w != 0) lost |= r.SilentOn(w, now, config_.worker_timeout);
      }
      if (lost) {
        r.Abandon(absl::UnavailableError("a worker of this request stopped answering"));
      } else {
        r.PollCancelled();
      }
    }
    lock.lock();
  }
}

}  // namespace tandem::server::cluster
