// Active health check integration tests: a HealthChecker runs on an io_context thread of its own,
// as a host runs it on its control loop, over a Pool that a Proxy on another thread balances
// over; origins are in-process, and everything is on 127.0.0.1.

#include <weldr/health_checker.hpp>
#include <weldr/management_api.hpp>
#include <weldr/pool.hpp>
#include <weldr/proxy.hpp>
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

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
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
using weldr::BackendState;
using weldr::HealthCheckOptions;
using weldr::HealthStatus;

namespace {

using steady = std::chrono::steady_clock;

/// How long the origin of the overlap test holds each check's answer.
constexpr auto kAnswerDelay = 300ms;

/// Polls `condition` every 10 ms until it holds, for at most `timeout`.
bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout = 5s) {
  const auto deadline = steady::now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (steady::now() >= deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
}

/// Settings with which a backend goes down or up within a few hundred milliseconds.
HealthCheckOptions fast_options() {
  HealthCheckOptions o;
  o.interval = 100ms;
  o.timeout = 200ms;
  o.failures = 2;
  o.passes = 2;
  return o;
}

weldr::ProxyOptions proxy_options() {
  weldr::ProxyOptions o = TestProxy::test_options();
  o.retries = 1;
  return o;
}

weldr::BackendAddress address_of(std::string_view url) {
  std::error_code ec;
  auto address = weldr::parse_backend_url(url, ec);
  INFO(url << ": " << ec.message());
  REQUIRE(address);
  return *address;
}

/// The state of the backend `id`, or nothing when it is not in `pool`.
std::optional<BackendState> state_of(const weldr::Pool& pool, std::string_view id) {
  const auto backend = pool.find(id);
  if (!backend) return std::nullopt;
  return backend->state();
}

/// Number of requests `origin` received for `path`.
std::size_t count_path(const Origin& origin, std::string_view path) {
  const auto requests = origin.requests();
  return static_cast<std::size_t>(
      std::count_if(requests.begin(), requests.end(), [&](const RecordedRequest& r) { return r.path() == path; }));
}

/// An origin's behaviour that a test switches at any time: healthy, or closing every
/// connection without an answer (as a crashed process behind a live port would).
struct Switch {
  std::atomic<bool> failing{false};

  /// `/health` answers 200 while healthy; everything else is the origin's default.
  [[nodiscard]] Handler handler() {
    return [this](const RecordedRequest& request) {
      if (failing.load()) return Reply{.close_without_response = true};
      if (request.path() == "/health") return Reply{.body = "ok"};
      return Origin::default_reply(request);
    };
  }
};

/// Sends a GET for `/` through the proxy and returns a description when it did not get 200.
std::optional<std::string> failed_get(std::uint16_t proxy_port) {
  const Response r = http_get(proxy_port, "/");
  if (r.complete && r.status == 200 && r.body == "Hello World") return std::nullopt;
  return r.describe();
}

}  // namespace

TEST_CASE("A backend that fails its checks goes down while traffic goes on, and comes back", "[integration][health]") {
  Switch a_behaviour;
  Origin a(a_behaviour.handler());
  Origin b([](const RecordedRequest& request) {
    if (request.path() == "/health") return Reply{.body = "ok"};
    return Origin::default_reply(request);
  });
  TestProxy proxy({a.endpoint_url(), b.endpoint_url()}, proxy_options());
  auto options = fast_options();
  options.path = "/health";
  CheckerThread hc(proxy.pool(), options);
  auto& pool = proxy.pool();

  // Both are checked and pass.
  REQUIRE(eventually([&] { return count_path(a, "/health") >= 1 && count_path(b, "/health") >= 1; }));
  CHECK(state_of(pool, a.id()) == BackendState::active);
  CHECK_FALSE(hc.checker().status("127.0.0.1:1"));

  // 1. A fails: it goes down; every request sent meanwhile and afterwards succeeds.
  const auto before_failing = std::chrono::system_clock::now();
  a_behaviour.failing = true;
  std::vector<std::string> failures;
  int sent = 0;
  const auto send_one = [&] {
    if (auto failure = failed_get(proxy.port())) failures.push_back(std::to_string(sent) + ": " + *failure);
    ++sent;
  };
  const bool went_down = eventually([&] {
    if (sent < 50) send_one();
    const auto s = hc.checker().status(a.id());
    return state_of(pool, a.id()) == BackendState::down && s && !s->up;
  });
  while (sent < 50)
    send_one();
  INFO("sent " << sent << " requests before and after the backend went down");
  for (const auto& f : failures)
    UNSCOPED_INFO(f);
  CHECK(failures.empty());
  REQUIRE(went_down);

  const auto down = hc.checker().status(a.id());
  REQUIRE(down);
  CHECK_FALSE(down->up);
  CHECK(down->consecutive_failures >= 2);
  CHECK(down->consecutive_passes == 0);
  CHECK(down->checks >= 2);
  CHECK_FALSE(down->last_result.empty());
  CHECK(down->last_result != "ok");
  CHECK_FALSE(down->last_change_reason.empty());
  CHECK(down->last_change >= before_failing);

  const auto healthy = hc.checker().status(b.id());
  REQUIRE(healthy);
  CHECK(healthy->up);
  CHECK(healthy->consecutive_failures == 0);
  CHECK(healthy->consecutive_passes >= 1);
  CHECK(healthy->last_result == "ok");
  CHECK(healthy->last_change_reason.empty());
  CHECK(healthy->last_change == std::chrono::system_clock::time_point{});
  CHECK(state_of(pool, b.id()) == BackendState::active);

  // A down backend gets no traffic at all.
  const auto a_traffic = count_path(a, "/");
  for (int i = 0; i < 10; ++i) {
    INFO("while down: " << i);
    CHECK_FALSE(failed_get(proxy.port()));
  }
  CHECK(count_path(a, "/") == a_traffic);

  // 2. A passes again: it comes back and gets traffic again.
  a_behaviour.failing = false;
  REQUIRE(eventually([&] {
    const auto s = hc.checker().status(a.id());
    return state_of(pool, a.id()) == BackendState::active && s && s->up;
  }));
  const auto up = hc.checker().status(a.id());
  REQUIRE(up);
  CHECK(up->up);
  CHECK(up->consecutive_passes >= 2);
  CHECK(up->consecutive_failures == 0);
  CHECK(up->last_result == "ok");
  CHECK_FALSE(up->last_change_reason.empty());
  CHECK(up->last_change >= down->last_change);
  CHECK(up->checks > down->checks);

  for (int i = 0; i < 10; ++i) {
    INFO("after coming back: " << i);
    CHECK_FALSE(failed_get(proxy.port()));
  }
  CHECK(count_path(a, "/") > a_traffic);
}

TEST_CASE("The check request: GET of the path with Host ip:port, or the configured host", "[integration][health]") {
  Origin plain;
  Origin named;
  weldr::Pool pool;
  REQUIRE(pool.add(address_of(plain.endpoint_url())));
  REQUIRE(pool.add(address_of(named.endpoint_url()), R"({"path": "/", "host": "svc.test"})"));
  CheckerThread hc(pool, fast_options());

  REQUIRE(plain.wait_for_requests(1, 5s));
  REQUIRE(named.wait_for_requests(1, 5s));
  const auto p = plain.requests().front();
  CHECK(p.method == "GET");
  CHECK(p.target == "/");
  CHECK(p.header("Host") == plain.id());
  CHECK(p.body.empty());
  const auto n = named.requests().front();
  CHECK(n.method == "GET");
  CHECK(n.header("Host") == "svc.test");
}

TEST_CASE("A tcp check passes whatever the HTTP answer; nothing listening fails it", "[integration][health]") {
  const auto always_500 = [](const RecordedRequest&) { return Reply{.status = 500}; };
  Origin tcp_checked(always_500);
  Origin http_checked(always_500);
  RefusingPort refusing;
  weldr::Pool pool;
  REQUIRE(pool.add(address_of(http_checked.endpoint_url())));
  CheckerThread hc(pool, fast_options());
  // Added after start(): the checker picks them up.
  REQUIRE(pool.add(address_of(tcp_checked.endpoint_url()), R"({"type":"tcp"})"));
  REQUIRE(pool.add(address_of(refusing.url()), R"({"type":"tcp"})"));

  // The http check of a 500 goes down, and so does the tcp check of a closed port.
  REQUIRE(eventually([&] { return state_of(pool, http_checked.id()) == BackendState::down; }));
  REQUIRE(eventually([&] { return state_of(pool, refusing.id()) == BackendState::down; }));
  const auto refused = hc.checker().status(refusing.id());
  REQUIRE(refused);
  CHECK_FALSE(refused->up);
  CHECK_FALSE(refused->last_change_reason.empty());

  // The tcp check of the port that accepts has run at least 4 times by now and always passed.
  REQUIRE(eventually([&] {
    const auto s = hc.checker().status(tcp_checked.id());
    return s && s->checks >= 4;
  }));
  const auto s = hc.checker().status(tcp_checked.id());
  REQUIRE(s);
  CHECK(s->up);
  CHECK(s->consecutive_failures == 0);
  CHECK(s->last_result == "ok");
  CHECK(state_of(pool, tcp_checked.id()) == BackendState::active);
  // It connected but sent no request.
  CHECK(tcp_checked.connections_accepted() >= 1);
  CHECK(tcp_checked.request_count() == 0);
}

TEST_CASE("A server's own check settings override the defaults", "[integration][health]") {
  const auto handler = [](const RecordedRequest& request) {
    if (request.path() == "/health-fail") return Reply{.status = 503};
    return Origin::default_reply(request);
  };
  Origin overridden(handler);
  Origin plain(handler);
  weldr::Pool pool;
  REQUIRE(pool.add(address_of(plain.endpoint_url())));
  CheckerThread hc(pool, fast_options());
  REQUIRE(pool.add(address_of(overridden.endpoint_url()), R"({"path": "/health-fail"})"));

  REQUIRE(eventually([&] { return state_of(pool, overridden.id()) == BackendState::down; }));
  REQUIRE(eventually([&] {
    const auto s = hc.checker().status(plain.id());
    return s && s->checks >= 4;
  }));
  CHECK(state_of(pool, plain.id()) == BackendState::active);
  CHECK(hc.checker().status(plain.id())->up);
  CHECK(count_path(overridden, "/health-fail") >= 2);
  CHECK(count_path(overridden, "/") == 0);
  CHECK(count_path(plain, "/health-fail") == 0);

  // A server's own fields stay when the defaults change; the others follow the defaults.
  auto changed = fast_options();
  changed.path = "/status/204";
  changed.expect_min = 204;
  changed.expect_max = 204;
  hc.checker().set_defaults(changed);
  CHECK(hc.checker().defaults().path == "/status/204");
  const auto plain_checks = count_path(plain, "/status/204");
  REQUIRE(eventually([&] { return count_path(plain, "/status/204") >= plain_checks + 2; }));
  const auto overridden_seen = count_path(overridden, "/health-fail");
  REQUIRE(eventually([&] { return count_path(overridden, "/health-fail") >= overridden_seen + 2; }));
  CHECK(count_path(overridden, "/status/204") == 0);
  CHECK(state_of(pool, plain.id()) == BackendState::active);
  CHECK(state_of(pool, overridden.id()) == BackendState::down);
}

TEST_CASE("Status codes: expect decides what passes", "[integration][health]") {
  // A 302 fails the default 200-299 and passes "200-399"; a 204 passes an exact 204.
  const auto redirect = [](const RecordedRequest&) {
    return Reply{.status = 302, .headers = {{"Location", "/elsewhere"}}};
  };
  Origin strict(redirect);
  Origin lenient(redirect);
  Origin exact([](const RecordedRequest&) { return Reply{.status = 204}; });
  weldr::Pool pool;
  REQUIRE(pool.add(address_of(strict.endpoint_url())));
  REQUIRE(pool.add(address_of(lenient.endpoint_url()), R"({"expect": "200-399"})"));
  REQUIRE(pool.add(address_of(exact.endpoint_url()), R"({"expect": 204})"));
  CheckerThread hc(pool, fast_options());

  REQUIRE(eventually([&] { return state_of(pool, strict.id()) == BackendState::down; }));
  for (const auto* origin : {&lenient, &exact}) {
    REQUIRE(eventually([&] {
      const auto s = hc.checker().status(origin->id());
      return s && s->checks >= 4;
    }));
    CHECK(hc.checker().status(origin->id())->up);
    CHECK(state_of(pool, origin->id()) == BackendState::active);
  }
}

TEST_CASE("A check that gets no answer within the timeout fails", "[integration][health]") {
  Origin silent([](const RecordedRequest&) { return Reply{.no_response = true}; });
  weldr::Pool pool;
  REQUIRE(pool.add(address_of(silent.endpoint_url())));
  CheckerThread hc(pool, fast_options());
  REQUIRE(eventually([&] { return state_of(pool, silent.id()) == BackendState::down; }));
  const auto s = hc.checker().status(silent.id());
  REQUIRE(s);
  CHECK_FALSE(s->up);
  CHECK(s->last_result != "ok");
}

TEST_CASE("New default settings take effect at runtime", "[integration][health]") {
  Origin origin;  // "/" answers 200, "/fail" 404
  weldr::Pool pool;
  REQUIRE(pool.add(address_of(origin.endpoint_url())));
  auto slow = fast_options();
  slow.interval = 10s;
  CheckerThread hc(pool, slow);
  // With these settings the backend waits up to 10 s for its first check, then 10 s between
  // checks: whichever wait it is in now, it must not be waited out.
  CHECK(hc.checker().defaults().interval == 10s);

  auto failing = fast_options();
  failing.path = "/fail";
  hc.checker().set_defaults(failing);
  CHECK(hc.checker().defaults().interval == 100ms);
  CHECK(hc.checker().defaults().path == "/fail");
  // The shorter interval applies without waiting out the old one.
  REQUIRE(eventually([&] { return state_of(pool, origin.id()) == BackendState::down; }, 5s));
  CHECK(count_path(origin, "/fail") >= 2);
}

TEST_CASE("A removed backend is no longer checked; a re-added one is", "[integration][health]") {
  Origin removed;
  Origin kept;
  weldr::Pool pool;
  REQUIRE(pool.add(address_of(removed.endpoint_url())));
  REQUIRE(pool.add(address_of(kept.endpoint_url())));
  CheckerThread hc(pool, fast_options());
  REQUIRE(removed.wait_for_requests(2, 5s));

  REQUIRE(pool.remove(removed.id()));
  CHECK_FALSE(pool.find(removed.id()));  // nothing in flight: it leaves at once
  CHECK(eventually([&] { return !hc.checker().status(removed.id()); }, 2s));
  const auto at_removal = removed.request_count();
  const auto kept_at_removal = kept.request_count();
  // Nothing to observe when checks do not happen: wait 5 intervals.
  std::this_thread::sleep_for(500ms);
  CHECK(removed.request_count() <= at_removal + 1);  // one check may have been in flight
  CHECK(kept.request_count() > kept_at_removal);     // the others go on

  REQUIRE(pool.add(address_of(removed.endpoint_url())));
  const auto at_readd = removed.request_count();
  CHECK(removed.wait_for_requests(at_readd + 2, 5s));
  CHECK(eventually([&] { return hc.checker().status(removed.id()).has_value(); }));
}

TEST_CASE("First checks of many backends are spread out", "[integration][health]") {
  constexpr std::size_t kBackends = 10;
  struct Arrivals {
    std::mutex mutex;
    std::array<std::optional<steady::time_point>, kBackends> first;  // guarded by mutex
  };
  auto arrivals = std::make_shared<Arrivals>();
  std::vector<std::unique_ptr<Origin>> origins;
  weldr::Pool pool;
  for (std::size_t i = 0; i < kBackends; ++i) {
    origins.push_back(std::make_unique<Origin>([arrivals, i](const RecordedRequest& request) {
      {
        std::lock_guard lock(arrivals->mutex);
        if (!arrivals->first[i]) arrivals->first[i] = steady::now();
      }
      return Origin::default_reply(request);
    }));
    REQUIRE(pool.add(address_of(origins.back()->endpoint_url())));
  }
  auto options = fast_options();
  options.interval = 1s;
  CheckerThread hc(pool, options);

  for (const auto& origin : origins)
    REQUIRE(origin->wait_for_requests(1, 5s));
  std::lock_guard lock(arrivals->mutex);
  const auto [earliest, latest] = std::minmax_element(arrivals->first.begin(), arrivals->first.end());
  const auto spread = std::chrono::duration_cast<std::chrono::microseconds>(**latest - **earliest);
  INFO("first checks spread over " << spread.count() << " us");
  CHECK(spread > 5ms);
}

TEST_CASE("One backend never has two checks in flight", "[integration][health]") {
  struct Arrivals {
    std::mutex mutex;
    std::vector<steady::time_point> times;  // guarded by mutex
  };
  auto arrivals = std::make_shared<Arrivals>();
  Origin slow([arrivals](const RecordedRequest&) {
    {
      std::lock_guard lock(arrivals->mutex);
      arrivals->times.push_back(steady::now());
    }
    return Reply{.delay = kAnswerDelay};
  });
  weldr::Pool pool;
  REQUIRE(pool.add(address_of(slow.endpoint_url())));
  auto options = fast_options();
  options.timeout = 1s;
  CheckerThread hc(pool, options);

  REQUIRE(slow.wait_for_requests(5, 5s));
  std::vector<steady::time_point> times;
  {
    std::lock_guard lock(arrivals->mutex);
    times = arrivals->times;
  }
  // The origin answers a request no earlier than kAnswerDelay after it arrived, so a checker
  // that waits for the answer sends the next request at least that long after the previous
  // one; any closer pair of arrivals was two checks in flight at once.
  std::size_t max_in_flight = 1;
  for (std::size_t i = 0; i < times.size(); ++i) {
    const auto in_flight =
        static_cast<std::size_t>(std::count_if(times.begin(), times.end(), [&](steady::time_point t) {
          return t >= times[i] && t < times[i] + kAnswerDelay;
        }));
    max_in_flight = std::max(max_in_flight, in_flight);
  }
  CHECK(max_in_flight == 1);
  const auto s = hc.checker().status(slow.id());
  REQUIRE(s);
  CHECK(s->up);
  CHECK(state_of(pool, slow.id()) == BackendState::active);
}

TEST_CASE("stop() ends every check and leaves each backend in its state", "[integration][health]") {
  Switch behaviour;
  behaviour.failing = true;
  Origin origin(behaviour.handler());
  weldr::Pool pool;
  REQUIRE(pool.add(address_of(origin.endpoint_url())));
  auto options = fast_options();
  options.path = "/health";
  CheckerThread hc(pool, options);
  REQUIRE(eventually([&] { return state_of(pool, origin.id()) == BackendState::down; }));

  hc.call([&] { hc.checker().stop(); });
  behaviour.failing = false;
  const auto at_stop = origin.request_count();
  // Nothing to observe when checks do not happen: wait 5 intervals.
  std::this_thread::sleep_for(500ms);
  CHECK(origin.request_count() <= at_stop + 1);  // one check may have been in flight
  CHECK(state_of(pool, origin.id()) == BackendState::down);
  // With nothing left to do, the checker's io_context runs out of work.
  CHECK(hc.shutdown());
  CHECK(state_of(pool, origin.id()) == BackendState::down);
}

TEST_CASE("A checker started again brings back a backend that is down and passes", "[integration][health]") {
  Switch behaviour;
  behaviour.failing = true;
  Origin origin(behaviour.handler());
  weldr::Pool pool;
  REQUIRE(pool.add(address_of(origin.endpoint_url())));
  auto options = fast_options();
  options.path = "/health";
  const auto comes_back = [&](CheckerThread& hc) {
    REQUIRE(eventually([&] { return state_of(pool, origin.id()) == BackendState::active; }));
    const auto s = hc.checker().status(origin.id());
    REQUIRE(s);
    CHECK(s->up);
  };

  SECTION("a new checker over the same pool") {
    {
      CheckerThread first(pool, options);
      REQUIRE(eventually([&] { return state_of(pool, origin.id()) == BackendState::down; }));
    }
    behaviour.failing = false;
    CheckerThread second(pool, options);
    comes_back(second);
  }
  SECTION("the same checker, stopped and started") {
    CheckerThread hc(pool, options);
    REQUIRE(eventually([&] { return state_of(pool, origin.id()) == BackendState::down; }));
    hc.call([&] { hc.checker().stop(); });
    behaviour.failing = false;
    hc.call([&] { hc.checker().start(); });
    comes_back(hc);
  }
}

TEST_CASE("stop() does not wait for a check in flight to time out", "[integration][health]") {
  Origin silent([](const RecordedRequest&) { return Reply{.no_response = true}; });
  weldr::Pool pool;
  REQUIRE(pool.add(address_of(silent.endpoint_url())));
  auto options = fast_options();
  options.interval = 1s;
  options.timeout = 30s;
  CheckerThread hc(pool, options);
  REQUIRE(silent.wait_for_requests(1, 5s));  // a check is in flight now, for up to 30 s
  // A host stops its checker, then waits for its io_context to run out of work.
  CHECK(hc.shutdown());
}

TEST_CASE("With every backend down the proxy answers 503 with Retry-After, or fails open", "[integration][health]") {
  // The check path fails but "/" works: only the health verdict keeps requests away.
  Origin origin([](const RecordedRequest& request) {
    if (request.path() == "/health") return Reply{.status = 503};
    return Origin::default_reply(request);
  });
  auto options = proxy_options();
  options.retry_after = 7;
  auto checks = fast_options();
  checks.path = "/health";

  SECTION("by default: 503") {
    TestProxy proxy({origin.endpoint_url()}, options);
    CheckerThread hc(proxy.pool(), checks);
    REQUIRE(eventually([&] { return state_of(proxy.pool(), origin.id()) == BackendState::down; }));
    const Response r = http_get(proxy.port(), "/");
    INFO(r.describe());
    CHECK(r.status == 503);
    CHECK(r.header("Retry-After") == "7");
    CHECK(count_path(origin, "/") == 0);
  }
  SECTION("fail_open: the down backend gets the request") {
    options.fail_open = true;
    TestProxy proxy({origin.endpoint_url()}, options);
    CheckerThread hc(proxy.pool(), checks);
    REQUIRE(eventually([&] { return state_of(proxy.pool(), origin.id()) == BackendState::down; }));
    CHECK_FALSE(failed_get(proxy.port()));
    CHECK(count_path(origin, "/") == 1);
  }
}

// --- Management API --------------------------------------------------------------------------

namespace {

constexpr std::string_view kJson = "Content-Type: application/json\r\n";

/// A host's control loop: one io_context thread running a ManagementApi and, unless told
/// otherwise, a HealthChecker that the API shows and configures.
class ControlPlane {
 public:
  explicit ControlPlane(std::optional<HealthCheckOptions> checks, std::string token = {}) {
    weldr::ApiOptions options;
    options.token = std::move(token);
    if (checks) {
      checker_ = std::make_unique<weldr::HealthChecker>(io_, pool_, std::move(*checks));
      options.health_checker = checker_.get();
    }
    api_ = std::make_unique<weldr::ManagementApi>(io_, pool_, stats_, std::move(options));
    api_->listen(asio::ip::tcp::endpoint(asio::ip::address_v4::loopback(), 0));
    port_ = api_->local_endpoint().port();
    if (checker_) checker_->start();
    work_.emplace(io_.get_executor());
    thread_ = std::thread([this] { io_.run(); });
  }

  ~ControlPlane() {
    auto stopped = std::make_shared<std::promise<void>>();
    auto done = stopped->get_future();
    asio::post(io_, [this, stopped] {
      api_->stop();
      if (checker_) checker_->stop();
      stopped->set_value();
    });
    static_cast<void>(done.wait_for(10s));
    work_.reset();
    io_.stop();
    thread_.join();
  }

  ControlPlane(const ControlPlane&) = delete;
  ControlPlane& operator=(const ControlPlane&) = delete;

  [[nodiscard]] weldr::Pool& pool() noexcept { return pool_; }
  [[nodiscard]] weldr::HealthChecker& checker() { return *checker_; }

  /// Sends one request to the API on a connection of its own.
  [[nodiscard]] Response api(std::string_view method, std::string_view target, std::string_view body = {},
                             std::string_view headers = {}) const {
    Client client(port_);
    return client.exchange(make_request(method, target, body, headers));
  }

 private:
  // The io_context goes away after the API and the checker (declared after it), and before
  // the Stats and Pool they refer to.
  weldr::Pool pool_;
  weldr::Stats stats_;
  asio::io_context io_;
  std::unique_ptr<weldr::HealthChecker> checker_;
  std::unique_ptr<weldr::ManagementApi> api_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread thread_;
  std::uint16_t port_{0};
};

/// The body of `r`, which must be JSON.
rapidjson::Document json_of(const Response& r) {
  INFO(r.describe() << " body: " << r.body);
  REQUIRE(r.complete);
  rapidjson::Document doc;
  doc.Parse(r.body.data(), r.body.size());
  REQUIRE_FALSE(doc.HasParseError());
  return doc;
}

/// The member `key` of `object`, which must be present.
const rapidjson::Value& member(const rapidjson::Value& object, const char* key) {
  INFO("member " << key);
  REQUIRE(object.IsObject());
  const auto it = object.FindMember(key);
  REQUIRE(it != object.MemberEnd());
  return it->value;
}

/// The string member `key` of `object`; fails the test when it is absent or not a string.
std::string text(const rapidjson::Value& object, const char* key) {
  const auto& v = member(object, key);
  INFO("member " << key);
  REQUIRE(v.IsString());
  return {v.GetString(), v.GetStringLength()};
}

/// The unsigned member `key` of `object`; fails the test when it is absent or not a count.
std::uint64_t count(const rapidjson::Value& object, const char* key) {
  const auto& v = member(object, key);
  INFO("member " << key);
  REQUIRE(v.IsUint64());
  return v.GetUint64();
}

/// The server with this id in a GET /servers answer.
const rapidjson::Value& server_in(const rapidjson::Value& servers, const std::string& id) {
  REQUIRE(servers.IsArray());
  for (const auto& s : servers.GetArray()) {
    if (s.IsObject() && s.HasMember("id") && s["id"].IsString() && id == s["id"].GetString()) return s;
  }
  FAIL("no server " << id);
  throw std::logic_error("unreachable");
}

/// Checks that `r` is an error with `status` and a JSON body {"error": "<non-empty>"}.
void check_error(const Response& r, int status) {
  INFO(r.describe() << " body: " << r.body);
  REQUIRE(r.complete);
  CHECK(r.status == status);
  CHECK(r.header("Content-Type").starts_with("application/json"));
  const auto doc = json_of(r);
  CHECK_FALSE(text(doc, "error").empty());
}

/// The settings a GET or PUT of /config/health-check answered with.
HealthCheckOptions settings_of(const Response& r) {
  INFO(r.describe() << " body: " << r.body);
  REQUIRE(r.complete);
  REQUIRE(r.status == 200);
  CHECK(r.header("Content-Type").starts_with("application/json"));
  REQUIRE(json_of(r).IsObject());
  std::string error;
  const auto settings = weldr::apply_check_json(HealthCheckOptions{}, r.body, error);
  INFO("error: " << error);
  REQUIRE(settings);
  return *settings;
}

}  // namespace

TEST_CASE("API: every server shows its health", "[integration][health][api]") {
  Origin healthy;
  Origin failing([](const RecordedRequest&) { return Reply{.status = 500}; });
  ControlPlane cp(fast_options());
  REQUIRE(cp.pool().add(address_of(healthy.endpoint_url())));
  const Response created = cp.api("POST", "/servers", R"({"url": ")" + failing.endpoint_url() + R"("})", kJson);
  REQUIRE(created.status == 201);
  REQUIRE(eventually([&] { return state_of(cp.pool(), failing.id()) == BackendState::down; }));
  REQUIRE(eventually([&] {
    const auto s = cp.checker().status(healthy.id());
    return s && s->checks >= 2;
  }));

  const Response r = cp.api("GET", "/servers");
  INFO(r.describe() << " body: " << r.body);
  REQUIRE(r.status == 200);
  const auto doc = json_of(r);

  const auto& down = server_in(doc, failing.id());
  CHECK(text(down, "state") == "down");
  const auto& down_health = member(down, "health");
  CHECK(text(down_health, "status") == "down");
  CHECK(count(down_health, "consecutive_failures") >= 2);
  CHECK(count(down_health, "consecutive_passes") == 0);
  CHECK_FALSE(text(down_health, "reason").empty());
  CHECK_FALSE(text(down_health, "last_change").empty());

  const auto& up = server_in(doc, healthy.id());
  CHECK(text(up, "state") == "active");
  const auto& up_health = member(up, "health");
  CHECK(text(up_health, "status") == "up");
  CHECK(count(up_health, "consecutive_failures") == 0);
  CHECK(count(up_health, "consecutive_passes") >= 2);
  CHECK(member(up_health, "reason").IsString());
  const auto& never = member(up_health, "last_change");
  CHECK((never.IsNull() || never.IsString()));

  // The single-server resource shows it too.
  const Response one = cp.api("GET", "/servers/127.0.0.1/" + std::to_string(failing.port()));
  INFO(one.describe() << " body: " << one.body);
  REQUIRE(one.status == 200);
  CHECK(text(member(json_of(one), "health"), "status") == "down");
}

TEST_CASE("API: GET and PUT /config/health-check read and change the defaults", "[integration][health][api]") {
  Origin origin;  // "/" answers 200, "/fail" 404
  ControlPlane cp(fast_options());
  REQUIRE(cp.pool().add(address_of(origin.endpoint_url())));

  const auto initial = settings_of(cp.api("GET", "/config/health-check"));
  CHECK(initial.path == "/");
  CHECK(initial.interval == 100ms);
  CHECK(initial.timeout == 200ms);
  CHECK(initial.failures == 2);
  CHECK(initial.passes == 2);
  CHECK(initial.expect_min == 200);
  CHECK(initial.expect_max == 299);

  SECTION("a valid change takes effect; fields it does not name stay") {
    const auto answered =
        settings_of(cp.api("PUT", "/config/health-check", R"({"path": "/fail", "failures": 3})", kJson));
    CHECK(answered.path == "/fail");
    CHECK(answered.failures == 3);
    CHECK(answered.interval == 100ms);
    const auto read = settings_of(cp.api("GET", "/config/health-check"));
    CHECK(read.path == "/fail");
    CHECK(read.failures == 3);
    CHECK(cp.checker().defaults().path == "/fail");
    REQUIRE(eventually([&] { return state_of(cp.pool(), origin.id()) == BackendState::down; }));
    CHECK(count_path(origin, "/fail") >= 3);
  }
  SECTION("an invalid change is refused and changes nothing") {
    for (const char* bad : {R"({"failures": 0})", R"({"interval": "soon"})", R"({"type": "udp"})",
                            R"({"expect": "399-200"})", R"({"bogus": 1})", "[]", "not json", ""}) {
      INFO(bad);
      check_error(cp.api("PUT", "/config/health-check", bad, kJson), 400);
    }
    check_error(cp.api("PUT", "/config/health-check", R"({"path": "/fail"})", "Content-Type: text/plain\r\n"), 415);
    const auto read = settings_of(cp.api("GET", "/config/health-check"));
    CHECK(read.path == "/");
    CHECK(read.failures == 2);
    CHECK(cp.checker().defaults().failures == 2);
  }
  SECTION("other methods are not allowed") {
    for (const char* method : {"POST", "DELETE", "PATCH"}) {
      INFO(method);
      const Response r = cp.api(method, "/config/health-check", R"({"path": "/fail"})", kJson);
      check_error(r, 405);
      CHECK(r.header("Allow").find("PUT") != std::string::npos);
    }
    CHECK(cp.checker().defaults().path == "/");
  }
}

TEST_CASE("API: /config/health-check needs the token like everything else", "[integration][health][api]") {
  ControlPlane cp(fast_options(), "s3cret");
  check_error(cp.api("PUT", "/config/health-check", R"({"path": "/fail"})", kJson), 401);
  check_error(cp.api("GET", "/config/health-check"), 401);
  CHECK(cp.checker().defaults().path == "/");
  const auto changed = settings_of(cp.api("PUT", "/config/health-check", R"({"path": "/fail"})",
                                          "Authorization: Bearer s3cret\r\nContent-Type: application/json\r\n"));
  CHECK(changed.path == "/fail");
}

TEST_CASE("API: without a health checker there is no health to show or configure", "[integration][health][api]") {
  Origin origin;
  ControlPlane cp(std::nullopt);
  REQUIRE(cp.pool().add(address_of(origin.endpoint_url())));
  const auto servers = json_of(cp.api("GET", "/servers"));
  CHECK_FALSE(server_in(servers, origin.id()).HasMember("health"));
  check_error(cp.api("GET", "/config/health-check"), 404);
  check_error(cp.api("PUT", "/config/health-check", R"({"path": "/fail"})", kJson), 404);
}

TEST_CASE("API: a server's check settings are validated at registration", "[integration][health][api]") {
  Origin origin;
  ControlPlane cp(fast_options());
  for (const char* check : {R"({"failures": 0})", R"({"type": "udp"})", R"({"path": "health"})", R"({"bogus": 1})"}) {
    INFO(check);
    check_error(
        cp.api("POST", "/servers", R"({"url": ")" + origin.endpoint_url() + R"(", "check": )" + check + "}", kJson),
        400);
  }
  CHECK(cp.pool().size() == 0);
  const Response ok =
      cp.api("POST", "/servers",
             R"({"url": ")" + origin.endpoint_url() + R"(", "check": {"type": "tcp", "interval": "1s"}})", kJson);
  INFO(ok.describe() << " body: " << ok.body);
  CHECK(ok.status == 201);
  REQUIRE(eventually([&] { return cp.checker().status(origin.id()).has_value(); }));
}
