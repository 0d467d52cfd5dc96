#include "kvcache/transfer/kv_data_plane.h"

#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "common/check.h"
#include "common/str_cat.h"
#include "kvcache/kv_copy.h"
#include "kvcache/transfer/kv_tcp.h"

namespace tandem::kvcache {
namespace {

void PutU32(uint32_t x, std::string* out) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(x >> (8 * i)));
}
void PutU64(uint64_t x, std::string* out) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(x >> (8 * i)));
}
uint64_t GetLE(const char* p, int n) {
  uint64_t x = 0;
  for (int i = 0; i < n; ++i) x |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return x;
}

const char* DTypeName(kernels::KvDType d) {
  switch (d) {
    case kernels::KvDType::kF32:
      return "f32";
    case kernels::KvDType::kF16:
      return "f16";
    case kernels::KvDType::kInt8:
      return "int8";
  }
  return "?";
}

}  // namespace

KvDirectLayout DirectLayoutOf(const kernels::KvCacheView& view, const KvGroups& groups,
                              int n_layers) {
  KvDirectLayout l;
  l.n_layers = n_layers;
  l.n_kv_heads = view.n_kv_heads;
  l.head_dim = view.head_dim;
  l.block_size = view.block_size;
  l.dtype = view.dtype;
  l.kept_window.assign(n_layers, 0);
  if (groups.n_groups() > 0) {
    for (int il = 0; il < n_layers && il < static_cast<int>(groups.group_of.size()); ++il) {
      l.kept_window[il] = groups.window[groups.group_of[il]];
    }
  }
  return l;
}

absl::Status CheckDirectLayout(const KvDirectLayout& s, const KvDirectLayout& r) {
  auto refuse = [](std::string what) {
    return absl::FailedPreconditionError(StrCat(
        "the direct (block-to-block) KV path needs the same cache layout on both sides: ", what,
        "; the tcp and shm transports re-page and convert"));
  };
  if (s.n_layers != r.n_layers || s.n_kv_heads != r.n_kv_heads || s.head_dim != r.head_dim) {
    return refuse(StrCat("the sender has ", s.n_layers, " layers x ", s.n_kv_heads, " heads x ",
                         s.head_dim, ", the receiver ", r.n_layers, " x ", r.n_kv_heads, " x ",
                         r.head_dim));
  }
  if (s.block_size != r.block_size) {
    return refuse(
        StrCat("block size ", s.block_size, " on the sender, ", r.block_size, " on the receiver"));
  }
  if (s.dtype != r.dtype) {
    return refuse(StrCat("KV dtype ", DTypeName(s.dtype), " on the sender, ", DTypeName(r.dtype),
                         " on the receiver"));
  }
  if (s.kept_window.size() != static_cast<size_t>(s.n_layers) ||
      r.kept_window.size() != static_cast<size_t>(r.n_layers)) {
    return refuse("a layout without a window per layer");
  }
  for (int il = 0; il < s.n_layers; ++il) {
    if (s.kept_window[il] != r.kept_window[il]) {
      return refuse(StrCat("layer ", il, " keeps ",
                           s.kept_window[il] ? StrCat("a window of ", s.kept_window[il])
                                             : std::string("the whole context"),
                           " on the sender and ",
                           r.kept_window[il] ? StrCat("a window of ", r.kept_window[il])
                                             : std::string("the whole context"),
                           " on the receiver"));
    }
  }
  return absl::OkStatus();
}

void EncodeDirectLayout(const KvDirectLayout& l, std::string* out) {
  PutU32(static_cast<uint32_t>(l.n_layers), out);
  PutU32(static_cast<uint32_t>(l.n_kv_heads), out);
  PutU32(static_cast<uint32_t>(l.head_dim), out);
  PutU32(static_cast<uint32_t>(l.block_size), out);
  PutU32(static_cast<uint32_t>(l.dtype), out);
  PutU32(static_cast<uint32_t>(l.kept_window.size()), out);
  for (int w : l.kept_window) PutU32(static_cast<uint32_t>(w), out);
}

absl::StatusOr<KvDirectLayout> DecodeDirectLayout(std::string_view b) {
  constexpr size_t kFixed = 6 * 4;
  // The most layers a layout may name: a hostile count must not size anything.
  constexpr uint32_t kMaxLayers = 1 << 12;
  if (b.size() < kFixed) return absl::InvalidArgumentError("a KV layout shorter than its header");
  KvDirectLayout l;
  const uint32_t n_layers = GetLE(b.data(), 4);
  l.n_layers = static_cast<int>(n_layers);
  l.n_kv_heads = static_cast<int>(GetLE(b.data() + 4, 4));
  l.head_dim = static_cast<int>(GetLE(b.data() + 8, 4));
  l.block_size = static_cast<int>(GetLE(b.data() + 12, 4));
  const uint32_t dtype = GetLE(b.data() + 16, 4);
  const uint32_t n_windows = GetLE(b.data() + 20, 4);
  if (n_layers < 1 || n_layers > kMaxLayers || n_windows != n_layers || l.n_kv_heads < 1 ||
      l.head_dim < 1 || l.block_size < 1 ||
      dtype > static_cast<uint32_t>(kernels::KvDType::kInt8) ||
      b.size() != kFixed + 4 * static_cast<size_t>(n_windows)) {
    return absl::InvalidArgumentError("a malformed KV layout");
  }
  l.dtype = static_cast<kernels::KvDType>(dtype);
  for (uint32_t i = 0; i < n_windows; ++i) {
    const int w = static_cast<int>(GetLE(b.data() + kFixed + 4 * i, 4));
    if (w < 0) return absl::InvalidArgumentError("a malformed KV layout");
    l.kept_window.push_back(w);
  }
  return l;
}

absl::Status DirectLayerRegions(const kernels::KvCacheView& view, const KvGroups& groups,
                                const BlockTable& table, int layer, int n_tokens,
                                std::vector<KvRegion>* out) {
  out->clear();
  const int n_layers =
      groups.n_groups() > 0 ? static_cast<int>(groups.group_of.size()) : view.n_layers;
  if (layer < 0 || layer >= n_layers || n_tokens < 1 || table.block_size() != view.block_size) {
    return absl::InvalidArgumentError(
        StrCat("KV layer ", layer, " of ", n_tokens, " positions: not a layer of this cache"));
  }
  if (groups.n_groups() > 0 && groups.group_of[layer] >= table.num_groups()) {
    return absl::InvalidArgumentError(StrCat("the table lacks the group of KV layer ", layer));
  }
  const LayerDestination d = LayerDestinationOf(groups, table, layer, n_tokens);
  const int bs = view.block_size;
  const int first_block = d.first / bs;
  const int end_block = (n_tokens + bs - 1) / bs;
  const std::vector<int32_t>& blocks = d.table.blocks();
  if (static_cast<int>(blocks.size()) < end_block) {
    return absl::InvalidArgumentError(StrCat("a table of ", blocks.size(), " blocks for ", n_tokens,
                                             " positions of KV layer ", layer));
  }
  const size_t block_elems = static_cast<size_t>(view.n_kv_heads) * bs * view.head_dim;
  const size_t block_bytes = block_elems * kernels::KvElemBytes(view.dtype);
  const size_t scale_floats = static_cast<size_t>(view.n_kv_heads) * bs * 2;
  const bool int8 = view.dtype == kernels::KvDType::kInt8;
  for (int b = first_block; b < end_block; ++b) {
    if (blocks[b] < 0 || blocks[b] >= view.n_blocks) {
      return absl::InvalidArgumentError(StrCat("KV layer ", layer, ": block ", blocks[b],
                                               " at index ", b, " is not in the cache"));
    }
  }
  // One block of one layer: index (slot, block) of [n_layers, n_blocks, ...].
  auto at = [&](int b) { return static_cast<size_t>(d.slot) * view.n_blocks + blocks[b]; };
  for (void* base : {view.k, view.v}) {
    for (int b = first_block; b < end_block; ++b) {
      out->push_back({static_cast<char*>(base) + at(b) * block_bytes, block_bytes});
    }
  }
  if (int8) {
    for (float* base : {view.k_scale_zero, view.v_scale_zero}) {
      for (int b = first_block; b < end_block; ++b) {
        out->push_back({base + at(b) * scale_floats, scale_floats * sizeof(float)});
      }
    }
  }
  return absl::OkStatus();
}

namespace {

// The byte plane's header before each group's bytes: magic, regions, bytes.
constexpr uint32_t kDataMagic = 0x44564B54;  // "TKVD" read as little-endian u32
constexpr size_t kDataHeaderBytes = 16;

class BytePlane : public KvDataPlane {
 public:
  explicit BytePlane(std::unique_ptr<KvConnection> conn) : conn_(std::move(conn)) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~BytePlane() override {
    Abort(absl::CancelledError("the KV data plane was closed"));
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  absl::Status Send(std::span<const KvRegion> regions, kernels::Event) override {
    return Queue(true, regions);
  }
  absl::Status Recv(std::span<const KvRegion> regions) override { return Queue(false, regions); }

  absl::Status Wait(absl::Time until) override {
    std::unique_lock<std::mutex> lock(mu_);
    while (error_.ok() && (!ops_.empty() || busy_)) {
      const absl::Duration left = until - absl::Now();
      if (left <= absl::ZeroDuration()) {
        return absl::DeadlineExceededError("the KV data plane has not finished yet");
      }
      cv_.wait_for(lock, absl::ToChronoNanoseconds(left));
    }
    return error_;
  }

  void Abort(const absl::Status& why) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (error_.ok()) error_ = why.ok() ? absl::AbortedError("KV data plane aborted") : why;
    ops_.clear();
    // Wakes the worker out of a blocked read or write; it leaves the op with an error.
    conn_->Shutdown();
    cv_.notify_all();
    cv_.wait(lock, [&] { return !busy_; });
  }

 private:
  struct Op {
    bool send = false;
    std::vector<KvRegion> regions;
  };

  absl::Status Queue(bool send, std::span<const KvRegion> regions) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_.ok()) return error_;
    ops_.push_back({send, std::vector<KvRegion>(regions.begin(), regions.end())});
    cv_.notify_all();
    return absl::OkStatus();
  }

  void Loop() {
    while (true) {
      Op op;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return closing_ || (!ops_.empty() && error_.ok()); });
        if (closing_) return;
        op = std::move(ops_.front());
        ops_.pop_front();
        busy_ = true;
      }
      // Runs unlocked: Abort shuts the connection down, which ends a blocked read or write.
      absl::Status s = op.send ? SendOp(op.regions) : RecvOp(op.regions);
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
      if (!s.ok() && error_.ok()) {
        error_ = s;
        ops_.clear();
      }
      cv_.notify_all();
    }
  }

  absl::Status SendOp(const std::vector<KvRegion>& regions) {
    uint64_t total = 0;
    for (const KvRegion& r : regions) total += r.bytes;
    std::string header;
    PutU32(kDataMagic, &header);
    PutU32(static_cast<uint32_t>(regions.size()), &header);
    PutU64(total, &header);
    TANDEM_RETURN_IF_ERROR(conn_->Write(header));
    for (const KvRegion& r : regions) {
      TANDEM_RETURN_IF_ERROR(conn_->Write(std::string_view(static_cast<char*>(r.ptr), r.bytes)));
    }
    return absl::OkStatus();
  }

  absl::Status ReadExactly(char* p, size_t n) {
    while (n > 0) {
      // Long waits are fine: the transfer's watchdog ends a stalled plane.
      absl::StatusOr<size_t> got = conn_->Read(p, n, absl::Seconds(1));
      if (!got.ok()) return got.status();
      p += *got;
      n -= *got;
    }
    return absl::OkStatus();
  }

  absl::Status RecvOp(const std::vector<KvRegion>& regions) {
    uint64_t total = 0;
    for (const KvRegion& r : regions) total += r.bytes;
    char header[kDataHeaderBytes];
    TANDEM_RETURN_IF_ERROR(ReadExactly(header, sizeof(header)));
    const uint32_t magic = GetLE(header, 4);
    const uint32_t n = GetLE(header + 4, 4);
    const uint64_t bytes = GetLE(header + 8, 8);
    if (magic != kDataMagic || n != regions.size() || bytes != total) {
      // NCCL would not notice; this plane does, so a test of mismatched sides fails loudly.
      return absl::DataLossError(StrCat("the KV peer sent ", n, " regions of ", bytes,
                                        " bytes where ", regions.size(), " of ", total,
                                        " were expected (the two sides list different blocks)"));
    }
    for (const KvRegion& r : regions) {
      TANDEM_RETURN_IF_ERROR(ReadExactly(static_cast<char*>(r.ptr), r.bytes));
    }
    return absl::OkStatus();
  }

  // Constant after construction.
  std::unique_ptr<KvConnection> conn_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Op> ops_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;  // the worker is inside an op (touching regions)
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

// The offer: a listener for the one peer that presents the token.
class ByteOffer : public KvDataPlaneOffer {
 public:
  ByteOffer(std::unique_ptr<KvListener> listener, std::string token)
      : listener_(std::move(listener)), token_(std::move(token)) {
    bootstrap_ = StrCat(token_, listener_->address());
  }
  ~ByteOffer() override { listener_->Shutdown(); }
  const std::string& bootstrap() const override { return bootstrap_; }

  absl::StatusOr<std::unique_ptr<KvDataPlane>> Connect(absl::Time until) override {
    while (true) {
      const absl::Duration left = until - absl::Now();
      if (left <= absl::ZeroDuration()) {
        return absl::DeadlineExceededError("the KV peer did not join the data plane in time");
      }
      TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<KvConnection> c, listener_->Accept(left));
      if (c == nullptr) continue;
      std::string got(token_.size(), '\0');
      size_t have = 0;
      bool ok = true;
      while (have < got.size()) {
        absl::StatusOr<size_t> n =
            c->Read(got.data() + have, got.size() - have, until - absl::Now());
        if (!n.ok() || *n == 0) {
          ok = false;
          break;
        }
        have += *n;
      }
      // A stranger (or a stale peer) is dropped; the peer's own connection may still come.
      if (!ok || got != token_) {
        c->Shutdown();
        continue;
      }
      return std::unique_ptr<KvDataPlane>(std::make_unique<BytePlane>(std::move(c)));
    }
  }

 private:
  std::unique_ptr<KvListener> listener_;
  const std::string token_;
  std::string bootstrap_;
};

constexpr size_t kTokenBytes = 32;

class ByteFactory : public KvDataPlaneFactory {
 public:
  explicit ByteFactory(std::string host) : host_(std::move(host)) {}
  std::string_view kind() const override { return "bytes"; }

  absl::StatusOr<std::unique_ptr<KvDataPlaneOffer>> Offer() override {
    TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<KvListener> l, ListenTcp(host_, 0));
    static constexpr char kHex[] = "0123456789abcdef";
    std::random_device rd;
    std::string token;
    for (size_t i = 0; i < kTokenBytes; ++i) token.push_back(kHex[rd() % 16]);
    return std::unique_ptr<KvDataPlaneOffer>(std::make_unique<ByteOffer>(std::move(l), token));
  }

  absl::StatusOr<std::unique_ptr<KvDataPlane>> Join(std::string_view bootstrap,
                                                    absl::Time until) override {
    if (bootstrap.size() <= kTokenBytes) {
      return absl::InvalidArgumentError("byte data plane: a bootstrap without an address");
    }
    const absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError("no time left to join the KV data plane");
    }
    TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<KvConnection> c,
                            ConnectTcp(std::string(bootstrap.substr(kTokenBytes)), left));
    TANDEM_RETURN_IF_ERROR(c->Write(bootstrap.substr(0, kTokenBytes)));
    return std::unique_ptr<KvDataPlane>(std::make_unique<BytePlane>(std::move(c)));
  }

 private:
  const std::string host_;
};

}  // namespace

std::unique_ptr<KvDataPlaneFactory> MakeByteDataPlaneFactory(std::string host) {
  return std::make_unique<ByteFactory>(std::move(host));
}

}  // namespace tandem::kvcache
