// PrefixIndex: the prompt prefixes a router has sent to each prefill worker, so that placement
// can predict how much of a new prompt a worker's prefix cache holds without asking it.
//
// A worker's prefix cache (kvcache::KvManager) keeps whole KV blocks keyed by their token
// chain, and evicts unreferenced ones least recently used first, only when it runs out of free
// blocks. The router mirrors that per worker: the chain hashes of the whole blocks of every
// prompt it placed there, an LRU bounded by the worker's KV blocks (its last heartbeat). Each
// prompt's blocks are touched leaf first, so a chain loses its tail before its root, as a
// cache that only reuses whole prefixes does. (SGLang's router predicts the same way, with an
// approximate radix tree per worker; Dynamo's workers publish their cache events instead.)
// Hashes of token blocks match what the worker's cache can give exactly, up to evictions the
// router does not see: the worker reports what it actually found (PhaseEvent.cached_tokens)
// and the router counts both (tandem:cluster_prefix_*_tokens_total).
//
// Invariants: per worker, `at` indexes exactly the hashes in `lru`, each once, and a worker
// keeps at most the capacity its last Insert was given.
//
// Thread safety: none; the router holds its lock.
#ifndef TANDEM_SERVER_CLUSTER_PREFIX_INDEX_H_
#define TANDEM_SERVER_CLUSTER_PREFIX_INDEX_H_

#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

namespace tandem::server::cluster {

class PrefixIndex {
 public:
  // The chain hashes of the whole blocks of `tokens` (block i's hash covers tokens
  // [0, (i + 1) * block_size)), as a worker caches them once it computed the prompt. Empty for
  // block_size < 1.
  static std::vector<uint64_t> BlockHashes(std::span<const int32_t> tokens, int block_size);
  // The tokens of a prompt of `prompt` tokens that a cache holding `blocks` of its leading
  // blocks can give: the last token always runs (its logits give the first token).
  static int UsableTokens(int blocks, int block_size, int prompt);

  // How many leading blocks of `hashes` are recorded for `worker`.
  int Match(uint64_t worker, std::span<const uint64_t> hashes) const;
  // Records `hashes` (one prompt's chain) as `worker`'s most recent, leaf first, and drops its
  // least recent past `capacity_blocks` (nothing is kept for capacity_blocks <= 0).
  void Insert(uint64_t worker, std::span<const uint64_t> hashes, int capacity_blocks);
  // Forgets a worker (dropped, or registered again: its cache starts empty).
  void Forget(uint64_t worker);
  // Blocks recorded for `worker`.
  int size(uint64_t worker) const;

 private:
  struct Worker {
    std::list<uint64_t> lru;  // most recent first
    std::unordered_map<uint64_t, std::list<uint64_t>::iterator> at;
  };
  std::unordered_map<uint64_t, Worker> workers_;
};

}  // namespace tandem::server::cluster

#endif  // TANDEM_SERVER_CLUSTER_PREFIX_INDEX_H_
