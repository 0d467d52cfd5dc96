#include "kernels/cuda/cublas_gemm.h"

#include <cublas_api.h>
#include <dlfcn.h>

#include <string>
#include <utility>

#include "common/check.h"
#include "common/str_cat.h"

namespace tandem::kernels::cuda {
inline namespace TANDEM_CUDA_BUILD {

// The entry points this file uses, by their unversioned ABI names (cublas_v2.h maps
// cublasCreate and friends to the _v2 symbols; cublasGemmEx is overloaded in C++, so its type
// is spelled out).
struct CublasGemm::Api {
  void* lib = nullptr;
  cublasStatus_t (*create)(cublasHandle_t*) = nullptr;
  cublasStatus_t (*destroy)(cublasHandle_t) = nullptr;
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t) = nullptr;
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                            int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                            cublasGemmAlgo_t) = nullptr;
  ~Api() {
    if (lib != nullptr) dlclose(lib);
  }
};

namespace {

template <typename Fn>
absl::Status Bind(void* lib, const char* name, Fn* out) {
  void* sym = dlsym(lib, name);
  if (sym == nullptr) {
    return absl::FailedPreconditionError(StrCat("cuBLAS has no symbol ", name));
  }
  *out = reinterpret_cast<Fn>(sym);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CublasGemm>> CublasGemm::Create() {
  auto api = std::make_unique<Api>();
  std::string errors;
  for (const char* name : {"libcublas.so.13", "libcublas.so"}) {
    api->lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (api->lib != nullptr) break;
    const char* e = dlerror();
    errors += StrCat(errors.empty() ? "" : "; ", e != nullptr ? e : name);
  }
  if (api->lib == nullptr) {
    return absl::FailedPreconditionError(
        StrCat("cannot load cuBLAS for the dense (F32/F16/BF16) matrices: ", errors,
               " (install the CUDA toolkit's libcublas, or use a quantized GGUF)"));
  }
  TANDEM_RETURN_IF_ERROR(Bind(api->lib, "cublasCreate_v2", &api->create));
  TANDEM_RETURN_IF_ERROR(Bind(api->lib, "cublasDestroy_v2", &api->destroy));
  TANDEM_RETURN_IF_ERROR(Bind(api->lib, "cublasSetStream_v2", &api->set_stream));
  TANDEM_RETURN_IF_ERROR(Bind(api->lib, "cublasGemmEx", &api->gemm_ex));
  cublasHandle_t handle = nullptr;
  if (const cublasStatus_t s = api->create(&handle); s != CUBLAS_STATUS_SUCCESS) {
    return absl::FailedPreconditionError(StrCat("cublasCreate failed with status ", s));
  }
  return std::unique_ptr<CublasGemm>(new CublasGemm(std::move(api), handle));
}

CublasGemm::CublasGemm(std::unique_ptr<Api> api, void* handle)
    : api_(std::move(api)), handle_(handle) {}

CublasGemm::~CublasGemm() { api_->destroy(static_cast<cublasHandle_t>(handle_)); }

void CublasGemm::Run(const DenseMatmulParams& p, Stream stream) {
  TANDEM_CHECK(p.m >= 0 && p.n > 0 && p.k > 0);
  if (p.m == 0) return;
  TANDEM_CHECK(p.x != nullptr && p.w != nullptr && p.y != nullptr);
  TANDEM_CHECK(p.dtype == ActivationDType::kF16 || p.dtype == ActivationDType::kBF16);
  const cudaDataType t = p.dtype == ActivationDType::kF16 ? CUDA_R_16F : CUDA_R_16BF;
  const auto h = static_cast<cublasHandle_t>(handle_);
  TANDEM_CHECK_EQ(api_->set_stream(h, static_cast<cudaStream_t>(stream.handle)),
                  CUBLAS_STATUS_SUCCESS);
  const float alpha = 1.f, beta = 0.f;
  const cublasStatus_t s =
      api_->gemm_ex(h, CUBLAS_OP_T, CUBLAS_OP_N, p.n, p.m, p.k, &alpha, p.w, t, p.k, p.x, t, p.k,
                    &beta, p.y, t, p.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  TANDEM_CHECK_EQ(s, CUBLAS_STATUS_SUCCESS);
}

}  // namespace TANDEM_CUDA_BUILD
}  // namespace tandem::kernels::cuda
