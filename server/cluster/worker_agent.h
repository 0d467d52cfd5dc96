// WorkerAgent: a worker's membership in a router's cluster. It registers the worker with the
// router (retrying until the router answers, so workers may start first), then sends a
// heartbeat with the worker's load every interval the router asked for. When the router has
// dropped the worker (a heartbeat answered NOT_FOUND: it missed its heartbeats, say while
// SIGSTOPped, or the router restarted) it registers again; after three heartbeats in a row
// that reach no router (it is gone, or moved to another address behind its name) it stops
// counting as registered and registers again on a fresh channel.
//
// Thread safety: registered() and Stop from any thread; one thread of its own.
#ifndef TANDEM_SERVER_CLUSTER_WORKER_AGENT_H_
#define TANDEM_SERVER_CLUSTER_WORKER_AGENT_H_

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/time/time.h"
#include "tandem/v1/cluster.grpc.pb.h"

namespace tandem::server::cluster {

struct WorkerAgentConfig {
  std::string router_address;  // host:port of the router's cluster port
  std::string secret;
  tandem::v1::RegisterRequest registration;  // load is refreshed from `load` each time
  std::function<tandem::v1::WorkerLoad()> load;
  absl::Duration retry_interval = absl::Milliseconds(500);
};

class WorkerAgent {
 public:
  explicit WorkerAgent(WorkerAgentConfig config);
  ~WorkerAgent();  // Stop()
  // Whether the router knows this worker now.
  bool registered() const { return registered_.load(); }
  uint64_t registrations() const { return registrations_.load(); }
  // Stops heartbeating (the router drops the worker after its timeout). Idempotent.
  void Stop();

 private:
  void Loop();
  bool Sleep(absl::Duration d);  // false: stopping

  const WorkerAgentConfig config_;
  std::unique_ptr<tandem::v1::Router::Stub> stub_;
  std::atomic<bool> registered_{false};
  std::atomic<uint64_t> registrations_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace tandem::server::cluster

#endif  // TANDEM_SERVER_CLUSTER_WORKER_AGENT_H_
