#include "kvcache/transfer/kv_receiver.h"

#include <algorithm>
#include <map>
#include <utility>
#include <vector>

#include "common/str_cat.h"
#include "kvcache/transfer/kv_snapshot.h"

namespace tandem::kvcache {

struct KvReceiver::Conn {
  std::unique_ptr<KvConnection> conn;
  std::thread thread;
  std::atomic<bool> done{false};
};

namespace {

// One transfer in flight on a connection.
struct Transfer {
  explicit Transfer(uint64_t id) : session(id) {}
  KvReceiveSession session;
  KvReservation lease;
  absl::Time deadline;
};

}  // namespace

std::unique_ptr<KvReceiver> KvReceiver::Start(std::unique_ptr<KvListener> listener,
                                              KvReceiveTarget& target,
                                              const KvReceiverConfig& config) {
  std::unique_ptr<KvReceiver> r(new KvReceiver(std::move(listener), target, config));
  r->accept_thread_ = std::thread([p = r.get()] { p->AcceptLoop(); });
  return r;
}

KvReceiver::KvReceiver(std::unique_ptr<KvListener> listener, KvReceiveTarget& target,
                       const KvReceiverConfig& config)
    : config_(config),
      target_(target),
      address_(listener->address()),
      listener_(std::move(listener)) {}

KvReceiver::~KvReceiver() { Stop(); }

void KvReceiver::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !accept_thread_.joinable()) return;
    stopping_ = true;
    for (Conn& c : conns_) c.conn->Shutdown();
  }
  listener_->Shutdown();
  if (accept_thread_.joinable()) accept_thread_.join();
  // The accept thread is gone: nobody adds to conns_ any more.
  std::list<Conn> conns;
  {
    std::lock_guard<std::mutex> lock(mu_);
    conns.swap(conns_);
  }
  for (Conn& c : conns) c.thread.join();
}

KvReceiverStats KvReceiver::stats() const {
  return {.connections = connections_.load(),
          .committed = committed_.load(),
          .aborted = aborted_.load(),
          .refused = refused_.load(),
          .bytes = bytes_.load(),
          .refused_peers = refused_peers_.load()};
}

void KvReceiver::AcceptLoop() {
  while (true) {
    absl::StatusOr<std::unique_ptr<KvConnection>> a = listener_->Accept(absl::Milliseconds(200));
    std::lock_guard<std::mutex> lock(mu_);
    // Reap connections that ended.
    for (auto it = conns_.begin(); it != conns_.end();) {
      if (it->done.load()) {
        it->thread.join();
        it = conns_.erase(it);
      } else {
        ++it;
      }
    }
    if (!a.ok() || stopping_) return;
    if (*a == nullptr) continue;
    connections_.fetch_add(1);
    Conn& c = conns_.emplace_back();
    c.conn = std::move(*a);
    c.thread = std::thread([this, &c] { Serve(&c); });
  }
}

void KvReceiver::Serve(Conn* c) {
  KvConnection& conn = *c->conn;
  absl::Status auth =
      config_.secret.empty()
          ? (IsLoopbackPeer(conn.peer())
                 ? absl::OkStatus()
                 : absl::PermissionDeniedError(
                       StrCat("KV peer ", conn.peer(),
                              ": without a cluster secret only loopback peers are served")))
          : CheckAuthPreamble(conn, config_.secret, absl::Seconds(5));
  if (!auth.ok()) {
    refused_peers_.fetch_add(1);
    if (config_.on_refused_peer) config_.on_refused_peer(auth);
    conn.Shutdown();
    c->done.store(true);
    return;
  }
  std::map<uint64_t, Transfer> live;
  FrameParser parser(config_.max_frame_bytes);
  std::string out;
  auto send = [&](const Frame& f) {
    out.clear();
    EncodeFrame(f, &out);
    // A peer that is gone hears nothing; the read side notices and ends the connection.
    (void)conn.Write(out);
  };
  auto tell_abort = [&](uint64_t id, const absl::Status& why) {
    send(AbortFrame{id, std::string(why.message()), why.code()});
  };
  auto abort = [&](std::map<uint64_t, Transfer>::iterator it, const absl::Status& why,
                   bool tell_peer) {
    const uint64_t id = it->first;
    const uint64_t lease = it->second.lease.lease_id;
    // Counted first: whoever hears of the end from the target sees the counts.
    aborted_.fetch_add(1);
    open_.fetch_sub(1);
    live.erase(it);
    target_.Abort(id, lease, why);
    if (tell_peer) tell_abort(id, why);
  };

  auto handle = [&](Frame& frame) {
    const uint64_t id = TransferIdOf(frame);
    auto it = live.find(id);
    switch (TypeOf(frame)) {
      case FrameType::kReserve: {
        if (it != live.end()) {
          abort(it, absl::FailedPreconditionError(StrCat("kv transfer ", id, ": second Reserve")),
                true);
          return;
        }
        Transfer t(id);
        if (absl::Status s = t.session.OnFrame(frame); !s.ok()) {
          refused_.fetch_add(1);
          tell_abort(id, s);
          return;
        }
        const ReserveFrame& r = std::get<ReserveFrame>(frame);
        t.deadline = absl::Now() + config_.transfer_timeout;
        absl::StatusOr<KvReservation> lease = target_.Reserve(r, t.deadline);
        if (!lease.ok()) {
          refused_.fetch_add(1);
          tell_abort(id, lease.status());
          return;
        }
        t.lease = std::move(*lease);
        const ReserveOkFrame ok{id, t.lease.lease_id, absl::ToUnixMillis(t.deadline)};
        live.emplace(id, std::move(t));
        open_.fetch_add(1);
        send(ok);
        return;
      }
      case FrameType::kLayer: {
        if (it == live.end()) {
          tell_abort(id, absl::FailedPreconditionError(
                             StrCat("kv transfer ", id, ": a layer with no reservation")));
          return;
        }
        if (absl::Status s = it->second.session.OnFrame(frame); !s.ok()) {
          abort(it, s, true);
          return;
        }
        const LayerFrame& l = std::get<LayerFrame>(frame);
        if (absl::Status s = WriteLayerPayload(l, it->second.lease.view, it->second.lease.groups,
                                               it->second.lease.table);
            !s.ok()) {
          abort(it, s, true);
        }
        return;
      }
      case FrameType::kCommit: {
        if (it == live.end()) {
          tell_abort(id, absl::FailedPreconditionError(
                             StrCat("kv transfer ", id, ": a commit with no reservation")));
          return;
        }
        if (absl::Status s = it->second.session.OnFrame(frame); !s.ok()) {
          abort(it, s, true);
          return;
        }
        committed_.fetch_add(1);
        open_.fetch_sub(1);
        target_.Commit(*it->second.session.reserve(), it->second.lease,
                       std::get<CommitFrame>(frame));
        live.erase(it);
        return;
      }
      case FrameType::kAbort:
        if (it != live.end()) abort(it, AbortStatus(std::get<AbortFrame>(frame)), false);
        return;
      case FrameType::kReserveOk: {
        const absl::Status bad = absl::InvalidArgumentError(
            StrCat("kv transfer ", id, ": ReserveOk sent to the receiving side"));
        if (it != live.end()) {
          abort(it, bad, true);
        } else {
          tell_abort(id, bad);
        }
        return;
      }
    }
  };

  std::vector<char> buf(1 << 20);
  absl::Status end;
  while (end.ok()) {
    // Transfers past their deadline.
    absl::Time now = absl::Now();
    absl::Duration wait = absl::Milliseconds(200);
    for (auto it = live.begin(); it != live.end();) {
      auto next = std::next(it);
      if (it->second.deadline <= now) {
        abort(
            it,
            absl::DeadlineExceededError(StrCat("kv transfer ", it->first, " not committed within ",
                                               absl::FormatDuration(config_.transfer_timeout))),
            true);
      } else {
        wait = std::min(wait, it->second.deadline - now);
      }
      it = next;
    }
    absl::StatusOr<size_t> n = conn.Read(buf.data(), buf.size(), wait);
    if (!n.ok()) {
      end = n.status();
      break;
    }
    if (*n == 0) continue;
    bytes_.fetch_add(*n);
    if (absl::Status s = parser.Feed(std::string_view(buf.data(), *n)); !s.ok()) {
      end = s;
      break;
    }
    while (true) {
      absl::StatusOr<std::optional<Frame>> f = parser.Next();
      if (!f.ok()) {
        end = f.status();
        break;
      }
      if (!f->has_value()) break;
      handle(**f);
    }
  }
  // The connection is lost or its stream corrupt: every transfer on it ends now, not at its
  // deadline. A corrupt stream's peer may still listen: tell it.
  const bool peer_listens = end.code() != absl::StatusCode::kUnavailable;
  const absl::Status why = peer_listens
                               ? absl::DataLossError(StrCat("kv connection from ", conn.peer(),
                                                            ": bad stream: ", end.message()))
                               : absl::UnavailableError(StrCat("kv connection from ", conn.peer(),
                                                               " lost: ", end.message()));
  while (!live.empty()) abort(live.begin(), why, peer_listens);
  conn.Shutdown();
  c->done.store(true);
}

}  // namespace tandem::kvcache
