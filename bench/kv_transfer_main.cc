// tandem-bench-kv-transfer: the in-process KV handover's data path on SmolLM2-135M's KV shape
// (30 layers, 3 KV heads, head_dim 64): KvSnapshot::Take (out of the prefill cache) and
// KvSnapshot::WriteTo (into the decode cache), for prompts of several lengths, same and
// different block sizes, f16 and int8 destinations. Figures: the KV bytes of the sequence,
// microseconds for each half and GB/s of KV moved end to end (median of --reps).
// One thread, as on the prefill and decode engine threads. Blocks of both sequences are
// scattered over their pools, as after a while of serving.
//
//   tandem-bench-kv-transfer [--tokens 128,512,2048] [--reps 21]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "common/check.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvcache/kv_copy.h"
#include "kvcache/kv_manager.h"
#include "kvcache/transfer/kv_snapshot.h"

ABSL_FLAG(std::vector<std::string>, tokens, std::vector<std::string>({"128", "512", "2048"}),
          "prompt lengths (positions handed over)");
ABSL_FLAG(int, reps, 21, "timed handovers per figure (the median is reported)");

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
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("KV handover data path: KvSnapshot take and write, GB/s");
  absl::ParseCommandLine(argc, argv);
  tandem::bench::Run();
  return 0;
}
