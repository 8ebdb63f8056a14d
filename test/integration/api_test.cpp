// Management API integration tests: the API and a Proxy share one Pool and one Stats on one
// io_context, as a host embeds them; origins are in-process, and everything is on 127.0.0.1.

#include <weldr/management_api.hpp>
#include <weldr/pool.hpp>
#include <weldr/proxy.hpp>
#include <weldr/state_file.hpp>
#include <weldr/stats.hpp>

#include "client.hpp"
#include "fixtures.hpp"
#include "origin.hpp"

#include <rapidjson/document.h>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>
#include <catch2/catch.hpp>

#include <stdlib.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

using namespace weldr::test;
using namespace std::chrono_literals;

namespace {

constexpr std::string_view kJson = "Content-Type: application/json\r\n";

/// How a Harness is set up.
struct Setup {
  // A constructor of its own: as an aggregate, a temporary Setup makes GCC 12 at -O2 warn that
  // the API options' strings may be used uninitialized (a false positive).
  Setup() {}  // NOLINT(modernize-use-equals-default): user-provided on purpose
  weldr::ApiOptions api{};
  weldr::ProxyOptions proxy{TestProxy::test_options()};
  /// When not empty, a StateFile on this path is started and handed to the API.
  std::string state_path{};
};

/// A Setup with a state file. (Not `Setup{.state_path = path}`: GCC 12 at -O2 warns that the
/// other members may be used uninitialized, a false positive.)
Setup with_state_file(std::string path) {
  Setup setup;
  setup.state_path = std::move(path);
  return setup;
}

/// A host that embeds weldr: one Pool, one Stats, one io_context run by one thread,
/// hosting a ManagementApi and a Proxy, both on 127.0.0.1 at free ports.
class Harness {
 public:
  explicit Harness(Setup setup = {}) {
    if (!setup.state_path.empty()) {
      state_file_ = std::make_unique<weldr::StateFile>(pool_, setup.state_path);
      state_file_->start();
      setup.api.state_file = state_file_.get();
    }
    const asio::ip::tcp::endpoint any_port(asio::ip::address_v4::loopback(), 0);
    api_ = std::make_unique<weldr::ManagementApi>(io_, pool_, stats_, std::move(setup.api));
    api_->listen(any_port);
    proxy_ = std::make_unique<weldr::Proxy>(io_, pool_, stats_, std::move(setup.proxy));
    proxy_->listen(any_port);
    api_port_ = api_->local_endpoint().port();
    proxy_port_ = proxy_->local_endpoint().port();
    work_.emplace(io_.get_executor());
    thread_ = std::thread([this] { io_.run(); });
  }

  ~Harness() {
    // Both stops must run on the io_context's thread.
    auto stopped = std::make_shared<std::promise<void>>();
    auto done = stopped->get_future();
    asio::post(io_, [this, stopped] {
      api_->stop();
      proxy_->stop(1s, [stopped] { stopped->set_value(); });
    });
    static_cast<void>(done.wait_for(10s));
    work_.reset();
    io_.stop();
    thread_.join();
  }

  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  [[nodiscard]] weldr::Pool& pool() noexcept { return pool_; }
  [[nodiscard]] std::uint16_t api_port() const noexcept { return api_port_; }
  [[nodiscard]] std::uint16_t proxy_port() const noexcept { return proxy_port_; }

  /// Sends one request to the API on a connection of its own.
  Response api(std::string_view method, std::string_view target, std::string_view body = {},
               std::string_view headers = {}) const {
    Client client(api_port_);
    return client.exchange(make_request(method, target, body, headers));
  }
  Response get(std::string_view target) const { return api("GET", target); }
  Response del(std::string_view target) const { return api("DELETE", target); }
  /// POST /servers with `body` as JSON.
  Response post(std::string_view body) const { return api("POST", "/servers", body, kJson); }

  /// GET `path` through the proxy.
  Response through_proxy(std::string_view path = "/") const { return http_get(proxy_port_, path); }

 private:
  // The io_context goes away after the API and the Proxy (declared after it), and before the
  // StateFile, Stats and Pool they refer to.
  weldr::Pool pool_;
  weldr::Stats stats_;
  std::unique_ptr<weldr::StateFile> state_file_;
  asio::io_context io_;
  std::unique_ptr<weldr::ManagementApi> api_;
  std::unique_ptr<weldr::Proxy> proxy_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread thread_;
  std::uint16_t api_port_{0};
  std::uint16_t proxy_port_{0};
};

/// A fresh directory under /tmp, removed with its content at the end.
class TempDir {
 public:
  TempDir() {
    std::string pattern = "/tmp/weldr-api-test-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  [[nodiscard]] const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
};

/// Polls `condition` until it holds, for at most `timeout`. For counters that the proxy updates
/// just after the client has its response: there is no event to wait for, only a state.
bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout = 5s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(2ms);
  }
}

std::string server_path(std::uint16_t port) {
  return "/servers/127.0.0.1/" + std::to_string(port);
}

/// The body of `r`, which must be JSON.
rapidjson::Document json_of(const Response& r) {
  INFO(r.describe() << " body: " << r.body);
  REQUIRE(r.complete);
  rapidjson::Document doc;
  doc.Parse(r.body.data(), r.body.size());
  REQUIRE_FALSE(doc.HasParseError());
  return doc;
}

/// The string member `key` of `object`, or "<missing>" when it is absent or not a string.
std::string text(const rapidjson::Value& object, const char* key) {
  if (!object.IsObject()) return "<not an object>";
  const auto it = object.FindMember(key);
  if (it == object.MemberEnd() || !it->value.IsString()) return "<missing>";
  return {it->value.GetString(), it->value.GetStringLength()};
}

/// The unsigned member `key` of `object`; fails the test when it is absent or not a count.
std::uint64_t count(const rapidjson::Value& object, const char* key) {
  INFO("member " << key);
  REQUIRE(object.IsObject());
  const auto it = object.FindMember(key);
  REQUIRE(it != object.MemberEnd());
  REQUIRE(it->value.IsUint64());
  return it->value.GetUint64();
}

/// The member `key` of `object`, which must be present.
const rapidjson::Value& member(const rapidjson::Value& object, const char* key) {
  INFO("member " << key);
  REQUIRE(object.IsObject());
  const auto it = object.FindMember(key);
  REQUIRE(it != object.MemberEnd());
  return it->value;
}

/// Checks that `r` is an error with `status` and a JSON body {"error": "<non-empty>"}.
void check_error(const Response& r, int status) {
  INFO(r.describe() << " body: " << r.body);
  REQUIRE(r.complete);
  CHECK(r.status == status);
  CHECK(r.header("Content-Type").starts_with("application/json"));
  const auto doc = json_of(r);
  REQUIRE(doc.IsObject());
  CHECK(text(doc, "error") != "<missing>");
  CHECK_FALSE(text(doc, "error").empty());
}

/// Checks one server object against the spec: the server at 127.0.0.1:`port` in `state`.
void check_server(const rapidjson::Value& s, std::uint16_t port, std::string_view state) {
  REQUIRE(s.IsObject());
  const std::string p = std::to_string(port);
  CHECK(text(s, "id") == "127.0.0.1:" + p);
  CHECK(text(s, "ip") == "127.0.0.1");
  CHECK(text(s, "port") == p);
  CHECK(text(s, "url") == "http://127.0.0.1:" + p);
  CHECK(text(s, "state") == state);
  const auto& counters = member(s, "counters");
  REQUIRE(counters.IsObject());
  for (const char* key : {"requests", "success", "failed", "active_requests", "active_connections"}) {
    INFO("counter " << key);
    CHECK((counters.HasMember(key) && counters[key].IsInt64() && counters[key].GetInt64() >= 0));
  }
  const auto& links = member(s, "links");
  REQUIRE(links.IsArray());
  REQUIRE(links.Size() == 2);
  CHECK(text(links[0], "rel") == "self");
  CHECK(text(links[0], "href") == "/servers/127.0.0.1/" + p);
  CHECK(text(links[0], "method") == "GET");
  CHECK(text(links[1], "rel") == "delete");
  CHECK(text(links[1], "href") == "/servers/127.0.0.1/" + p);
  CHECK(text(links[1], "method") == "DELETE");
}

/// The ids in the pool, in order.
std::vector<std::string> pool_ids(const weldr::Pool& pool) {
  std::vector<std::string> out;
  for (const auto& b : pool.list())
    out.push_back(b->id());
  return out;
}

/// The ids GET /servers lists, in order.
std::vector<std::string> listed_ids(const Harness& h) {
  const Response r = h.get("/servers");
  INFO(r.describe() << " body: " << r.body);
  REQUIRE(r.status == 200);
  const auto doc = json_of(r);
  REQUIRE(doc.IsArray());
  std::vector<std::string> out;
  for (const auto& s : doc.GetArray())
    out.push_back(text(s, "id"));
  return out;
}

/// GET /stats, checked to have exactly the documented shape.
struct Counts {
  std::uint64_t client_success{0};
  std::uint64_t client_failed{0};
  std::uint64_t server_success{0};
  std::uint64_t server_failed{0};
};

Counts stats_of(const Harness& h) {
  const Response r = h.get("/stats");
  INFO(r.describe() << " body: " << r.body);
  REQUIRE(r.status == 200);
  const auto doc = json_of(r);
  REQUIRE(doc.IsObject());
  REQUIRE(doc.MemberCount() == 3);
  const auto& client = member(doc, "client");
  const auto& server = member(doc, "server");
  REQUIRE(client.IsObject());
  REQUIRE(server.IsObject());
  REQUIRE(client.MemberCount() == 2);
  REQUIRE(server.MemberCount() == 2);
  return {count(client, "success"), count(client, "failed"), count(server, "success"), count(server, "failed")};
}

/// Sends `k` GETs through the proxy, each answered 200 by an origin.
void send_successful_requests(const Harness& h, std::uint64_t k) {
  for (std::uint64_t i = 0; i < k; ++i) {
    const Response r = h.through_proxy("/");
    INFO(i << ": " << r.describe());
    REQUIRE(r.complete);
    REQUIRE(r.status == 200);
    REQUIRE(r.body == "Hello World");
  }
}

}  // namespace

TEST_CASE("GET / describes the API and links to its resources", "[integration][api]") {
  Harness h;
  const Response r = h.get("/");
  INFO(r.describe() << " body: " << r.body);
  REQUIRE(r.status == 200);
  CHECK(r.header("Content-Type").starts_with("application/json"));
  const auto doc = json_of(r);
  REQUIRE(doc.IsObject());
  CHECK(text(doc, "about") == "weldr management API");
  const auto& links = member(doc, "links");
  REQUIRE(links.IsArray());
  REQUIRE(links.Size() > 0);
  for (const auto& link : links.GetArray()) {
    CHECK(text(link, "rel") != "<missing>");
    CHECK(text(link, "href").starts_with("/"));
    CHECK(text(link, "method") != "<missing>");
  }
}

TEST_CASE("GET /servers lists every server with its state, counters and links", "[integration][api]") {
  Harness h;
  {
    const auto empty = json_of(h.get("/servers"));
    REQUIRE(empty.IsArray());
    CHECK(empty.Size() == 0);
  }

  Origin plain;
  Origin checked;
  REQUIRE(h.pool().add(plain.endpoint_url()));
  const Response created =
      h.post(R"({"url": ")" + checked.endpoint_url() + R"(", "check": {"type": "http", "path": "/health"}})");
  REQUIRE(created.status == 201);

  const Response r = h.get("/servers");
  INFO(r.describe() << " body: " << r.body);
  REQUIRE(r.status == 200);
  CHECK(r.header("Content-Type").starts_with("application/json"));
  const auto doc = json_of(r);
  REQUIRE(doc.IsArray());
  REQUIRE(doc.Size() == 2);
  check_server(doc[0], plain.port(), "active");
  CHECK_FALSE(doc[0].HasMember("check"));
  check_server(doc[1], checked.port(), "active");
  const auto& check = member(doc[1], "check");
  REQUIRE(check.IsObject());
  CHECK(text(check, "type") == "http");
  CHECK(text(check, "path") == "/health");
  for (const auto& s : doc.GetArray()) {
    const auto& counters = member(s, "counters");
    CHECK(count(counters, "requests") == 0);
    CHECK(count(counters, "active_requests") == 0);
  }
}

TEST_CASE("POST /servers registers a server in any accepted shape and the proxy uses it at once",
          "[integration][api]") {
  Origin origin;
  const std::string p = std::to_string(origin.port());
  const std::vector<std::pair<std::string, std::string>> shapes{
      {"url with scheme", R"({"url": "http://127.0.0.1:)" + p + R"("})"},
      {"url without scheme", R"({"url": "127.0.0.1:)" + p + R"("})"},
      {"ip and port as a string", R"({"ip": "127.0.0.1", "port": ")" + p + R"("})"},
      {"ip and port as a number", R"({"ip": "127.0.0.1", "port": )" + p + "}"},
      {"url with a check", R"({"url": "http://127.0.0.1:)" + p + R"(", "check": {"type": "http", "path": "/health"}})"},
  };
  for (const auto& [name, body] : shapes) {
    DYNAMIC_SECTION(name) {
      Harness h;
      const Response r = h.post(body);
      INFO(r.describe() << " body: " << r.body);
      REQUIRE(r.status == 201);
      CHECK(r.header("Location") == server_path(origin.port()));
      CHECK(r.header("Content-Type").starts_with("application/json"));
      check_server(json_of(r), origin.port(), "active");
      CHECK(pool_ids(h.pool()) == std::vector<std::string>{origin.id()});

      const std::size_t before = origin.request_count();
      const Response routed = h.through_proxy("/");
      INFO("through the proxy: " << routed.describe());
      CHECK(routed.status == 200);
      CHECK(routed.body == "Hello World");
      CHECK(origin.request_count() == before + 1);

      // Registering it again, in any shape, answers with the existing server and changes nothing.
      for (const auto& [again_name, again_body] : shapes) {
        INFO("registered again as: " << again_name);
        const Response again = h.post(again_body);
        INFO(again.describe() << " body: " << again.body);
        CHECK(again.status == 200);
        check_server(json_of(again), origin.port(), "active");
        CHECK(pool_ids(h.pool()) == std::vector<std::string>{origin.id()});
      }
      CHECK(listed_ids(h) == std::vector<std::string>{origin.id()});
    }
  }
}

TEST_CASE("GET /servers/{ip}/{port} shows one server, 404 for an unknown one, 400 for an invalid one",
          "[integration][api]") {
  Harness h;
  Origin origin;
  REQUIRE(h.post(R"({"url": ")" + origin.endpoint_url() + R"("})").status == 201);

  SECTION("a registered server") {
    const Response r = h.get(server_path(origin.port()));
    INFO(r.describe() << " body: " << r.body);
    REQUIRE(r.status == 200);
    check_server(json_of(r), origin.port(), "active");
  }

  SECTION("an unknown server") {
    const RefusingPort unused;
    check_error(h.get(server_path(unused.port())), 404);
  }

  SECTION("an invalid port") {
    for (const char* port : {"0", "70000", "abc", "-1", "65536"}) {
      INFO("port '" << port << "'");
      check_error(h.get(std::string("/servers/127.0.0.1/") + port), 400);
    }
  }

  SECTION("an invalid IP address") {
    for (const char* ip : {"999.0.0.1", "example.com", "127.0.0"}) {
      INFO("ip '" << ip << "'");
      check_error(h.get(std::string("/servers/") + ip + "/80"), 400);
    }
  }
}

TEST_CASE("DELETE /servers/{ip}/{port} removes an idle server at once", "[integration][api]") {
  Harness h;
  Origin origin;
  REQUIRE(h.post(R"({"url": ")" + origin.endpoint_url() + R"("})").status == 201);
  REQUIRE(h.through_proxy("/").status == 200);

  const Response r = h.del(server_path(origin.port()));
  INFO(r.describe() << " body: " << r.body);
  CHECK(r.status == 204);
  CHECK(r.body.empty());
  CHECK_FALSE(r.has("Content-Length"));

  CHECK(listed_ids(h).empty());
  CHECK(h.pool().size() == 0);
  check_error(h.get(server_path(origin.port())), 404);
  check_error(h.del(server_path(origin.port())), 404);

  const Response refused = h.through_proxy("/");
  INFO("through the proxy: " << refused.describe());
  CHECK(refused.status == 503);
  CHECK(origin.request_count() == 1);

  const RefusingPort unused;
  check_error(h.del(server_path(unused.port())), 404);
}

TEST_CASE("DELETE of a server with a request in flight drains it: the request completes, no new one goes to it",
          "[integration][api]") {
  Harness h;
  Origin origin;
  Gate gate;
  origin.set_handler(gate.handler("/slow"));
  REQUIRE(h.post(R"({"url": ")" + origin.endpoint_url() + R"("})").status == 201);
  const std::string path = server_path(origin.port());

  Client in_flight(h.proxy_port());
  REQUIRE(in_flight.send(make_request("GET", "/slow")));
  REQUIRE(origin.wait_for_requests(1));

  const Response deleted = h.del(path);
  INFO(deleted.describe() << " body: " << deleted.body);
  CHECK(deleted.status == 204);
  CHECK(deleted.body.empty());
  CHECK_FALSE(deleted.has("Content-Length"));

  // The origin holds the request until the gate opens, so the server must be draining now.
  {
    const Response one = h.get(path);
    INFO(one.describe() << " body: " << one.body);
    REQUIRE(one.status == 200);
    const auto server = json_of(one);
    check_server(server, origin.port(), "draining");
    CHECK(count(member(server, "counters"), "active_requests") == 1);

    const auto all = json_of(h.get("/servers"));
    REQUIRE(all.IsArray());
    REQUIRE(all.Size() == 1);
    CHECK(text(all[0], "state") == "draining");

    const Response refused = h.through_proxy("/");
    INFO("a new request while draining: " << refused.describe());
    CHECK(refused.status == 503);
    CHECK(origin.request_count() == 1);
    check_error(h.del(path), 404);  // already being removed
  }

  gate.open();
  const Response finished = in_flight.read_response();
  INFO("the request in flight: " << finished.describe());
  CHECK(finished.complete);
  CHECK(finished.status == 200);
  CHECK(finished.body == "released");

  // The backend leaves the pool when its last request ends, just after the response is relayed.
  CHECK(eventually([&] { return h.get(path).status == 404; }));
  check_error(h.get(path), 404);
  CHECK(listed_ids(h).empty());
  const Response after = h.through_proxy("/");
  INFO("a new request after the drain: " << after.describe());
  CHECK(after.status == 503);
  CHECK(origin.request_count() == 1);
}

TEST_CASE("GET /stats counts client and server results exactly", "[integration][api]") {
  Setup setup;
  setup.proxy.retries = 0;
  Harness h(setup);

  const Counts zero = stats_of(h);
  CHECK(zero.client_success == 0);
  CHECK(zero.client_failed == 0);
  CHECK(zero.server_success == 0);
  CHECK(zero.server_failed == 0);

  SECTION("K successful requests") {
    Origin origin;
    REQUIRE(h.post(R"({"url": ")" + origin.endpoint_url() + R"("})").status == 201);
    constexpr std::uint64_t kRequests = 5;
    send_successful_requests(h, kRequests);
    REQUIRE(eventually([&] { return stats_of(h).client_success >= kRequests; }));
    const Counts after = stats_of(h);
    CHECK(after.client_success == kRequests);
    CHECK(after.server_success == kRequests);
    CHECK(after.client_failed == 0);
    CHECK(after.server_failed == 0);
  }

  SECTION("a 503 of the proxy's own, with an empty pool") {
    const Response r = h.through_proxy("/");
    INFO(r.describe());
    REQUIRE(r.status == 503);
    REQUIRE(eventually([&] { return stats_of(h).client_failed >= 1; }));
    const Counts after = stats_of(h);
    CHECK(after.client_failed == 1);
    CHECK(after.client_success == 0);
    CHECK(after.server_success == 0);
    CHECK(after.server_failed == 0);
  }

  SECTION("a backend that refuses connections, without retries") {
    const RefusingPort dead;
    REQUIRE(h.post(R"({"url": ")" + dead.url() + R"("})").status == 201);
    const Response r = h.through_proxy("/");
    INFO(r.describe());
    REQUIRE(r.status == 502);
    REQUIRE(eventually([&] { return stats_of(h).client_failed >= 1; }));
    const Counts after = stats_of(h);
    CHECK(after.server_failed == 1);
    CHECK(after.client_failed == 1);
    CHECK(after.client_success == 0);
    CHECK(after.server_success == 0);
  }
}

TEST_CASE("GET /stats/detail has one entry per backend with counters and latency", "[integration][api]") {
  Harness h;
  Origin origin;
  REQUIRE(h.post(R"({"url": ")" + origin.endpoint_url() + R"("})").status == 201);
  constexpr std::uint64_t kRequests = 3;
  send_successful_requests(h, kRequests);
  REQUIRE(eventually([&] { return stats_of(h).client_success >= kRequests; }));

  const Response r = h.get("/stats/detail");
  INFO(r.describe() << " body: " << r.body);
  REQUIRE(r.status == 200);
  CHECK(r.header("Content-Type").starts_with("application/json"));
  const auto doc = json_of(r);
  REQUIRE(doc.IsArray());
  REQUIRE(doc.Size() == 1);
  const auto& d = doc[0];
  CHECK(text(d, "id") == origin.id());
  CHECK(text(d, "ip") == "127.0.0.1");
  CHECK(text(d, "port") == std::to_string(origin.port()));
  CHECK(text(d, "state") == "active");
  CHECK(count(d, "success") == kRequests);
  CHECK(count(d, "failed") == 0);
  CHECK(count(d, "requests") == kRequests);
  CHECK(count(d, "active_requests") == 0);
  const auto& connections = member(d, "active_connections");
  CHECK(connections.IsInt64());
  const auto& latency = member(d, "latency_ms");
  REQUIRE(latency.IsObject());
  CHECK(count(latency, "count") == kRequests);
  for (const char* q : {"p50", "p90", "p99"}) {
    INFO("latency " << q);
    const auto& v = member(latency, q);
    REQUIRE(v.IsNumber());
    CHECK(v.GetDouble() >= 0);
  }
  CHECK(latency["p50"].GetDouble() <= latency["p90"].GetDouble());
  CHECK(latency["p90"].GetDouble() <= latency["p99"].GetDouble());
}

TEST_CASE("GET /metrics speaks the Prometheus text format", "[integration][api]") {
  Harness h;
  Origin origin;
  REQUIRE(h.post(R"({"url": ")" + origin.endpoint_url() + R"("})").status == 201);
  constexpr std::uint64_t kRequests = 4;
  send_successful_requests(h, kRequests);
  REQUIRE(eventually([&] { return stats_of(h).client_success >= kRequests; }));

  const Response r = h.get("/metrics");
  INFO(r.describe() << " body: " << r.body);
  REQUIRE(r.status == 200);
  CHECK(r.header("Content-Type").starts_with("text/plain; version=0.0.4"));
  const std::string body = "\n" + r.body;
  CHECK(body.find("\nweldr_client_requests_total{result=\"success\"} 4\n") != std::string::npos);
  CHECK(body.find("\nweldr_backend_request_duration_seconds_bucket{backend=\"" + origin.id() + "\",le=\"+Inf\"} 4\n") !=
        std::string::npos);
}

TEST_CASE("an invalid registration gets a JSON error and changes nothing", "[integration][api]") {
  struct Case {
    std::string name;
    std::string body;
    int status;
    std::string headers{kJson};
  };
  // Port 9 (discard) is never registered: a registration that wrongly succeeds shows in the pool.
  const std::vector<Case> cases{
      {"malformed JSON", R"({"url": )", 400},
      {"not an object", "[]", 400},
      {"a string", R"("http://127.0.0.1:9")", 400},
      {"empty object", "{}", 400},
      {"url not a string", R"({"url": 9})", 400},
      {"https URL", R"({"url": "https://127.0.0.1:9"})", 400},
      {"ftp URL", R"({"url": "ftp://127.0.0.1:9"})", 400},
      {"no port and no scheme", R"({"url": "127.0.0.1"})", 400},
      {"host name", R"({"url": "example.com:80"})", 400},
      {"host name with scheme", R"({"url": "http://example.com:80"})", 400},
      {"url with port 0", R"({"url": "127.0.0.1:0"})", 400},
      {"url with port 65536", R"({"url": "http://127.0.0.1:65536"})", 400},
      {"port 0", R"({"ip": "127.0.0.1", "port": 0})", 400},
      {"port 65536", R"({"ip": "127.0.0.1", "port": 65536})", 400},
      {"port \"-1\"", R"({"ip": "127.0.0.1", "port": "-1"})", 400},
      {"port -1", R"({"ip": "127.0.0.1", "port": -1})", 400},
      {"port not a number", R"({"ip": "127.0.0.1", "port": "http"})", 400},
      {"port missing", R"({"ip": "127.0.0.1"})", 400},
      {"ip missing", R"({"port": 9})", 400},
      {"ip invalid", R"({"ip": "999.0.0.1", "port": 9})", 400},
      {"both url and ip", R"({"url": "127.0.0.1:9", "ip": "127.0.0.1", "port": 9})", 400},
      {"check not an object", R"({"url": "127.0.0.1:9", "check": "http"})", 400},
      {"check type udp", R"({"url": "127.0.0.1:9", "check": {"type": "udp"}})", 400},
      {"body over 64 KiB", R"({"url": "127.0.0.1:9", "pad": ")" + std::string(64 * 1024, 'x') + R"("})", 413},
      {"text/plain", R"({"url": "127.0.0.1:9"})", 415, "Content-Type: text/plain\r\n"},
  };
  for (const auto& c : cases) {
    DYNAMIC_SECTION(c.name) {
      Harness h;
      Origin origin;
      REQUIRE(h.pool().add(origin.endpoint_url()));
      const auto before = pool_ids(h.pool());

      check_error(h.api("POST", "/servers", c.body, c.headers), c.status);
      CHECK(pool_ids(h.pool()) == before);
      CHECK(listed_ids(h) == before);
    }
  }
}

TEST_CASE("unknown paths get 404, wrong methods 405 with Allow", "[integration][api]") {
  Harness h;

  SECTION("unknown path") {
    check_error(h.get("/nope"), 404);
    check_error(h.api("POST", "/nope", "{}", kJson), 404);
  }

  SECTION("wrong method") {
    struct Case {
      const char* method;
      const char* target;
      std::vector<const char*> allowed;
    };
    const std::vector<Case> cases{
        {"PUT", "/servers", {"GET", "POST"}},
        {"DELETE", "/servers", {"GET", "POST"}},
        {"POST", "/stats", {"GET"}},
        {"POST", "/stats/detail", {"GET"}},
        {"DELETE", "/metrics", {"GET"}},
        {"POST", "/", {"GET"}},
        {"PATCH", "/servers/127.0.0.1/1", {"GET", "DELETE"}},
        {"POST", "/servers/127.0.0.1/1", {"GET", "DELETE"}},
    };
    for (const auto& c : cases) {
      INFO(c.method << " " << c.target);
      const Response r = h.api(c.method, c.target);
      check_error(r, 405);
      INFO("Allow: " << r.header("Allow"));
      REQUIRE(r.has("Allow"));
      for (const char* m : c.allowed)
        CHECK(header_has_token(r.headers, "Allow", m));
      CHECK_FALSE(header_has_token(r.headers, "Allow", c.method));
    }
    CHECK(h.pool().size() == 0);
  }
}

TEST_CASE("with a token, requests need the right bearer token", "[integration][api]") {
  Setup setup;
  setup.api.token = "s3cret";
  Harness h(setup);
  Origin origin;
  const std::string body = R"({"url": ")" + origin.endpoint_url() + R"("})";

  SECTION("no Authorization") {
    const Response r = h.get("/servers");
    check_error(r, 401);
    CHECK(r.has("WWW-Authenticate"));
    check_error(h.post(body), 401);
    CHECK(h.pool().size() == 0);
  }

  SECTION("a wrong token") {
    for (const char* auth : {"Bearer nope", "Bearer s3cret2", "Bearer s3cre", "Basic s3cret", "s3cret"}) {
      INFO("Authorization: " << auth);
      const std::string header = std::string("Authorization: ") + auth + "\r\n";
      const Response r = h.api("GET", "/servers", {}, header);
      check_error(r, 401);
      CHECK(r.has("WWW-Authenticate"));
      check_error(h.api("POST", "/servers", body, header + std::string(kJson)), 401);
      CHECK(h.pool().size() == 0);
    }
  }

  SECTION("the right token") {
    const std::string header = "Authorization: Bearer s3cret\r\n";
    const Response r = h.api("GET", "/servers", {}, header);
    INFO(r.describe() << " body: " << r.body);
    CHECK(r.status == 200);
    const Response created = h.api("POST", "/servers", body, header + std::string(kJson));
    INFO(created.describe() << " body: " << created.body);
    CHECK(created.status == 201);
    CHECK(h.pool().size() == 1);
  }
}

TEST_CASE("several API requests share one keep-alive connection", "[integration][api]") {
  Harness h;
  Origin origin;
  const std::string path = server_path(origin.port());
  Client client(h.api_port());
  struct Step {
    std::string request;
    int status;
  };
  const std::vector<Step> steps{
      {make_request("GET", "/"), 200},
      {make_request("POST", "/servers", R"({"url": ")" + origin.endpoint_url() + R"("})", kJson), 201},
      {make_request("GET", "/servers"), 200},
      {make_request("GET", path), 200},
      {make_request("GET", "/nope"), 404},
      {make_request("DELETE", path), 204},
      {make_request("GET", path), 404},
      {make_request("GET", "/stats"), 200},
      {make_request("GET", "/metrics"), 200},
  };
  for (std::size_t i = 0; i < steps.size(); ++i) {
    const Response r = client.exchange(steps[i].request);
    INFO("step " << i << ": " << r.describe() << " body: " << r.body);
    REQUIRE(r.complete);
    CHECK(r.status == steps[i].status);
    CHECK(r.keep_alive);
  }
}

TEST_CASE("changes the host makes to the Pool show in the API at once", "[integration][api]") {
  Harness h;
  Origin first;
  Origin second;
  REQUIRE(h.pool().add(first.endpoint_url()));
  CHECK(listed_ids(h) == std::vector<std::string>{first.id()});
  weldr::BackendAddress address{"127.0.0.1", second.port(), second.endpoint_url()};
  REQUIRE(h.pool().add(address, R"({"type":"tcp"})"));
  CHECK(listed_ids(h) == std::vector<std::string>{first.id(), second.id()});
  {
    const Response r = h.get(server_path(second.port()));
    INFO(r.describe() << " body: " << r.body);
    REQUIRE(r.status == 200);
    const auto doc = json_of(r);
    check_server(doc, second.port(), "active");
    CHECK(text(member(doc, "check"), "type") == "tcp");
  }

  REQUIRE(h.pool().remove(first.id()));
  CHECK(listed_ids(h) == std::vector<std::string>{second.id()});
  check_error(h.get(server_path(first.port())), 404);
  REQUIRE(h.pool().remove(second.id()));
  CHECK(listed_ids(h).empty());
}

TEST_CASE("registrations through the API are kept in the state file", "[integration][api]") {
  const TempDir dir;
  const std::string path = dir.path() + "/state.json";
  Origin origin;

  SECTION("POST adds the server to the file, DELETE takes it out") {
    Harness h(with_state_file(path));
    CHECK(weldr::load_state_file(path).empty());

    const Response created =
        h.post(R"({"url": ")" + origin.endpoint_url() + R"(", "check": {"type": "http", "path": "/health"}})");
    INFO(created.describe() << " body: " << created.body);
    REQUIRE(created.status == 201);
    const auto stored = weldr::load_state_file(path);
    REQUIRE(stored.size() == 1);
    CHECK(stored[0].url == origin.endpoint_url());
    CHECK(stored[0].check == R"({"type":"http","path":"/health"})");

    const Response deleted = h.del(server_path(origin.port()));
    INFO(deleted.describe() << " body: " << deleted.body);
    REQUIRE(deleted.status == 204);
    CHECK(weldr::load_state_file(path).empty());
  }

  SECTION("a weight is registered, changed by registering again, and kept in the file") {
    Harness h(with_state_file(path));
    const std::string url = origin.endpoint_url();
    const Response created = h.post(R"({"url": ")" + url + R"(", "weight": 3})");
    INFO(created.describe() << " body: " << created.body);
    REQUIRE(created.status == 201);
    CHECK(json_of(created)["weight"].GetUint() == 3);
    REQUIRE(weldr::load_state_file(path).size() == 1);
    CHECK(weldr::load_state_file(path)[0].weight == 3);

    const Response same = h.post(R"({"url": ")" + url + R"(", "weight": 3})");
    CHECK(same.status == 200);
    const Response changed = h.post(R"({"url": ")" + url + R"(", "weight": 7})");
    INFO(changed.describe() << " body: " << changed.body);
    REQUIRE(changed.status == 200);
    CHECK(json_of(changed)["weight"].GetUint() == 7);
    CHECK(h.pool().find(origin.id())->weight() == 7);
    CHECK(weldr::load_state_file(path)[0].weight == 7);
    CHECK(json_of(h.get(server_path(origin.port())))["weight"].GetUint() == 7);

    // Registering again without a weight (an origin that restarts, say) keeps it.
    const Response again = h.post(R"({"url": ")" + url + R"("})");
    CHECK(again.status == 200);
    CHECK(h.pool().find(origin.id())->weight() == 7);

    const Response bad = h.post(R"({"url": ")" + url + R"(", "weight": 0})");
    check_error(bad, 400);
    CHECK(h.pool().find(origin.id())->weight() == 7);
  }

  SECTION("a state file that cannot be written gives 500, and the server is registered all the same") {
    Harness h(with_state_file(path));
    // Its directory goes away: the next write cannot create its temporary file.
    std::filesystem::remove_all(dir.path());
    REQUIRE_FALSE(std::filesystem::exists(dir.path()));

    const Response r = h.post(R"({"url": ")" + origin.endpoint_url() + R"("})");
    INFO(r.describe() << " body: " << r.body);
    check_error(r, 500);
    CHECK(text(json_of(r), "error").find("state file") != std::string::npos);

    CHECK(pool_ids(h.pool()) == std::vector<std::string>{origin.id()});
    CHECK(h.get(server_path(origin.port())).status == 200);
    const Response routed = h.through_proxy("/");
    INFO("through the proxy: " << routed.describe());
    CHECK(routed.status == 200);
  }
}

TEST_CASE("GET /cluster without a cluster says standalone; POST /cluster/resign is refused", "[integration][api]") {
  Harness h;
  const Response r = h.get("/cluster");
  INFO(r.describe() << " body: " << r.body);
  REQUIRE(r.status == 200);
  const auto doc = json_of(r);
  REQUIRE(doc.IsObject());
  CHECK(text(doc, "role") == "standalone");
  CHECK(member(doc, "leader").IsNull());
  CHECK(member(doc, "nodes").IsArray());
  const Response resign = h.api("POST", "/cluster/resign");
  CHECK(resign.status == 409);
  CHECK(resign.body.find("not in a cluster") != std::string::npos);
  const Response wrong = h.api("DELETE", "/cluster");
  CHECK(wrong.status == 405);
  CHECK(wrong.header("Allow") == "GET, HEAD");
  CHECK(h.get("/metrics").body.find("weldr_cluster_") == std::string::npos);
}
