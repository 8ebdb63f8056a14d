#pragma once
/// \file
/// Traffic counters and latency histograms, shared by every Proxy and read by the management API.

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

namespace weldr {

/// A latency histogram with fixed buckets; recording is lock-free and safe from any thread.
class LatencyHistogram {
 public:
  /// Upper bounds of the buckets, in seconds (the Prometheus `le` labels); one more bucket,
  /// +Inf, follows the last.
  static constexpr std::array<double, 16> kBounds{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                  0.25,   0.5,   1.0,    2.5,   5.0,  10.0,  30.0, 60.0};
  /// Number of buckets, +Inf included.
  static constexpr std::size_t kBuckets = kBounds.size() + 1;

  /// A consistent-enough copy of the counts (each bucket read atomically).
  struct Snapshot {
    std::array<std::uint64_t, kBuckets> buckets{};  ///< per bucket, not cumulative
    std::uint64_t count{0};                         ///< observations
    double sum_seconds{0};                          ///< sum of all observations

    /// Estimated q-quantile (0 < q < 1) in seconds, interpolated inside its bucket; 0 when empty.
    [[nodiscard]] double quantile(double q) const noexcept;
  };

  /// Records one observation.
  void record(std::chrono::nanoseconds latency) noexcept;
  /// Copies the counts.
  [[nodiscard]] Snapshot snapshot() const noexcept;

 private:
  std::array<std::atomic<std::uint64_t>, kBuckets> buckets_{};
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_ns_{0};
};

/// Global request counters: what clients asked of weldr, and what weldr asked of origins.
///
/// client: a request received from a client. success: answered with a complete response relayed
/// from an origin. failed: answered by weldr itself with an error (4xx/5xx of its own), or the
/// connection broke before a complete response was sent.
/// server: a request sent (or attempted) to an origin. success: a complete response that is not
/// 5xx. failed: connect error, timeout, reset or cut response, or a 5xx status.
class Stats {
 public:
  /// Counts one finished client request.
  void client_result(bool success) noexcept {
    (success ? client_success_ : client_failed_).fetch_add(1, std::memory_order_relaxed);
  }
  /// Counts one finished request to an origin.
  void server_result(bool success) noexcept {
    (success ? server_success_ : server_failed_).fetch_add(1, std::memory_order_relaxed);
  }
  /// Client requests answered with a complete relayed response.
  [[nodiscard]] std::uint64_t client_success() const noexcept {
    return client_success_.load(std::memory_order_relaxed);
  }
  /// Client requests answered with an error of weldr's own or broken off.
  [[nodiscard]] std::uint64_t client_failed() const noexcept { return client_failed_.load(std::memory_order_relaxed); }
  /// Requests to origins that got a complete, non-5xx response.
  [[nodiscard]] std::uint64_t server_success() const noexcept {
    return server_success_.load(std::memory_order_relaxed);
  }
  /// Requests to origins that failed or got a 5xx.
  [[nodiscard]] std::uint64_t server_failed() const noexcept { return server_failed_.load(std::memory_order_relaxed); }
  /// Counts a retry that went out (`sent`) or that the retry budget refused.
  void retry(bool sent) noexcept { (sent ? retries_ : retries_denied_).fetch_add(1, std::memory_order_relaxed); }
  /// Requests tried again on another backend.
  [[nodiscard]] std::uint64_t retries() const noexcept { return retries_.load(std::memory_order_relaxed); }
  /// Retries that the retry budget refused.
  [[nodiscard]] std::uint64_t retries_denied() const noexcept {
    return retries_denied_.load(std::memory_order_relaxed);
  }

 private:
  std::atomic<std::uint64_t> client_success_{0};
  std::atomic<std::uint64_t> client_failed_{0};
  std::atomic<std::uint64_t> server_success_{0};
  std::atomic<std::uint64_t> server_failed_{0};
  std::atomic<std::uint64_t> retries_{0};
  std::atomic<std::uint64_t> retries_denied_{0};
};

}  // namespace weldr
