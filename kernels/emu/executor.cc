#include "kernels/emu/executor.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/check.h"
#include "kernels/emu/barrier.h"

namespace tandem::emu {
namespace {

constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kSharedAlign = 16;  // operator new's alignment, and CUDA's __align__(16) arrays

std::atomic<int> g_blocks_in_flight{2};

// One warp's exchange area. Operation k of the warp uses buffer k % 2: lanes publish before the
// barrier and read after it; buffer k % 2 is written again only by operation k + 2, after every
// lane has passed barrier k + 1 and so finished reading, and its arrival mask is cleared by
// barrier k + 1's completion.
struct WarpState {
  Barrier barrier;
  uint64_t values[2][32][kWarpWords] = {};
  std::atomic<uint32_t> arrived[2] = {0, 0};
  uint64_t phase = 0;  // only touched by the barrier's completion (one thread, under its lock)

  void CompletePhase() {
    arrived[(phase + 1) & 1].store(0, std::memory_order_relaxed);
    ++phase;
  }
  void Reset(int lanes) {
    barrier.Reset(lanes);
    arrived[0].store(0, std::memory_order_relaxed);
    arrived[1].store(0, std::memory_order_relaxed);
    phase = 0;
  }
};

// One block in flight: a slot runs blocks s, s + n_slots, s + 2 n_slots, ... one after another,
// with the same threads.
struct BlockSlot {
  Barrier sync;  // __syncthreads
  Barrier done;  // every thread has left the kernel: the slot is reset for its next block
  std::vector<std::unique_ptr<WarpState>> warps;
  std::unique_ptr<unsigned char[]> static_shared;
  std::unique_ptr<unsigned char[]> dynamic_shared;
  size_t dynamic_bytes = 0;
  std::mutex shared_mu;
  std::vector<std::pair<const void*, size_t>> sites ABSL_GUARDED_BY(shared_mu);
  size_t static_used ABSL_GUARDED_BY(shared_mu) = 0;
};

// The launch in progress. Constant while workers run it.
struct Grid {
  dim3 grid;
  dim3 block;
  int threads_per_block = 0;
  int64_t n_blocks = 0;
  int n_slots = 0;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  std::vector<std::unique_ptr<BlockSlot>> slots;
};

// What a host thread knows about the CUDA thread it is running.
struct ThreadState {
  BlockSlot* slot = nullptr;
  WarpState* warp = nullptr;
  int lane = 0;
  uint64_t warp_ops = 0;  // warp operations this thread did in its current block
};
thread_local ThreadState t_state;

uint3 Unlinear(int64_t i, const dim3& d) {
  uint3 r;
  r.x = static_cast<unsigned>(i % d.x);
  r.y = static_cast<unsigned>((i / d.x) % d.y);
  r.z = static_cast<unsigned>(i / (static_cast<int64_t>(d.x) * d.y));
  return r;
}

// Readies a slot for its next block: barriers to full strength, shared memory poisoned.
void PrepareSlot(BlockSlot& slot, const Grid& g) {
  slot.sync.Reset(g.threads_per_block);
  for (size_t w = 0; w < slot.warps.size(); ++w) {
    slot.warps[w]->Reset(std::min(32, g.threads_per_block - static_cast<int>(w) * 32));
  }
  std::lock_guard<std::mutex> lock(slot.shared_mu);
  std::memset(slot.static_shared.get(), 0xff, std::max<size_t>(slot.static_used, 1));
  if (slot.dynamic_bytes > 0) std::memset(slot.dynamic_shared.get(), 0xff, slot.dynamic_bytes);
  slot.sites.clear();
  slot.static_used = 0;
}

// Runs CUDA thread `t` of every block of slot `s`.
void RunThread(const Grid& g, int s, int t) {
  BlockSlot& slot = *g.slots[s];
  blockDim = g.block;
  gridDim = g.grid;
  threadIdx = Unlinear(t, g.block);
  WarpState* warp = slot.warps[t / 32].get();
  for (int64_t b = s; b < g.n_blocks; b += g.n_slots) {
    blockIdx = Unlinear(b, g.grid);
    t_state = ThreadState{&slot, warp, t % 32, 0};
    g.body(g.ctx);
    // The thread has exited: later barriers of its block and warp no longer wait for it.
    warp->barrier.ArriveAndDrop([warp] { warp->CompletePhase(); });
    slot.sync.ArriveAndDrop([] {});
    slot.done.ArriveAndWait("the end of a block", [&] { PrepareSlot(slot, g); });
  }
  t_state = ThreadState{};
}

// Persistent worker threads; worker i runs thread i % tpb of slot i / tpb of each launch that
// needs it. Never destroyed (workers sleep until the process exits).
class Pool {
 public:
  static Pool& Get() {
    static Pool* pool = new Pool;
    return *pool;
  }

  void Run(Grid& g) {
    std::lock_guard<std::mutex> launch(launch_mu_);
    const int need = g.n_slots * g.threads_per_block;
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (static_cast<int>(threads_.size()) < need) {
        const int index = static_cast<int>(threads_.size());
        threads_.emplace_back([this, index] { Worker(index); });
      }
      grid_ = &g;
      need_ = need;
      running_ = need;
      ++launch_;
    }
    start_cv_.notify_all();
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return running_ == 0; });
    grid_ = nullptr;
    need_ = 0;
  }

 private:
  void Worker(int index) {
    uint64_t seen = 0;
    for (;;) {
      Grid* g = nullptr;
      {
        std::unique_lock<std::mutex> lock(mu_);
        start_cv_.wait(lock, [&] { return launch_ != seen; });
        seen = launch_;
        if (index >= need_) continue;
        g = grid_;
      }
      RunThread(*g, index / g->threads_per_block, index % g->threads_per_block);
      std::lock_guard<std::mutex> lock(mu_);
      if (--running_ == 0) done_cv_.notify_all();
    }
  }

  std::mutex launch_mu_;  // one grid at a time
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  Grid* grid_ ABSL_GUARDED_BY(mu_) = nullptr;
  int need_ ABSL_GUARDED_BY(mu_) = 0;
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t launch_ ABSL_GUARDED_BY(mu_) = 0;
};

ThreadState& Current(const char* what) {
  if (t_state.slot == nullptr) {
    std::fprintf(stderr, "emu: %s called outside a kernel run by the harness\n", what);
    std::abort();
  }
  return t_state;
}

}  // namespace

void SetBlocksInFlight(int n) {
  TANDEM_CHECK_GE(n, 1);
  g_blocks_in_flight.store(n);
}
int BlocksInFlight() { return g_blocks_in_flight.load(); }

void RunGrid(dim3 grid, dim3 block, size_t dynamic_shared_bytes, void (*body)(void*), void* ctx) {
  const int64_t tpb = static_cast<int64_t>(block.x) * block.y * block.z;
  TANDEM_CHECK(tpb >= 1 && tpb <= kMaxThreadsPerBlock && block.z <= 64);
  TANDEM_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1);
  TANDEM_CHECK(grid.x <= 0x7fffffffu && grid.y <= 65535 && grid.z <= 65535);
  TANDEM_CHECK_LE(dynamic_shared_bytes, kMaxDynamicShared);
  Grid g;
  g.grid = grid;
  g.block = block;
  g.threads_per_block = static_cast<int>(tpb);
  g.n_blocks = static_cast<int64_t>(grid.x) * grid.y * grid.z;
  g.n_slots = static_cast<int>(std::min<int64_t>(BlocksInFlight(), g.n_blocks));
  g.body = body;
  g.ctx = ctx;
  const int n_warps = static_cast<int>((tpb + 31) / 32);
  for (int s = 0; s < g.n_slots; ++s) {
    auto slot = std::make_unique<BlockSlot>();
    for (int w = 0; w < n_warps; ++w) slot->warps.push_back(std::make_unique<WarpState>());
    slot->static_shared = std::make_unique<unsigned char[]>(kMaxStaticShared);
    slot->dynamic_bytes = dynamic_shared_bytes;
    slot->dynamic_shared =
        std::make_unique<unsigned char[]>(std::max<size_t>(1, dynamic_shared_bytes));
    slot->done.Reset(g.threads_per_block);
    {
      std::lock_guard<std::mutex> lock(slot->shared_mu);
      slot->static_used = kMaxStaticShared;  // poison all of it once
    }
    PrepareSlot(*slot, g);
    g.slots.push_back(std::move(slot));
  }
  Pool::Get().Run(g);
}

void SyncThreads() {
  Current("__syncthreads").slot->sync.ArriveAndWait("__syncthreads", [] {});
}

uint32_t WarpExchangeWords(uint32_t mask, const uint64_t* words, int n,
                           uint64_t (*all)[kWarpWords]) {
  TANDEM_CHECK(n >= 1 && n <= kWarpWords);
  ThreadState& ts = Current("a warp shuffle or vote");
  WarpState& w = *ts.warp;
  const int p = static_cast<int>(ts.warp_ops++ & 1);
  std::memcpy(w.values[p][ts.lane], words, sizeof(uint64_t) * n);
  w.arrived[p].fetch_or(1u << ts.lane, std::memory_order_relaxed);
  w.barrier.ArriveAndWait("a warp shuffle or vote", [&w] { w.CompletePhase(); });
  const uint32_t arrived = w.arrived[p].load(std::memory_order_relaxed);
  if ((arrived & ~mask) != 0) {
    std::fprintf(stderr, "emu: lanes 0x%08x took part in a warp operation with mask 0x%08x\n",
                 arrived, mask);
    std::abort();
  }
  for (int lane = 0; lane < 32; ++lane) {
    std::memcpy(all[lane], w.values[p][lane], sizeof(uint64_t) * n);
  }
  return arrived;
}

uint32_t WarpExchange(uint32_t mask, uint64_t value, uint64_t all[32]) {
  uint64_t words[32][kWarpWords];
  const uint32_t arrived = WarpExchangeWords(mask, &value, 1, words);
  for (int lane = 0; lane < 32; ++lane) all[lane] = words[lane][0];
  return arrived;
}

int LaneId() { return Current("LaneId").lane; }

void* SharedArray(const void* site, size_t bytes, size_t align) {
  BlockSlot& slot = *Current("a __shared__ declaration").slot;
  TANDEM_CHECK_LE(align, kSharedAlign);
  std::lock_guard<std::mutex> lock(slot.shared_mu);
  for (const auto& [s, offset] : slot.sites) {
    if (s == site) return slot.static_shared.get() + offset;
  }
  const size_t offset = (slot.static_used + kSharedAlign - 1) / kSharedAlign * kSharedAlign;
  if (offset + bytes > kMaxStaticShared) {
    std::fprintf(stderr, "emu: static shared memory of a block exceeds %zu bytes\n",
                 kMaxStaticShared);
    std::abort();
  }
  slot.sites.emplace_back(site, offset);
  slot.static_used = offset + bytes;
  return slot.static_shared.get() + offset;
}

void* DynamicShared() { return Current("dynamic shared memory").slot->dynamic_shared.get(); }

}  // namespace tandem::emu
