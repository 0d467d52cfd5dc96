#include "bench/tandem_bench/request_record.h"

namespace tandem::bench {

const char* RequestStatusName(RequestStatus s) {
  switch (s) {
    case RequestStatus::kOk:
      return "ok";
    case RequestStatus::kHttpError:
      return "http_error";
    case RequestStatus::kBrokenStream:
      return "broken_stream";
    case RequestStatus::kTimeout:
      return "timeout";
    case RequestStatus::kConnectError:
      return "connect_error";
    case RequestStatus::kServerError:
      return "server_error";
  }
  return "unknown";
}

double RequestRecord::TpotS() const {
  if (output_tokens <= 1 || ttft_s < 0) return 0;
  return (e2e_s - ttft_s) / (output_tokens - 1);
}

bool RequestRecord::MeetsTtft() const {
  if (!ok()) return false;
  return !slo.ttft_ms || ttft_s * 1e3 <= *slo.ttft_ms;
}

bool RequestRecord::MeetsTpot() const {
  if (!ok()) return false;
  return !slo.tpot_ms || TpotS() * 1e3 <= *slo.tpot_ms;
}

bool RequestRecord::MeetsE2e() const {
  if (!ok()) return false;
  return !slo.e2e_ms || e2e_s * 1e3 <= *slo.e2e_ms;
}

}  // namespace tandem::bench
