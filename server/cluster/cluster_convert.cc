#include "server/cluster/cluster_convert.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>

namespace tandem::server::cluster {
namespace {

double Ms(absl::Duration d) {
  return d == absl::InfiniteDuration() ? 0 : absl::ToDoubleMilliseconds(d);
}

absl::Duration FromMs(double ms) {
  return ms > 0 && std::isfinite(ms) ? absl::Microseconds(ms * 1000) : absl::InfiniteDuration();
}

}  // namespace

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

void AddPayloadTrailers(const absl::Status& s, grpc::ServerContextBase& ctx) {
  s.ForEachPayload([&ctx](absl::string_view url, const absl::Cord& value) {
    const std::string v(value);
    const bool printable =
        std::all_of(v.begin(), v.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
    if (printable) ctx.AddTrailingMetadata(kPayloadKey, std::string(url) + "=" + v);
  });
}

bool EndedByWorker(const grpc::ClientContext& ctx) {
  return ctx.GetServerTrailingMetadata().count(kWorkerEndKey) > 0;
}

absl::Status FromGrpc(const grpc::Status& s, const grpc::ClientContext& ctx) {
  absl::Status out = FromGrpc(s);
  if (out.ok()) return out;
  const auto& trailers = ctx.GetServerTrailingMetadata();
  for (auto [it, end] = trailers.equal_range(kPayloadKey); it != end; ++it) {
    const std::string kv(it->second.data(), it->second.size());
    const size_t eq = kv.find('=');
    if (eq != std::string::npos) out.SetPayload(kv.substr(0, eq), absl::Cord(kv.substr(eq + 1)));
  }
  return out;
}

void ToPhaseRequest(const scheduler::SequenceRequest& r, uint64_t transfer_id,
                    tandem::v1::PhaseRequest* out) {
  out->set_transfer_id(transfer_id);
  out->mutable_prompt()->Assign(r.prompt.begin(), r.prompt.end());
  tandem::v1::PhaseSampling* s = out->mutable_sampling();
  const model::SamplingParams& p = r.sampling;
  s->set_temperature(p.temperature);
  s->set_top_k(p.top_k);
  s->set_top_p(p.top_p);
  s->set_min_p(p.min_p);
  s->set_repetition_penalty(p.repetition_penalty);
  s->set_presence_penalty(p.presence_penalty);
  s->set_frequency_penalty(p.frequency_penalty);
  s->set_seed(p.seed);
  s->set_has_seed(p.has_seed);
  s->set_top_logprobs(p.top_logprobs);
  s->set_logprobs(p.logprobs);
  s->mutable_stop_token_ids()->Assign(p.stop_token_ids.begin(), p.stop_token_ids.end());
  s->set_ignore_eos(p.ignore_eos);
  out->set_max_tokens(r.max_tokens);
  out->set_ttft_slo_ms(Ms(r.ttft_slo));
  out->set_tpot_slo_ms(Ms(r.tpot_slo));
  out->set_arrival_unix_ms(absl::ToUnixMillis(r.arrival));
}

scheduler::SequenceRequest FromPhaseRequest(const tandem::v1::PhaseRequest& r,
                                            std::shared_ptr<scheduler::SequenceSink> sink) {
  scheduler::SequenceRequest q;
  q.id = r.transfer_id();
  q.prompt.assign(r.prompt().begin(), r.prompt().end());
  const tandem::v1::PhaseSampling& s = r.sampling();
  model::SamplingParams& p = q.sampling;
  p.temperature = s.temperature();
  p.top_k = s.top_k();
  p.top_p = s.top_p();
  p.min_p = s.min_p();
  p.repetition_penalty = s.repetition_penalty();
  p.presence_penalty = s.presence_penalty();
  p.frequency_penalty = s.frequency_penalty();
  p.seed = s.seed();
  p.has_seed = s.has_seed();
  p.top_logprobs = s.top_logprobs();
  p.logprobs = s.logprobs();
  p.stop_token_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  p.ignore_eos = s.ignore_eos();
  q.max_tokens = r.max_tokens();
  q.ttft_slo = FromMs(r.ttft_slo_ms());
  q.tpot_slo = FromMs(r.tpot_slo_ms());
  // The router's arrival time, unless the clocks disagree so much that it lies in the future.
  const absl::Time now = absl::Now();
  q.arrival =
      r.arrival_unix_ms() > 0 ? std::min(now, absl::FromUnixMillis(r.arrival_unix_ms())) : now;
  q.sink = std::move(sink);
  return q;
}

void ToPhaseToken(const model::SampleResult& r, tandem::v1::PhaseToken* out) {
  out->set_token(r.token);
  out->set_logprob(r.logprob);
  for (int i = 0; i < r.num_top_logprobs; ++i) {
    out->add_top_tokens(r.top_logprobs[i].token);
    out->add_top_logprobs(r.top_logprobs[i].logprob);
  }
}

model::SampleResult FromPhaseToken(const tandem::v1::PhaseToken& t) {
  model::SampleResult r;
  r.token = t.token();
  r.logprob = t.logprob();
  const int n = std::min(
      {t.top_tokens_size(), t.top_logprobs_size(), static_cast<int>(r.top_logprobs.size())});
  for (int i = 0; i < n; ++i) r.top_logprobs[i] = {t.top_tokens(i), t.top_logprobs(i)};
  r.num_top_logprobs = n;
  return r;
}

tandem::v1::PhaseEvent::End ToPhaseEnd(scheduler::SequenceEnd end) {
  using E = tandem::v1::PhaseEvent;
  switch (end) {
    case scheduler::SequenceEnd::kStopToken:
      return E::END_STOP_TOKEN;
    case scheduler::SequenceEnd::kLength:
      return E::END_LENGTH;
    case scheduler::SequenceEnd::kCancelled:
      return E::END_CANCELLED;
    case scheduler::SequenceEnd::kFailed:
      return E::END_FAILED;
    case scheduler::SequenceEnd::kRejected:
      return E::END_REJECTED;
  }
  return E::END_FAILED;
}

scheduler::SequenceEnd FromPhaseEnd(tandem::v1::PhaseEvent::End end) {
  using E = tandem::v1::PhaseEvent;
  switch (end) {
    case E::END_STOP_TOKEN:
      return scheduler::SequenceEnd::kStopToken;
    case E::END_LENGTH:
      return scheduler::SequenceEnd::kLength;
    case E::END_CANCELLED:
      return scheduler::SequenceEnd::kCancelled;
    case E::END_REJECTED:
      return scheduler::SequenceEnd::kRejected;
    default:
      return scheduler::SequenceEnd::kFailed;
  }
}

}  // namespace tandem::server::cluster
