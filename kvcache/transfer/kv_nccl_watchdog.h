// KvWatchdog: the deadline keeper of direct KV transfers (kv_nccl_transport.h). A transfer
// arms it with its deadline and what ends it (abort the data plane, ncclCommAbort for NCCL,
// and shut the control connection), and disarms it when it ends by itself. When a deadline
// passes first, the watchdog's own thread runs that action, so a transfer thread blocked in
// the data plane or on a stalled peer returns with an error and then frees its lease or its
// source blocks: no blocked call outlives its deadline by more than the watchdog's tick.
//
// Thread safety: Arm, Disarm and Stop from any thread. Actions run on the watchdog's thread,
// never under its lock, and must not call back into it; an action may still be running when
// Disarm of its token returns (Disarm only promises it will not start later).
#ifndef TANDEM_KVCACHE_TRANSFER_KV_NCCL_WATCHDOG_H_
#define TANDEM_KVCACHE_TRANSFER_KV_NCCL_WATCHDOG_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tandem::kvcache {

class KvWatchdog {
 public:
  KvWatchdog();
  ~KvWatchdog();  // Stop()
  KvWatchdog(const KvWatchdog&) = delete;
  KvWatchdog& operator=(const KvWatchdog&) = delete;

  // Runs `on_expire` once `deadline` passes, unless disarmed before. Returns the token for
  // Disarm (> 0).
  uint64_t Arm(absl::Time deadline, std::function<void()> on_expire);
  // The action of `token` will not start (a no-op once it ran or for an unknown token).
  void Disarm(uint64_t token);
  // Entries armed and not yet fired or disarmed.
  int armed() const;
  // Actions that ran.
  uint64_t fired() const;
  // Drops every entry unrun and joins the thread. Idempotent.
  void Stop();

 private:
  struct Entry {
    absl::Time deadline;
    std::function<void()> on_expire;
  };
  void Loop();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t fired_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tandem::kvcache

#endif  // TANDEM_KVCACHE_TRANSFER_KV_NCCL_WATCHDOG_H_
