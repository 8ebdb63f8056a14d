#pragma once
/// \file
/// Active health checks: take a backend out after consecutive failures, back after passes.

#include <asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace weldr {

class Pool;
namespace detail {
struct HealthCheckerImpl;
}

/// How one backend is checked. The defaults are weldr's historical ones.
struct HealthCheckOptions {
  /// What a check does.
  enum class Type {
    http,  ///< connect, send a request, expect a status in [expect_min, expect_max]
    tcp,   ///< connect only
  };
  Type type{Type::http};                      ///< "http" or "tcp"
  std::string path{"/"};                      ///< request target of an http check
  std::string host;                           ///< Host header of an http check ("" means ip:port)
  int expect_min{200};                        ///< lowest status that passes
  int expect_max{299};                        ///< highest status that passes
  std::chrono::milliseconds interval{10000};  ///< time between two checks of one backend
  std::chrono::milliseconds timeout{2000};    ///< time allowed for one check
  unsigned failures{3};                       ///< consecutive failures that take a backend down
  unsigned passes{2};                         ///< consecutive passes that bring it back

  /// Checks the values; returns why they are unusable, or "" when they are fine.
  [[nodiscard]] std::string validate() const;
};

/// Applies a JSON object of settings ({"type", "path", "host", "expect", "interval", "timeout",
/// "failures", "passes"}; durations as "2s"/"250ms" or milliseconds, expect as 200 or
/// "200-399") over `base`. Nothing, and `error` set, when the object is invalid.
std::optional<HealthCheckOptions> apply_check_json(const HealthCheckOptions& base, std::string_view json,
                                                   std::string& error);
/// The settings as a JSON object.
std::string to_json(const HealthCheckOptions& options);
/// Parses "250ms", "2s", "1m", "1h" (a bare number means seconds).
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text);

/// The rise/fall logic of one backend, without I/O: counts consecutive results.
class RiseFall {
 public:
  /// What one result changed.
  enum class Change {
    none,       ///< the backend stays as it was
    went_down,  ///< it reached `failures` failed checks in a row while up
    went_up,    ///< it reached `passes` passed checks in a row while down
  };
  /// Starts up (as a new backend does) or down.
  RiseFall(unsigned failures, unsigned passes, bool up = true) : failures_(failures), passes_(passes), up_(up) {}
  /// Records a check result and says whether the backend changed state.
  Change record(bool ok) noexcept;
  /// Changes the thresholds (counts so far are kept).
  void set_thresholds(unsigned failures, unsigned passes) noexcept {
    failures_ = failures;
    passes_ = passes;
  }
  /// True while the backend counts as up.
  [[nodiscard]] bool up() const noexcept { return up_; }
  /// Consecutive failures so far (reset by a pass).
  [[nodiscard]] unsigned consecutive_failures() const noexcept { return bad_; }
  /// Consecutive passes so far (reset by a failure).
  [[nodiscard]] unsigned consecutive_passes() const noexcept { return good_; }

 private:
  unsigned failures_;
  unsigned passes_;
  bool up_;
  unsigned bad_{0};
  unsigned good_{0};
};

/// What the checker knows about one backend.
struct HealthStatus {
  bool up{true};                                        ///< its health verdict
  unsigned consecutive_failures{0};                     ///< failed checks in a row
  unsigned consecutive_passes{0};                       ///< passed checks in a row
  std::uint64_t checks{0};                              ///< checks done
  std::string last_result;                              ///< "ok" or why the last check failed
  std::string last_change_reason;                       ///< why it last changed state ("" if it never did)
  std::chrono::system_clock::time_point last_change{};  ///< when (epoch if never)
};

/// Runs active checks against every backend of a Pool, added or removed at any time, on the
/// host's control io_context (run by one thread), and sets each backend down or active.
class HealthChecker {
 public:
  /// A checker for `pool` (which must outlive it) with these global settings.
  HealthChecker(asio::io_context& io, Pool& pool, HealthCheckOptions defaults = {});
  /// Stops every check.
  ~HealthChecker();
  /// Not copyable.
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  /// Starts checking every backend now in the pool and every one added later. Call on the
  /// io_context's thread, or before it runs.
  void start();
  /// Stops checking (backends keep their state). Call on the io_context's thread, or after it stopped.
  void stop();
  /// The global settings.
  [[nodiscard]] HealthCheckOptions defaults() const;
  /// Replaces the global settings (validated by the caller); backends with settings of their
  /// own keep those fields. Takes effect at each backend's next check. Thread-safe.
  void set_defaults(const HealthCheckOptions& options);
  /// What the checker knows about the backend with this id. Thread-safe.
  [[nodiscard]] std::optional<HealthStatus> status(std::string_view id) const;

 private:
  std::shared_ptr<detail::HealthCheckerImpl> impl_;
};

}  // namespace weldr
