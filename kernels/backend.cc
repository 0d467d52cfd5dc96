#include "kernels/backend.h"

#include "common/check.h"

namespace tandem::kernels {

size_t KvElemBytes(KvDType dtype) {
  switch (dtype) {
    case KvDType::kF32:
      return 4;
    case KvDType::kF16:
      return 2;
    case KvDType::kInt8:
      return 1;
  }
  TANDEM_CHECK(false && "unknown KvDType");
}

}  // namespace tandem::kernels
