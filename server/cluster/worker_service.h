// WorkerService: the tandem.v1.Worker gRPC service of a prefill or decode worker (tandemd
// --role=prefill|decode), on gRPC's callback API: a stream costs no thread while it waits for
// the engine. Prefill submits the router's request to the prefill instance, whose
// RemoteHandoff pushes the KV to the decode worker the router named; the stream carries the
// first token and ends with END_HANDED_OFF once the KV is committed there (or with the
// sequence's end, if it ended at its first token). Decode registers the request with the
// decode instance's KvArrivals, which starts it once its KV is committed; the stream carries
// every later token and the end. Cancelling a call (the router's client went away, or the
// router dropped the request) drops the sequence wherever it is, and its KV with it.
//
// Authentication: with a secret, every call must carry it (metadata kSecretKey), else
// UNAUTHENTICATED. Without one, only loopback peers are served.
//
// Thread safety: gRPC calls the service from its threads; the engine calls the sinks from its
// thread. Each stream serializes its writes itself.
#ifndef TANDEM_SERVER_CLUSTER_WORKER_SERVICE_H_
#define TANDEM_SERVER_CLUSTER_WORKER_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>

#include "scheduler/engine_instance.h"
#include "scheduler/kv_arrivals.h"
#include "scheduler/remote_handoff.h"
#include "tandem/v1/cluster.grpc.pb.h"

namespace tandem::server::cluster {

// Checks a call's secret (or, without a secret, that the peer is on loopback). OK or
// UNAUTHENTICATED / PERMISSION_DENIED.
grpc::Status CheckPeer(const grpc::CallbackServerContext& ctx, const std::string& secret);

class WorkerService final : public tandem::v1::Worker::CallbackService {
 public:
  // A prefill worker: `instance` has role kPrefill and `handoff` as its handoff.
  static std::unique_ptr<WorkerService> ForPrefill(scheduler::EngineInstance& instance,
                                                   scheduler::RemoteHandoff& handoff,
                                                   std::string secret);
  // A decode worker: `instance` has role kDecode and `arrivals` over it.
  static std::unique_ptr<WorkerService> ForDecode(scheduler::EngineInstance& instance,
                                                  scheduler::KvArrivals& arrivals,
                                                  std::string secret);

  grpc::ServerWriteReactor<tandem::v1::PhaseEvent>* Prefill(
      grpc::CallbackServerContext* ctx, const tandem::v1::PhaseRequest* request) override;
  grpc::ServerWriteReactor<tandem::v1::PhaseEvent>* Decode(
      grpc::CallbackServerContext* ctx, const tandem::v1::PhaseRequest* request) override;

  // Streams open now.
  int open_streams() const { return open_->load(); }
  // Refuse new phases with UNAVAILABLE (draining); streams in flight go on.
  void SetDraining(bool draining) { draining_.store(draining); }
  bool draining() const { return draining_.load(); }

 private:
  WorkerService(scheduler::EngineInstance& instance, scheduler::RemoteHandoff* handoff,
                scheduler::KvArrivals* arrivals, std::string secret)
      : instance_(instance), handoff_(handoff), arrivals_(arrivals), secret_(std::move(secret)) {}

  // Whether a call for `phase` ("prefill" or "decode") may start here: the peer, the role
  // (`serves_phase`), not draining. OK or the status to finish the call with.
  grpc::Status Admit(const grpc::CallbackServerContext& ctx, bool serves_phase,
                     const char* phase) const;

  scheduler::EngineInstance& instance_;
  scheduler::RemoteHandoff* const handoff_;  // prefill only
  scheduler::KvArrivals* const arrivals_;    // decode only
  const std::string secret_;
  std::shared_ptr<std::atomic<int>> open_ = std::make_shared<std::atomic<int>>(0);
  std::atomic<bool> draining_{false};
};

}  // namespace tandem::server::cluster

#endif  // TANDEM_SERVER_CLUSTER_WORKER_SERVICE_H_
