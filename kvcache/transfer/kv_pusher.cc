#include "kvcache/transfer/kv_pusher.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "common/check.h"
#include "common/str_cat.h"

namespace tandem::kvcache {

KvPusher::KvPusher(Connect connect) : connect_(std::move(connect)) {
  thread_ = std::thread([this] { Loop(); });
}

KvPusher::~KvPusher() { Stop(); }

void KvPusher::Push(KvPush push) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      queue_.push_back(std::move(push));
      queued_.fetch_add(1);
      cv_.notify_one();
      return;
    }
  }
  failed_.fetch_add(1);
  push.done(absl::UnavailableError("the KV sender is stopped"));
}

KvPusherStats KvPusher::stats() const {
  return {.committed = committed_.load(),
          .failed = failed_.load(),
          .cancelled = cancelled_.load(),
          .bytes = bytes_.load(),
          .reserve_retries = retries_.load(),
          .connects = connects_.load(),
          .seconds = seconds_.load()};
}

void KvPusher::Stop() {
  std::deque<KvPush> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    if (conn_) conn_->Shutdown();
    left.swap(queue_);
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (KvPush& p : left) {
    queued_.fetch_sub(1);
    failed_.fetch_add(1);
    p.done(absl::UnavailableError("the KV sender stopped before this transfer started"));
  }
}

void KvPusher::Loop() {
  while (true) {
    KvPush p;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      p = std::move(queue_.front());
      queue_.pop_front();
      queued_.fetch_sub(1);
    }
    const absl::Time t0 = absl::Now();
    absl::Status s = Send(p);
    waiting_for_room_.store(false);
    if (s.ok()) {
      seconds_.store(seconds_.load() + absl::ToDoubleSeconds(absl::Now() - t0));
      committed_.fetch_add(1);
    } else if (s.code() == absl::StatusCode::kCancelled && p.stream != nullptr) {
      cancelled_.fetch_add(1);
    } else {
      failed_.fetch_add(1);
      if (s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDataLoss ||
          s.code() == absl::StatusCode::kDeadlineExceeded) {
        // The connection is gone, its stream is unusable, or the peer did not answer in time
        // (a stalled or half-dead link that may never report an error): the next push
        // connects again rather than queue behind it.
        std::lock_guard<std::mutex> lock(mu_);
        if (conn_) conn_->Shutdown();
        conn_.reset();
      }
    }
    p.done(s);
  }
}

absl::StatusOr<Frame> KvPusher::Await(uint64_t transfer_id, absl::Time until) {
  std::shared_ptr<KvConnection> conn;
  {
    std::lock_guard<std::mutex> lock(mu_);
    conn = conn_;
  }
  std::vector<char> buf(64 << 10);
  bool polled = false;  // one read is tried even when `until` has passed
  while (true) {
    absl::StatusOr<std::optional<Frame>> f = parser_->Next();
    if (!f.ok()) return absl::DataLossError(StrCat("from the KV peer: ", f.status().message()));
    if (f->has_value()) {
      // Frames of other transfers are late answers to transfers already over (an Abort for
      // frames that reached the peer after it gave one up): nothing waits for them.
      if (TransferIdOf(**f) == transfer_id) return std::move(**f);
      continue;
    }
    absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) {
      if (polled) {
        return absl::DeadlineExceededError(
            StrCat("kv transfer ", transfer_id, ": no answer from the KV peer in time"));
      }
      left = absl::ZeroDuration();
    }
    polled = true;
    absl::StatusOr<size_t> n = conn->Read(buf.data(), buf.size(), left);
    if (!n.ok()) return n.status();
    if (*n > 0) {
      if (absl::Status s = parser_->Feed(std::string_view(buf.data(), *n)); !s.ok()) {
        return absl::DataLossError(StrCat("from the KV peer: ", s.message()));
      }
    }
  }
}

absl::Status KvPusher::Send(const KvPush& p) {
  std::shared_ptr<KvConnection> conn;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the KV sender is stopped");
    conn = conn_;
  }
  if (!conn) {
    absl::StatusOr<std::unique_ptr<KvConnection>> c = connect_();
    if (!c.ok()) return c.status();
    conn = std::shared_ptr<KvConnection>(std::move(*c));
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      conn->Shutdown();
      return absl::UnavailableError("the KV sender is stopped");
    }
    conn_ = conn;
    parser_.emplace();
    connects_.fetch_add(1);
  }
  auto write = [&](const Frame& f) {
    out_.clear();
    EncodeFrame(f, &out_);
    bytes_.fetch_add(out_.size());
    return conn->Write(out_);
  };

  const ReserveFrame reserve =
      p.stream ? ReserveFrame{p.transfer_id,          p.stream->n_tokens(), p.stream->n_layers(),
                              p.stream->n_kv_heads(), p.stream->head_dim(), p.stream->dtype()}
               : ReserveFrame{p.transfer_id,      p.kv->n_tokens(), p.kv->n_layers(),
                              p.kv->n_kv_heads(), p.kv->head_dim(), p.wire_dtype};
  // The peer's own Reserve takes an engine step at most; an answer is owed well within this.
  constexpr absl::Duration kAnswerTimeout = absl::Seconds(10);
  absl::Duration backoff = absl::Milliseconds(2);
  while (true) {
    if (absl::Status s = write(reserve); !s.ok()) return s;
    absl::StatusOr<Frame> answer = Await(p.transfer_id, absl::Now() + kAnswerTimeout);
    // Cleared by any answer but "no room" (set again below then).
    waiting_for_room_.store(false);
    if (!answer.ok()) {
      if (answer.status().code() == absl::StatusCode::kDeadlineExceeded) {
        // It may still reserve: tell it not to.
        (void)write(AbortFrame{p.transfer_id, "no answer to Reserve in time",
                               absl::StatusCode::kDeadlineExceeded});
      }
      return answer.status();
    }
    if (std::holds_alternative<ReserveOkFrame>(*answer)) break;
    if (!std::holds_alternative<AbortFrame>(*answer)) {
      return absl::DataLossError(StrCat("kv transfer ", p.transfer_id,
                                        ": the peer answered Reserve with frame type ",
                                        static_cast<int>(TypeOf(*answer))));
    }
    const absl::Status refused = AbortStatus(std::get<AbortFrame>(*answer));
    if (refused.code() != absl::StatusCode::kResourceExhausted) return refused;
    if (absl::Now() + backoff > p.deadline) {
      return absl::ResourceExhaustedError(
          StrCat("the decode side had no room for the KV of ", reserve.n_tokens,
                 " tokens before the deadline: ", refused.message()));
    }
    retries_.fetch_add(1);
    waiting_for_room_.store(true);
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock, absl::ToChronoNanoseconds(backoff), [&] { return stopping_; })) {
        return absl::UnavailableError("the KV sender is stopped");
      }
    }
    backoff = std::min(backoff * 2, absl::Milliseconds(50));
  }

  return SendLayers(p, write);
}

absl::Status KvPusher::SendLayers(const KvPush& p,
                                  const std::function<absl::Status(const Frame&)>& write) {
  // An abort the peer sent meanwhile (its deadline, a layer it refused) ends the transfer; the
  // peer has freed the lease already. Checked without waiting.
  auto peer_aborted = [&]() -> absl::Status {
    absl::StatusOr<Frame> late = Await(p.transfer_id, absl::Now());
    if (late.ok() && std::holds_alternative<AbortFrame>(*late)) {
      return AbortStatus(std::get<AbortFrame>(*late));
    }
    if (!late.ok() && late.status().code() != absl::StatusCode::kDeadlineExceeded) {
      return late.status();
    }
    return absl::OkStatus();
  };
  LayerFrame layer;
  layer.transfer_id = p.transfer_id;
  if (p.stream == nullptr) {
    const KvSnapshot& kv = *p.kv;
    layer.n_tokens = kv.n_tokens();
    layer.n_kv_heads = kv.n_kv_heads();
    layer.head_dim = kv.head_dim();
    layer.dtype = p.wire_dtype;
    for (int l = 0; l < kv.n_layers(); ++l) {
      layer.layer = l;
      layer.first = kv.first(l);
      kv.LayerPayload(l, p.wire_dtype, &layer.payload);
      if (absl::Status s = write(layer); !s.ok()) return s;
    }
    TANDEM_RETURN_IF_ERROR(peer_aborted());
    return write(CommitFrame{p.transfer_id, p.first_token, p.seed});
  }
  KvLayerStream& stream = *p.stream;
  layer.n_tokens = stream.n_tokens();
  layer.n_kv_heads = stream.n_kv_heads();
  layer.head_dim = stream.head_dim();
  layer.dtype = stream.dtype();
  // The engine thread adds a layer per layer of its step; a stream that goes quiet for this
  // long has lost its producer.
  constexpr absl::Duration kProducerTimeout = absl::Seconds(60);
  while (true) {
    std::optional<KvLayerStream::Item> item = stream.Next(absl::Now() + kProducerTimeout);
    if (!item) {
      (void)write(AbortFrame{p.transfer_id, "the prefill step produced no more KV",
                             absl::StatusCode::kDeadlineExceeded});
      return absl::DeadlineExceededError(
          StrCat("kv transfer ", p.transfer_id, ": the prefill step produced no more KV"));
    }
    switch (item->kind) {
      case KvLayerStream::Item::kLayer:
        layer.layer = item->layer;
        layer.first = item->first;
        layer.payload = std::move(item->payload);
        if (absl::Status s = write(layer); !s.ok()) return s;
        break;
      case KvLayerStream::Item::kCommit:
        TANDEM_RETURN_IF_ERROR(peer_aborted());
        return write(CommitFrame{p.transfer_id, item->first_token, item->seed});
      case KvLayerStream::Item::kCancel:
        (void)write(AbortFrame{p.transfer_id, item->reason, absl::StatusCode::kCancelled});
        return absl::CancelledError(item->reason);
    }
  }
}

}  // namespace tandem::kvcache
