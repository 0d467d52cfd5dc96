#include "scheduler/disaggregated_engine.h"

#include <algorithm>
#include <chrono>
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
  std::unique_ptr<DisaggregatedEngine> e(new DisaggregatedEngine());
  EngineInstanceConfig pc = config.prefill;
  pc.role = InstanceRole::kPrefill;
  pc.name = "prefill";
  pc.handoff = e.get();
  EngineInstanceConfig dc = config.decode;
  dc.role = InstanceRole::kDecode;
  dc.name = "decode";
  dc.handoff = nullptr;
  // The decode instance loads the weights (it is created first, see decode_); the prefill
  // instance shares them.
  dc.load_progress =
      config.prefill.load_progress ? config.prefill.load_progress : config.decode.load_progress;
  pc.load_progress = nullptr;
  TANDEM_RETURN_IF_ERROR(pc.Validate());
  TANDEM_RETURN_IF_ERROR(dc.Validate());
  e->transport_ = config.transport;
  e->reserve_timeout_ = config.reserve_timeout;
  if (config.wire_dtype) {
    e->wire_dtype_ = *config.wire_dtype;
    e->wire_dtype_set_ = true;
  }
  TANDEM_ASSIGN_OR_RETURN(e->decode_, EngineInstance::Create(dc, file));
  if (config.transport != KvTransportKind::kInProcess) {
    const bool shm = config.transport == KvTransportKind::kShm;
    e->arrivals_ = std::make_unique<KvArrivals>(*e->decode_);
    TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<kvcache::KvListener> listener,
                            shm ? kvcache::ListenShm("") : kvcache::ListenTcp("127.0.0.1", 0));
    e->receiver_ = kvcache::KvReceiver::Start(std::move(listener), *e->arrivals_);
    e->pusher_ = std::make_unique<kvcache::KvPusher>([address = e->receiver_->address(), shm] {
      return shm ? kvcache::ConnectShm(address, absl::Seconds(5))
                 : kvcache::ConnectTcp(address, absl::Seconds(5));
    });
  }
  TANDEM_ASSIGN_OR_RETURN(e->prefill_, EngineInstance::Create(pc, e->decode_->weights()));
  return e;
}

DisaggregatedEngine::~DisaggregatedEngine() { Stop(); }

absl::StatusOr<Admission> DisaggregatedEngine::Submit(std::vector<SequenceRequest> requests) {
  // TTFT is the prefill instance's to keep: its admission decides, after asking CanAccept.
  return prefill_->Submit(std::move(requests));
}

absl::Status DisaggregatedEngine::CanAccept() const {
  // TPOT is the decode instance's: it takes arrivals only while its steps stay within their
  // TPOTs, and while arrivals wait for it, a new SLO request would only join them.
  const int queued = decode_->num_arrivals_waiting() + (pusher_ ? pusher_->queued() : 0);
  if (queued == 0) return absl::OkStatus();
  absl::Status full = WithRetryAfter(
      absl::ResourceExhaustedError(StrCat(
          "the server is at capacity for this SLO: the decode instance has no room within its "
          "TPOT SLOs (",
          queued, " prefilled sequence(s) already wait for it); retry after 1000 ms")),
      absl::Seconds(1));
  full.SetPayload(kRejectReasonPayloadUrl, absl::Cord(kRejectTpot));
  return full;
}

void DisaggregatedEngine::Stop() {
  if (prefill_) prefill_->Stop();
  // No handoff runs any more: fail what was not sent, end what is in flight (the receiver
  // frees its leases), then what waits for a pair.
  if (pusher_) pusher_->Stop();
  if (receiver_) receiver_->Stop();
  if (arrivals_) arrivals_->Close();
  if (decode_) decode_->Stop();
}

InstanceStats DisaggregatedEngine::stats() const {
  const InstanceStats p = prefill_->stats(), d = decode_->stats();
  InstanceStats s;
  s.running = p.running + d.running;
  s.waiting = p.waiting + d.waiting;
  s.kv_blocks_free = p.kv_blocks_free + d.kv_blocks_free;
  s.kv_blocks_total = p.kv_blocks_total + d.kv_blocks_total;
  s.kv_usage =
      s.kv_blocks_total > 0 ? 1.0 - static_cast<double>(s.kv_blocks_free) / s.kv_blocks_total : 0.0;
  s.steps = p.steps + d.steps;
  s.prefill_tokens = p.prefill_tokens + d.prefill_tokens;
  s.decode_tokens = p.decode_tokens + d.decode_tokens;
  s.preemptions = p.preemptions + d.preemptions;
  s.decode_deferred = p.decode_deferred + d.decode_deferred;
  s.decode_joins = d.decode_joins;
  s.decode_queue_seconds = d.decode_queue_seconds;
  // The decode instance's: TPOT, which it governs, is what the correction protects.
  s.latency_correction = d.latency_correction;
  const HandoverStats h = handover_stats();
  s.handovers = h.sequences;
  s.handover_bytes = h.bytes;
  s.handover_seconds = h.seconds;
  s.decode_arrivals_waiting = decode_->num_arrivals_waiting();
  return s;
}

int DisaggregatedEngine::kv_capacity_tokens() const {
  return std::min(prefill_->kv_capacity_tokens(), decode_->kv_capacity_tokens());
}

HandoverStats DisaggregatedEngine::handover_stats() const {
  return {handed_.load(), handed_bytes_.load(), handover_seconds_.load()};
}

absl::Status DisaggregatedEngine::SendKv(const Sequence& seq, const kvcache::KvManager& kv) {
  const auto t0 = std::chrono::steady_clock::now();
  TANDEM_ASSIGN_OR_RETURN(pending_, kvcache::KvSnapshot::Take(kv, seq.table, seq.num_computed));
  handed_bytes_.fetch_add(pending_->bytes());
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  handover_seconds_.store(handover_seconds_.load() + dt);  // one writer: this thread
  return absl::OkStatus();
}

void DisaggregatedEngine::Commit(std::unique_ptr<Sequence> seq) {
  TANDEM_CHECK(pending_ != nullptr);
  if (transport_ != KvTransportKind::kInProcess) {
    const uint64_t id = next_transfer_++;
    kvcache::KvPush p;
    p.transfer_id = id;
    p.wire_dtype = wire_dtype_set_ ? wire_dtype_ : pending_->dtype();
    p.kv = std::move(pending_);
    p.first_token = seq->tokens.back();
    p.rng_state = seq->sampler.rng_state();
    p.deadline = absl::Now() + reserve_timeout_;
    p.done = [arrivals = arrivals_.get(), id](const absl::Status& s) {
      if (!s.ok()) arrivals->Fail(id, s);
    };
    // Counted first: the decode side may finish the sequence before Push returns.
    handed_.fetch_add(1);
    arrivals_->Expect(id, std::move(seq));
    pusher_->Push(std::move(p));
    return;
  }
  ArrivingSequence a;
  a.seq = std::move(seq);
  a.import = [snap = std::shared_ptr<kvcache::KvSnapshot>(std::move(pending_))](
                 const kvcache::KvManager& kv, const kvcache::BlockTable& table) {
    return snap->WriteTo(kv, table);
  };
  std::shared_ptr<SequenceSink> sink = a.seq->sink;
  // Counted first: the decode side may finish the sequence before SubmitArriving returns.
  handed_.fetch_add(1);
  if (absl::Status s = decode_->SubmitArriving(std::move(a)); !s.ok()) {
    handed_.fetch_sub(1);
    sink->OnFinish(SequenceEnd::kFailed, s);
  }
}

}  // namespace tandem::scheduler
