#include "kvcache/transfer/kv_nccl_plane.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "common/str_cat.h"

namespace tandem::kvcache {
namespace {

std::string NcclError(ncclResult_t r, ncclComm_t comm) {
  std::string s = ncclGetErrorString(r);
  if (comm != nullptr) {
    const char* last = ncclGetLastError(comm);
    if (last != nullptr && last[0] != '\0') s = StrCat(s, ": ", last);
  }
  return s;
}

// The pause between two polls of a non-blocking call: short at first (a layer takes
// microseconds on NVLink), at most 1 ms.
void Backoff(int* spins) {
  if (*spins < 64) {
    std::this_thread::yield();
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(std::min(1000, (*spins - 63) * 10)));
  }
  ++*spins;
}

class NcclPlane : public KvDataPlane {
 public:
  // Joins the two-rank communicator of `id` as `rank` by `until`.
  static absl::StatusOr<std::unique_ptr<KvDataPlane>> Create(int device, const ncclUniqueId& id,
                                                             int rank, absl::Time until) {
    if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
      return absl::FailedPreconditionError(
          StrCat("KV data plane: CUDA device ", device, ": ", cudaGetErrorString(e)));
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    // Non-blocking: init, group ends and aborts return at once; progress is polled below, so
    // a peer that never joins costs a deadline, not a hang.
    config.blocking = 0;
    ncclComm_t comm = nullptr;
    ncclResult_t r = ncclCommInitRankConfig(&comm, 2, id, rank, &config);
    int spins = 0;
    while (r == ncclInProgress || r == ncclSuccess) {
      ncclResult_t state = ncclSuccess;
      if (ncclResult_t q = ncclCommGetAsyncError(comm, &state); q != ncclSuccess) {
        r = q;
        break;
      }
      if (state == ncclSuccess) {
        r = ncclSuccess;
        break;
      }
      if (state != ncclInProgress) {
        r = state;
        break;
      }
      if (absl::Now() >= until) {
        ncclCommAbort(comm);
        return absl::DeadlineExceededError(
            "KV data plane: the peer did not join the NCCL communicator in time");
      }
      Backoff(&spins);
    }
    if (r != ncclSuccess && r != ncclInProgress) {
      const std::string why = NcclError(r, comm);
      if (comm != nullptr) ncclCommAbort(comm);
      return absl::UnavailableError(StrCat("KV data plane: NCCL communicator init: ", why));
    }
    std::unique_ptr<NcclPlane> p(new NcclPlane(device, comm, rank == 0 ? 1 : 0));
    if (cudaError_t e = cudaStreamCreateWithFlags(&p->stream_, cudaStreamNonBlocking);
        e != cudaSuccess) {
      return absl::ResourceExhaustedError(StrCat("KV data plane stream: ", cudaGetErrorString(e)));
    }
    if (cudaError_t e = cudaEventCreateWithFlags(&p->done_, cudaEventDisableTiming);
        e != cudaSuccess) {
      return absl::ResourceExhaustedError(StrCat("KV data plane event: ", cudaGetErrorString(e)));
    }
    return std::unique_ptr<KvDataPlane>(std::move(p));
  }

  ~NcclPlane() override {
    Abort(absl::CancelledError("the KV data plane was closed"));
    if (done_ != nullptr) cudaEventDestroy(done_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::Status Send(std::span<const KvRegion> regions, kernels::Event ready) override {
    return Queue(true, regions, ready);
  }
  absl::Status Recv(std::span<const KvRegion> regions) override {
    return Queue(false, regions, kernels::Event{});
  }

  absl::Status Wait(absl::Time until) override {
    int spins = 0;
    while (true) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_.ok()) return error_;
        if (!queued_) return absl::OkStatus();
        cudaSetDevice(device_);
        const cudaError_t q = cudaEventQuery(done_);
        if (q == cudaSuccess) return absl::OkStatus();
        if (q != cudaErrorNotReady) {
          return FailLocked(
              absl::InternalError(StrCat("KV data plane: CUDA error: ", cudaGetErrorString(q))));
        }
        // A peer that died or aborted shows here (NCCL's remote error), before any deadline.
        ncclResult_t state = ncclSuccess;
        ncclCommGetAsyncError(comm_, &state);
        if (state != ncclSuccess && state != ncclInProgress) {
          return FailLocked(
              absl::UnavailableError(StrCat("KV data plane: NCCL: ", NcclError(state, comm_))));
        }
      }
      // An Abort under way takes the lock next, and the loop returns its error.
      if (absl::Now() >= until && !abort_requested_.load()) {
        return absl::DeadlineExceededError("the KV data plane has not finished yet");
      }
      Backoff(&spins);
    }
  }

  void Abort(const absl::Status& why) override {
    // Polling loops see the flag and give the lock up; nothing here waits on the peer.
    abort_requested_.store(true);
    std::lock_guard<std::mutex> lock(mu_);
    (void)FailLocked(why.ok() ? absl::AbortedError("KV data plane aborted") : why);
  }

 private:
  NcclPlane(int device, ncclComm_t comm, int peer) : device_(device), comm_(comm), peer_(peer) {}

  absl::Status Queue(bool send, std::span<const KvRegion> regions, kernels::Event ready) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_.ok()) return error_;
    cudaSetDevice(device_);
    if (send && ready.handle != nullptr) {
      // The copy starts once the layer's KV append has run on the compute stream.
      if (cudaError_t e = cudaStreamWaitEvent(stream_, static_cast<cudaEvent_t>(ready.handle), 0);
          e != cudaSuccess) {
        return FailLocked(absl::InternalError(
            StrCat("KV data plane: waiting on the layer's event: ", cudaGetErrorString(e))));
      }
    }
    ncclResult_t r = ncclGroupStart();
    for (const KvRegion& reg : regions) {
      if (r != ncclSuccess) break;
      r = send ? ncclSend(reg.ptr, reg.bytes, ncclUint8, peer_, comm_, stream_)
               : ncclRecv(reg.ptr, reg.bytes, ncclUint8, peer_, comm_, stream_);
    }
    const ncclResult_t end = ncclGroupEnd();
    if (r == ncclSuccess) r = end;
    // Non-blocking: the group may still be being enqueued; it is done (or failed) before the
    // next call on the communicator.
    int spins = 0;
    while (r == ncclInProgress) {
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm_, &state);
      r = state;
      if (r == ncclInProgress) {
        if (abort_requested_.load()) return FailLocked(absl::AbortedError("KV data plane aborted"));
        Backoff(&spins);
      }
    }
    if (r != ncclSuccess) {
      return FailLocked(absl::UnavailableError(
          StrCat("KV data plane: ", send ? "ncclSend" : "ncclRecv", ": ", NcclError(r, comm_))));
    }
    if (cudaError_t e = cudaEventRecord(done_, stream_); e != cudaSuccess) {
      return FailLocked(
          absl::InternalError(StrCat("KV data plane: cudaEventRecord: ", cudaGetErrorString(e))));
    }
    queued_ = true;
    return absl::OkStatus();
  }

  // The first error ends the communicator: ncclCommAbort stops what it has under way, and the
  // stream is drained so that no kernel of it touches a region afterwards.
  absl::Status FailLocked(absl::Status why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!error_.ok()) return error_;
    error_ = std::move(why);
    cudaSetDevice(device_);
    if (comm_ != nullptr) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    return error_;
  }

  // Constant after construction.
  const int device_;

  std::mutex mu_;
  ncclComm_t comm_ ABSL_GUARDED_BY(mu_);
  const int peer_;
  cudaStream_t stream_ = nullptr;  // set in Create, then constant
  cudaEvent_t done_ = nullptr;     // recorded after each queued group
  bool queued_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> abort_requested_{false};
};

class NcclOffer : public KvDataPlaneOffer {
 public:
  NcclOffer(int device, const ncclUniqueId& id)
      : device_(device), id_(id), bootstrap_(reinterpret_cast<const char*>(&id), sizeof(id)) {}
  const std::string& bootstrap() const override { return bootstrap_; }
  absl::StatusOr<std::unique_ptr<KvDataPlane>> Connect(absl::Time until) override {
    return NcclPlane::Create(device_, id_, 0, until);
  }

 private:
  const int device_;
  const ncclUniqueId id_;
  const std::string bootstrap_;
};

class NcclFactory : public KvDataPlaneFactory {
 public:
  explicit NcclFactory(const NcclPlaneConfig& config) : config_(config) {}
  std::string_view kind() const override { return "nccl"; }

  absl::StatusOr<std::unique_ptr<KvDataPlaneOffer>> Offer() override {
    ncclUniqueId id;
    if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
      return absl::UnavailableError(StrCat("ncclGetUniqueId: ", NcclError(r, nullptr)));
    }
    return std::unique_ptr<KvDataPlaneOffer>(std::make_unique<NcclOffer>(config_.device, id));
  }

  absl::StatusOr<std::unique_ptr<KvDataPlane>> Join(std::string_view bootstrap,
                                                    absl::Time until) override {
    if (bootstrap.size() != sizeof(ncclUniqueId)) {
      return absl::InvalidArgumentError(StrCat("an ncclUniqueId of ", bootstrap.size(), " bytes (",
                                               sizeof(ncclUniqueId), " expected)"));
    }
    ncclUniqueId id;
    std::memcpy(&id, bootstrap.data(), sizeof(id));
    return NcclPlane::Create(config_.device, id, 1, until);
  }

 private:
  const NcclPlaneConfig config_;
};

}  // namespace

bool NcclPlaneBuilt() { return true; }

absl::StatusOr<std::unique_ptr<KvDataPlaneFactory>> MakeNcclDataPlaneFactory(
    const NcclPlaneConfig& config) {
  int count = 0;
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess) {
    return absl::FailedPreconditionError(
        StrCat("the nccl KV transport needs a CUDA GPU: ", cudaGetErrorString(e)));
  }
  if (config.device < 0 || config.device >= count) {
    return absl::FailedPreconditionError(
        StrCat("the nccl KV transport: no CUDA device ", config.device, " (", count, " found)"));
  }
  return std::unique_ptr<KvDataPlaneFactory>(std::make_unique<NcclFactory>(config));
}

}  // namespace tandem::kvcache
