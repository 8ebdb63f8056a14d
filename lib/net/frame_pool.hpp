#pragma once
// Memory for the coroutine frames of the proxy's sessions.
//
// Every `co_await` of a session's sub-coroutine (serve_request, exchange, relay_response...)
// allocates a frame, and frees it when the sub-coroutine returns. Asio recycles frames through
// a per-thread cache of ASIO_RECYCLING_ALLOCATOR_CACHE_SIZE (16) slots, which is enough for one
// connection; but with many connections busy at once, a session waiting for its backend holds
// more frames than one waiting for its client, so a batch of completions frees more frames than
// the cache holds, and the next batch mallocs them again (2.2 allocations per request with 64
// connections, bench/alloc_bench.cpp). FramePool keeps freed frames per thread, in free lists by
// size class, as many as were in use at once (up to a cap), so that the steady state of any
// number of keep-alive connections allocates nothing.
//
// PooledFrame<Promise> is Asio's promise type with FramePool's operator new and delete; a
// std::coroutine_traits specialisation (in proxy.cpp) makes it the promise of the Session's
// coroutines. It depends on Asio's promise being asio::detail::awaitable_frame, with no state of
// its own after ours: checked below for the Asio version the project builds with.

#include <asio/awaitable.hpp>
#include <asio/version.hpp>

#include <coroutine>
#include <cstddef>
#include <utility>

namespace weldr::net {

/// Per-thread free lists of coroutine frames, by size class. Frames may be freed on another
/// thread than the one that allocated them: they join that thread's lists.
class FramePool {
 public:
  /// Memory for a frame of `size` bytes (from the calling thread's free list when it has one).
  static void* allocate(std::size_t size);
  /// Gives back memory from allocate(size).
  static void deallocate(void* frame, std::size_t size) noexcept;
  /// Frames kept in the calling thread's free lists.
  static std::size_t free_frames() noexcept;

  // Size classes of 64 bytes up to 4 KiB; larger frames go straight to the heap.
  static constexpr std::size_t kGranule = 64;
  static constexpr std::size_t kClasses = 64;
  // Frames kept per class: more than were ever in use at once are freed.
  static constexpr std::size_t kMaxFree = 4096;
};

/// `Promise` (Asio's awaitable_frame) with its frames from FramePool.
template <typename Promise>
struct PooledFrame : Promise {
  static void* operator new(std::size_t size) { return FramePool::allocate(size); }
  static void operator delete(void* frame, std::size_t size) noexcept { FramePool::deallocate(frame, size); }

  // asio::awaitable's await_suspend takes the handle of an awaitable_frame, which it finds by
  // deduction: hand it ours as the awaitable_frame it is a base of (same address, see above).
  template <typename T>
  struct Awaiter {
    asio::awaitable<T, asio::any_io_executor> inner;
    static bool await_ready() noexcept { return false; }
    void await_suspend(std::coroutine_handle<PooledFrame> self) {
      inner.await_suspend(std::coroutine_handle<Promise>::from_address(self.address()));
    }
    T await_resume() { return inner.await_resume(); }
  };

  using Promise::await_transform;
  template <typename T>
  auto await_transform(asio::awaitable<T, asio::any_io_executor> a) const {
    return Awaiter<T>{Promise::await_transform(std::move(a))};
  }
};

// awaitable_frame::get_return_object() makes the coroutine handle from a reference to its own
// type, so our promise must be laid out exactly as it is: no members, same alignment.
static_assert(ASIO_VERSION / 100 == 1022, "PooledFrame is written against Asio 1.22's awaitable_frame");
static_assert(sizeof(PooledFrame<asio::detail::awaitable_frame<bool, asio::any_io_executor>>) ==
              sizeof(asio::detail::awaitable_frame<bool, asio::any_io_executor>));
static_assert(alignof(PooledFrame<asio::detail::awaitable_frame<void, asio::any_io_executor>>) ==
              alignof(asio::detail::awaitable_frame<void, asio::any_io_executor>));

}  // namespace weldr::net
