// FinishReasonName, declared in server/generation_request.h; it lives here because the OpenAI
// layer is the first user of the names, and gRPC links this library for validation anyway.
#include "server/generation_request.h"

namespace tandem::server {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
  }
  return "stop";
}

}  // namespace tandem::server
