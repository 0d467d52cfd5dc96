// The tensor-core and async-copy wrappers of kernels/emu/cuda_compat.h (MmaM16N8K16, LdMatrix*,
// CpAsync*) against the PTX ISA's documented fragment layouts: in the harness these check the
// software instructions, on a GPU (cuda_gpu_test) the same tests check the hardware agrees with
// the layouts the kernels assume. Every value is a small integer or a raw bit pattern, so the
// expected results are exact.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "kernels/emu/cuda_compat.h"
#include "kernels/quant.h"
#include "tests/cuda/cuda_test_util.h"

namespace tandem::kernels::cuda {
namespace {

using namespace testing;  // NOLINT(build/namespaces): the test helpers

// One warp: lane (g, t) = (lane / 4, lane % 4) builds its A, B and C registers from row-major
// A [16, 16], B [16, 8] (b[k * 8 + n]) and C [16, 8] by the documented layout, runs `reps` mmas
// (D = reps * A B + C) and scatters D back by the C layout.
template <typename T>
__global__ void MmaKernel(const float* a, const float* b, const float* c, float* d, int reps) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  uint32_t ra[4], rb[2];
  ra[0] = PackPair<T>(a[g * 16 + 2 * t], a[g * 16 + 2 * t + 1]);
  ra[1] = PackPair<T>(a[(g + 8) * 16 + 2 * t], a[(g + 8) * 16 + 2 * t + 1]);
  ra[2] = PackPair<T>(a[g * 16 + 2 * t + 8], a[g * 16 + 2 * t + 9]);
  ra[3] = PackPair<T>(a[(g + 8) * 16 + 2 * t + 8], a[(g + 8) * 16 + 2 * t + 9]);
  rb[0] = PackPair<T>(b[(2 * t) * 8 + g], b[(2 * t + 1) * 8 + g]);
  rb[1] = PackPair<T>(b[(2 * t + 8) * 8 + g], b[(2 * t + 9) * 8 + g]);
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t],
                  c[(g + 8) * 8 + 2 * t + 1]};
  for (int r = 0; r < reps; ++r) MmaM16N8K16<T>(acc, ra, rb);
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

template <typename T>
class MmaTest : public ::testing::Test {};
using MmaTypes = ::testing::Types<Half, Bf16>;
TYPED_TEST_SUITE(MmaTest, MmaTypes);

TYPED_TEST(MmaTest, M16N8K16MatchesTheDocumentedLayout) {
  using T = TypeParam;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> small(-8, 8), wide(-1000, 1000);
  for (int reps : {1, 3}) {
    std::vector<float> a(16 * 16), b(16 * 8), c(16 * 8), d(16 * 8, -1.f);
    for (float& v : a) v = static_cast<float>(small(rng));  // exact in f16 and bf16
    for (float& v : b) v = static_cast<float>(small(rng));
    for (float& v : c) v = static_cast<float>(wide(rng));
    DeviceCopy<float> da(a), db(b), dc(c), dd(d);
    Launch(MmaKernel<T>, dim3(1), dim3(32), 0, nullptr, da.get(), db.get(), dc.get(), dd.get(),
           reps);
    dd.ToHost(d);
    for (int i = 0; i < 16; ++i) {
      for (int n = 0; n < 8; ++n) {
        float want = 0;
        for (int k = 0; k < 16; ++k) want += a[i * 16 + k] * b[k * 8 + n];
        want = reps * want + c[i * 8 + n];  // integers far below 2^24: exact
        EXPECT_EQ(d[i * 8 + n], want) << "row " << i << " col " << n << " reps " << reps;
      }
    }
  }
}

// A [16, 16] tile of raw 16-bit patterns in shared memory (row stride 24 elements, 48 bytes:
// rows 16-byte aligned, as ldmatrix needs); lane l gives the address of row l % 16, column
// 8 (l / 16), so matrix i is rows 8 (i % 2).., columns 8 (i / 2)... Each lane stores its
// registers for the host to check.
constexpr int kTileStride = 24;

__global__ void LdMatrixKernel(const uint16_t* tile, uint32_t* x4, uint32_t* x2, uint32_t* x4t,
                               uint32_t* x2t) {
  TANDEM_SHARED(uint16_t, smem, 16 * kTileStride);
  const int lane = threadIdx.x;
  for (int i = lane; i < 16 * kTileStride; i += 32) smem[i] = tile[i];
  __syncthreads();
  const uint16_t* row = smem + (lane % 16) * kTileStride + (lane / 16) * 8;
  uint32_t r4[4], r2[2], r4t[4], r2t[2];
  LdMatrixX4(r4, row);
  LdMatrixX2(r2, row);
  LdMatrixX4Trans(r4t, row);
  LdMatrixX2Trans(r2t, row);
  for (int i = 0; i < 4; ++i) {
    x4[lane * 4 + i] = r4[i];
    x4t[lane * 4 + i] = r4t[i];
  }
  for (int i = 0; i < 2; ++i) {
    x2[lane * 2 + i] = r2[i];
    x2t[lane * 2 + i] = r2t[i];
  }
}

TEST(LdMatrixTest, MatchesTheDocumentedLayout) {
  std::vector<uint16_t> tile(16 * kTileStride);
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < kTileStride; ++c) tile[r * kTileStride + c] = (r << 8 | c) ^ 0xa5a5;
  }
  std::vector<uint32_t> x4(128, 0), x2(64, 0), x4t(128, 0), x2t(64, 0);
  DeviceCopy<uint16_t> dtile(tile);
  DeviceCopy<uint32_t> d4(x4), d2(x2), d4t(x4t), d2t(x2t);
  Launch(LdMatrixKernel, dim3(1), dim3(32), 0, nullptr, dtile.get(), d4.get(), d2.get(), d4t.get(),
         d2t.get());
  d4.ToHost(x4);
  d2.ToHost(x2);
  d4t.ToHost(x4t);
  d2t.ToHost(x2t);
  auto at = [&](int matrix, int r, int c) -> uint32_t {
    return tile[(8 * (matrix % 2) + r) * kTileStride + 8 * (matrix / 2) + c];
  };
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      // Row lane / 4, columns 2 (lane % 4) and + 1; .trans: rows 2 (lane % 4) and + 1 of
      // column lane / 4.
      const uint32_t plain = at(i, lane / 4, 2 * (lane % 4)) | at(i, lane / 4, 2 * (lane % 4) + 1)
                                                                   << 16;
      const uint32_t trans = at(i, 2 * (lane % 4), lane / 4) | at(i, 2 * (lane % 4) + 1, lane / 4)
                                                                   << 16;
      EXPECT_EQ(x4[lane * 4 + i], plain) << "lane " << lane << " matrix " << i;
      EXPECT_EQ(x4t[lane * 4 + i], trans) << "lane " << lane << " matrix " << i;
      if (i < 2) {
        EXPECT_EQ(x2[lane * 2 + i], plain) << "lane " << lane << " matrix " << i;
        EXPECT_EQ(x2t[lane * 2 + i], trans) << "lane " << lane << " matrix " << i;
      }
    }
  }
}

// Two groups of cp.async per thread: after wait_group 1 the first group has landed (read back
// through another thread's slots after __syncthreads), after wait_group 0 the second, including
// .ca copies of 4 and 8 bytes and 16-byte copies zero-filled past src_bytes.
constexpr int kCopyThreads = 64;

__global__ void CpAsyncKernel(const int32_t* src, int32_t* out) {
  TANDEM_SHARED(int32_t, first, kCopyThreads * 4);
  TANDEM_SHARED(int32_t, ca4, kCopyThreads);
  TANDEM_SHARED(int32_t, ca8, kCopyThreads * 2);
  TANDEM_SHARED(int32_t, partial, kCopyThreads * 4);
  const int t = threadIdx.x;
  CpAsyncCg16(first + 4 * t, src + 4 * t);
  CpAsyncCommit();
  CpAsyncCa<4>(ca4 + t, src + t);
  CpAsyncCa<8>(ca8 + 2 * t, src + 2 * t);
  CpAsyncCg16(partial + 4 * t, src + 4 * t, 4 * (t % 5 == 4 ? 4 : t % 4));  // 0..16 bytes
  CpAsyncCommit();
  CpAsyncWait<1>();
  __syncthreads();
  const int other = (t + 7) % kCopyThreads;
  for (int i = 0; i < 4; ++i) out[4 * other + i] = first[4 * other + i];
  CpAsyncWait<0>();
  __syncthreads();
  int32_t* rest = out + 4 * kCopyThreads;
  rest[other] = ca4[other];
  for (int i = 0; i < 2; ++i) rest[kCopyThreads + 2 * other + i] = ca8[2 * other + i];
  for (int i = 0; i < 4; ++i) rest[3 * kCopyThreads + 4 * other + i] = partial[4 * other + i];
}

TEST(CpAsyncTest, GroupsLandInOrderWithZeroFill) {
  std::vector<int32_t> src(kCopyThreads * 4);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<int32_t>(i * 2654435761u >> 7) | 1;
  std::vector<int32_t> out(kCopyThreads * 11, 0);
  DeviceCopy<int32_t> dsrc(src), dout(out);
  Launch(CpAsyncKernel, dim3(1), dim3(kCopyThreads), 0, nullptr, dsrc.get(), dout.get());
  dout.ToHost(out);
  for (int t = 0; t < kCopyThreads; ++t) {
    const int words = t % 5 == 4 ? 4 : t % 4;
    for (int i = 0; i < 4; ++i) EXPECT_EQ(out[4 * t + i], src[4 * t + i]) << t;
    const int32_t* rest = out.data() + 4 * kCopyThreads;
    EXPECT_EQ(rest[t], src[t]) << t;
    for (int i = 0; i < 2; ++i) EXPECT_EQ(rest[kCopyThreads + 2 * t + i], src[2 * t + i]) << t;
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(rest[3 * kCopyThreads + 4 * t + i], i < words ? src[4 * t + i] : 0) << t;
    }
  }
}

#if defined(TANDEM_CUDA_EMU)
// The harness only (a GPU gives no such guarantees to test): a cp.async copy is not visible
// before the wait that retires its group, so a kernel that forgets the wait reads the old
// contents (poison) here rather than passing by luck; an mma that not every lane of the warp
// executes is refused.
__global__ void ReadBeforeWait(const int32_t* src, int32_t* before, int32_t* after) {
  TANDEM_SHARED(int32_t, buf, 4);
  CpAsyncCg16(buf, src);
  CpAsyncCommit();
  *before = buf[0];
  CpAsyncWait<0>();
  *after = buf[0];
}

TEST(CpAsyncHarnessTest, CopiesLandAtTheirWait) {
  const std::vector<int32_t> src = {5, 6, 7, 8};
  int32_t before = 0, after = 0;
  Launch(ReadBeforeWait, dim3(1), dim3(1), 0, nullptr, src.data(), &before, &after);
  EXPECT_EQ(before, -1);  // 0xffffffff poison
  EXPECT_EQ(after, 5);
}

__global__ void HalfWarpMma(float* out) {
  if (threadIdx.x >= 16) return;
  float acc[4] = {};
  const uint32_t a[4] = {}, b[2] = {};
  MmaM16N8K16<Half>(acc, a, b);
  out[threadIdx.x] = acc[0];
}

TEST(MmaHarnessDeathTest, RefusesAPartialWarp) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<float> out(32);
  EXPECT_DEATH(Launch(HalfWarpMma, dim3(1), dim3(32), 0, nullptr, out.data()), "CHECK failed");
}
#endif  // TANDEM_CUDA_EMU

}  // namespace
}  // namespace tandem::kernels::cuda
