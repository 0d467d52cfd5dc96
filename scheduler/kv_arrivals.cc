#include "scheduler/kv_arrivals.h"

#include <utility>
#include <vector>

#include "common/str_cat.h"

namespace tandem::scheduler {

KvArrivals::~KvArrivals() { Close(); }

void KvArrivals::Expect(uint64_t transfer_id, std::unique_ptr<Sequence> seq) {
  Committed c;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!closed_) {
      auto it = committed_.find(transfer_id);
      if (it == committed_.end()) {
        expected_[transfer_id] = std::move(seq);
        return;
      }
      c = it->second;
      committed_.erase(it);
    }
  }
  if (c.lease_id == 0) {
    seq->sink->OnFinish(SequenceEnd::kFailed,
                        absl::UnavailableError("the decode side is shutting down"));
    return;
  }
  Join(std::move(seq), c.lease_id, c.commit);
}

void KvArrivals::ExpectRequest(uint64_t transfer_id, SequenceRequest request) {
  std::shared_ptr<SequenceSink> sink = request.sink;
  absl::StatusOr<std::unique_ptr<Sequence>> seq = decode_.MakeSequence(std::move(request));
  if (!seq.ok()) {
    sink->OnFinish(SequenceEnd::kFailed, seq.status());
    return;
  }
  Committed c;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!closed_) {
      auto it = committed_.find(transfer_id);
      if (it == committed_.end()) {
        expected_[transfer_id] = std::move(*seq);
        from_request_.insert(transfer_id);
        return;
      }
      c = it->second;
      committed_.erase(it);
    }
  }
  if (c.lease_id == 0) {
    sink->OnFinish(SequenceEnd::kFailed,
                   absl::UnavailableError("the decode side is shutting down"));
    return;
  }
  Resume(seq->get(), c.commit);
  Join(std::move(*seq), c.lease_id, c.commit);
}

void KvArrivals::Resume(Sequence* seq, const kvcache::CommitFrame& c) {
  seq->num_computed = seq->prompt_len;
  seq->tokens.push_back(c.first_token);
  seq->sampler.Accept(c.first_token);
  // Its first token left the prefill worker about now; TPOT deadlines count from here.
  seq->first_token = seq->last_token = absl::Now();
  seq->scheduled_once = true;
}

void KvArrivals::Fail(uint64_t transfer_id, const absl::Status& why) {
  std::unique_ptr<Sequence> seq;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = expected_.find(transfer_id);
    if (it == expected_.end()) return;
    seq = std::move(it->second);
    expected_.erase(it);
    from_request_.erase(transfer_id);
    dropped_[transfer_id] = absl::Now();
  }
  seq->sink->OnFinish(SequenceEnd::kFailed,
                      absl::UnavailableError(StrCat("KV handover failed: ", why.message())));
}

void KvArrivals::Close() {
  std::map<uint64_t, std::unique_ptr<Sequence>> expected;
  std::map<uint64_t, Committed> committed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    expected.swap(expected_);
    from_request_.clear();
    committed.swap(committed_);
  }
  for (auto& [id, seq] : expected) {
    seq->sink->OnFinish(SequenceEnd::kFailed,
                        absl::UnavailableError("the engine is shutting down"));
  }
  for (auto& [id, c] : committed) decode_.ReleaseKv(c.lease_id);
}

std::vector<uint64_t> KvArrivals::SweepLocked(absl::Time now) {
  std::vector<uint64_t> release;
  for (auto it = committed_.begin(); it != committed_.end();) {
    if (now - it->second.at > kOrphanTimeout) {
      release.push_back(it->second.lease_id);
      ++orphans_;
      it = committed_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = dropped_.begin(); it != dropped_.end();) {
    it = now - it->second > 10 * kOrphanTimeout ? dropped_.erase(it) : std::next(it);
  }
  return release;
}

uint64_t KvArrivals::orphans_released() const {
  std::lock_guard<std::mutex> lock(mu_);
  return orphans_;
}

int KvArrivals::num_waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(expected_.size() + committed_.size());
}

absl::StatusOr<kvcache::KvReservation> KvArrivals::Reserve(const kvcache::ReserveFrame& r,
                                                           absl::Time /*expires*/) {
  // The receiver enforces the deadline and releases the lease when it passes.
  absl::StatusOr<kvcache::KvReservation> lease = decode_.ReserveKv(r.n_tokens);
  if (!lease.ok()) return lease;
  const kernels::KvCacheView& v = lease->view;
  const int n_layers =
      lease->groups.n_groups() > 0 ? static_cast<int>(lease->groups.group_of.size()) : v.n_layers;
  if (r.n_layers != n_layers || r.n_kv_heads != v.n_kv_heads || r.head_dim != v.head_dim) {
    decode_.ReleaseKv(lease->lease_id);
    return absl::InvalidArgumentError(StrCat("KV of ", r.n_layers, " layers x ", r.n_kv_heads,
                                             " heads x ", r.head_dim,
                                             " does not fit this decode instance's cache of ",
                                             n_layers, " x ", v.n_kv_heads, " x ", v.head_dim));
  }
  return lease;
}

void KvArrivals::Commit(const kvcache::ReserveFrame& r, const kvcache::KvReservation& lease,
                        const kvcache::CommitFrame& c) {
  std::unique_ptr<Sequence> seq;
  std::vector<uint64_t> release;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const absl::Time now = absl::Now();
    release = SweepLocked(now);
    auto it = expected_.find(r.transfer_id);
    if (it == expected_.end()) {
      if (closed_ || dropped_.erase(r.transfer_id) > 0) {
        release.push_back(lease.lease_id);
      } else {
        committed_[r.transfer_id] = Committed{lease.lease_id, c, now};
      }
    }
    if (it == expected_.end()) {
      for (uint64_t l : release) decode_.ReleaseKv(l);
      return;
    }
    seq = std::move(it->second);
    expected_.erase(it);
    if (from_request_.erase(r.transfer_id) > 0) Resume(seq.get(), c);
  }
  for (uint64_t l : release) decode_.ReleaseKv(l);
  Join(std::move(seq), lease.lease_id, c);
}

void KvArrivals::Abort(uint64_t transfer_id, uint64_t lease_id, const absl::Status& why) {
  if (lease_id != 0) decode_.ReleaseKv(lease_id);
  Fail(transfer_id, why);
}

void KvArrivals::Join(std::unique_ptr<Sequence> seq, uint64_t lease_id,
                      const kvcache::CommitFrame& c) {
  // The first token and the sampler state travel with the commit; a sequence that reached
  // this side by itself must agree with them.
  if (seq->num_uncomputed() != 1 || seq->tokens.back() != c.first_token) {
    decode_.ReleaseKv(lease_id);
    seq->sink->OnFinish(SequenceEnd::kFailed,
                        absl::InternalError(StrCat("KV handover: the commit's first token ",
                                                   c.first_token, " is not the sequence's")));
    return;
  }
  seq->sampler.set_seed(c.seed);
  std::shared_ptr<SequenceSink> sink = seq->sink;
  ArrivingSequence a;
  a.seq = std::move(seq);
  a.lease_id = lease_id;
  if (absl::Status s = decode_.SubmitArriving(std::move(a)); !s.ok()) {
    decode_.ReleaseKv(lease_id);
    sink->OnFinish(SequenceEnd::kFailed, s);
  }
}

}  // namespace tandem::scheduler
