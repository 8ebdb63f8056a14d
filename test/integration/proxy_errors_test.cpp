// Error-path integration tests: every failure maps to the right status (or a clean close), and
// the proxy keeps serving afterwards.

#include <weldr/proxy.hpp>

#include "client.hpp"
#include "origin.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <chrono>
#include <string>
#include <vector>

using namespace weldr::test;
using namespace std::chrono_literals;

namespace {

// Checks that a plain GET through the proxy still works.
void require_usable(std::uint16_t proxy_port) {
  const Response r = http_get(proxy_port, "/");
  INFO("after the failure: " << r.describe());
  REQUIRE(r.complete);
  REQUIRE(r.status == 200);
  REQUIRE(r.body == "Hello World");
}


// A handler that answers `path` with `reply` and everything else with the default behaviour.
Handler reply_on(std::string path, Reply reply) {
  return [path = std::move(path), reply = std::move(reply)](const RecordedRequest& request) {
    return request.path() == path ? reply : Origin::default_reply(request);
  };
}

// A request head with `count` header fields in all (Host included).
std::string request_with_fields(std::size_t count) {
  std::string out = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  for (std::size_t i = 1; i < count; ++i) out += fmt::format("X-Field-{}: {}\r\n", i, i);
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

  SECTION("101 header fields") { require_431(request_with_fields(101)); }

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
