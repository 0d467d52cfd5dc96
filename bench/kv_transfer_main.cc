// tandem-bench-kv-transfer: the in-process KV handover's data path on SmolLM2-135M's KV shape
// (30 layers, 3 KV heads, head_dim 64): KvSnapshot::Take (out of the prefill cache) and
// KvSnapshot::WriteTo (into the decode cache), for prompts of several lengths, same and
// different block sizes, f16 and int8 destinations. Figures: the KV bytes of the sequence,
// microseconds for each half and GB/s of KV moved end to end (median of --reps).
// One thread, as on the prefill and decode engine threads. Blocks of both sequences are
// scattered over their pools, as after a while of serving.
//
// Then the handover between processes over each transport (--transports: loopback TCP and
// shared memory, both ends in this process on their own threads, as a prefill and a decode
// process would run them): "bytes" streams a layer's worth of bytes at a time over one
// connection (the transport alone: Write on one thread, Read into a 1 MiB buffer on another,
// as KvReceiver does); "push" runs the whole protocol, KvPusher to KvReceiver into a
// KvManager (frames, checksums, re-paging), for one sequence of --wire_tokens positions.
// Connections are made once per figure and reused, as the pusher does. Figures: MB moved and
// GB/s (median of --wire_reps).
//
//   tandem-bench-kv-transfer [--tokens 128,512,2048] [--reps 21] [--transports tcp,shm]
//                            [--wire_tokens 512,2048] [--wire_reps 7] [--shm_ring_kib 4096]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "common/check.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvcache/kv_copy.h"
#include "kvcache/kv_manager.h"
#include "kvcache/transfer/kv_pusher.h"
#include "kvcache/transfer/kv_receiver.h"
#include "kvcache/transfer/kv_shm.h"
#include "kvcache/transfer/kv_snapshot.h"
#include "kvcache/transfer/kv_tcp.h"

ABSL_FLAG(std::vector<std::string>, tokens, std::vector<std::string>({"128", "512", "2048"}),
          "prompt lengths (positions handed over)");
ABSL_FLAG(int, reps, 21, "timed handovers per figure (the median is reported)");
ABSL_FLAG(std::vector<std::string>, transports, std::vector<std::string>({"tcp", "shm"}),
          "transports between processes to compare (empty: none)");
ABSL_FLAG(std::vector<std::string>, wire_tokens, std::vector<std::string>({"512", "2048"}),
          "prompt lengths handed over between processes");
ABSL_FLAG(int, wire_reps, 7, "timed transfers per transport figure (the median is reported)");
ABSL_FLAG(int, shm_ring_kib, 4096, "shm: each direction's ring, KiB (a power of two)");

namespace tandem::bench {
namespace {

using kernels::KvDType;

constexpr int kLayers = 30, kKvHeads = 3, kHeadDim = 64;

std::unique_ptr<kvcache::KvManager> Manager(kernels::Backend& b, KvDType dtype, int block,
                                            int tokens) {
  kvcache::KvCacheConfig c;
  c.n_layers = kLayers;
  c.n_kv_heads = kKvHeads;
  c.head_dim = kHeadDim;
  c.block_size = block;
  c.dtype = dtype;
  c.num_blocks = 4 * (tokens / block + 1);
  auto m = kvcache::KvManager::Create(c, b);
  TANDEM_CHECK_OK(m.status());
  return std::move(*m);
}

// A table of `tokens` positions on blocks scattered over the pool (a decoy table holds every
// other block while it is filled), its KV random.
kvcache::BlockTable Scattered(kvcache::KvManager& kv, int tokens, std::mt19937& rng) {
  kvcache::BlockTable decoy(kv.block_size()), table(kv.block_size());
  const int blocks = (tokens + kv.block_size() - 1) / kv.block_size();
  for (int i = 0; i < blocks; ++i) {
    TANDEM_CHECK_OK(kv.Append(decoy, (i + 1) * kv.block_size()));
    TANDEM_CHECK_OK(kv.Append(table, std::min(tokens, (i + 1) * kv.block_size())));
  }
  kv.Free(decoy);
  table.SetNumTokens(tokens);
  std::uniform_real_distribution<float> dist(-2.f, 2.f);
  std::vector<float> k(kKvHeads * kHeadDim), v(kKvHeads * kHeadDim);
  for (int layer = 0; layer < kLayers; ++layer) {
    for (int t = 0; t < tokens; ++t) {
      for (float& x : k) x = dist(rng);
      for (float& x : v) x = dist(rng);
      kvcache::WriteTokenKv(kv.view(), layer, table.SlotFor(t), k.data(), v.data());
    }
  }
  return table;
}

double Median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

void RunWire(kernels::Backend& backend);

void Run() {
  auto backend = kernels::cpu::CreateCpuBackend(kernels::cpu::CpuBackendConfig{});
  TANDEM_CHECK_OK(backend.status());

  struct Case {
    const char* name;
    KvDType src, dst;
    int src_block, dst_block;
  };
  const Case cases[] = {{"f16 16->16", KvDType::kF16, KvDType::kF16, 16, 16},
                        {"f16 16->32", KvDType::kF16, KvDType::kF16, 16, 32},
                        {"f16->int8 16->16", KvDType::kF16, KvDType::kInt8, 16, 16}};
  std::printf("| case | tokens | KV bytes (f16) | take (us) | write (us) | GB/s end to end |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: | ---: |\n");
  std::mt19937 rng(1);
  for (const std::string& ts : absl::GetFlag(FLAGS_tokens)) {
    int tokens = 0;
    TANDEM_CHECK(absl::SimpleAtoi(ts, &tokens) && tokens > 0);
    for (const Case& c : cases) {
      auto src = Manager(**backend, c.src, c.src_block, tokens);
      auto dst = Manager(**backend, c.dst, c.dst_block, tokens);
      const kvcache::BlockTable st = Scattered(*src, tokens, rng);
      const kvcache::BlockTable dt = Scattered(*dst, tokens, rng);
      std::vector<double> take, write;
      size_t bytes = 0;
      for (int rep = 0; rep < absl::GetFlag(FLAGS_reps) + 1; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        auto snap = kvcache::KvSnapshot::Take(*src, st, tokens);
        const auto t1 = std::chrono::steady_clock::now();
        TANDEM_CHECK_OK(snap.status());
        TANDEM_CHECK_OK((*snap)->WriteTo(*dst, dt));
        const auto t2 = std::chrono::steady_clock::now();
        bytes = (*snap)->bytes();
        if (rep == 0) continue;  // warm-up
        take.push_back(std::chrono::duration<double>(t1 - t0).count());
        write.push_back(std::chrono::duration<double>(t2 - t1).count());
      }
      const double tk = Median(take), wr = Median(write);
      std::printf("| %s | %d | %.2f MB | %.0f | %.0f | %.2f |\n", c.name, tokens, bytes / 1e6,
                  tk * 1e6, wr * 1e6, bytes / (tk + wr) / 1e9);
    }
  }
  RunWire(**backend);
}

absl::StatusOr<std::unique_ptr<kvcache::KvListener>> Listen(const std::string& transport) {
  if (transport == "shm") return kvcache::ListenShm("");
  return kvcache::ListenTcp("127.0.0.1", 0);
}

absl::StatusOr<std::unique_ptr<kvcache::KvConnection>> Connect(const std::string& transport,
                                                               const std::string& address) {
  if (transport == "shm") {
    return kvcache::ConnectShm(address, absl::Seconds(5), "",
                               size_t{1024} * absl::GetFlag(FLAGS_shm_ring_kib));
  }
  return kvcache::ConnectTcp(address, absl::Seconds(5));
}

// The decode side of "push": leases blocks of a KvManager and frees them again on commit.
class Sink : public kvcache::KvReceiveTarget {
 public:
  explicit Sink(kvcache::KvManager& kv) : kv_(kv) {}
  absl::StatusOr<kvcache::KvReservation> Reserve(const kvcache::ReserveFrame& r,
                                                 absl::Time expires) override {
    std::lock_guard<std::mutex> lock(mu_);
    const int blocks = (r.n_tokens + kv_.block_size() - 1) / kv_.block_size();
    TANDEM_ASSIGN_OR_RETURN(kvcache::KvLease lease, kv_.Reserve(blocks, expires));
    kvcache::KvReservation res;
    res.lease_id = lease.id;
    res.view = kv_.view();
    res.table = kvcache::BlockTable::Adopt(kv_.block_size(), lease.blocks, r.n_tokens);
    return res;
  }
  void Commit(const kvcache::ReserveFrame&, const kvcache::KvReservation& lease,
              const kvcache::CommitFrame&) override {
    std::lock_guard<std::mutex> lock(mu_);
    kv_.Abort(lease.lease_id);
  }
  void Abort(uint64_t, uint64_t lease_id, const absl::Status& why) override {
    std::lock_guard<std::mutex> lock(mu_);
    kv_.Abort(lease_id);
    std::fprintf(stderr, "transfer aborted: %s\n", why.ToString().c_str());
    std::abort();
  }

 private:
  std::mutex mu_;
  kvcache::KvManager& kv_;
};

// Seconds to stream `layers` buffers of `layer_bytes`, for each of `reps` + 1 rounds over one
// connection (the first round, which also faults the buffers in, is left out).
std::vector<double> StreamBytes(const std::string& transport, size_t layer_bytes, int layers,
                                int reps) {
  auto l = Listen(transport);
  TANDEM_CHECK_OK(l.status());
  auto client = Connect(transport, (*l)->address());
  TANDEM_CHECK_OK(client.status());
  auto server = (*l)->Accept(absl::Seconds(5));
  TANDEM_CHECK_OK(server.status());
  TANDEM_CHECK(*server != nullptr);
  const std::string layer(layer_bytes, 'k');
  const size_t total = layer_bytes * layers;
  std::vector<double> seconds;
  for (int rep = 0; rep < reps + 1; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    std::thread reader([&] {
      std::vector<char> buf(1 << 20);
      size_t got = 0;
      while (got < total) {
        auto n = (*server)->Read(buf.data(), buf.size(), absl::Seconds(10));
        TANDEM_CHECK_OK(n.status());
        got += *n;
      }
    });
    for (int i = 0; i < layers; ++i) TANDEM_CHECK_OK((*client)->Write(layer));
    reader.join();
    if (rep > 0) {
      seconds.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  return seconds;
}

void RunWire(kernels::Backend& backend) {
  const std::vector<std::string> transports = absl::GetFlag(FLAGS_transports);
  if (transports.empty()) return;
  std::printf("\n| transport | what | tokens | MB moved | ms | GB/s |\n");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: |\n");
  std::mt19937 rng(2);
  for (const std::string& ts : absl::GetFlag(FLAGS_wire_tokens)) {
    int tokens = 0;
    TANDEM_CHECK(absl::SimpleAtoi(ts, &tokens) && tokens > 0);
    auto src = Manager(backend, KvDType::kF16, 16, tokens);
    const kvcache::BlockTable st = Scattered(*src, tokens, rng);
    auto snap_or = kvcache::KvSnapshot::Take(*src, st, tokens);
    TANDEM_CHECK_OK(snap_or.status());
    std::shared_ptr<const kvcache::KvSnapshot> snap(std::move(*snap_or));
    std::string payload;
    snap->LayerPayload(0, KvDType::kF16, &payload);
    for (const std::string& transport : transports) {
      TANDEM_CHECK(transport == "tcp" || transport == "shm");
      const double bytes_s =
          Median(StreamBytes(transport, payload.size(), kLayers, absl::GetFlag(FLAGS_wire_reps)));
      const size_t stream_bytes = payload.size() * kLayers;
      std::printf("| %s | bytes | %d | %.2f | %.2f | %.2f |\n", transport.c_str(), tokens,
                  stream_bytes / 1e6, bytes_s * 1e3, stream_bytes / bytes_s / 1e9);

      auto dst = Manager(backend, KvDType::kF16, 16, tokens);
      Sink sink(*dst);
      auto l = Listen(transport);
      TANDEM_CHECK_OK(l.status());
      auto receiver = kvcache::KvReceiver::Start(std::move(*l), sink);
      kvcache::KvPusher pusher(
          [transport, address = receiver->address()] { return Connect(transport, address); });
      std::vector<double> push;
      for (int rep = 0; rep < absl::GetFlag(FLAGS_wire_reps) + 1; ++rep) {
        kvcache::KvPush p;
        p.transfer_id = rep + 1;
        p.kv = snap;
        p.wire_dtype = KvDType::kF16;
        std::promise<absl::Status> done;
        p.done = [&done](const absl::Status& s) { done.set_value(s); };
        const auto t0 = std::chrono::steady_clock::now();
        pusher.Push(std::move(p));
        TANDEM_CHECK_OK(done.get_future().get());
        // Committed on the decode side too (the pusher is done once Commit is written).
        while (receiver->stats().committed < static_cast<uint64_t>(rep + 1)) {
          std::this_thread::yield();
        }
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (rep > 0) push.push_back(s);  // the first one also connects
      }
      const double push_s = Median(push);
      const size_t push_bytes = receiver->stats().bytes / (absl::GetFlag(FLAGS_wire_reps) + 1);
      std::printf("| %s | push | %d | %.2f | %.2f | %.2f |\n", transport.c_str(), tokens,
                  push_bytes / 1e6, push_s * 1e3, push_bytes / push_s / 1e9);
      pusher.Stop();
      receiver->Stop();
    }
  }
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("KV handover data path: KvSnapshot take and write, GB/s");
  absl::ParseCommandLine(argc, argv);
  tandem::bench::Run();
  return 0;
}
