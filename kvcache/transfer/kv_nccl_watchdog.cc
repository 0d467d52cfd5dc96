#include "kvcache/transfer/kv_nccl_watchdog.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace tandem::kvcache {

KvWatchdog::KvWatchdog() {
  thread_ = std::thread([this] { Loop(); });
}

KvWatchdog::~KvWatchdog() { Stop(); }

uint64_t KvWatchdog::Arm(absl::Time deadline, std::function<void()> on_expire) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t token = next_++;
  entries_.emplace(token, Entry{deadline, std::move(on_expire)});
  cv_.notify_all();
  return token;
}

void KvWatchdog::Disarm(uint64_t token) {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.erase(token);
}

int KvWatchdog::armed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(entries_.size());
}

uint64_t KvWatchdog::fired() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fired_;
}

void KvWatchdog::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    entries_.clear();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void KvWatchdog::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    const absl::Time now = absl::Now();
    std::vector<std::function<void()>> due;
    absl::Time next = absl::InfiniteFuture();
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->second.deadline <= now) {
        due.push_back(std::move(it->second.on_expire));
        it = entries_.erase(it);
        ++fired_;
      } else {
        next = std::min(next, it->second.deadline);
        ++it;
      }
    }
    if (!due.empty()) {
      // Unlocked: an action may block (ncclCommAbort) and others may arm meanwhile.
      lock.unlock();
      for (auto& f : due) f();
      lock.lock();
      continue;
    }
    // Wakes at the next deadline, or when one is armed.
    if (next == absl::InfiniteFuture()) {
      cv_.wait(lock);
    } else {
      cv_.wait_for(lock, absl::ToChronoNanoseconds(std::max(next - now, absl::Milliseconds(1))));
    }
  }
}

}  // namespace tandem::kvcache
