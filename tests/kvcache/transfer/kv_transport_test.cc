// The KV handover between processes, over each transport (loopback TCP and shared memory):
// KvPusher (prefill side) and KvReceiver (decode side) against a real KvManager. Every layer and
// position arrives across block sizes and dtypes (int8 on the wire included); the decode side's
// refusals are retried until the deadline; and whatever goes wrong (peer gone mid-transfer, corrupt
// or out-of-order frames, a stalled sender, a stop) frees the lease at once and touches no other
// transfer.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
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
#include "kvcache/transfer/kv_frame.h"
#include "kvcache/transfer/kv_pusher.h"
#include "kvcache/transfer/kv_receiver.h"
#include "kvcache/transfer/kv_shm.h"
#include "kvcache/transfer/kv_snapshot.h"
#include "kvcache/transfer/kv_tcp.h"

namespace tandem::kvcache {
namespace {

using kernels::KvDType;

constexpr int kLayers = 3;
constexpr int kHeads = 2;
constexpr int kHeadDim = 16;
constexpr int kTokens = 29;  // partial last blocks at 4, 8 and 16

std::unique_ptr<KvManager> MakeKv(KvDType dtype, int block_size, int num_blocks = 64) {
  static auto* backend = [] {
    auto b = kernels::cpu::CreateCpuBackend(kernels::cpu::CpuBackendConfig{});
    EXPECT_TRUE(b.ok());
    return b->release();
  }();
  KvCacheConfig c;
  c.n_layers = kLayers;
  c.n_kv_heads = kHeads;
  c.head_dim = kHeadDim;
  c.block_size = block_size;
  c.dtype = dtype;
  c.num_blocks = num_blocks;
  auto m = KvManager::Create(c, *backend);
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(*m);
}

// A prefilled sequence's KV (random, never zero) and its snapshot.
struct Source {
  Source(KvDType dtype, int block_size, int seed)
      : kv(MakeKv(dtype, block_size)), table(block_size) {
    EXPECT_TRUE(kv->Append(table, kTokens).ok());
    table.SetNumTokens(kTokens);
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(0.25f, 2.f);
    const int row = kHeads * kHeadDim;
    std::vector<float> k(row), v(row);
    for (int layer = 0; layer < kLayers; ++layer) {
      for (int t = 0; t < kTokens; ++t) {
        for (float& x : k) x = (rng() % 2 ? 1 : -1) * dist(rng);
        for (float& x : v) x = (rng() % 2 ? 1 : -1) * dist(rng);
        WriteTokenKv(kv->view(), layer, table.SlotFor(t), k.data(), v.data());
      }
    }
    auto s = KvSnapshot::Take(*kv, table, kTokens);
    EXPECT_TRUE(s.ok()) << s.status();
    snap = std::shared_ptr<const KvSnapshot>(std::move(*s));
  }
  std::unique_ptr<KvManager> kv;
  BlockTable table;
  std::shared_ptr<const KvSnapshot> snap;
};

// The decode side: a KvManager behind a mutex, as an engine thread would serialize it.
class Target : public KvReceiveTarget {
 public:
  explicit Target(std::unique_ptr<KvManager> kv) : kv_(std::move(kv)) {}

  absl::StatusOr<KvReservation> Reserve(const ReserveFrame& r, absl::Time) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++reserves_;
    if (refuse_ > 0) {
      --refuse_;
      return absl::ResourceExhaustedError("no room (test)");
    }
    const int blocks = (r.n_tokens + kv_->block_size() - 1) / kv_->block_size();
    absl::StatusOr<KvLease> lease = kv_->Reserve(blocks, absl::InfiniteFuture());
    if (!lease.ok()) return absl::ResourceExhaustedError(lease.status().message());
    KvReservation res;
    res.lease_id = lease->id;
    res.view = kv_->view();
    res.table = BlockTable::Adopt(kv_->block_size(), lease->blocks, r.n_tokens);
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

  // Waits until `id` is committed or aborted (or 10 s pass): true when committed.
  bool WaitEnd(uint64_t id) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(10),
                 [&] { return committed_.count(id) > 0 || aborted_.count(id) > 0; });
    return committed_.count(id) > 0;
  }
  absl::Status AbortOf(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    return aborted_.count(id) ? aborted_[id] : absl::OkStatus();
  }
  // Imports a committed transfer's lease into a table.
  BlockTable Import(uint64_t id, CommitFrame* commit) {
    std::lock_guard<std::mutex> lock(mu_);
    BlockTable t(kv_->block_size());
    EXPECT_TRUE(committed_.count(id));
    *commit = committed_[id].second;
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
  void Refuse(int n) {
    std::lock_guard<std::mutex> lock(mu_);
    refuse_ = n;
  }
  int reserves() {
    std::lock_guard<std::mutex> lock(mu_);
    return reserves_;
  }
  KvManager& kv() { return *kv_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::unique_ptr<KvManager> kv_;
  int refuse_ = 0;
  int reserves_ = 0;
  std::map<uint64_t, std::pair<uint64_t, CommitFrame>> committed_;
  std::map<uint64_t, absl::Status> aborted_;
};

// The transport under test: "tcp" or "shm".
class KvTransportTest : public testing::TestWithParam<std::string> {};

absl::StatusOr<std::unique_ptr<KvListener>> Listen() {
  if (KvTransportTest::GetParam() == "shm") return ListenShm("");
  return ListenTcp("127.0.0.1", 0);
}

absl::StatusOr<std::unique_ptr<KvConnection>> Connect(const std::string& address,
                                                      const std::string& secret = "") {
  if (KvTransportTest::GetParam() == "shm") return ConnectShm(address, absl::Seconds(5), secret);
  return ConnectTcp(address, absl::Seconds(5), secret);
}

std::unique_ptr<KvReceiver> StartReceiver(Target& target, KvReceiverConfig config = {}) {
  auto l = Listen();
  EXPECT_TRUE(l.ok()) << l.status();
  return KvReceiver::Start(std::move(*l), target, config);
}

KvPusher::Connect To(const KvReceiver& r) {
  return [address = r.address()] { return Connect(address); };
}

// Pushes one transfer and waits for its `done`.
absl::Status PushAndWait(KvPusher& pusher, KvPush p) {
  auto result = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> f = result->get_future();
  p.done = [result](const absl::Status& s) { result->set_value(s); };
  pusher.Push(std::move(p));
  return f.get();
}

KvPush PushOf(uint64_t id, const Source& src, KvDType wire) {
  KvPush p;
  p.transfer_id = id;
  p.kv = src.snap;
  p.wire_dtype = wire;
  p.first_token = 42;
  p.seed = 1000 + id;
  return p;
}

TEST_P(KvTransportTest, EveryLayerAndPositionArrives) {
  struct Case {
    KvDType src, wire, dst;
    int src_block, dst_block;
    float tol;  // as in kv_snapshot_test: 0 is exact
  };
  uint64_t id = 1;
  for (const Case& c :
       {Case{KvDType::kF16, KvDType::kF16, KvDType::kF16, 16, 16, 0},
        Case{KvDType::kF16, KvDType::kF16, KvDType::kF16, 16, 4, 0},
        Case{KvDType::kF16, KvDType::kF16, KvDType::kF16, 4, 16, 0},
        Case{KvDType::kF16, KvDType::kInt8, KvDType::kF16, 8, 16, 4.f / 510 + 1e-3f},
        Case{KvDType::kF16, KvDType::kInt8, KvDType::kInt8, 16, 8, 4.f / 510 + 1e-5f},
        Case{KvDType::kInt8, KvDType::kInt8, KvDType::kInt8, 4, 8, 0},
        Case{KvDType::kF32, KvDType::kF32, KvDType::kF16, 8, 4, 2.f / 2048}}) {
    SCOPED_TRACE(testing::Message() << "case " << id);
    Source src(c.src, c.src_block, static_cast<int>(id));
    Target target(MakeKv(c.dst, c.dst_block));
    // Another sequence first, so the lease's blocks are not simply 0, 1, 2...
    BlockTable other(c.dst_block);
    ASSERT_TRUE(target.kv().Append(other, 3 * c.dst_block).ok());
    auto receiver = StartReceiver(target);
    KvPusher pusher(To(*receiver));
    ASSERT_TRUE(PushAndWait(pusher, PushOf(id, src, c.wire)).ok());
    ASSERT_TRUE(target.WaitEnd(id)) << target.AbortOf(id);
    CommitFrame commit;
    BlockTable dt = target.Import(id, &commit);
    EXPECT_EQ(commit.first_token, 42);
    EXPECT_EQ(commit.seed, 1000 + id);
    const int row = kHeads * kHeadDim;
    std::vector<float> k(row), v(row), k0(row), v0(row);
    for (int layer = 0; layer < kLayers; ++layer) {
      for (int t = 0; t < kTokens; ++t) {
        ReadTokenKv(src.kv->view(), layer, src.table.SlotFor(t), k0.data(), v0.data());
        ReadTokenKv(target.kv().view(), layer, dt.SlotFor(t), k.data(), v.data());
        for (int i = 0; i < row; ++i) {
          if (c.tol == 0) {
            ASSERT_EQ(k[i], k0[i]) << layer << " " << t << " " << i;
            ASSERT_EQ(v[i], v0[i]) << layer << " " << t << " " << i;
          } else {
            ASSERT_NEAR(k[i], k0[i], c.tol) << layer << " " << t << " " << i;
            ASSERT_NEAR(v[i], v0[i], c.tol) << layer << " " << t << " " << i;
          }
        }
      }
    }
    EXPECT_EQ(pusher.stats().committed, 1u);
    EXPECT_EQ(receiver->stats().committed, 1u);
    EXPECT_EQ(receiver->open_transfers(), 0);
    ++id;
  }
}

TEST_P(KvTransportTest, NoRoomIsRetriedUntilThereIs) {
  Source src(KvDType::kF16, 16, 1);
  Target target(MakeKv(KvDType::kF16, 16));
  target.Refuse(3);
  auto receiver = StartReceiver(target);
  KvPusher pusher(To(*receiver));
  ASSERT_TRUE(PushAndWait(pusher, PushOf(7, src, KvDType::kF16)).ok());
  EXPECT_TRUE(target.WaitEnd(7));
  EXPECT_EQ(target.reserves(), 4);
  EXPECT_EQ(pusher.stats().reserve_retries, 3u);
  EXPECT_EQ(receiver->stats().refused, 3u);
}

TEST_P(KvTransportTest, NoRoomUntilTheDeadlineFailsThePushAndLeavesNoLease) {
  Source src(KvDType::kF16, 16, 1);
  // Two blocks of 16 cannot hold 29 positions: every Reserve is refused.
  Target target(MakeKv(KvDType::kF16, 16, /*num_blocks=*/1));
  auto receiver = StartReceiver(target);
  KvPusher pusher(To(*receiver));
  KvPush p = PushOf(1, src, KvDType::kF16);
  p.deadline = absl::Now() + absl::Milliseconds(300);
  auto result = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> done = result->get_future();
  p.done = [result](const absl::Status& st) { result->set_value(st); };
  pusher.Push(std::move(p));
  // While it retries, the pusher says it waits for room (what a prefill worker's admission
  // asks); once it gave up, it no longer does.
  bool seen_waiting = false;
  for (int i = 0; i < 2000 && !seen_waiting; ++i) {
    seen_waiting = pusher.waiting_for_room();
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  EXPECT_TRUE(seen_waiting);
  const absl::Status s = done.get();
  EXPECT_FALSE(pusher.waiting_for_room());
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_GT(target.reserves(), 1);
  EXPECT_EQ(target.num_leases(), 0);
  EXPECT_EQ(receiver->open_transfers(), 0);
}

// A hand-driven sender: raw frames over a raw connection.
struct RawSender {
  explicit RawSender(const KvReceiver& r) {
    auto c = Connect(r.address());
    EXPECT_TRUE(c.ok()) << c.status();
    conn = std::move(*c);
  }
  void Send(const Frame& f) {
    std::string out;
    EncodeFrame(f, &out);
    ASSERT_TRUE(conn->Write(out).ok());
  }
  // The next frame from the receiver (waits up to 10 s).
  absl::StatusOr<Frame> Next() {
    std::vector<char> buf(4096);
    const absl::Time until = absl::Now() + absl::Seconds(10);
    while (absl::Now() < until) {
      auto f = parser.Next();
      if (!f.ok()) return f.status();
      if (f->has_value()) return std::move(**f);
      auto n = conn->Read(buf.data(), buf.size(), absl::Milliseconds(100));
      if (!n.ok()) return n.status();
      if (*n > 0) {
        EXPECT_TRUE(parser.Feed(std::string_view(buf.data(), *n)).ok());
      }
    }
    return absl::DeadlineExceededError("no frame");
  }
  LayerFrame Layer(uint64_t id, const Source& src, int layer) {
    LayerFrame l{id, layer, kTokens, 0, kHeads, kHeadDim, KvDType::kF16, {}};
    src.snap->LayerPayload(layer, KvDType::kF16, &l.payload);
    return l;
  }
  std::unique_ptr<KvConnection> conn;
  FrameParser parser;
};

const ReserveFrame kReserve{5, kTokens, kLayers, kHeads, kHeadDim, KvDType::kF16};

TEST_P(KvTransportTest, PeerGoneMidTransferFreesTheLeaseAtOnce) {
  Source src(KvDType::kF16, 16, 1);
  Target target(MakeKv(KvDType::kF16, 16));
  const int free0 = target.num_free();
  auto receiver = StartReceiver(target);
  {
    RawSender s(*receiver);
    s.Send(kReserve);
    auto ok = s.Next();
    ASSERT_TRUE(ok.ok()) << ok.status();
    ASSERT_TRUE(std::holds_alternative<ReserveOkFrame>(*ok));
    EXPECT_LT(target.num_free(), free0);
    s.Send(s.Layer(5, src, 0));
  }  // connection closed with two layers and the commit unsent
  EXPECT_FALSE(target.WaitEnd(5));
  EXPECT_TRUE(absl::IsUnavailable(target.AbortOf(5))) << target.AbortOf(5);
  EXPECT_EQ(target.num_free(), free0);
  EXPECT_EQ(target.num_leases(), 0);
}

TEST_P(KvTransportTest, CorruptStreamAbortsItsTransfersOnlyAndTellsThePeer) {
  Source src(KvDType::kF16, 16, 1);
  Target target(MakeKv(KvDType::kF16, 16));
  const int free0 = target.num_free();
  auto receiver = StartReceiver(target);
  // A healthy transfer on another connection, in flight at the same time.
  RawSender healthy(*receiver);
  ReserveFrame r2 = kReserve;
  r2.transfer_id = 6;
  healthy.Send(r2);
  ASSERT_TRUE(healthy.Next().ok());

  RawSender bad(*receiver);
  bad.Send(kReserve);
  ASSERT_TRUE(bad.Next().ok());
  std::string out;
  EncodeFrame(bad.Layer(5, src, 0), &out);
  out[kFrameHeaderBytes + 40] ^= 0x5a;  // a payload byte: the checksum no longer matches
  ASSERT_TRUE(bad.conn->Write(out).ok());
  auto abort = bad.Next();
  ASSERT_TRUE(abort.ok()) << abort.status();
  ASSERT_TRUE(std::holds_alternative<AbortFrame>(*abort));
  EXPECT_EQ(std::get<AbortFrame>(*abort).code, absl::StatusCode::kDataLoss);
  EXPECT_FALSE(target.WaitEnd(5));
  EXPECT_TRUE(absl::IsDataLoss(target.AbortOf(5))) << target.AbortOf(5);

  // The other connection's transfer completes.
  for (int l = 0; l < kLayers; ++l) healthy.Send(healthy.Layer(6, src, l));
  healthy.Send(CommitFrame{6, 1, {}});
  EXPECT_TRUE(target.WaitEnd(6));
  CommitFrame c;
  BlockTable t = target.Import(6, &c);
  target.kv().Free(t);
  EXPECT_EQ(target.num_free(), free0);
}

TEST_P(KvTransportTest, OutOfOrderFramesAbortThatTransferOnly) {
  Source src(KvDType::kF16, 16, 1);
  Target target(MakeKv(KvDType::kF16, 16));
  const int free0 = target.num_free();
  auto receiver = StartReceiver(target);
  RawSender s(*receiver);
  s.Send(kReserve);
  ASSERT_TRUE(s.Next().ok());
  s.Send(CommitFrame{5, 1, {}});  // before any layer
  auto abort = s.Next();
  ASSERT_TRUE(abort.ok() && std::holds_alternative<AbortFrame>(*abort));
  EXPECT_EQ(std::get<AbortFrame>(*abort).code, absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(target.WaitEnd(5));
  EXPECT_EQ(target.num_free(), free0);
  // A layer of a transfer that does not exist is answered, and the connection goes on.
  s.Send(s.Layer(99, src, 0));
  abort = s.Next();
  ASSERT_TRUE(abort.ok() && std::holds_alternative<AbortFrame>(*abort));
  EXPECT_EQ(std::get<AbortFrame>(*abort).transfer_id, 99u);
  // A layer of the wrong shape for its reservation.
  ReserveFrame r = kReserve;
  r.transfer_id = 8;
  s.Send(r);
  ASSERT_TRUE(s.Next().ok());
  LayerFrame l = s.Layer(8, src, 0);
  l.layer = kLayers;  // out of range
  s.Send(l);
  abort = s.Next();
  ASSERT_TRUE(abort.ok() && std::holds_alternative<AbortFrame>(*abort));
  EXPECT_EQ(std::get<AbortFrame>(*abort).code, absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(target.num_free(), free0);
  EXPECT_EQ(receiver->open_transfers(), 0);
}

TEST_P(KvTransportTest, StalledSenderIsAbortedAtTheDeadline) {
  Target target(MakeKv(KvDType::kF16, 16));
  const int free0 = target.num_free();
  KvReceiverConfig config;
  config.transfer_timeout = absl::Milliseconds(150);
  auto receiver = StartReceiver(target, config);
  RawSender s(*receiver);
  s.Send(kReserve);
  ASSERT_TRUE(s.Next().ok());
  auto abort = s.Next();  // nothing more is sent
  ASSERT_TRUE(abort.ok() && std::holds_alternative<AbortFrame>(*abort));
  EXPECT_EQ(std::get<AbortFrame>(*abort).code, absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(absl::IsDeadlineExceeded(target.AbortOf(5)));
  EXPECT_EQ(target.num_free(), free0);
}

TEST_P(KvTransportTest, StopsAbortOpenTransfersAndFailQueuedPushes) {
  Target target(MakeKv(KvDType::kF16, 16));
  const int free0 = target.num_free();
  auto receiver = StartReceiver(target);
  RawSender s(*receiver);
  s.Send(kReserve);
  ASSERT_TRUE(s.Next().ok());
  EXPECT_EQ(receiver->open_transfers(), 1);
  receiver->Stop();
  EXPECT_TRUE(absl::IsUnavailable(target.AbortOf(5))) << target.AbortOf(5);
  EXPECT_EQ(target.num_free(), free0);

  // A pusher whose peer never answers: the push in flight and the queued ones fail on Stop.
  auto quiet = Listen();
  ASSERT_TRUE(quiet.ok());
  KvPusher pusher([address = (*quiet)->address()] { return Connect(address); });
  Source src(KvDType::kF16, 16, 1);
  std::vector<std::future<absl::Status>> results;
  for (uint64_t id = 1; id <= 3; ++id) {
    auto r = std::make_shared<std::promise<absl::Status>>();
    results.push_back(r->get_future());
    KvPush p = PushOf(id, src, KvDType::kF16);
    p.done = [r](const absl::Status& st) { r->set_value(st); };
    pusher.Push(std::move(p));
  }
  auto accepted = (*quiet)->Accept(absl::Seconds(5));  // connected, never answered
  ASSERT_TRUE(accepted.ok() && *accepted != nullptr);
  pusher.Stop();
  for (auto& r : results) EXPECT_TRUE(absl::IsUnavailable(r.get()));
  EXPECT_EQ(pusher.stats().failed, 3u);
}

TEST_P(KvTransportTest, WithASecretOnlyPeersThatKnowItAreServed) {
  Source src(KvDType::kF16, 16, 1);
  Target target(MakeKv(KvDType::kF16, 16));
  KvReceiverConfig config;
  config.secret = "s3cret";
  int refusals = 0;
  std::mutex mu;
  config.on_refused_peer = [&](const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_TRUE(absl::IsUnauthenticated(s)) << s;
    ++refusals;
  };
  auto receiver = StartReceiver(target, config);
  for (const std::string& secret : {std::string(), std::string("wrong!"), std::string("s3cre")}) {
    KvPusher pusher([address = receiver->address(), secret] { return Connect(address, secret); });
    KvPush p = PushOf(1, src, KvDType::kF16);
    const absl::Status s = PushAndWait(pusher, std::move(p));
    EXPECT_TRUE(absl::IsUnavailable(s)) << "secret '" << secret << "': " << s;
  }
  EXPECT_EQ(target.reserves(), 0);
  KvPusher good([address = receiver->address()] { return Connect(address, "s3cret"); });
  ASSERT_TRUE(PushAndWait(good, PushOf(2, src, KvDType::kF16)).ok());
  EXPECT_TRUE(target.WaitEnd(2));
  EXPECT_EQ(receiver->stats().refused_peers, 3u);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(refusals, 3);
}

TEST_P(KvTransportTest, ConnectionRefusedFailsThePushClearly) {
  auto l = Listen();
  ASSERT_TRUE(l.ok());
  const std::string address = (*l)->address();
  l->reset();  // nobody listens there now
  KvPusher pusher([address] { return Connect(address); });
  Source src(KvDType::kF16, 16, 1);
  const absl::Status s = PushAndWait(pusher, PushOf(1, src, KvDType::kF16));
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(s.message().find(address), std::string::npos) << s;
}

INSTANTIATE_TEST_SUITE_P(Transports, KvTransportTest, testing::Values("tcp", "shm"),
                         [](const testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
}  // namespace tandem::kvcache
