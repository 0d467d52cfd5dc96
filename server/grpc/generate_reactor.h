// GenerateReactor: one tandem.v1.Generation/Generate call on gRPC's callback API. It moves a
// GenerationStream's output to the client: every delta ready at once goes out as one
// GenerateResponse, then the usage message and OK, or the stream's failure as the status.
//
// No thread waits for a stream. The engine's notify callback only posts a pump to a strand of
// the ReactorPool; the pump Takes what is ready and starts one write. At most one write is
// outstanding per call: while it is, new output stays buffered in the GenerationStream and the
// next pump (after OnWriteDone) takes all of it as one message. A slow client therefore slows
// only its own call, never the engine thread.
//
// Cancellation: OnCancel (the client cancelled, its deadline passed, or GrpcServer::Shutdown
// past its deadline) cancels the GenerationStream at once, on the gRPC thread, so its
// sequences leave the engine within one step; the call then ends as CANCELLED. A write the
// client no longer takes does the same.
//
// Lifetime: a reactor is owned by shared_ptrs: its own (dropped in OnDone, gRPC's last call)
// and one per posted pump. The stream's notify holds only a weak_ptr, so an engine thread that
// notifies after OnDone finds nothing to do. The reactor, and the GenerationStream it owns, go
// when the last of these is dropped; ReactorPool::WaitIdle waits for that.
//
// Invariants: at most one StartWrite outstanding; the call is finished exactly once (Finish or
// StartWriteAndFinish), and `report` is told that status just before; nothing is started on
// the call after that.
//
// Thread safety: gRPC calls the reactions on its threads; everything else runs on the
// reactor's strand. State below marked "strand only" is touched nowhere else.
#ifndef TANDEM_SERVER_GRPC_GENERATE_REACTOR_H_
#define TANDEM_SERVER_GRPC_GENERATE_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "server/frontend.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::server::grpc_api {

// The threads every GenerateReactor of one server pumps on, and the count of reactors alive.
// Its destructor waits for the last reactor and joins the threads.
//
// Thread safety: every method but the destructor may be called from any thread.
class ReactorPool {
 public:
  explicit ReactorPool(int threads);
  ~ReactorPool();

  ReactorPool(const ReactorPool&) = delete;
  ReactorPool& operator=(const ReactorPool&) = delete;

  boost::asio::thread_pool& executor() { return pool_; }

  // Counts one reactor alive for as long as it exists.
  class Lease {
   public:
    explicit Lease(ReactorPool& pool);
    ~Lease();
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

   private:
    ReactorPool& pool_;
  };

  // Blocks until every reactor is destroyed (with it its GenerationStream). Call it once no new
  // call can start (after grpc::Server::Wait).
  void WaitIdle();

 private:
  boost::asio::thread_pool pool_;
  std::mutex mu_;
  std::condition_variable idle_;
  int alive_ ABSL_GUARDED_BY(mu_) = 0;
};

class GenerateReactor final : public grpc::ServerWriteReactor<tandem::v1::GenerateResponse>,
                              public std::enable_shared_from_this<GenerateReactor> {
 public:
  // Told the status the call is finished with, once per call, just before Finish.
  using Report = std::function<void(const grpc::Status&)>;

  // Starts pumping `stream` to the call; the result is what the method handler returns.
  // `context` and `pool` must outlive the reactor (gRPC keeps the context until OnDone).
  static grpc::ServerWriteReactor<tandem::v1::GenerateResponse>* Start(
      grpc::CallbackServerContext* context, std::unique_ptr<GenerationStream> stream,
      ReactorPool& pool, Report report);

  // A call refused before any stream started: finishes with `status` at once.
  static grpc::ServerWriteReactor<tandem::v1::GenerateResponse>* Refuse(grpc::Status status);

  // Use Start; public for std::make_shared.
  GenerateReactor(grpc::CallbackServerContext* context, std::unique_ptr<GenerationStream> stream,
                  ReactorPool& pool, Report report);
  ~GenerateReactor() override;

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  // Posts one pump unless one is pending already.
  void Schedule();
  // Takes what is ready and writes it; finishes the call once the stream has ended.
  void Pump();
  void WriteDone(bool ok);
  void FinishWith(const grpc::Status& status);

  // Constant after construction. The lease comes first so that it goes last, after the stream
  // and the strand (which needs the pool's threads).
  const ReactorPool::Lease lease_;
  grpc::CallbackServerContext* const context_;
  const std::unique_ptr<GenerationStream> stream_;
  const Report report_;
  boost::asio::strand<boost::asio::thread_pool::executor_type> strand_;

  std::atomic<bool> scheduled_{false};     // a pump is posted and has not started yet
  std::shared_ptr<GenerateReactor> self_;  // set in Start, dropped in OnDone

  // Strand only.
  bool writing_ = false;    // a StartWrite has not seen its OnWriteDone yet
  bool cancelled_ = false;  // OnCancel ran
  bool finished_ = false;   // Finish or StartWriteAndFinish was called
  std::vector<ChoiceDelta> deltas_;
  tandem::v1::GenerateResponse
      response_;  // the message being written; kept until its write is done
};

}  // namespace tandem::server::grpc_api

#endif  // TANDEM_SERVER_GRPC_GENERATE_REACTOR_H_
