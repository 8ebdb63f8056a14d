// net::FramePool, and coroutines whose promise is net::PooledFrame, as the Session's are.

#include "net/frame_pool.hpp"

#include <asio/co_spawn.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <catch2/catch.hpp>

#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

using weldr::net::FramePool;

namespace {

// Runs `f` on a thread of its own, whose free lists start empty and are emptied when it ends.
template <typename F>
void on_new_thread(F f) {
  std::thread thread(f);
  thread.join();
}

// Member coroutines of Owner get PooledFrame promises, like weldr::Session's.
struct Owner {
  int calls{0};
  asio::awaitable<int> leaf(int x);
  asio::awaitable<int> middle(int x);
  asio::awaitable<void> throws();
  asio::awaitable<void> sleep(std::chrono::milliseconds d);
  asio::awaitable<int> top();
};

}  // namespace

template <typename T, typename... Args>
struct std::coroutine_traits<asio::awaitable<T, asio::any_io_executor>, Owner&, Args...> {
  using promise_type = weldr::net::PooledFrame<asio::detail::awaitable_frame<T, asio::any_io_executor>>;
};

asio::awaitable<int> Owner::leaf(int x) {
  ++calls;
  co_return x * 2;
}

asio::awaitable<int> Owner::middle(int x) {
  const int a = co_await leaf(x);
  const int b = co_await leaf(a);
  co_return a + b;
}

asio::awaitable<void> Owner::throws() {
  co_await leaf(1);
  throw std::runtime_error("from a pooled frame");
}

asio::awaitable<void> Owner::sleep(std::chrono::milliseconds d) {
  asio::steady_timer timer(co_await asio::this_coro::executor, d);
  co_await timer.async_wait(asio::use_awaitable);
}

asio::awaitable<int> Owner::top() {
  int total = co_await middle(1);  // 2 + 4
  try {
    co_await throws();
  } catch (const std::runtime_error&) {
    total += 100;
  }
  using namespace asio::experimental::awaitable_operators;
  co_await (sleep(std::chrono::milliseconds(2)) && sleep(std::chrono::milliseconds(1)));
  co_await (sleep(std::chrono::milliseconds(1)) || sleep(std::chrono::seconds(30)));
  co_return total;
}

TEST_CASE("FramePool reuses a freed frame for the next of its size class", "[frame_pool]") {
  on_new_thread([] {
    CHECK(FramePool::free_frames() == 0);
    void* a = FramePool::allocate(100);
    FramePool::deallocate(a, 100);
    CHECK(FramePool::free_frames() == 1);
    void* b = FramePool::allocate(200);  // another class: not `a`
    CHECK(b != a);
    void* c = FramePool::allocate(120);  // same class of 64 bytes as 100
    CHECK(c == a);
    CHECK(FramePool::free_frames() == 0);
    FramePool::deallocate(b, 200);
    FramePool::deallocate(c, 120);
    CHECK(FramePool::free_frames() == 2);
  });
}

TEST_CASE("FramePool keeps at most kMaxFree frames per class and none over 4 KiB", "[frame_pool]") {
  on_new_thread([] {
    std::vector<void*> frames;
    for (std::size_t i = 0; i < FramePool::kMaxFree + 10; ++i)
      frames.push_back(FramePool::allocate(64));
    for (void* frame : frames)
      FramePool::deallocate(frame, 64);
    CHECK(FramePool::free_frames() == FramePool::kMaxFree);

    const std::size_t huge = FramePool::kGranule * FramePool::kClasses + 1;
    void* big = FramePool::allocate(huge);
    FramePool::deallocate(big, huge);
    CHECK(FramePool::free_frames() == FramePool::kMaxFree);
  });
}

TEST_CASE("FramePool takes frames freed on another thread into that thread's lists", "[frame_pool]") {
  // Under LeakSanitizer, a frame not freed at the second thread's exit would be reported.
  on_new_thread([] {
    void* frame = FramePool::allocate(300);
    on_new_thread([frame] {
      FramePool::deallocate(frame, 300);
      CHECK(FramePool::free_frames() == 1);
    });
    CHECK(FramePool::free_frames() == 0);
  });
}

TEST_CASE("Coroutines with pooled frames return values, throw and wait like Asio's", "[frame_pool]") {
  on_new_thread([] {
    asio::io_context io;
    Owner owner;
    int result = 0;
    bool done = false;
    asio::co_spawn(io, owner.top(), [&](std::exception_ptr e, int value) {
      CHECK(e == nullptr);
      result = value;
      done = true;
    });
    io.run();
    CHECK(done);
    CHECK(result == 106);
    CHECK(owner.calls == 3);
    // Every frame of Owner's coroutines came from the pool and went back to it.
    CHECK(FramePool::free_frames() > 0);

    // A second run takes them from the free lists instead of the heap.
    const std::size_t kept = FramePool::free_frames();
    bool again = false;
    io.restart();
    asio::co_spawn(io, owner.middle(3), [&](std::exception_ptr e, int value) {
      CHECK(e == nullptr);
      CHECK(value == 6 + 12);
      again = true;
    });
    io.run();
    CHECK(again);
    CHECK(FramePool::free_frames() == kept);
  });
}
