// Happy-path integration tests: real sockets on 127.0.0.1, an in-process origin, weldr::Proxy
// on its own thread, and a raw client that sends exact bytes.

#include <weldr/proxy.hpp>

#include "client.hpp"
#include "origin.hpp"

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <array>
#include <chrono>
#include <future>
#include <string>
#include <thread>

using namespace weldr::test;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t kMiB = 1024 * 1024;

// A chunked request for `body` cut into pieces of `piece` bytes.
std::string chunked_request(std::string_view target, std::string_view body, std::size_t piece,
                            std::string_view extra_headers = {}) {
  std::string out =
      fmt::format("POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n{}\r\n", target, extra_headers);
  for (std::size_t i = 0; i < body.size(); i += piece) {
    const std::string_view part = body.substr(i, piece);
    out += fmt::format("{:x}\r\n", part.size());
    out += part;
    out += "\r\n";
  }
  out += "0\r\n\r\n";
  return out;
}

// True when no Connection field lists anything but the connection options a proxy may set itself.
bool connection_lists_only_options(const Headers& headers) {
  for (const auto& value : header_values(headers, "Connection")) {
    const Headers one{{"Connection", value}};
    if (!header_has_token(one, "Connection", "keep-alive") && !header_has_token(one, "Connection", "close")) {
      return false;
    }
  }
  return true;
}

}  // namespace

TEST_CASE("every method is forwarded with method, target and body intact", "[integration]") {
  Origin origin;
  TestProxy proxy({origin.endpoint_url()});
  Client client(proxy.port());

  const std::array<std::string, 8> methods{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"};
  for (const auto& method : methods) {
    const bool bodyless = method == "GET" || method == "HEAD" || method == "TRACE";
    const std::string body = bodyless ? "" : "payload of " + method;
    const std::string target = "/echo?method=" + method + "&q=a%20b";
    const Response r = client.exchange(make_request(method, target, body), method == "HEAD");
    INFO(method << ": " << r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    CHECK(r.body == body);
  }

  const auto seen = origin.requests();
  REQUIRE(seen.size() == methods.size());
  for (std::size_t i = 0; i < methods.size(); ++i) {
    INFO("request " << i);
    CHECK(seen[i].method == methods[i]);
    CHECK(seen[i].target == "/echo?method=" + methods[i] + "&q=a%20b");
    const bool bodyless = methods[i] == "GET" || methods[i] == "HEAD" || methods[i] == "TRACE";
    CHECK(seen[i].body == (bodyless ? "" : "payload of " + methods[i]));
  }
}

TEST_CASE("HEAD responses have no body but keep Content-Length", "[integration]") {
  Origin origin;
  TestProxy proxy({origin.endpoint_url()});
  Client client(proxy.port());

  const Response small = client.exchange(make_request("HEAD", "/"), /*head_request=*/true);
  INFO(small.describe());
  REQUIRE(small.complete);
  CHECK(small.status == 200);
  CHECK(small.header("Content-Length") == "11");
  CHECK(small.body.empty());

  const Response large = client.exchange(make_request("HEAD", "/large?size=100000"), /*head_request=*/true);
  INFO(large.describe());
  REQUIRE(large.complete);
  CHECK(large.header("Content-Length") == "100000");
  CHECK(large.body.empty());

  // The connection is still framed correctly: the proxy did not wait for (or send) a body.
  const Response next = client.exchange(make_request("GET", "/"));
  INFO(next.describe());
  REQUIRE(next.complete);
  CHECK(next.status == 200);
  CHECK(next.body == "Hello World");
}

TEST_CASE("POST bodies reach the origin and come back", "[integration]") {
  Origin origin;
  TestProxy proxy({origin.endpoint_url()});
  Client client(proxy.port());

  SECTION("with Content-Length") {
    const Response r = client.exchange(make_request("POST", "/echo", "Hello World"));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    CHECK(r.body == "Hello World");
    const auto seen = origin.requests();
    REQUIRE(seen.size() == 1);
    CHECK(seen[0].body == "Hello World");
  }

  SECTION("chunked") {
    const Response r = client.exchange(chunked_request("/echo", "Hello World", 5));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    CHECK(r.body == "Hello World");
    const auto seen = origin.requests();
    REQUIRE(seen.size() == 1);
    CHECK(seen[0].body == "Hello World");
  }

  SECTION("empty body") {
    const Response r = client.exchange("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    CHECK(r.body.empty());
  }
}

TEST_CASE("pipelined requests are answered in order", "[integration]") {
  Origin origin;
  TestProxy proxy({origin.endpoint_url()});
  Client client(proxy.port());

  const std::string batch = make_request("GET", "/") + make_request("POST", "/echo", "first") +
                            make_request("GET", "/large?size=70000") + chunked_request("/echo", "last one", 3) +
                            make_request("HEAD", "/") + make_request("GET", "/chunked");
  REQUIRE(client.send(batch));

  const Response a = client.read_response();
  INFO(a.describe());
  REQUIRE(a.complete);
  CHECK(a.body == "Hello World");
  const Response b = client.read_response();
  INFO(b.describe());
  REQUIRE(b.complete);
  CHECK(b.body == "first");
  const Response c = client.read_response();
  INFO(c.describe());
  REQUIRE(c.complete);
  CHECK(c.body == large_body(70000));
  const Response d = client.read_response();
  INFO(d.describe());
  REQUIRE(d.complete);
  CHECK(d.body == "last one");
  const Response e = client.read_response(/*head_request=*/true);
  INFO(e.describe());
  REQUIRE(e.complete);
  CHECK(e.header("Content-Length") == "11");
  CHECK(e.body.empty());
  const Response f = client.read_response();
  INFO(f.describe());
  REQUIRE(f.complete);
  CHECK(f.body == "Hello World");

  const auto seen = origin.requests();
  REQUIRE(seen.size() == 6);
  CHECK(seen[0].target == "/");
  CHECK(seen[1].body == "first");
  CHECK(seen[2].target == "/large?size=70000");
  CHECK(seen[3].body == "last one");
  CHECK(seen[4].method == "HEAD");
  CHECK(seen[5].target == "/chunked");
}

TEST_CASE("a client connection carries many requests", "[integration]") {
  Origin origin;
  TestProxy proxy({origin.endpoint_url()});
  Client client(proxy.port());

  for (int i = 0; i < 50; ++i) {
    const std::string body = fmt::format("request {}", i);
    const Response r = client.exchange(make_request("POST", "/echo", body));
    INFO(i << ": " << r.describe());
    REQUIRE(r.complete);
    REQUIRE(r.status == 200);
    REQUIRE(r.body == body);
  }
  CHECK(origin.request_count() == 50);
}

TEST_CASE("HTTP/1.0 clients get keep-alive only when they ask for it", "[integration]") {
  Origin origin;
  TestProxy proxy({origin.endpoint_url()});
  Client client(proxy.port());

  SECTION("without keep-alive the connection is closed after the response") {
    const Response r = client.exchange("GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    CHECK(r.body == "Hello World");
    CHECK(client.wait_closed());
  }

  SECTION("with Connection: keep-alive the connection stays open") {
    const std::string request = "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n";
    for (int i = 0; i < 3; ++i) {
      const Response r = client.exchange(request);
      INFO(i << ": " << r.describe());
      REQUIRE(r.complete);
      CHECK(r.status == 200);
      CHECK(r.body == "Hello World");
    }
    CHECK(origin.request_count() == 3);
  }
}

TEST_CASE("upstream connections are reused", "[integration]") {
  Origin origin;
  TestProxy proxy({origin.endpoint_url()});

  SECTION("sequential requests on one client connection") {
    Client client(proxy.port());
    for (int i = 0; i < 20; ++i) {
      const Response r = client.exchange(make_request("GET", "/"));
      INFO(i << ": " << r.describe());
      REQUIRE(r.status == 200);
    }
    CHECK(origin.request_count() == 20);
    CHECK(origin.connections_accepted() < 20);
    CHECK(proxy.counters().upstream_reuses >= 1);
  }

  SECTION("sequential requests on separate client connections") {
    for (int i = 0; i < 20; ++i) {
      const Response r = http_get(proxy.port(), "/");
      INFO(i << ": " << r.describe());
      REQUIRE(r.status == 200);
    }
    CHECK(origin.request_count() == 20);
    CHECK(origin.connections_accepted() < 20);
  }
}

TEST_CASE("the request is rewritten for the origin", "[integration]") {
  Origin origin;
  TestProxy proxy({origin.endpoint_url()});
  Client client(proxy.port());

  SECTION("forwarding headers are added") {
    const Response r = client.exchange("GET / HTTP/1.1\r\nHost: example.test:8080\r\n\r\n");
    INFO(r.describe());
    REQUIRE(r.status == 200);
    const auto seen = origin.requests();
    REQUIRE(seen.size() == 1);
    const Headers& h = seen[0].headers;
    CHECK(header_joined(h, "Via") == "1.1 weldr");
    CHECK(header_joined(h, "X-Forwarded-For") == "127.0.0.1");
    CHECK(header_joined(h, "X-Forwarded-Proto") == "http");
    CHECK(header_joined(h, "X-Forwarded-Host") == "example.test:8080");
    CHECK(header_values(h, "Host") == std::vector<std::string>{"example.test:8080"});
  }

  SECTION("existing Via and X-Forwarded-For are appended to") {
    const Response r =
        client.exchange("GET / HTTP/1.1\r\nHost: example.test\r\nVia: 1.0 fred\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n");
    INFO(r.describe());
    REQUIRE(r.status == 200);
    const auto seen = origin.requests();
    REQUIRE(seen.size() == 1);
    // Several field lines and one comma-joined line mean the same (RFC 9110 5.3).
    CHECK(header_joined(seen[0].headers, "Via") == "1.0 fred, 1.1 weldr");
    CHECK(header_joined(seen[0].headers, "X-Forwarded-For") == "1.2.3.4, 127.0.0.1");
  }

  SECTION("hop-by-hop headers are removed") {
    const Response r = client.exchange(
        "GET / HTTP/1.1\r\n"
        "Host: example.test\r\n"
        "Connection: keep-alive, X-Hop\r\n"
        "X-Hop: secret\r\n"
        "Keep-Alive: timeout=5\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "TE: trailers\r\n"
        "Trailer: X-Checksum\r\n"
        "Upgrade: websocket\r\n"
        "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"
        "X-End-To-End: kept\r\n"
        "\r\n");
    INFO(r.describe());
    REQUIRE(r.status == 200);
    const auto seen = origin.requests();
    REQUIRE(seen.size() == 1);
    const Headers& h = seen[0].headers;
    CHECK_FALSE(has_header(h, "X-Hop"));
    CHECK_FALSE(has_header(h, "Keep-Alive"));
    CHECK_FALSE(has_header(h, "Proxy-Connection"));
    CHECK_FALSE(has_header(h, "TE"));
    CHECK_FALSE(has_header(h, "Trailer"));
    CHECK_FALSE(has_header(h, "Upgrade"));
    CHECK_FALSE(has_header(h, "Proxy-Authorization"));
    CHECK_FALSE(header_has_token(h, "Connection", "X-Hop"));
    CHECK(connection_lists_only_options(h));
    CHECK(header_joined(h, "X-End-To-End") == "kept");
    CHECK(header_joined(h, "Host") == "example.test");
  }
}

TEST_CASE("the response is rewritten for the client", "[integration]") {
  Origin origin([](const RecordedRequest& request) {
    if (request.path() != "/hop") return Origin::default_reply(request);
    Reply reply;
    reply.body = "hop";
    reply.headers = {{"Connection", "close, X-Secret"},
                     {"X-Secret", "s3cr3t"},
                     {"Keep-Alive", "timeout=5"},
                     {"Proxy-Authenticate", "Basic realm=x"},
                     {"Trailer", "X-Checksum"},
                     {"Upgrade", "h2c"},
                     {"X-Public", "p"}};
    return reply;
  });
  TestProxy proxy({origin.endpoint_url()});
  Client client(proxy.port());

  const Response r = client.exchange(make_request("GET", "/hop"));
  INFO(r.describe());
  REQUIRE(r.complete);
  CHECK(r.status == 200);
  CHECK(r.body == "hop");
  CHECK_FALSE(r.has("X-Secret"));
  CHECK_FALSE(r.has("Keep-Alive"));
  CHECK_FALSE(r.has("Proxy-Authenticate"));
  CHECK_FALSE(r.has("Trailer"));
  CHECK_FALSE(r.has("Upgrade"));
  CHECK_FALSE(header_has_token(r.headers, "Connection", "X-Secret"));
  CHECK(r.header("X-Public") == "p");
  CHECK(header_joined(r.headers, "Via") == "1.1 weldr");

  // The origin closed its side ("Connection: close"); the client's connection is not affected.
  const Response next = client.exchange(make_request("GET", "/"));
  INFO(next.describe());
  REQUIRE(next.complete);
  CHECK(next.status == 200);
  CHECK(next.body == "Hello World");
}

TEST_CASE("large bodies are relayed intact both ways", "[integration]") {
  Origin origin([](const RecordedRequest& request) {
    if (request.path() != "/big-chunked") return Origin::default_reply(request);
    Reply reply;
    reply.body = large_body(3 * kMiB + 17);
    reply.chunked = true;
    reply.chunk_size = 100000;
    return reply;
  });
  TestProxy proxy({origin.endpoint_url()});
  Client client(proxy.port());

  SECTION("8 MiB upload with Content-Length") {
    const std::string body = large_body(8 * kMiB);
    const Response r = client.exchange(make_request("POST", "/echo", body));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    CHECK(r.body.size() == body.size());
    CHECK(r.body == body);
    const auto seen = origin.requests();
    REQUIRE(seen.size() == 1);
    CHECK(seen[0].body == body);
  }

  SECTION("2 MiB chunked upload") {
    const std::string body = large_body(2 * kMiB + 5);
    const Response r = client.exchange(chunked_request("/echo", body, 65536));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    CHECK(r.body == body);
    const auto seen = origin.requests();
    REQUIRE(seen.size() == 1);
    CHECK(seen[0].body == body);
  }

  SECTION("8 MiB download") {
    const Response r = client.exchange(make_request("GET", fmt::format("/large?size={}", 8 * kMiB)));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    CHECK(r.body.size() == 8 * kMiB);
    CHECK(r.body == large_body(8 * kMiB));
  }

  SECTION("chunked responses") {
    const Response small = client.exchange(make_request("GET", "/chunked"));
    INFO(small.describe());
    REQUIRE(small.complete);
    CHECK(small.body == "Hello World");

    const Response big = client.exchange(make_request("GET", "/big-chunked"));
    INFO(big.describe());
    REQUIRE(big.complete);
    CHECK(big.body == large_body(3 * kMiB + 17));
  }
}

TEST_CASE("Expect: 100-continue is relayed before the body is sent", "[integration]") {
  Origin origin;
  TestProxy proxy({origin.endpoint_url()});
  Client client(proxy.port());

  REQUIRE(client.send("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n"));
  const Response interim = client.read_response(/*head_request=*/false, /*return_interim=*/true);
  INFO(interim.describe());
  REQUIRE(interim.complete);
  REQUIRE(interim.status == 100);

  REQUIRE(client.send("Hello World"));
  const Response r = client.read_response();
  INFO(r.describe());
  REQUIRE(r.complete);
  CHECK(r.status == 200);
  CHECK(r.body == "Hello World");
  const auto seen = origin.requests();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].body == "Hello World");
}

TEST_CASE("a graceful stop lets the request in flight finish", "[integration]") {
  Origin origin;
  TestProxy proxy({origin.endpoint_url()});

  Client idle(proxy.port());
  const Response first = idle.exchange(make_request("GET", "/"));
  REQUIRE(first.status == 200);

  Client busy(proxy.port());
  REQUIRE(busy.send(make_request("GET", "/delay/500")));
  REQUIRE(origin.wait_for_requests(2));

  std::future<void> stopped = proxy.stop();

  const Response r = busy.read_response();
  INFO(r.describe());
  REQUIRE(r.complete);
  CHECK(r.status == 200);
  CHECK(r.body == "Hello World");

  // Both client connections are closed by the proxy: the idle one at once, the busy one after
  // its response. Closing ours as well ends any lingering close on the proxy's side.
  CHECK(idle.wait_closed());
  CHECK(busy.wait_closed());
  idle.close();
  busy.close();
  CHECK(stopped.wait_for(10s) == std::future_status::ready);
  CHECK_FALSE(Client::can_connect(proxy.port()));
}

TEST_CASE("idle upstream connections to a removed backend are closed at once", "[integration]") {
  Origin origin;
  auto options = TestProxy::test_options();
  options.upstream_idle_timeout = 60s;  // the idle sweep (every 15 s) must not be what closes it
  TestProxy proxy({origin.endpoint_url()}, options);
  REQUIRE(http_get(proxy.port(), "/").status == 200);
  const auto backend = proxy.pool().find(origin.endpoint_url().substr(7));
  REQUIRE(backend);
  REQUIRE(backend->active_connections() == 1);  // the idle keep-alive connection, cached
  REQUIRE(proxy.pool().remove(backend->id()));
  const auto deadline = std::chrono::steady_clock::now() + 3s;
  while (backend->active_connections() != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);  // polling an atomic gauge: no event to wait for
  }
  CHECK(backend->active_connections() == 0);
}
