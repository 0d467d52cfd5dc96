#include "server/http/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace tandem::server::http {
namespace {

using namespace std::chrono_literals;

constexpr auto kWait = 10s;  // generous: only a broken server ever waits this long

// A blocking POSIX client with receive timeouts, so a broken server fails a test, not hangs it.
class Client {
 public:
  struct Response {
    int status = 0;
    std::string status_line;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string body;
    std::vector<std::string> chunks;  // chunked bodies, as framed by the server
  };

  explicit Client(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{};
    tv.tv_sec = 10;
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~Client() { Close(); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(n);
    }
    return true;
  }

  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // Closes with a TCP reset instead of a FIN.
  void Reset() {
    linger lg{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    Close();
  }

  // Reads until `needle` is in the unconsumed input; false on EOF or timeout.
  bool ReadUntil(std::string_view needle) {
    while (buf_.find(needle) == std::string::npos) {
      if (!ReadMore()) return false;
    }
    return true;
  }

  // True when the server closes the connection (EOF or reset) within the timeout; input that
  // arrives first is kept.
  bool WaitClosed() {
    while (ReadMore()) {
    }
    return eof_;
  }

  std::optional<Response> ReadResponse() {
    Response r;
    if (!ReadUntil("\r\n\r\n")) return std::nullopt;
    const size_t head_end = buf_.find("\r\n\r\n");
    std::string head = buf_.substr(0, head_end);
    buf_.erase(0, head_end + 4);
    size_t line_end = head.find("\r\n");
    r.status_line = head.substr(0, line_end);
    if (r.status_line.size() < 12) return std::nullopt;
    r.status = std::stoi(r.status_line.substr(9, 3));
    while (line_end != std::string::npos) {
      const size_t start = line_end + 2;
      line_end = head.find("\r\n", start);
      std::string line =
          head.substr(start, line_end == std::string::npos ? std::string::npos : line_end - start);
      const size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string name = line.substr(0, colon);
      for (char& c : name) c = static_cast<char>(std::tolower(c));
      std::string value = line.substr(colon + 1);
      while (!value.empty() && value.front() == ' ') value.erase(0, 1);
      r.headers[name] = value;
    }
    if (r.status / 100 == 1 || r.status == 204 || r.status == 304) return r;  // no body
    if (r.headers.count("transfer-encoding")) {
      for (;;) {
        if (!ReadUntil("\r\n")) return std::nullopt;
        const size_t eol = buf_.find("\r\n");
        const size_t size = std::stoul(buf_.substr(0, eol), nullptr, 16);
        buf_.erase(0, eol + 2);
        while (buf_.size() < size + 2) {
          if (!ReadMore()) return std::nullopt;
        }
        if (size == 0) {
          buf_.erase(0, 2);
          return r;
        }
        r.chunks.push_back(buf_.substr(0, size));
        r.body += r.chunks.back();
        buf_.erase(0, size + 2);
      }
    }
    if (r.headers.count("content-length")) {
      const size_t size = std::stoul(r.headers["content-length"]);
      while (buf_.size() < size) {
        if (!ReadMore()) return std::nullopt;
      }
      r.body = buf_.substr(0, size);
      buf_.erase(0, size);
      return r;
    }
    while (ReadMore()) {
    }
    if (!eof_) return std::nullopt;
    r.body = std::move(buf_);
    buf_.clear();
    return r;
  }

  std::string& buffer() { return buf_; }
  int fd() const { return fd_; }

 private:
  bool ReadMore() {
    if (eof_ || fd_ < 0) return false;
    char chunk[16384];
    const ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (n > 0) {
      buf_.append(chunk, n);
      return true;
    }
    if (n == 0 || errno == ECONNRESET) eof_ = true;
    return false;  // EOF, reset or timeout
  }

  int fd_ = -1;
  bool connected_ = false;
  bool eof_ = false;
  std::string buf_;
};

std::string Get(std::string_view target, std::string_view extra_headers = "") {
  return std::string("GET ") + std::string(target) + " HTTP/1.1\r\nHost: t\r\n" +
         std::string(extra_headers) + "\r\n";
}

std::string Post(std::string_view target, std::string_view body,
                 std::string_view extra_headers = "") {
  return std::string("POST ") + std::string(target) +
         " HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n" + std::string(extra_headers) + "\r\n" +
         std::string(body);
}

// Collects the writers of requests the handler leaves pending.
class Pending {
 public:
  void Add(std::shared_ptr<ResponseWriter> writer) {
    std::lock_guard<std::mutex> lock(mu_);
    writers_.push_back(std::move(writer));
    cv_.notify_all();
  }
  // Waits until `n` writers arrived; false on timeout.
  bool WaitFor(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kWait, [&] { return writers_.size() >= n; });
  }
  std::shared_ptr<ResponseWriter> at(size_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    return writers_.at(i);
  }
  std::vector<std::shared_ptr<ResponseWriter>> TakeAll() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::move(writers_);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<ResponseWriter>> writers_;
};

// A one-shot flag with a timed wait.
class Event {
 public:
  void Set() {
    std::lock_guard<std::mutex> lock(mu_);
    ++count_;
    cv_.notify_all();
  }
  bool Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kWait, [&] { return count_ > 0; });
  }
  int count() {
    std::lock_guard<std::mutex> lock(mu_);
    return count_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_ = 0;
};

// Routes: /echo answers at once with what it received; /pending and /stream leave the writer
// in `pending` (the stream after sending its head and "data: 0\n\n").
class HttpServerTest : public ::testing::Test {
 protected:
  void StartServer(HttpServerConfig config = {}) {
    config.host = "127.0.0.1";
    config.port = 0;
    auto server = HttpServer::Start(
        config, [this](HttpRequest request, std::shared_ptr<ResponseWriter> writer) {
          handled_.fetch_add(1);
          if (request.path == "/pending") {
            pending_.Add(std::move(writer));
          } else if (request.path == "/stream") {
            writer->StartStream(200, {{"Content-Type", "text/event-stream"}});
            writer->Write("data: 0\n\n");
            pending_.Add(std::move(writer));
          } else if (request.path == "/drop") {
            // The writer goes out of scope unanswered.
          } else {
            std::string body = request.method + " " + request.path + " q=" + request.query +
                               " x=" + request.Header("x-test").value_or("-") +
                               " v=" + std::to_string(request.version) + " body=" + request.body;
            writer->Send(200, {{"Content-Type", "text/plain"}, {"Content-Length", "999"}},
                         std::move(body));
          }
        });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value();
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  // Waits until the server reports `n` open connections.
  bool WaitConnections(size_t n) {
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while (server_->open_connections() != n) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(1ms);
    }
    return true;
  }

  std::unique_ptr<HttpServer> server_;
  Pending pending_;
  std::atomic<int> handled_{0};
};

TEST_F(HttpServerTest, GetAndPostRoundTrip) {
  StartServer();
  Client client(server_->port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.Send(Get("/echo?a=1&b=2", "X-Test: hello\r\n")));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status_line, "HTTP/1.1 200 OK");
  EXPECT_EQ(r->body, "GET /echo q=a=1&b=2 x=hello v=11 body=");
  EXPECT_EQ(r->headers["content-type"], "text/plain");
  // The server owns Content-Length: the handler's bogus one was dropped.
  EXPECT_EQ(r->headers["content-length"], std::to_string(r->body.size()));

  ASSERT_TRUE(client.Send(Post("/echo", "{\"prompt\":\"hi\"}")));
  r = client.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "POST /echo q= x=- v=11 body={\"prompt\":\"hi\"}");
}

TEST_F(HttpServerTest, ChunkedRequestBody) {
  StartServer();
  Client client(server_->port());
  ASSERT_TRUE(
      client.Send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->body, "POST /echo q= x=- v=11 body=abcde");
}

TEST_F(HttpServerTest, KeepAliveServesTwoRequestsOnOneConnection) {
  StartServer();
  Client client(server_->port());
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(client.Send(Get("/echo?i=" + std::to_string(i))));
    auto r = client.ReadResponse();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->body, "GET /echo q=i=" + std::to_string(i) + " x=- v=11 body=");
    EXPECT_EQ(r->headers.count("connection"), 0u);
  }
  EXPECT_EQ(server_->open_connections(), 1u);
  EXPECT_EQ(handled_.load(), 2);
}

TEST_F(HttpServerTest, PipelinedRequestsAnsweredInOrder) {
  StartServer();
  Client client(server_->port());
  // The first response is held back by the handler; the next two must wait for it.
  ASSERT_TRUE(client.Send(Get("/pending") + Get("/echo?n=2") + Post("/echo?n=3", "three")));
  ASSERT_TRUE(pending_.WaitFor(1));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(handled_.load(), 1);  // one request at a time per connection
  pending_.at(0)->Send(200, {}, "first");
  auto r1 = client.ReadResponse();
  auto r2 = client.ReadResponse();
  auto r3 = client.ReadResponse();
  ASSERT_TRUE(r1 && r2 && r3);
  EXPECT_EQ(r1->body, "first");
  EXPECT_EQ(r2->body, "GET /echo q=n=2 x=- v=11 body=");
  EXPECT_EQ(r3->body, "POST /echo q=n=3 x=- v=11 body=three");
}

TEST_F(HttpServerTest, OversizedBodyGets413AndClose) {
  HttpServerConfig config;
  config.max_body_bytes = 1024;
  StartServer(config);
  {
    // Content-Length shows the size up front: answered before the body is sent.
    Client client(server_->port());
    ASSERT_TRUE(client.Send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" +
                            std::string(2000, 'x')));
    auto r = client.ReadResponse();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 413);
    EXPECT_EQ(r->headers["content-type"], "application/json");
    EXPECT_EQ(r->headers["connection"], "close");
    EXPECT_NE(r->body.find(R"({"error":{"message":")"), std::string::npos) << r->body;
    EXPECT_NE(r->body.find(R"("type":"invalid_request_error","param":null,"code":null}})"),
              std::string::npos)
        << r->body;
    EXPECT_TRUE(client.WaitClosed());
  }
  {
    // A chunked body crosses the limit while arriving.
    Client client(server_->port());
    std::string chunk = "400\r\n" + std::string(1024, 'y') + "\r\n";
    ASSERT_TRUE(client.Send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" +
                            chunk + chunk));
    auto r = client.ReadResponse();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 413);
    EXPECT_TRUE(client.WaitClosed());
  }
  {
    // Exactly at the limit is fine.
    Client client(server_->port());
    ASSERT_TRUE(client.Send(Post("/echo", std::string(1024, 'z'))));
    auto r = client.ReadResponse();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_EQ(handled_.load(), 1);
}

TEST_F(HttpServerTest, GarbageGets400AndClose) {
  StartServer();
  for (const char* garbage :
       {"GARBAGE\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n"}) {
    Client client(server_->port());
    ASSERT_TRUE(client.Send(garbage));
    auto r = client.ReadResponse();
    ASSERT_TRUE(r.has_value()) << garbage;
    EXPECT_EQ(r->status, 400) << garbage;
    EXPECT_NE(r->body.find("invalid_request_error"), std::string::npos);
    EXPECT_TRUE(client.WaitClosed()) << garbage;
  }
  EXPECT_EQ(handled_.load(), 0);
}

TEST_F(HttpServerTest, OversizedHeaderGets431) {
  HttpServerConfig config;
  config.max_header_bytes = 1024;
  StartServer(config);
  Client client(server_->port());
  ASSERT_TRUE(client.Send(Get("/echo", "X-Big: " + std::string(4000, 'h') + "\r\n")));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 431);
  EXPECT_TRUE(client.WaitClosed());
}

TEST_F(HttpServerTest, ConnectionCloseIsHonoured) {
  StartServer();
  Client client(server_->port());
  ASSERT_TRUE(client.Send(Get("/echo", "Connection: close\r\n")));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->headers["connection"], "close");
  EXPECT_TRUE(client.WaitClosed());
  client.Close();
  EXPECT_TRUE(WaitConnections(0));
}

TEST_F(HttpServerTest, Http10) {
  StartServer();
  {
    Client client(server_->port());
    ASSERT_TRUE(client.Send("GET /echo HTTP/1.0\r\n\r\n"));
    auto r = client.ReadResponse();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status_line, "HTTP/1.0 200 OK");
    EXPECT_EQ(r->body, "GET /echo q= x=- v=10 body=");
    EXPECT_TRUE(client.WaitClosed());
  }
  {
    Client client(server_->port());
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(client.Send("GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
      auto r = client.ReadResponse();
      ASSERT_TRUE(r.has_value());
      EXPECT_EQ(r->headers["connection"], "keep-alive");
    }
  }
  {
    // A stream to an HTTP/1.0 client is not chunked; its end is the connection's close.
    Client client(server_->port());
    ASSERT_TRUE(client.Send("GET /stream HTTP/1.0\r\n\r\n"));
    ASSERT_TRUE(pending_.WaitFor(1));
    pending_.at(0)->Write("data: 1\n\n");
    pending_.at(0)->End();
    auto r = client.ReadResponse();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->headers.count("transfer-encoding"), 0u);
    EXPECT_EQ(r->body, "data: 0\n\ndata: 1\n\n");
  }
}

TEST_F(HttpServerTest, ExpectContinue) {
  StartServer();
  Client client(server_->port());
  ASSERT_TRUE(client.Send(
      "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
  auto interim = client.ReadResponse();
  ASSERT_TRUE(interim.has_value());
  EXPECT_EQ(interim->status_line, "HTTP/1.1 100 Continue");
  ASSERT_TRUE(client.Send("hello"));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->body, "POST /echo q= x=- v=11 body=hello");
}

TEST_F(HttpServerTest, HeadRequestHasNoBody) {
  StartServer();
  Client client(server_->port());
  ASSERT_TRUE(client.Send("HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n" + Get("/echo?after")));
  ASSERT_TRUE(client.ReadUntil("\r\n\r\n"));
  const std::string expected_length =
      "Content-Length: " + std::to_string(std::string("HEAD /echo q= x=- v=11 body=").size());
  EXPECT_NE(client.buffer().find(expected_length), std::string::npos) << client.buffer();
  client.buffer().erase(0, client.buffer().find("\r\n\r\n") + 4);
  // The next bytes are the next response, not a body.
  auto r = client.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->body, "GET /echo q=after x=- v=11 body=");
}

TEST_F(HttpServerTest, StreamingChunksArriveInOrderBeforeEnd) {
  StartServer();
  Client client(server_->port());
  ASSERT_TRUE(client.Send(Get("/stream")));
  // The first event arrives while the stream is still open.
  ASSERT_TRUE(client.ReadUntil("data: 0\n\n"));
  EXPECT_NE(client.buffer().find("Transfer-Encoding: chunked"), std::string::npos);
  EXPECT_NE(client.buffer().find("Content-Type: text/event-stream"), std::string::npos);
  ASSERT_TRUE(pending_.WaitFor(1));
  auto writer = pending_.at(0);
  std::string expected = "data: 0\n\n";
  std::thread producer([&] {
    for (int i = 1; i <= 100; ++i) writer->Write("data: " + std::to_string(i) + "\n\n");
    writer->Write("");  // ignored, must not end the stream
    writer->Write("data: [DONE]\n\n");
    writer->End();
  });
  for (int i = 1; i <= 100; ++i) expected += "data: " + std::to_string(i) + "\n\n";
  expected += "data: [DONE]\n\n";
  producer.join();
  auto r = client.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, expected);
  EXPECT_FALSE(writer->closed());
  // Keep-alive after the stream.
  ASSERT_TRUE(client.Send(Get("/echo")));
  r = client.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpServerTest, DisconnectWhilePendingFiresOnClose) {
  StartServer();
  for (bool reset : {false, true}) {
    Client client(server_->port());
    ASSERT_TRUE(client.Send(Get("/pending")));
    const size_t index = reset ? 1 : 0;
    ASSERT_TRUE(pending_.WaitFor(index + 1));
    auto writer = pending_.at(index);
    Event closed;
    writer->OnClose([&] { closed.Set(); });
    EXPECT_FALSE(writer->closed());
    if (reset) {
      client.Reset();
    } else {
      client.Close();
    }
    // No byte is being written: the outstanding read alone notices the disconnect.
    ASSERT_TRUE(closed.Wait()) << "reset=" << reset;
    EXPECT_TRUE(writer->closed());
    writer->Send(200, {}, "too late");  // a no-op
    EXPECT_EQ(writer->buffered_bytes(), 0u);
    // OnClose after the fact runs at once.
    Event late;
    writer->OnClose([&] { late.Set(); });
    EXPECT_EQ(late.count(), 1);
    EXPECT_EQ(closed.count(), 1);
  }
  EXPECT_TRUE(WaitConnections(0));
}

TEST_F(HttpServerTest, DisconnectMidStreamFiresOnClose) {
  StartServer();
  Client client(server_->port());
  ASSERT_TRUE(client.Send(Get("/stream")));
  ASSERT_TRUE(client.ReadUntil("data: 0\n\n"));
  ASSERT_TRUE(pending_.WaitFor(1));
  auto writer = pending_.at(0);
  Event closed;
  writer->OnClose([&] { closed.Set(); });
  client.Close();
  ASSERT_TRUE(closed.Wait());
  EXPECT_TRUE(writer->closed());
  writer->Write("data: 1\n\n");  // no-ops
  writer->End();
  EXPECT_EQ(closed.count(), 1);
}

TEST_F(HttpServerTest, OnCloseDoesNotFireAfterNormalEnd) {
  StartServer();
  Client client(server_->port());
  ASSERT_TRUE(client.Send(Get("/pending")));
  ASSERT_TRUE(pending_.WaitFor(1));
  auto writer = pending_.at(0);
  Event closed;
  writer->OnClose([&] { closed.Set(); });
  writer->Send(204, {}, "");
  auto r = client.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 204);
  EXPECT_EQ(r->headers.count("content-length"), 0u);
  client.Close();
  EXPECT_TRUE(WaitConnections(0));
  EXPECT_EQ(closed.count(), 0);
  EXPECT_FALSE(writer->closed());
}

TEST_F(HttpServerTest, DroppedWriterAnswers500) {
  StartServer();
  Client client(server_->port());
  ASSERT_TRUE(client.Send(Get("/drop") + Get("/echo")));
  auto r = client.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 500);
  r = client.ReadResponse();  // the connection is still usable
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpServerTest, ManyOpenStreamsOnOneIoThread) {
  HttpServerConfig config;
  config.io_threads = 1;
  StartServer(config);
  constexpr int kClients = 300;
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<Client>(server_->port()));
    ASSERT_TRUE(clients.back()->connected()) << i;
    ASSERT_TRUE(clients.back()->Send(Get("/stream")));
  }
  ASSERT_TRUE(pending_.WaitFor(kClients));
  for (auto& client : clients) ASSERT_TRUE(client->ReadUntil("data: 0\n\n"));
  EXPECT_EQ(server_->open_connections(), size_t{kClients});
  // Every stream is open at once; now each gets its own events and ends.
  std::vector<std::shared_ptr<ResponseWriter>> writers = pending_.TakeAll();
  for (int i = 0; i < kClients; ++i) {
    writers[i]->Write("data: " + std::to_string(i) + "\n\n");
    writers[i]->End();
  }
  for (int i = 0; i < kClients; ++i) {
    auto r = clients[i]->ReadResponse();
    ASSERT_TRUE(r.has_value()) << i;
    EXPECT_EQ(r->body, "data: 0\n\ndata: " + std::to_string(i) + "\n\n");
  }
}

TEST_F(HttpServerTest, SlowReaderDoesNotBlockOthersAndShowsBackpressure) {
  StartServer();
  Client slow(server_->port());
  ASSERT_TRUE(slow.Send(Get("/stream")));
  ASSERT_TRUE(pending_.WaitFor(1));
  auto writer = pending_.at(0);
  // Far more than the kernel's socket buffers hold, while the client reads nothing.
  const std::string chunk(64 << 10, 'b');
  constexpr int kChunks = 512;  // 32 MiB
  for (int i = 0; i < kChunks; ++i) writer->Write(chunk);
  writer->End();
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  size_t buffered = 0;
  // Wait until the io thread has pushed what the socket takes; the rest stays buffered.
  for (;;) {
    buffered = writer->buffered_bytes();
    std::this_thread::sleep_for(20ms);
    if (buffered == writer->buffered_bytes() || std::chrono::steady_clock::now() > deadline) {
      break;
    }
  }
  EXPECT_GT(buffered, 0u);
  // Another client is served meanwhile.
  Client other(server_->port());
  ASSERT_TRUE(other.Send(Get("/echo")));
  auto r = other.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
  // The slow client drains everything, and the buffer empties.
  auto big = slow.ReadResponse();
  ASSERT_TRUE(big.has_value());
  EXPECT_EQ(big->body.size(), 9 + chunk.size() * kChunks);
  EXPECT_EQ(writer->buffered_bytes(), 0u);
}

TEST_F(HttpServerTest, StopAcceptingRefusesNewConnectionsWhileOldOnesFinish) {
  StartServer();
  Client busy(server_->port());
  ASSERT_TRUE(busy.Send(Get("/pending")));
  ASSERT_TRUE(pending_.WaitFor(1));
  Client idle(server_->port());
  ASSERT_TRUE(WaitConnections(2));

  server_->StopAccepting();
  Client late(server_->port());
  EXPECT_FALSE(late.connected());
  EXPECT_TRUE(idle.WaitClosed());  // idle keep-alive connections close

  pending_.at(0)->Send(200, {}, "finished");
  auto r = busy.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->body, "finished");
  EXPECT_EQ(r->headers["connection"], "close");
  EXPECT_TRUE(busy.WaitClosed());
  busy.Close();  // else the server lingers for the client's FIN
  EXPECT_TRUE(WaitConnections(0));
}

TEST_F(HttpServerTest, ShutdownFiresOnCloseForPendingResponses) {
  StartServer();
  Client plain(server_->port());
  ASSERT_TRUE(plain.Send(Get("/pending")));
  ASSERT_TRUE(pending_.WaitFor(1));
  Client stream(server_->port());
  ASSERT_TRUE(stream.Send(Get("/stream")));
  ASSERT_TRUE(pending_.WaitFor(2));
  Event closed;
  for (size_t i = 0; i < 2; ++i) pending_.at(i)->OnClose([&] { closed.Set(); });

  server_->Shutdown();
  EXPECT_EQ(closed.count(), 2);
  EXPECT_TRUE(pending_.at(0)->closed());
  EXPECT_TRUE(pending_.at(1)->closed());
  EXPECT_EQ(server_->open_connections(), 0u);
  EXPECT_TRUE(plain.WaitClosed());
  EXPECT_TRUE(stream.WaitClosed());
  // Writers outlive the server's loop harmlessly.
  pending_.at(1)->Write("data: 1\n\n");
  pending_.at(1)->End();
  pending_.at(0)->Send(200, {}, "late");
  server_->Shutdown();  // idempotent
  server_.reset();
}

TEST_F(HttpServerTest, IdleAndReadTimeouts) {
  HttpServerConfig config;
  config.idle_timeout = absl::Milliseconds(100);
  config.read_timeout = absl::Milliseconds(100);
  StartServer(config);
  {
    Client idle(server_->port());
    EXPECT_TRUE(idle.WaitClosed());
  }
  {
    Client partial(server_->port());
    ASSERT_TRUE(partial.Send("GET /echo HTTP/1.1\r\nHost:"));
    auto r = partial.ReadResponse();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 408);
    EXPECT_TRUE(partial.WaitClosed());
  }
  {
    // No timeout while a response is pending.
    Client waiting(server_->port());
    ASSERT_TRUE(waiting.Send(Get("/pending")));
    ASSERT_TRUE(pending_.WaitFor(1));
    std::this_thread::sleep_for(300ms);
    pending_.at(0)->Send(200, {}, "late but fine");
    auto r = waiting.ReadResponse();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->body, "late but fine");
  }
}

TEST(HttpServerStartTest, ErrorsNameHostAndPort) {
  auto handler = [](HttpRequest, std::shared_ptr<ResponseWriter> w) { w->Send(200, {}, ""); };
  HttpServerConfig config;
  config.host = "127.0.0.1";
  config.port = 0;
  auto first = HttpServer::Start(config, handler);
  ASSERT_TRUE(first.ok()) << first.status();
  config.port = (*first)->port();
  auto second = HttpServer::Start(config, handler);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("127.0.0.1:" + std::to_string(config.port)),
            std::string::npos)
      << second.status();

  config.port = 70000;
  auto bad = HttpServer::Start(config, handler);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  config.port = 0;
  config.io_threads = 0;
  EXPECT_FALSE(config.Validate().ok());
  config.io_threads = 1;
  config.host = "no-such-host.invalid";
  auto unresolvable = HttpServer::Start(config, handler);
  ASSERT_FALSE(unresolvable.ok());
  EXPECT_NE(unresolvable.status().message().find("no-such-host.invalid:0"), std::string::npos);
}

TEST(HttpServerStartTest, SeveralIoThreads) {
  HttpServerConfig config;
  config.host = "127.0.0.1";
  config.port = 0;
  config.io_threads = 4;
  auto server = HttpServer::Start(
      config, [](HttpRequest r, std::shared_ptr<ResponseWriter> w) { w->Send(200, {}, r.path); });
  ASSERT_TRUE(server.ok());
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      Client client((*server)->port());
      for (int i = 0; i < 20; ++i) {
        const std::string path = "/t" + std::to_string(t) + "/" + std::to_string(i);
        if (!client.Send(Get(path))) return;
        auto r = client.ReadResponse();
        if (r && r->body == path) ok.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 8 * 20);
}

TEST(ResponseWriterDeathTest, MisuseAborts) {
  EXPECT_DEATH(
      {
        HttpServerConfig config;
        config.host = "127.0.0.1";
        config.port = 0;
        std::shared_ptr<ResponseWriter> kept;
        std::mutex mu;
        std::condition_variable cv;
        auto server =
            HttpServer::Start(config, [&](HttpRequest, std::shared_ptr<ResponseWriter> w) {
              std::lock_guard<std::mutex> lock(mu);
              kept = std::move(w);
              cv.notify_all();
            });
        Client client((*server)->port());
        client.Send(Get("/x"));
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return kept != nullptr; });
        kept->Write("no stream started");
      },
      "Write\\(\\) outside a stream");
}

}  // namespace
}  // namespace tandem::server::http
