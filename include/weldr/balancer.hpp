#pragma once
/// \file
/// Balancing policies: how a Pool chooses the backend for one request.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace weldr {

class Backend;

/// What one pick knows about the request.
struct PickContext {
  /// Hash of the request's key (client IP, a header or a cookie), for the hash policy; none
  /// when the request has no key (the hash policy then balances round robin).
  std::optional<std::uint64_t> key;
  /// Backends already tried for this request: a retry goes elsewhere when it can.
  std::span<const Backend* const> exclude;
  /// Fail-open: backends that are down or ejected are eligible too (draining ones never).
  bool include_down{false};
};

/// The backends of one pick, as a policy sees them: eligibility, weights and slow start.
/// Built by Pool::pick on the stack; valid only during Balancer::pick.
class Candidates {
 public:
  /// `warmup` is the slow-start window (zero: off); `max_weight` the largest static weight.
  Candidates(std::span<const std::shared_ptr<Backend>> backends, const PickContext& context,
             std::chrono::nanoseconds warmup, unsigned max_weight) noexcept
      : backends_(backends), context_(context), warmup_(warmup), max_weight_(max_weight) {}

  /// Number of backends (eligible or not).
  [[nodiscard]] std::size_t size() const noexcept { return backends_.size(); }
  /// Backend `i`.
  [[nodiscard]] Backend& operator[](std::size_t i) const noexcept { return *backends_[i]; }
  /// Whether backend `i` may take this request: usable (or down, in fail-open), not draining,
  /// not already tried.
  [[nodiscard]] bool eligible(std::size_t i) const noexcept;
  /// Its configured weight (1..256).
  [[nodiscard]] unsigned static_weight(std::size_t i) const noexcept;
  /// The largest configured weight among all backends.
  [[nodiscard]] unsigned max_weight() const noexcept { return max_weight_; }
  /// Slow-start factor in [0.1, 1]: 1 unless the backend came back less than the slow-start
  /// window ago, then rising linearly with the time since.
  [[nodiscard]] double warmth(std::size_t i) const noexcept;
  /// static_weight(i) × warmth(i).
  [[nodiscard]] double weight(std::size_t i) const noexcept;
  /// A uniformly distributed 64-bit random number (per-thread generator, no lock).
  [[nodiscard]] static std::uint64_t random() noexcept;
  /// A uniformly distributed number in [0, 1).
  [[nodiscard]] static double random_unit() noexcept;

 private:
  std::int64_t now_ns() const noexcept;

  std::span<const std::shared_ptr<Backend>> backends_;
  const PickContext& context_;
  std::chrono::nanoseconds warmup_;
  unsigned max_weight_;
  mutable std::int64_t now_{0};  // read once, on first use
};

/// A balancing policy. One instance serves every thread of a Pool: pick() is called
/// concurrently, must be thread-safe and must not block.
class Balancer {
 public:
  /// What pick() returns when no candidate is eligible.
  static constexpr std::size_t none = static_cast<std::size_t>(-1);

  /// Destroys the policy (a Pool holds it through a shared_ptr).
  virtual ~Balancer() = default;
  /// The policy's name, as given to --balance.
  [[nodiscard]] virtual std::string_view name() const noexcept = 0;
  /// True when the policy uses PickContext::key (the proxy then computes it).
  [[nodiscard]] virtual bool uses_key() const noexcept { return false; }
  /// The index of the chosen candidate, or `none` when none is eligible.
  virtual std::size_t pick(const Candidates& candidates, const PickContext& context) = 0;
};

/// Creates a policy by name: "round_robin", "least_conn", "p2c", "random" or "hash". Throws
/// std::invalid_argument for any other name.
std::unique_ptr<Balancer> make_balancer(std::string_view name);
/// The names make_balancer() accepts.
std::vector<std::string_view> balancer_names();

/// A 64-bit hash of `text` (FNV-1a followed by a mixer), used for request keys.
[[nodiscard]] std::uint64_t hash_key(std::string_view text) noexcept;

}  // namespace weldr
