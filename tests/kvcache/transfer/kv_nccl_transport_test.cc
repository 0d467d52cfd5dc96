// The direct (NCCL) KV transport's protocol, run over the byte data plane on the CPU: the same
// KvNcclPusher / KvNcclReceiver / watchdog / lease code that drives NCCL on GPUs. The decode
// cache ends with the same KV bytes as over the TCP transport (f16 and int8, several layers, a
// ragged last block, sliding-window layer groups); a peer that dies mid-transfer, a deadline
// that passes and a data plane that stalls all abort the transfer and give every leased block
// back; layouts that do not match block for block are refused with a message that says why.
#include "kvcache/transfer/kv_nccl_transport.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvcache/kv_copy.h"
#include "kvcache/kv_manager.h"
#include "kvcache/transfer/kv_data_plane.h"
#include "kvcache/transfer/kv_nccl_plane.h"
#include "kvcache/transfer/kv_nccl_watchdog.h"
#include "kvcache/transfer/kv_pusher.h"
#include "kvcache/transfer/kv_receiver.h"
#include "kvcache/transfer/kv_snapshot.h"
#include "kvcache/transfer/kv_tcp.h"

namespace tandem::kvcache {
namespace {

using kernels::KvDType;

constexpr int kLayers = 4;
constexpr int kHeads = 2;
constexpr int kHeadDim = 8;
constexpr int kTokens = 29;  // a ragged last block at block size 8
constexpr int kWindow = 10;  // of the sliding layers, when windowed

kernels::Backend& Backend() {
  static auto* backend = [] {
    auto b = kernels::cpu::CreateCpuBackend(kernels::cpu::CpuBackendConfig{});
    EXPECT_TRUE(b.ok());
    return b->release();
  }();
  return *backend;
}

struct Layout {
  KvDType dtype = KvDType::kF16;
  int block_size = 8;
  bool windowed = false;  // layers 0 and 2 keep a window of kWindow (local groups)
};

std::unique_ptr<KvManager> MakeKv(const Layout& l, int num_blocks = 48) {
  KvCacheConfig c;
  c.n_layers = kLayers;
  c.n_kv_heads = kHeads;
  c.head_dim = kHeadDim;
  c.block_size = l.block_size;
  c.dtype = l.dtype;
  c.num_blocks = num_blocks;
  if (l.windowed) {
    c.sliding_window = kWindow;
    c.sliding_layers = {true, false, true, false};
    c.window_local = true;
  }
  auto m = KvManager::Create(c, Backend());
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(*m);
}

KvDirectLayout LayoutOf(const KvManager& kv) {
  return DirectLayoutOf(kv.view(), kv.groups(), kv.config().n_layers);
}

// A prefilled sequence's KV (random, never zero) in its cache.
struct Source {
  Source(const Layout& l, int seed) : kv(MakeKv(l)), table(l.block_size) {
    EXPECT_TRUE(kv->Append(table, kTokens).ok());
    table.SetNumTokens(kTokens);
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(0.25f, 2.f);
    std::vector<float> k(kHeads * kHeadDim), v(kHeads * kHeadDim);
    for (int layer = 0; layer < kLayers; ++layer) {
      const LayerDestination d = LayerDestinationOf(kv->groups(), table, layer, kTokens);
      for (int t = d.first; t < kTokens; ++t) {
        for (float& x : k) x = (rng() % 2 ? 1 : -1) * dist(rng);
        for (float& x : v) x = (rng() % 2 ? 1 : -1) * dist(rng);
        WriteTokenKv(kv->view(), d.slot, d.table.SlotFor(t), k.data(), v.data());
      }
    }
  }
  // The stream of every layer's regions, committed.
  std::shared_ptr<KvNcclLayerStream> Stream(int first_token = 7) const {
    auto s = std::make_shared<KvNcclLayerStream>(kTokens, kLayers);
    for (int layer = 0; layer < kLayers; ++layer) {
      std::vector<KvRegion> r;
      EXPECT_TRUE(DirectLayerRegions(kv->view(), kv->groups(), table, layer, kTokens, &r).ok());
      s->AddLayer(layer, std::move(r), kernels::Event{});
    }
    s->Commit(first_token, 4);
    return s;
  }
  std::unique_ptr<KvManager> kv;
  BlockTable table;
};

// The bytes position `p` of `layer` holds (every head's K, V, and int8 scale pairs).
std::string PositionBytes(const KvManager& kv, const BlockTable& table, int layer, int p) {
  const kernels::KvCacheView& c = kv.view();
  const LayerDestination d = LayerDestinationOf(kv.groups(), table, layer, kTokens);
  const int32_t slot = d.table.SlotFor(p);
  const int block = slot / c.block_size, off = slot % c.block_size;
  const size_t row = static_cast<size_t>(c.head_dim) * kernels::KvElemBytes(c.dtype);
  std::string out;
  for (int h = 0; h < c.n_kv_heads; ++h) {
    const size_t r =
        ((static_cast<size_t>(d.slot) * c.n_blocks + block) * c.n_kv_heads + h) * c.block_size +
        off;
    out.append(static_cast<const char*>(c.k) + r * row, row);
    out.append(static_cast<const char*>(c.v) + r * row, row);
    if (c.dtype == KvDType::kInt8) {
      out.append(reinterpret_cast<const char*>(c.k_scale_zero + r * 2), 2 * sizeof(float));
      out.append(reinterpret_cast<const char*>(c.v_scale_zero + r * 2), 2 * sizeof(float));
    }
  }
  return out;
}

// The decode side: a KvManager behind a mutex, leasing by tokens (every group) as the decode
// engine does.
class Target : public KvReceiveTarget {
 public:
  explicit Target(std::unique_ptr<KvManager> kv) : kv_(std::move(kv)) {}

  absl::StatusOr<KvReservation> Reserve(const ReserveFrame& r, absl::Time) override {
    std::lock_guard<std::mutex> lock(mu_);
    absl::StatusOr<KvLease> lease = kv_->ReserveTokens(r.n_tokens, absl::InfiniteFuture());
    if (!lease.ok()) return absl::ResourceExhaustedError(lease.status().message());
    KvReservation res;
    res.lease_id = lease->id;
    res.view = kv_->view();
    res.groups = kv_->groups();
    res.table = kv_->LeaseTable(*lease, r.n_tokens);
    ++reserved_;
    cv_.notify_all();
    return res;
  }
  void Commit(const ReserveFrame& r, const KvReservation& lease, const CommitFrame& c) override {
    std::lock_guard<std::mutex> lock(mu_);
    committed_[r.transfer_id] = {lease.lease_id, c};
    cv_.notify_all();
  }
  void Abort(uint64_t transfer_id, uint64_t lease_id, const absl::Status& why) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (lease_id != 0) kv_->Abort(lease_id);
    aborted_[transfer_id] = why;
    cv_.notify_all();
  }

  bool WaitEnd(uint64_t id) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(10),
                 [&] { return committed_.count(id) > 0 || aborted_.count(id) > 0; });
    return committed_.count(id) > 0;
  }
  void WaitReserved(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(10), [&] { return reserved_ >= n; });
  }
  absl::Status AbortOf(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    return aborted_.count(id) ? aborted_[id] : absl::OkStatus();
  }
  BlockTable Import(uint64_t id, CommitFrame* commit = nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    BlockTable t(kv_->block_size());
    EXPECT_TRUE(committed_.count(id));
    if (commit != nullptr) *commit = committed_[id].second;
    EXPECT_TRUE(kv_->Import(committed_[id].first, kTokens, t).ok());
    return t;
  }
  int num_free() {
    std::lock_guard<std::mutex> lock(mu_);
    return kv_->num_free();
  }
  int num_leases() {
    std::lock_guard<std::mutex> lock(mu_);
    return kv_->num_leases();
  }
  const KvManager& kv() const { return *kv_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::unique_ptr<KvManager> kv_;
  int reserved_ = 0;
  std::map<uint64_t, std::pair<uint64_t, CommitFrame>> committed_;
  std::map<uint64_t, absl::Status> aborted_;
};

// A sender and a receiver of the direct transport over the byte plane, on loopback.
struct Direct {
  Direct(Target& target, const KvDirectLayout& sender_layout, KvNcclReceiverConfig rc = {},
         KvNcclPusherConfig pc = {}, KvDataPlaneFactory* sender_planes = nullptr) {
    auto l = ListenTcp("127.0.0.1", 0);
    EXPECT_TRUE(l.ok()) << l.status();
    rc.layout = LayoutOf(target.kv());
    receiver = KvNcclReceiver::Start(std::move(*l), target, *planes, rc);
    pc.layout = sender_layout;
    pusher = std::make_unique<KvNcclPusher>(
        [address = receiver->address()] { return ConnectTcp(address, absl::Seconds(5)); },
        sender_planes ? *sender_planes : *planes, pc);
  }
  ~Direct() {
    pusher->Stop();
    receiver->Stop();
  }
  std::unique_ptr<KvDataPlaneFactory> planes = MakeByteDataPlaneFactory();
  std::unique_ptr<KvNcclReceiver> receiver;
  std::unique_ptr<KvNcclPusher> pusher;
};

// Pushes and returns a future of `done`'s status.
std::future<absl::Status> PushAsync(KvNcclPusher& pusher, uint64_t id,
                                    std::shared_ptr<KvNcclLayerStream> stream) {
  auto result = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> f = result->get_future();
  KvNcclPush p;
  p.transfer_id = id;
  p.stream = std::move(stream);
  p.deadline = absl::Now() + absl::Seconds(5);
  p.done = [result](const absl::Status& s) { result->set_value(s); };
  pusher.Push(std::move(p));
  return f;
}

// The same transfer over TCP (KvPusher with a snapshot, KvReceiver), for comparison.
BlockTable PushOverTcp(const Source& src, Target& target) {
  auto l = ListenTcp("127.0.0.1", 0);
  EXPECT_TRUE(l.ok()) << l.status();
  auto receiver = KvReceiver::Start(std::move(*l), target);
  KvPusher pusher(
      [address = receiver->address()] { return ConnectTcp(address, absl::Seconds(5)); });
  auto snap = KvSnapshot::Take(*src.kv, src.table, kTokens);
  EXPECT_TRUE(snap.ok()) << snap.status();
  std::promise<absl::Status> done;
  KvPush p;
  p.transfer_id = 1;
  p.kv = std::shared_ptr<const KvSnapshot>(std::move(*snap));
  p.wire_dtype = src.kv->view().dtype;
  p.first_token = 7;
  p.done = [&done](const absl::Status& s) { done.set_value(s); };
  pusher.Push(std::move(p));
  EXPECT_TRUE(done.get_future().get().ok());
  EXPECT_TRUE(target.WaitEnd(1));
  pusher.Stop();
  receiver->Stop();
  return target.Import(1);
}

class KvNcclSameBytesTest : public testing::TestWithParam<std::tuple<KvDType, bool>> {};

TEST_P(KvNcclSameBytesTest, DecodeCacheHoldsWhatTcpWouldWrite) {
  const Layout lay{std::get<0>(GetParam()), 8, std::get<1>(GetParam())};
  Source src(lay, 11);
  Target over_tcp(MakeKv(lay));
  const BlockTable tcp_table = PushOverTcp(src, over_tcp);

  Target target(MakeKv(lay));
  const int free_before = target.num_free();
  CommitFrame commit;
  {
    Direct d(target, LayoutOf(*src.kv));
    ASSERT_TRUE(PushAsync(*d.pusher, 5, src.Stream()).get().ok());
    ASSERT_TRUE(target.WaitEnd(5));
    EXPECT_EQ(d.pusher->stats().committed, 1u);
    EXPECT_EQ(d.receiver->stats().committed, 1u);
    EXPECT_EQ(d.receiver->stats().planes_aborted, 0u);
  }
  const BlockTable table = target.Import(5, &commit);
  EXPECT_EQ(commit.first_token, 7);
  EXPECT_EQ(commit.seed, 4u);
  EXPECT_LT(target.num_free(), free_before);
  int compared = 0;
  for (int layer = 0; layer < kLayers; ++layer) {
    const int first = target.kv().groups().FirstKept(layer, kTokens);
    if (lay.windowed) {
      EXPECT_EQ(first, layer % 2 == 0 ? kTokens - kWindow + 1 : 0) << layer;
    }
    for (int p = first; p < kTokens; ++p) {
      const std::string got = PositionBytes(target.kv(), table, layer, p);
      ASSERT_EQ(got, PositionBytes(over_tcp.kv(), tcp_table, layer, p))
          << "layer " << layer << " position " << p;
      ASSERT_EQ(got, PositionBytes(*src.kv, src.table, layer, p));
      ++compared;
    }
  }
  EXPECT_GT(compared, kTokens * 2);
}

INSTANTIATE_TEST_SUITE_P(DtypesAndWindows, KvNcclSameBytesTest,
                         testing::Combine(testing::Values(KvDType::kF16, KvDType::kInt8),
                                          testing::Bool()),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) == KvDType::kF16 ? "F16"
                                                                                       : "Int8") +
                                  (std::get<1>(info.param) ? "Windowed" : "WholeContext");
                         });

TEST(KvNcclTransportTest, TransfersShareOnePlaneUntilOneFails) {
  const Layout lay{KvDType::kF16, 8, false};
  Source src(lay, 3);
  Target target(MakeKv(lay));
  Direct d(target, LayoutOf(*src.kv));
  for (uint64_t id = 1; id <= 3; ++id) {
    ASSERT_TRUE(PushAsync(*d.pusher, id, src.Stream()).get().ok());
    ASSERT_TRUE(target.WaitEnd(id));
  }
  EXPECT_EQ(d.pusher->stats().planes, 1u);
  // A cancelled stream after one layer: its receives will never be matched, so the plane goes.
  auto cancelled = std::make_shared<KvNcclLayerStream>(kTokens, kLayers);
  std::vector<KvRegion> r;
  ASSERT_TRUE(DirectLayerRegions(src.kv->view(), src.kv->groups(), src.table, 0, kTokens, &r).ok());
  cancelled->AddLayer(0, r, kernels::Event{});
  cancelled->Cancel("the sequence ended on the prefill side");
  EXPECT_EQ(PushAsync(*d.pusher, 4, cancelled).get().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(target.WaitEnd(4));
  EXPECT_EQ(target.AbortOf(4).code(), absl::StatusCode::kCancelled);
  // The next transfer joins a new plane and lands whole.
  ASSERT_TRUE(PushAsync(*d.pusher, 5, src.Stream()).get().ok());
  ASSERT_TRUE(target.WaitEnd(5));
  EXPECT_EQ(d.pusher->stats().planes, 2u);
  EXPECT_EQ(target.num_leases(), 1 + 4 - 1);  // 1, 2, 3 and 5 committed, not imported
}

TEST(KvNcclTransportTest, SenderThatDiesMidTransferFreesTheLease) {
  const Layout lay{KvDType::kInt8, 8, true};
  Source src(lay, 5);
  Target target(MakeKv(lay));
  const int free_before = target.num_free();
  Direct d(target, LayoutOf(*src.kv));
  auto stream = std::make_shared<KvNcclLayerStream>(kTokens, kLayers);
  std::vector<KvRegion> r;
  ASSERT_TRUE(DirectLayerRegions(src.kv->view(), src.kv->groups(), src.table, 0, kTokens, &r).ok());
  stream->AddLayer(0, r, kernels::Event{});
  std::future<absl::Status> done = PushAsync(*d.pusher, 9, stream);
  target.WaitReserved(1);
  EXPECT_LT(target.num_free(), free_before);
  // The prefill process goes away (its connection and plane with it).
  d.pusher->Stop();
  EXPECT_EQ(done.get().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(target.WaitEnd(9));
  EXPECT_EQ(target.AbortOf(9).code(), absl::StatusCode::kUnavailable) << target.AbortOf(9);
  EXPECT_EQ(target.num_free(), free_before);
  EXPECT_EQ(target.num_leases(), 0);
  EXPECT_EQ(d.receiver->open_transfers(), 0);
}

TEST(KvNcclTransportTest, ReceiverThatDiesMidTransferFailsThePushAndFreesTheLease) {
  const Layout lay{KvDType::kF16, 8, false};
  Source src(lay, 6);
  Target target(MakeKv(lay));
  const int free_before = target.num_free();
  Direct d(target, LayoutOf(*src.kv));
  auto stream = std::make_shared<KvNcclLayerStream>(kTokens, kLayers);
  std::future<absl::Status> done = PushAsync(*d.pusher, 3, stream);
  target.WaitReserved(1);
  d.receiver->Stop();
  // The pusher learns at its next step, well before any deadline.
  std::vector<KvRegion> r;
  for (int layer = 0; layer < kLayers; ++layer) {
    ASSERT_TRUE(
        DirectLayerRegions(src.kv->view(), src.kv->groups(), src.table, layer, kTokens, &r).ok());
    stream->AddLayer(layer, r, kernels::Event{});
  }
  stream->Commit(1, {});
  ASSERT_EQ(done.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_FALSE(done.get().ok());
  EXPECT_GE(d.pusher->stats().planes_aborted, 1u);
  EXPECT_EQ(target.num_free(), free_before);
  EXPECT_EQ(target.num_leases(), 0);
}

TEST(KvNcclTransportTest, DeadlineAbortsTheTransferAndFreesTheLease) {
  const Layout lay{KvDType::kF16, 8, true};
  Source src(lay, 8);
  Target target(MakeKv(lay));
  const int free_before = target.num_free();
  KvNcclReceiverConfig rc;
  rc.transfer_timeout = absl::Milliseconds(300);
  Direct d(target, LayoutOf(*src.kv), rc);
  // Layer 0 comes, then the prefill step stalls.
  auto stream = std::make_shared<KvNcclLayerStream>(kTokens, kLayers);
  std::vector<KvRegion> r;
  ASSERT_TRUE(DirectLayerRegions(src.kv->view(), src.kv->groups(), src.table, 0, kTokens, &r).ok());
  stream->AddLayer(0, r, kernels::Event{});
  const absl::Time t0 = absl::Now();
  std::future<absl::Status> done = PushAsync(*d.pusher, 4, stream);
  ASSERT_EQ(done.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  const absl::Status s = done.get();
  EXPECT_FALSE(s.ok());
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
  EXPECT_FALSE(target.WaitEnd(4));
  EXPECT_EQ(target.AbortOf(4).code(), absl::StatusCode::kDeadlineExceeded) << target.AbortOf(4);
  EXPECT_EQ(target.num_free(), free_before);
  EXPECT_EQ(target.num_leases(), 0);
}

// A data plane whose Wait blocks until Abort whatever its deadline, as a blocking NCCL call on
// a hung peer would: only the watchdog can end it.
class StallingFactory : public KvDataPlaneFactory {
 public:
  explicit StallingFactory(KvDataPlaneFactory& inner) : inner_(inner) {}
  std::string_view kind() const override { return inner_.kind(); }
  absl::StatusOr<std::unique_ptr<KvDataPlaneOffer>> Offer() override;
  absl::StatusOr<std::unique_ptr<KvDataPlane>> Join(std::string_view b, absl::Time u) override {
    return inner_.Join(b, u);
  }

 private:
  KvDataPlaneFactory& inner_;
};

class StallingPlane : public KvDataPlane {
 public:
  explicit StallingPlane(std::unique_ptr<KvDataPlane> inner) : inner_(std::move(inner)) {}
  absl::Status Send(std::span<const KvRegion> r, kernels::Event e) override {
    return inner_->Send(r, e);
  }
  absl::Status Recv(std::span<const KvRegion> r) override { return inner_->Recv(r); }
  absl::Status Wait(absl::Time) override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !why_.ok(); });
    return why_;
  }
  void Abort(const absl::Status& why) override {
    inner_->Abort(why);
    std::lock_guard<std::mutex> lock(mu_);
    if (why_.ok()) why_ = why.ok() ? absl::AbortedError("aborted") : why;
    cv_.notify_all();
  }

 private:
  std::unique_ptr<KvDataPlane> inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  absl::Status why_;
};

class StallingOffer : public KvDataPlaneOffer {
 public:
  explicit StallingOffer(std::unique_ptr<KvDataPlaneOffer> inner) : inner_(std::move(inner)) {}
  const std::string& bootstrap() const override { return inner_->bootstrap(); }
  absl::StatusOr<std::unique_ptr<KvDataPlane>> Connect(absl::Time until) override {
    auto p = inner_->Connect(until);
    if (!p.ok()) return p.status();
    return std::unique_ptr<KvDataPlane>(std::make_unique<StallingPlane>(std::move(*p)));
  }

 private:
  std::unique_ptr<KvDataPlaneOffer> inner_;
};

absl::StatusOr<std::unique_ptr<KvDataPlaneOffer>> StallingFactory::Offer() {
  auto o = inner_.Offer();
  if (!o.ok()) return o.status();
  return std::unique_ptr<KvDataPlaneOffer>(std::make_unique<StallingOffer>(std::move(*o)));
}

TEST(KvNcclTransportTest, WatchdogEndsAPlaneStuckPastTheDeadline) {
  const Layout lay{KvDType::kF16, 8, false};
  Source src(lay, 9);
  Target target(MakeKv(lay));
  const int free_before = target.num_free();
  auto bytes = MakeByteDataPlaneFactory();
  StallingFactory stalling(*bytes);
  KvNcclPusherConfig pc;
  pc.transfer_timeout = absl::Milliseconds(300);
  Direct d(target, LayoutOf(*src.kv), {}, pc, &stalling);
  const absl::Time t0 = absl::Now();
  std::future<absl::Status> done = PushAsync(*d.pusher, 2, src.Stream());
  ASSERT_EQ(done.wait_for(std::chrono::seconds(10)), std::future_status::ready)
      << "the sender hangs in its stalled plane";
  EXPECT_EQ(done.get().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
  EXPECT_EQ(d.pusher->stats().watchdog_fired, 1u);
  // The decode side hears of it (the connection ends) and frees the lease.
  EXPECT_FALSE(target.WaitEnd(2));
  EXPECT_EQ(target.num_free(), free_before);
  EXPECT_EQ(target.num_leases(), 0);
}

// Layouts that do not match block for block are refused at the hello, before any lease.
struct Mismatch {
  Layout sender, receiver;
  const char* says;
  const char* name;  // the test's
};

class KvNcclMismatchTest : public testing::TestWithParam<Mismatch> {};

TEST_P(KvNcclMismatchTest, RefusedWithAClearError) {
  Source src(GetParam().sender, 1);
  Target target(MakeKv(GetParam().receiver));
  const int free_before = target.num_free();
  Direct d(target, LayoutOf(*src.kv));
  const absl::Status s = PushAsync(*d.pusher, 1, src.Stream()).get();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find(GetParam().says), std::string::npos) << s;
  EXPECT_NE(s.message().find("tcp and shm transports"), std::string::npos) << s;
  EXPECT_EQ(d.receiver->stats().refused_peers, 1u);
  EXPECT_EQ(d.pusher->stats().refused_peers, 1u);
  EXPECT_EQ(target.num_free(), free_before);
  EXPECT_EQ(target.num_leases(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, KvNcclMismatchTest,
    testing::Values(
        Mismatch{
            {KvDType::kF16, 8, false}, {KvDType::kF16, 16, false}, "block size 8", "BlockSize"},
        Mismatch{{KvDType::kF16, 8, false}, {KvDType::kInt8, 8, false}, "KV dtype f16", "Dtype"},
        Mismatch{{KvDType::kF16, 8, false},
                 {KvDType::kF16, 8, true},
                 "layer 0 keeps the whole context on the sender and a window of 10",
                 "Window"}),
    [](const testing::TestParamInfo<Mismatch>& info) { return std::string(info.param.name); });

TEST(KvNcclTransportTest, ByteSenderAndWrongPlaneKindAreRefused) {
  const Layout lay{KvDType::kF16, 8, false};
  Target target(MakeKv(lay));
  Direct d(target, LayoutOf(target.kv()));
  // A tcp sender's first frame is no hello.
  auto conn = ConnectTcp(d.receiver->address(), absl::Seconds(5));
  ASSERT_TRUE(conn.ok());
  std::string reserve;
  EncodeFrame(ReserveFrame{1, kTokens, kLayers, kHeads, kHeadDim, KvDType::kF16}, &reserve);
  ASSERT_TRUE((*conn)->Write(reserve).ok());
  char buf[256];
  std::string answer;
  while (true) {
    absl::StatusOr<size_t> n = (*conn)->Read(buf, sizeof(buf), absl::Seconds(5));
    if (!n.ok() || *n == 0) break;
    answer.append(buf, *n);
  }
  EXPECT_NE(answer.find("does not speak the direct (nccl) transport"), std::string::npos) << answer;
  // A hello for another kind of plane.
  auto conn2 = ConnectTcp(d.receiver->address(), absl::Seconds(5));
  ASSERT_TRUE(conn2.ok());
  ASSERT_TRUE((*conn2)->Write(EncodeNcclHello("nccl", LayoutOf(target.kv()), "x")).ok());
  answer.clear();
  while (true) {
    absl::StatusOr<size_t> n = (*conn2)->Read(buf, sizeof(buf), absl::Seconds(5));
    if (!n.ok() || *n == 0) break;
    answer.append(buf, *n);
  }
  EXPECT_NE(answer.find("data plane is 'nccl', this receiver's 'bytes'"), std::string::npos)
      << answer;
  EXPECT_EQ(d.receiver->stats().refused_peers, 2u);
  EXPECT_EQ(target.num_leases(), 0);
}

TEST(KvDirectLayoutTest, EncodesAndRefusesMalformedBytes) {
  const Layout lay{KvDType::kInt8, 8, true};
  auto kv = MakeKv(lay);
  const KvDirectLayout l = LayoutOf(*kv);
  EXPECT_EQ(l.kept_window, (std::vector<int>{kWindow, 0, kWindow, 0}));
  std::string bytes;
  EncodeDirectLayout(l, &bytes);
  auto back = DecodeDirectLayout(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, l);
  EXPECT_TRUE(CheckDirectLayout(l, *back).ok());
  EXPECT_FALSE(DecodeDirectLayout(bytes.substr(0, bytes.size() - 1)).ok());
  std::string huge = bytes;
  huge[0] = '\xff';
  huge[1] = '\xff';
  EXPECT_EQ(DecodeDirectLayout(huge).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(DecodeDirectLayout("").ok());
}

TEST(KvDirectLayoutTest, RegionsListEachBlockOfTheKeptPositions) {
  const Layout lay{KvDType::kInt8, 8, true};
  Source src(lay, 2);
  std::vector<KvRegion> r;
  // A full layer: blocks 0..3 (29 positions), K, V and both scale runs.
  ASSERT_TRUE(DirectLayerRegions(src.kv->view(), src.kv->groups(), src.table, 1, kTokens, &r).ok());
  ASSERT_EQ(r.size(), 4u * 4);
  EXPECT_EQ(r[0].bytes, static_cast<size_t>(kHeads) * 8 * kHeadDim);
  EXPECT_EQ(r[8].bytes, static_cast<size_t>(kHeads) * 8 * 2 * sizeof(float));
  // A local layer keeps positions 20..28: blocks 2 and 3.
  ASSERT_TRUE(DirectLayerRegions(src.kv->view(), src.kv->groups(), src.table, 0, kTokens, &r).ok());
  EXPECT_EQ(r.size(), 2u * 4);
  EXPECT_FALSE(
      DirectLayerRegions(src.kv->view(), src.kv->groups(), src.table, kLayers, kTokens, &r).ok());
  BlockTable short_table = BlockTable::Adopt(8, {0}, 8);
  EXPECT_FALSE(DirectLayerRegions(src.kv->view(), KvGroups{}, short_table, 0, kTokens, &r).ok());
}

TEST(KvWatchdogTest, FiresOnlyWhatIsStillArmedAtItsDeadline) {
  KvWatchdog w;
  std::atomic<int> fired{0};
  const absl::Time t0 = absl::Now();
  w.Arm(t0 + absl::Milliseconds(50), [&] { fired.fetch_add(1); });
  const uint64_t later = w.Arm(t0 + absl::Seconds(1), [&] { fired.fetch_add(10); });
  w.Disarm(later);
  w.Arm(t0 + absl::Hours(1), [&] { fired.fetch_add(100); });
  // Polled, not slept: a loaded machine may run the watchdog's thread late.
  while (w.fired() < 1 && absl::Now() < t0 + absl::Seconds(10)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(50));
  // Past the disarmed one's deadline: it never runs.
  std::this_thread::sleep_until(absl::ToChronoTime(t0 + absl::Milliseconds(1300)));
  EXPECT_EQ(fired.load(), 1);
  EXPECT_EQ(w.fired(), 1u);
  EXPECT_EQ(w.armed(), 1);
  w.Stop();
  EXPECT_EQ(fired.load(), 1);
}

// Without a GPU (CI) the factory says why in one line; with one (a build with NCCL on a GPU
// machine) it is made, and is of the nccl kind (its transfers need two GPUs in one process,
// which this test does not assume).
TEST(KvNcclPlaneTest, WithoutAGpuTheFactorySaysWhy) {
  absl::StatusOr<std::unique_ptr<KvDataPlaneFactory>> f = MakeNcclDataPlaneFactory({});
  if (f.ok()) {
    EXPECT_TRUE(NcclPlaneBuilt());
    EXPECT_EQ((*f)->kind(), "nccl");
    return;
  }
  EXPECT_EQ(f.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(f.status().message().find(NcclPlaneBuilt() ? "needs a CUDA GPU" : "without NCCL"),
            std::string::npos)
      << f.status();
  EXPECT_EQ(f.status().message().find('\n'), std::string::npos);
}

}  // namespace
}  // namespace tandem::kvcache
