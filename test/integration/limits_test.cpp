// Limits on what a client may send or hold: request line (414), body size (413), total body
// time (408), the connection cap, and slow clients that must not starve everyone else.

#include <weldr/proxy.hpp>

#include "checks.hpp"
#include "client.hpp"
#include "origin.hpp"

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace weldr::test;
using namespace std::chrono_literals;

namespace {

// A raw, blocking socket to 127.0.0.1:port for clients that misbehave on purpose:
// the test keeps hundreds of them, so they are plain descriptors rather than Client objects.
int raw_connect(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool raw_send(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const auto n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Makes sure the test process may hold `n` more descriptors.
void ensure_descriptors(rlim_t n) {
  rlimit limit{};
  REQUIRE(getrlimit(RLIMIT_NOFILE, &limit) == 0);
  if (limit.rlim_cur < n) {
    limit.rlim_cur = std::min(n, limit.rlim_max);
    REQUIRE(setrlimit(RLIMIT_NOFILE, &limit) == 0);
  }
  REQUIRE(limit.rlim_cur >= n);
}

}  // namespace

TEST_CASE("a request line over max_request_line gets 414 and never reaches the origin", "[integration][limits]") {
  Origin origin;
  auto options = TestProxy::test_options();
  options.max_request_line = 1024;
  TestProxy proxy({origin.endpoint_url()}, options);

  SECTION("just under the limit is served") {
    // "GET" + the target: 3 + 1021 bytes.
    const std::string target = "/?" + std::string(1019, 'a');
    Client client(proxy.port());
    const Response r = client.exchange(make_request("GET", target));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    REQUIRE(origin.request_count() == 1);
    CHECK(origin.requests()[0].target == target);
  }

  SECTION("one byte more gets 414 and a close") {
    const std::string target = "/?" + std::string(1020, 'a');
    Client client(proxy.port());
    const Response r = client.exchange(make_request("GET", target));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 414);
    CHECK(client.wait_closed());
    CHECK(origin.request_count() == 0);
  }

  SECTION("a target that never ends is cut at the limit, not at the head size") {
    Client client(proxy.port());
    REQUIRE(client.send("GET /" + std::string(4096, 'b')));
    const Response r = client.read_response();
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 414);
    CHECK(client.wait_closed());
    CHECK(origin.request_count() == 0);
  }
  require_usable(proxy.port());
}

TEST_CASE("a request body over max_body_size gets 413", "[integration][limits]") {
  Origin origin;
  auto options = TestProxy::test_options();
  options.max_body_size = 1000;
  TestProxy proxy({origin.endpoint_url()}, options);

  SECTION("a body of exactly the limit is served") {
    Client client(proxy.port());
    const std::string body(1000, 'x');
    const Response r = client.exchange(make_request("POST", "/echo", body));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    CHECK(r.body == body);
  }

  SECTION("a Content-Length over the limit is refused before the body is read, even with Expect") {
    Client client(proxy.port());
    REQUIRE(
        client.send("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1001\r\n"
                    "Expect: 100-continue\r\n\r\n"));
    const Response r = client.read_response(false, /*return_interim=*/true);
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 413);  // and no 100 Continue first
    CHECK(client.wait_closed());
    CHECK(origin.connections_accepted() == 0);
  }

  SECTION("a chunked body that grows past the limit is cut: 413, and the origin never gets a whole request") {
    Client client(proxy.port());
    REQUIRE(client.send("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
    const std::string chunk = fmt::format("{:x}\r\n{}\r\n", 400, std::string(400, 'y'));
    REQUIRE(client.send(chunk));
    std::this_thread::sleep_for(50ms);  // (so that the body streams: the origin is already connected)
    REQUIRE(client.send(chunk));
    client.send(chunk);  // 1,200 bytes: over
    client.send("0\r\n\r\n");
    const Response r = client.read_response();
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 413);
    CHECK(client.wait_closed());
    CHECK(origin.request_count() == 0);
  }

  SECTION("a chunked body over the limit that arrives with the head never reaches the origin") {
    Client client(proxy.port());
    const std::string chunk = fmt::format("{:x}\r\n{}\r\n", 600, std::string(600, 'z'));
    const Response r = client.exchange("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n" +
                                       chunk + chunk + "0\r\n\r\n");
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 413);
    CHECK(origin.connections_accepted() == 0);
  }
  require_usable(proxy.port());
}

TEST_CASE("a body that trickles in for longer than request_body_timeout gets 408", "[integration][limits]") {
  Origin origin;
  auto options = TestProxy::test_options();
  options.request_body_timeout = 400ms;  // total; each read alone is well within client_header_timeout
  TestProxy proxy({origin.endpoint_url()}, options);

  Client client(proxy.port());
  REQUIRE(client.send("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n"));
  // One byte every 50 ms would take 5 s; the proxy gives up after 400 ms in all. Send for
  // 2 s at most (or until the proxy has closed), then read what came back.
  for (int i = 0; i < 40; ++i) {
    std::this_thread::sleep_for(50ms);
    if (!client.send("x")) break;
  }
  const Response r = client.read_response();
  INFO(r.describe());
  REQUIRE(r.complete);
  CHECK(r.status == 408);
  CHECK(client.wait_closed());
  CHECK(origin.request_count() == 0);
  require_usable(proxy.port());
}

TEST_CASE("at the connection cap new connections wait in the backlog until one closes", "[integration][limits]") {
  Origin origin;
  auto options = TestProxy::test_options();
  auto limit = std::make_shared<weldr::ConnectionLimit>(2);
  options.connection_limit = limit;
  TestProxy proxy({origin.endpoint_url()}, options);

  auto first = std::make_unique<Client>(proxy.port());
  Client second(proxy.port());
  REQUIRE(first->exchange(make_request("GET", "/")).status == 200);
  REQUIRE(second.exchange(make_request("GET", "/")).status == 200);
  CHECK(limit->open() == 2);

  // The kernel completes the handshake (the backlog), but the proxy does not accept it yet.
  Client third(proxy.port(), 10s);
  REQUIRE(third.send(make_request("GET", "/")));
  std::this_thread::sleep_for(300ms);
  CHECK(proxy.counters().connections_accepted == 2);
  CHECK(origin.request_count() == 2);

  first.reset();  // a slot frees up: the waiting connection is accepted and served
  const Response r = third.read_response();
  INFO(r.describe());
  REQUIRE(r.complete);
  CHECK(r.status == 200);
  CHECK(proxy.counters().connections_accepted == 3);
  CHECK(limit->open() == 2);
}

TEST_CASE("a connection cap shared by two proxies holds across both", "[integration][limits]") {
  Origin origin;
  auto options = TestProxy::test_options();
  auto limit = std::make_shared<weldr::ConnectionLimit>(2);
  options.connection_limit = limit;
  TestProxy a({origin.endpoint_url()}, options);
  TestProxy b({origin.endpoint_url()}, options);

  // One connection on each: b accepts the second, sees the cap reached and stops accepting.
  auto on_a = std::make_unique<Client>(a.port());
  REQUIRE(on_a->exchange(make_request("GET", "/")).status == 200);
  Client on_b(b.port());
  REQUIRE(on_b.exchange(make_request("GET", "/")).status == 200);

  Client waiting(b.port());
  REQUIRE(waiting.send(make_request("GET", "/")));
  std::this_thread::sleep_for(300ms);
  CHECK(b.counters().connections_accepted == 1);
  CHECK(limit->open() == 2);

  on_a.reset();  // freed on the other proxy: found by the waiting proxy's next poll
  const Response r = waiting.read_response();
  INFO(r.describe());
  REQUIRE(r.complete);
  CHECK(r.status == 200);
  CHECK(b.counters().connections_accepted == 2);
}

TEST_CASE("1,000 slowloris and slow-reading clients do not keep a normal client from its answers",
          "[integration][limits][slow]") {
  constexpr int kSlowloris = 800;
  constexpr int kSlowReaders = 200;
  ensure_descriptors(4 * (kSlowloris + kSlowReaders) + 256);

  // The 1 MiB body is built once: 200 of them built byte by byte would keep the test origin's
  // one thread busy for seconds under the sanitizers, which would test the origin instead.
  Origin origin(reply_on("/large", Reply{.body = large_body(1 << 20)}));
  auto options = TestProxy::test_options();
  // The attack lasts for the whole test: no timeout comes to the rescue. (And a loaded test
  // machine must not turn into a 504.)
  options.client_header_timeout = 60s;
  options.send_timeout = 60s;
  options.read_timeout = 30s;
  TestProxy proxy({origin.endpoint_url()}, options);

  struct Descriptors {
    std::vector<int> fds;
    ~Descriptors() {
      for (int fd : fds)
        ::close(fd);
    }
  } held;
  auto& fds = held.fds;
  // Slowloris: a head that never ends, one field at a time.
  for (int i = 0; i < kSlowloris; ++i) {
    const int fd = raw_connect(proxy.port());
    if (fd < 0) break;
    fds.push_back(fd);
    raw_send(fd, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n");
  }
  // Slow readers: ask for 1 MiB each and never read it.
  const int small_buffer = 4096;
  for (int i = 0; i < kSlowReaders; ++i) {
    const int fd = raw_connect(proxy.port());
    if (fd < 0) break;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small_buffer, sizeof small_buffer);
    fds.push_back(fd);
    raw_send(fd, make_request("GET", "/large"));
  }
  const auto opened = fds.size();
  for (int round = 0; round < 3; ++round) {
    for (int fd : std::vector<int>(fds.begin(), fds.begin() + kSlowloris / 4))
      raw_send(fd, fmt::format("X-Slow-{}: still here\r\n", round));

    // A normal client gets every answer, on keep-alive and on new connections.
    Client normal(proxy.port());
    for (int i = 0; i < 10; ++i) {
      const Response r = normal.exchange(make_request("GET", "/"));
      INFO(r.describe());
      REQUIRE(r.complete);
      REQUIRE(r.status == 200);
      REQUIRE(r.body == "Hello World");
    }
    require_usable(proxy.port());
  }
  CHECK(opened == static_cast<std::size_t>(kSlowloris + kSlowReaders));
  CHECK(proxy.counters().connections_open >= opened);
}

TEST_CASE("client timeouts: a slow head gets 408, an idle connection is closed", "[integration][limits]") {
  Origin origin;
  auto options = TestProxy::test_options();
  options.client_header_timeout = 300ms;
  options.client_idle_timeout = 3s;
  TestProxy proxy({origin.endpoint_url()}, options);

  SECTION("a head that stops half way gets 408 and a close") {
    Client client(proxy.port());
    REQUIRE(client.send("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"));
    const Response r = client.read_response();
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 408);
    CHECK(client.wait_closed());
  }

  SECTION("a new connection that sends nothing is closed after the header timeout, without an answer") {
    Client client(proxy.port());
    const auto start = std::chrono::steady_clock::now();
    CHECK(client.wait_closed(10s));
    // Closed by the header timeout, not by the idle timeout. (This tells which timer fired,
    // with a wide margin; it is not a measure of speed.)
    CHECK(std::chrono::steady_clock::now() - start < 2500ms);
    const Response r = client.read_response();
    CHECK_FALSE(r.complete);
  }

  SECTION("a kept-alive connection is closed after the idle timeout, without an answer") {
    Client client(proxy.port());
    REQUIRE(client.exchange(make_request("GET", "/")).status == 200);
    std::this_thread::sleep_for(400ms);  // past the header timeout, within the idle timeout
    const Response again = client.exchange(make_request("GET", "/"));
    INFO(again.describe());
    REQUIRE(again.complete);
    CHECK(again.status == 200);
    CHECK(client.wait_closed(10s));
    CHECK(origin.request_count() == 2);
  }
  require_usable(proxy.port());
}
