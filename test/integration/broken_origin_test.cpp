// Origins that break HTTP framing or their connections at awkward moments: the client never
// gets a response that looks complete when it is not, no stray byte crosses from one response
// to the next, a request is replayed only when that is safe, and nothing leaks.

#include <weldr/proxy.hpp>

#include "checks.hpp"
#include "client.hpp"
#include "origin.hpp"

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

using namespace weldr::test;
using namespace std::chrono_literals;

namespace {

using Clock = std::chrono::steady_clock;

// Milliseconds left until `deadline`, at least 0.
int ms_left(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

// Waits (at most `timeout`) until the one-shot signal `go` is set.
bool wait_for(const std::shared_future<void>& go, std::chrono::milliseconds timeout = 10s) {
  return go.wait_for(timeout) == std::future_status::ready;
}

// A loopback origin that runs `script` on a thread of its own for each connection it accepts,
// over a blocking socket: for misbehaviour that the scriptable Origin cannot express, such as
// bytes written after a pause, or a close a moment after a response. Every wait is bounded, and
// the destructor stops and joins everything.
class RawOrigin {
 public:
  class Connection {
   public:
    Connection(int fd, std::size_t index, const std::atomic<bool>& stopping)
        : fd_(fd), index_(index), stopping_(stopping) {}
    ~Connection() { close(); }
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    // The connection's index, in the order of acceptance (0 = first).
    [[nodiscard]] std::size_t index() const { return index_; }

    // Reads one complete request; nothing on EOF, error, timeout or stop.
    std::optional<Message> read_request(std::chrono::milliseconds timeout = 10s) {
      const auto deadline = Clock::now() + timeout;
      for (;;) {
        const auto r = parser_.feed(pending_);
        pending_.erase(0, r.consumed);
        if (r.event == MessageParser::Event::message_complete) return parser_.message();
        if (r.event != MessageParser::Event::need_more) return std::nullopt;
        pollfd p{fd_, POLLIN, 0};
        while (::poll(&p, 1, std::min(50, ms_left(deadline))) == 0) {
          if (stopping_ || ms_left(deadline) == 0) return std::nullopt;
        }
        char buf[16 * 1024];
        const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
        if (n <= 0) return std::nullopt;
        pending_.append(buf, static_cast<std::size_t>(n));
      }
    }

    // Writes all of `bytes`; false when the peer is gone.
    bool send(std::string_view bytes) {
      while (!bytes.empty()) {
        const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n <= 0) return false;
        bytes.remove_prefix(static_cast<std::size_t>(n));
      }
      return true;
    }

    // Waits until the peer's kernel has acknowledged every byte sent: they sit in its receive
    // queue, whether or not the peer has read them. False on timeout.
    bool wait_delivered(std::chrono::milliseconds timeout = 5s) {
      const auto deadline = Clock::now() + timeout;
      for (;;) {
        int unacknowledged = 0;
        if (::ioctl(fd_, SIOCOUTQ, &unacknowledged) != 0) return false;
        if (unacknowledged == 0) return true;
        if (ms_left(deadline) == 0) return false;
        std::this_thread::sleep_for(1ms);
      }
    }

    // Closes the connection; with `reset`, with an RST (SO_LINGER 0) instead of a FIN.
    void close(bool reset = false) { close_socket(fd_, reset); }

   private:
    int fd_;
    std::size_t index_;
    const std::atomic<bool>& stopping_;
    MessageParser parser_{MessageParser::Kind::request};
    std::string pending_;
  };

  using Script = std::function<void(Connection&)>;

  explicit RawOrigin(Script script) : script_(std::move(script)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        ::listen(listen_fd_, 128) != 0 || ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      throw std::system_error(errno, std::system_category(), "raw origin: listen");
    }
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }

  ~RawOrigin() {
    stopping_ = true;
    acceptor_.join();
    for (auto& t : threads_)
      t.join();
    ::close(listen_fd_);
  }

  RawOrigin(const RawOrigin&) = delete;
  RawOrigin& operator=(const RawOrigin&) = delete;

  [[nodiscard]] std::string url() const { return fmt::format("http://127.0.0.1:{}", port_); }
  [[nodiscard]] std::size_t connections_accepted() const { return accepted_; }

 private:
  void accept_loop() {
    while (!stopping_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      const timeval tv{5, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      const std::size_t index = accepted_++;
      threads_.emplace_back([this, fd, index] {
        Connection connection(fd, index, stopping_);
        script_(connection);
      });
    }
  }

  Script script_;
  int listen_fd_{-1};
  std::uint16_t port_{0};
  std::atomic<bool> stopping_{false};
  std::atomic<std::size_t> accepted_{0};
  std::vector<std::thread> threads_;  // touched by the accepting thread only, then joined
  std::thread acceptor_;
};

// How a connection read to its end ended.
enum class End { eof, reset, timeout };

// A blocking client socket whose reads can stop at a chosen point, to act while a response is
// still coming (the scriptable Client reads whole responses).
class Peer {
 public:
  explicit Peer(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd_);
      throw std::system_error(errno, std::system_category(), "peer: connect");
    }
  }
  ~Peer() { ::close(fd_); }
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  bool send(std::string_view bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }

  // Reads until `done(received)` holds; false when the connection ended or `timeout` passed first.
  bool read_until(const std::function<bool(const std::string&)>& done, std::chrono::milliseconds timeout = 10s) {
    const auto deadline = Clock::now() + timeout;
    while (!done(received_)) {
      if (read_some(deadline) != 0) return false;
    }
    return true;
  }

  // Reads until the peer closes or resets the connection, or `timeout` passes.
  End read_to_end(std::chrono::milliseconds timeout = 10s) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      const int r = read_some(deadline);
      if (r == 0) continue;
      if (r == ECONNRESET) return End::reset;
      if (r == ETIMEDOUT) return End::timeout;
      return End::eof;
    }
  }

  // Everything received so far.
  [[nodiscard]] const std::string& received() const { return received_; }
  // The bytes received after the end of the first head.
  [[nodiscard]] std::string body() const {
    const auto end = received_.find("\r\n\r\n");
    return end == std::string::npos ? std::string{} : received_.substr(end + 4);
  }

 private:
  // 0 after reading some bytes; else -1 for EOF, ETIMEDOUT, or the error of recv.
  int read_some(Clock::time_point deadline) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, ms_left(deadline)) <= 0) return ETIMEDOUT;
    char buf[16 * 1024];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n < 0) return errno;
    if (n == 0) return -1;
    received_.append(buf, static_cast<std::size_t>(n));
    return 0;
  }

  int fd_;
  std::string received_;
};

// Descriptors open in this process now.
std::size_t open_descriptors() {
  std::size_t n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    static_cast<void>(entry);
    ++n;
  }
  return n;
}

// Resident set size of this process in KiB; -1 when unreadable.
long rss_kib() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

}  // namespace

TEST_CASE("a body shorter than its Content-Length never reaches the client as a complete response",
          "[integration][broken-origin]") {
  // 11 bytes announced, 10 sent: one byte short, the smallest lie.
  const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n";
  const std::string short_body = "Hello Worl";

  SECTION("the origin closes after the short body") {
    Origin origin(
        reply_on("/short", Reply{.close_after_bytes = head.size() + short_body.size(), .raw = head + short_body}));
    TestProxy proxy({origin.endpoint_url()});
    Client client(proxy.port());
    const Response r = client.exchange(make_request("GET", "/short"));
    INFO(r.describe());
    CHECK_FALSE(r.timed_out);
    CHECK_FALSE(r.complete);
    CHECK(r.closed);
    CHECK(r.body.size() < 11);
    CHECK(proxy.counters().responses_ok == 0);
    require_usable(proxy.port());
  }

  SECTION("the origin keeps the connection open after the short body") {
    Origin origin(reply_on("/short", Reply{.raw = head + short_body}));
    auto options = TestProxy::test_options();
    options.read_timeout = 300ms;
    TestProxy proxy({origin.endpoint_url()}, options);
    Client client(proxy.port());
    const Response r = client.exchange(make_request("GET", "/short"));
    INFO(r.describe());
    // weldr gives up after read_timeout and must cut the client off, not leave it waiting for
    // a byte that never comes, nor pad the body.
    CHECK_FALSE(r.timed_out);
    CHECK_FALSE(r.complete);
    CHECK(r.closed);
    CHECK(r.body.size() < 11);
    require_usable(proxy.port());
  }
}

TEST_CASE("a body longer than its Content-Length: exactly Content-Length bytes go out and the connection is dropped",
          "[integration][broken-origin]") {
  // The extra bytes look like a whole response: if they were taken as the answer to the next
  // request on that upstream connection, the client would get "evil".
  const std::string first = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
  const std::string extra = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil";

  SECTION("the extra bytes come in the same write as the body") {
    Origin origin(reply_on("/long", Reply{.raw = first + extra}));
    TestProxy proxy({origin.endpoint_url()});
    Client client(proxy.port());
    const Response r = client.exchange(make_request("GET", "/long"));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    CHECK(r.body == "hello");
    // The same client connection goes on; its next response is the origin's real answer.
    const Response next = client.exchange(make_request("GET", "/"));
    INFO(next.describe());
    REQUIRE(next.complete);
    CHECK(next.status == 200);
    CHECK(next.body == "Hello World");
    // No stray byte is left for a third response either.
    const Response third = client.exchange(make_request("GET", "/"));
    INFO(third.describe());
    CHECK(third.body == "Hello World");
    // The connection that carried the extra bytes was not reused: the third request reuses the
    // second one.
    CHECK(origin.connections_accepted() == 2);
    const auto counters = proxy.counters();
    CHECK(counters.upstream_connects == 2);
    CHECK(counters.upstream_reuses == 1);
  }

  SECTION("the extra bytes come after a pause, while the connection sits idle in weldr's cache") {
    std::promise<void> send_extra;
    std::promise<void> extra_delivered;
    const std::shared_future<void> send_extra_signal = send_extra.get_future().share();
    RawOrigin origin([&](RawOrigin::Connection& c) {
      if (c.index() == 0) {
        if (!c.read_request()) return;
        c.send(first);
        if (!wait_for(send_extra_signal)) return;
        c.send(extra);
        c.wait_delivered();
        extra_delivered.set_value();
      }
      // A request on the first connection after that would be a reuse: say so.
      const std::string body = c.index() == 0 ? "reused" : "fresh";
      while (c.read_request()) {
        c.send(fmt::format("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}", body.size(), body));
      }
    });
    TestProxy proxy({origin.url()});
    Client client(proxy.port());
    const Response r = client.exchange(make_request("GET", "/"));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.body == "hello");
    send_extra.set_value();
    REQUIRE(extra_delivered.get_future().wait_for(10s) == std::future_status::ready);

    const Response next = client.exchange(make_request("GET", "/"));
    INFO(next.describe());
    REQUIRE(next.complete);
    CHECK(next.status == 200);
    CHECK(next.body == "fresh");
    CHECK(origin.connections_accepted() == 2);
    CHECK(proxy.counters().upstream_reuses == 0);
  }
}

TEST_CASE("an upstream connection that dies when weldr reuses it: GET is retried, POST is not replayed",
          "[integration][broken-origin]") {
  // proxy_errors_test covers a connection the origin closed right after its response. Here
  // the origin reads the request weldr sends on the reused connection, then closes (or resets)
  // without answering: the origin may have acted on it.
  for (const bool reset : {false, true}) {
    DYNAMIC_SECTION((reset ? "the origin resets" : "the origin closes")) {
      auto served = std::make_shared<std::map<std::size_t, int>>();  // the origin's thread only
      Origin origin([served, reset](const RecordedRequest& request) {
        if ((*served)[request.connection]++ > 0) return Reply{.reset = reset, .close_without_response = true};
        return Origin::default_reply(request);
      });
      TestProxy proxy({origin.endpoint_url()});
      Client client(proxy.port());

      SECTION("GET is retried on a new connection") {
        const Response first = client.exchange(make_request("GET", "/"));
        REQUIRE(first.status == 200);
        const Response r = client.exchange(make_request("GET", "/"));
        INFO(r.describe());
        REQUIRE(r.complete);
        CHECK(r.status == 200);
        CHECK(r.body == "Hello World");
        const auto seen = origin.requests();
        REQUIRE(seen.size() == 3);
        CHECK(seen[1].connection == 0);  // the reused connection, closed without an answer
        CHECK(seen[2].connection == 1);  // the retry
        CHECK(proxy.counters().retries == 1);
      }

      SECTION("POST gets 502 and reaches the origin once") {
        const Response first = client.exchange(make_request("POST", "/echo", "first"));
        REQUIRE(first.status == 200);
        REQUIRE(first.body == "first");
        const Response r = client.exchange(make_request("POST", "/echo", "second"));
        INFO(r.describe());
        REQUIRE(r.complete);
        CHECK(r.status == 502);
        CHECK(proxy.counters().retries == 0);
        CHECK(origin.connections_accepted() == 1);
        // The client connection goes on, on a new upstream connection.
        const Response third = client.exchange(make_request("POST", "/echo", "third"));
        INFO(third.describe());
        CHECK(third.status == 200);
        CHECK(third.body == "third");
        int seconds = 0;
        for (const auto& request : origin.requests())
          seconds += request.body == "second" ? 1 : 0;
        CHECK(seconds == 1);
      }
    }
  }
}

TEST_CASE("an origin that closes its keep-alive connection just as weldr reuses it", "[integration][broken-origin]") {
  // Each upstream connection serves one request, then the origin closes it X-Close-After ms
  // after its response, without saying so, while the client's next request is already on its
  // way: depending on who is first, weldr sees the close before it picks the connection, while
  // it writes, or when it reads. A GET must always succeed; a POST may get 502 but must reach
  // the origin at most once.
  std::mutex mutex;
  std::map<std::string, int> received;  // X-Id -> copies the origin read
  RawOrigin origin([&](RawOrigin::Connection& c) {
    const auto request = c.read_request();
    if (!request) return;
    {
      std::lock_guard lock(mutex);
      ++received[header_value(request->headers, "X-Id").value_or("")];
    }
    const std::string body = request->method == "POST" ? request->body : "Hello World";
    c.send(fmt::format("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}", body.size(), body));
    const int delay = std::stoi(header_value(request->headers, "X-Close-After").value_or("0"));
    std::this_thread::sleep_for(std::chrono::milliseconds(delay));
    c.close();
  });
  auto options = TestProxy::test_options();
  options.retry_budget_min = 1000;  // every GET that needs a retry gets one
  TestProxy proxy({origin.url()}, options);

  constexpr int kRounds = 40;
  const int delays[] = {0, 0, 1, 2, 5};
  for (const std::string method : {"GET", "POST"}) {
    Client client(proxy.port());
    std::vector<Response> responses;
    for (int i = 0; i < kRounds; ++i) {
      const std::string id = fmt::format("{}-{}", method, i);
      const std::string headers = fmt::format("X-Id: {}\r\nX-Close-After: {}\r\n", id, delays[i % 5]);
      const std::string body = method == "POST" ? id : std::string{};
      responses.push_back(client.exchange(make_request(method, method == "POST" ? "/echo" : "/", body, headers)));
    }
    std::lock_guard lock(mutex);
    int failed = 0;
    for (int i = 0; i < kRounds; ++i) {
      const std::string id = fmt::format("{}-{}", method, i);
      const Response& r = responses[static_cast<std::size_t>(i)];
      INFO(id << ": " << r.describe() << ", seen by the origin " << received[id] << " time(s)");
      REQUIRE(r.complete);
      CHECK(received[id] <= 1);  // never replayed
      if (method == "GET") {
        CHECK(r.status == 200);
        CHECK(r.body == "Hello World");
      } else if (r.status == 200) {
        CHECK(r.body == id);
        CHECK(received[id] == 1);
      } else {
        CHECK(r.status == 502);
        ++failed;
      }
    }
    INFO(method << ": " << failed << " of " << kRounds << " got 502");
    SUCCEED();
  }
}

TEST_CASE("an origin that resets in the middle of the body: the client connection ends, incomplete",
          "[integration][broken-origin]") {
  // proxy_errors_test covers a 1 MiB body cut by the origin. Here the RST comes once the
  // client has seen the head and part of the body, so the head is certainly out.
  struct Case {
    const char* name;
    std::string response;  // what the origin sends before the reset
    std::string last;      // the last bytes of it, which the client must see before the reset
  };
  const std::vector<Case> cases{
      {"Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + std::string(100, 'x'),
       std::string(100, 'x')},
      {"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\n0123456", "0123456"},
  };
  for (const auto& c : cases) {
    DYNAMIC_SECTION(c.name) {
      std::promise<void> reset;
      const std::shared_future<void> reset_signal = reset.get_future().share();
      RawOrigin origin([&](RawOrigin::Connection& connection) {
        if (!connection.read_request()) return;
        if (connection.index() == 0) {
          connection.send(c.response);
          wait_for(reset_signal);
          connection.close(/*reset=*/true);
          return;
        }
        do {
          connection.send("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nHello World");
        } while (connection.read_request());
      });
      TestProxy proxy({origin.url()});
      Peer peer(proxy.port());
      REQUIRE(peer.send(make_request("GET", "/")));
      const bool seen = peer.read_until([&](const std::string& in) {
        const auto head_end = in.find("\r\n\r\n");
        return head_end != std::string::npos && in.find(c.last, head_end) != std::string::npos;
      });
      INFO("received: " << peer.received());
      REQUIRE(seen);
      reset.set_value();
      const End end = peer.read_to_end();
      INFO("received: " << peer.received());
      CHECK(end != End::timeout);
      CHECK(peer.received().rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
      if (c.name == std::string("chunked")) {
        CHECK(peer.received().find("\r\n0\r\n\r\n") == std::string::npos);
      } else {
        CHECK(peer.body().size() == 100);
      }
      CHECK(proxy.counters().responses_ok == 0);
      require_usable(proxy.port());
    }
  }
}

TEST_CASE("descriptors and connections return to the baseline after 200 broken exchanges",
          "[integration][broken-origin]") {
  const std::string long_head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
  const std::string half = std::string(50, 'x');
  auto served = std::make_shared<std::map<std::size_t, int>>();  // the origin's thread only
  Origin origin([&, served](const RecordedRequest& request) {
    const bool reused = (*served)[request.connection]++ > 0;
    const std::string_view path = request.path();
    if (path == "/short") return Reply{.close_after_bytes = long_head.size() + half.size(), .raw = long_head + half};
    if (path == "/reset") {
      return Reply{.close_after_bytes = long_head.size() + half.size(), .reset = true, .raw = long_head + half};
    }
    if (path == "/stall") return Reply{.raw = long_head + half};
    if (path == "/long") return Reply{.raw = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n"};
    // Closed without an answer when weldr reuses the connection for it.
    if (path == "/drop" && reused) return Reply{.close_without_response = true};
    return Origin::default_reply(request);
  });
  auto options = TestProxy::test_options();
  options.read_timeout = 200ms;
  options.upstream_idle_timeout = 200ms;
  TestProxy proxy({origin.endpoint_url()}, options);

  const std::size_t baseline = open_descriptors();
  const long rss_before = rss_kib();

  struct Kind {
    std::string request;
    bool complete_200_allowed;  // whether a complete 200 is a right answer
  };
  const std::vector<Kind> kinds{
      {make_request("GET", "/short"), false},        {make_request("GET", "/reset"), false},
      {make_request("GET", "/long"), true},          {make_request("GET", "/drop"), true},
      {make_request("POST", "/drop", "body"), true}, {make_request("GET", "/short"), false},
      {make_request("GET", "/reset"), false},        {make_request("GET", "/long"), true},
      {make_request("GET", "/drop"), true},          {make_request("GET", "/stall"), false},
  };
  int wrong_first = 0;      // the plain GET before the broken one failed
  int looked_complete = 0;  // a broken response reached the client as a complete 200
  int hung = 0;             // the client waited in vain
  constexpr int kClients = 100;
  for (int i = 0; i < kClients; ++i) {
    const Kind& kind = kinds[static_cast<std::size_t>(i) % kinds.size()];
    Client client(proxy.port(), 5s);
    // A plain GET first, so that the broken exchange goes out on a reused upstream connection.
    const Response first = client.exchange(make_request("GET", "/"));
    if (!first.complete || first.status != 200 || first.body != "Hello World") {
      ++wrong_first;
      UNSCOPED_INFO(i << ": first: " << first.describe());
    }
    const Response r = client.exchange(kind.request);
    if (r.timed_out) ++hung;
    if (r.complete && r.status == 200 && !kind.complete_200_allowed) {
      ++looked_complete;
      UNSCOPED_INFO(i << ": " << kind.request << " -> " << r.describe());
    }
    if (i % 3 == 0) client.close(/*reset=*/true);  // some clients leave with a reset
  }
  CHECK(wrong_first == 0);
  CHECK(looked_complete == 0);
  CHECK(hung == 0);

  // Three requests at once leave three upstream connections idle in weldr's cache.
  {
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < 3; ++i) {
      clients.push_back(std::make_unique<Client>(proxy.port(), 5s));
      REQUIRE(clients.back()->send(make_request("GET", "/delay/100")));
    }
    for (auto& client : clients) {
      const Response r = client->read_response();
      INFO(r.describe());
      CHECK(r.status == 200);
    }
  }

  // The idle sweep closes cached upstream connections after upstream_idle_timeout; sessions
  // end as their clients close. Wait (bounded) for everything to be released.
  std::size_t now = 0;
  std::uint64_t open_connections = 0;
  const auto deadline = Clock::now() + 10s;
  do {
    std::this_thread::sleep_for(50ms);
    now = open_descriptors();
    open_connections = proxy.counters().connections_open;
  } while ((now != baseline || open_connections != 0) && Clock::now() < deadline);
  INFO("descriptors: " << baseline << " before, " << now << " after; RSS " << rss_before << " KiB before, " << rss_kib()
                       << " KiB after");
  CHECK(open_connections == 0);
  CHECK(now == baseline);
  require_usable(proxy.port());
}
