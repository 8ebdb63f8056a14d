#pragma once
// JSON in and out of the management API: pure functions, no sockets, unit-tested on their own.

#include <weldr/cluster.hpp>
#include <weldr/health_checker.hpp>
#include <weldr/pool.hpp>
#include <weldr/stats.hpp>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace weldr::api {

/// A parsed POST /servers body.
struct Registration {
  BackendAddress address;
  std::string check;   ///< the "check" object re-serialised, or "" when absent
  unsigned weight{0};  ///< "weight", 1..256; 0 when not given (1 for a new server, unchanged for a known one)
};

/// Parses a registration in any of the accepted shapes: {"url": "http://IP:PORT"},
/// {"url": "IP:PORT"} or {"ip": "IP", "port": "PORT" | PORT}, each with an optional "check"
/// object and an optional "weight" (an integer 1..256). On failure returns nothing and sets `error` to what is wrong.
std::optional<Registration> parse_registration(std::string_view body, std::string& error);

/// The id for the path /servers/IP/PORT, or nothing (with `error`) when IP or PORT is invalid.
std::optional<std::string> id_from_path(std::string_view ip, std::string_view port, std::string& error);

/// {"error": message}
std::string error_json(std::string_view message);
/// The API index: {"about", "links": [...]}.
std::string index_json();
/// One server, with what the health checker knows of it when `health` is given.
std::string server_json(const Backend& backend, const HealthChecker* health = nullptr);
/// Every server: [ {...}, ... ].
std::string servers_json(const std::vector<std::shared_ptr<Backend>>& backends, const HealthChecker* health = nullptr);
/// {"client": {"success", "failed"}, "server": {"success", "failed"}}
std::string stats_json(const Stats& stats);
/// One object per backend with counters, state and latency percentiles.
std::string stats_detail_json(const std::vector<std::shared_ptr<Backend>>& backends);
/// The same counters and histograms in the Prometheus text exposition format (version 0.0.4).
std::string metrics_text(const Stats& stats, const std::vector<std::shared_ptr<Backend>>& backends);

/// The path of a server's own resource: /servers/IP/PORT.
std::string server_path(const Backend& backend);

/// GET /cluster in cluster mode.
std::string cluster_json(const ClusterStatus& status);
/// GET /cluster on a node that is not in a cluster.
std::string standalone_cluster_json();
/// The cluster's lines of /metrics.
std::string cluster_metrics(const ClusterStatus& status);

}  // namespace weldr::api
