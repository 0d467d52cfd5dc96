#include "scheduler/remote_handoff.h"

#include <utility>
#include <vector>

#include "common/check.h"
#include "common/retry_after.h"
#include "common/str_cat.h"

namespace tandem::scheduler {

RemoteHandoff::RemoteHandoff(RemoteHandoffConfig config) : config_(std::move(config)) {
  TANDEM_CHECK(config_.connect != nullptr);
  TANDEM_CHECK(config_.direct_planes == nullptr || !config_.wire_dtype.has_value());
}

RemoteHandoff::~RemoteHandoff() { Stop(); }

void RemoteHandoff::Route(uint64_t id, std::string decode_kv_address, Done done) {
  std::lock_guard<std::mutex> lock(mu_);
  routes_[id] = Route_{std::move(decode_kv_address), std::move(done)};
}

void RemoteHandoff::Forget(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  routes_.erase(id);
}

int RemoteHandoff::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  for (const auto& [address, p] : pushers_) n += p->queued();
  for (const auto& [address, p] : direct_pushers_) n += p->queued();
  return n;
}

int RemoteHandoff::waiting_for_room() const {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  for (const auto& [address, p] : pushers_) {
    if (p->waiting_for_room()) n += 1 + p->queued();
  }
  for (const auto& [address, p] : direct_pushers_) {
    if (p->waiting_for_room()) n += 1 + p->queued();
  }
  return n;
}

kvcache::KvPusherStats RemoteHandoff::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  kvcache::KvPusherStats s;
  for (const auto& [address, p] : pushers_) {
    const kvcache::KvPusherStats x = p->stats();
    s.committed += x.committed;
    s.failed += x.failed;
    s.cancelled += x.cancelled;
    s.bytes += x.bytes;
    s.reserve_retries += x.reserve_retries;
    s.connects += x.connects;
    s.seconds += x.seconds;
  }
  for (const auto& [address, p] : direct_pushers_) {
    const kvcache::KvNcclStats x = p->stats();
    s.committed += x.committed;
    s.failed += x.failed;
    s.cancelled += x.cancelled;
    s.bytes += x.bytes;
    s.reserve_retries += x.reserve_retries;
    s.connects += x.connections;
  }
  return s;
}

void RemoteHandoff::Stop() {
  // Held throughout, so a Detach meanwhile waits for these pushers' last `done`.
  std::lock_guard<std::mutex> stopping(stop_mu_);
  std::map<std::string, std::unique_ptr<kvcache::KvPusher>> pushers;
  std::map<std::string, std::unique_ptr<kvcache::KvNcclPusher>> direct;
  std::map<uint64_t, Route_> routes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    pushers.swap(pushers_);
    direct.swap(direct_pushers_);
    routes.swap(routes_);
  }
  // Stopping a pusher fails its transfers through their `done`.
  for (auto& [address, p] : pushers) p->Stop();
  for (auto& [address, p] : direct) p->Stop();
  for (auto& [id, r] : routes) r.done(absl::UnavailableError("the prefill worker is stopping"));
}

kvcache::KvPusher* RemoteHandoff::PusherLocked(const std::string& address) {
  if (stopped_) return nullptr;
  std::unique_ptr<kvcache::KvPusher>& slot = pushers_[address];
  if (!slot) {
    slot = std::make_unique<kvcache::KvPusher>(
        [connect = config_.connect, address] { return connect(address); });
  }
  return slot.get();
}

kvcache::KvNcclPusher* RemoteHandoff::DirectPusherLocked(const std::string& address,
                                                         const kvcache::KvManager& kv) {
  if (stopped_ || detached_) return nullptr;
  std::unique_ptr<kvcache::KvNcclPusher>& slot = direct_pushers_[address];
  if (!slot) {
    kvcache::KvNcclPusherConfig pc;
    pc.layout = kvcache::DirectLayoutOf(kv.view(), kv.groups(), kv.config().n_layers);
    pc.transfer_timeout = config_.transfer_timeout;
    slot = std::make_unique<kvcache::KvNcclPusher>(
        [connect = config_.connect, address] { return connect(address); }, *config_.direct_planes,
        pc);
  }
  return slot.get();
}

void RemoteHandoff::Attach(EngineInstance& instance) {
  std::lock_guard<std::mutex> lock(release_mu_);
  instance_ = &instance;
}

void RemoteHandoff::Detach(kvcache::KvManager& kv) {
  // First every direct push ends (each aborts its plane, after which no region of the cache is
  // read), then no Post may reach the instance, then the references come back here.
  {
    std::lock_guard<std::mutex> stopping(stop_mu_);
    std::map<std::string, std::unique_ptr<kvcache::KvNcclPusher>> direct;
    {
      std::lock_guard<std::mutex> lock(mu_);
      detached_ = true;
      direct.swap(direct_pushers_);
    }
    for (auto& [address, p] : direct) p->Stop();
  }
  {
    std::lock_guard<std::mutex> lock(release_mu_);
    instance_ = nullptr;
  }
  direct_.clear();
  stream_errors_.clear();
  ReturnReleased(kv);
}

void RemoteHandoff::Release(std::vector<int32_t> blocks) {
  std::lock_guard<std::mutex> lock(release_mu_);
  released_.insert(released_.end(), blocks.begin(), blocks.end());
  // After Detach began the instance is stopping: Post runs the task at once with no cache,
  // and Detach returns the references itself.
  if (instance_ != nullptr) {
    instance_->Post([this](kvcache::KvManager* kv, bool) {
      if (kv != nullptr) ReturnReleased(*kv);
    });
  }
}

void RemoteHandoff::ReturnReleased(kvcache::KvManager& kv) {
  std::vector<int32_t> blocks;
  {
    std::lock_guard<std::mutex> lock(release_mu_);
    blocks.swap(released_);
  }
  for (int32_t b : blocks) kv.DropRef(b);
  held_blocks_.fetch_sub(static_cast<int>(blocks.size()));
}

std::shared_ptr<kvcache::KvNcclLayerStream> RemoteHandoff::StartDirect(const Sequence& seq,
                                                                       int n_tokens,
                                                                       kvcache::KvManager& kv) {
  std::lock_guard<std::mutex> lock(mu_);
  auto route = routes_.find(seq.id);
  if (route == routes_.end()) return nullptr;  // not routed (or its caller went away)
  kvcache::KvNcclPusher* pusher = DirectPusherLocked(route->second.address, kv);
  if (pusher == nullptr) return nullptr;  // stopping: Commit fails it
  // The blocks stay the sequence's KV, unwritten, until the push is done with them: whether
  // the sequence hands off, ends here, or fails meanwhile.
  std::vector<int32_t> blocks;
  for (int g = 0; g < seq.table.num_groups(); ++g) {
    for (int32_t b : seq.table.group(g)) {
      if (b < 0) continue;  // a local group's page before its window, already returned
      kv.AddRef(b);
      blocks.push_back(b);
    }
  }
  held_blocks_.fetch_add(static_cast<int>(blocks.size()));
  kvcache::KvNcclPush p;
  p.transfer_id = seq.id;
  p.stream = std::make_shared<kvcache::KvNcclLayerStream>(n_tokens, kv.config().n_layers);
  p.deadline = absl::Now() + config_.reserve_timeout;
  p.done = [this, blocks = std::move(blocks),
            done = std::move(route->second.done)](const absl::Status& s) mutable {
    Release(std::move(blocks));
    done(s);
  };
  routes_.erase(route);
  std::shared_ptr<kvcache::KvNcclLayerStream> stream = p.stream;
  pusher->Push(std::move(p));
  return stream;
}

void RemoteHandoff::AddDirectLayer(const Sequence& seq, int layer, const kvcache::KvManager& kv,
                                   kernels::Event ready, kvcache::KvNcclLayerStream& stream) {
  std::vector<kvcache::KvRegion> regions;
  if (absl::Status s = kvcache::DirectLayerRegions(kv.view(), kv.groups(), seq.table, layer,
                                                   stream.n_tokens(), &regions);
      !s.ok()) {
    // The hand-off fails with it (SendKv), and Drop then calls the transfer off.
    stream_errors_[seq.id] = s;
    return;
  }
  stream.AddLayer(layer, std::move(regions), ready);
}

void RemoteHandoff::OnLayer(int layer, std::span<Sequence* const> completing,
                            kvcache::KvManager& kv, kernels::Event ready) {
  if (config_.direct_planes != nullptr) {
    for (Sequence* seq : completing) {
      // One that ends at its first token (max_tokens 1) has nothing to hand off.
      if (seq->max_tokens <= seq->num_generated() + 1) continue;
      auto it = direct_.find(seq->id);
      if (layer == 0 && it == direct_.end()) {
        // Positions [0, num_tokens) have KV once this step's layers are done.
        std::shared_ptr<kvcache::KvNcclLayerStream> stream =
            StartDirect(*seq, seq->num_tokens(), kv);
        if (stream == nullptr) continue;
        it = direct_.emplace(seq->id, std::move(stream)).first;
      }
      if (it == direct_.end() || stream_errors_.count(seq->id) > 0) continue;
      AddDirectLayer(*seq, layer, kv, ready, *it->second);
    }
    return;
  }
  const kernels::KvCacheView& view = kv.view();
  const kernels::KvDType dtype = config_.wire_dtype.value_or(view.dtype);
  for (Sequence* seq : completing) {
    auto it = streams_.find(seq->id);
    // One that ends at its first token (max_tokens 1) has nothing to hand off.
    if (seq->max_tokens <= seq->num_generated() + 1) continue;
    if (layer == 0 && it == streams_.end()) {
      // The transfer starts now: its Reserve travels while the layers compute.
      kvcache::KvPush p;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto route = routes_.find(seq->id);
        if (route == routes_.end()) continue;  // not routed (or its caller went away)
        kvcache::KvPusher* pusher = PusherLocked(route->second.address);
        if (pusher == nullptr) continue;  // stopping: Commit fails it
        p.transfer_id = seq->id;
        p.stream = std::make_shared<kvcache::KvLayerStream>(seq->num_tokens(), kv.config().n_layers,
                                                            view.n_kv_heads, view.head_dim, dtype);
        p.deadline = absl::Now() + config_.reserve_timeout;
        p.done = std::move(route->second.done);
        routes_.erase(route);
        it = streams_.emplace(seq->id, p.stream).first;
        pusher->Push(std::move(p));
      }
    }
    if (it == streams_.end() || stream_errors_.count(seq->id) > 0) continue;
    // Positions [0, num_tokens) of this layer are in the cache now: the earlier chunks' and
    // this step's.
    int first = 0;
    if (absl::Status s = kvcache::EncodeLayerPayload(kv, seq->table, layer, seq->num_tokens(),
                                                     dtype, &first, &payload_);
        !s.ok()) {
      // The hand-off fails with it (SendKv), and Drop then calls the transfer off.
      stream_errors_[seq->id] = s;
      continue;
    }
    it->second->AddLayer(layer, first, std::move(payload_));
    payload_ = std::string();
  }
}

void RemoteHandoff::Drop(const Sequence& seq) {
  stream_errors_.erase(seq.id);
  if (auto d = direct_.find(seq.id); d != direct_.end()) {
    // Its blocks stay held until the pusher has let go of them (`done`).
    d->second->Cancel("the sequence ended on the prefill worker");
    direct_.erase(d);
    return;
  }
  auto it = streams_.find(seq.id);
  if (it == streams_.end()) return;
  it->second->Cancel("the sequence ended on the prefill worker");
  streams_.erase(it);
}

absl::Status RemoteHandoff::SendKv(const Sequence& seq, kvcache::KvManager& kv) {
  // Streamed layer by layer already: nothing left to copy, unless a layer failed.
  if (auto e = stream_errors_.find(seq.id); e != stream_errors_.end()) return e->second;
  if (streams_.count(seq.id) > 0 || direct_.count(seq.id) > 0) return absl::OkStatus();
  if (config_.direct_planes != nullptr) {
    // Direct, after the prefill step: every layer at once. The step is over (its logits were
    // read), so its KV is written: no event to wait on.
    std::shared_ptr<kvcache::KvNcclLayerStream> stream = StartDirect(seq, seq.num_computed, kv);
    if (stream == nullptr) return absl::OkStatus();  // not routed, or stopping: Commit says
    direct_.emplace(seq.id, stream);
    for (int l = 0; l < kv.config().n_layers; ++l) {
      AddDirectLayer(seq, l, kv, kernels::Event{}, *stream);
      if (auto e = stream_errors_.find(seq.id); e != stream_errors_.end()) return e->second;
    }
    return absl::OkStatus();
  }
  TANDEM_ASSIGN_OR_RETURN(pending_, kvcache::KvSnapshot::Take(kv, seq.table, seq.num_computed));
  return absl::OkStatus();
}

void RemoteHandoff::Commit(std::unique_ptr<Sequence> seq) {
  if (auto it = streams_.find(seq->id); it != streams_.end()) {
    it->second->Commit(seq->tokens.back(), seq->sampler.seed());
    streams_.erase(it);
    return;
  }
  if (auto it = direct_.find(seq->id); it != direct_.end()) {
    it->second->Commit(seq->tokens.back(), seq->sampler.seed());
    direct_.erase(it);
    return;
  }
  if (config_.direct_planes != nullptr) {
    // SendKv started nothing: not routed (nothing to send), or the handoff is stopping.
    Done done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = routes_.find(seq->id);
      if (it != routes_.end()) {
        done = std::move(it->second.done);
        routes_.erase(it);
      }
    }
    if (done) done(absl::UnavailableError("the prefill worker is stopping"));
    return;
  }
  TANDEM_CHECK(pending_ != nullptr);
  kvcache::KvPush p;
  p.transfer_id = seq->id;
  p.wire_dtype = config_.wire_dtype.value_or(pending_->dtype());
  p.kv = std::move(pending_);
  p.first_token = seq->tokens.back();
  p.seed = seq->sampler.seed();
  p.deadline = absl::Now() + config_.reserve_timeout;
  kvcache::KvPusher* pusher = nullptr;
  Done done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = routes_.find(seq->id);
    if (it != routes_.end()) {
      done = std::move(it->second.done);
      const std::string address = it->second.address;
      routes_.erase(it);
      pusher = PusherLocked(address);
    }
  }
  if (!done) {
    // Nobody routed it, or its route was forgotten (its caller went away): nothing to send.
    return;
  }
  if (pusher == nullptr) {
    done(absl::UnavailableError("the prefill worker is stopping"));
    return;
  }
  p.done = std::move(done);
  pusher->Push(std::move(p));
}

absl::Status RemoteHandoff::CanAccept() const {
  // Pushes in flight or queued for a moment are normal (a layer-wise push is queued for the
  // whole prefill step); only KV that cannot leave for lack of room on a decode worker says
  // that decode capacity, not prefill, is what is short.
  const int q = waiting_for_room();
  if (q == 0) return absl::OkStatus();
  absl::Status full = WithRetryAfter(
      absl::ResourceExhaustedError(
          StrCat("the server is at capacity for this SLO: ", q,
                 " prefilled sequence(s) wait for room on a decode worker; retry after 1000 ms")),
      absl::Seconds(1));
  full.SetPayload(kRejectReasonPayloadUrl, absl::Cord(kRejectTpot));
  return full;
}

}  // namespace tandem::scheduler
