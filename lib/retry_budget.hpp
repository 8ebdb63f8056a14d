#pragma once
// A retry budget: retries may add at most a share of the requests seen over a sliding window,
// so that a failing pool is not hit twice as hard by the retries it provokes (Finagle's
// RetryBudget, Envoy's retry_budget). One per Proxy, used on its thread only.

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>

namespace weldr::detail {

class RetryBudget {
 public:
  using clock = std::chrono::steady_clock;

  /// Retries allowed: `min_retries` per window plus `percent` % of the requests in it.
  RetryBudget(unsigned percent, unsigned min_retries, std::chrono::milliseconds window) noexcept
      : percent_(percent), min_(min_retries), slot_length_(std::max<std::int64_t>(window.count() / kSlots, 1)) {}

  /// Counts one request (a client request, not an attempt).
  void on_request(clock::time_point now) noexcept { ++current(now).requests; }

  /// True when a retry may go out now; it is then counted.
  bool try_retry(clock::time_point now) noexcept {
    Slot& slot = current(now);
    std::uint64_t requests = 0;
    std::uint64_t retries = 0;
    for (const Slot& s : slots_) {
      if (live(s, slot.index)) {
        requests += s.requests;
        retries += s.retries;
      }
    }
    if (retries * 100 >= min_ * 100 + requests * percent_) return false;
    ++slot.retries;
    return true;
  }

 private:
  static constexpr std::size_t kSlots = 10;
  struct Slot {
    std::int64_t index{-1};  // which slot-length interval of the clock it counts
    std::uint64_t requests{0};
    std::uint64_t retries{0};
  };

  static bool live(const Slot& s, std::int64_t now_index) noexcept {
    return s.index >= 0 && now_index - s.index < static_cast<std::int64_t>(kSlots);
  }

  Slot& current(clock::time_point now) noexcept {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
    const std::int64_t index = ms / slot_length_;
    Slot& slot = slots_[static_cast<std::size_t>(index) % kSlots];
    if (slot.index != index) slot = Slot{index, 0, 0};
    return slot;
  }

  unsigned percent_;
  unsigned min_;
  std::int64_t slot_length_;  // ms
  std::array<Slot, kSlots> slots_{};
};

}  // namespace weldr::detail
