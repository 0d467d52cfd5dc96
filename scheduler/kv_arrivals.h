// KvArrivals: the decode instance's side of KV transfers (the KvReceiveTarget of a
// kvcache::KvReceiver). It leases blocks on the decode instance for each incoming transfer,
// and pairs each committed transfer with its sequence, which reaches the decode side apart
// from the KV (in one process, the prefill instance's Sequence itself; across processes, the
// router's request, from which the sequence is built with the commit's first token and
// sampler state), then submits the pair to the decode instance as an ArrivingSequence that
// brings its lease. Whichever of the two comes second completes the pair; a transfer that
// fails fails its sequence.
//
// Thread safety: every method from any thread (the receiver's connection threads, the
// prefill engine thread, the pusher's thread).
#ifndef TANDEM_SCHEDULER_KV_ARRIVALS_H_
#define TANDEM_SCHEDULER_KV_ARRIVALS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "kvcache/transfer/kv_receiver.h"
#include "scheduler/engine_instance.h"
#include "scheduler/sequence.h"

namespace tandem::scheduler {

class KvArrivals : public kvcache::KvReceiveTarget {
 public:
  // `decode` (role kDecode) must outlive this object.
  explicit KvArrivals(EngineInstance& decode) : decode_(decode) {}
  ~KvArrivals() override;  // Close()

  // The sequence whose KV travels as `transfer_id`; it has its first token and sampler state.
  void Expect(uint64_t transfer_id, std::unique_ptr<Sequence> seq);
  // The request whose prompt's KV and first token travel as `transfer_id` (a decode worker:
  // the router sends the request, the prefill worker the KV). It must pass the decode
  // instance's validation (EngineInstance::MakeSequence), else its sink fails at once.
  void ExpectRequest(uint64_t transfer_id, SequenceRequest request);
  // The sending side gave `transfer_id` up: its sequence fails with `why` (no-op once paired).
  void Fail(uint64_t transfer_id, const absl::Status& why);
  // Fails every unpaired sequence with Unavailable and frees every unpaired lease; later
  // sequences fail at once. Idempotent.
  void Close();

  // Sequences waiting for their KV, and committed transfers waiting for their sequence.
  int num_waiting() const;
  // Committed transfers whose sequence never came, released after kOrphanTimeout.
  uint64_t orphans_released() const;

  // kvcache::KvReceiveTarget.
  absl::StatusOr<kvcache::KvReservation> Reserve(const kvcache::ReserveFrame& r,
                                                 absl::Time expires) override;
  void Commit(const kvcache::ReserveFrame& r, const kvcache::KvReservation& lease,
              const kvcache::CommitFrame& c) override;
  void Abort(uint64_t transfer_id, uint64_t lease_id, const absl::Status& why) override;

 private:
  struct Committed {
    uint64_t lease_id = 0;
    kvcache::CommitFrame commit;
    absl::Time at;
  };
  // Frees committed transfers that no sequence claimed for kOrphanTimeout, and forgets old
  // tombstones. Called with mu_ held; returns the leases to release (outside the lock).
  std::vector<uint64_t> SweepLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static constexpr absl::Duration kOrphanTimeout = absl::Seconds(60);
  // Hands the pair to the decode instance (no lock held).
  void Join(std::unique_ptr<Sequence> seq, uint64_t lease_id, const kvcache::CommitFrame& c);
  // A sequence built from a request, before its first token: takes the commit's first token
  // and sampler state, as if it had run its prompt here.
  void Resume(Sequence* seq, const kvcache::CommitFrame& c);

  EngineInstance& decode_;
  mutable std::mutex mu_;
  std::map<uint64_t, std::unique_ptr<Sequence>> expected_ ABSL_GUARDED_BY(mu_);
  // Sequences of expected_ built from a request: they have no first token yet.
  std::set<uint64_t> from_request_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Committed> committed_ ABSL_GUARDED_BY(mu_);
  // Transfers whose sequence failed or was cancelled before they committed: their lease is
  // released when they do (or never come: forgotten after a while).
  std::map<uint64_t, absl::Time> dropped_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t orphans_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tandem::scheduler

#endif  // TANDEM_SCHEDULER_KV_ARRIVALS_H_
