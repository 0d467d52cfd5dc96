#include "server/cluster/worker_agent.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/time/time.h"
#include "server/cluster/cluster_convert.h"
#include "spdlog/spdlog.h"

namespace tandem::server::cluster {

namespace v1 = tandem::v1;

namespace {

// A channel that finds a router that came back quickly, on a new address too (a new pod
// behind the same Service name): short reconnect backoff, DNS re-resolved at most every
// second. (gRPC's defaults back off to 2 minutes and re-resolve every 30 s.)
std::unique_ptr<v1::Router::Stub> RouterStub(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, 1000);
  return v1::Router::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

constexpr absl::Duration kMinHeartbeatDeadline = absl::Milliseconds(250);

}  // namespace

WorkerAgent::WorkerAgent(WorkerAgentConfig config) : config_(std::move(config)) {
  stub_ = RouterStub(config_.router_address);
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
  int failures = 0;  // heartbeats in a row that did not reach the router
  while (true) {
    grpc::ClientContext ctx;
    // A heartbeat gets one interval: one still on its way after that says nothing the next one
    // does not, and waiting longer (the router drops a worker after a few intervals) would let
    // one stalled call outlast the router's patience. Registration gets 5 s.
    ctx.set_deadline(std::chrono::system_clock::now() +
                     (id == 0
                          ? std::chrono::milliseconds(5000)
                          : absl::ToChronoMilliseconds(std::max(interval, kMinHeartbeatDeadline))));
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
      req.set_control_address(config_.registration.control_address());
      *req.mutable_load() = config_.load();
      v1::HeartbeatResponse resp;
      const grpc::Status s = stub_->Heartbeat(&ctx, req, &resp);
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        spdlog::warn("the router dropped this worker; registering again");
        registered_.store(false);
        id = 0;
        continue;
      }
      if (s.ok()) {
        warned = false;
        failures = 0;
      } else {
        if (!warned) {
          spdlog::warn("heartbeat to the router at {} failed: {}", config_.router_address,
                       s.error_message());
          warned = true;
        }
        // The router cannot have heard from us for a while: it has dropped us, or is gone.
        // Stop saying we are registered, start over on a new channel (fresh name
        // resolution), and register again once a router answers.
        if (++failures >= 3) {
          spdlog::warn(
              "no heartbeat reached the router at {} {} times in a row; registering "
              "again",
              config_.router_address, failures);
          registered_.store(false);
          stub_ = RouterStub(config_.router_address);
          id = 0;
          failures = 0;
        }
      }
    }
    if (!Sleep(interval)) return;
  }
}

}  // namespace tandem::server::cluster
