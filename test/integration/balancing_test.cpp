// Balancing integration tests: the policies, outlier detection (passive health), the retry
// budget, slow start and draining, end to end over 127.0.0.1. Origins are in-process, the Proxy
// runs on a thread of its own (TestProxy), and a HealthChecker, where one is used, on a third.
//
// Every wait is bounded: polls have deadlines of a few seconds and every client read a timeout.

#include <weldr/balancer.hpp>
#include <weldr/health_checker.hpp>
#include <weldr/log.hpp>
#include <weldr/pool.hpp>
#include <weldr/proxy.hpp>

#include "client.hpp"
#include "fixtures.hpp"
#include "origin.hpp"

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
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
#include <map>
#include <memory>
#include <optional>
#include <set>
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

/// Outlier detection after `failures` failed requests in a row, for `base` at first.
weldr::OutlierOptions outlier(unsigned failures, std::chrono::milliseconds base) {
  weldr::OutlierOptions o;
  o.consecutive_failures = failures;
  o.base_ejection_time = base;
  o.max_ejection_time = std::max<std::chrono::milliseconds>(base, 10s);
  return o;
}

/// Number of requests `origin` received for `path`.
std::size_t count_path(const Origin& origin, std::string_view path) {
  const auto requests = origin.requests();
  return static_cast<std::size_t>(
      std::count_if(requests.begin(), requests.end(), [&](const RecordedRequest& r) { return r.path() == path; }));
}

/// Number of backends of `pool` that outlier detection keeps out right now.
std::size_t ejected_count(const weldr::Pool& pool) {
  const auto backends = pool.list();
  return static_cast<std::size_t>(
      std::count_if(backends.begin(), backends.end(), [](const auto& b) { return b->ejected(); }));
}

/// Time since `backend` last became usable (the start of its slow start).
std::chrono::nanoseconds usable_for(const weldr::Backend& backend) {
  return steady::now().time_since_epoch() - std::chrono::nanoseconds(backend.usable_since_ns());
}

/// Sequential requests on one keep-alive connection, opened again whenever the proxy closes it.
class Sequential {
 public:
  explicit Sequential(std::uint16_t port) : port_(port) {}

  /// Sends GET `path` with `headers` (each ending in "\r\n") and reads the response.
  Response get(std::string_view path = "/", std::string_view headers = {}) {
    if (!client_) client_ = std::make_unique<Client>(port_, 5s);
    Response r = client_->exchange(make_request("GET", path, {}, headers));
    if (!r.complete || !r.keep_alive) client_.reset();
    return r;
  }

 private:
  std::uint16_t port_;
  std::unique_ptr<Client> client_;
};

/// An origin's behaviour that the test switches at any time: "/" answers 500 while `failing`,
/// "/health" answers 503 while not `healthy` (and counts the passes it serves); everything else
/// is the origin's default.
struct Flaky {
  std::atomic<bool> failing{false};
  std::atomic<bool> healthy{true};
  std::atomic<int> passes{0};

  [[nodiscard]] Handler handler() {
    return [this](const RecordedRequest& request) {
      if (request.path() == "/health") {
        if (!healthy.load()) return Reply{.status = 503, .body = "sick"};
        ++passes;
        return Reply{.body = "ok"};
      }
      if (failing.load() && request.path() == "/") return Reply{.status = 500, .body = "broken"};
      return Origin::default_reply(request);
    };
  }
};

/// Lowers the library's log level to errors for the life of the guard (for tests that provoke
/// hundreds of expected warnings).
class QuietLog {
 public:
  QuietLog() : old_(weldr::log_level()) { weldr::set_log_level(weldr::LogLevel::error); }
  ~QuietLog() { weldr::set_log_level(old_); }
  QuietLog(const QuietLog&) = delete;
  QuietLog& operator=(const QuietLog&) = delete;

 private:
  weldr::LogLevel old_;
};

/// Sends `per_client` GETs of "/" from each of `clients` threads at once, each thread one after
/// another on fresh connections; returns a description of every request that did not get 200.
std::vector<std::string> concurrent_gets(std::uint16_t port, int clients, int per_client) {
  std::vector<std::vector<std::string>> failures(static_cast<std::size_t>(clients));
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([port, per_client, &out = failures[static_cast<std::size_t>(t)], t] {
      for (int i = 0; i < per_client; ++i) {
        try {
          const Response r = http_get(port, "/");
          if (!r.complete || r.status != 200) {
            out.push_back("client " + std::to_string(t) + " request " + std::to_string(i) + ": " + r.describe());
          }
        } catch (const std::exception& e) {
          out.push_back("client " + std::to_string(t) + " request " + std::to_string(i) + ": " + e.what());
        }
      }
    });
  }
  for (auto& thread : threads)
    thread.join();
  std::vector<std::string> all;
  for (const auto& f : failures)
    all.insert(all.end(), f.begin(), f.end());
  return all;
}

}  // namespace

// --- Outlier detection -----------------------------------------------------------------------

TEST_CASE("Outlier detection ejects a backend after 5 failures in a row; its time over, it is back",
          "[integration][balancing]") {
  constexpr auto kEjection = 1000ms;
  Flaky flaky;
  flaky.failing = true;
  Origin bad(flaky.handler());
  Origin good1;
  Origin good2;
  TestProxy proxy({bad.endpoint_url(), good1.endpoint_url(), good2.endpoint_url()}, proxy_options());
  auto& pool = proxy.pool();
  pool.set_outlier_detection(outlier(5, kEjection));
  const auto backend = pool.find(bad.id());
  REQUIRE(backend);
  Sequential client(proxy.port());

  // Round robin over three: the bad backend gets every third request, the 5th of them at 13.
  for (int i = 0; i < 15; ++i) {
    const Response r = client.get();
    INFO(i << ": " << r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == (i % 3 == 0 ? 500 : 200));
  }
  REQUIRE(eventually([&] { return backend->ejections() == 1; }, 2s));
  CHECK(bad.request_count() == 5);
  CHECK(backend->failures() == 5);
  CHECK(backend->consecutive_failures() == 0);  // reset by the ejection
  CHECK(backend->state() == BackendState::active);
  CHECK(backend->ejection_left() <= kEjection);

  // While ejected it gets nothing, and every request succeeds.
  int sent = 0;
  while (backend->ejected() && backend->ejection_left() > 300ms && sent < 30) {
    const Response r = client.get();
    INFO("while ejected: " << sent << ": " << r.describe());
    CHECK(r.status == 200);
    ++sent;
  }
  CHECK(sent > 0);
  CHECK(bad.request_count() == 5);

  // It recovers; once its ejection time is over it is picked again, with no checker involved.
  flaky.failing = false;
  REQUIRE(eventually([&] { return !backend->ejected(); }, 3s));
  CHECK(backend->usable());
  CHECK(backend->ejection_left() == 0ms);
  for (int i = 0; i < 9; ++i) {
    const Response r = client.get();
    INFO("after the ejection: " << i << ": " << r.describe());
    CHECK(r.status == 200);
  }
  CHECK(bad.request_count() == 5 + 3);
  CHECK(backend->ejections() == 1);
  CHECK(backend->successes() == 3);
}

TEST_CASE("With a health checker, an ejected backend whose time is over returns only after 2 passed checks",
          "[integration][balancing]") {
  Flaky flaky;
  flaky.failing = true;
  flaky.healthy = false;
  Flaky fine1;
  Flaky fine2;
  Origin bad(flaky.handler());
  Origin good1(fine1.handler());
  Origin good2(fine2.handler());
  TestProxy proxy({bad.endpoint_url(), good1.endpoint_url(), good2.endpoint_url()}, proxy_options());
  auto& pool = proxy.pool();
  pool.set_outlier_detection(outlier(5, 300ms));
  HealthCheckOptions checks;
  checks.path = "/health";
  checks.interval = 50ms;
  checks.timeout = 1s;
  checks.failures = 1000;  // the active checks never take it down: only the ejection keeps it out
  checks.passes = 2;
  CheckerThread hc(pool, checks);
  const auto backend = pool.find(bad.id());
  REQUIRE(backend);
  Sequential client(proxy.port());

  for (int i = 0; i < 15; ++i) {
    const Response r = client.get();
    INFO(i << ": " << r.describe());
    REQUIRE(r.complete);
    CHECK(r.status == (i % 3 == 0 ? 500 : 200));
  }
  REQUIRE(eventually([&] { return backend->ejections() == 1; }, 2s));
  CHECK(count_path(bad, "/") == 5);

  // The ejection time runs out while the checks still fail: it stays out.
  REQUIRE(eventually([&] { return backend->ejection_left() == 0ms; }, 3s));
  const auto checks_then = count_path(bad, "/health");
  REQUIRE(eventually([&] { return count_path(bad, "/health") >= checks_then + 3; }, 3s));
  CHECK(backend->ejected());
  CHECK_FALSE(backend->usable());
  CHECK(backend->state() == BackendState::active);
  for (int i = 0; i < 6; ++i) {
    const Response r = client.get();
    INFO("time over, checks failing: " << i << ": " << r.describe());
    CHECK(r.status == 200);
  }
  CHECK(count_path(bad, "/") == 5);
  CHECK(backend->ejected());

  // It recovers: after two passed checks it is back and gets its share again.
  flaky.failing = false;
  flaky.healthy = true;
  REQUIRE(eventually([&] { return !backend->ejected(); }, 3s));
  CHECK(flaky.passes.load() >= 2);
  CHECK(backend->usable());
  for (int i = 0; i < 9; ++i) {
    const Response r = client.get();
    INFO("after passing: " << i << ": " << r.describe());
    CHECK(r.status == 200);
  }
  CHECK(count_path(bad, "/") == 5 + 3);
  CHECK(backend->ejections() == 1);
}

TEST_CASE("A backend ejected again soon after it returns stays out twice as long", "[integration][balancing]") {
  constexpr auto kBase = 400ms;
  Flaky flaky;
  flaky.failing = true;
  Origin bad(flaky.handler());
  Origin good1;
  Origin good2;
  TestProxy proxy({bad.endpoint_url(), good1.endpoint_url(), good2.endpoint_url()}, proxy_options());
  auto& pool = proxy.pool();
  pool.set_outlier_detection(outlier(5, kBase));
  const auto backend = pool.find(bad.id());
  REQUIRE(backend);
  Sequential client(proxy.port());

  // Any 15 requests in a row give each of the three backends 5 of them.
  const auto fail_five_times = [&] {
    int errors = 0;
    for (int i = 0; i < 15; ++i) {
      const Response r = client.get();
      INFO(i << ": " << r.describe());
      REQUIRE(r.complete);
      if (r.status == 500) ++errors;
    }
    CHECK(errors == 5);
  };

  fail_five_times();
  REQUIRE(eventually([&] { return backend->ejections() == 1; }, 2s));
  CHECK(backend->ejection_left() <= kBase);
  REQUIRE(eventually([&] { return !backend->ejected(); }, 3s));

  // Still failing: the next ejection comes within one base time, and lasts twice as long.
  fail_five_times();
  REQUIRE(eventually([&] { return backend->ejections() == 2; }, 2s));
  const auto left = backend->ejection_left();
  INFO("second ejection: " << left.count() << " ms left");
  CHECK(left > kBase);
  CHECK(left <= 2 * kBase);
  CHECK(bad.request_count() == 10);
}

TEST_CASE("Outlier detection ejects at most half of the pool at once", "[integration][balancing]") {
  for (const std::size_t n : {std::size_t{2}, std::size_t{4}}) {
    DYNAMIC_SECTION(n << " backends, all failing") {
      std::vector<std::unique_ptr<Origin>> origins;
      std::vector<std::string> urls;
      for (std::size_t i = 0; i < n; ++i) {
        origins.push_back(
            std::make_unique<Origin>([](const RecordedRequest&) { return Reply{.status = 500, .body = "broken"}; }));
        urls.push_back(origins.back()->endpoint_url());
      }
      TestProxy proxy(urls, proxy_options());
      auto& pool = proxy.pool();
      pool.set_outlier_detection(outlier(5, 10s));
      Sequential client(proxy.port());

      std::size_t most_ejected = 0;
      for (std::size_t i = 0; i < 10 * n; ++i) {
        const Response r = client.get();
        INFO(i << ": " << r.describe());
        CHECK(r.status == 500);  // relayed: never a 503 of the proxy's own
        most_ejected = std::max(most_ejected, ejected_count(pool));
      }
      CHECK(most_ejected <= n / 2);
      REQUIRE(eventually([&] { return ejected_count(pool) == n / 2; }, 2s));
      std::uint64_t ejections = 0;
      for (const auto& b : pool.list()) {
        INFO(b->id() << ": ejections " << b->ejections() << ", failures in a row " << b->consecutive_failures());
        ejections += b->ejections();
        if (!b->ejected()) {
          // Kept in by the cap: it goes on failing and taking traffic.
          CHECK(b->consecutive_failures() > 5);
          CHECK(b->ejections() == 0);
        }
      }
      CHECK(ejections == n / 2);
      CHECK(ejected_count(pool) == n / 2);
    }
  }
}

// --- Retries -----------------------------------------------------------------------------------

TEST_CASE("The retry budget caps retries to a dead backend at a share of the requests", "[integration][balancing]") {
  const QuietLog quiet;  // a warning per failed connect otherwise
  const RefusingPort dead;
  Origin live;
  auto options = proxy_options();
  options.retries = 1;
  options.retry_budget_min = 0;
  constexpr std::uint64_t kRequests = 200;

  const auto run = [&](TestProxy& proxy, std::uint64_t& ok, std::uint64_t& bad_gateway) {
    proxy.pool().set_outlier_detection(outlier(0, 1s));  // off: the dead backend stays in rotation
    Sequential client(proxy.port());
    for (std::uint64_t i = 0; i < kRequests; ++i) {
      const Response r = client.get();
      if (r.complete && r.status == 200) {
        ++ok;
      } else if (r.complete && r.status == 502) {
        ++bad_gateway;
      } else {
        FAIL_CHECK(i << ": " << r.describe());
      }
    }
  };

  SECTION("a 20% budget: retries stay within it, the rest get 502") {
    options.retry_budget_percent = 20;
    TestProxy proxy({dead.url(), live.endpoint_url()}, options);
    std::uint64_t ok = 0;
    std::uint64_t bad_gateway = 0;
    run(proxy, ok, bad_gateway);
    const auto c = proxy.counters();
    const auto dead_backend = proxy.pool().find(dead.id());
    REQUIRE(dead_backend);
    INFO("retries " << c.retries << ", denied " << c.retries_denied << ", 200: " << ok << ", 502: " << bad_gateway);
    CHECK(c.requests == kRequests);
    CHECK(c.retries > 0);
    CHECK(c.retries <= kRequests * 20 / 100 + 1);
    CHECK(c.retries_denied > 0);
    CHECK(bad_gateway == c.retries_denied);  // exactly the requests whose retry was refused
    CHECK(ok + bad_gateway == kRequests);
    CHECK(live.request_count() == ok);
    // Every request that met the dead backend was either retried or refused a retry.
    CHECK(dead_backend->requests() == c.retries + c.retries_denied);
    CHECK_FALSE(dead_backend->ejected());
  }

  SECTION("a 100% budget: every request that meets the dead backend is retried") {
    options.retry_budget_percent = 100;
    TestProxy proxy({dead.url(), live.endpoint_url()}, options);
    std::uint64_t ok = 0;
    std::uint64_t bad_gateway = 0;
    run(proxy, ok, bad_gateway);
    const auto c = proxy.counters();
    const auto dead_backend = proxy.pool().find(dead.id());
    REQUIRE(dead_backend);
    INFO("retries " << c.retries << ", denied " << c.retries_denied);
    CHECK(ok == kRequests);
    CHECK(bad_gateway == 0);
    CHECK(c.retries_denied == 0);
    CHECK(c.retries > 0);
    CHECK(c.retries == dead_backend->requests());
    CHECK(live.request_count() == kRequests);
  }
}

TEST_CASE("An origin killed while traffic flows costs no client request: retries, then ejection",
          "[integration][balancing]") {
  auto doomed = std::make_unique<Origin>();
  Origin survivor;
  const std::string doomed_id = doomed->id();
  TestProxy proxy({doomed->endpoint_url(), survivor.endpoint_url()}, proxy_options());  // outlier defaults
  const auto backend = proxy.pool().find(doomed_id);
  REQUIRE(backend);
  REQUIRE(proxy.pool().outlier_detection().consecutive_failures == 5);

  // The origin dies at some moment while requests go on, one after another, without pause.
  std::atomic<bool> killed{false};
  std::thread killer([&] {
    std::this_thread::sleep_for(150ms);
    doomed.reset();
    killed = true;
  });
  Sequential client(proxy.port());
  std::vector<std::string> failures;
  int sent = 0;
  int after_kill = 0;
  const auto deadline = steady::now() + 10s;
  while (after_kill < 40 && steady::now() < deadline) {
    const bool was_killed = killed.load();
    const Response r = client.get();
    if (!r.complete || r.status != 200 || r.body != "Hello World") {
      failures.push_back(std::to_string(sent) + ": " + r.describe());
    }
    ++sent;
    if (was_killed) ++after_kill;
  }
  killer.join();
  INFO("sent " << sent << " requests, " << after_kill << " after the kill");
  for (const auto& f : failures)
    UNSCOPED_INFO(f);
  CHECK(failures.empty());
  CHECK(after_kill == 40);

  REQUIRE(eventually([&] { return backend->ejections() == 1; }, 2s));
  CHECK(backend->ejected());
  CHECK(backend->failures() == 5);
  const auto c = proxy.counters();
  CHECK(c.retries == 5);  // each failure on the dead origin, retried on the survivor
  CHECK(c.retries_denied == 0);
  CHECK(c.requests == static_cast<std::uint64_t>(sent));
}

// --- Policies ------------------------------------------------------------------------------------

TEST_CASE("least_conn and p2c send most requests to the idle backend when the other is slow",
          "[integration][balancing]") {
  constexpr int kClients = 8;
  constexpr int kPerClient = 10;
  constexpr std::size_t kTotal = kClients * kPerClient;
  for (const std::string_view policy : {"least_conn", "p2c", "round_robin"}) {
    DYNAMIC_SECTION(policy) {
      Origin slow([](const RecordedRequest& request) {
        Reply reply = Origin::default_reply(request);
        reply.delay = 300ms;
        return reply;
      });
      Origin fast;
      TestProxy proxy({slow.endpoint_url(), fast.endpoint_url()}, proxy_options());
      proxy.pool().set_balancer(weldr::make_balancer(policy));

      const auto failures = concurrent_gets(proxy.port(), kClients, kPerClient);
      for (const auto& f : failures)
        UNSCOPED_INFO(f);
      CHECK(failures.empty());
      const std::size_t to_slow = slow.request_count();
      const std::size_t to_fast = fast.request_count();
      INFO(policy << ": fast " << to_fast << ", slow " << to_slow);
      CHECK(to_slow + to_fast == kTotal);
      if (policy == "round_robin") {
        // Blind to load: about half each.
        CHECK(to_fast * 100 >= kTotal * 40);
        CHECK(to_fast * 100 <= kTotal * 60);
      } else {
        CHECK(to_fast * 100 > kTotal * 75);
      }
    }
  }
}

TEST_CASE("round_robin with weights 1 and 3 sends exactly 1 request in 4 to the light backend",
          "[integration][balancing]") {
  Origin light;
  Origin heavy;
  TestProxy proxy({}, proxy_options());
  REQUIRE(proxy.pool().add(address_of(light.endpoint_url()), "", 1));
  REQUIRE(proxy.pool().add(address_of(heavy.endpoint_url()), "", 3));
  Sequential client(proxy.port());
  for (int i = 0; i < 40; ++i) {
    const Response r = client.get();
    INFO(i << ": " << r.describe());
    CHECK(r.status == 200);
  }
  CHECK(light.request_count() == 10);
  CHECK(heavy.request_count() == 30);
}

TEST_CASE("random follows the weights", "[integration][balancing]") {
  Origin light;
  Origin heavy;
  TestProxy proxy({}, proxy_options());
  proxy.pool().set_balancer(weldr::make_balancer("random"));
  REQUIRE(proxy.pool().add(address_of(light.endpoint_url()), "", 1));
  REQUIRE(proxy.pool().add(address_of(heavy.endpoint_url()), "", 3));
  Sequential client(proxy.port());
  constexpr std::size_t kRequests = 200;
  for (std::size_t i = 0; i < kRequests; ++i) {
    const Response r = client.get();
    INFO(i << ": " << r.describe());
    REQUIRE(r.status == 200);
  }
  const std::size_t to_heavy = heavy.request_count();
  INFO("heavy " << to_heavy << ", light " << light.request_count());
  CHECK(light.request_count() + to_heavy == kRequests);
  // Expected 150 (standard deviation about 6): a wide band, still well clear of an even split.
  CHECK(to_heavy >= 120);
  CHECK(to_heavy <= 180);
}

namespace {

/// Three origins behind a proxy that balances with the hash policy on `key`.
struct HashSetup {
  explicit HashSetup(const weldr::HashKey& key)
      : proxy({origins[0].endpoint_url(), origins[1].endpoint_url(), origins[2].endpoint_url()}, options_for(key)) {
    proxy.pool().set_balancer(weldr::make_balancer("hash"));
  }

  static weldr::ProxyOptions options_for(const weldr::HashKey& key) {
    auto o = proxy_options();
    o.hash_key = key;
    return o;
  }

  /// For each value of header `name` the origins saw for `path`, the indices of the origins
  /// that got it.
  [[nodiscard]] std::map<std::string, std::set<std::size_t>> where(std::string_view name,
                                                                   std::string_view path = "/") const {
    std::map<std::string, std::set<std::size_t>> out;
    for (std::size_t i = 0; i < origins.size(); ++i) {
      for (const auto& r : origins[i].requests()) {
        if (r.path() == path) out[r.header(name)].insert(i);
      }
    }
    return out;
  }

  std::array<Origin, 3> origins;
  TestProxy proxy;
};

}  // namespace

TEST_CASE("hash on a header: a user sticks to one backend, users spread, keyless requests go round robin",
          "[integration][balancing]") {
  const auto key = weldr::parse_hash_key("header:X-User");
  REQUIRE(key);
  CHECK(key->source == weldr::HashKey::Source::header);
  HashSetup setup(*key);
  Sequential client(setup.proxy.port());

  constexpr int kUsers = 24;
  for (int round = 0; round < 5; ++round) {
    for (int u = 0; u < kUsers; ++u) {
      // The header name is case-insensitive.
      const std::string name = round % 2 == 0 ? "X-User" : "x-user";
      const Response r = client.get("/", name + ": user-" + std::to_string(u) + "\r\n");
      INFO("round " << round << ", user " << u << ": " << r.describe());
      REQUIRE(r.status == 200);
    }
  }
  const auto where = setup.where("X-User");
  CHECK(where.size() == static_cast<std::size_t>(kUsers));
  std::set<std::size_t> used;
  for (const auto& [user, origins] : where) {
    INFO(user << " went to " << origins.size() << " origins");
    CHECK(origins.size() == 1);
    used.insert(origins.begin(), origins.end());
  }
  CHECK(used.size() >= 2);  // 24 users on one origin of three: probability 3^-23

  // Requests without the header go round robin: exactly 3 each of 9.
  for (int i = 0; i < 9; ++i) {
    const Response r = client.get("/nokey");
    INFO("keyless " << i << ": " << r.describe());
    CHECK(r.status == 404);  // the origins' default for an unknown path; relayed
  }
  for (const auto& origin : setup.origins)
    CHECK(count_path(origin, "/nokey") == 3);
}

TEST_CASE("hash: the users of an ejected backend move to the others and come back; nobody else moves",
          "[integration][balancing]") {
  constexpr auto kEjection = 1000ms;
  std::array<Flaky, 3> behaviour;
  std::array<std::unique_ptr<Origin>, 3> origins;
  for (std::size_t i = 0; i < origins.size(); ++i)
    origins[i] = std::make_unique<Origin>(behaviour[i].handler());
  auto options = proxy_options();
  options.hash_key = {weldr::HashKey::Source::header, "X-User"};
  TestProxy proxy({origins[0]->endpoint_url(), origins[1]->endpoint_url(), origins[2]->endpoint_url()}, options);
  auto& pool = proxy.pool();
  pool.set_balancer(weldr::make_balancer("hash"));
  pool.set_outlier_detection(outlier(5, kEjection));
  Sequential client(proxy.port());

  constexpr int kUsers = 30;
  const auto user = [](int u) { return "X-User: user-" + std::to_string(u) + "\r\n"; };
  // Sends one request per user for `path` and returns the index of the origin each one reached.
  const auto round = [&](std::string_view path) {
    std::vector<std::size_t> placed(kUsers, origins.size());
    for (int u = 0; u < kUsers; ++u) {
      const Response r = client.get(path, user(u));
      INFO(path << " user " << u << ": " << r.describe());
      CHECK(r.status == 404);  // the origins' default for these paths: served, not failed
    }
    for (std::size_t i = 0; i < origins.size(); ++i) {
      for (const auto& r : origins[i]->requests()) {
        if (r.path() != path) continue;
        const int u = std::stoi(r.header("X-User").substr(5));
        placed[static_cast<std::size_t>(u)] = i;
      }
    }
    return placed;
  };

  const auto before = round("/before");
  const std::size_t victim = before[0];
  REQUIRE(victim < origins.size());
  const auto victim_backend = pool.find(origins[victim]->id());
  REQUIRE(victim_backend);

  // User 0's backend fails five times in a row: it is ejected.
  behaviour[victim].failing = true;
  for (int i = 0; i < 5; ++i) {
    const Response r = client.get("/", user(0));
    INFO("failing " << i << ": " << r.describe());
    CHECK(r.status == 500);
  }
  REQUIRE(eventually([&] { return victim_backend->ejections() == 1; }, 2s));
  behaviour[victim].failing = false;

  const auto during = round("/during");
  const auto during_again = round("/during-again");
  CHECK(victim_backend->ejected());  // both rounds ran within the ejection
  std::size_t moved = 0;
  for (std::size_t u = 0; u < static_cast<std::size_t>(kUsers); ++u) {
    INFO("user " << u << ": before " << before[u] << ", during " << during[u] << ", again " << during_again[u]);
    CHECK(during[u] == during_again[u]);  // still consistent
    if (before[u] == victim) {
      CHECK(during[u] != victim);
      CHECK(during[u] < origins.size());
      ++moved;
    } else {
      CHECK(during[u] == before[u]);  // only the victim's users move
    }
  }
  CHECK(moved >= 1);

  // Its time over, it takes its users back.
  REQUIRE(eventually([&] { return !victim_backend->ejected(); }, 3s));
  const auto after = round("/after");
  CHECK(after == before);
}

TEST_CASE("hash on a cookie: the session cookie alone decides the backend", "[integration][balancing]") {
  const auto key = weldr::parse_hash_key("cookie:session");
  REQUIRE(key);
  CHECK(key->source == weldr::HashKey::Source::cookie);
  CHECK(key->name == "session");
  HashSetup setup(*key);
  Sequential client(setup.proxy.port());

  constexpr int kSessions = 24;
  const std::vector<std::string> shapes = {"session={}", "theme=dark; session={}", "session={}; lang=fr; a=b",
                                           "x=1; session={}; y=2"};
  for (const auto& shape : shapes) {
    for (int s = 0; s < kSessions; ++s) {
      std::string cookie = shape;
      cookie.replace(cookie.find("{}"), 2, "s" + std::to_string(s));
      const Response r = client.get("/", "X-Session: s" + std::to_string(s) + "\r\nCookie: " + cookie + "\r\n");
      INFO(cookie << ": " << r.describe());
      REQUIRE(r.status == 200);
    }
  }
  const auto where = setup.where("X-Session");
  CHECK(where.size() == static_cast<std::size_t>(kSessions));
  std::set<std::size_t> used;
  for (const auto& [session, origins] : where) {
    INFO(session << " went to " << origins.size() << " origins");
    CHECK(origins.size() == 1);
    used.insert(origins.begin(), origins.end());
  }
  CHECK(used.size() >= 2);

  // Without the session cookie (other cookies do not count) requests go round robin.
  for (int i = 0; i < 9; ++i) {
    const Response r = client.get("/nokey", "Cookie: theme=dark; sessionx=1\r\n");
    INFO("keyless " << i << ": " << r.describe());
    CHECK(r.status == 404);
  }
  for (const auto& origin : setup.origins)
    CHECK(count_path(origin, "/nokey") == 3);
}

TEST_CASE("hash on the client IP: every request from 127.0.0.1 goes to one backend", "[integration][balancing]") {
  const auto key = weldr::parse_hash_key("client_ip");
  REQUIRE(key);
  HashSetup setup(*key);
  for (int i = 0; i < 20; ++i) {
    const Response r = http_get(setup.proxy.port(), "/");  // a new connection, a new source port
    INFO(i << ": " << r.describe());
    REQUIRE(r.status == 200);
  }
  std::vector<std::size_t> counts;
  for (const auto& origin : setup.origins)
    counts.push_back(origin.request_count());
  std::sort(counts.begin(), counts.end());
  CHECK(counts == std::vector<std::size_t>{0, 0, 20});
}

// --- Slow start and draining -----------------------------------------------------------------

TEST_CASE("Slow start: a backend that comes back gets a small share at first, then its full share",
          "[integration][balancing]") {
  constexpr auto kWindow = 1500ms;
  Flaky flaky;
  Origin returning(flaky.handler());
  Origin steady_origin;
  TestProxy proxy({returning.endpoint_url(), steady_origin.endpoint_url()}, proxy_options());
  auto& pool = proxy.pool();
  pool.set_slow_start(kWindow);
  pool.set_outlier_detection(outlier(5, 300ms));
  const auto back = pool.find(returning.id());
  const auto other = pool.find(steady_origin.id());
  REQUIRE(back);
  REQUIRE(other);
  Sequential client(proxy.port());

  // Sends requests for the first 300 ms after the backend came back (warmth 0.1 to 0.2), at
  // least 20 and at most 80, and checks that it got a small share of them (expected: 10-15%).
  const auto check_early_share = [&](std::string_view when) {
    const auto start = steady::now();
    const std::size_t before = returning.request_count();
    std::size_t sent = 0;
    while ((steady::now() - start < 300ms || sent < 20) && sent < 80) {
      const Response r = client.get();
      INFO(when << ": early " << sent << ": " << r.describe());
      REQUIRE(r.status == 200);
      ++sent;
    }
    const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
    const std::size_t to_back = returning.request_count() - before;
    INFO(when << ": " << sent << " requests in " << elapsed.count() << " ms, " << to_back
              << " to the returning backend");
    CHECK(to_back * 100 < sent * 35);
    CHECK(to_back * 2 < sent - to_back);
  };

  // Both were just added, which starts a slow start too: wait until that is over.
  REQUIRE(eventually([&] { return usable_for(*back) > kWindow && usable_for(*other) > kWindow; }, 5s));

  SECTION("down, then active again") {
    REQUIRE(pool.set_state(returning.id(), BackendState::down));
    for (int i = 0; i < 4; ++i) {
      const Response r = client.get();
      INFO("while down: " << i << ": " << r.describe());
      CHECK(r.status == 200);
    }
    CHECK(returning.request_count() == 0);

    REQUIRE(pool.set_state(returning.id(), BackendState::active));
    check_early_share("after down");

    // After the window: half each (round robin with both at full weight alternates exactly).
    REQUIRE(eventually([&] { return usable_for(*back) > kWindow; }, 5s));
    const std::size_t before = returning.request_count();
    constexpr std::size_t kLate = 40;
    for (std::size_t i = 0; i < kLate; ++i) {
      const Response r = client.get();
      INFO("late " << i << ": " << r.describe());
      REQUIRE(r.status == 200);
    }
    const std::size_t late_back = returning.request_count() - before;
    INFO("late phase: " << late_back << " of " << kLate << " to the returning backend");
    CHECK(late_back >= kLate * 4 / 10);
    CHECK(late_back <= kLate * 6 / 10);
  }

  SECTION("back from an ejection that ran out") {
    flaky.failing = true;
    int errors = 0;
    for (int i = 0; i < 10; ++i) {
      const Response r = client.get();
      INFO("failing: " << i << ": " << r.describe());
      REQUIRE(r.complete);
      if (r.status == 500) ++errors;
    }
    CHECK(errors == 5);
    REQUIRE(eventually([&] { return back->ejections() == 1; }, 2s));
    flaky.failing = false;
    REQUIRE(eventually([&] { return !back->ejected(); }, 3s));
    check_early_share("after the ejection");
  }
}

TEST_CASE("pool.remove() during a slow request: it completes, new ones go elsewhere, then the backend leaves",
          "[integration][balancing]") {
  Origin draining;
  Origin other;
  Gate gate;  // destroyed (opened) before the origins, which then never wait for it
  draining.set_handler(gate.handler("/slow"));
  TestProxy proxy({draining.endpoint_url(), other.endpoint_url()}, proxy_options());
  auto& pool = proxy.pool();
  const auto backend = pool.find(draining.id());
  REQUIRE(backend);

  // Round robin: the first request goes to the first backend, which holds it.
  Client in_flight(proxy.port());
  REQUIRE(in_flight.send(make_request("GET", "/slow")));
  REQUIRE(draining.wait_for_requests(1, 5s));
  REQUIRE(eventually([&] { return backend->active_requests() == 1; }, 2s));

  REQUIRE(pool.remove(draining.id()));
  CHECK(backend->state() == BackendState::draining);
  CHECK(pool.find(draining.id()) == backend);  // still there while its request runs
  CHECK(pool.size() == 2);
  CHECK_FALSE(pool.remove(draining.id()));  // already draining

  Sequential client(proxy.port());
  for (int i = 0; i < 10; ++i) {
    const Response r = client.get();
    INFO("while draining: " << i << ": " << r.describe());
    CHECK(r.status == 200);
    CHECK(r.body == "Hello World");
  }
  CHECK(count_path(other, "/") == 10);
  CHECK(draining.request_count() == 1);
  CHECK(backend->active_requests() == 1);
  CHECK(pool.find(draining.id()) == backend);

  gate.open();
  const Response finished = in_flight.read_response();
  INFO("the request in flight: " << finished.describe());
  CHECK(finished.complete);
  CHECK(finished.status == 200);
  CHECK(finished.body == "released");

  // It leaves the pool when its last request ends.
  CHECK(eventually([&] { return pool.find(draining.id()) == nullptr; }, 2s));
  CHECK(pool.size() == 1);
  CHECK(backend->active_requests() == 0);
  for (int i = 0; i < 4; ++i) {
    const Response r = client.get();
    INFO("after the drain: " << i << ": " << r.describe());
    CHECK(r.status == 200);
  }
  CHECK(draining.request_count() == 1);
  CHECK(count_path(other, "/") == 14);
}
