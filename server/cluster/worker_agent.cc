#include "server/cluster/worker_agent.h"

#include <grpcpp/grpcpp.h>

#include <utility>

#include "server/cluster/cluster_convert.h"
#include "spdlog/spdlog.h"

namespace tandem::server::cluster {

namespace v1 = tandem::v1;

WorkerAgent::WorkerAgent(WorkerAgentConfig config) : config_(std::move(config)) {
  stub_ = v1::Router::NewStub(
      grpc::CreateChannel(config_.router_address, grpc::InsecureChannelCredentials()));
  thread_ = std::thread([this] { Loop(); });
}

WorkerAgent::~WorkerAgent() { Stop(); }

void WorkerAgent::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool WorkerAgent::Sleep(absl::Duration d) {
  std::unique_lock<std::mutex> lock(mu_);
  return !cv_.wait_for(lock, absl::ToChronoNanoseconds(d), [this] { return stopping_; });
}

void WorkerAgent::Loop() {
  uint64_t id = 0;
  absl::Duration interval = absl::Seconds(1);
  bool warned = false;
  while (true) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    if (!config_.secret.empty()) ctx.AddMetadata(kSecretKey, config_.secret);
    if (id == 0) {
      v1::RegisterRequest req = config_.registration;
      *req.mutable_load() = config_.load();
      v1::RegisterResponse resp;
      const grpc::Status s = stub_->Register(&ctx, req, &resp);
      if (s.ok()) {
        id = resp.worker_id();
        interval = absl::Milliseconds(std::max<int64_t>(50, resp.heartbeat_interval_ms()));
        registered_.store(true);
        registrations_.fetch_add(1);
        warned = false;
        spdlog::info("registered with the router at {} as worker {}", config_.router_address, id);
      } else {
        if (!warned || s.error_code() != grpc::StatusCode::UNAVAILABLE) {
          spdlog::warn("cannot register with the router at {}: {} (retrying)",
                       config_.router_address, s.error_message());
          warned = true;
        }
        if (!Sleep(config_.retry_interval)) return;
        continue;
      }
    } else {
      v1::HeartbeatRequest req;
      req.set_worker_id(id);
      *req.mutable_load() = config_.load();
      v1::HeartbeatResponse resp;
      const grpc::Status s = stub_->Heartbeat(&ctx, req, &resp);
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        spdlog::warn("the router dropped this worker; registering again");
        registered_.store(false);
        id = 0;
        continue;
      }
      if (!s.ok() && !warned) {
        spdlog::warn("heartbeat to the router at {} failed: {}", config_.router_address,
                     s.error_message());
        warned = true;
      } else if (s.ok()) {
        warned = false;
      }
    }
    if (!Sleep(interval)) return;
  }
}

}  // namespace tandem::server::cluster
