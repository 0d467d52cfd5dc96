// RouterEngine: the Engine of tandemd --role=router. It holds no weights: server/ tokenizes and
// detokenizes as always, and each sequence it submits here is dispatched to one registered
// prefill worker and one registered decode worker (the Worker service, worker_service.h). The
// decode worker is asked first, so that it expects the KV; then the prefill worker runs the
// prompt, streams the first token and pushes the KV straight to the decode worker, which
// streams the rest. The router relays both streams to the sequence's sink in order.
//
// Workers join through the Router service (Register, Heartbeat) on the cluster port. A worker
// that misses its heartbeats for `worker_timeout` is dropped: new requests avoid it until it
// registers again, and a request whose stream from it has been silent for `worker_timeout`
// as well fails with UNAVAILABLE (its other worker is told to drop it); a stream that still
// flows goes on (a heartbeat can stall where the stream does not; a dead connection ends the
// stream by itself). Placement: server/cluster/placement.h; a prompt's prefix that a prefill
// worker's cache is predicted to hold (server/cluster/prefix_index.h) counts in its predicted
// TTFT, so prompts that share a prefix go where it is cached unless that worker's queue costs
// more than the prefix saves.
//
// No silent fallback: with no prefill or no decode worker, Submit answers UNAVAILABLE with a
// clear message.
//
// Thread safety: every Engine method from any thread; gRPC's threads run the service and the
// streams; one sweeper thread drops silent workers and polls sinks for cancellation.
#ifndef TANDEM_SERVER_CLUSTER_ROUTER_ENGINE_H_
#define TANDEM_SERVER_CLUSTER_ROUTER_ENGINE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "model/model_config.h"
#include "scheduler/engine.h"
#include "server/cluster/placement.h"
#include "server/cluster/prefix_index.h"
#include "tandem/v1/cluster.grpc.pb.h"

namespace tandem::server::cluster {

struct RouterConfig {
  model::ModelConfig model;
  std::string model_fingerprint;  // workers must report the same
  std::string secret;             // empty: loopback peers only
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // A worker silent for this long is dropped.
  absl::Duration worker_timeout = absl::Seconds(3);
  // Place prompts by the prefixes the prefill workers' caches are predicted to hold
  // (--prefix-aware-routing); off: as if every cache were empty.
  bool prefix_aware = true;
};

class RoutedRequest;

class RouterEngine : public scheduler::Engine, public tandem::v1::Router::CallbackService {
 public:
  explicit RouterEngine(RouterConfig config);
  ~RouterEngine() override;  // Stop()

  // scheduler::Engine.
  absl::StatusOr<scheduler::Admission> Submit(
      std::vector<scheduler::SequenceRequest> requests) override;
  void Stop() override;
  scheduler::InstanceStats stats() const override;
  const model::ModelConfig& model_config() const override { return config_.model; }
  int kv_capacity_tokens() const override;

  // tandem.v1.Router.
  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* ctx,
                                     const tandem::v1::RegisterRequest* request,
                                     tandem::v1::RegisterResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const tandem::v1::HeartbeatRequest* request,
                                      tandem::v1::HeartbeatResponse* response) override;

  // Ready to serve: at least one prefill and one decode worker.
  bool ready() const;
  std::vector<WorkerInfo> workers() const;
  // Requests relayed now.
  int in_flight() const;
  uint64_t workers_dropped() const { return dropped_.load(); }
  // Sequences tried again on other workers.
  uint64_t retries() const { return retries_.load(); }
  // SLO attainment per role, over every request that ended (stop or length) with an SLO for
  // that role's phase: TTFT (from arrival to the first token) is the prefill role's, TPOT (the
  // mean gap between later tokens) the decode role's. Workers since dropped included.
  struct Attainment {
    uint64_t judged = 0;
    uint64_t met = 0;
  };
  Attainment attainment(tandem::v1::WorkerRole role) const;
  // Prompt tokens of the sequences placed on prefill workers; of those, the ones the chosen
  // worker's cache was predicted to hold; and the ones the workers said their caches gave
  // (PhaseEvent.cached_tokens).
  struct PrefixCounts {
    uint64_t queried = 0;
    uint64_t predicted = 0;
    uint64_t reported = 0;
  };
  PrefixCounts prefix_counts() const;

 private:
  friend class RoutedRequest;
  struct Worker {
    WorkerInfo info;
    std::shared_ptr<tandem::v1::Worker::Stub> stub;
  };
  struct Started {
    std::shared_ptr<RoutedRequest> req;
    std::shared_ptr<tandem::v1::Worker::Stub> prefill, decode;
    std::string kv_address;
  };
  void SweepLoop();
  // A request ended: forget it and its load on its workers.
  void Retire(uint64_t id, uint64_t prefill_worker, uint64_t decode_worker);
  // Whether a sequence of `need` tokens has a worker of each role (UNAVAILABLE naming the
  // missing role otherwise).
  absl::Status CanPlaceLocked(int need) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The worker of `role` for a sequence of `prompt` tokens and `need` in all: the prefill
  // worker with the least predicted TTFT, the decode worker with room for `need` tokens and
  // the least predicted TPOT (workers' latency models, from their heartbeats); the least
  // loaded when a worker has no model. nullptr: none.
  // `cached`, for prefill: each candidate's predicted cached prefix, by worker id.
  Worker* PickLocked(tandem::v1::WorkerRole role, int prompt, int need,
                     const std::map<uint64_t, int>& cached = {}) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A prefill call ended: its prompt tokens (those placement charged it, the prompt less its
  // predicted cached prefix) no longer wait on that worker.
  void PrefillEnded(uint64_t worker, int charged_tokens);
  // A prefill worker said its cache gave a sequence `tokens` of its prompt.
  void PrefixReported(int tokens);
  // Picks its workers (CanPlaceLocked must have said yes) and registers the request.
  Started PlaceLocked(tandem::v1::PhaseRequest phase, std::shared_ptr<scheduler::SequenceSink> sink,
                      bool retry, bool scheduled_sent) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartPlaced(Started& s);
  // Places and starts one sequence (a retry's second try).
  absl::Status Dispatch(tandem::v1::PhaseRequest phase,
                        std::shared_ptr<scheduler::SequenceSink> sink, bool retry,
                        bool scheduled_sent);
  // A call to `worker` could not connect or lost its connection.
  void Suspect(uint64_t worker);
  // A request ended with an SLO for `worker`'s phase: counts whether it was `met`.
  void Judge(uint64_t worker, tandem::v1::WorkerRole role, bool met);

  const RouterConfig config_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Worker> workers_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::shared_ptr<RoutedRequest>> active_ ABSL_GUARDED_BY(mu_);
  // Ids the sweep dropped for missed heartbeats that requests in active_ still name (a worker
  // that registers again only replaces its entry: its requests go on under the old id).
  std::set<uint64_t> dropped_ids_ ABSL_GUARDED_BY(mu_);
  uint64_t next_worker_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_transfer_id_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> retries_{0};
  Attainment prefill_attainment_ ABSL_GUARDED_BY(mu_);
  Attainment decode_attainment_ ABSL_GUARDED_BY(mu_);
  PrefixIndex prefix_index_ ABSL_GUARDED_BY(mu_);
  PrefixCounts prefix_counts_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> live_calls_{0};  // worker calls not yet done
  std::thread sweeper_;
};

}  // namespace tandem::server::cluster

#endif  // TANDEM_SERVER_CLUSTER_ROUTER_ENGINE_H_
