#include "net/watchdog.hpp"

#include <algorithm>

namespace weldr::net {

namespace {
// Slots in the ring. A deadline further away than this many ticks waits in its slot for the
// rounds in between (it is skipped there, at the cost of a comparison per round).
constexpr std::size_t kSlots = 1024;
}  // namespace

Watchdog::~Watchdog() {
  if (tick_ != 0) wheel_->unlink(*this);
}

void Watchdog::arm(Direction direction, std::chrono::milliseconds timeout) {
  const auto deadline = clock::now() + timeout;
  deadline_[direction] = deadline;
  expired_[direction] = false;
  // A later deadline than the slot this watchdog is in needs nothing now: it moves on when that
  // slot comes round.
  if (tick_ == 0 || wheel_->tick_at_or_after(deadline) < tick_) wheel_->link(*this, deadline);
}

TimerWheel::TimerWheel(const asio::any_io_executor& executor, std::chrono::milliseconds resolution)
    : timer_(executor),
      resolution_(std::max(resolution, std::chrono::milliseconds(1))),
      origin_(clock::now()),
      slots_(kSlots, nullptr) {}

std::chrono::milliseconds TimerWheel::resolution_for(std::chrono::milliseconds shortest) noexcept {
  return std::clamp(shortest / 10, std::chrono::milliseconds(5), std::chrono::milliseconds(100));
}

void TimerWheel::close() {
  closed_ = true;
  timer_.cancel();
}

std::uint64_t TimerWheel::ticks_passed(clock::time_point t) const noexcept {
  if (t <= origin_) return 0;
  return static_cast<std::uint64_t>((t - origin_) / resolution_);
}

std::uint64_t TimerWheel::tick_at_or_after(clock::time_point t) const noexcept {
  return ticks_passed(t + resolution_ - clock::duration(1));
}

void TimerWheel::link(Watchdog& w, clock::time_point due) {
  if (!ticking_) {
    // Idle until now: the ring is empty, and its ticks start again from the present.
    current_ = std::max(current_, ticks_passed(clock::now()));
  }
  const std::uint64_t tick = std::max(tick_at_or_after(due), current_ + 1);
  if (w.tick_ == tick) return;
  if (w.tick_ != 0) unlink(w);
  Watchdog*& head = slots_[tick % kSlots];
  w.tick_ = tick;
  w.prev_ = nullptr;
  w.next_ = head;
  if (head != nullptr) head->prev_ = &w;
  head = &w;
  ++linked_;
  if (!ticking_ && !closed_) {
    ticking_ = true;
    schedule_next();
  }
}

void TimerWheel::unlink(Watchdog& w) noexcept {
  if (w.prev_ != nullptr) {
    w.prev_->next_ = w.next_;
  } else {
    slots_[w.tick_ % kSlots] = w.next_;
  }
  if (w.next_ != nullptr) w.next_->prev_ = w.prev_;
  w.prev_ = w.next_ = nullptr;
  w.tick_ = 0;
  --linked_;
}

void TimerWheel::schedule_next() {
  timer_.expires_at(origin_ + (current_ + 1) * resolution_);
  timer_.async_wait([self = shared_from_this()](const std::error_code& ec) {
    if (!ec && !self->closed_) self->on_tick();
  });
}

void TimerWheel::on_tick() {
  const auto now = clock::now();
  // Every tick that has fully passed, also those a late wake-up skipped.
  const std::uint64_t passed = ticks_passed(now);
  while (current_ < passed) {
    ++current_;
    Watchdog* w = slots_[current_ % kSlots];
    while (w != nullptr) {
      Watchdog* const next = w->next_;  // w may move to another slot, or to the front of this one
      if (w->tick_ == current_) {
        unlink(*w);
        bool fired = false;
        for (std::size_t d = 0; d < w->deadline_.size(); ++d) {
          if (w->deadline_[d] <= now) {
            w->deadline_[d] = clock::time_point::max();
            w->expired_[d] = true;
            fired = true;
          }
        }
        if (fired && w->socket_ != nullptr) {
          std::error_code ignored;
          w->socket_->cancel(ignored);
        }
        const auto due = std::min(w->deadline_[0], w->deadline_[1]);
        if (due != clock::time_point::max()) link(*w, due);
      }
      w = next;
    }
  }
  if (linked_ == 0) {
    ticking_ = false;  // the next link() starts the timer again
    return;
  }
  schedule_next();
}

}  // namespace weldr::net
