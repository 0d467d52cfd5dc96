// TestKv: a KvManager of `blocks` blocks for scheduler tests, over a one-layer, one-head,
// one-element layout on a CPU backend, so a test gets the real manager for a few bytes.
#ifndef TANDEM_TESTS_SCHEDULER_TEST_KV_H_
#define TANDEM_TESTS_SCHEDULER_TEST_KV_H_

#include <memory>

#include "common/check.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvcache/kv_manager.h"

namespace tandem::scheduler {

struct TestKv {
  TestKv(int blocks, int block_size) {
    auto b = kernels::cpu::CreateCpuBackend({});
    TANDEM_CHECK_OK(b.status());
    backend = std::move(*b);
    kvcache::KvCacheConfig c;
    c.n_layers = 1;
    c.n_kv_heads = 1;
    c.head_dim = 1;
    c.block_size = block_size;
    c.dtype = kernels::KvDType::kF32;
    c.num_blocks = blocks;
    auto m = kvcache::KvManager::Create(c, *backend);
    TANDEM_CHECK_OK(m.status());
    manager = std::move(*m);
  }
  kvcache::KvManager& operator*() { return *manager; }
  kvcache::KvManager* operator->() { return manager.get(); }

  std::unique_ptr<kernels::Backend> backend;  // outlives the manager's memory
  std::unique_ptr<kvcache::KvManager> manager;
};

}  // namespace tandem::scheduler

#endif  // TANDEM_TESTS_SCHEDULER_TEST_KV_H_
