// The separate-process roles' engine side, wired in one test process over loopback TCP: a
// prefill instance whose RemoteHandoff pushes KV (layer by layer, or after the prefill step)
// to a KvReceiver in front of a decode instance, whose KvArrivals builds each sequence from
// its request and the commit, as a decode worker does; or, direct, to a KvNcclReceiver over
// the byte data plane (the protocol of --kv-transport=direct and nccl: the prefill cache's
// blocks, held until the push is done, go straight into the reserved ones). The first token
// comes from the prefill instance's sink, the rest from the decode instance's; together they
// equal one colocated instance's output, greedy and seeded, and both caches end whole.
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "gtest/gtest.h"
#include "kvcache/transfer/kv_data_plane.h"
#include "kvcache/transfer/kv_nccl_transport.h"
#include "kvcache/transfer/kv_receiver.h"
#include "kvcache/transfer/kv_tcp.h"
#include "model/gguf_file.h"
#include "scheduler/engine_instance.h"
#include "scheduler/kv_arrivals.h"
#include "scheduler/remote_handoff.h"
#include "tests/scheduler/recording_sink.h"
#include "tests/support/test_model.h"

namespace tandem::scheduler {
namespace {

class RemoteRolesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    testing::TestModelSpec spec;
    spec.n_layers = 3;
    spec.hidden = 64;
    spec.n_heads = 8;
    spec.n_kv_heads = 2;
    spec.ffn = 96;
    spec.context_length = 256;
    spec.weight_type = kernels::DType::kQ8_0;
    spec.weight_std = 0.2f;
    spec.embd_std = 0.5f;
    path_ = new std::string(
        absl::StrCat(::testing::TempDir(), "/remote_roles_test.", getpid(), ".gguf"));
    ASSERT_TRUE(testing::WriteTestModel(spec, *path_).ok());
  }
  static void TearDownTestSuite() {
    std::remove(path_->c_str());
    delete path_;
  }

  static EngineInstanceConfig Instance(InstanceRole role, int block_size) {
    EngineInstanceConfig c;
    c.role = role;
    c.name = InstanceRoleName(role);
    c.backend.cpu.threads = 1;
    c.scheduler.max_num_seqs = 4;
    c.scheduler.max_batch_tokens = 24;  // prompts of up to ~40 tokens take several chunks
    c.block_size = block_size;
    c.eos_token_id = 2;
    c.kv_cache_bytes = size_t{1} << 20;
    c.profile = false;
    return c;
  }

  static std::string* path_;
};
std::string* RemoteRolesTest::path_ = nullptr;

// The decode worker's receiving end, of either protocol.
struct DecodeEnd {
  std::unique_ptr<kvcache::KvReceiver> tcp;
  std::unique_ptr<kvcache::KvNcclReceiver> direct;

  std::string address() const { return tcp ? tcp->address() : direct->address(); }
  uint64_t committed() const { return tcp ? tcp->stats().committed : direct->stats().committed; }
  int open_transfers() const { return tcp ? tcp->open_transfers() : direct->open_transfers(); }
  void Stop() {
    if (tcp) tcp->Stop();
    if (direct) direct->Stop();
  }
};

// `planes` null: the frame protocol (KvReceiver); else the direct one over `planes`.
DecodeEnd StartDecodeEnd(KvArrivals& arrivals, const EngineInstance& decode,
                         kvcache::KvDataPlaneFactory* planes) {
  DecodeEnd end;
  auto listener = kvcache::ListenTcp("127.0.0.1", 0);
  TANDEM_CHECK(listener.ok());
  if (planes == nullptr) {
    end.tcp = kvcache::KvReceiver::Start(std::move(*listener), arrivals);
  } else {
    kvcache::KvNcclReceiverConfig rc;
    rc.layout = decode.direct_kv_layout();
    end.direct = kvcache::KvNcclReceiver::Start(std::move(*listener), arrivals, *planes, rc);
  }
  return end;
}

RemoteHandoffConfig HandoffConfig(kvcache::KvDataPlaneFactory* planes, bool layer_wise) {
  RemoteHandoffConfig hc;
  hc.connect = [](const std::string& address) {
    return kvcache::ConnectTcp(address, absl::Seconds(5));
  };
  hc.layer_wise = layer_wise;
  hc.direct_planes = planes;
  return hc;
}

// Waits up to 30 s for `done`.
template <typename F>
bool Eventually(F done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// What a worker pair does with each of `prompts` (ids first_id, first_id + 1, ...): the decode
// side expects the request, the prefill side gets it routed to `address`; the same request also
// goes to `colocated`. Then the prefill side's first token followed by the decode side's tokens
// must be the colocated output. `sampling(i)` gives prompt i's sampling parameters.
void RunAndCompare(EngineInstance& colocated, EngineInstance& prefill, RemoteHandoff& handoff,
                   KvArrivals& arrivals, const std::string& address,
                   const std::vector<std::vector<int32_t>>& prompts, uint64_t first_id,
                   int max_tokens, const std::function<model::SamplingParams(int i)>& sampling) {
  std::vector<std::shared_ptr<RecordingSink>> want, first, rest;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const uint64_t id = first_id + i;
    auto request = [&](std::shared_ptr<SequenceSink> sink) {
      SequenceRequest r;
      r.id = id;
      r.prompt = prompts[i];
      r.max_tokens = max_tokens;
      r.sink = std::move(sink);
      r.sampling = sampling(static_cast<int>(i));
      return r;
    };
    want.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE(colocated.Submit(request(want.back())).ok());
    // As a decode worker does: the request first, so it expects the KV.
    rest.push_back(std::make_shared<RecordingSink>());
    arrivals.ExpectRequest(id, request(rest.back()));
    first.push_back(std::make_shared<RecordingSink>());
    handoff.Route(id, address, [sink = first.back()](const absl::Status& s) {
      // The prefill side's end: handed off (or why not).
      sink->OnFinish(SequenceEnd::kLength, s);
    });
    ASSERT_TRUE(prefill.Submit(request(first.back())).ok());
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    want[i]->Wait();
    first[i]->Wait();
    rest[i]->Wait();
    ASSERT_TRUE(first[i]->status().ok()) << first[i]->status();
    EXPECT_EQ(rest[i]->end(), SequenceEnd::kLength) << rest[i]->status();
    std::vector<int32_t> got = first[i]->tokens();
    ASSERT_EQ(got.size(), 1u);
    for (int32_t t : rest[i]->tokens()) got.push_back(t);
    EXPECT_EQ(got, want[i]->tokens()) << "prompt " << i;
  }
}

// Every block a direct push held is back (returned on the prefill engine thread): the prefill
// cache is whole while the instance still runs.
void ExpectHeldBlocksBack(const RemoteHandoff& handoff, const EngineInstance& prefill) {
  EXPECT_TRUE(Eventually([&] { return handoff.held_blocks() == 0; }));
  EXPECT_TRUE(Eventually([&] {
    const InstanceStats p = prefill.stats();
    return p.kv_blocks_free == p.kv_blocks_total;
  }));
}

// Stops a pair in a worker's order (prefill instance, its pushes, the receiver, the unpaired
// arrivals, the decode instance); both caches end whole.
void StopPairExpectingWholeCaches(EngineInstance& prefill, RemoteHandoff& handoff,
                                  DecodeEnd& receiver, KvArrivals& arrivals,
                                  EngineInstance& decode) {
  prefill.Stop();
  handoff.Stop();
  receiver.Stop();
  arrivals.Close();
  const InstanceStats p = prefill.stats(), d = decode.stats();
  EXPECT_EQ(p.kv_blocks_free, p.kv_blocks_total);
  EXPECT_EQ(d.kv_blocks_free, d.kv_blocks_total);
  decode.Stop();
}

std::vector<std::vector<int32_t>> PromptSet() {
  std::vector<std::vector<int32_t>> out;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p;
    for (int t = 0; t < 5 + 7 * i; ++t) p.push_back(3 + (i * 31 + t * 7) % 120);
    out.push_back(p);
  }
  return out;
}

TEST_F(RemoteRolesTest, PrefillAndDecodeRolesEqualColocated) {
  auto file = model::GgufFile::Open(*path_);
  ASSERT_TRUE(file.ok());
  auto colocated = EngineInstance::Create(Instance(InstanceRole::kColocated, 4), **file);
  ASSERT_TRUE(colocated.ok()) << colocated.status();
  const auto prompts = PromptSet();
  const std::unique_ptr<kvcache::KvDataPlaneFactory> bytes = kvcache::MakeByteDataPlaneFactory();
  const std::pair<bool, bool> cases[] = {
      {false, true}, {false, false}, {true, true}, {true, false}};
  for (const auto& [direct, layer_wise] : cases) {
    SCOPED_TRACE(absl::StrCat(direct ? "direct, " : "frames, ",
                              layer_wise ? "layer-wise push" : "push after prefill"));
    kvcache::KvDataPlaneFactory* planes = direct ? bytes.get() : nullptr;
    // The decode side: instance, arrivals, receiver. Same block size as the others: attention
    // sums over blocks, so another block size changes the last bits of the logits, enough to
    // flip a sampled token now and then (greedy held in a trial); that the transfer itself
    // re-pages exactly is kv_transport_test's.
    auto decode = EngineInstance::Create(Instance(InstanceRole::kDecode, 4), **file);
    ASSERT_TRUE(decode.ok()) << decode.status();
    KvArrivals arrivals(**decode);
    DecodeEnd receiver = StartDecodeEnd(arrivals, **decode, planes);
    // The prefill side.
    RemoteHandoff handoff(HandoffConfig(planes, layer_wise));
    EngineInstanceConfig pc = Instance(InstanceRole::kPrefill, 4);
    pc.handoff = &handoff;
    auto prefill = EngineInstance::Create(pc, (*decode)->weights());
    ASSERT_TRUE(prefill.ok()) << prefill.status();

    for (const bool sampled : {false, true}) {
      SCOPED_TRACE(sampled ? "sampled" : "greedy");
      RunAndCompare(**colocated, **prefill, handoff, arrivals, receiver.address(), prompts,
                    sampled ? 1000 : 1, 10, [sampled](int i) {
                      model::SamplingParams sp;
                      sp.temperature = 0;  // greedy
                      if (sampled) {
                        sp.temperature = 0.9f;
                        sp.has_seed = true;
                        sp.seed = 50 + i;
                      }
                      return sp;
                    });
    }
    // A pusher counts a push once its Commit is written, which the decode side may act on (and
    // finish the sequence) first: wait for the count.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (handoff.stats().committed < 2 * prompts.size() &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    const kvcache::KvPusherStats ps = handoff.stats();
    EXPECT_EQ(ps.committed, 2 * prompts.size());
    EXPECT_EQ(ps.failed, 0u);
    EXPECT_EQ(receiver.committed(), 2 * prompts.size());
    EXPECT_EQ(arrivals.num_waiting(), 0);
    ExpectHeldBlocksBack(handoff, **prefill);  // direct: returned on the engine thread
    // The sampled round repeated the greedy round's prompts: the prefill side took their whole
    // blocks from its prefix cache, and what it pushed (layer by layer too) was still whole.
    EXPECT_GT((*prefill)->stats().prefix_hit_tokens, 0u);
    // A one-token request ends on the prefill side and moves nothing.
    auto one = std::make_shared<RecordingSink>();
    SequenceRequest r;
    r.id = 9999;
    r.prompt = prompts[2];
    r.max_tokens = 1;
    r.sampling.temperature = 0;
    r.sink = one;
    handoff.Route(9999, receiver.address(), [](const absl::Status&) {});
    ASSERT_TRUE((*prefill)->Submit(std::move(r)).ok());
    one->Wait();
    EXPECT_EQ(one->tokens().size(), 1u);
    EXPECT_EQ(handoff.stats().committed, 2 * prompts.size());
    handoff.Forget(9999);

    // (The prefill side may count a prompt's last token run alone as a decode token: the
    // scheduler's step shape does. The decode side runs no prompt.)
    EXPECT_EQ((*decode)->stats().prefill_tokens, 0u);
    StopPairExpectingWholeCaches(**prefill, handoff, receiver, arrivals, **decode);
  }
}

// A prompt that ends at its first token on the prefill side (EOS there) after its layer-wise
// push began: the push is called off (its `done` hears Cancelled, which a worker ignores: the
// sink reports the end), the decode side frees the lease, and nothing is left anywhere (direct:
// the prefill blocks the push held come back too).
TEST_F(RemoteRolesTest, ALayerWisePushIsCalledOffWhenTheSequenceEndsAtItsFirstToken) {
  auto file = model::GgufFile::Open(*path_);
  ASSERT_TRUE(file.ok());
  const std::unique_ptr<kvcache::KvDataPlaneFactory> bytes = kvcache::MakeByteDataPlaneFactory();
  for (kvcache::KvDataPlaneFactory* planes :
       {static_cast<kvcache::KvDataPlaneFactory*>(nullptr), bytes.get()}) {
    SCOPED_TRACE(planes ? "direct" : "frames");
    const std::vector<int32_t> prompt = PromptSet()[3];
    // Its greedy first token, made the prefill side's EOS.
    auto colocated = EngineInstance::Create(Instance(InstanceRole::kColocated, 4), **file);
    ASSERT_TRUE(colocated.ok());
    auto probe = std::make_shared<RecordingSink>();
    SequenceRequest pr;
    pr.prompt = prompt;
    pr.max_tokens = 1;
    pr.sampling.temperature = 0;
    pr.sink = probe;
    ASSERT_TRUE((*colocated)->Submit(std::move(pr)).ok());
    probe->Wait();
    ASSERT_EQ(probe->tokens().size(), 1u);
    const int32_t first = probe->tokens()[0];

    auto decode = EngineInstance::Create(Instance(InstanceRole::kDecode, 4), **file);
    ASSERT_TRUE(decode.ok());
    KvArrivals arrivals(**decode);
    DecodeEnd receiver = StartDecodeEnd(arrivals, **decode, planes);
    RemoteHandoff handoff(HandoffConfig(planes, /*layer_wise=*/true));
    EngineInstanceConfig pc = Instance(InstanceRole::kPrefill, 4);
    pc.handoff = &handoff;
    pc.eos_token_id = first;
    auto prefill = EngineInstance::Create(pc, (*decode)->weights());
    ASSERT_TRUE(prefill.ok());

    auto sink = std::make_shared<RecordingSink>();
    std::mutex mu;
    std::vector<absl::Status> dones;
    handoff.Route(7, receiver.address(), [&](const absl::Status& s) {
      std::lock_guard<std::mutex> lock(mu);
      dones.push_back(s);
    });
    SequenceRequest r;
    r.id = 7;
    r.prompt = prompt;
    r.max_tokens = 10;
    r.sampling.temperature = 0;
    r.sink = sink;
    ASSERT_TRUE((*prefill)->Submit(std::move(r)).ok());
    sink->Wait();
    EXPECT_EQ(sink->end(), SequenceEnd::kStopToken) << sink->status();
    for (int i = 0; i < 2000 && handoff.stats().cancelled == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_EQ(handoff.stats().cancelled, 1u);
    EXPECT_EQ(handoff.stats().committed, 0u);
    {
      std::lock_guard<std::mutex> lock(mu);
      ASSERT_EQ(dones.size(), 1u);
      EXPECT_TRUE(absl::IsCancelled(dones[0])) << dones[0];
    }
    // The decode side heard the abort: no lease, no open transfer.
    for (int i = 0; i < 2000 && receiver.open_transfers() > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_EQ(receiver.open_transfers(), 0);
    ExpectHeldBlocksBack(handoff, **prefill);
    StopPairExpectingWholeCaches(**prefill, handoff, receiver, arrivals, **decode);
  }
}

// Direct: a push still under way when its prefill instance stops (here: waiting for room on a
// decode instance too small for the prompt) ends as the instance stops, before its cache goes:
// the route hears Unavailable, and the blocks it held are back in the cache once Stop returns.
TEST_F(RemoteRolesTest, ADirectPushEndsWhenItsPrefillInstanceStops) {
  auto file = model::GgufFile::Open(*path_);
  ASSERT_TRUE(file.ok());
  const std::unique_ptr<kvcache::KvDataPlaneFactory> bytes = kvcache::MakeByteDataPlaneFactory();
  EngineInstanceConfig dc = Instance(InstanceRole::kDecode, 4);
  dc.kv_cache_bytes = 4096;  // 5 blocks of 4 tokens at 192 bytes a token: 20 tokens
  auto decode = EngineInstance::Create(dc, **file);
  ASSERT_TRUE(decode.ok()) << decode.status();
  ASSERT_LT((*decode)->kv_capacity_tokens(), 40);
  KvArrivals arrivals(**decode);
  DecodeEnd receiver = StartDecodeEnd(arrivals, **decode, bytes.get());
  for (const bool layer_wise : {true, false}) {
    SCOPED_TRACE(layer_wise ? "layer-wise push" : "push after prefill");
    RemoteHandoff handoff(HandoffConfig(bytes.get(), layer_wise));
    EngineInstanceConfig pc = Instance(InstanceRole::kPrefill, 4);
    pc.handoff = &handoff;
    auto prefill = EngineInstance::Create(pc, (*decode)->weights());
    ASSERT_TRUE(prefill.ok());
    std::mutex mu;
    std::vector<absl::Status> dones;
    handoff.Route(11, receiver.address(), [&](const absl::Status& s) {
      std::lock_guard<std::mutex> lock(mu);
      dones.push_back(s);
    });
    auto sink = std::make_shared<RecordingSink>();
    SequenceRequest r;
    r.id = 11;
    r.prompt = PromptSet()[5];  // 40 tokens
    r.max_tokens = 10;
    r.sampling.temperature = 0;
    r.sink = sink;
    ASSERT_TRUE((*prefill)->Submit(std::move(r)).ok());
    // Handed off, its blocks held, its Reserve refused for room and retried.
    ASSERT_TRUE(Eventually([&] { return handoff.waiting_for_room() > 0; }));
    EXPECT_GT(handoff.held_blocks(), 0);
    const InstanceStats before = (*prefill)->stats();
    EXPECT_LT(before.kv_blocks_free, before.kv_blocks_total);
    (*prefill)->Stop();
    EXPECT_EQ(handoff.held_blocks(), 0);
    const InstanceStats p = (*prefill)->stats();
    EXPECT_EQ(p.kv_blocks_free, p.kv_blocks_total);
    {
      std::lock_guard<std::mutex> lock(mu);
      ASSERT_EQ(dones.size(), 1u);
      EXPECT_TRUE(absl::IsUnavailable(dones[0])) << dones[0];
    }
    handoff.Stop();
  }
  receiver.Stop();
  arrivals.Close();
  const InstanceStats d = (*decode)->stats();
  EXPECT_EQ(d.kv_blocks_free, d.kv_blocks_total);
  (*decode)->Stop();
}

// Direct, on a sliding-window model (Gemma 3's shape in small: local layers keep 8 positions,
// in layer groups of their own) with an int8 cache: the prefill side holds the pages of every
// group a sequence's table still has (a local group's pages before its window are already
// returned), the layouts match group for group, and the outputs are a colocated instance's with
// the same cache, greedy, token for token.
TEST_F(RemoteRolesTest, ADirectPushOfASlidingWindowModelWithAnInt8CacheEqualsColocated) {
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/remote_roles_swa.", getpid(), ".gguf");
  ASSERT_TRUE(testing::WriteTestModel(testing::SlidingWindowTestSpec(), path).ok());
  auto file = model::GgufFile::Open(path);
  std::remove(path.c_str());
  ASSERT_TRUE(file.ok()) << file.status();
  auto config = [](InstanceRole role) {
    EngineInstanceConfig c = Instance(role, 4);
    c.kv_dtype = kernels::KvDType::kInt8;
    c.window_local_kv = true;
    c.eos_token_id = -1;
    return c;
  };
  auto colocated = EngineInstance::Create(config(InstanceRole::kColocated), **file);
  ASSERT_TRUE(colocated.ok()) << colocated.status();
  auto decode = EngineInstance::Create(config(InstanceRole::kDecode), **file);
  ASSERT_TRUE(decode.ok()) << decode.status();
  ASSERT_FALSE((*decode)->kv_layout().empty());  // the local layers keep their window only
  const std::unique_ptr<kvcache::KvDataPlaneFactory> bytes = kvcache::MakeByteDataPlaneFactory();
  KvArrivals arrivals(**decode);
  DecodeEnd receiver = StartDecodeEnd(arrivals, **decode, bytes.get());
  RemoteHandoff handoff(HandoffConfig(bytes.get(), /*layer_wise=*/true));
  EngineInstanceConfig pc = config(InstanceRole::kPrefill);
  pc.handoff = &handoff;
  auto prefill = EngineInstance::Create(pc, (*decode)->weights());
  ASSERT_TRUE(prefill.ok()) << prefill.status();

  std::vector<std::vector<int32_t>> prompts(4);
  for (int i = 0; i < 4; ++i) {
    for (int t = 0; t < 12 + 9 * i; ++t) prompts[i].push_back(3 + (i * 17 + t * 5) % 120);
  }
  RunAndCompare(**colocated, **prefill, handoff, arrivals, receiver.address(), prompts, 500, 12,
                [](int) {
                  model::SamplingParams sp;
                  sp.temperature = 0;
                  return sp;
                });
  EXPECT_TRUE(Eventually([&] { return receiver.committed() == prompts.size(); }));
  ExpectHeldBlocksBack(handoff, **prefill);
  StopPairExpectingWholeCaches(**prefill, handoff, receiver, arrivals, **decode);
}

}  // namespace
}  // namespace tandem::scheduler
