#include "scheduler/scheduler.h"

#include <algorithm>

#include "common/check.h"
#include "common/str_cat.h"

namespace tandem::scheduler {

const char* SequenceEndName(SequenceEnd end) {
  switch (end) {
    case SequenceEnd::kStopToken:
      return "stop";
    case SequenceEnd::kLength:
      return "length";
    case SequenceEnd::kCancelled:
      return "cancelled";
    case SequenceEnd::kFailed:
      return "failed";
  }
  return "?";
}

absl::Status SchedulerConfig::Validate() const {
  if (max_num_seqs < 1) {
    return absl::InvalidArgumentError(StrCat("max_num_seqs must be >= 1, got ", max_num_seqs));
  }
  if (max_batch_tokens < max_num_seqs) {
    return absl::InvalidArgumentError(
        StrCat("max_batch_tokens (", max_batch_tokens, ") must be >= max_num_seqs (",
               max_num_seqs, "): every running sequence decodes in each step"));
  }
  return absl::OkStatus();
}

void SchedulerOutput::Clear() {
  chunks.clear();
  preempted.clear();
  failed.clear();
  num_tokens = 0;
  num_decode = 0;
}

Scheduler::Scheduler(const SchedulerConfig& config, kvcache::BlockPool& pool)
    : config_(config), pool_(pool) {
  TANDEM_CHECK_OK(config_.Validate());
}

void Scheduler::Add(std::unique_ptr<Sequence> seq) {
  TANDEM_CHECK(seq != nullptr);
  TANDEM_CHECK_EQ(seq->num_computed, 0);
  waiting_.push_back(std::move(seq));
}

bool Scheduler::Reserve(Sequence* seq, int n_tokens) {
  const int need = seq->table.BlocksNeeded(n_tokens);
  if (!pool_.CanAllocate(need)) return false;
  TANDEM_CHECK_OK(seq->table.Reserve(pool_, n_tokens));
  return true;
}

void Scheduler::Preempt(Sequence* seq) {
  auto it = std::find_if(running_.begin(), running_.end(),
                         [seq](const auto& p) { return p.get() == seq; });
  TANDEM_CHECK(it != running_.end());
  seq->table.Release(pool_);
  seq->num_computed = 0;
  ++seq->preemptions;
  seq->preempted_step = step_;
  waiting_.push_front(std::move(*it));
  running_.erase(it);
}

void Scheduler::Schedule(SchedulerOutput* out) {
  out->Clear();
  ++step_;
  int budget = config_.max_batch_tokens;
  // A sequence given a chunk this step cannot be preempted any more.
  auto is_done = [&](const Sequence* s) { return s->scheduled_step == step_; };
  auto add_chunk = [&](Sequence* s, int n) {
    out->chunks.push_back({s, s->num_computed, n, s->num_computed + n == s->num_tokens()});
    out->num_tokens += n;
    if (s->num_uncomputed() == 1) ++out->num_decode;
    budget -= n;
    s->scheduled_step = step_;
  };

  // Running sequences: decoding ones first (TPOT), then those still prefilling.
  for (int pass = 0; pass < 2 && budget > 0; ++pass) {
    order_.clear();
    for (const auto& s : running_) {
      if ((s->num_uncomputed() == 1) == (pass == 0)) order_.push_back(s.get());
    }
    for (Sequence* s : order_) {
      if (budget == 0) break;
      if (s->preempted_step == step_) continue;  // a victim earlier in this step
      const int n = std::min(s->num_uncomputed(), budget);
      bool fits = Reserve(s, s->num_computed + n);
      while (!fits) {
        // Preempt the most recently admitted sequence not yet in this step.
        Sequence* victim = nullptr;
        for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
          if (it->get() != s && !is_done(it->get())) {
            victim = it->get();
            break;
          }
        }
        if (victim == nullptr) break;
        Preempt(victim);
        out->preempted.push_back(victim);
        fits = Reserve(s, s->num_computed + n);
      }
      if (fits) {
        add_chunk(s, n);
      } else if (running_.size() == 1) {
        out->failed.push_back(s);  // alone and still short: the cache can never hold it
      } else {
        Preempt(s);
        out->preempted.push_back(s);
      }
    }
  }

  // New sequences, first come first served; none while the cache is under pressure.
  while (out->preempted.empty() && budget > 0 && !waiting_.empty() &&
         static_cast<int>(running_.size()) < config_.max_num_seqs) {
    Sequence* s = waiting_.front().get();
    const int n = std::min(s->num_uncomputed(), budget);
    if (!Reserve(s, n)) {
      if (running_.empty() && s->table.blocks().empty()) out->failed.push_back(s);
      break;
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    add_chunk(s, n);
  }
}

void Scheduler::Complete(const SchedulerOutput& out) {
  for (const ScheduledChunk& c : out.chunks) {
    TANDEM_CHECK_EQ(c.start, c.seq->num_computed);
    c.seq->num_computed += c.num_tokens;
    c.seq->table.SetNumTokens(c.seq->num_computed);
  }
}

std::unique_ptr<Sequence> Scheduler::Remove(Sequence* seq) {
  std::unique_ptr<Sequence> owned;
  if (auto it = std::find_if(running_.begin(), running_.end(),
                             [seq](const auto& p) { return p.get() == seq; });
      it != running_.end()) {
    owned = std::move(*it);
    running_.erase(it);
  } else if (auto wt = std::find_if(waiting_.begin(), waiting_.end(),
                                    [seq](const auto& p) { return p.get() == seq; });
             wt != waiting_.end()) {
    owned = std::move(*wt);
    waiting_.erase(wt);
  }
  TANDEM_CHECK(owned != nullptr);
  owned->table.Release(pool_);
  return owned;
}

std::vector<Sequence*> Scheduler::All() const {
  std::vector<Sequence*> all;
  all.reserve(running_.size() + waiting_.size());
  for (const auto& s : running_) all.push_back(s.get());
  for (const auto& s : waiting_) all.push_back(s.get());
  return all;
}

void Scheduler::ForEach(absl::FunctionRef<void(Sequence*)> fn) const {
  for (const auto& s : running_) fn(s.get());
  for (const auto& s : waiting_) fn(s.get());
}

}  // namespace tandem::scheduler
