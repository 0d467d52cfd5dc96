// cuda_gpu_test's global set-up: fails the whole run at once, naming the CUDA error, when the
// machine has no usable GPU (instead of every test aborting in its first cudaMalloc), and prints
// which device the kernels run on.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>

namespace {

class GpuEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    ASSERT_EQ(err, cudaSuccess) << "no usable CUDA device: " << cudaGetErrorString(err);
    ASSERT_GT(count, 0) << "no CUDA device";
    cudaDeviceProp prop;
    ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
    std::printf("cuda_gpu_test: device 0 is %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  }
};

const ::testing::Environment* const kGpuEnvironment =
    ::testing::AddGlobalTestEnvironment(new GpuEnvironment);

}  // namespace
