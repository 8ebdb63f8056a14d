// net::DrainedReads: a read that returned fewer bytes than asked makes the next read wait for
// epoll instead of trying recv(2) at once; reads otherwise behave as socket.async_read_some.
//
// Whether a read was tried at once is seen from the socket: bytes that arrived before the read
// started are still in the socket's receive queue (FIONREAD) after the call that starts it when
// it was not tried, and gone when it was.

#include "net/drained_read.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <catch2/catch.hpp>

#include <sys/ioctl.h>

#include <array>
#include <optional>
#include <string>
#include <system_error>

using asio::ip::tcp;
using weldr::net::DrainedReads;

namespace {

struct Result {
  std::error_code ec;
  std::size_t n{0};
};

// A connected pair on 127.0.0.1: `ours` is read through DrainedReads, `peer` writes with
// blocking calls.
struct Pair {
  asio::io_context io{1};
  DrainedReads reads{io};
  tcp::socket ours{io};
  tcp::socket peer{io};
  std::array<char, 16> buffer{};

  Pair() {
    tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    peer.connect(acceptor.local_endpoint());
    acceptor.accept(ours);
  }

  void send(const std::string& bytes) { asio::write(peer, asio::buffer(bytes)); }

  // Bytes that have arrived in our socket and not been read.
  int queued() {
    int n = -1;
    REQUIRE(::ioctl(ours.native_handle(), FIONREAD, &n) == 0);
    return n;
  }

  // Starts a read into `buffer` (or its first `size` bytes); `result` is set when it completes.
  void start(std::optional<Result>& result, std::size_t size = 16) {
    result.reset();
    reads.read_some(ours, asio::buffer(buffer.data(), size), [&result](std::error_code ec, std::size_t n) {
      result = Result{ec, n};
    });
  }

  // Runs the io_context until `result` is set (the reads here complete within the loop's first
  // turns: the bytes are already in the socket, or the socket is closed).
  void run_until(const std::optional<Result>& result) {
    for (int i = 0; i < 1000 && !result; ++i) {
      io.restart();
      io.run_one();
    }
    REQUIRE(result);
  }

  std::string got(const Result& r) const { return std::string(buffer.data(), r.n); }
};

}  // namespace

TEST_CASE("a read after a short read waits for epoll, and gets the bytes that came", "[drained_read]") {
  Pair p;
  std::optional<Result> r;

  // Nothing there yet: the read waits; then 3 bytes come, which is fewer than the 16 asked.
  p.start(r);
  p.io.poll();
  CHECK_FALSE(r);
  p.send("abc");
  p.run_until(r);
  REQUIRE_FALSE(r->ec);
  CHECK(p.got(*r) == "abc");

  // The next byte arrives before the next read starts. The read is not tried at once (the byte
  // is still queued after the start), and completes with it when epoll reports it.
  p.send("d");
  p.start(r);
  CHECK(p.queued() == 1);
  CHECK_FALSE(r);
  p.run_until(r);
  REQUIRE_FALSE(r->ec);
  CHECK(p.got(*r) == "d");
  CHECK(p.queued() == 0);
}

TEST_CASE("a read after one that filled the buffer is tried at once", "[drained_read]") {
  Pair p;
  std::optional<Result> r;

  // 8 bytes, read 4 at a time: each read fills its buffer, so the socket may hold more.
  p.send("12345678");
  p.start(r, 4);
  CHECK(p.queued() == 4);  // tried at once (a new socket), done when the loop runs its handler
  p.run_until(r);
  REQUIRE_FALSE(r->ec);
  CHECK(p.got(*r) == "1234");

  p.start(r, 4);
  CHECK(p.queued() == 0);  // tried at once again: the last 4 bytes are read
  p.run_until(r);
  REQUIRE_FALSE(r->ec);
  CHECK(p.got(*r) == "5678");
}

TEST_CASE("a drained read sees the end of stream and a reset", "[drained_read]") {
  SECTION("end of stream after a short read") {
    Pair p;
    std::optional<Result> r;
    p.send("x");
    p.start(r);
    p.run_until(r);
    CHECK(p.got(*r) == "x");
    p.peer.shutdown(tcp::socket::shutdown_send);
    p.start(r);
    p.run_until(r);
    CHECK(r->ec == asio::error::eof);
    CHECK(r->n == 0);
  }
  SECTION("reset while waiting") {
    Pair p;
    std::optional<Result> r;
    p.start(r);
    p.io.poll();
    p.peer.set_option(asio::socket_base::linger(true, 0));
    p.peer.close();
    p.run_until(r);
    CHECK(r->ec == asio::error::connection_reset);
  }
}

TEST_CASE("a waiting drained read is cancelled by the socket and by a cancellation slot", "[drained_read]") {
  SECTION("socket.cancel()") {
    Pair p;
    std::optional<Result> r;
    p.start(r);
    p.io.poll();
    CHECK_FALSE(r);
    p.ours.cancel();
    p.run_until(r);
    CHECK(r->ec == asio::error::operation_aborted);
  }
  SECTION("a cancellation slot") {
    Pair p;
    std::optional<Result> r;
    asio::cancellation_signal signal;
    p.reads.read_some(p.ours, asio::buffer(p.buffer),
                      asio::bind_cancellation_slot(signal.slot(), [&r](std::error_code ec, std::size_t n) {
                        r = Result{ec, n};
                      }));
    p.io.poll();
    CHECK_FALSE(r);
    signal.emit(asio::cancellation_type::terminal);
    p.run_until(r);
    CHECK(r->ec == asio::error::operation_aborted);
    // The socket still works afterwards.
    p.send("y");
    p.start(r);
    p.run_until(r);
    CHECK(p.got(*r) == "y");
  }
}

TEST_CASE("a drained read completes a coroutine's co_await", "[drained_read]") {
  Pair p;
  std::string got;
  asio::co_spawn(
      p.io,
      [&]() -> asio::awaitable<void> {
        constexpr auto token = asio::experimental::as_tuple(asio::use_awaitable);
        for (int i = 0; i < 3; ++i) {
          auto [ec, n] = co_await p.reads.read_some(p.ours, asio::buffer(p.buffer), token);
          if (ec) co_return;
          got.append(p.buffer.data(), n);
        }
      },
      asio::detached);
  p.io.poll();
  for (const char* piece : {"one ", "two ", "three"}) {
    const auto before = got.size();
    p.send(piece);
    for (int i = 0; i < 1000 && got.size() == before; ++i) {
      p.io.restart();
      p.io.run_one();
    }
  }
  CHECK(got == "one two three");
}
