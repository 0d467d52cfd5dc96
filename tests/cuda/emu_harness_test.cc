// Tests of the CUDA-on-CPU harness itself (kernels/emu/): kernels written as CUDA, run through
// the same Launch helper as kernels/cuda, checking that __syncthreads really orders the block,
// that shuffles, votes and atomics have CUDA's semantics, and that shared memory (static and
// dynamic) is per block. The semantic tests run in both thread modes (fibers, OS threads);
// those of what only fibers do (a missing barrier seen the same way on every run, a deadlock
// reported at once, stacks reused) have no instances where fibers are not built (under
// ThreadSanitizer the harness runs OS threads only, executor.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/emu/cuda_compat.h"

namespace tandem::emu {
void PrintTo(ThreadMode mode, std::ostream* os) {
  *os << (mode == ThreadMode::kFibers ? "fibers" : "OS threads");
}
}  // namespace tandem::emu

namespace tandem::kernels::cuda {
namespace {

// Runs a test in one thread mode, restoring the default mode and blocks in flight after it.
class EmuHarness : public ::testing::TestWithParam<emu::ThreadMode> {
 protected:
  void SetUp() override {
    saved_ = emu::CurrentThreadMode();
    emu::SetThreadMode(GetParam());
    ASSERT_EQ(emu::CurrentThreadMode(), GetParam());  // only built modes are instantiated
  }
  void TearDown() override {
    emu::SetThreadMode(saved_);
    emu::SetBlocksInFlight(2);
  }

 private:
  emu::ThreadMode saved_ = emu::ThreadMode::kFibers;
};

std::string ModeName(const ::testing::TestParamInfo<emu::ThreadMode>& info) {
  return info.param == emu::ThreadMode::kFibers ? "Fibers" : "OsThreads";
}

// The thread modes this build has: fibers are not built under TSan (executor.h), where the
// harness runs OS threads only.
std::vector<emu::ThreadMode> BuiltModes() {
  if (!emu::FibersAvailable()) return {emu::ThreadMode::kOsThreads};
  return {emu::ThreadMode::kFibers, emu::ThreadMode::kOsThreads};
}
std::vector<emu::ThreadMode> FiberModes() {
  if (!emu::FibersAvailable()) return {};
  return {emu::ThreadMode::kFibers};
}

// Each block reverses its slice of `in` through shared memory, `rounds` times in a row, moving
// the values one more position each round: any thread that passed a __syncthreads early would
// read a slot its neighbour had not written yet (the slots start poisoned as NaN).
__global__ void ReverseRounds(const float* in, float* out, int rounds) {
  TANDEM_SHARED(float, buf, 1024);
  const int n = blockDim.x;
  const int t = threadIdx.x;
  float v = in[blockIdx.x * n + t];
  for (int r = 0; r < rounds; ++r) {
    buf[t] = v;
    __syncthreads();
    v = buf[(n - 1 - t + r) % n];
    __syncthreads();
  }
  out[blockIdx.x * n + t] = v;
}

std::vector<float> ReverseRoundsExpected(const std::vector<float>& in, int n, int rounds) {
  std::vector<float> out(in.size());
  for (size_t b = 0; b < in.size() / n; ++b) {
    std::vector<float> v(in.begin() + b * n, in.begin() + (b + 1) * n);
    for (int r = 0; r < rounds; ++r) {
      std::vector<float> next(n);
      for (int t = 0; t < n; ++t) next[t] = v[(n - 1 - t + r) % n];
      v = next;
    }
    std::copy(v.begin(), v.end(), out.begin() + b * n);
  }
  return out;
}

TEST_P(EmuHarness, SyncThreadsOrdersTheBlock) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (int blocks_in_flight : {1, 3}) {
    emu::SetBlocksInFlight(blocks_in_flight);
    for (int n : {32, 100, 256}) {
      const int blocks = 5, rounds = 7;
      std::vector<float> in(blocks * n), out(blocks * n, 0.f);
      for (float& x : in) x = dist(rng);
      Launch(ReverseRounds, dim3(blocks), dim3(n), 0, nullptr, in.data(), out.data(), rounds);
      EXPECT_EQ(out, ReverseRoundsExpected(in, n, rounds)) << "n " << n;
    }
  }
  emu::SetBlocksInFlight(2);
}

// Threads past `live` return at once; the rest still synchronize (an exited thread stops
// counting, as on a GPU).
__global__ void EarlyExit(int live, int* out) {
  TANDEM_SHARED(int, buf, 256);
  const int t = threadIdx.x;
  if (t >= live) return;
  buf[t] = t * 3;
  __syncthreads();
  out[t] = buf[live - 1 - t];
}

TEST_P(EmuHarness, ExitedThreadsLeaveTheBarrier) {
  std::vector<int> out(128, -1);
  Launch(EarlyExit, dim3(1), dim3(128), 0, nullptr, 77, out.data());
  for (int t = 0; t < 128; ++t) EXPECT_EQ(out[t], t < 77 ? (76 - t) * 3 : -1) << t;
}

// Every thread records its coordinates: each (block, thread) appears exactly once.
__global__ void Coordinates(int* out) {
  const int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  const int per_block = blockDim.x * blockDim.y * blockDim.z;
  atomicAdd(&out[block * per_block + thread], 1);
}

TEST_P(EmuHarness, GridAndBlockIndices3d) {
  const dim3 grid(3, 2, 2), block(8, 4, 2);
  std::vector<int> out(3 * 2 * 2 * 8 * 4 * 2, 0);
  Launch(Coordinates, grid, block, 0, nullptr, out.data());
  for (int v : out) EXPECT_EQ(v, 1);
}

// Warp reductions and scans through every shuffle.
__global__ void Shuffles(const float* in, float* xor_sum, float* down_sum, float* bcast,
                         float* scan, float* group_sum) {
  const int t = threadIdx.x;
  const int lane = t % 32;
  const float v = in[t];
  float s = v;
  for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
  xor_sum[t] = s;
  float d = v;
  for (int o = 16; o > 0; o /= 2) d += __shfl_down_sync(0xffffffffu, d, o);
  down_sum[t] = d;  // meaningful in lane 0
  bcast[t] = __shfl_sync(0xffffffffu, v, 5);
  float x = v;  // inclusive prefix sum (Hillis-Steele)
  for (int o = 1; o < 32; o *= 2) {
    const float y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  scan[t] = x;
  float g = v;  // sums over groups of 8 lanes
  for (int o = 4; o > 0; o /= 2) g += __shfl_xor_sync(0xffffffffu, g, o, 8);
  group_sum[t] = g;
}

TEST_P(EmuHarness, WarpShuffles) {
  const int n = 128;  // four warps
  std::vector<float> in(n);
  for (int i = 0; i < n; ++i) in[i] = static_cast<float>((i * 37) % 23 - 11);  // exact sums
  std::vector<float> xs(n), ds(n), bc(n), sc(n), gs(n);
  Launch(Shuffles, dim3(1), dim3(n), 0, nullptr, in.data(), xs.data(), ds.data(), bc.data(),
         sc.data(), gs.data());
  for (int w = 0; w < n / 32; ++w) {
    float total = 0, prefix = 0;
    for (int l = 0; l < 32; ++l) total += in[w * 32 + l];
    EXPECT_EQ(ds[w * 32], total);
    for (int l = 0; l < 32; ++l) {
      const int t = w * 32 + l;
      EXPECT_EQ(xs[t], total) << t;
      EXPECT_EQ(bc[t], in[w * 32 + 5]) << t;
      prefix += in[t];
      EXPECT_EQ(sc[t], prefix) << t;
      float group = 0;
      for (int k = 0; k < 8; ++k) group += in[w * 32 + l / 8 * 8 + k];
      EXPECT_EQ(gs[t], group) << t;
    }
  }
}

__global__ void Votes(const int* pred, unsigned* ballot, int* any, int* all) {
  const int t = threadIdx.x;
  ballot[t] = __ballot_sync(0xffffffffu, pred[t]);
  any[t] = __any_sync(0xffffffffu, pred[t]);
  all[t] = __all_sync(0xffffffffu, pred[t]);
}

TEST_P(EmuHarness, WarpVotes) {
  // Warp 0: every third lane; warp 1: none; warp 2: all; warp 3 (16 lanes, a partial warp): all.
  const int n = 112;
  std::vector<int> pred(n);
  for (int t = 0; t < n; ++t) pred[t] = t < 32 ? (t % 3 == 0) : t < 64 ? 0 : 1;
  std::vector<unsigned> ballot(n);
  std::vector<int> any(n), all(n);
  Launch(Votes, dim3(1), dim3(n), 0, nullptr, pred.data(), ballot.data(), any.data(), all.data());
  unsigned thirds = 0;
  for (int l = 0; l < 32; l += 3) thirds |= 1u << l;
  for (int t = 0; t < n; ++t) {
    const int w = t / 32;
    const unsigned expect_ballot = w == 0 ? thirds : w == 1 ? 0u : w == 2 ? 0xffffffffu : 0xffffu;
    EXPECT_EQ(ballot[t], expect_ballot) << t;
    EXPECT_EQ(any[t], w != 1) << t;
    EXPECT_EQ(all[t], w >= 2) << t;
  }
}

// Lanes 20..31 of each warp exit first; the others' votes and shuffles see only the live lanes,
// and a later __syncthreads still completes.
__global__ void VotesAfterExit(unsigned* ballot, int* bcast) {
  const int lane = threadIdx.x % 32;
  if (lane >= 20) return;
  ballot[threadIdx.x] = __ballot_sync(0x000fffffu, 1);
  const int v = __shfl_sync(0x000fffffu, static_cast<int>(threadIdx.x), 3);
  __syncthreads();
  bcast[threadIdx.x] = v;
}

TEST_P(EmuHarness, ExitedLanesLeaveTheWarp) {
  std::vector<unsigned> ballot(64, 0);
  std::vector<int> bcast(64, -1);
  Launch(VotesAfterExit, dim3(1), dim3(64), 0, nullptr, ballot.data(), bcast.data());
  for (int t = 0; t < 64; ++t) {
    const bool live = t % 32 < 20;
    EXPECT_EQ(ballot[t], live ? 0x000fffffu : 0u) << t;
    EXPECT_EQ(bcast[t], live ? t / 32 * 32 + 3 : -1) << t;
  }
}

__global__ void Atomics(int* count, float* fsum, int* imax, float* fmax, int* first,
                        const float* values) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(count, 1);
  atomicAdd(fsum, 0.5f);  // sums of halves stay exact far beyond this grid's size
  atomicMax(imax, (g * 7919) % 10007);
  AtomicMaxFloat(fmax, values[g]);
  atomicCAS(&first[g % 4], -1, g);  // exactly one thread per slot wins
}

TEST_P(EmuHarness, AtomicsFromManyBlocks) {
  for (int blocks_in_flight : {2, 4}) {
    emu::SetBlocksInFlight(blocks_in_flight);
    const int blocks = 24, threads = 64, n = blocks * threads;
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> dist(-100.f, 100.f);
    std::vector<float> values(n);
    for (float& v : values) v = dist(rng);
    int count = 0, imax = -1;
    float fsum = 0.f, fmax = -1e30f;
    std::vector<int> first(4, -1);
    Launch(Atomics, dim3(blocks), dim3(threads), 0, nullptr, &count, &fsum, &imax, &fmax,
           first.data(), values.data());
    EXPECT_EQ(count, n);
    EXPECT_EQ(fsum, 0.5f * n);
    int expect_imax = 0;
    for (int g = 0; g < n; ++g) expect_imax = std::max(expect_imax, (g * 7919) % 10007);
    EXPECT_EQ(imax, expect_imax);
    EXPECT_EQ(fmax, *std::max_element(values.begin(), values.end()));
    for (int s = 0; s < 4; ++s) EXPECT_EQ(first[s] % 4, s);
  }
  emu::SetBlocksInFlight(2);
}

// Dynamic shared memory: a block reverses `n` ints (n > blockDim, so threads stride), with a
// static array declared inside the loop that must keep one address across iterations.
__global__ void DynamicReverse(const int* in, int* out, int n, int* same_address) {
  TANDEM_DYNAMIC_SHARED(int, buf);
  const int* base = in + blockIdx.x * n;
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = base[i];
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[blockIdx.x * n + i] = buf[n - 1 - i];
  const void* first = nullptr;
  for (int k = 0; k < 3; ++k) {
    TANDEM_SHARED(int, loop_buf, 4);
    if (k == 0) first = loop_buf;
    if (first != loop_buf) atomicAdd(same_address, 1);
  }
}

TEST_P(EmuHarness, DynamicSharedMemory) {
  const int blocks = 4, n = 1000;
  std::vector<int> in(blocks * n), out(blocks * n, 0);
  std::iota(in.begin(), in.end(), 1);
  int moved = 0;
  Launch(DynamicReverse, dim3(blocks), dim3(96), n * sizeof(int), nullptr, in.data(), out.data(), n,
         &moved);
  for (int b = 0; b < blocks; ++b) {
    for (int i = 0; i < n; ++i) EXPECT_EQ(out[b * n + i], in[b * n + n - 1 - i]);
  }
  EXPECT_EQ(moved, 0);
}

// Shared memory starts poisoned in every block (0xff bytes), not zeroed.
__global__ void ReadUninitialized(unsigned* out) {
  TANDEM_SHARED(unsigned, buf, 64);
  if (threadIdx.x == 0) out[blockIdx.x] = buf[blockIdx.x % 64];
  __syncthreads();
  buf[threadIdx.x] = 0;  // the next block on this slot must not see these zeros
}

TEST_P(EmuHarness, SharedMemoryIsPoisonedPerBlock) {
  std::vector<unsigned> out(6, 0);
  Launch(ReadUninitialized, dim3(6), dim3(64), 0, nullptr, out.data());
  for (unsigned v : out) EXPECT_EQ(v, 0xffffffffu);
}

__global__ void Noop() {}

// Lanes 0..15 shuffle with a mask naming only lanes 16..31: undefined on a GPU, refused here.
__global__ void BadMask(int* out) {
  out[threadIdx.x] = __shfl_xor_sync(0xffff0000u, static_cast<int>(threadIdx.x), 1);
}

// Death tests (by gtest's convention, a suite whose name ends in DeathTest), in both modes.
class EmuHarnessDeathTest : public EmuHarness {};

TEST_P(EmuHarnessDeathTest, RefusesWhatAGpuRefuses) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(Launch(Noop, dim3(1), dim3(2048), 0, nullptr), "CHECK failed");
  EXPECT_DEATH(Launch(Noop, dim3(1, 70000), dim3(32), 0, nullptr), "CHECK failed");
  EXPECT_DEATH(Launch(Noop, dim3(1), dim3(32), emu::kMaxDynamicShared + 1, nullptr),
               "CHECK failed");
  std::vector<int> out(32);
  EXPECT_DEATH(Launch(BadMask, dim3(1), dim3(32), 0, nullptr, out.data()), "took part in a warp");
}

// Lane l of each warp takes part in l % 8 + 1 rounds, then exits: each round's vote sees exactly
// the lanes still in, and each round's __syncthreads completes without the exited threads (in
// fiber mode the last thread to exit is often the one a waiting barrier needed). Lanes past the
// end of a partial last warp are absent from every vote.
__global__ void StaggeredExit(unsigned* ballots, int* finished) {
  const int t = threadIdx.x;
  const int g = blockIdx.x * blockDim.x + t;  // each block writes its own outputs
  const int rounds = t % 32 % 8 + 1;
  for (int r = 0; r < 8; ++r) {
    if (r >= rounds) return;
    unsigned mask = 0;
    for (int l = 0; l < 32; ++l) mask |= (l % 8 + 1 > r ? 1u : 0u) << l;
    ballots[g * 8 + r] = __ballot_sync(mask, 1);
    __syncthreads();
  }
  finished[g] = 1;
}

TEST_P(EmuHarness, LanesExitAtDifferentRounds) {
  const int n = 80;  // two full warps and one of 16 lanes
  const int blocks = 3;
  std::vector<unsigned> ballots(blocks * n * 8, 0);
  std::vector<int> finished(blocks * n, 0);
  Launch(StaggeredExit, dim3(blocks), dim3(n), 0, nullptr, ballots.data(), finished.data());
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < n; ++t) {
      const int g = b * n + t;
      const int rounds = t % 32 % 8 + 1;
      const unsigned present = t / 32 == 2 ? 0xffffu : 0xffffffffu;
      for (int r = 0; r < 8; ++r) {
        unsigned mask = 0;
        for (int l = 0; l < 32; ++l) mask |= (l % 8 + 1 > r ? 1u : 0u) << l;
        EXPECT_EQ(ballots[g * 8 + r], r < rounds ? mask & present : 0u)
            << "block " << b << " thread " << t << " round " << r;
      }
      EXPECT_EQ(finished[g], rounds == 8) << "block " << b << " thread " << t;
    }
  }
}

// Thread 0 of every block arrives, then waits until `in_flight` blocks have: it finishes only if
// that many blocks really run at once, on separate host threads.
__global__ void WaitForBlocksInFlight(int* arrived, int in_flight, int* seen) {
  if (threadIdx.x == 0) {
    atomicAdd(arrived, 1);
    while (atomicAdd(arrived, 0) < in_flight) {
    }
    seen[blockIdx.x] = 1;
  }
  __syncthreads();
}

TEST_P(EmuHarness, ManyBlocksInFlight) {
  const int in_flight = 8;
  emu::SetBlocksInFlight(in_flight);
  int arrived = 0;
  std::vector<int> seen(in_flight, 0);
  Launch(WaitForBlocksInFlight, dim3(in_flight), dim3(64), 0, nullptr, &arrived, in_flight,
         seen.data());
  EXPECT_EQ(arrived, in_flight);
  for (int v : seen) EXPECT_EQ(v, 1);
  // And a grid of many more blocks than that, each still ordered by its barriers.
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  const int blocks = 40, n = 96, rounds = 5;
  std::vector<float> in(blocks * n), out(blocks * n, 0.f);
  for (float& x : in) x = dist(rng);
  Launch(ReverseRounds, dim3(blocks), dim3(n), 0, nullptr, in.data(), out.data(), rounds);
  EXPECT_EQ(out, ReverseRoundsExpected(in, n, rounds));
}

// cp.async is deferred per CUDA thread: after a __syncthreads (where fibers switch), a thread's
// copy has still not happened until its own wait, whatever the other threads waited for.
__global__ void AsyncCopyPerThread(const unsigned* in, unsigned* before, unsigned* after) {
  TANDEM_SHARED(unsigned, buf, 128);
  const int t = threadIdx.x;
  const int g = blockIdx.x * blockDim.x + t;  // each block writes its own outputs
  CpAsyncCa<4>(&buf[t], &in[t]);
  CpAsyncCommit();
  __syncthreads();
  before[g] = buf[t];
  CpAsyncWait<0>();
  after[g] = buf[t];
}

TEST_P(EmuHarness, AsyncCopiesArePerThread) {
  const int n = 128;
  std::vector<unsigned> in(n), before(2 * n, 0), after(2 * n, 0);
  for (int i = 0; i < n; ++i) in[i] = 1000 + i;
  Launch(AsyncCopyPerThread, dim3(2), dim3(n), 0, nullptr, in.data(), before.data(), after.data());
  for (int g = 0; g < 2 * n; ++g) {
    EXPECT_EQ(before[g], 0xffffffffu) << g;
    EXPECT_EQ(after[g], in[g % n]) << g;
  }
}

// A kernel with 32 KiB of locals per thread (registers spilled to the stack, on a GPU) runs on
// the fiber stacks.
__global__ void BigLocals(const int* in, int* out) {
  int local[8192];
  for (int i = 0; i < 8192; ++i) local[i] = in[threadIdx.x] + i;
  __syncthreads();
  int sum = 0;
  for (int i = 0; i < 8192; i += 7) sum += local[i];
  out[blockIdx.x * blockDim.x + threadIdx.x] = sum;  // each block its own outputs
}

TEST_P(EmuHarness, LargeStackFrames) {
  const int n = 64;
  std::vector<int> in(n), out(2 * n, 0);
  std::iota(in.begin(), in.end(), 0);
  Launch(BigLocals, dim3(2), dim3(n), 0, nullptr, in.data(), out.data());
  for (int g = 0; g < 2 * n; ++g) {
    int sum = 0;
    for (int i = 0; i < 8192; i += 7) sum += g % n + i;
    EXPECT_EQ(out[g], sum) << g;
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, EmuHarness, ::testing::ValuesIn(BuiltModes()), ModeName);
INSTANTIATE_TEST_SUITE_P(Modes, EmuHarnessDeathTest, ::testing::ValuesIn(BuiltModes()), ModeName);

// What fiber mode adds: the same schedule on every run, deadlocks reported at once, stacks
// reused. A build without fibers (TSan) has no instances of these suites.
class EmuFibers : public EmuHarness {};
class EmuFibersDeathTest : public EmuHarness {};
INSTANTIATE_TEST_SUITE_P(Fibers, EmuFibers, ::testing::ValuesIn(FiberModes()), ModeName);
INSTANTIATE_TEST_SUITE_P(Fibers, EmuFibersDeathTest, ::testing::ValuesIn(FiberModes()), ModeName);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(EmuFibers);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(EmuFibersDeathTest);

// ReverseRounds without its first or its second __syncthreads.
template <bool kFirst, bool kSecond>
__global__ void ReverseRoundsMissingBarrier(const float* in, float* out, int rounds) {
  TANDEM_SHARED(float, buf, 1024);
  const int n = blockDim.x;
  const int t = threadIdx.x;
  float v = in[blockIdx.x * n + t];
  for (int r = 0; r < rounds; ++r) {
    buf[t] = v;
    if (kFirst) __syncthreads();
    v = buf[(n - 1 - t + r) % n];
    if (kSecond) __syncthreads();
  }
  out[blockIdx.x * n + t] = v;
}

// A missing __syncthreads gives wrong results, and the same ones on every run: fibers run in a
// fixed order, and a thread released by a barrier runs after those before it in the sweep.
TEST_P(EmuFibers, MissingBarrierIsSeenEveryRun) {
  const int blocks = 3, n = 64, rounds = 4;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> in(blocks * n);
  for (float& x : in) x = dist(rng);
  const std::vector<float> expected = ReverseRoundsExpected(in, n, rounds);
  auto run = [&](auto kernel) {
    std::vector<float> out(blocks * n, 0.f);
    Launch(kernel, dim3(blocks), dim3(n), 0, nullptr, in.data(), out.data(), rounds);
    return out;
  };
  std::vector<float> out = run(ReverseRoundsMissingBarrier<true, true>);
  EXPECT_EQ(out, expected);
  for (auto kernel :
       {ReverseRoundsMissingBarrier<false, true>, ReverseRoundsMissingBarrier<true, false>}) {
    out = run(kernel);
    EXPECT_NE(std::memcmp(out.data(), expected.data(), out.size() * sizeof(float)), 0);
    const std::vector<float> again = run(kernel);
    EXPECT_EQ(std::memcmp(out.data(), again.data(), out.size() * sizeof(float)), 0);
  }
}

// Stacks are mapped for the largest block a host thread has run, then reused by every later
// block and launch.
TEST_P(EmuFibers, StacksAreReused) {
  const int blocks = 4, n = 256, rounds = 3;
  std::vector<float> in(blocks * n, 1.f), out(blocks * n);
  const int64_t before = emu::FiberStacksMapped();
  Launch(ReverseRounds, dim3(blocks), dim3(n), 0, nullptr, in.data(), out.data(), rounds);
  const int64_t after_first = emu::FiberStacksMapped();
  EXPECT_LE(after_first - before, 2 * n);  // two blocks in flight, one host thread each
  for (int i = 0; i < 3; ++i) {
    Launch(ReverseRounds, dim3(blocks), dim3(n), 0, nullptr, in.data(), out.data(), rounds);
    Launch(ReverseRounds, dim3(blocks), dim3(n / 4), 0, nullptr, in.data(), out.data(), rounds);
  }
  EXPECT_EQ(emu::FiberStacksMapped(), after_first);
}

// In block `bad`, thread 5 waits at a warp shuffle while the rest of its warp (and block) waits at
// __syncthreads: neither can complete. The other blocks are fine.
__global__ void Diverge(int bad, int* out) {
  if (static_cast<int>(blockIdx.x) == bad && threadIdx.x == 5) {
    out[0] = __shfl_sync(0xffffffffu, 1, 0);
  } else {
    __syncthreads();
  }
}

// Threads 0..31 wait at __syncthreads, 32..63 return: the barrier completes without them. Then
// threads 0..15 call __syncwarp while 16..31 wait at a second __syncthreads: a deadlock.
__global__ void DivergeAfterExit(int* out) {
  if (threadIdx.x >= 32) return;
  __syncthreads();
  if (threadIdx.x < 16) {
    __syncwarp(0x0000ffffu);
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

TEST_P(EmuFibersDeathTest, DeadlockIsReportedAtOnce) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<int> out(64);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_DEATH(Launch(Diverge, dim3(4), dim3(64), 0, nullptr, 2, out.data()),
               "deadlock in block \\(2, 0, 0\\).*diverged.*"
               "threads 0\\.\\.4: __syncthreads.*threads 5\\.\\.5: a warp shuffle or vote.*"
               "threads 6\\.\\.63: __syncthreads");
  EXPECT_DEATH(Launch(DivergeAfterExit, dim3(1), dim3(64), 0, nullptr, out.data()),
               "deadlock in block \\(0, 0, 0\\): each of its 32 live threads.*"
               "threads 0\\.\\.15: a warp shuffle or vote.*threads 16\\.\\.31: __syncthreads.*"
               "threads 32\\.\\.63: exited");
  // OS threads would wait Barrier::kStallLimit (120 s) at each.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

}  // namespace
}  // namespace tandem::kernels::cuda
