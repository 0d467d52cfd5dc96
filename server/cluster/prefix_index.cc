#include "server/cluster/prefix_index.h"

#include <algorithm>

namespace tandem::server::cluster {
namespace {

// splitmix64's finalizer: every input bit moves about half the output bits.
uint64_t Mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

std::vector<uint64_t> PrefixIndex::BlockHashes(std::span<const int32_t> tokens, int block_size) {
  std::vector<uint64_t> out;
  if (block_size < 1 || tokens.empty()) return out;
  const size_t blocks = tokens.size() / static_cast<size_t>(block_size);
  out.reserve(blocks);
  // The block size is in the seed: chains of different block sizes never compare equal.
  uint64_t h = Mix(0x7a6e646d00000000ULL ^ static_cast<uint64_t>(block_size));
  for (size_t b = 0; b < blocks; ++b) {
    for (int i = 0; i < block_size; ++i) {
      h = Mix(h ^ static_cast<uint32_t>(tokens[b * block_size + i]));
    }
    out.push_back(h);
  }
  return out;
}

int PrefixIndex::UsableTokens(int blocks, int block_size, int prompt) {
  if (block_size < 1 || prompt < 1) return 0;
  return std::min(blocks, (prompt - 1) / block_size) * block_size;
}

int PrefixIndex::Match(uint64_t worker, std::span<const uint64_t> hashes) const {
  auto it = workers_.find(worker);
  if (it == workers_.end()) return 0;
  int n = 0;
  while (n < static_cast<int>(hashes.size()) && it->second.at.contains(hashes[n])) ++n;
  return n;
}

void PrefixIndex::Insert(uint64_t worker, std::span<const uint64_t> hashes, int capacity_blocks) {
  if (hashes.empty()) return;
  Worker& w = workers_[worker];
  // Leaf first, root last: the root ends up most recent and is evicted last.
  for (auto h = hashes.rbegin(); h != hashes.rend(); ++h) {
    auto at = w.at.find(*h);
    if (at != w.at.end()) {
      w.lru.splice(w.lru.begin(), w.lru, at->second);
    } else {
      w.lru.push_front(*h);
      w.at.emplace(*h, w.lru.begin());
    }
  }
  while (static_cast<int>(w.lru.size()) > std::max(0, capacity_blocks)) {
    w.at.erase(w.lru.back());
    w.lru.pop_back();
  }
}

void PrefixIndex::Forget(uint64_t worker) { workers_.erase(worker); }

int PrefixIndex::size(uint64_t worker) const {
  auto it = workers_.find(worker);
  return it == workers_.end() ? 0 : static_cast<int>(it->second.lru.size());
}

}  // namespace tandem::server::cluster
