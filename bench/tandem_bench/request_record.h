// RequestRecord: everything measured about one request on the client side, and the derived
// per-request metrics, defined exactly as docs/benchmarks.md (and REFERENCE.md) say:
//   TTFT  = client send -> first non-empty token chunk (includes connect, queueing, network);
//   TPOT  = (E2E - TTFT) / (output_tokens - 1), 0 when output_tokens <= 1;
//   ITL   = each gap between consecutive non-empty token chunks;
//   E2E   = client send -> last byte of the response.
// A failed request keeps its record (status and error say why): failures are counted, never
// dropped, and count as SLO misses.
// Thread safety: plain value.
#ifndef TANDEM_BENCH_TANDEM_BENCH_REQUEST_RECORD_H_
#define TANDEM_BENCH_TANDEM_BENCH_REQUEST_RECORD_H_

#include <string>
#include <vector>

#include "bench/tandem_bench/slo.h"

namespace tandem::bench {

enum class RequestStatus {
  kOk,            // stream completed with data: [DONE]
  kHttpError,     // non-200 status
  kBrokenStream,  // connection closed or malformed stream before data: [DONE]
  kTimeout,       // --timeout elapsed before the response finished
  kConnectError,  // could not connect or send
  kServerError,   // the stream carried an error object
};

const char* RequestStatusName(RequestStatus s);

struct RequestRecord {
  int index = 0;              // position in the dataset
  double send_s = 0;          // client send time, seconds since the run started
  double ttft_s = -1;         // -1 when no token chunk arrived
  double e2e_s = 0;           // send -> last byte (or -> failure)
  std::vector<double> itl_s;  // gaps between consecutive token chunks
  int prompt_tokens = 0;      // usage.prompt_tokens when the server reports it, else the dataset's
  int output_tokens = 0;      // usage.completion_tokens when reported, else token chunks seen
  int token_chunks = 0;       // non-empty token chunks seen
  // usage.prompt_tokens_details.cached_tokens: prompt tokens the server's prefix cache held
  // (-1: not reported).
  int cached_tokens = -1;
  bool usage_reported = false;
  RequestStatus status = RequestStatus::kOk;
  int http_status = 0;
  std::string error;  // empty when ok
  SloSpec slo;        // the SLO this request is judged against (run or dataset)

  bool ok() const { return status == RequestStatus::kOk; }
  // (e2e - ttft) / (output_tokens - 1); 0 when output_tokens <= 1 or no token arrived.
  double TpotS() const;
  // Meets every objective set in `slo` (an unset one is met). Failed requests never do.
  bool MeetsTtft() const;
  bool MeetsTpot() const;
  bool MeetsE2e() const;
  bool MeetsSlo() const { return MeetsTtft() && MeetsTpot() && MeetsE2e(); }
};

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_TANDEM_BENCH_REQUEST_RECORD_H_
