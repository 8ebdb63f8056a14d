#pragma once
// weldr-cli's command line: parsing and validation, kept apart from main() so it can be tested.

#include <weldr/access_log.hpp>
#include <weldr/cluster.hpp>
#include <weldr/health_checker.hpp>
#include <weldr/log.hpp>
#include <weldr/pool.hpp>
#include <weldr/proxy.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace weldr::cli {

/// Everything weldr-cli is configured with.
struct Options {
  std::string listen{"0.0.0.0:8080"};                            ///< --ip
  std::string admin_listen{"127.0.0.1:8687"};                    ///< --admin-ip
  std::string admin_token;                                       ///< --admin-token or WELDR_ADMIN_TOKEN
  std::string state_file;                                        ///< --state-file
  std::vector<std::string> servers;                              ///< --server, repeatable
  unsigned threads{0};                                           ///< --threads; 0 means one per core
  LogLevel log_level{LogLevel::info};                            ///< --log-level
  std::chrono::milliseconds shutdown_timeout{30000};             ///< --shutdown-timeout
  ProxyOptions proxy;                                            ///< timeouts and limits
  HealthCheckOptions health;                                     ///< --health-* (global health-check settings)
  std::string balance{"round_robin"};                            ///< --balance
  std::chrono::milliseconds slow_start{0};                       ///< --slow-start; 0 means off
  OutlierOptions outlier;                                        ///< --outlier-*
  std::string access_log;                                        ///< --access-log: a path, "-" or "" for none
  AccessLogFormat access_log_format{AccessLogFormat::combined};  ///< --access-log-format
  /// --max-connections: the cap on open client connections; nothing means "from the descriptor
  /// limit" (see auto_max_connections), 0 means no cap.
  std::optional<std::size_t> max_connections;
  /// Cluster mode (--etcd and the rest); `cluster.etcd` empty means standalone. `cluster.node`
  /// is empty when --node-name was not given (main() uses host name:proxy port).
  ClusterOptions cluster;
  std::string on_role_change;                            ///< --on-role-change: a command
  std::chrono::milliseconds role_change_timeout{10000};  ///< --role-change-timeout
  bool check_config{false};                              ///< --check-config: validate, then exit without binding
};

/// The default connection cap for a descriptor limit: each client connection may hold two
/// descriptors (client and backend), and some are kept for listeners, health checks and logs.
std::size_t auto_max_connections(std::uint64_t descriptor_limit);

/// Parses a byte size: a number with an optional k, m or g suffix (KiB, MiB, GiB).
std::optional<std::uint64_t> parse_size(std::string_view text);

/// Outcome of parsing: either options, or an exit code and what to print.
struct ParseResult {
  std::optional<Options> options;  ///< set when weldr-cli should run
  int exit_code{0};                ///< when not running: 0 after --help/--version, 2 on bad input
  std::string message;             ///< help text, version, or a one-line error
};

/// Parses argv. Never throws and never prints.
ParseResult parse_options(int argc, const char* const* argv);

/// Parses "250ms", "2s", "1m", "1h" (a bare number means seconds); shared with the library.
using weldr::parse_duration;

/// Parses "HOST:PORT" or "[V6]:PORT" with an IP literal host; nothing when invalid.
std::optional<asio::ip::tcp::endpoint> parse_endpoint(std::string_view text);

}  // namespace weldr::cli
