#pragma once
// The completion token of every coroutine in the library: co_await gives a tuple whose first
// element is the error code, so that end of stream, a reset or a cancelled timer is a value to
// test, not an exception (STYLE.md, habit 6).

#include <asio/experimental/as_tuple.hpp>
#include <asio/use_awaitable.hpp>

namespace weldr::net {

/// `co_await op(use_nothrow)` returns std::tuple<std::error_code, ...> instead of throwing.
inline constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);

}  // namespace weldr::net
