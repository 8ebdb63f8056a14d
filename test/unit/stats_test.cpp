#include <weldr/stats.hpp>

#include <catch2/catch.hpp>

#include <thread>
#include <vector>

using namespace std::chrono_literals;
using weldr::LatencyHistogram;

TEST_CASE("histogram buckets and quantiles", "[stats]") {
  LatencyHistogram h;
  CHECK(h.snapshot().count == 0);
  CHECK(h.snapshot().quantile(0.5) == 0);

  for (int i = 0; i < 90; ++i)
    h.record(800us);  // bucket (0.5 ms, 1 ms]
  for (int i = 0; i < 10; ++i)
    h.record(40ms);  // bucket (25 ms, 50 ms]
  const auto s = h.snapshot();
  CHECK(s.count == 100);
  CHECK(s.buckets[1] == 90);
  CHECK(s.buckets[6] == 10);
  CHECK(s.sum_seconds == Approx(90 * 0.0008 + 10 * 0.040));
  CHECK(s.quantile(0.5) > 0.0005);
  CHECK(s.quantile(0.5) <= 0.001);
  CHECK(s.quantile(0.99) > 0.025);
  CHECK(s.quantile(0.99) <= 0.05);

  h.record(2h);  // beyond the last bound: the +Inf bucket
  CHECK(h.snapshot().buckets.back() == 1);
  CHECK(h.snapshot().quantile(1.0) == LatencyHistogram::kBounds.back());
}

TEST_CASE("stats counters from several threads", "[stats]") {
  weldr::Stats stats;
  LatencyHistogram h;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        stats.client_result(i % 10 != 0);
        stats.server_result(i % 5 != 0);
        h.record(1ms);
      }
    });
  }
  for (auto& t : threads)
    t.join();
  CHECK(stats.client_success() == 3600);
  CHECK(stats.client_failed() == 400);
  CHECK(stats.server_success() == 3200);
  CHECK(stats.server_failed() == 800);
  CHECK(h.snapshot().count == 4000);
}
