#include <weldr/pool.hpp>

#include <weldr/error.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <map>
#include <set>
#include <thread>
#include <vector>

using weldr::BackendState;
using weldr::Pool;

TEST_CASE("parse_backend_url accepts the shapes users send", "[pool]") {
  std::error_code ec;
  auto a = weldr::parse_backend_url("http://127.0.0.1:12345", ec);
  REQUIRE(a);
  CHECK(!ec);
  CHECK(a->host == "127.0.0.1");
  CHECK(a->port == 12345);
  CHECK(a->id() == "127.0.0.1:12345");
  CHECK(a->url == "http://127.0.0.1:12345");

  auto b = weldr::parse_backend_url("127.0.0.1:8080", ec);
  REQUIRE(b);
  CHECK(b->url == "http://127.0.0.1:8080");

  auto c = weldr::parse_backend_url("http://[::1]:9000/", ec);
  REQUIRE(c);
  CHECK(c->host == "::1");
  CHECK(c->id() == "[::1]:9000");

  auto d = weldr::parse_backend_url("http://10.0.0.1", ec);
  REQUIRE(d);
  CHECK(d->port == 80);
}

TEST_CASE("parse_backend_url rejects what it cannot serve", "[pool]") {
  for (const char* bad :
       {"", "https://127.0.0.1:443", "ftp://1.2.3.4:21", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:80x",
        "127.0.0.1:", "example.com:80", "http://1.2.3.4:80/path", "[::1:80", "::1:80", "http://:80", "1.2.3.4:-1"}) {
    std::error_code ec;
    INFO(bad);
    CHECK_FALSE(weldr::parse_backend_url(bad, ec));
    CHECK(ec == weldr::errc::invalid_url);
  }
}

TEST_CASE("add is idempotent and find/list/remove see the change", "[pool]") {
  Pool pool;
  CHECK(pool.add("http://127.0.0.1:9001"));
  CHECK_FALSE(pool.add("127.0.0.1:9001"));  // same id, other spelling
  CHECK(pool.add("127.0.0.1:9002"));
  CHECK(pool.size() == 2);
  REQUIRE(pool.find("127.0.0.1:9001"));
  CHECK(pool.find("127.0.0.1:9001")->url() == "http://127.0.0.1:9001");
  CHECK_FALSE(pool.find("127.0.0.1:9003"));
  auto list = pool.list();
  REQUIRE(list.size() == 2);
  CHECK(list[0]->id() == "127.0.0.1:9001");
  CHECK(list[1]->id() == "127.0.0.1:9002");

  CHECK(pool.remove("127.0.0.1:9001"));
  CHECK_FALSE(pool.remove("127.0.0.1:9001"));
  CHECK(pool.size() == 1);
  CHECK_THROWS_AS(pool.add("nonsense"), std::invalid_argument);
}

TEST_CASE("round robin spreads evenly and skips down backends", "[pool]") {
  Pool pool;
  for (int port = 9001; port <= 9003; ++port)
    pool.add("127.0.0.1:" + std::to_string(port));
  std::map<std::string, int> hits;
  for (int i = 0; i < 300; ++i)
    ++hits[pool.pick()->id()];
  CHECK(hits.size() == 3);
  for (auto& [id, n] : hits)
    CHECK(n == 100);

  REQUIRE(pool.set_state("127.0.0.1:9002", BackendState::down));
  hits.clear();
  for (int i = 0; i < 300; ++i)
    ++hits[pool.pick()->id()];
  CHECK(hits.count("127.0.0.1:9002") == 0);
  CHECK(hits.size() == 2);

  pool.set_state("127.0.0.1:9001", BackendState::down);
  pool.set_state("127.0.0.1:9003", BackendState::down);
  CHECK_FALSE(pool.pick());
  pool.set_state("127.0.0.1:9003", BackendState::active);
  REQUIRE(pool.pick());
  CHECK(pool.pick()->id() == "127.0.0.1:9003");
}

TEST_CASE("remove drains: no new picks, in-flight requests finish, then the backend is gone", "[pool]") {
  Pool pool;
  pool.add("127.0.0.1:9001");
  pool.add("127.0.0.1:9002");
  auto busy = pool.find("127.0.0.1:9001");
  pool.begin_request(*busy);
  CHECK(busy->active_requests() == 1);

  REQUIRE(pool.remove("127.0.0.1:9001"));
  CHECK(busy->state() == BackendState::draining);
  CHECK(pool.size() == 2);  // still listed while draining
  for (int i = 0; i < 10; ++i)
    CHECK(pool.pick()->id() == "127.0.0.1:9002");
  CHECK_FALSE(pool.set_state("127.0.0.1:9001", BackendState::active));  // draining is final

  pool.end_request(*busy, true);
  CHECK(pool.size() == 1);
  CHECK_FALSE(pool.find("127.0.0.1:9001"));
  CHECK(busy->successes() == 1);
  CHECK(busy->requests() == 1);
}

TEST_CASE("counters count successes and failures", "[pool]") {
  Pool pool;
  pool.add("127.0.0.1:9001");
  auto b = pool.pick();
  for (int i = 0; i < 5; ++i) {
    pool.begin_request(*b);
    pool.end_request(*b, i % 2 == 0);
  }
  CHECK(b->requests() == 5);
  CHECK(b->successes() == 3);
  CHECK(b->failures() == 2);
  CHECK(b->active_requests() == 0);
}

// Run under -DWELDR_SANITIZE=thread to check the lock-free read path against the writers.
TEST_CASE("concurrent picks, adds, removes and state changes", "[pool][threads]") {
  Pool pool;
  for (int port = 10000; port < 10004; ++port)
    pool.add("127.0.0.1:" + std::to_string(port));
  std::atomic<bool> done{false};
  std::atomic<long> picks{0};
  std::atomic<long> bad_picks{0};  // Catch2 assertions are not thread-safe: count, check later
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&] {
      while (!done.load()) {
        if (auto b = pool.pick()) {
          pool.begin_request(*b);
          if (b->port() < 10000 || b->port() >= 10020) bad_picks.fetch_add(1);
          pool.end_request(*b, true);
          picks.fetch_add(1);
        }
        (void)pool.list();
      }
    });
  }
  std::thread writer([&] {
    for (int i = 0; i < 2000; ++i) {
      const std::string id = "127.0.0.1:" + std::to_string(10004 + i % 16);
      pool.add(id);
      pool.set_state("127.0.0.1:10001", i % 2 ? BackendState::down : BackendState::active);
      pool.remove(id);
    }
  });
  writer.join();
  done = true;
  for (auto& r : readers)
    r.join();
  CHECK(picks.load() > 0);
  CHECK(bad_picks.load() == 0);
  // Every drained backend left the pool: only the four permanent ones remain.
  CHECK(pool.size() == 4);
  std::set<std::string> ids;
  for (auto& b : pool.list())
    ids.insert(b->id());
  CHECK(ids == std::set<std::string>{"127.0.0.1:10000", "127.0.0.1:10001", "127.0.0.1:10002", "127.0.0.1:10003"});
}

TEST_CASE("subscribers see every change in order", "[pool]") {
  Pool pool;
  std::vector<std::string> seen;
  const auto handle = pool.subscribe([&](const weldr::PoolEvent& e) {
    static constexpr const char* kNames[] = {"added", "removed", "erased", "state_changed"};
    seen.push_back(std::string(kNames[static_cast<int>(e.kind)]) + " " + e.backend->id());
    (void)pool.list();  // reading the pool from a listener is allowed
  });
  pool.add("127.0.0.1:9001");
  pool.add("127.0.0.1:9001");  // no change, no event
  pool.set_state("127.0.0.1:9001", BackendState::down);
  pool.set_state("127.0.0.1:9001", BackendState::down);  // no change, no event
  auto b = pool.find("127.0.0.1:9001");
  pool.begin_request(*b);
  pool.remove("127.0.0.1:9001");
  pool.end_request(*b, true);
  pool.unsubscribe(handle);
  pool.add("127.0.0.1:9002");
  CHECK(seen == std::vector<std::string>{"added 127.0.0.1:9001", "state_changed 127.0.0.1:9001",
                                         "removed 127.0.0.1:9001", "erased 127.0.0.1:9001"});
}
