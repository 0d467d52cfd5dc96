// Conversions between the cluster protocol's messages (proto/tandem/v1/cluster.proto) and the
// scheduler's values, and between grpc::Status and absl::Status. Both status types use the
// canonical codes, so codes cross unchanged both ways: a worker's 429 is the router's 429.
//
// Thread safety: pure functions.
#ifndef TANDEM_SERVER_CLUSTER_CLUSTER_CONVERT_H_
#define TANDEM_SERVER_CLUSTER_CLUSTER_CONVERT_H_

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include <memory>

#include "absl/status/status.h"
#include "model/sampler.h"
#include "scheduler/sequence.h"
#include "tandem/v1/cluster.pb.h"

namespace tandem::server::cluster {

// The metadata key of the cluster secret on every control-plane call.
inline constexpr char kSecretKey[] = "x-tandem-cluster-secret";

grpc::Status ToGrpc(const absl::Status& s);
absl::Status FromGrpc(const grpc::Status& s);

// A status's payloads (retry-after, reject reason: printable ASCII) travel as trailing
// metadata `kPayloadKey: <url>=<value>`, so that a worker's 429 reaches the router's client
// with its Retry-After. Call before the call's Finish.
inline constexpr char kPayloadKey[] = "x-tandem-status-payload";
void AddPayloadTrailers(const absl::Status& s, grpc::ServerContextBase& ctx);
// FromGrpc, with the payloads the call's trailers carry.
absl::Status FromGrpc(const grpc::Status& s, const grpc::ClientContext& ctx);

// A worker ends every phase stream it took with this trailer, so that the router can tell a
// failure the worker reported (a KV transfer that broke, say) from a worker it could not reach
// or lost, or that refused the phase (draining): no such trailer then.
inline constexpr char kWorkerEndKey[] = "x-tandem-worker-end";
bool EndedByWorker(const grpc::ClientContext& ctx);

// The request's prompt, sampling, max_tokens, SLOs and arrival; the sink is the caller's.
void ToPhaseRequest(const scheduler::SequenceRequest& r, uint64_t transfer_id,
                    tandem::v1::PhaseRequest* out);
// The inverse, with `sink`; id = transfer_id.
scheduler::SequenceRequest FromPhaseRequest(const tandem::v1::PhaseRequest& r,
                                            std::shared_ptr<scheduler::SequenceSink> sink);

void ToPhaseToken(const model::SampleResult& r, tandem::v1::PhaseToken* out);
model::SampleResult FromPhaseToken(const tandem::v1::PhaseToken& t);

tandem::v1::PhaseEvent::End ToPhaseEnd(scheduler::SequenceEnd end);
// END_HANDED_OFF and END_UNSPECIFIED have no SequenceEnd: kFailed.
scheduler::SequenceEnd FromPhaseEnd(tandem::v1::PhaseEvent::End end);

}  // namespace tandem::server::cluster

#endif  // TANDEM_SERVER_CLUSTER_CLUSTER_CONVERT_H_
