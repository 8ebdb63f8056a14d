// Hooks integration tests (weldr/hooks.hpp): a host's ProxyHooks at every phase of a request,
// end to end over 127.0.0.1 with an in-process origin and the Proxy on its own thread.
//
// Hooks run on the proxy's thread: they only record what they see (under a mutex) and the
// test thread checks it once the request is over. Catch2's assertions are never used inside
// a hook. Every wait is bounded: polls have deadlines of a few seconds and every read a timeout.

#include <weldr/balancer.hpp>
#include <weldr/hooks.hpp>
#include <weldr/pool.hpp>
#include <weldr/proxy.hpp>

#include "client.hpp"
#include "origin.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

using namespace weldr::test;
using namespace std::chrono_literals;
using weldr::BackendChoice;
using weldr::LocalResponse;
using weldr::RequestContext;

namespace {

using steady = std::chrono::steady_clock;

/// Polls `condition` every 5 ms until it holds, for at most `timeout`.
bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout = 5s) {
  const auto deadline = steady::now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (steady::now() >= deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
}

/// A copy of a weldr::RequestLog that outlives the hook call.
struct LogRecord {
  std::string client_address;
  std::string method;
  std::string target;
  std::string host;
  std::string user_agent;
  std::string referer;
  int http_minor{1};
  int status{0};
  std::uint64_t request_body_bytes{0};
  std::uint64_t response_bytes{0};
  std::string backend;
  unsigned attempts{0};
  std::chrono::system_clock::time_point started;
  std::chrono::microseconds duration{0};
  std::chrono::microseconds upstream_time{0};
  std::string error;
};

/// What one call of on_error saw.
struct ErrorRecord {
  int status{0};
  bool has_context{false};
  std::string path;  // context->path() when there was a context
};

/// Hooks whose behaviour each test scripts with std::function members (set before the proxy
/// starts, never changed afterwards), and which record every call.
class TestHooks : public weldr::ProxyHooks {
 public:
  std::function<std::optional<LocalResponse>(RequestContext&)> request;
  std::function<BackendChoice(RequestContext&)> select;
  std::function<void(RequestContext&, const weldr::Backend&)> upstream;
  std::function<void(RequestContext&)> response;
  std::function<void(RequestContext*, LocalResponse&)> error;
  bool throw_in_log{false};

  std::optional<LocalResponse> on_request(RequestContext& context) override {
    note(fmt::format("request {} {} {} {}", context.method(), context.target(), context.client_address(),
                     context.http_minor()));
    return request ? request(context) : std::nullopt;
  }
  BackendChoice select_backend(RequestContext& context) override {
    note(fmt::format("select {} {}", context.attempt(), context.path()));
    return select ? select(context) : BackendChoice{};
  }
  void on_upstream_request(RequestContext& context, const weldr::Backend& backend) override {
    note(fmt::format("upstream {} {}", context.attempt(), backend.id()));
    if (upstream) upstream(context, backend);
  }
  void on_response(RequestContext& context) override {
    note(fmt::format("response {}", context.response_status()));
    if (response) response(context);
  }
  void on_error(RequestContext* context, LocalResponse& page) override {
    {
      const std::lock_guard lock(mutex_);
      errors_.push_back({page.status, context != nullptr, context != nullptr ? std::string(context->path()) : ""});
    }
    if (error) error(context, page);
  }
  void on_log(const weldr::RequestLog& log) override {
    LogRecord r{std::string(log.client_address),
                std::string(log.method),
                std::string(log.target),
                std::string(log.host),
                std::string(log.user_agent),
                std::string(log.referer),
                log.http_minor,
                log.status,
                log.request_body_bytes,
                log.response_bytes,
                std::string(log.backend),
                log.attempts,
                log.started,
                log.duration,
                log.upstream_time,
                std::string(log.error)};
    {
      const std::lock_guard lock(mutex_);
      logs_.push_back(std::move(r));
    }
    if (throw_in_log) throw std::runtime_error("on_log hook failure (on purpose)");
  }

  /// Records a line (callable from the scripted functions).
  void note(std::string line) {
    const std::lock_guard lock(mutex_);
    events_.push_back(std::move(line));
  }
  [[nodiscard]] std::vector<std::string> events() const {
    const std::lock_guard lock(mutex_);
    return events_;
  }
  /// The recorded lines that start with `prefix`.
  [[nodiscard]] std::vector<std::string> events(std::string_view prefix) const {
    const std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    for (const auto& e : events_)
      if (std::string_view(e).starts_with(prefix)) out.push_back(e);
    return out;
  }
  [[nodiscard]] std::vector<LogRecord> logs() const {
    const std::lock_guard lock(mutex_);
    return logs_;
  }
  [[nodiscard]] std::size_t log_count() const {
    const std::lock_guard lock(mutex_);
    return logs_.size();
  }
  [[nodiscard]] std::vector<ErrorRecord> errors() const {
    const std::lock_guard lock(mutex_);
    return errors_;
  }
  /// Waits until on_log was called at least `n` times.
  bool wait_logs(std::size_t n, std::chrono::milliseconds timeout = 5s) const {
    return eventually([&] { return log_count() >= n; }, timeout);
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::string> events_;
  std::vector<LogRecord> logs_;
  std::vector<ErrorRecord> errors_;
};

weldr::ProxyOptions options_with(std::shared_ptr<weldr::ProxyHooks> hooks, unsigned retries = 1) {
  weldr::ProxyOptions o = TestProxy::test_options();
  o.retries = retries;
  o.hooks = std::move(hooks);
  return o;
}

/// Stops the proxy (every session ends, so no hook runs afterwards); true when it did in time.
bool stop_proxy(TestProxy& proxy) {
  return proxy.stop(1000ms).wait_for(5s) == std::future_status::ready;
}

/// What raw_exchange received.
struct RawReply {
  std::string bytes;  ///< every byte received until EOF
  bool eof{false};    ///< the proxy closed the connection (within the timeout)
};

/// Opens a connection, sends `request`, and reads every byte until the proxy closes, for at
/// most `timeout`: the exact byte count a client received.
RawReply raw_exchange(std::uint16_t port, std::string_view request, std::chrono::milliseconds timeout = 5s) {
  RawReply out;
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("socket failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, static_cast<const sockaddr*>(static_cast<const void*>(&addr)), sizeof addr) != 0) {
    ::close(fd);
    throw std::runtime_error("connect failed");
  }
  std::size_t sent = 0;
  while (sent < request.size()) {
    const auto n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<std::size_t>(n);
  }
  const auto deadline = steady::now() + timeout;
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(left));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) break;
    const auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      out.eof = true;
      break;
    }
    out.bytes.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

/// Parses `bytes` as exactly one response; nothing when they are not one complete response.
std::optional<Message> parse_one_response(std::string_view bytes, bool head_request = false) {
  MessageParser parser(MessageParser::Kind::response);
  parser.expect_no_body(head_request);
  auto r = parser.feed(bytes);
  if (r.event == MessageParser::Event::need_more) r = parser.finish();
  if (r.event != MessageParser::Event::message_complete || r.consumed != bytes.size()) return std::nullopt;
  return parser.message();
}

/// Strips `prefix` from the front of `text`, if it is there.
std::string without_prefix(std::string_view text, std::string_view prefix) {
  if (text.starts_with(prefix)) text.remove_prefix(prefix.size());
  return std::string(text);
}

}  // namespace

// -------------------------------------------------------------------------------------------
// 1. on_request answering directly

TEST_CASE("on_request answers requests itself: the origin never sees them", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  hooks->request = [](RequestContext& c) -> std::optional<LocalResponse> {
    if (c.path() == "/forbidden") {
      return LocalResponse{403, "no entry\n", {{"Content-Type", "text/plain"}, {"X-Blocked-By", "hooks"}}};
    }
    if (c.path() == "/old") return LocalResponse{301, "", {{"Location", "/new"}}};
    return std::nullopt;
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  Client client(proxy.port());

  const Response forbidden = client.exchange(make_request("GET", "/forbidden?x=1"));
  INFO(forbidden.describe());
  REQUIRE(forbidden.complete);
  CHECK(forbidden.status == 403);
  CHECK(forbidden.body == "no entry\n");
  CHECK(forbidden.header("X-Blocked-By") == "hooks");
  CHECK(forbidden.header("Content-Type") == "text/plain");
  CHECK(forbidden.header("Content-Length") == "9");
  CHECK_FALSE(header_has_token(forbidden.headers, "Connection", "close"));

  // Keep-alive goes on after a local answer.
  const Response proxied = client.exchange(make_request("GET", "/"));
  INFO(proxied.describe());
  REQUIRE(proxied.complete);
  CHECK(proxied.status == 200);
  CHECK(proxied.body == "Hello World");

  const Response redirect = client.exchange(make_request("GET", "/old"));
  INFO(redirect.describe());
  REQUIRE(redirect.complete);
  CHECK(redirect.status == 301);
  CHECK(redirect.header("Location") == "/new");
  CHECK(redirect.header("Content-Length") == "0");
  CHECK(redirect.body.empty());

  // HEAD: the head (with the length of the body it would have), no body; the connection stays framed.
  const Response head = client.exchange(make_request("HEAD", "/forbidden"), /*head_request=*/true);
  INFO(head.describe());
  REQUIRE(head.complete);
  CHECK(head.status == 403);
  CHECK(head.header("Content-Length") == "9");
  CHECK(head.header("X-Blocked-By") == "hooks");
  CHECK(head.body.empty());

  const Response after = client.exchange(make_request("GET", "/"));
  INFO(after.describe());
  REQUIRE(after.complete);
  CHECK(after.status == 200);
  CHECK(after.body == "Hello World");

  const auto seen = origin.requests();
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].target == "/");
  CHECK(seen[1].target == "/");
  CHECK(seen[1].connection == seen[0].connection);  // one upstream connection, kept alive

  // on_request saw method, target, the client's address and the version of every request.
  const auto requests = hooks->events("request ");
  REQUIRE(requests.size() == 5);
  CHECK(requests[0] == "request GET /forbidden?x=1 127.0.0.1 1");
  CHECK(requests[3] == "request HEAD /forbidden 127.0.0.1 1");
  // select_backend only runs for the requests that were forwarded.
  CHECK(hooks->events("select ").size() == 2);
}

TEST_CASE("local answers and forwarded requests pipelined on one connection stay in order", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  hooks->request = [](RequestContext& c) -> std::optional<LocalResponse> {
    if (c.path() == "/forbidden") return LocalResponse{403, "no entry\n", {}};
    return std::nullopt;
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  Client client(proxy.port());
  REQUIRE(client.send(make_request("GET", "/forbidden") + make_request("POST", "/echo", "first") +
                      make_request("POST", "/forbidden", "skipped body") + make_request("GET", "/")));
  const std::vector<std::pair<int, std::string>> expected{
      {403, "no entry\n"}, {200, "first"}, {403, "no entry\n"}, {200, "Hello World"}};
  for (const auto& [status, body] : expected) {
    const Response r = client.read_response();
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == status);
    CHECK(r.body == body);
  }
  const auto seen = origin.requests();
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].target == "/echo");
  CHECK(seen[0].body == "first");
  CHECK(seen[1].target == "/");
}

TEST_CASE("on_request sees the request head as received", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  hooks->request = [h = hooks.get()](RequestContext& c) -> std::optional<LocalResponse> {
    std::string all;
    for (const auto& [name, value] : c.headers())
      all += fmt::format("{}={};", name, value);
    h->note(fmt::format("head path={} x-one={} missing={} all={}", c.path(), c.header("x-ONE").value_or("-"),
                        c.header("X-Missing").has_value(), all));
    return std::nullopt;
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  Client client(proxy.port());
  const Response r = client.exchange("GET /a/b?c=d HTTP/1.0\r\nHost: 127.0.0.1\r\nX-One: 1\r\nX-Two: 2\r\n\r\n");
  INFO(r.describe());
  REQUIRE(r.complete);
  CHECK(r.status == 404);  // the origin's answer for /a/b
  REQUIRE(origin.wait_for_requests(1, 2s));
  CHECK(origin.requests().at(0).target == "/a/b?c=d");
  CHECK(hooks->events("request ") == std::vector<std::string>{"request GET /a/b?c=d 127.0.0.1 0"});
  CHECK(hooks->events("head ") ==
        std::vector<std::string>{"head path=/a/b x-one=1 missing=false all=Host=127.0.0.1;X-One=1;X-Two=2;"});
}

TEST_CASE("a local answer to a request whose body was not read closes the connection", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  hooks->request = [](RequestContext& c) -> std::optional<LocalResponse> {
    if (c.path() == "/upload") return LocalResponse{403, "uploads are closed\n", {}};
    return std::nullopt;
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));

  SECTION("body sent after the head") {
    Client client(proxy.port());
    // The body looks like a request: were it read as one, the origin would see /smuggled.
    const std::string body = "GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    REQUIRE(client.send(
        fmt::format("POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n", body.size())));
    const Response r = client.read_response();
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 403);
    CHECK(r.body == "uploads are closed\n");
    CHECK(header_has_token(r.headers, "Connection", "close"));
    client.send(body);  // may fail: the proxy is closing
    CHECK(client.wait_closed());
  }

  SECTION("Expect: 100-continue") {
    Client client(proxy.port());
    REQUIRE(
        client.send("POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
    const Response r = client.read_response(false, /*return_interim=*/true);
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 403);  // the final answer, no 100 Continue first
    CHECK(header_has_token(r.headers, "Connection", "close"));
    CHECK(client.wait_closed());
  }

  SECTION("the whole body came with the head: keep-alive goes on") {
    Client client(proxy.port());
    const Response r = client.exchange(make_request("POST", "/upload", "GET /smuggled HTTP/1.1\r\n\r\n"));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 403);
    CHECK_FALSE(header_has_token(r.headers, "Connection", "close"));
    const Response next = client.exchange(make_request("GET", "/"));
    INFO(next.describe());
    REQUIRE(next.complete);
    CHECK(next.status == 200);
    REQUIRE(origin.wait_for_requests(1, 2s));
  }

  {
    // The proxy still serves new connections.
    const Response r = http_get(proxy.port(), "/");
    INFO(r.describe());
    CHECK(r.status == 200);
  }
  for (const auto& seen : origin.requests()) {
    CHECK(seen.target == "/");
    CHECK(seen.method == "GET");
  }
}

// -------------------------------------------------------------------------------------------
// 2. Rewriting the upstream request

TEST_CASE("on_request rewrites the head the origin receives", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  hooks->request = [](RequestContext& c) -> std::optional<LocalResponse> {
    c.upstream_headers().set("X-Set", "new");
    c.upstream_headers().add("X-Multi", "two");
    c.upstream_headers().add("X-Added", "yes");
    c.upstream_headers().remove("x-secret");  // case-insensitive
    c.upstream_headers().set("Host", "backend.internal");
    if (c.path().starts_with("/api/")) c.set_upstream_target(without_prefix(c.target(), "/api"));
    c.response_headers().add("X-From-On-Request", "1");
    return std::nullopt;
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  Client client(proxy.port());

  const Response r = client.exchange(make_request(
      "GET", "/api/users?id=1", {}, "X-Set: old\r\nX-Set: older\r\nX-Multi: one\r\nX-Secret: s3cr3t\r\nX-Keep: k\r\n"));
  INFO(r.describe());
  REQUIRE(r.complete);
  CHECK(r.status == 404);  // the origin's answer for /users
  CHECK(r.header("X-From-On-Request") == "1");

  const Response plain = client.exchange(make_request("GET", "/"));
  INFO(plain.describe());
  REQUIRE(plain.complete);
  CHECK(plain.status == 200);

  const auto seen = origin.requests();
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].target == "/users?id=1");
  CHECK(header_values(seen[0].headers, "X-Set") == std::vector<std::string>{"new"});
  CHECK(header_values(seen[0].headers, "X-Multi") == std::vector<std::string>{"one", "two"});
  CHECK(seen[0].header("X-Added") == "yes");
  CHECK_FALSE(seen[0].has("X-Secret"));
  CHECK(seen[0].header("X-Keep") == "k");
  CHECK(header_values(seen[0].headers, "Host") == std::vector<std::string>{"backend.internal"});
  CHECK(seen[0].header("X-Forwarded-For") == "127.0.0.1");
  CHECK(seen[1].target == "/");  // the next request starts with no changes of the previous one

  REQUIRE(hooks->wait_logs(2));
  CHECK(hooks->logs()[0].target == "/api/users?id=1");  // the log has the target as received
}

TEST_CASE("a hook can replace Host but not remove it", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  hooks->request = [](RequestContext& c) -> std::optional<LocalResponse> {
    c.upstream_headers().remove("Host");  // HTTP/1.1 requires one: ignored
    return std::nullopt;
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  const Response r = Client(proxy.port()).exchange(make_request("GET", "/"));
  INFO(r.describe());
  REQUIRE(r.complete);
  CHECK(r.status == 200);
  const auto seen = origin.requests();
  REQUIRE(seen.size() == 1);
  CHECK(header_values(seen[0].headers, "Host").size() == 1);
}

TEST_CASE("an upstream target that is not origin-form gets 500 and never reaches the origin", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  hooks->request = [](RequestContext& c) -> std::optional<LocalResponse> {
    if (c.path() == "/split") c.set_upstream_target("/a HTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled");
    if (c.path() == "/space") c.set_upstream_target("/a b");
    if (c.path() == "/relative") c.set_upstream_target("a");
    if (c.path() == "/fine") c.set_upstream_target("/status/201?x=%20");
    return std::nullopt;
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  Client client(proxy.port());
  for (const char* path : {"/split", "/space", "/relative"}) {
    INFO(path);
    const Response r = Client(proxy.port()).exchange(make_request("GET", path));
    REQUIRE(r.complete);
    CHECK(r.status == 500);
  }
  const Response fine = client.exchange(make_request("GET", "/fine"));
  CHECK(fine.status == 201);
  const auto seen = origin.requests();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].target == "/status/201?x=%20");
}

TEST_CASE("hooks cannot change the framing of the request sent upstream", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  hooks->request = [](RequestContext& c) -> std::optional<LocalResponse> {
    c.upstream_headers().remove("Content-Length");
    c.upstream_headers().remove("Transfer-Encoding");
    c.upstream_headers().add("Transfer-Encoding", "chunked");
    c.upstream_headers().add("Content-Length", "3");
    c.upstream_headers().set("Connection", "close");
    c.upstream_headers().add("X-Marker", "m");
    return std::nullopt;
  };
  hooks->upstream = [](RequestContext& c, const weldr::Backend&) {
    c.upstream_headers().remove("content-length");
    c.upstream_headers().add("TE", "trailers");
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  Client client(proxy.port());

  SECTION("Content-Length body, all in one piece") {
    const Response r = client.exchange(make_request("POST", "/echo", "Hello World"));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    CHECK(r.body == "Hello World");
  }

  SECTION("Content-Length body sent after the head") {
    REQUIRE(client.send("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 11\r\n\r\n"));
    std::this_thread::sleep_for(50ms);
    REQUIRE(client.send("Hello World"));
    const Response r = client.read_response();
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    CHECK(r.body == "Hello World");
  }

  SECTION("chunked body") {
    const Response r = client.exchange(
        "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nHello\r\n6\r\n "
        "World\r\n0\r\n\r\n");
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    CHECK(r.body == "Hello World");
  }

  // The connection is still in step: the next request works.
  const Response next = client.exchange(make_request("GET", "/"));
  INFO(next.describe());
  REQUIRE(next.complete);
  CHECK(next.status == 200);
  CHECK(next.body == "Hello World");

  const auto seen = origin.requests();
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].body == "Hello World");
  CHECK(seen[0].header("X-Marker") == "m");
  CHECK_FALSE(seen[0].has("TE"));
  CHECK_FALSE(header_has_token(seen[0].headers, "Connection", "close"));
  if (seen[0].chunked) {
    CHECK_FALSE(seen[0].has("Content-Length"));
    CHECK(header_values(seen[0].headers, "Transfer-Encoding") == std::vector<std::string>{"chunked"});
  } else {
    CHECK(header_values(seen[0].headers, "Content-Length") == std::vector<std::string>{"11"});
    CHECK_FALSE(seen[0].has("Transfer-Encoding"));
  }
  CHECK(seen[1].connection == seen[0].connection);  // Connection: close from the hook was ignored
}

TEST_CASE("header edits with CR or LF are refused, not injected", "[integration][hooks]") {
  Origin origin([](const RecordedRequest& request) {
    Reply reply = Origin::default_reply(request);
    reply.headers.emplace_back("X-Origin", "o");
    return reply;
  });
  auto hooks = std::make_shared<TestHooks>();
  hooks->request = [](RequestContext& c) -> std::optional<LocalResponse> {
    c.upstream_headers().add("X-Inject", "a\r\nX-Evil: 1");
    c.upstream_headers().add("X-Lf", "a\nX-Evil-Lf: 1");
    c.upstream_headers().add("X-Smuggle", "a\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    c.upstream_headers().add("X-Bad-Name\r\nX-Evil-Name", "v");
    c.upstream_headers().add("X-Ok", "fine");
    c.response_headers().add("X-Resp-Inject", "b\r\nSet-Cookie: evil=1");
    if (c.path() == "/local") {
      return LocalResponse{200, "local\n", {{"X-Local", "v\r\nX-Evil-Local: 1"}, {"X-Local-Ok", "ok"}}};
    }
    return std::nullopt;
  };
  hooks->response = [](RequestContext& c) { c.response_headers().add("X-Resp-Lf", "b\nX-Evil-Resp: 1"); };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  Client client(proxy.port());

  const Response r = client.exchange(make_request("GET", "/"));
  INFO(r.describe());
  REQUIRE(r.complete);
  CHECK(r.status == 200);
  CHECK(r.body == "Hello World");
  CHECK(r.header("X-Origin") == "o");
  CHECK_FALSE(r.has("Set-Cookie"));
  CHECK_FALSE(r.has("X-Resp-Inject"));
  CHECK_FALSE(r.has("X-Evil-Resp"));

  const Response local = client.exchange(make_request("GET", "/local"));
  INFO(local.describe());
  REQUIRE(local.complete);
  CHECK(local.status == 200);
  CHECK(local.body == "local\n");
  CHECK(local.header("X-Local-Ok") == "ok");
  CHECK_FALSE(local.has("X-Evil-Local"));
  CHECK_FALSE(local.has("X-Local"));

  // Nothing else arrives at the origin (no smuggled request), even a little later.
  std::this_thread::sleep_for(100ms);
  const auto seen = origin.requests();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].target == "/");
  CHECK(seen[0].header("X-Ok") == "fine");
  for (const char* name : {"X-Inject", "X-Evil", "X-Lf", "X-Evil-Lf", "X-Smuggle", "X-Bad-Name", "X-Evil-Name"}) {
    INFO(name);
    CHECK_FALSE(seen[0].has(name));
  }
}

// -------------------------------------------------------------------------------------------
// 3. select_backend

namespace {

/// Hooks that own two pools of their own and route by path prefix.
class RoutingHooks : public TestHooks {
 public:
  RoutingHooks() {
    select = [this](RequestContext& c) -> BackendChoice {
      if (c.path().starts_with("/api/")) return {&api, nullptr};
      if (c.path().starts_with("/static/")) return {&statics, nullptr};
      return {};
    };
  }
  weldr::Pool api;
  weldr::Pool statics;
};

}  // namespace

TEST_CASE("select_backend routes by path to pools of the host", "[integration][hooks]") {
  Origin api_origin;
  Origin static_origin;
  Origin default_origin;
  auto hooks = std::make_shared<RoutingHooks>();
  REQUIRE(hooks->api.add(api_origin.endpoint_url()));
  REQUIRE(hooks->statics.add(static_origin.endpoint_url()));
  TestProxy proxy({default_origin.endpoint_url()}, options_with(hooks));
  Client client(proxy.port());

  const std::vector<std::pair<std::string, const Origin*>> routes{
      {"/api/users", &api_origin},  {"/static/app.js", &static_origin}, {"/", &default_origin},
      {"/api/orders", &api_origin}, {"/static/", &static_origin},       {"/other", &default_origin},
      {"/apix", &default_origin},
  };
  for (const auto& [target, expected] : routes) {
    const Response r = client.exchange(make_request("GET", target));
    INFO(target << ": " << r.describe());
    REQUIRE(r.complete);
  }
  REQUIRE(hooks->wait_logs(routes.size()));
  const auto logs = hooks->logs();
  REQUIRE(logs.size() == routes.size());
  for (std::size_t i = 0; i < routes.size(); ++i) {
    INFO(routes[i].first);
    CHECK(logs[i].target == routes[i].first);
    CHECK(logs[i].backend == routes[i].second->id());
  }
  CHECK(api_origin.request_count() == 2);
  CHECK(static_origin.request_count() == 2);
  CHECK(default_origin.request_count() == 3);
  // The counts went to the backends of the host's pools.
  CHECK(hooks->api.find(api_origin.id())->requests() == 2);
  CHECK(hooks->statics.find(static_origin.id())->requests() == 2);
  CHECK(proxy.pool().find(default_origin.id())->requests() == 3);
  CHECK(hooks->api.find(api_origin.id())->active_requests() == 0);
  CHECK(hooks->statics.find(static_origin.id())->active_requests() == 0);
}

TEST_CASE("select_backend can choose a specific backend", "[integration][hooks]") {
  Origin a;
  Origin b;
  Origin fallback;
  struct Hooks : TestHooks {
    weldr::Pool own;
  };
  auto hooks = std::make_shared<Hooks>();
  REQUIRE(hooks->own.add(a.endpoint_url()));
  REQUIRE(hooks->own.add(b.endpoint_url()));
  const std::string a_id = a.id();
  const std::string b_id = b.id();
  hooks->select = [h = hooks.get(), a_id, b_id](RequestContext& c) -> BackendChoice {
    const auto route = c.header("X-Route");
    if (!route) return {};
    return {&h->own, h->own.find(*route == "a" ? a_id : b_id)};
  };
  TestProxy proxy({fallback.endpoint_url()}, options_with(hooks));
  Client client(proxy.port());

  for (int i = 0; i < 4; ++i) {
    const Response r = client.exchange(make_request("GET", "/", {}, "X-Route: b\r\n"));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
  }
  const Response ra = client.exchange(make_request("GET", "/", {}, "X-Route: a\r\n"));
  INFO(ra.describe());
  REQUIRE(ra.complete);
  const Response rd = client.exchange(make_request("GET", "/"));  // no choice: the proxy's pool
  INFO(rd.describe());
  REQUIRE(rd.complete);

  CHECK(b.request_count() == 4);
  CHECK(a.request_count() == 1);
  CHECK(fallback.request_count() == 1);
  const auto upstream = hooks->events("upstream ");
  REQUIRE(upstream.size() == 6);
  for (int i = 0; i < 4; ++i)
    CHECK(upstream[static_cast<std::size_t>(i)] == "upstream 0 " + b_id);
  CHECK(upstream[4] == "upstream 0 " + a_id);
  CHECK(upstream[5] == "upstream 0 " + fallback.id());
}

TEST_CASE("context.attempt() counts the retries select_backend is asked for", "[integration][hooks]") {
  const RefusingPort dead;
  Origin live;
  struct Hooks : TestHooks {
    weldr::Pool own;
  };
  auto hooks = std::make_shared<Hooks>();
  REQUIRE(hooks->own.add(dead.url()));
  REQUIRE(hooks->own.add(live.endpoint_url()));
  const std::string dead_id = dead.id();
  const std::string live_id = live.id();
  hooks->select = [h = hooks.get(), dead_id, live_id](RequestContext& c) -> BackendChoice {
    return {&h->own, h->own.find(c.attempt() == 0 ? dead_id : live_id)};
  };
  TestProxy proxy({}, options_with(hooks, /*retries=*/1));

  const Response r = http_get(proxy.port(), "/retry-me");
  INFO(r.describe());
  REQUIRE(r.complete);
  CHECK(r.status == 404);
  CHECK(live.request_count() == 1);

  REQUIRE(hooks->wait_logs(1));
  CHECK(hooks->events("select ") == std::vector<std::string>{"select 0 /retry-me", "select 1 /retry-me"});
  // on_upstream_request runs for the first attempt only.
  CHECK(hooks->events("upstream ") == std::vector<std::string>{"upstream 0 " + dead_id});
  const auto log = hooks->logs().at(0);
  CHECK(log.attempts == 2);
  CHECK(log.backend == live_id);
  CHECK(log.status == 404);
  CHECK(hooks->own.find(dead_id)->failures() == 1);
  CHECK(hooks->own.find(live_id)->successes() == 1);
  CHECK(proxy.counters().retries == 1);
}

TEST_CASE("a backend of a host's pool drains and leaves that pool", "[integration][hooks]") {
  Origin origin;
  struct Hooks : TestHooks {
    weldr::Pool pool2;
  };
  auto hooks = std::make_shared<Hooks>();
  REQUIRE(hooks->pool2.add(origin.endpoint_url()));
  hooks->select = [h = hooks.get()](RequestContext&) -> BackendChoice { return {&h->pool2, nullptr}; };
  Origin other;
  TestProxy proxy({other.endpoint_url()}, options_with(hooks));
  const std::string id = origin.id();

  SECTION("removed while a request is in flight: it leaves when that request ends") {
    auto pending = std::async(std::launch::async, [&] { return http_get(proxy.port(), "/delay/300"); });
    REQUIRE(origin.wait_for_requests(1, 3s));
    REQUIRE(hooks->pool2.find(id)->active_requests() == 1);
    REQUIRE(hooks->pool2.remove(id));
    const auto draining = hooks->pool2.find(id);
    REQUIRE(draining != nullptr);
    CHECK(draining->state() == weldr::BackendState::draining);

    REQUIRE(pending.wait_for(5s) == std::future_status::ready);
    const Response r = pending.get();
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    CHECK(eventually([&] { return hooks->pool2.find(id) == nullptr; }, 3s));
    CHECK(draining->active_requests() == 0);
    CHECK(draining->requests() == 1);
  }

  SECTION("removed with nothing in flight: it leaves at once") {
    const Response r = http_get(proxy.port(), "/");
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 200);
    REQUIRE(hooks->wait_logs(1));
    const auto backend = hooks->pool2.find(id);
    REQUIRE(backend != nullptr);
    CHECK(backend->active_requests() == 0);
    REQUIRE(hooks->pool2.remove(id));
    CHECK(hooks->pool2.find(id) == nullptr);
  }

  // The proxy's own pool was never used, and with pool2 empty the answer is 503.
  const Response empty = http_get(proxy.port(), "/");
  INFO(empty.describe());
  REQUIRE(empty.complete);
  CHECK(empty.status == 503);
  CHECK(other.request_count() == 0);
}

// -------------------------------------------------------------------------------------------
// 4. on_upstream_request and on_response

TEST_CASE("on_upstream_request sees the backend; on_response edits what the client gets", "[integration][hooks]") {
  Origin origin([](const RecordedRequest& request) {
    if (request.path() == "/created") {
      return Reply{.status = 201,
                   .headers = {{"X-Origin-Secret", "s"}, {"X-Keep", "k"}, {"Cache-Control", "no-store"}},
                   .body = "made it"};
    }
    return Origin::default_reply(request);
  });
  auto hooks = std::make_shared<TestHooks>();
  hooks->upstream = [](RequestContext& c, const weldr::Backend& backend) {
    c.upstream_headers().add("X-Upstream-Hook", backend.id());
  };
  hooks->response = [](RequestContext& c) {
    c.response_headers().add("X-Served-By", "weldr-hooks");
    c.response_headers().add("X-Status-Seen", std::to_string(c.response_status()));
    c.response_headers().remove("X-Origin-Secret");
    c.response_headers().set("Cache-Control", "private");
    // Framing and connection management are out of reach.
    c.response_headers().remove("Content-Length");
    c.response_headers().remove("Transfer-Encoding");
    c.response_headers().add("Content-Length", "999");
    c.response_headers().add("Transfer-Encoding", "chunked");
    c.response_headers().set("Connection", "close");
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  Client client(proxy.port());

  const Response created = client.exchange(make_request("POST", "/created", "data"));
  INFO(created.describe());
  REQUIRE(created.complete);
  CHECK(created.status == 201);
  CHECK(created.body == "made it");
  CHECK(created.header("X-Served-By") == "weldr-hooks");
  CHECK(created.header("X-Status-Seen") == "201");
  CHECK_FALSE(created.has("X-Origin-Secret"));
  CHECK(created.header("X-Keep") == "k");
  CHECK(header_values(created.headers, "Cache-Control") == std::vector<std::string>{"private"});
  CHECK(header_values(created.headers, "Content-Length") == std::vector<std::string>{"7"});
  CHECK_FALSE(created.has("Transfer-Encoding"));
  CHECK_FALSE(header_has_token(created.headers, "Connection", "close"));

  const Response chunked = client.exchange(make_request("GET", "/chunked"));
  INFO(chunked.describe());
  REQUIRE(chunked.complete);
  CHECK(chunked.status == 200);
  CHECK(chunked.chunked);
  CHECK(chunked.body == "Hello World");
  CHECK_FALSE(chunked.has("Content-Length"));
  CHECK(chunked.header("X-Status-Seen") == "200");

  const Response missing = client.exchange(make_request("GET", "/nothing-here"));
  INFO(missing.describe());
  REQUIRE(missing.complete);
  CHECK(missing.status == 404);
  CHECK(missing.header("X-Status-Seen") == "404");

  const auto seen = origin.requests();
  REQUIRE(seen.size() == 3);
  for (const auto& s : seen)
    CHECK(s.header("X-Upstream-Hook") == origin.id());
  CHECK(seen[2].connection == seen[0].connection);
  CHECK(hooks->events("upstream ") == std::vector<std::string>(3, "upstream 0 " + origin.id()));
  CHECK(hooks->events("response ") == std::vector<std::string>{"response 201", "response 200", "response 404"});
}

// -------------------------------------------------------------------------------------------
// 5. on_error

TEST_CASE("on_error gives weldr's error pages the host's body and type", "[integration][hooks]") {
  auto hooks = std::make_shared<TestHooks>();
  hooks->error = [](RequestContext*, LocalResponse& page) {
    const int status = page.status;
    page.body = fmt::format("<h1>custom {}</h1>\n", status);
    bool replaced = false;
    for (auto& field : page.headers) {
      if (weldr::test::iequals(field.name, "Content-Type")) {
        field.value = "text/html";
        replaced = true;
      }
    }
    if (!replaced) page.headers.push_back({"Content-Type", "text/html"});
    page.headers.push_back({"X-Error-Page", "host"});
    page.status = 200;  // ignored: the status stays
  };

  SECTION("502: the origin refuses connections") {
    const RefusingPort dead;
    TestProxy proxy({dead.url()}, options_with(hooks, 0));
    Client client(proxy.port());
    const Response r = client.exchange(make_request("GET", "/down?x=1"));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 502);
    CHECK(r.body == "<h1>custom 502</h1>\n");
    CHECK(header_values(r.headers, "Content-Type") == std::vector<std::string>{"text/html"});
    CHECK(r.header("X-Error-Page") == "host");
    CHECK(r.header("Content-Length") == std::to_string(r.body.size()));

    // HEAD: the same head, no body.
    const Response head = client.exchange(make_request("HEAD", "/down"), /*head_request=*/true);
    INFO(head.describe());
    REQUIRE(head.complete);
    CHECK(head.status == 502);
    CHECK(head.body.empty());
    CHECK(head.header("Content-Length") == std::to_string(r.body.size()));

    const auto errors = hooks->errors();
    REQUIRE(errors.size() == 2);
    CHECK(errors[0].status == 502);
    CHECK(errors[0].has_context);
    CHECK(errors[0].path == "/down");
  }

  SECTION("503: no backend in the pool") {
    TestProxy proxy({}, options_with(hooks));
    const Response r = http_get(proxy.port(), "/anything");
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 503);
    CHECK(r.body == "<h1>custom 503</h1>\n");
    CHECK(r.header("Content-Type") == "text/html");
    CHECK(r.header("X-Error-Page") == "host");
    CHECK(r.header("Retry-After") == "1");  // weldr's own fields stay unless the host drops them

    const auto errors = hooks->errors();
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].status == 503);
    CHECK(errors[0].has_context);
    CHECK(errors[0].path == "/anything");
  }

  SECTION("400 for a malformed request line: no context") {
    Origin origin;
    TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
    Client client(proxy.port());
    const Response r = client.exchange("this is not http\r\n\r\n");
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 400);
    CHECK(r.body == "<h1>custom 400</h1>\n");
    CHECK(r.header("Content-Type") == "text/html");
    CHECK(client.wait_closed());

    const auto errors = hooks->errors();
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].status == 400);
    CHECK_FALSE(errors[0].has_context);
    CHECK(origin.request_count() == 0);
    CHECK(hooks->events("request ").empty());
  }

  SECTION("400 for a request without Host: no context either") {
    Origin origin;
    TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
    Client client(proxy.port());
    const Response r = client.exchange("GET / HTTP/1.1\r\n\r\n");
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 400);
    CHECK(r.body == "<h1>custom 400</h1>\n");
    const auto errors = hooks->errors();
    REQUIRE(errors.size() == 1);
    CHECK_FALSE(errors[0].has_context);
    CHECK(origin.request_count() == 0);
  }
}

// -------------------------------------------------------------------------------------------
// 6. on_log

TEST_CASE("on_log reports every request once, with what happened", "[integration][hooks]") {
  Origin origin;
  const RefusingPort dead;
  struct Hooks : TestHooks {
    weldr::Pool dead_pool;
    weldr::Pool empty_pool;
  };
  auto hooks = std::make_shared<Hooks>();
  REQUIRE(hooks->dead_pool.add(dead.url()));
  hooks->request = [](RequestContext& c) -> std::optional<LocalResponse> {
    if (c.path() == "/local") return LocalResponse{403, "local answer\n", {{"Content-Type", "text/plain"}}};
    return std::nullopt;
  };
  hooks->select = [h = hooks.get()](RequestContext& c) -> BackendChoice {
    if (c.path() == "/dead") return {&h->dead_pool, nullptr};
    if (c.path() == "/empty") return {&h->empty_pool, nullptr};
    return {};
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks, /*retries=*/0));

  struct Sent {
    std::string name;
    std::string request;
    bool head{false};
    RawReply reply{};
    std::chrono::system_clock::time_point before{};
    std::chrono::system_clock::time_point after{};
  };
  std::vector<Sent> sent{
      {"GET",
       "GET /delay/120?q=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: hooks-test/1.0\r\n"
       "Referer: http://example.test/page\r\nConnection: close\r\n\r\n"},
      {"POST", "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 11\r\nConnection: close\r\n\r\nHello World"},
      {"HEAD", "HEAD /large?size=5000 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", true},
      {"local", "GET /local HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"},
      {"502", "GET /dead HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"},
      {"503", "GET /empty HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"},
      {"malformed", "this is not http\r\n\r\n"},
  };
  for (auto& s : sent) {
    s.before = std::chrono::system_clock::now();
    s.reply = raw_exchange(proxy.port(), s.request);
    s.after = std::chrono::system_clock::now();
    INFO(s.name << ": " << s.reply.bytes);
    CHECK(s.reply.eof);
    CHECK(parse_one_response(s.reply.bytes, s.head).has_value());
    // Requests are sent one after another, so logs arrive in order.
    const std::size_t index = static_cast<std::size_t>(&s - sent.data());
    REQUIRE(hooks->wait_logs(index + 1));
  }
  REQUIRE(stop_proxy(proxy));
  const auto logs = hooks->logs();
  REQUIRE(logs.size() == sent.size());  // exactly one call per request

  for (std::size_t i = 0; i < sent.size(); ++i) {
    const LogRecord& log = logs[i];
    INFO(sent[i].name);
    CHECK(log.client_address == "127.0.0.1");
    CHECK(log.response_bytes == sent[i].reply.bytes.size());
    CHECK(log.started >= sent[i].before - 1ms);
    CHECK(log.started <= sent[i].after);
    CHECK(log.duration.count() >= 0);
    CHECK(log.duration <= std::chrono::duration_cast<std::chrono::microseconds>(sent[i].after - sent[i].before));
    CHECK(log.upstream_time <= log.duration);
  }

  const LogRecord& get = logs[0];
  CHECK(get.method == "GET");
  CHECK(get.target == "/delay/120?q=1");
  CHECK(get.host == "127.0.0.1:8080");
  CHECK(get.user_agent == "hooks-test/1.0");
  CHECK(get.referer == "http://example.test/page");
  CHECK(get.http_minor == 1);
  CHECK(get.status == 200);
  CHECK(get.backend == origin.id());
  CHECK(get.attempts == 1);
  CHECK(get.request_body_bytes == 0);
  CHECK(get.error.empty());
  CHECK(get.duration >= 120ms);
  CHECK(get.upstream_time >= 120ms);

  const LogRecord& post = logs[1];
  CHECK(post.method == "POST");
  CHECK(post.target == "/echo");
  CHECK(post.status == 200);
  CHECK(post.request_body_bytes == 11);
  CHECK(post.user_agent.empty());
  CHECK(post.referer.empty());
  CHECK(post.backend == origin.id());

  const LogRecord& head = logs[2];
  CHECK(head.method == "HEAD");
  CHECK(head.http_minor == 0);
  CHECK(head.status == 200);
  CHECK(head.response_bytes < 5000);  // the head only

  const LogRecord& local = logs[3];
  CHECK(local.method == "GET");
  CHECK(local.target == "/local");
  CHECK(local.status == 403);
  CHECK(local.backend.empty());
  CHECK(local.attempts == 0);
  CHECK(local.upstream_time.count() == 0);

  const LogRecord& bad_gateway = logs[4];
  CHECK(bad_gateway.status == 502);
  CHECK_FALSE(bad_gateway.error.empty());
  CHECK(bad_gateway.backend == dead.id());
  CHECK(bad_gateway.attempts == 1);

  const LogRecord& unavailable = logs[5];
  CHECK(unavailable.status == 503);
  CHECK_FALSE(unavailable.error.empty());
  CHECK(unavailable.backend.empty());
  CHECK(unavailable.attempts == 0);

  const LogRecord& malformed = logs[6];
  CHECK(malformed.method.empty());
  CHECK(malformed.target.empty());
  CHECK(malformed.host.empty());
  CHECK(malformed.status == 400);
  CHECK_FALSE(malformed.error.empty());
  CHECK(malformed.backend.empty());
  CHECK(malformed.attempts == 0);
}

TEST_CASE("on_log on a keep-alive connection: one call per request, bytes add up", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  // Three pipelined requests, the last one closing: every byte received belongs to one of them.
  const std::string requests = make_request("GET", "/") + make_request("GET", "/large?size=20000") +
                               make_request("POST", "/echo", "abc", "Connection: close\r\n");
  const RawReply reply = raw_exchange(proxy.port(), requests);
  CHECK(reply.eof);
  REQUIRE(hooks->wait_logs(3));
  REQUIRE(stop_proxy(proxy));
  const auto logs = hooks->logs();
  REQUIRE(logs.size() == 3);
  std::uint64_t total = 0;
  for (const auto& log : logs) {
    CHECK(log.status == 200);
    CHECK(log.attempts == 1);
    total += log.response_bytes;
  }
  CHECK(total == reply.bytes.size());
  CHECK(logs[0].target == "/");
  CHECK(logs[1].target == "/large?size=20000");
  CHECK(logs[1].response_bytes > 20000);
  CHECK(logs[2].method == "POST");
  CHECK(logs[2].request_body_bytes == 3);
}

// When the request body arrives after the head, the body reuses the session's input buffer:
// on_log and on_response's context must still see the head (a copy of it), not body bytes.
TEST_CASE("on_log and on_response see the request head when the body came later", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  hooks->response = [h = hooks.get()](RequestContext& c) {
    h->note(fmt::format("seen {} {} {}", c.method(), c.target(), c.header("X-Tag").value_or("-")));
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  Client client(proxy.port());
  REQUIRE(client.send("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tag: t\r\nContent-Length: 40\r\n\r\n"));
  std::this_thread::sleep_for(50ms);
  REQUIRE(client.send("0123456789012345678901234567890123456789"));
  const Response r = client.read_response();
  INFO(r.describe());
  REQUIRE(r.complete);
  CHECK(r.status == 200);
  CHECK(r.body == "0123456789012345678901234567890123456789");
  REQUIRE(hooks->wait_logs(1));
  const auto log = hooks->logs().at(0);
  CHECK(log.request_body_bytes == 40);
  CHECK(log.method == "POST");
  CHECK(log.target == "/echo");
  CHECK(log.host == "127.0.0.1");
  CHECK(hooks->events("seen ") == std::vector<std::string>{"seen POST /echo t"});
}

// A local answer with a status outside 200..599 goes out as 500: the log and counters say so.
TEST_CASE("a local answer with an invalid status is logged as the 500 it was sent as", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  hooks->request = [](RequestContext&) -> std::optional<LocalResponse> { return LocalResponse{42, "odd\n", {}}; };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  const Response r = http_get(proxy.port(), "/");
  INFO(r.describe());
  REQUIRE(r.complete);
  CHECK(r.status == 500);
  REQUIRE(hooks->wait_logs(1));
  CHECK(hooks->logs().at(0).status == 500);
  CHECK(proxy.counters().responses_error == 1);
}

// -------------------------------------------------------------------------------------------
// 7. Exceptions from hooks

TEST_CASE("an exception from a hook gives 500 and the proxy keeps serving", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  hooks->throw_in_log = true;  // every on_log throws too: swallowed
  hooks->request = [](RequestContext& c) -> std::optional<LocalResponse> {
    if (c.header("X-Throw") == "request") throw std::runtime_error("on_request failure (on purpose)");
    return std::nullopt;
  };
  hooks->select = [](RequestContext& c) -> BackendChoice {
    if (c.header("X-Throw") == "select") throw std::runtime_error("select_backend failure (on purpose)");
    if (c.header("X-Throw") == "select-int") throw 42;
    return {};
  };
  hooks->upstream = [](RequestContext& c, const weldr::Backend&) {
    if (c.header("X-Throw") == "upstream") throw std::runtime_error("on_upstream_request failure (on purpose)");
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  Client client(proxy.port());

  std::size_t requests = 0;
  for (const char* which : {"request", "select", "select-int", "upstream"}) {
    INFO(which);
    const Response r = client.exchange(make_request("GET", "/", {}, fmt::format("X-Throw: {}\r\n", which)));
    INFO(r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == 500);
    const Response ok = client.exchange(make_request("GET", "/"));
    INFO(ok.describe());
    REQUIRE(ok.complete);
    CHECK(ok.status == 200);
    CHECK(ok.body == "Hello World");
    requests += 2;
  }
  // A new connection works as well.
  const Response fresh = http_get(proxy.port(), "/");
  INFO(fresh.describe());
  CHECK(fresh.status == 200);
  ++requests;

  REQUIRE(hooks->wait_logs(requests));
  REQUIRE(stop_proxy(proxy));
  const auto logs = hooks->logs();
  REQUIRE(logs.size() == requests);
  for (std::size_t i = 0; i + 1 < requests; i += 2) {
    CHECK(logs[i].status == 500);
    CHECK_FALSE(logs[i].error.empty());
    CHECK(logs[i + 1].status == 200);
  }
  CHECK(origin.request_count() == 5);
  CHECK(hooks->events("upstream ").size() == 6);  // every request that got past select_backend
}

TEST_CASE("an exception from on_response or on_error leaves the response complete", "[integration][hooks]") {
  Origin origin;
  const RefusingPort dead;
  struct Hooks : TestHooks {
    weldr::Pool dead_pool;
  };
  auto hooks = std::make_shared<Hooks>();
  REQUIRE(hooks->dead_pool.add(dead.url()));
  hooks->select = [h = hooks.get()](RequestContext& c) -> BackendChoice {
    if (c.path() == "/dead") return {&h->dead_pool, nullptr};
    return {};
  };
  hooks->response = [](RequestContext& c) {
    c.response_headers().add("X-Before-Throw", "1");
    throw std::runtime_error("on_response failure (on purpose)");
  };
  hooks->error = [](RequestContext*, LocalResponse& page) {
    page.body = "half-done\n";
    throw std::runtime_error("on_error failure (on purpose)");
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks, 0));
  Client client(proxy.port());

  const Response r = client.exchange(make_request("GET", "/"));
  INFO(r.describe());
  REQUIRE(r.complete);
  // Documented as "answered with 500"; weldr sends the origin's response without the edits.
  CHECK((r.status == 200 || r.status == 500));
  CHECK_FALSE(r.has("X-Before-Throw"));

  const Response e = client.exchange(make_request("GET", "/dead"));
  INFO(e.describe());
  REQUIRE(e.complete);
  CHECK(e.status == 502);
  CHECK(e.header("Content-Length") == std::to_string(e.body.size()));

  const Response ok = client.exchange(make_request("GET", "/"));
  INFO(ok.describe());
  REQUIRE(ok.complete);
  CHECK(ok.body == "Hello World");
}

// -------------------------------------------------------------------------------------------
// Review fixes: what a hook sees and may do

TEST_CASE("path() and host() are those forwarded, also for an absolute-form target", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  hooks->request = [h = hooks.get()](RequestContext& c) -> std::optional<LocalResponse> {
    h->note(fmt::format("seen {} {}", c.path(), c.host()));
    if (c.path().starts_with("/admin")) return LocalResponse{403, "no\n", {}};
    return std::nullopt;
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  // The authority overrides Host (RFC 9112 §3.2.2): an access rule on path() must see /admin.
  const Response blocked =
      Client(proxy.port()).exchange("GET http://inner.test/admin?x=1 HTTP/1.1\r\nHost: outer.test\r\n\r\n");
  INFO(blocked.describe());
  CHECK(blocked.status == 403);
  const Response plain = Client(proxy.port()).exchange("GET http://inner.test HTTP/1.1\r\nHost: outer.test\r\n\r\n");
  CHECK(plain.status == 200);
  CHECK(hooks->events("seen ") == std::vector<std::string>{"seen /admin inner.test", "seen / inner.test"});
  CHECK(origin.request_count() == 1);
  REQUIRE(hooks->wait_logs(2));
  CHECK(hooks->logs()[1].host == "inner.test");  // the log has the host the request went to
}

TEST_CASE("a hook's target keeps the absolute-form authority as Host", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  hooks->request = [](RequestContext& c) -> std::optional<LocalResponse> {
    c.set_upstream_target("/rewritten");
    return std::nullopt;
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  CHECK(Client(proxy.port()).exchange("GET http://inner.test/x HTTP/1.1\r\nHost: outer.test\r\n\r\n").status == 404);
  const auto seen = origin.requests();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].target == "/rewritten");
  CHECK(header_values(seen[0].headers, "Host") == std::vector<std::string>{"inner.test"});
}

TEST_CASE("header edits: one Host at most, and names and values are checked", "[integration][hooks]") {
  Origin origin;
  auto hooks = std::make_shared<TestHooks>();
  hooks->request = [](RequestContext& c) -> std::optional<LocalResponse> {
    c.upstream_headers().add("Host", "added.test");  // add() of Host replaces it
    c.upstream_headers().add("Transfer-Encoding\v", "chunked");
    c.upstream_headers().add("X-Nul", std::string("a\0b", 3));
    c.upstream_headers().add("X(bad)", "v");
    c.upstream_headers().add("X-Tab", "a\tb");
    c.upstream_headers().add("X-Utf8", "caf\xC3\xA9");
    return std::nullopt;
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  CHECK(Client(proxy.port()).exchange(make_request("GET", "/")).status == 200);
  const auto seen = origin.requests();
  REQUIRE(seen.size() == 1);
  CHECK(header_values(seen[0].headers, "Host") == std::vector<std::string>{"added.test"});
  CHECK_FALSE(seen[0].has("X-Nul"));
  CHECK_FALSE(seen[0].has("X(bad)"));
  CHECK(seen[0].header("X-Tab") == "a\tb");
  CHECK(seen[0].header("X-Utf8") == "caf\xC3\xA9");
  for (const auto& [name, value] : seen[0].headers)
    CHECK(name.find('\v') == std::string::npos);
}

TEST_CASE("context.backend() is the backend that answered, after a retry too", "[integration][hooks]") {
  const RefusingPort dead;
  Origin live;
  auto hooks = std::make_shared<TestHooks>();
  hooks->response = [](RequestContext& c) {
    if (c.backend() != nullptr) c.response_headers().set("X-Backend", c.backend()->id());
  };
  TestProxy proxy({dead.url(), live.endpoint_url()}, options_with(hooks, /*retries=*/1));
  for (int i = 0; i < 4; ++i) {
    const Response r = http_get(proxy.port(), "/");
    INFO(r.describe());
    REQUIRE(r.status == 200);
    CHECK(r.header("X-Backend") == live.id());
  }
}

TEST_CASE("on_log sees the request's context and its user data, which ends with the request", "[integration][hooks]") {
  Origin origin;
  struct Hooks : TestHooks {
    std::atomic<int> alive{0};
    std::atomic<int> seen_in_log{0};
    void on_log(const weldr::RequestLog& log) override {
      if (log.context != nullptr && log.context->user.has_value()) ++seen_in_log;
      TestHooks::on_log(log);
    }
  };
  struct Token {
    explicit Token(std::atomic<int>& c) : count(&c) { ++*count; }
    Token(const Token& other) : count(other.count) { ++*count; }
    Token& operator=(const Token&) = delete;
    ~Token() { --*count; }
    std::atomic<int>* count;
  };
  auto hooks = std::make_shared<Hooks>();
  hooks->request = [h = hooks.get()](RequestContext& c) -> std::optional<LocalResponse> {
    c.user = Token(h->alive);
    return std::nullopt;
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  Client client(proxy.port());
  CHECK(client.exchange(make_request("GET", "/")).status == 200);
  REQUIRE(hooks->wait_logs(1));
  CHECK(hooks->seen_in_log == 1);
  // The connection stays open (keep-alive), but the request's data is gone.
  CHECK(eventually([&] { return hooks->alive == 0; }));
}

TEST_CASE("a host's Balancer that throws, or a backend outside the pool given, gets 500", "[integration][hooks]") {
  Origin origin;
  struct Throwing : weldr::Balancer {
    std::string_view name() const noexcept override { return "throwing"; }
    std::size_t pick(const weldr::Candidates&, const weldr::PickContext&) override {
      throw std::runtime_error("balancer failure (on purpose)");
    }
  };
  struct Hooks : TestHooks {
    weldr::Pool broken;
    weldr::Pool other;
  };
  auto hooks = std::make_shared<Hooks>();
  REQUIRE(hooks->broken.add(origin.endpoint_url()));
  hooks->broken.set_balancer(std::make_shared<Throwing>());
  REQUIRE(hooks->other.add(origin.endpoint_url()));
  hooks->select = [h = hooks.get()](RequestContext& c) -> BackendChoice {
    if (c.path() == "/throw") return {&h->broken, nullptr};
    if (c.path() == "/mismatch") return {nullptr, h->other.find(h->other.list().at(0)->id())};  // not the proxy's
    return {};
  };
  TestProxy proxy({origin.endpoint_url()}, options_with(hooks));
  Client client(proxy.port());
  CHECK(client.exchange(make_request("GET", "/throw")).status == 500);
  CHECK(client.exchange(make_request("GET", "/mismatch")).status == 500);
  CHECK(client.exchange(make_request("GET", "/")).status == 200);
  CHECK(origin.request_count() == 1);
  REQUIRE(hooks->wait_logs(3));
  CHECK(hooks->logs()[0].status == 500);
}

TEST_CASE("local answers and error pages keep an HTTP/1.0 keep-alive connection open and say so",
          "[integration][hooks]") {
  auto hooks = std::make_shared<TestHooks>();
  hooks->request = [](RequestContext& c) -> std::optional<LocalResponse> {
    if (c.path() == "/local") return LocalResponse{200, "local\n", {}};
    return std::nullopt;
  };
  TestProxy proxy({}, options_with(hooks));  // an empty pool: other paths get 503
  Client client(proxy.port());
  const Response local = client.exchange("GET /local HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  INFO(local.describe());
  CHECK(local.status == 200);
  CHECK(local.header("Connection") == "keep-alive");
  CHECK_FALSE(local.closed);
  const Response error = client.exchange("GET /none HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  INFO(error.describe());
  CHECK(error.status == 503);
  CHECK(error.header("Connection") == "keep-alive");
}

TEST_CASE("two pools that hold the same address keep their own idle connections", "[integration][hooks]") {
  Origin origin;
  struct Hooks : TestHooks {
    weldr::Pool a;
    weldr::Pool b;
  };
  auto hooks = std::make_shared<Hooks>();
  REQUIRE(hooks->a.add(origin.endpoint_url()));
  REQUIRE(hooks->b.add(origin.endpoint_url()));
  hooks->select = [h = hooks.get()](RequestContext& c) -> BackendChoice {
    return {c.path() == "/a" ? &h->a : &h->b, nullptr};
  };
  TestProxy proxy({}, options_with(hooks));
  Client client(proxy.port());
  for (int i = 0; i < 6; ++i)
    REQUIRE(client.exchange(make_request("GET", i % 2 == 0 ? "/a" : "/b")).status == 404);
  // One upstream connection per pool, each reused: alternating does not close the other's.
  std::set<std::size_t> connections;
  for (const auto& r : origin.requests())
    connections.insert(r.connection);
  CHECK(connections.size() == 2);
}
