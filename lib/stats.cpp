#include <weldr/stats.hpp>

#include <algorithm>

namespace weldr {

void LatencyHistogram::record(std::chrono::nanoseconds latency) noexcept {
  const double seconds = std::chrono::duration<double>(latency).count();
  const auto bucket =
      static_cast<std::size_t>(std::lower_bound(kBounds.begin(), kBounds.end(), seconds) - kBounds.begin());
  buckets_[bucket].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(static_cast<std::uint64_t>(std::max<std::int64_t>(0, latency.count())), std::memory_order_relaxed);
}

LatencyHistogram::Snapshot LatencyHistogram::snapshot() const noexcept {
  Snapshot s;
  for (std::size_t i = 0; i < kBuckets; ++i) {
    s.buckets[i] = buckets_[i].load(std::memory_order_relaxed);
    s.count += s.buckets[i];  // consistent with the buckets, unlike count_ read separately
  }
  s.sum_seconds = static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9;
  return s;
}

// Linear interpolation inside the bucket holding the q-th observation, as Prometheus'
// histogram_quantile() does; the +Inf bucket reports the last finite bound.
double LatencyHistogram::Snapshot::quantile(double q) const noexcept {
  if (count == 0) return 0;
  const double rank = std::clamp(q, 0.0, 1.0) * static_cast<double>(count);
  double seen = 0;
  for (std::size_t i = 0; i < kBuckets; ++i) {
    const auto in_bucket = static_cast<double>(buckets[i]);
    if (in_bucket > 0 && seen + in_bucket >= rank) {
      if (i == kBounds.size()) return kBounds.back();
      const double lower = i == 0 ? 0.0 : kBounds[i - 1];
      return lower + (kBounds[i] - lower) * ((rank - seen) / in_bucket);
    }
    seen += in_bucket;
  }
  return kBounds.back();
}

}  // namespace weldr
