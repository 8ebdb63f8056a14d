// Error-path integration tests: every failure maps to the right status (or a clean close), and
// the proxy keeps serving afterwards.

#include <weldr/proxy.hpp>

#include "checks.hpp"
#include "client.hpp"
#include "origin.hpp"

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

using namespace weldr::test;
using namespace std::chrono_literals;

namespace {

// A request head with `count` header fields in all (Host included).
std::string request_with_fields(std::size_t count) {
  std::string out = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  for (std::size_t i = 1; i < count; ++i)
    out += fmt::format("X-Field-{}: {}\r\n", i, i);
  return out + "\r\n";
}

}  // namespace

TEST_CASE("no usable backend gives 503", "[integration]") {
  SECTION("empty pool") {
    TestProxy proxy;
    const Response r = http_get(proxy.port(), "/");
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 503);

    Origin origin;
    REQUIRE(proxy.pool().add(origin.endpoint_url()));
    require_usable(proxy.port());
  }

  SECTION("every backend removed") {
    Origin origin;
    TestProxy proxy({origin.endpoint_url()});
    require_usable(proxy.port());

    REQUIRE(proxy.pool().remove(origin.id()));
    const Response r = http_get(proxy.port(), "/");
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 503);
    CHECK(origin.request_count() == 1);

    Origin replacement;
    REQUIRE(proxy.pool().add(replacement.endpoint_url()));
    require_usable(proxy.port());
  }
}

TEST_CASE("a backend that refuses connections gives 502, or a retry for idempotent requests", "[integration]") {
  SECTION("POST to the only, dead, backend") {
    const RefusingPort dead;
    TestProxy proxy({dead.url()});
    Client client(proxy.port());
    const Response r = client.exchange(make_request("POST", "/echo", "payload"));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 502);

    Origin origin;
    REQUIRE(proxy.pool().add(origin.endpoint_url()));
    REQUIRE(proxy.pool().remove(dead.id()));
    require_usable(proxy.port());
  }

  SECTION("GET with one dead and one live backend is retried on the live one") {
    const RefusingPort dead;
    Origin origin;
    TestProxy proxy({dead.url(), origin.endpoint_url()});
    // Round robin: at least one of these picks the dead backend first.
    for (int i = 0; i < 4; ++i) {
      const Response r = http_get(proxy.port(), "/");
      INFO(i << ": " << r.describe());
      REQUIRE(r.complete);
      CHECK(r.status == 200);
      CHECK(r.body == "Hello World");
    }
    CHECK(origin.request_count() == 4);
    CHECK(proxy.counters().retries >= 1);
  }
}

TEST_CASE("an origin that never answers gives 504 after read_timeout", "[integration]") {
  Origin origin(reply_on("/hang", Reply{.no_response = true}));
  weldr::ProxyOptions options = TestProxy::test_options();
  options.read_timeout = 300ms;
  TestProxy proxy({origin.endpoint_url()}, options);

  const Response r = http_get(proxy.port(), "/hang");
  INFO(r.describe());
  REQUIRE(r.complete);
  CHECK(r.status == 504);

  require_usable(proxy.port());
  require_usable(proxy.port());
}

TEST_CASE("malformed requests get 400, the connection is closed, and the origin sees nothing", "[integration]") {
  struct Case {
    const char* name;
    std::string bytes;
  };
  const std::vector<Case> cases{
      {"garbage request line", "this is not http\r\n\r\n"},
      {"Content-Length with Transfer-Encoding",
       "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
       "5\r\nhello\r\n0\r\n\r\n"},
      {"two different Content-Length values",
       "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"},
      {"bad chunk size",
       "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"},
      {"whitespace before a header colon", "GET / HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n"},
      {"obs-fold", "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Folded: a\r\n b\r\n\r\n"},
  };
  for (const auto& c : cases) {
    DYNAMIC_SECTION(c.name) {
      Origin origin;
      TestProxy proxy({origin.endpoint_url()});
      Client client(proxy.port());
      const Response r = client.exchange(c.bytes);
      INFO(r.describe());
      REQUIRE(r.complete);
      CHECK(r.status == 400);
      CHECK(client.wait_closed());

      require_usable(proxy.port());
      const auto seen = origin.requests();
      REQUIRE(seen.size() == 1);
      CHECK(seen[0].target == "/");
      CHECK(seen[0].method == "GET");
    }
  }
}

TEST_CASE("request heads over the limits get 431", "[integration]") {
  Origin origin;
  TestProxy proxy({origin.endpoint_url()});
  Client client(proxy.port());

  auto require_431 = [&](const std::string& request) {
    const Response r = client.exchange(request);
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 431);
    require_usable(proxy.port());
    const auto seen = origin.requests();
    REQUIRE(seen.size() == 1);
    CHECK_FALSE(seen[0].has("X-Big"));
    CHECK_FALSE(seen[0].has("X-Field-1"));
  };

  SECTION("a 70 KiB header value") {
    require_431("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + std::string(70 * 1024, 'a') + "\r\n\r\n");
  }

  SECTION("101 header fields") {
    require_431(request_with_fields(101));
  }

  SECTION("100 header fields are still accepted") {
    const Response r = client.exchange(request_with_fields(100));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    const auto seen = origin.requests();
    REQUIRE(seen.size() == 1);
    CHECK(seen[0].has("X-Field-99"));
  }
}

TEST_CASE("an invalid response from the origin gives 502", "[integration]") {
  Origin origin([](const RecordedRequest& request) {
    if (request.path() == "/bad-status") return Reply{.raw = "HTTP/1.1 abc\r\n\r\n"};
    if (request.path() == "/garbage") return Reply{.raw = "garbage\r\n\r\n"};
    if (request.path() == "/huge-head") {
      return Reply{.headers = {{"X-Big", std::string(70 * 1024, 'a')}}, .body = "too big"};
    }
    return Origin::default_reply(request);
  });
  TestProxy proxy({origin.endpoint_url()});

  for (const char* path : {"/bad-status", "/garbage", "/huge-head"}) {
    DYNAMIC_SECTION(path) {
      const Response r = http_get(proxy.port(), path);
      INFO(r.describe());
      REQUIRE(r.complete);
      CHECK(r.status == 502);
      require_usable(proxy.port());
    }
  }
}

TEST_CASE("a 204 or 304 has no body whatever its framing says: no desync, no stall", "[integration]") {
  // RFC 9112 §6.3: a 204 or 304 ends at its head. A server that sends bytes after it anyway
  // must not have them read as that response's body, nor as the next response.
  Origin origin([](const RecordedRequest& request) {
    if (request.path() == "/204") {
      return Reply{.raw =
                       "HTTP/1.1 204 No Content\r\nContent-Length: 43\r\n\r\n"
                       "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!"};
    }
    if (request.path() == "/304") {
      // A 304 may carry the representation's Content-Length (RFC 9110 §8.6): no body follows.
      return Reply{.raw = "HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n"};
    }
    if (request.path() == "/reason") {
      static constexpr char kNul[] = "HTTP/1.1 200 O\0K\r\nContent-Length: 0\r\n\r\n";
      return Reply{.raw = std::string(kNul, sizeof kNul - 1)};
    }
    return Origin::default_reply(request);
  });
  TestProxy proxy({origin.endpoint_url()});
  Client client(proxy.port());
  const Response no_content = client.exchange(make_request("GET", "/204"));
  INFO(no_content.describe());
  REQUIRE(no_content.complete);
  CHECK(no_content.status == 204);
  CHECK(no_content.body.empty());
  const Response next = client.exchange(make_request("GET", "/"));
  INFO(next.describe());
  CHECK(next.status == 200);
  CHECK(next.body == "Hello World");

  Client revalidating(proxy.port());
  const Response not_modified = revalidating.exchange(make_request("GET", "/304"), /*head_request=*/true);
  INFO(not_modified.describe());
  REQUIRE(not_modified.complete);
  CHECK(not_modified.status == 304);
  CHECK(not_modified.header("Content-Length") == "1000");  // kept: it describes the representation
  // weldr did not wait for a body that never comes: the backend has no failure, and the
  // connection goes on.
  CHECK(revalidating.exchange(make_request("GET", "/")).status == 200);
  CHECK(proxy.pool().list().at(0)->failures() == 0);

  // A control character in the reason phrase is an invalid response.
  CHECK(Client(proxy.port()).exchange(make_request("GET", "/reason")).status == 502);
}

TEST_CASE("a backend that dies mid-response makes the proxy close the client connection", "[integration]") {
  // The origin promises 1 MiB and sends the head and about 900 bytes of it.
  Reply truncated{.body = std::string(1024 * 1024, 'x'), .close_after_bytes = 1000};

  SECTION("the origin closes") {
    Origin origin(reply_on("/truncated", truncated));
    TestProxy proxy({origin.endpoint_url()});
    Client client(proxy.port());
    const Response r = client.exchange(make_request("GET", "/truncated"));
    INFO(r.describe());
    CHECK_FALSE(r.timed_out);
    CHECK(r.status == 200);
    CHECK_FALSE(r.complete);
    CHECK(r.closed);
    CHECK(r.body.size() < 1024 * 1024);
    require_usable(proxy.port());
  }

  SECTION("the origin resets") {
    truncated.reset = true;
    Origin origin(reply_on("/truncated", truncated));
    TestProxy proxy({origin.endpoint_url()});
    Client client(proxy.port());
    const Response r = client.exchange(make_request("GET", "/truncated"));
    INFO(r.describe());
    CHECK_FALSE(r.timed_out);
    // The client must never see the truncated body as a complete response.
    CHECK_FALSE((r.complete && r.status == 200));
    if (!r.complete) CHECK(r.closed);
    require_usable(proxy.port());
  }
}

TEST_CASE("a cached upstream connection the origin closed is not a failure", "[integration]") {
  // The origin closes every connection after its response without saying so (no
  // Connection: close), so the proxy's cached connection is always dead when it is reused.
  Origin origin([](const RecordedRequest& request) {
    Reply reply = Origin::default_reply(request);
    reply.close_after_response = true;
    return reply;
  });
  TestProxy proxy({origin.endpoint_url()});

  SECTION("on one client connection") {
    Client client(proxy.port());
    for (int i = 0; i < 10; ++i) {
      const Response r = client.exchange(make_request("GET", "/"));
      INFO(i << ": " << r.describe());
      REQUIRE(r.complete);
      REQUIRE(r.status == 200);
      REQUIRE(r.body == "Hello World");
    }
  }

  SECTION("on separate client connections") {
    for (int i = 0; i < 10; ++i) {
      const Response r = http_get(proxy.port(), "/");
      INFO(i << ": " << r.describe());
      REQUIRE(r.complete);
      REQUIRE(r.status == 200);
    }
  }

  CHECK(origin.request_count() == 10);
}

namespace {

// Sends `request` on a new connection and reads until the connection ends. True when it ended
// with a reset (ECONNRESET), false for an orderly close (FIN) or a timeout.
bool ends_with_reset(std::uint16_t port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool reset = false;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) {
    }
    reset = n < 0 && errno == ECONNRESET;
  }
  ::close(fd);
  return reset;
}

}  // namespace

TEST_CASE("a response without length framing that is cut short ends with a reset, not a clean close", "[integration]") {
  // read_timeout is far longer than ends_with_reset waits (10 s): the cut arrives with the last
  // bytes and must be seen then, not when the timeout fires (see the next case).
  auto options = TestProxy::test_options();
  options.read_timeout = 120s;
  SECTION("close-delimited body, the origin resets") {
    const std::string head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial-body";
    Origin origin(reply_on("/cut", Reply{.close_after_bytes = head.size(), .reset = true, .raw = head}));
    TestProxy proxy({origin.endpoint_url()}, options);
    for (int i = 0; i < 5; ++i)
      CHECK(ends_with_reset(proxy.port(), make_request("GET", "/cut")));
    require_usable(proxy.port());
  }
  SECTION("chunked body de-chunked for an HTTP/1.0 client, the origin closes mid-body") {
    const std::string head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
    Origin origin(reply_on("/cut", Reply{.close_after_bytes = head.size(), .raw = head}));
    TestProxy proxy({origin.endpoint_url()}, options);
    CHECK(ends_with_reset(proxy.port(), "GET /cut HTTP/1.0\r\n\r\n"));
    require_usable(proxy.port());
  }
}

// A close (FIN or RST) that arrives together with the last bytes raises no epoll event of its
// own after they are read: the proxy must still see it at once, and not when a timeout fires.
// The timeouts here are far longer than the client waits. (A reset that cuts a response: the
// case above.)
TEST_CASE("a close that arrives with the last bytes is seen at once, not at a timeout", "[integration]") {
  auto options = TestProxy::test_options();
  options.read_timeout = 120s;
  options.client_idle_timeout = 120s;
  options.client_header_timeout = 120s;
  SECTION("a close-delimited response, the origin closes right after it") {
    const std::string raw = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthe-whole-body";
    Origin origin(reply_on("/eof", Reply{.close_after_bytes = raw.size(), .raw = raw}));
    TestProxy proxy({origin.endpoint_url()}, options);
    for (int i = 0; i < 5; ++i) {
      Client client(proxy.port(), 10s);
      const auto response = client.exchange(make_request("GET", "/eof"));
      REQUIRE(response.complete);
      CHECK(response.status == 200);
      CHECK(response.body == "the-whole-body");
    }
  }
  SECTION("a keep-alive client that half-closes right after its second request") {
    Origin origin;
    TestProxy proxy({origin.endpoint_url()}, options);
    for (int i = 0; i < 5; ++i) {
      Client client(proxy.port(), 10s);
      REQUIRE(client.exchange(make_request("GET", "/first")).complete);
      // The second request goes to an idle keep-alive connection, the FIN right behind it.
      REQUIRE(client.send(make_request("GET", "/second")));
      client.shutdown_send();
      REQUIRE(client.read_response().complete);
      CHECK(client.wait_closed(10s));
    }
  }
}

TEST_CASE("an upload slower than read_timeout is not a timeout", "[integration]") {
  Origin origin;
  auto options = TestProxy::test_options();
  options.read_timeout = 300ms;
  TestProxy proxy({origin.endpoint_url()}, options);
  Client client(proxy.port());
  REQUIRE(client.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nabc"));
  REQUIRE(origin.wait_for_connections(1));
  for (const char* piece : {"def", "ghi"}) {
    std::this_thread::sleep_for(250ms);  // the client is slow on purpose: 500 ms in all
    REQUIRE(client.send(piece));
  }
  const Response r = client.read_response();
  INFO(r.describe());
  CHECK(r.status == 200);
  CHECK(r.body == "abcdefghi");
}

TEST_CASE("an invalid chunk in a streamed request body gets 400 and a close", "[integration]") {
  Origin origin;
  TestProxy proxy({origin.endpoint_url()});
  Client client(proxy.port());
  REQUIRE(client.send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"));
  REQUIRE(origin.wait_for_connections(1));  // the head went upstream: the body now streams
  REQUIRE(client.send("zz\r\n"));
  const Response r = client.read_response();
  INFO(r.describe());
  CHECK(r.status == 400);
  CHECK(client.wait_closed());
  require_usable(proxy.port());
}

TEST_CASE("stop's grace period is enforced and a request is not retried after it", "[integration]") {
  Origin origin(reply_on("/hang", Reply{.no_response = true}));
  auto options = TestProxy::test_options();
  options.read_timeout = 20s;
  TestProxy proxy({origin.endpoint_url()}, options);
  Client client(proxy.port());
  REQUIRE(client.send(make_request("GET", "/hang")));
  REQUIRE(origin.wait_for_requests(1));
  auto stopped = proxy.stop(200ms);
  CHECK(stopped.wait_for(5s) == std::future_status::ready);
  CHECK(client.wait_closed());
  CHECK(origin.requests().size() == 1);
}
