#include "kvcache/transfer/kv_nccl_transport.h"

#include <algorithm>
#include <utility>

#include "common/check.h"
#include "common/str_cat.h"

namespace tandem::kvcache {
namespace {

constexpr char kHelloMagic[] = "TKVN";
constexpr uint8_t kHelloVersion = 1;
// Bounds on what a hello may announce, so a hostile peer sizes nothing.
constexpr uint32_t kMaxLayoutBytes = 64 << 10;
constexpr uint32_t kMaxBootstrapBytes = 4 << 10;
constexpr uint32_t kMaxMessageBytes = 4 << 10;
// How long after a transfer's deadline the receiver's watchdog steps in.
constexpr absl::Duration kWatchdogGrace = absl::Milliseconds(500);

void PutU32(uint32_t x, std::string* out) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(x >> (8 * i)));
}
uint32_t GetU32(const char* p) {
  uint32_t x = 0;
  for (int i = 0; i < 4; ++i) x |= static_cast<uint32_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return x;
}

// Reads exactly `n` bytes by `until` (the preamble and hello only: frames go to a parser).
absl::Status ReadExactly(KvConnection& conn, char* p, size_t n, absl::Time until) {
  while (n > 0) {
    const absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(StrCat("KV peer ", conn.peer(), " said nothing in time"));
    }
    TANDEM_ASSIGN_OR_RETURN(const size_t got, conn.Read(p, n, left));
    p += got;
    n -= got;
  }
  return absl::OkStatus();
}

struct Hello {
  std::string kind;
  KvDirectLayout layout;
  std::string bootstrap;
};

absl::StatusOr<Hello> ReadHello(KvConnection& conn, absl::Time until) {
  char head[6];
  TANDEM_RETURN_IF_ERROR(ReadExactly(conn, head, sizeof(head), until));
  if (std::string_view(head, 4) != kHelloMagic) {
    return absl::InvalidArgumentError(
        "the KV peer does not speak the direct (nccl) transport: no hello (a tcp or shm sender?)");
  }
  if (static_cast<uint8_t>(head[4]) != kHelloVersion) {
    return absl::InvalidArgumentError(StrCat("direct KV transport hello of version ",
                                             static_cast<int>(static_cast<uint8_t>(head[4]))));
  }
  Hello h;
  h.kind.resize(static_cast<uint8_t>(head[5]));
  TANDEM_RETURN_IF_ERROR(ReadExactly(conn, h.kind.data(), h.kind.size(), until));
  char len[4];
  TANDEM_RETURN_IF_ERROR(ReadExactly(conn, len, 4, until));
  const uint32_t layout_bytes = GetU32(len);
  if (layout_bytes > kMaxLayoutBytes) return absl::InvalidArgumentError("an oversized KV layout");
  std::string layout(layout_bytes, '\0');
  TANDEM_RETURN_IF_ERROR(ReadExactly(conn, layout.data(), layout.size(), until));
  TANDEM_ASSIGN_OR_RETURN(h.layout, DecodeDirectLayout(layout));
  TANDEM_RETURN_IF_ERROR(ReadExactly(conn, len, 4, until));
  const uint32_t boot_bytes = GetU32(len);
  if (boot_bytes > kMaxBootstrapBytes) {
    return absl::InvalidArgumentError("an oversized data plane bootstrap");
  }
  h.bootstrap.resize(boot_bytes);
  TANDEM_RETURN_IF_ERROR(ReadExactly(conn, h.bootstrap.data(), h.bootstrap.size(), until));
  return h;
}

std::string EncodeAnswer(const absl::Status& s) {
  std::string out(kHelloMagic, 4);
  PutU32(static_cast<uint32_t>(s.code()), &out);
  const std::string msg(s.message().substr(0, kMaxMessageBytes));
  PutU32(static_cast<uint32_t>(msg.size()), &out);
  out.append(msg);
  return out;
}

absl::Status ReadAnswer(KvConnection& conn, absl::Time until) {
  char head[12];
  TANDEM_RETURN_IF_ERROR(ReadExactly(conn, head, sizeof(head), until));
  if (std::string_view(head, 4) != kHelloMagic) {
    return absl::DataLossError("the KV peer answered the hello with something else");
  }
  const uint32_t code = GetU32(head + 4);
  const uint32_t n = GetU32(head + 8);
  if (n > kMaxMessageBytes) return absl::DataLossError("an oversized answer to the hello");
  std::string msg(n, '\0');
  TANDEM_RETURN_IF_ERROR(ReadExactly(conn, msg.data(), msg.size(), until));
  if (code == 0) return absl::OkStatus();
  // The peer's verdict, kept as the peer gave it: a layout mismatch is FailedPrecondition.
  const absl::StatusCode c = code <= static_cast<uint32_t>(absl::StatusCode::kUnauthenticated)
                                 ? static_cast<absl::StatusCode>(code)
                                 : absl::StatusCode::kUnknown;
  return absl::Status(c, StrCat("the KV peer ", conn.peer(), " refused: ", msg));
}

}  // namespace

std::string EncodeNcclHello(std::string_view kind, const KvDirectLayout& layout,
                            std::string_view bootstrap) {
  std::string out(kHelloMagic, 4);
  out.push_back(static_cast<char>(kHelloVersion));
  out.push_back(static_cast<char>(kind.size()));
  out.append(kind);
  std::string l;
  EncodeDirectLayout(layout, &l);
  PutU32(static_cast<uint32_t>(l.size()), &out);
  out.append(l);
  PutU32(static_cast<uint32_t>(bootstrap.size()), &out);
  out.append(bootstrap);
  return out;
}

// KvNcclPusher ---------------------------------------------------------------------------------

KvNcclPusher::KvNcclPusher(Connect connect, KvDataPlaneFactory& planes, KvNcclPusherConfig config)
    : connect_(std::move(connect)), planes_(planes), config_(std::move(config)) {
  thread_ = std::thread([this] { Loop(); });
}

KvNcclPusher::~KvNcclPusher() { Stop(); }

void KvNcclPusher::Push(KvNcclPush push) {
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

KvNcclStats KvNcclPusher::stats() const {
  return {.committed = committed_.load(),
          .failed = failed_.load(),
          .cancelled = cancelled_.load(),
          .bytes = bytes_.load(),
          .reserve_retries = retries_.load(),
          .connections = connects_.load(),
          .refused_peers = refused_.load(),
          .planes = planes_made_.load(),
          .planes_aborted = planes_aborted_.load(),
          .watchdog_fired = watchdog_.fired()};
}

void KvNcclPusher::Stop() {
  std::deque<KvNcclPush> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    if (plane_) plane_->Abort(absl::UnavailableError("the KV sender is stopping"));
    if (conn_) conn_->Shutdown();
    left.swap(queue_);
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  watchdog_.Stop();
  for (KvNcclPush& p : left) {
    queued_.fetch_sub(1);
    failed_.fetch_add(1);
    p.done(absl::UnavailableError("the KV sender stopped before this transfer started"));
  }
}

void KvNcclPusher::Teardown(const absl::Status& why) {
  std::shared_ptr<KvDataPlane> plane;
  std::shared_ptr<KvConnection> conn;
  {
    std::lock_guard<std::mutex> lock(mu_);
    plane.swap(plane_);
    conn.swap(conn_);
  }
  if (plane) {
    plane->Abort(why);
    planes_aborted_.fetch_add(1);
  }
  if (conn) conn->Shutdown();
  parser_.reset();
}

void KvNcclPusher::Loop() {
  while (true) {
    KvNcclPush p;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      p = std::move(queue_.front());
      queue_.pop_front();
      queued_.fetch_sub(1);
    }
    absl::Status s = Send(p);
    waiting_for_room_.store(false);
    if (s.ok()) {
      committed_.fetch_add(1);
    } else if (s.code() == absl::StatusCode::kCancelled) {
      cancelled_.fetch_add(1);
    } else {
      failed_.fetch_add(1);
    }
    p.done(s);
  }
}

absl::Status KvNcclPusher::Open() {
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<KvConnection> c, connect_());
  std::shared_ptr<KvConnection> conn(std::move(c));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      conn->Shutdown();
      return absl::UnavailableError("the KV sender is stopped");
    }
    conn_ = conn;
  }
  connects_.fetch_add(1);
  const absl::Time until = absl::Now() + config_.connect_timeout;
  absl::StatusOr<std::unique_ptr<KvDataPlaneOffer>> offer = planes_.Offer();
  if (!offer.ok()) return offer.status();
  TANDEM_RETURN_IF_ERROR(
      conn->Write(EncodeNcclHello(planes_.kind(), config_.layout, (*offer)->bootstrap())));
  if (absl::Status s = ReadAnswer(*conn, until); !s.ok()) {
    if (s.code() == absl::StatusCode::kFailedPrecondition ||
        s.code() == absl::StatusCode::kInvalidArgument) {
      refused_.fetch_add(1);
    }
    return s;
  }
  // The connection's stalls end by the watchdog: Stop or a deadline shuts it down.
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<KvDataPlane> plane, (*offer)->Connect(until));
  std::lock_guard<std::mutex> lock(mu_);
  plane_ = std::shared_ptr<KvDataPlane>(std::move(plane));
  planes_made_.fetch_add(1);
  parser_.emplace();
  if (stopping_) return absl::UnavailableError("the KV sender is stopped");
  return absl::OkStatus();
}

absl::StatusOr<Frame> KvNcclPusher::Await(uint64_t transfer_id, absl::Time until) {
  std::shared_ptr<KvConnection> conn;
  {
    std::lock_guard<std::mutex> lock(mu_);
    conn = conn_;
  }
  if (!conn) return absl::UnavailableError("the KV connection is closed");
  char buf[4096];
  bool polled = false;  // one read is tried even when `until` has passed
  while (true) {
    absl::StatusOr<std::optional<Frame>> f = parser_->Next();
    if (!f.ok()) return absl::DataLossError(StrCat("from the KV peer: ", f.status().message()));
    if (f->has_value()) {
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
    TANDEM_ASSIGN_OR_RETURN(const size_t n, conn->Read(buf, sizeof(buf), left));
    if (n > 0) {
      if (absl::Status s = parser_->Feed(std::string_view(buf, n)); !s.ok()) {
        return absl::DataLossError(StrCat("from the KV peer: ", s.message()));
      }
    }
  }
}

absl::Status KvNcclPusher::Send(const KvNcclPush& p) {
  bool open = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the KV sender is stopped");
    open = conn_ != nullptr && plane_ != nullptr;
  }
  if (!open) {
    if (absl::Status s = Open(); !s.ok()) {
      Teardown(s);
      // Nothing was queued on a plane: a cancel that came meanwhile is still a cancel.
      return s;
    }
  }
  std::shared_ptr<KvConnection> conn;
  std::shared_ptr<KvDataPlane> plane;
  {
    std::lock_guard<std::mutex> lock(mu_);
    conn = conn_;
    plane = plane_;
  }
  if (!conn || !plane) return absl::UnavailableError("the KV sender is stopped");
  auto write = [&](const Frame& f) {
    out_.clear();
    EncodeFrame(f, &out_);
    return conn->Write(out_);
  };
  const KvDirectLayout& lay = config_.layout;
  KvNcclLayerStream& stream = *p.stream;
  if (stream.n_layers() != lay.n_layers) {
    return absl::InvalidArgumentError(
        StrCat("a stream of ", stream.n_layers(), " layers for a cache of ", lay.n_layers));
  }
  const ReserveFrame reserve{p.transfer_id,  stream.n_tokens(), lay.n_layers,
                             lay.n_kv_heads, lay.head_dim,      lay.dtype};

  // Reserve, retried while the peer has no room (as KvPusher). Nothing is queued on the plane
  // yet, so a failure here leaves the connection usable unless the connection itself failed.
  constexpr absl::Duration kAnswerTimeout = absl::Seconds(10);
  absl::Duration backoff = absl::Milliseconds(2);
  ReserveOkFrame ok;
  while (true) {
    absl::Status s = write(reserve);
    absl::StatusOr<Frame> answer =
        s.ok() ? Await(p.transfer_id, absl::Now() + kAnswerTimeout) : absl::StatusOr<Frame>(s);
    // Cleared by any answer but "no room" (set again below then).
    waiting_for_room_.store(false);
    if (!answer.ok()) {
      // The peer may still reserve and queue receives: this connection is done.
      (void)write(AbortFrame{p.transfer_id, "no answer to Reserve in time",
                             absl::StatusCode::kDeadlineExceeded});
      Teardown(answer.status());
      return answer.status();
    }
    if (std::holds_alternative<ReserveOkFrame>(*answer)) {
      ok = std::get<ReserveOkFrame>(*answer);
      break;
    }
    if (!std::holds_alternative<AbortFrame>(*answer)) {
      const absl::Status bad = absl::DataLossError(
          StrCat("kv transfer ", p.transfer_id, ": the peer answered Reserve with frame type ",
                 static_cast<int>(TypeOf(*answer))));
      Teardown(bad);
      return bad;
    }
    const absl::Status refused = AbortStatus(std::get<AbortFrame>(*answer));
    if (refused.code() != absl::StatusCode::kResourceExhausted) {
      // Refused for a reason of the peer's own (it is stopping, or its layout changed): nothing
      // is queued on the plane yet, and the next push connects afresh and hears it in the hello.
      Teardown(refused);
      return refused;
    }
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

  // The peer has queued a receive per layer: from here on, any failure ends the plane.
  absl::Time deadline = absl::Now() + config_.transfer_timeout;
  if (ok.expires_unix_ms > 0)
    deadline = std::min(deadline, absl::FromUnixMillis(ok.expires_unix_ms));
  // The loop below keeps the deadline itself when it can (and tells the peer why); the
  // watchdog is for a thread blocked in the plane or on the connection, a moment later.
  const uint64_t token =
      watchdog_.Arm(deadline + kWatchdogGrace, [plane, conn, id = p.transfer_id] {
        plane->Abort(absl::DeadlineExceededError(
            StrCat("kv transfer ", id, ": the watchdog ended it at its deadline")));
        conn->Shutdown();
      });
  auto fail = [&](absl::Status why, bool tell_peer) {
    watchdog_.Disarm(token);
    // First the plane: once it is aborted no send reads the source blocks any more.
    plane->Abort(why);
    if (tell_peer) (void)write(AbortFrame{p.transfer_id, std::string(why.message()), why.code()});
    Teardown(why);
    return why;
  };
  // An Abort the peer sent meanwhile ends the transfer; checked without waiting.
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
  int next_layer = 0;
  uint64_t sent = 0;  // bytes of the layers queued on the plane
  absl::Time last_item = absl::Now();
  while (true) {
    const absl::Time give_up = std::min(deadline, last_item + config_.producer_timeout);
    // Short waits: between them, a stop, a broken plane or a peer that left end the transfer
    // now rather than at its deadline.
    std::optional<KvNcclLayerStream::Item> item =
        stream.Next(std::min(give_up, absl::Now() + absl::Milliseconds(100)));
    if (!item) {
      if (absl::Now() >= give_up) {
        return fail(absl::DeadlineExceededError(
                        StrCat("kv transfer ", p.transfer_id,
                               absl::Now() >= deadline ? ": past its deadline"
                                                       : ": the prefill step produced no more KV")),
                    true);
      }
      bool stopping = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        stopping = stopping_;
      }
      if (stopping) return fail(absl::UnavailableError("the KV sender is stopped"), false);
      if (absl::Status h = plane->Wait(absl::Now());
          !h.ok() && h.code() != absl::StatusCode::kDeadlineExceeded) {
        return fail(h, false);
      }
      if (absl::Status s = peer_aborted(); !s.ok()) return fail(s, false);
      continue;
    }
    last_item = absl::Now();
    switch (item->kind) {
      case KvNcclLayerStream::Item::kLayer: {
        if (item->layer != next_layer) {
          return fail(
              absl::InvalidArgumentError(StrCat(
                  "kv transfer ", p.transfer_id, ": layer ", item->layer, " came where layer ",
                  next_layer, " was due (the direct path sends layers in order)")),
              true);
        }
        if (absl::Status s = plane->Send(item->regions, item->ready); !s.ok()) {
          return fail(s, true);
        }
        for (const KvRegion& g : item->regions) sent += g.bytes;
        ++next_layer;
        if (absl::Status s = peer_aborted(); !s.ok()) return fail(s, false);
        break;
      }
      case KvNcclLayerStream::Item::kCommit: {
        if (next_layer != lay.n_layers) {
          return fail(
              absl::FailedPreconditionError(StrCat("kv transfer ", p.transfer_id, ": commit after ",
                                                   next_layer, " of ", lay.n_layers, " layers")),
              true);
        }
        // Every send done before Commit: the peer's receives are then done too, and the
        // source blocks are free to go once `done` runs.
        if (absl::Status s = plane->Wait(deadline); !s.ok()) {
          if (s.code() == absl::StatusCode::kDeadlineExceeded) {
            s = absl::DeadlineExceededError(StrCat("kv transfer ", p.transfer_id,
                                                   ": the layers were not sent by the deadline"));
          }
          return fail(s, true);
        }
        if (absl::Status s = peer_aborted(); !s.ok()) return fail(s, false);
        if (absl::Status s = write(CommitFrame{p.transfer_id, item->first_token, item->seed});
            !s.ok()) {
          return fail(s, false);
        }
        watchdog_.Disarm(token);
        bytes_.fetch_add(sent);
        return absl::OkStatus();
      }
      case KvNcclLayerStream::Item::kCancel:
        return fail(absl::CancelledError(item->reason), true);
    }
  }
}

// KvNcclReceiver -------------------------------------------------------------------------------

struct KvNcclReceiver::Conn {
  std::shared_ptr<KvConnection> conn;
  std::shared_ptr<KvDataPlane> plane;  // set once joined (under mu_)
  std::thread thread;
  std::atomic<bool> done{false};
};

std::unique_ptr<KvNcclReceiver> KvNcclReceiver::Start(std::unique_ptr<KvListener> listener,
                                                      KvReceiveTarget& target,
                                                      KvDataPlaneFactory& planes,
                                                      const KvNcclReceiverConfig& config) {
  std::unique_ptr<KvNcclReceiver> r(
      new KvNcclReceiver(std::move(listener), target, planes, config));
  r->accept_thread_ = std::thread([p = r.get()] { p->AcceptLoop(); });
  return r;
}

KvNcclReceiver::KvNcclReceiver(std::unique_ptr<KvListener> listener, KvReceiveTarget& target,
                               KvDataPlaneFactory& planes, const KvNcclReceiverConfig& config)
    : config_(config),
      target_(target),
      planes_(planes),
      address_(listener->address()),
      listener_(std::move(listener)) {}

KvNcclReceiver::~KvNcclReceiver() { Stop(); }

void KvNcclReceiver::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !accept_thread_.joinable()) return;
    stopping_ = true;
    for (Conn& c : conns_) {
      if (c.plane) c.plane->Abort(absl::UnavailableError("the KV receiver is stopping"));
      c.conn->Shutdown();
    }
  }
  listener_->Shutdown();
  if (accept_thread_.joinable()) accept_thread_.join();
  std::list<Conn> conns;
  {
    std::lock_guard<std::mutex> lock(mu_);
    conns.swap(conns_);
  }
  for (Conn& c : conns) c.thread.join();
  watchdog_.Stop();
}

KvNcclStats KvNcclReceiver::stats() const {
  return {.committed = committed_.load(),
          .failed = aborted_.load(),
          .refused = refused_.load(),
          .bytes = bytes_.load(),
          .connections = connections_.load(),
          .refused_peers = refused_peers_.load(),
          .planes = planes_made_.load(),
          .planes_aborted = planes_aborted_.load(),
          .watchdog_fired = watchdog_.fired()};
}

void KvNcclReceiver::AcceptLoop() {
  while (true) {
    absl::StatusOr<std::unique_ptr<KvConnection>> a = listener_->Accept(absl::Milliseconds(200));
    std::lock_guard<std::mutex> lock(mu_);
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
    c.conn = std::shared_ptr<KvConnection>(std::move(*a));
    c.thread = std::thread([this, &c] { Serve(&c); });
  }
}

void KvNcclReceiver::Serve(Conn* c) {
  KvConnection& conn = *c->conn;
  // Counted before the peer hears the verdict: whoever hears of it sees the count.
  auto refuse_peer = [&](const absl::Status& why, bool answer = false) {
    refused_peers_.fetch_add(1);
    if (config_.on_refused_peer) config_.on_refused_peer(why);
    if (answer) (void)conn.Write(EncodeAnswer(why));
    conn.Shutdown();
    c->done.store(true);
  };
  const absl::Status auth =
      config_.secret.empty()
          ? (IsLoopbackPeer(conn.peer())
                 ? absl::OkStatus()
                 : absl::PermissionDeniedError(
                       StrCat("KV peer ", conn.peer(),
                              ": without a cluster secret only loopback peers are served")))
          : CheckAuthPreamble(conn, config_.secret, absl::Seconds(5));
  if (!auth.ok()) return refuse_peer(auth);

  // The hello: the plane's kind, the sender's layout and the plane's bootstrap.
  const absl::Time until = absl::Now() + config_.connect_timeout;
  absl::StatusOr<Hello> hello = ReadHello(conn, until);
  absl::Status verdict = hello.status();
  if (verdict.ok() && hello->kind != planes_.kind()) {
    verdict = absl::FailedPreconditionError(StrCat("the KV sender's data plane is '", hello->kind,
                                                   "', this receiver's '", planes_.kind(), "'"));
  }
  if (verdict.ok()) verdict = CheckDirectLayout(hello->layout, config_.layout);
  if (!verdict.ok()) return refuse_peer(verdict, /*answer=*/true);
  (void)conn.Write(EncodeAnswer(verdict));
  absl::StatusOr<std::unique_ptr<KvDataPlane>> joined = planes_.Join(hello->bootstrap, until);
  if (!joined.ok()) {
    conn.Shutdown();
    c->done.store(true);
    return;
  }
  std::shared_ptr<KvDataPlane> plane(std::move(*joined));
  {
    std::lock_guard<std::mutex> lock(mu_);
    c->plane = plane;
    if (stopping_) plane->Abort(absl::UnavailableError("the KV receiver is stopping"));
  }
  planes_made_.fetch_add(1);

  // The transfer in flight on this connection (one at a time).
  struct Live {
    ReserveFrame reserve;
    KvReservation lease;
    absl::Time deadline;
    uint64_t watchdog = 0;
    uint64_t bytes = 0;  // of every layer's regions
  };
  std::optional<Live> live;
  FrameParser parser;
  std::string out;
  auto send = [&](const Frame& f) {
    out.clear();
    EncodeFrame(f, &out);
    (void)conn.Write(out);
  };
  auto tell_abort = [&](uint64_t id, const absl::Status& why) {
    send(AbortFrame{id, std::string(why.message()), why.code()});
  };
  // Ends the live transfer: the plane first (no receive writes into the lease afterwards),
  // then the lease goes back. The plane is not used again: returns the error that ends the
  // connection.
  auto fail_live = [&](const absl::Status& why, bool tell_peer) {
    if (!live) return why;
    watchdog_.Disarm(live->watchdog);
    plane->Abort(why);
    planes_aborted_.fetch_add(1);
    aborted_.fetch_add(1);
    open_.fetch_sub(1);
    const uint64_t id = live->reserve.transfer_id, lease = live->lease.lease_id;
    live.reset();
    target_.Abort(id, lease, why);
    if (tell_peer) tell_abort(id, why);
    return why;
  };

  // Handles one frame; a non-OK return ends the connection.
  auto handle = [&](const Frame& frame) -> absl::Status {
    const uint64_t id = TransferIdOf(frame);
    const bool ours = live && live->reserve.transfer_id == id;
    switch (TypeOf(frame)) {
      case FrameType::kReserve: {
        if (live) {
          return fail_live(absl::FailedPreconditionError(StrCat(
                               "kv transfer ", id, ": a Reserve while transfer ",
                               live->reserve.transfer_id, " is under way on this connection")),
                           true);
        }
        const ReserveFrame& r = std::get<ReserveFrame>(frame);
        const KvDirectLayout& lay = config_.layout;
        if (r.n_layers != lay.n_layers || r.n_kv_heads != lay.n_kv_heads ||
            r.head_dim != lay.head_dim || r.dtype != lay.dtype) {
          refused_.fetch_add(1);
          tell_abort(id,
                     absl::InvalidArgumentError(StrCat(
                         "kv transfer ", id, ": a Reserve of another layout than the hello's")));
          return absl::OkStatus();
        }
        const absl::Time deadline = absl::Now() + config_.transfer_timeout;
        absl::StatusOr<KvReservation> lease = target_.Reserve(r, deadline);
        if (!lease.ok()) {
          refused_.fetch_add(1);
          tell_abort(id, lease.status());
          return absl::OkStatus();
        }
        // Every layer's blocks, checked before anything is queued.
        std::vector<std::vector<KvRegion>> regions(r.n_layers);
        absl::Status s;
        if (lease->view.block_size != lay.block_size || lease->view.dtype != lay.dtype) {
          s = absl::FailedPreconditionError(
              "the reservation is not of the cache layout this receiver announced");
        }
        for (int l = 0; s.ok() && l < r.n_layers; ++l) {
          s = DirectLayerRegions(lease->view, lease->groups, lease->table, l, r.n_tokens,
                                 &regions[l]);
        }
        if (!s.ok()) {
          refused_.fetch_add(1);
          target_.Abort(id, lease->lease_id, s);
          tell_abort(id, s);
          return absl::OkStatus();
        }
        live = Live{r, std::move(*lease), deadline, 0, 0};
        for (const std::vector<KvRegion>& layer : regions) {
          for (const KvRegion& g : layer) live->bytes += g.bytes;
        }
        open_.fetch_add(1);
        // The loop below enforces the deadline itself; the watchdog is the backstop for a
        // thread blocked in the plane, a moment later.
        live->watchdog = watchdog_.Arm(deadline + kWatchdogGrace, [plane, conn = c->conn, id] {
          plane->Abort(absl::DeadlineExceededError(
              StrCat("kv transfer ", id, ": the watchdog ended it at its deadline")));
          conn->Shutdown();
        });
        for (int l = 0; l < r.n_layers; ++l) {
          if (absl::Status q = plane->Recv(regions[l]); !q.ok()) return fail_live(q, true);
        }
        send(ReserveOkFrame{id, live->lease.lease_id, absl::ToUnixMillis(deadline)});
        return absl::OkStatus();
      }
      case FrameType::kCommit: {
        if (!ours) {
          const absl::Status bad = absl::FailedPreconditionError(
              StrCat("kv transfer ", id, ": a commit with no reservation"));
          tell_abort(id, bad);
          return live ? fail_live(bad, true) : absl::OkStatus();
        }
        absl::Status s = plane->Wait(live->deadline);
        if (!s.ok()) {
          if (s.code() == absl::StatusCode::kDeadlineExceeded) {
            s = absl::DeadlineExceededError(StrCat("kv transfer ", id, " not received within ",
                                                   absl::FormatDuration(config_.transfer_timeout)));
          }
          return fail_live(s, true);
        }
        watchdog_.Disarm(live->watchdog);
        committed_.fetch_add(1);
        bytes_.fetch_add(live->bytes);
        open_.fetch_sub(1);
        const Live done = std::move(*live);
        live.reset();
        target_.Commit(done.reserve, done.lease, std::get<CommitFrame>(frame));
        return absl::OkStatus();
      }
      case FrameType::kAbort:
        // Its receives will never be matched: the plane goes with it.
        if (ours) return fail_live(AbortStatus(std::get<AbortFrame>(frame)), false);
        return absl::OkStatus();
      case FrameType::kLayer:
      case FrameType::kReserveOk: {
        const absl::Status bad = absl::InvalidArgumentError(
            StrCat("kv transfer ", id, ": frame type ", static_cast<int>(TypeOf(frame)),
                   " on a direct (nccl) connection, where layers travel on the data plane"));
        if (live) return fail_live(bad, true);
        tell_abort(id, bad);
        return bad;
      }
    }
    return absl::OkStatus();
  };

  std::vector<char> buf(64 << 10);
  absl::Status end;
  while (end.ok()) {
    absl::Duration wait = absl::Milliseconds(200);
    if (live) {
      const absl::Time now = absl::Now();
      if (live->deadline <= now) {
        end = fail_live(absl::DeadlineExceededError(StrCat(
                            "kv transfer ", live->reserve.transfer_id, " not committed within ",
                            absl::FormatDuration(config_.transfer_timeout))),
                        true);
        break;
      }
      wait = std::min(wait, live->deadline - now);
    }
    absl::StatusOr<size_t> n = conn.Read(buf.data(), buf.size(), wait);
    if (!n.ok()) {
      end = n.status();
      break;
    }
    if (*n == 0) continue;
    if (absl::Status s = parser.Feed(std::string_view(buf.data(), *n)); !s.ok()) {
      end = s;
      break;
    }
    while (end.ok()) {
      absl::StatusOr<std::optional<Frame>> f = parser.Next();
      if (!f.ok()) {
        end = f.status();
        break;
      }
      if (!f->has_value()) break;
      end = handle(**f);
    }
  }
  // The connection is lost, its stream corrupt, or a transfer failed: what is live fails, and
  // the plane goes with the connection.
  if (live && absl::Now() >= live->deadline) {
    // The watchdog ended the connection at the deadline: that is the reason.
    end = absl::DeadlineExceededError(StrCat("kv transfer ", live->reserve.transfer_id,
                                             " not committed within ",
                                             absl::FormatDuration(config_.transfer_timeout)));
  }
  const bool peer_listens = end.code() != absl::StatusCode::kUnavailable;
  (void)fail_live(end.code() == absl::StatusCode::kDeadlineExceeded ? end
                  : peer_listens ? absl::DataLossError(StrCat("kv connection from ", conn.peer(),
                                                              ": ", end.message()))
                                 : absl::UnavailableError(StrCat("kv connection from ", conn.peer(),
                                                                 " lost: ", end.message())),
                  peer_listens);
  plane->Abort(end.ok() ? absl::UnavailableError("the KV connection ended") : end);
  conn.Shutdown();
  c->done.store(true);
}

}  // namespace tandem::kvcache
