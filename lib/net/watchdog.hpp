#pragma once
// Timeouts for many sockets on one thread, with one timer and no timer operation per read or
// write.
//
// A Watchdog holds a deadline per direction (read, write) of one socket. The watchdogs of a
// thread share a TimerWheel: a ring of slots, one per tick of the wheel's resolution, each
// holding the watchdogs due in that tick, and one timer that ticks while any watchdog is in the
// ring. Arming moves the watchdog to the slot of its deadline only when that is earlier than the
// slot it is in (a few pointer writes); a later deadline leaves it where it is, and when that
// slot comes round the watchdog moves on to its next deadline. This is the common case of a busy
// connection, whose deadline moves later with every read and write.
//
// A deadline fires within one resolution after it passes: the socket's pending operations are
// cancelled and the direction is marked expired, so that the operation's caller can tell a
// timeout from another error. Everything runs on the thread of the wheel's executor.

#include <asio/any_io_executor.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

namespace weldr::net {

class TimerWheel;

/// Deadlines for the read and the write direction of one socket at a time.
class Watchdog {
 public:
  using clock = std::chrono::steady_clock;
  /// A direction of the watched socket.
  enum Direction { read = 0, write = 1 };

  /// A watchdog on `wheel`, which must outlive it.
  explicit Watchdog(TimerWheel& wheel) noexcept : wheel_(&wheel) {}
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  /// Watches `socket` (or nothing when null). Deadlines are kept.
  void watch(asio::ip::tcp::socket* socket) noexcept { socket_ = socket; }
  /// Sets a deadline for the next operation in `direction`.
  void arm(Direction direction, std::chrono::milliseconds timeout);
  /// Removes the deadline of `direction`.
  void disarm(Direction direction) noexcept { deadline_[direction] = clock::time_point::max(); }
  /// True when the last deadline of `direction` passed before it was disarmed or re-armed.
  [[nodiscard]] bool expired(Direction direction) const noexcept { return expired_[direction]; }

 private:
  friend class TimerWheel;

  TimerWheel* wheel_;
  asio::ip::tcp::socket* socket_{nullptr};
  std::array<clock::time_point, 2> deadline_{clock::time_point::max(), clock::time_point::max()};
  std::array<bool, 2> expired_{false, false};
  // In the ring: in the slot of tick `tick_` (0: in none), between prev_ and next_.
  std::uint64_t tick_{0};
  Watchdog* prev_{nullptr};
  Watchdog* next_{nullptr};
};

/// The ring of slots and the timer that the watchdogs of one thread share.
///
/// Create it with std::make_shared (a pending tick holds a reference) and call close() when its
/// owner goes; every Watchdog on it must be gone by then.
class TimerWheel : public std::enable_shared_from_this<TimerWheel> {
 public:
  using clock = Watchdog::clock;

  TimerWheel(const asio::any_io_executor& executor, std::chrono::milliseconds resolution);
  TimerWheel(const TimerWheel&) = delete;
  TimerWheel& operator=(const TimerWheel&) = delete;

  /// A resolution for timeouts of which the shortest is `shortest`: a tenth of it, and
  /// between 5 ms and 100 ms.
  static std::chrono::milliseconds resolution_for(std::chrono::milliseconds shortest) noexcept;

  [[nodiscard]] std::chrono::milliseconds resolution() const noexcept { return resolution_; }
  /// Stops the timer; nothing fires after this.
  void close();

 private:
  friend class Watchdog;

  // Links `w` into the slot where `due` falls (the next tick at the earliest).
  void link(Watchdog& w, clock::time_point due);
  void unlink(Watchdog& w) noexcept;
  // Ticks that have fully passed at `t`.
  [[nodiscard]] std::uint64_t ticks_passed(clock::time_point t) const noexcept;
  // The first tick at or after `t`.
  [[nodiscard]] std::uint64_t tick_at_or_after(clock::time_point t) const noexcept;
  void schedule_next();
  void on_tick();

  asio::steady_timer timer_;
  std::chrono::milliseconds resolution_;
  clock::time_point origin_;  // when tick 0 was
  std::uint64_t current_{0};  // the last tick whose slot was processed
  std::vector<Watchdog*> slots_;
  std::size_t linked_{0};  // watchdogs in the ring
  bool ticking_{false};
  bool closed_{false};
};

}  // namespace weldr::net
