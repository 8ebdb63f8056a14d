#pragma once
// Timeouts for one socket without a timer operation per read or write.
//
// Each direction (read, write) has a deadline. One timer sleeps until the earliest deadline;
// moving a deadline later costs nothing (the timer wakes, sees the new deadline and sleeps
// again), so re-arming before every read on a busy connection does not touch the timer queue.
// When a deadline passes, the socket's pending operations are cancelled and the direction is
// marked expired, so the operation's caller can tell a timeout from another error.

#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include <array>
#include <chrono>

namespace weldr::net {

/// Deadlines for the read and the write direction of one socket at a time.
class Watchdog {
 public:
  using clock = std::chrono::steady_clock;
  /// A direction of the watched socket.
  enum Direction { read = 0, write = 1 };

  /// A watchdog whose timer runs on `executor`.
  explicit Watchdog(const asio::any_io_executor& executor) : timer_(executor) {}

  /// Watches `socket` (or nothing when null). Deadlines are kept.
  void watch(asio::ip::tcp::socket* socket) noexcept { socket_ = socket; }
  /// Sets a deadline for the next operation in `direction`.
  void arm(Direction direction, std::chrono::milliseconds timeout) {
    const auto deadline = clock::now() + timeout;
    deadline_[direction] = deadline;
    expired_[direction] = false;
    if (deadline < timer_.expiry()) timer_.expires_at(deadline);  // wakes run() early
  }
  /// Removes the deadline of `direction`.
  void disarm(Direction direction) noexcept { deadline_[direction] = clock::time_point::max(); }
  /// True when the last deadline of `direction` passed before it was disarmed or re-armed.
  [[nodiscard]] bool expired(Direction direction) const noexcept { return expired_[direction]; }

  /// The timer loop; spawn it once and keep the owner alive until it returns.
  asio::awaitable<void> run();
  /// Ends run().
  void stop() {
    stopped_ = true;
    timer_.cancel();
  }

 private:
  asio::steady_timer timer_;
  asio::ip::tcp::socket* socket_{nullptr};
  std::array<clock::time_point, 2> deadline_{clock::time_point::max(), clock::time_point::max()};
  std::array<bool, 2> expired_{false, false};
  bool stopped_{false};
};

}  // namespace weldr::net
