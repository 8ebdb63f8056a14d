// The TimerWheel and its Watchdogs, on a real io_context and real loopback sockets.

#include "net/watchdog.hpp"

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>
#include <asio/write.hpp>
#include <catch2/catch.hpp>

#include <array>
#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <vector>

using namespace std::chrono_literals;
using asio::ip::tcp;
using weldr::net::TimerWheel;
using weldr::net::Watchdog;
using clock_type = std::chrono::steady_clock;

namespace {

// A connected pair of loopback sockets.
struct Pair {
  explicit Pair(asio::io_context& io) : near(io), far(io) {
    tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    near.connect(acceptor.local_endpoint());
    far = acceptor.accept();
  }
  tcp::socket near;
  tcp::socket far;
};

// A read on `pair.near` watched by `watchdog`: when and how it ended.
struct Read {
  std::array<char, 16> buffer{};
  std::optional<std::error_code> result;
  clock_type::time_point ended{};

  void start(Pair& pair) {
    pair.near.async_read_some(asio::buffer(buffer), [this](const std::error_code& ec, std::size_t) {
      result = ec;
      ended = clock_type::now();
    });
  }
};

std::shared_ptr<TimerWheel> make_wheel(asio::io_context& io, std::chrono::milliseconds resolution) {
  return std::make_shared<TimerWheel>(io.get_executor(), resolution);
}

// An io_context, a wheel of the given resolution, and one watchdog on one socket of a pair.
struct Rig {
  explicit Rig(std::chrono::milliseconds resolution) : wheel(make_wheel(io, resolution)), pair(io), watchdog(*wheel) {
    watchdog.watch(&pair.near);
  }
  ~Rig() { wheel->close(); }
  Rig(const Rig&) = delete;
  Rig& operator=(const Rig&) = delete;

  asio::io_context io;
  std::shared_ptr<TimerWheel> wheel;
  Pair pair;
  Watchdog watchdog;
};

}  // namespace

TEST_CASE("a watchdog cancels the watched socket's read when its deadline passes, never before", "[unit][watchdog]") {
  Rig rig(10ms);
  Read read;
  const auto start = clock_type::now();
  rig.watchdog.arm(Watchdog::read, 50ms);
  read.start(rig.pair);
  rig.io.run_for(5s);
  REQUIRE(read.result.has_value());
  CHECK(*read.result == asio::error::operation_aborted);
  CHECK(rig.watchdog.expired(Watchdog::read));
  CHECK_FALSE(rig.watchdog.expired(Watchdog::write));
  CHECK(read.ended - start >= 50ms);
  CHECK(read.ended - start < 2s);
}

TEST_CASE("a disarmed watchdog leaves the read alone", "[unit][watchdog]") {
  Rig rig(5ms);
  Read read;
  rig.watchdog.arm(Watchdog::read, 30ms);
  read.start(rig.pair);
  rig.watchdog.disarm(Watchdog::read);
  // Data comes well after the deadline that was taken back.
  asio::steady_timer later(rig.io, 150ms);
  later.async_wait([&](const std::error_code&) { asio::write(rig.pair.far, asio::buffer("x", 1)); });
  rig.io.run_for(5s);
  REQUIRE(read.result.has_value());
  CHECK_FALSE(*read.result);
  CHECK_FALSE(rig.watchdog.expired(Watchdog::read));
}

TEST_CASE("a deadline moved later fires at the later time, one moved earlier at the earlier", "[unit][watchdog]") {
  asio::io_context io;
  auto wheel = make_wheel(io, 5ms);
  Pair pair(io);

  Watchdog later(*wheel);
  later.watch(&pair.near);
  Read later_read;
  const auto start = clock_type::now();
  later.arm(Watchdog::read, 40ms);
  later_read.start(pair);
  // Re-armed before its first deadline, as a busy connection does on every read.
  asio::steady_timer rearm(io, 20ms);
  rearm.async_wait([&](const std::error_code&) { later.arm(Watchdog::read, 200ms); });

  Pair other(io);
  Watchdog earlier(*wheel);
  earlier.watch(&other.near);
  Read earlier_read;
  earlier.arm(Watchdog::read, 10s);
  earlier.arm(Watchdog::read, 30ms);
  earlier_read.start(other);

  io.run_for(5s);
  REQUIRE(later_read.result.has_value());
  CHECK(*later_read.result == asio::error::operation_aborted);
  CHECK(later_read.ended - start >= 220ms);
  REQUIRE(earlier_read.result.has_value());
  CHECK(*earlier_read.result == asio::error::operation_aborted);
  CHECK(earlier_read.ended - start >= 30ms);
  CHECK(earlier_read.ended - start < 200ms + 2s);
  CHECK(earlier_read.ended < later_read.ended);
  wheel->close();
}

TEST_CASE("the read and write deadlines of one watchdog are kept apart", "[unit][watchdog]") {
  Rig rig(5ms);
  rig.watchdog.arm(Watchdog::write, 30ms);
  rig.watchdog.arm(Watchdog::read, 10s);
  Read read;
  read.start(rig.pair);
  rig.io.run_for(5s);
  // The write deadline cancelled the socket's operations (the read too, as a timeout of the
  // socket does); only the write direction is marked expired.
  REQUIRE(read.result.has_value());
  CHECK(rig.watchdog.expired(Watchdog::write));
  CHECK_FALSE(rig.watchdog.expired(Watchdog::read));
}

TEST_CASE("deadlines further away than the ring is long, and many watchdogs, fire in order and on time",
          "[unit][watchdog]") {
  asio::io_context io;
  // 1 ms ticks: the ring of 1,024 slots spans about a second, less than the longest deadline.
  auto wheel = make_wheel(io, 1ms);
  constexpr int kCount = 300;
  std::deque<Pair> pairs;
  std::vector<std::unique_ptr<Watchdog>> watchdogs;
  std::vector<Read> reads(kCount);
  std::vector<std::chrono::milliseconds> timeouts;
  const auto start = clock_type::now();
  for (int i = 0; i < kCount; ++i) {
    pairs.emplace_back(io);
    watchdogs.push_back(std::make_unique<Watchdog>(*wheel));
    const auto timeout = std::chrono::milliseconds(20 + (i * 7) % 1500);
    timeouts.push_back(timeout);
    watchdogs.back()->watch(&pairs.back().near);
    watchdogs.back()->arm(Watchdog::read, timeout);
    reads[i].start(pairs.back());
  }
  // One of them goes away before its deadline: the others are not disturbed.
  asio::steady_timer drop(io, 5ms);
  drop.async_wait([&](const std::error_code&) {
    watchdogs[kCount - 1].reset();
    pairs.back().near.close();
  });
  io.run_for(10s);
  for (int i = 0; i + 1 < kCount; ++i) {
    INFO("watchdog " << i << ", timeout " << timeouts[i].count() << " ms");
    REQUIRE(reads[i].result.has_value());
    CHECK(*reads[i].result == asio::error::operation_aborted);
    CHECK(watchdogs[i]->expired(Watchdog::read));
    CHECK(reads[i].ended - start >= timeouts[i]);
  }
  wheel->close();
}

TEST_CASE("the wheel's timer stops when no watchdog is armed", "[unit][watchdog]") {
  Rig rig(5ms);
  rig.watchdog.arm(Watchdog::write, 20ms);
  // Nothing else is pending: run() returns once the deadline has fired and the ring is empty,
  // which it would not while the timer went on ticking.
  const auto start = clock_type::now();
  rig.io.run_for(5s);
  CHECK(rig.watchdog.expired(Watchdog::write));
  CHECK(clock_type::now() - start < 4s);
  // Armed again, it starts ticking again.
  rig.io.restart();
  rig.watchdog.arm(Watchdog::write, 20ms);
  rig.io.run_for(5s);
  CHECK(rig.watchdog.expired(Watchdog::write));
}

TEST_CASE("TimerWheel::resolution_for is a tenth of the shortest timeout, within bounds", "[unit][watchdog]") {
  CHECK(TimerWheel::resolution_for(1000ms) == 100ms);
  CHECK(TimerWheel::resolution_for(300ms) == 30ms);
  CHECK(TimerWheel::resolution_for(10ms) == 5ms);
  CHECK(TimerWheel::resolution_for(0ms) == 5ms);
  CHECK(TimerWheel::resolution_for(60000ms) == 100ms);
}
