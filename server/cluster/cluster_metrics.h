// Prometheus text for a cluster role's own metrics, appended to ServingMetrics' (which covers
// what every role shares: requests, latencies, SLO attainment, the instance's load).
//   router:  the worker registry (tandem:cluster_worker_info and each worker's reported load),
//            workers per role, workers dropped, requests retried on other workers, requests
//            relayed now.
//   prefill: KV pushes by outcome, bytes sent, reserve retries (the decode side had no room),
//            the time from a push's start to its commit.
//   decode:  KV transfers by outcome, bytes received, connections refused (unauthenticated),
//            transfers open, sequences waiting for their KV, time arrivals waited to decode.
//
// Thread safety: pure functions of their arguments, which must be safe to read from any thread.
#ifndef TANDEM_SERVER_CLUSTER_CLUSTER_METRICS_H_
#define TANDEM_SERVER_CLUSTER_CLUSTER_METRICS_H_

#include <string>

#include "kvcache/transfer/kv_pusher.h"
#include "kvcache/transfer/kv_receiver.h"
#include "scheduler/engine_instance.h"
#include "scheduler/kv_arrivals.h"
#include "server/cluster/router_engine.h"

namespace tandem::server::cluster {

std::string RenderRouterMetrics(const RouterEngine& router);
std::string RenderPrefillMetrics(const kvcache::KvPusherStats& pushes);
std::string RenderDecodeMetrics(const kvcache::KvReceiverStats& transfers, int open_transfers,
                                const scheduler::KvArrivals& arrivals);

}  // namespace tandem::server::cluster

#endif  // TANDEM_SERVER_CLUSTER_CLUSTER_METRICS_H_
