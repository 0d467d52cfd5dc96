#include "scheduler/disaggregated_engine.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "common/check.h"
#include "common/retry_after.h"
#include "common/str_cat.h"
#include "kvcache/transfer/kv_shm.h"
#include "kvcache/transfer/kv_tcp.h"

namespace tandem::scheduler {

const char* KvTransportName(KvTransportKind k) {
  switch (k) {
    case KvTransportKind::kInProcess:
      return "inproc";
    case KvTransportKind::kTcp:
      return "tcp";
    case KvTransportKind::kShm:
      return "shm";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<DisaggregatedEngine>> DisaggregatedEngine::Create(
    const DisaggregatedEngineConfig& config, const model::GgufFile& file) {
  if (config.prefill.empty() || config.decode.empty()) {
    return absl::InvalidArgumentError(
        "a disaggregated engine needs at least one prefill and one decode instance");
  }
  std::unique_ptr<DisaggregatedEngine> e(new DisaggregatedEngine());
  e->transport_ = config.transport;
  e->reserve_timeout_ = config.reserve_timeout;
  e->wire_dtype_ = config.wire_dtype;
  // One name per instance: "prefill", or "prefill-0", "prefill-1"... when there are several.
  auto name = [](const char* role, size_t i, size_t n) {
    return n == 1 ? std::string(role) : StrCat(role, "-", i);
  };
  // The first decode instance loads the weights (decode instances are created first, see
  // decode_); every other instance shares them.
  std::function<void(int, int)> progress = config.prefill[0].load_progress
                                               ? config.prefill[0].load_progress
                                               : config.decode[0].load_progress;
  std::vector<EngineInstanceConfig> pcs = config.prefill, dcs = config.decode;
  for (size_t i = 0; i < pcs.size(); ++i) {
    pcs[i].role = InstanceRole::kPrefill;
    pcs[i].name = name("prefill", i, pcs.size());
    e->prefill_.push_back(std::make_unique<PrefillSide>(e.get()));
    pcs[i].handoff = e->prefill_.back().get();
    pcs[i].load_progress = nullptr;
    TANDEM_RETURN_IF_ERROR(pcs[i].Validate());
  }
  for (size_t i = 0; i < dcs.size(); ++i) {
    dcs[i].role = InstanceRole::kDecode;
    dcs[i].name = name("decode", i, dcs.size());
    dcs[i].handoff = nullptr;
    dcs[i].load_progress = i == 0 ? progress : nullptr;
    TANDEM_RETURN_IF_ERROR(dcs[i].Validate());
  }
  const bool shm = config.transport == KvTransportKind::kShm;
  for (size_t i = 0; i < dcs.size(); ++i) {
    auto d = std::make_unique<DecodeSide>();
    if (i == 0) {
      TANDEM_ASSIGN_OR_RETURN(d->inst, EngineInstance::Create(dcs[i], file));
    } else {
      TANDEM_ASSIGN_OR_RETURN(d->inst,
                              EngineInstance::Create(dcs[i], e->decode_[0]->inst->weights()));
    }
    if (config.transport != KvTransportKind::kInProcess) {
      d->arrivals = std::make_unique<KvArrivals>(*d->inst);
      TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<kvcache::KvListener> listener,
                              shm ? kvcache::ListenShm("") : kvcache::ListenTcp("127.0.0.1", 0));
      d->receiver = kvcache::KvReceiver::Start(std::move(listener), *d->arrivals);
      d->pusher = std::make_unique<kvcache::KvPusher>([address = d->receiver->address(), shm] {
        return shm ? kvcache::ConnectShm(address, absl::Seconds(5))
                   : kvcache::ConnectTcp(address, absl::Seconds(5));
      });
    }
    e->decode_.push_back(std::move(d));
  }
  for (size_t i = 0; i < pcs.size(); ++i) {
    TANDEM_ASSIGN_OR_RETURN(e->prefill_[i]->inst,
                            EngineInstance::Create(pcs[i], e->decode_[0]->inst->weights()));
  }
  return e;
}

DisaggregatedEngine::~DisaggregatedEngine() { Stop(); }

absl::StatusOr<Admission> DisaggregatedEngine::Submit(std::vector<SequenceRequest> requests) {
  // TTFT is the prefill instances' to keep: their admission decides, after asking CanAccept.
  if (prefill_.size() == 1) return prefill_[0]->inst->Submit(std::move(requests));
  // The soonest predicted first token first (each instance's simulation of its own queue with
  // this request added, counting only what its prefix cache lacks of the prompt), when every
  // instance has a latency model; predictions within kPredictionSlack of the soonest tie.
  // Then, and without models, the least loaded, then the most cached prefix; among equals,
  // each request starts one further along.
  constexpr double kPredictionSlack = 0.10;
  const size_t n = prefill_.size(), start = next_prefill_.fetch_add(1) % n;
  struct Choice {
    double predicted = 0;  // seconds; 0 for all when some instance has no model
    int load = 0;          // running + waiting
    int cached = 0;        // prompt tokens its prefix cache holds
    size_t instance = 0;
  };
  std::vector<Choice> order;
  bool all_predicted = true;
  for (size_t k = 0; k < n; ++k) {
    const size_t i = (start + k) % n;
    EngineInstance& inst = *prefill_[i]->inst;
    const InstanceStats s = inst.stats();
    Choice c;
    c.load = s.running + s.waiting;
    c.cached = inst.CachedPrefixTokens(requests[0].prompt);
    c.instance = i;
    if (all_predicted) {
      const std::optional<absl::Duration> t = inst.PredictFirstToken(requests);
      all_predicted = t.has_value();
      if (t) c.predicted = absl::ToDoubleSeconds(std::min(*t, absl::Seconds(1e6)));
    }
    order.push_back(c);
  }
  double soonest = std::numeric_limits<double>::infinity();
  for (Choice& c : order) {
    if (!all_predicted) c.predicted = 0;
    soonest = std::min(soonest, c.predicted);
  }
  for (Choice& c : order) {
    if (c.predicted <= soonest * (1 + kPredictionSlack)) c.predicted = soonest;
  }
  std::stable_sort(order.begin(), order.end(), [](const Choice& a, const Choice& b) {
    return std::make_tuple(a.predicted, a.load, -a.cached) <
           std::make_tuple(b.predicted, b.load, -b.cached);
  });
  absl::Status refused;
  for (size_t k = 0; k < order.size(); ++k) {
    const bool last = k + 1 == order.size();
    absl::StatusOr<Admission> a = prefill_[order[k].instance]->inst->Submit(
        last ? std::move(requests) : std::vector<SequenceRequest>(requests));
    // Only a refusal for capacity is worth another instance; bad input is bad everywhere.
    if (a.ok() || !absl::IsResourceExhausted(a.status())) return a;
    if (refused.ok()) refused = a.status();
  }
  return refused;  // the least loaded one's reason
}

int DisaggregatedEngine::DecodeSide::queued() const {
  // Arrivals inside the instance are in its stats' `waiting`; these have not reached it yet.
  return (pusher ? pusher->queued() : 0) + (arrivals ? arrivals->num_waiting() : 0);
}

absl::Status DisaggregatedEngine::PrefillSide::CanAccept() const {
  // TPOT is the decode instances': each takes arrivals only while its steps stay within their
  // TPOTs, and while arrivals wait for every one of them, a new SLO request would only join them.
  int queued = 0;
  for (const auto& d : owner_->decode_) {
    const int q = d->inst->num_arrivals_waiting() + (d->pusher ? d->pusher->queued() : 0);
    if (q == 0) return absl::OkStatus();
    queued += q;
  }
  absl::Status full = WithRetryAfter(
      absl::ResourceExhaustedError(
          StrCat("the server is at capacity for this SLO: no decode instance has room within its "
                 "TPOT SLOs (",
                 queued, " prefilled sequence(s) already wait for one); retry after 1000 ms")),
      absl::Seconds(1));
  full.SetPayload(kRejectReasonPayloadUrl, absl::Cord(kRejectTpot));
  return full;
}

void DisaggregatedEngine::Stop() {
  for (auto& p : prefill_) {
    if (p->inst) p->inst->Stop();  // null when Create failed before it
  }
  // No handoff runs any more: fail what was not sent, end what is in flight (the receivers
  // free their leases), then what waits for a pair.
  for (auto& d : decode_) {
    if (d->pusher) d->pusher->Stop();
  }
  for (auto& d : decode_) {
    if (d->receiver) d->receiver->Stop();
  }
  for (auto& d : decode_) {
    if (d->arrivals) d->arrivals->Close();
  }
  for (auto& d : decode_) d->inst->Stop();
}

InstanceStats DisaggregatedEngine::stats() const {
  InstanceStats s;
  auto add = [&s](const InstanceStats& x) {
    s.running += x.running;
    s.waiting += x.waiting;
    s.kv_blocks_free += x.kv_blocks_free;
    s.kv_blocks_total += x.kv_blocks_total;
    s.steps += x.steps;
    s.prefill_tokens += x.prefill_tokens;
    s.decode_tokens += x.decode_tokens;
    s.preemptions += x.preemptions;
    s.decode_deferred += x.decode_deferred;
    s.prefix_queried_tokens += x.prefix_queried_tokens;
    s.prefix_hit_tokens += x.prefix_hit_tokens;
    s.prefix_cached_blocks += x.prefix_cached_blocks;
  };
  for (const auto& p : prefill_) add(p->inst->stats());
  // The decode instances' correction (the largest): TPOT, which they govern, is what it protects.
  s.latency_correction = 0;
  for (const auto& d : decode_) {
    const InstanceStats x = d->inst->stats();
    add(x);
    s.decode_joins += x.decode_joins;
    s.nano_steps += x.nano_steps;
    s.decode_queue_seconds += x.decode_queue_seconds;
    s.latency_correction = std::max(s.latency_correction, x.latency_correction);
    s.decode_arrivals_waiting += d->inst->num_arrivals_waiting();
  }
  s.kv_usage =
      s.kv_blocks_total > 0 ? 1.0 - static_cast<double>(s.kv_blocks_free) / s.kv_blocks_total : 0.0;
  const HandoverStats h = handover_stats();
  s.handovers = h.sequences;
  s.handover_bytes = h.bytes;
  s.handover_seconds = h.seconds;
  return s;
}

int DisaggregatedEngine::kv_capacity_tokens() const {
  // Any instance of either role may get the sequence.
  int c = std::numeric_limits<int>::max();
  for (const auto& p : prefill_) c = std::min(c, p->inst->kv_capacity_tokens());
  for (const auto& d : decode_) c = std::min(c, d->inst->kv_capacity_tokens());
  return c;
}

HandoverStats DisaggregatedEngine::handover_stats() const {
  return {handed_.load(), handed_bytes_.load(), handover_seconds_.load()};
}

absl::Status DisaggregatedEngine::PrefillSide::SendKv(const Sequence& seq, kvcache::KvManager& kv) {
  const auto t0 = std::chrono::steady_clock::now();
  TANDEM_ASSIGN_OR_RETURN(pending_, kvcache::KvSnapshot::Take(kv, seq.table, seq.num_computed));
  owner_->handed_bytes_.fetch_add(pending_->bytes());
  owner_->handover_seconds_.fetch_add(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return absl::OkStatus();
}

void DisaggregatedEngine::PrefillSide::Commit(std::unique_ptr<Sequence> seq) {
  TANDEM_CHECK(pending_ != nullptr);
  owner_->Handover(owner_->PickDecode(), std::move(seq), std::move(pending_));
}

DisaggregatedEngine::DecodeSide& DisaggregatedEngine::PickDecode() {
  if (decode_.size() == 1) return *decode_[0];
  DecodeSide* best = nullptr;
  std::pair<int, int> best_key;  // (sequences running or on their way, -free blocks)
  for (auto& d : decode_) {
    const InstanceStats s = d->inst->stats();
    const std::pair<int, int> key{s.running + s.waiting + d->queued(), -s.kv_blocks_free};
    if (best == nullptr || key < best_key) {
      best = d.get();
      best_key = key;
    }
  }
  return *best;
}

void DisaggregatedEngine::Handover(DecodeSide& d, std::unique_ptr<Sequence> seq,
                                   std::unique_ptr<kvcache::KvSnapshot> kv) {
  if (transport_ != KvTransportKind::kInProcess) {
    const uint64_t id = next_transfer_.fetch_add(1);
    kvcache::KvPush p;
    p.transfer_id = id;
    p.wire_dtype = wire_dtype_.value_or(kv->dtype());
    p.kv = std::move(kv);
    p.first_token = seq->tokens.back();
    p.seed = seq->sampler.seed();
    p.deadline = absl::Now() + reserve_timeout_;
    p.done = [arrivals = d.arrivals.get(), id](const absl::Status& s) {
      if (!s.ok()) arrivals->Fail(id, s);
    };
    // Counted first: the decode side may finish the sequence before Push returns.
    handed_.fetch_add(1);
    d.arrivals->Expect(id, std::move(seq));
    d.pusher->Push(std::move(p));
    return;
  }
  ArrivingSequence a;
  a.seq = std::move(seq);
  a.import = [snap = std::shared_ptr<kvcache::KvSnapshot>(std::move(kv))](
                 const kvcache::KvManager& kv, const kvcache::BlockTable& table) {
    return snap->WriteTo(kv, table);
  };
  std::shared_ptr<SequenceSink> sink = a.seq->sink;
  // Counted first: the decode side may finish the sequence before SubmitArriving returns.
  handed_.fetch_add(1);
  if (absl::Status s = d.inst->SubmitArriving(std::move(a)); !s.ok()) {
    handed_.fetch_sub(1);
    sink->OnFinish(SequenceEnd::kFailed, s);
  }
}

}  // namespace tandem::scheduler
