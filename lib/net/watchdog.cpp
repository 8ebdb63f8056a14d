#include "net/watchdog.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>

namespace weldr::net {

asio::awaitable<void> Watchdog::run() {
  while (!stopped_) {
    const auto now = clock::now();
    bool fired = false;
    for (std::size_t d = 0; d < deadline_.size(); ++d) {
      if (deadline_[d] <= now) {
        deadline_[d] = clock::time_point::max();
        expired_[d] = true;
        fired = true;
      }
    }
    if (fired && socket_ != nullptr) {
      std::error_code ignored;
      socket_->cancel(ignored);
    }
    timer_.expires_at(std::min(deadline_[0], deadline_[1]));
    co_await timer_.async_wait(asio::experimental::as_tuple(asio::use_awaitable));
  }
}

}  // namespace weldr::net
