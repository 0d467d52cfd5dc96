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
    case SequenceEnd::kRejected:
      return "rejected";
  }
  return "?";
}

absl::StatusOr<SchedulePolicy> ParseSchedulePolicy(std::string_view name) {
  if (name == "slo") return SchedulePolicy::kSlo;
  if (name == "fcfs") return SchedulePolicy::kFcfs;
  return absl::InvalidArgumentError(StrCat("unknown scheduling policy '", name, "' (slo or fcfs)"));
}

absl::Status SchedulerConfig::Validate() const {
  if (max_num_seqs < 1) {
    return absl::InvalidArgumentError(StrCat("max_num_seqs must be >= 1, got ", max_num_seqs));
  }
  if (max_batch_tokens < max_num_seqs) {
    return absl::InvalidArgumentError(StrCat("max_batch_tokens (", max_batch_tokens,
                                             ") must be >= max_num_seqs (", max_num_seqs,
                                             "): every running sequence decodes in each step"));
  }
  if (!(budget_margin > 0 && budget_margin <= 1)) {
    return absl::InvalidArgumentError(
        StrCat("budget_margin must be in (0, 1], got ", budget_margin));
  }
  if (best_effort_aging <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("best_effort_aging must be > 0");
  }
  return absl::OkStatus();
}

void SchedulerOutput::Clear() {
  chunks.clear();
  preempted.clear();
  failed.clear();
  num_tokens = 0;
  num_decode = 0;
  num_deferred = 0;
  shape = StepShape();
  budget = absl::InfiniteDuration();
}

Scheduler::Scheduler(const SchedulerConfig& config, kvcache::KvManager& kv)
    : config_(config), kv_(kv) {
  TANDEM_CHECK_OK(config_.Validate());
}

void Scheduler::Add(std::unique_ptr<Sequence> seq) {
  TANDEM_CHECK(seq != nullptr);
  TANDEM_CHECK_EQ(seq->num_computed, 0);
  waiting_.push_back(std::move(seq));
}

bool Scheduler::CanAddRunning(const Sequence& seq) const {
  if (!CanAddRunning()) return false;
  if (config_.policy != SchedulePolicy::kSlo) return true;
  // It arrives with its first token: its next decode attends num_tokens() positions.
  return DecodeFitsWith(seq, seq.num_tokens());
}

bool Scheduler::DecodeFitsWith(const Sequence& seq, int context) const {
  // Alone it always may, even when no step can be that fast: it would wait forever.
  if (model_ == nullptr || !model_->fitted() || running_.empty()) return true;
  absl::Duration budget = StepBudget();
  if (seq.tpot_slo != absl::InfiniteDuration()) {
    budget = std::min(budget, seq.tpot_slo * config_.budget_margin);
  }
  StepShape decode;
  for (const auto& r : running_) decode.AddDecode(r->num_tokens() + 1);
  decode.AddDecode(context);
  return Fits(decode, budget);
}

void Scheduler::AddRunning(std::unique_ptr<Sequence> seq) {
  TANDEM_CHECK(seq != nullptr);
  TANDEM_CHECK(CanAddRunning());
  TANDEM_CHECK_EQ(seq->num_uncomputed(), 1);
  TANDEM_CHECK_EQ(seq->table.num_tokens(), seq->num_computed);
  TANDEM_CHECK_EQ(seq->table.block_size(), kv_.block_size());
  // Its step stamps came from another scheduler's counter.
  seq->scheduled_step = 0;
  seq->preempted_step = 0;
  seq->scheduled_tokens = 0;
  seq->running = true;
  running_.push_back(std::move(seq));
}

bool Scheduler::Reserve(Sequence* seq, int n_tokens) {
  if (!kv_.CanAppend(seq->table, n_tokens)) return false;
  TANDEM_CHECK_OK(kv_.Append(seq->table, n_tokens));
  return true;
}

void Scheduler::StartFromCache(Sequence* seq) {
  if (!seq->table.blocks().empty()) return;
  TANDEM_CHECK_EQ(seq->num_computed, 0);
  // Its last token always runs: its logits give the next token.
  seq->num_computed = kv_.MatchPrefix(seq->tokens, seq->num_tokens() - 1, seq->table);
}

void Scheduler::Unstart(Sequence* seq) {
  kv_.Free(seq->table);
  seq->num_computed = 0;
}

void Scheduler::Preempt(Sequence* seq) {
  auto it = std::find_if(running_.begin(), running_.end(),
                         [seq](const auto& p) { return p.get() == seq; });
  TANDEM_CHECK(it != running_.end());
  kv_.Free(seq->table);
  seq->num_computed = 0;
  seq->prefix_estimate = -1;  // it waits again, with more tokens
  ++seq->preemptions;
  seq->preempted_step = step_;
  seq->running = false;
  waiting_.push_front(std::move(*it));
  running_.erase(it);
}

void Scheduler::Schedule(SchedulerOutput* out, absl::Time now) {
  out->Clear();
  ++step_;
  if (config_.policy == SchedulePolicy::kFcfs) {
    ScheduleFcfs(out);
  } else {
    ScheduleSlo(out, now);
  }
}

void Scheduler::AddChunk(SchedulerOutput* out, Sequence* s, int n) {
  out->chunks.push_back({s, s->num_computed, n, s->num_computed + n == s->num_tokens()});
  out->num_tokens += n;
  if (s->num_uncomputed() == 1) {
    ++out->num_decode;
    out->shape.AddDecode(s->num_tokens());
  } else {
    out->shape.AddPrefill(n, s->num_computed);
  }
  s->scheduled_step = step_;
  s->scheduled_tokens = n;
}

bool Scheduler::ReserveOrPreempt(SchedulerOutput* out, Sequence* s, int n) {
  bool fits = Reserve(s, s->num_computed + n);
  while (!fits) {
    // Preempt the most recently admitted sequence not yet in this step.
    Sequence* victim = nullptr;
    for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
      if (it->get() != s && (*it)->scheduled_step != step_) {
        victim = it->get();
        break;
      }
    }
    if (victim == nullptr) break;
    Preempt(victim);
    out->preempted.push_back(victim);
    fits = Reserve(s, s->num_computed + n);
  }
  if (fits) return true;
  if (running_.size() == 1) {
    out->failed.push_back(s);  // alone and still short: the cache can never hold it
  } else {
    Preempt(s);
    out->preempted.push_back(s);
  }
  return false;
}

void Scheduler::ScheduleFcfs(SchedulerOutput* out) {
  int budget = config_.max_batch_tokens;
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
      if (ReserveOrPreempt(out, s, n)) {
        AddChunk(out, s, n);
        budget -= n;
      }
    }
  }

  // New sequences, first come first served; none while the cache is under pressure.
  while (out->preempted.empty() && budget > 0 && !waiting_.empty() &&
         static_cast<int>(running_.size()) < config_.max_num_seqs) {
    Sequence* s = waiting_.front().get();
    StartFromCache(s);
    const int n = std::min(s->num_uncomputed(), budget);
    if (!Reserve(s, s->num_computed + n)) {
      Unstart(s);
      if (running_.empty()) out->failed.push_back(s);
      break;
    }
    kv_.RecordPrefixQuery(s->num_tokens(), s->num_computed);
    s->running = true;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    AddChunk(out, s, n);
    budget -= n;
  }
}

absl::Duration Scheduler::StepBudget() const {
  if (model_ == nullptr || !model_->fitted()) return absl::InfiniteDuration();
  absl::Duration tightest = absl::InfiniteDuration();
  for (const auto& s : running_) {
    if (s->has_token()) tightest = std::min(tightest, s->tpot_slo);
  }
  return tightest == absl::InfiniteDuration() ? tightest : tightest * config_.budget_margin;
}

bool Scheduler::Fits(const StepShape& shape, absl::Duration budget) const {
  if (budget == absl::InfiniteDuration()) return true;
  return model_->PredictDuration(shape) <= budget;
}

int Scheduler::MaxPrefillTokens(const StepShape& shape, int start, int max_n,
                                absl::Duration budget) const {
  auto fits = [&](int n) {
    StepShape trial = shape;
    trial.AddPrefill(n, start);
    return Fits(trial, budget);
  };
  if (max_n <= 0) return 0;
  if (fits(max_n)) return max_n;
  int lo = 0, hi = max_n;  // fits(lo), !fits(hi)
  while (hi - lo > 1) {
    const int mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
}

void Scheduler::ScheduleSlo(SchedulerOutput* out, absl::Time now) {
  (void)now;  // deadlines are absolute; `now` is for the expiry sweep and future policies
  const absl::Duration aging = config_.best_effort_aging;
  auto by_deadline = [aging](const Sequence* a, const Sequence* b) {
    const absl::Time da = a->NextDeadline(aging), db = b->NextDeadline(aging);
    return da != db ? da < db : a->id < b->id;
  };
  const absl::Duration budget = StepBudget();
  out->budget = budget;
  int tokens_left = config_.max_batch_tokens;

  // 1. Decode tokens, most urgent first, while the step stays within the TPOT budget (one
  // always runs, so a cap below a single decode cannot stall everyone).
  order_.clear();
  for (const auto& s : running_) {
    if (s->num_uncomputed() == 1) order_.push_back(s.get());
  }
  std::sort(order_.begin(), order_.end(), by_deadline);
  for (Sequence* s : order_) {
    if (tokens_left == 0) break;
    if (s->preempted_step == step_) continue;
    StepShape trial = out->shape;
    trial.AddDecode(s->num_tokens());
    if (out->num_decode > 0 && !Fits(trial, budget)) {
      ++out->num_deferred;
      continue;
    }
    if (ReserveOrPreempt(out, s, 1)) {
      AddChunk(out, s, 1);
      --tokens_left;
    }
  }

  // 2. Prefill chunks, earliest deadline first, running and waiting sequences alike, each as
  // large as the budget left allows.
  cands_.clear();
  for (const auto& s : running_) {
    if (s->num_uncomputed() > 1 && s->preempted_step != step_) cands_.push_back(s.get());
  }
  for (const auto& s : waiting_) cands_.push_back(s.get());
  std::sort(cands_.begin(), cands_.end(), by_deadline);
  for (Sequence* s : cands_) {
    if (tokens_left == 0) break;
    if (s->preempted_step == step_) continue;  // a victim of this step's decode reservations
    const bool is_new = !s->running;
    if (is_new) {
      // None while the cache is under pressure, and none past max_num_seqs.
      if (!out->preempted.empty()) break;
      if (static_cast<int>(running_.size()) >= config_.max_num_seqs) break;
      // It will decode in every step from its first token on (at context prompt + 1).
      if (!DecodeFitsWith(*s, s->num_tokens() + 1)) break;  // waits; EDF order kept
      StartFromCache(s);
    }
    const int n = MaxPrefillTokens(out->shape, s->num_computed,
                                   std::min(s->num_uncomputed(), tokens_left), budget);
    if (n == 0) {  // no slack left in this step
      if (is_new) Unstart(s);
      break;
    }
    if (is_new) {
      if (!Reserve(s, s->num_computed + n)) {
        Unstart(s);
        if (running_.empty()) out->failed.push_back(s);
        break;
      }
      kv_.RecordPrefixQuery(s->num_tokens(), s->num_computed);
      auto it = std::find_if(waiting_.begin(), waiting_.end(),
                             [s](const auto& p) { return p.get() == s; });
      TANDEM_CHECK(it != waiting_.end());
      s->running = true;
      running_.push_back(std::move(*it));
      waiting_.erase(it);
    } else if (!ReserveOrPreempt(out, s, n)) {
      continue;
    }
    AddChunk(out, s, n);
    tokens_left -= n;
  }
}

void Scheduler::Complete(const SchedulerOutput& out, absl::Time now) {
  for (const ScheduledChunk& c : out.chunks) {
    TANDEM_CHECK_EQ(c.start, c.seq->num_computed);
    c.seq->num_computed += c.num_tokens;
    c.seq->table.SetNumTokens(c.seq->num_computed);
    kv_.CacheFullBlocks(c.seq->tokens, c.seq->table);
    if (c.want_logits) {
      if (!c.seq->has_token()) c.seq->first_token = now;
      c.seq->last_token = now;
    }
  }
}

void Scheduler::ExportLoad(const SchedulerOutput& in_flight, absl::Time step_end,
                           LoadSnapshot* snap) const {
  (void)in_flight;  // each sequence carries its chunk of the step (scheduled_step/_tokens)
  snap->step_end = step_end;
  snap->decoding.clear();
  snap->prefilling.clear();
  snap->max_num_seqs = config_.max_num_seqs;
  snap->max_batch_tokens = config_.max_batch_tokens;
  snap->budget_margin = config_.budget_margin;
  const absl::Duration aging = config_.best_effort_aging;
  auto add = [&](Sequence& s) {
    const int ran = s.scheduled_step == step_ ? s.scheduled_tokens : 0;
    // A sequence that has not started yet computes only what the prefix cache lacks.
    int cached = 0;
    if (s.table.blocks().empty() && s.num_computed == 0) {
      if (s.prefix_estimate < 0) s.prefix_estimate = kv_.PeekPrefix(s.tokens, s.num_tokens() - 1);
      cached = s.prefix_estimate;
    }
    const int computed = s.num_computed + ran + cached;
    const int uncomputed = s.num_tokens() - computed;
    int generated = s.num_generated();
    if (uncomputed == 0) {  // the step samples a token
      ++generated;
      if (generated >= s.max_tokens) return;  // and that was its last
      snap->decoding.push_back({s.num_tokens() + 1, s.max_tokens - generated, s.tpot_slo});
      return;
    }
    if (uncomputed == 1) {  // decoding, left out of this step
      snap->decoding.push_back({s.num_tokens(), s.max_tokens - generated, s.tpot_slo});
      return;
    }
    PrefillWork w;
    w.id = s.id;
    w.remaining = uncomputed;
    w.start = computed;
    w.generate = std::max(0, s.max_tokens - 1 - generated);
    w.deadline = s.NextDeadline(aging);
    w.tpot_slo = s.tpot_slo;
    w.slo = !s.best_effort();
    w.running = s.running;
    snap->prefilling.push_back(w);
  };
  for (const auto& s : running_) add(*s);
  for (const auto& s : waiting_) add(*s);
}

void Scheduler::CollectExpired(absl::Time now, std::vector<Sequence*>* out) const {
  if (model_ == nullptr || !model_->fitted()) return;
  const absl::Duration budget = StepBudget();
  StepShape decode;
  for (const auto& s : running_) {
    if (s->num_uncomputed() == 1) decode.AddDecode(s->num_tokens());
  }
  auto check = [&](Sequence* s) {
    if (s->has_token() || s->ttft_slo == absl::InfiniteDuration()) return;
    const absl::Time deadline = s->arrival + s->ttft_slo;
    // The soonest it could finish: every following step gives it all the prefill room the
    // step's token budget and the TPOT budget leave beside the decode tokens.
    const int room = config_.max_batch_tokens - decode.decode_seqs;
    const int per_step = MaxPrefillTokens(decode, s->num_computed, room, budget);
    absl::Duration t = absl::InfiniteDuration();
    if (per_step > 0) {
      const int full = s->num_uncomputed() / per_step, rest = s->num_uncomputed() % per_step;
      StepShape step = decode;
      step.AddPrefill(per_step, s->num_computed);
      t = model_->PredictDuration(step) * full;
      if (rest > 0) {
        StepShape last = decode;
        last.AddPrefill(rest, s->num_computed);
        t += model_->PredictDuration(last);
      }
    }
    if (now + t > deadline) out->push_back(s);
  };
  for (const auto& s : running_) check(s.get());
  for (const auto& s : waiting_) check(s.get());
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
  kv_.Free(owned->table);
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
