#include "options.hpp"

#include <weldr/pool.hpp>

#include <CLI/CLI.hpp>

#include <cctype>
#include <charconv>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

namespace weldr::cli {

std::optional<asio::ip::tcp::endpoint> parse_endpoint(std::string_view text) {
  std::string_view host;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos || text.substr(close + 1, 1) != ":") return std::nullopt;
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return std::nullopt;  // IPv6 needs brackets
  }
  unsigned port = 0;
  auto [end, perr] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || perr != std::errc{} || end != port_text.data() + port_text.size() || port > 65535) {
    return std::nullopt;
  }
  std::error_code ec;
  const auto address = asio::ip::make_address(std::string(host), ec);
  if (ec) return std::nullopt;
  return asio::ip::tcp::endpoint(address, static_cast<std::uint16_t>(port));  // port 0: any free port
}

std::optional<std::uint64_t> parse_size(std::string_view text) {
  std::uint64_t value = 0;
  const char* end = text.data() + text.size();
  auto [rest, err] = std::from_chars(text.data(), end, value);
  if (err != std::errc{} || rest == text.data()) return std::nullopt;
  unsigned shift = 0;
  if (rest != end) {
    switch (*rest) {
      case 'k':
      case 'K': shift = 10; break;
      case 'm':
      case 'M': shift = 20; break;
      case 'g':
      case 'G': shift = 30; break;
      default: return std::nullopt;
    }
    if (++rest != end) return std::nullopt;
  }
  if (shift != 0 && value > (UINT64_MAX >> shift)) return std::nullopt;
  return value << shift;
}

std::size_t auto_max_connections(std::uint64_t descriptor_limit) {
  constexpr std::uint64_t kReserved = 64;
  if (descriptor_limit <= kReserved + 2) return 1;
  return static_cast<std::size_t>(std::min<std::uint64_t>((descriptor_limit - kReserved) / 2, 1u << 30));
}

namespace {

// CLI11 validator for durations, so that bad values fail with CLI11's one-line message.
struct DurationValidator : CLI::Validator {
  DurationValidator() : CLI::Validator("DURATION") {
    func_ = [](std::string& value) -> std::string {
      return parse_duration(value) ? std::string{} : "invalid duration '" + value + "' (use e.g. 250ms, 2s, 1m)";
    };
  }
};

struct SizeValidator : CLI::Validator {
  SizeValidator() : CLI::Validator("SIZE") {
    func_ = [](std::string& value) -> std::string {
      return parse_size(value) ? std::string{} : "invalid size '" + value + "' (use bytes, or e.g. 8k, 1m, 2g)";
    };
  }
};

struct EndpointValidator : CLI::Validator {
  EndpointValidator() : CLI::Validator("HOST:PORT") {
    func_ = [](std::string& value) -> std::string {
      return parse_endpoint(value) ? std::string{}
                                   : "invalid address '" + value + "' (use IP:PORT, e.g. 127.0.0.1:8080)";
    };
  }
};

struct UrlValidator : CLI::Validator {
  UrlValidator() : CLI::Validator("URL") {
    func_ = [](std::string& value) -> std::string {
      std::error_code ec;
      return parse_backend_url(value, ec) ? std::string{}
                                          : "invalid server URL '" + value + "' (use http://IP:PORT or IP:PORT)";
    };
  }
};

// The --help section of each flag, so that 50 flags read like a manual's chapters.
std::string_view group_of(std::string_view name) {
  static const std::pair<std::string_view, std::string_view> groups[] = {
      {"ip", "Listeners"},
      {"threads", "Listeners"},
      {"backlog", "Listeners"},
      {"max-connections", "Listeners"},
      {"server", "Origins and balancing"},
      {"state-file", "Origins and balancing"},
      {"balance", "Origins and balancing"},
      {"hash-key", "Origins and balancing"},
      {"slow-start", "Origins and balancing"},
      {"retries", "Origins and balancing"},
      {"retry-budget", "Origins and balancing"},
      {"fail-open", "Origins and balancing"},
      {"admin-ip", "Management API"},
      {"admin-token", "Management API"},
      {"access-log", "Logging"},
      {"access-log-format", "Logging"},
      {"log-level", "Logging"},
      {"help", "General"},
      {"version", "General"},
      {"config", "Configuration"},
      {"print-config", "Configuration"},
      {"check-config", "Configuration"},
  };
  for (const auto& [flag, group] : groups) {
    if (name == flag) return group;
  }
  if (name.starts_with("health-") || name.starts_with("outlier-")) return "Health";
  if (name.starts_with("etcd") || name.starts_with("cluster-") || name.starts_with("node-") ||
      name.starts_with("lease-") || name.starts_with("vip") || name.starts_with("role-change") ||
      name == "on-role-change") {
    return "Cluster";
  }
  if (name.ends_with("-timeout") || name.starts_with("max-") || name == "buffer-size") return "Limits and timeouts";
  return "Other";
}

// --print-config's text: CLI11's, with the settings that are empty (no state file, no server...)
// commented out, so that the file reads back as it is and shows what can be set.
std::string config_text(const std::string& cli11) {
  std::string out = "# weldr-cli " WELDR_VERSION " configuration: weldr-cli --config FILE reads it back\n";
  std::istringstream in(cli11);
  std::string line;
  while (std::getline(in, line)) {
    if (line == "# General Options") continue;  // --help and --version: not settable in a file
    if (line.starts_with("# ") && line.ends_with(" Options")) line = "# ---- " + line.substr(2, line.size() - 10);
    if (line.ends_with("=\"\"") || line.ends_with("=''")) line = "# " + line;
    // A secret is not written out: it belongs in the environment (WELDR_ADMIN_TOKEN), not in a
    // file that is usually world-readable.
    if (line.starts_with("admin-token=") && line != "admin-token=\"\"") line = "# admin-token=\"<not printed>\"";
    out += line;
    out += '\n';
  }
  return out;
}

// "FILE:LINE: " when the error is about a key that the --config file sets, so that a bad file
// is found at once; "" otherwise. CLI11 names the key but not where it is.
std::string where_in_config(const CLI::App& app, const std::string& error, int argc, const char* const* argv) {
  std::string path;
  try {
    const CLI::Option* config = app.get_config_ptr();
    if (config == nullptr || config->count() != 1) return {};
    path = config->as<std::string>();
  } catch (const CLI::Error&) {
    return {};
  }
  std::ifstream in(path);
  if (!in) return {};  // the error names the file already
  // Whether `error` names the flag `key` exactly ("--access-log" is not "--access-log-format").
  auto names = [&](const std::string& key) {
    for (const std::string& form : {"--" + key, " " + key}) {
      for (auto at = error.find(form); at != std::string::npos; at = error.find(form, at + 1)) {
        const auto next = at + form.size();
        const char after = next < error.size() ? error[next] : ' ';
        if (!std::isalnum(static_cast<unsigned char>(after)) && after != '-' && after != '_') return true;
      }
    }
    return false;
  };
  // A flag given on the command line wins over the file: its error is not the file's.
  auto on_command_line = [&](const std::string& key) {
    for (int i = 1; i < argc; ++i) {
      const std::string_view arg(argv[i]);
      if (arg == "--" + key || arg.starts_with("--" + key + "=")) return true;
    }
    return false;
  };
  std::string line;
  bool about_file = false;
  for (int number = 1; std::getline(in, line); ++number) {
    const auto begin = line.find_first_not_of(" \t");
    if (begin == std::string::npos || line[begin] == '#' || line[begin] == ';' || line[begin] == '[') continue;
    const auto end = line.find_first_of("= \t", begin);
    const std::string key = line.substr(begin, end - begin);
    if (key.empty() || !names(key)) continue;
    if (on_command_line(key)) return {};
    about_file = true;
    return path + ":" + std::to_string(number) + ": ";
  }
  return about_file ? path + ": " : std::string();
}

}  // namespace

ParseResult parse_options(int argc, const char* const* argv) {
  Options o;
  std::string connect_timeout = "1s";
  std::string read_timeout = "30s";
  std::string client_timeout = "10s";
  std::string shutdown_timeout = "30s";
  std::string log_level = "info";
  std::string client_idle_timeout = "60s";
  std::string request_body_timeout = "0s";
  std::string max_request_line = "8k";
  std::string max_head_size = "64k";
  std::string max_body_size = "0";
  std::string max_connections = "auto";
  std::string buffer_size = "16k";

  CLI::App app{"weldr: an HTTP/1.1 reverse proxy and load balancer for dynamic fleets", "weldr-cli"};
  app.set_version_flag("--version", std::string("weldr-cli ") + WELDR_VERSION);
  app.add_option("--ip", o.listen, "Address the proxy listens on")->check(EndpointValidator{})->capture_default_str();
  app.add_option("--admin-ip", o.admin_listen, "Address of the management API")
      ->check(EndpointValidator{})
      ->capture_default_str();
  app.add_option("--admin-token", o.admin_token, "Bearer token every management API request must carry")
      ->envname("WELDR_ADMIN_TOKEN");
  app.add_option("--state-file", o.state_file,
                 "File that keeps registered servers across restarts (written on every change)");
  app.add_option("--server", o.servers, "Origin server URL (repeatable), e.g. http://127.0.0.1:12345")
      ->check(UrlValidator{});
  std::string threads = "auto";
  app.add_option("--threads", threads,
                 "Worker threads, one event loop and listener each (1 to 1024; auto: one per core)")
      ->check(CLI::Validator(
          [](std::string& value) -> std::string {
            unsigned n = 0;
            const auto [end, err] = std::from_chars(value.data(), value.data() + value.size(), n);
            const bool number = err == std::errc{} && end == value.data() + value.size() && !value.empty();
            return value == "auto" || (number && n >= 1 && n <= 1024)
                       ? std::string{}
                       : "invalid thread count '" + value + "' (use 1 to 1024, or auto)";
          },
          "N|auto"))
      ->capture_default_str();
  app.add_option("--connect-timeout", connect_timeout, "Timeout to connect to a backend")
      ->check(DurationValidator{})
      ->capture_default_str();
  app.add_option("--read-timeout", read_timeout, "Timeout for each read of a backend's response")
      ->check(DurationValidator{})
      ->capture_default_str();
  app.add_option("--client-timeout", client_timeout, "Timeout to receive a request head from a client")
      ->check(DurationValidator{})
      ->capture_default_str();
  app.add_option("--client-idle-timeout", client_idle_timeout,
                 "How long an idle keep-alive client connection stays open")
      ->check(DurationValidator{})
      ->capture_default_str();
  app.add_option("--request-body-timeout", request_body_timeout,
                 "Total time to receive a request body, 408 beyond it (0s: no total, only --client-timeout per read)")
      ->check(DurationValidator{})
      ->capture_default_str();
  app.add_option("--max-request-line", max_request_line, "Largest request line, URI included (414 beyond it)")
      ->check(SizeValidator{})
      ->capture_default_str();
  app.add_option("--max-head-size", max_head_size, "Largest request or response head (431 / 502 beyond it)")
      ->check(SizeValidator{})
      ->capture_default_str();
  app.add_option("--max-headers", o.proxy.max_header_count, "Most header fields in a request (431 beyond it)")
      ->check(CLI::Range(1u, 10000u))
      ->capture_default_str();
  app.add_option("--max-body-size", max_body_size, "Largest request body, 413 beyond it (0: no limit)")
      ->check(SizeValidator{})
      ->capture_default_str();
  app.add_option("--max-connections", max_connections,
                 "Client connections open at once; more wait in the listen backlog (auto: from ulimit -n; 0: no cap)")
      ->check(CLI::Validator(
          [](std::string& value) -> std::string {
            std::uint64_t n = 0;
            const auto [end, err] = std::from_chars(value.data(), value.data() + value.size(), n);
            const bool number = err == std::errc{} && end == value.data() + value.size() && !value.empty();
            return value == "auto" || number ? std::string{}
                                             : "invalid connection cap '" + value + "' (use a number or auto)";
          },
          "N|auto"))
      ->capture_default_str();
  app.add_option("--buffer-size", buffer_size,
                 "Size of each streaming buffer: one per direction while a request is in flight (4k to 1m)")
      ->check(SizeValidator{})
      ->capture_default_str();
  app.add_option("--backlog", o.proxy.backlog, "Listen backlog of the proxy's socket")
      ->check(CLI::Range(1, 65535))
      ->capture_default_str();
  app.add_option("--shutdown-timeout", shutdown_timeout, "Time in-flight requests get to finish on SIGTERM")
      ->check(DurationValidator{})
      ->capture_default_str();
  std::string health_interval = "10s";
  std::string health_timeout = "2s";
  std::string health_type = "http";
  app.add_option("--health-interval", health_interval, "Time between two health checks of a server")
      ->check(DurationValidator{})
      ->capture_default_str();
  app.add_option("--health-timeout", health_timeout, "Time allowed for one health check")
      ->check(DurationValidator{})
      ->capture_default_str();
  app.add_option("--health-path", o.health.path, "Request path of http health checks")->capture_default_str();
  app.add_option("--health-failures", o.health.failures, "Consecutive failed checks that take a server out")
      ->check(CLI::Range(1u, 1000u))
      ->capture_default_str();
  app.add_option("--health-passes", o.health.passes, "Consecutive passed checks that put it back")
      ->check(CLI::Range(1u, 1000u))
      ->capture_default_str();
  app.add_option("--health-type", health_type, "http (GET, expect 2xx) or tcp (connect only)")
      ->check(CLI::IsMember({"http", "tcp"}))
      ->capture_default_str();
  app.add_option("--retries", o.proxy.retries,
                 "Further backends tried when a connection fails before any response (idempotent requests, "
                 "or nothing sent)")
      ->check(CLI::Range(0u, 10u))
      ->capture_default_str();
  app.add_option("--retry-budget", o.proxy.retry_budget_percent,
                 "Retries allowed as a percentage of requests over 10 s (plus 10 per 10 s)")
      ->check(CLI::Range(0u, 100u))
      ->capture_default_str();
  app.add_option("--balance", o.balance, "Balancing policy: round_robin, least_conn, p2c, random or hash")
      ->check(CLI::IsMember({"round_robin", "least_conn", "p2c", "random", "hash"}))
      ->capture_default_str();
  std::string hash_key = "client_ip";
  app.add_option("--hash-key", hash_key, "What --balance hash hashes: client_ip, header:NAME or cookie:NAME")
      ->check(CLI::Validator(
          [](std::string& value) -> std::string {
            return parse_hash_key(value)
                       ? std::string{}
                       : "invalid hash key '" + value + "' (use client_ip, header:NAME or cookie:NAME)";
          },
          "KEY"))
      ->capture_default_str();
  std::string slow_start = "0s";
  app.add_option("--slow-start", slow_start, "Time over which a server that comes back ramps up its share (0s: off)")
      ->check(DurationValidator{})
      ->capture_default_str();
  std::string outlier_base = "30s";
  std::string outlier_max = "300s";
  app.add_option("--outlier-failures", o.outlier.consecutive_failures,
                 "Failed requests in a row that eject a server (connect errors, timeouts, resets, 5xx; 0: off)")
      ->check(CLI::Range(0u, 1000u))
      ->capture_default_str();
  app.add_option("--outlier-base-time", outlier_base, "Length of a first ejection; the n-th in a row lasts n times")
      ->check(DurationValidator{})
      ->capture_default_str();
  app.add_option("--outlier-max-time", outlier_max, "Longest ejection")
      ->check(DurationValidator{})
      ->capture_default_str();
  app.add_option("--outlier-max-percent", o.outlier.max_ejection_percent, "Largest share of servers ejected at once")
      ->check(CLI::Range(0u, 100u))
      ->capture_default_str();
  app.add_flag("--fail-open", o.proxy.fail_open,
               "When every server is down, keep sending to all of them instead of answering 503");
  std::string access_log_format = "combined";
  app.add_option("--access-log", o.access_log, "Write one line per request to this file (- for standard output)");
  app.add_option("--access-log-format", access_log_format, "combined, common or json")
      ->check(CLI::IsMember({"combined", "common", "json"}))
      ->capture_default_str();
  std::string lease_ttl = "2s";
  std::string etcd_timeout = "2s";
  std::string role_change_timeout = "10s";
  app.add_option("--etcd", o.cluster.etcd,
                 "etcd client URLs, comma-separated (http://host:port); turns cluster mode on")
      ->envname("WELDR_ETCD");
  app.add_option("--cluster-name", o.cluster.name, "Cluster name: its keys live under /weldr/<name>/ in etcd")
      ->capture_default_str();
  app.add_option("--node-name", o.cluster.node,
                 "This node's name in the cluster, unique (default: host name:proxy port)");
  app.add_option("--lease-ttl", lease_ttl, "etcd lease of this node's membership and leadership (1s to 60s)")
      ->check(DurationValidator{})
      ->capture_default_str();
  app.add_option("--etcd-timeout", etcd_timeout, "Time allowed for each call to etcd (API writes answer 503 after it)")
      ->check(DurationValidator{})
      ->capture_default_str();
  app.add_option("--vip", o.cluster.vip, "Virtual IP the active node holds, ADDR/LEN (IPv4 or IPv6)");
  app.add_option("--vip-interface", o.cluster.vip_interface, "Interface that the virtual IP goes on");
  app.add_option("--on-role-change", o.on_role_change,
                 "Command run with 'active' or 'passive' as its argument on each role change (at start: passive)");
  app.add_option("--role-change-timeout", role_change_timeout, "Time the --on-role-change command may take")
      ->check(DurationValidator{})
      ->capture_default_str();
  app.add_option("--etcd-user", o.cluster.etcd_user, "etcd user (the password comes from WELDR_ETCD_PASSWORD)");
  app.add_option("--log-level", log_level, "error, warn, info or debug")
      ->check(CLI::IsMember({"error", "warn", "info", "debug"}))
      ->capture_default_str();

  bool print_config = false;
  app.set_config("--config", "",
                 "Read options from this file: one `name = value` line per flag, as --print-config "
                 "writes them; flags on the command line win");
  app.allow_config_extras(CLI::config_extras_mode::error);
  app.add_flag("--print-config", print_config,
               "Write the effective configuration (defaults included) in the --config format, and exit")
      ->configurable(false);
  app.add_flag("--check-config", o.check_config,
               "Check the flags and the --config file (and read the --state-file), then exit 0 or 2 without "
               "binding anything")
      ->configurable(false);
  for (CLI::Option* option : app.get_options()) {
    const auto& names = option->get_lnames();
    if (!names.empty()) option->group(std::string(group_of(names.front())));
  }

  ParseResult result;
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForVersion&) {
    result.message = std::string("weldr-cli ") + WELDR_VERSION + "\n";
    return result;
  } catch (const CLI::Success&) {  // --help
    result.message = app.help();
    return result;
  } catch (const CLI::ParseError& e) {
    std::string what = e.what();
    constexpr std::string_view kUnknown = "INI was not able to parse ";
    if (const auto at = what.find(kUnknown); at != std::string::npos) {
      what = "unknown key '" + what.substr(at + kUnknown.size()) + "'";
    }
    result.exit_code = 2;
    result.message = "weldr-cli: " + where_in_config(app, e.what(), argc, argv) + what + " (see --help)";
    return result;
  }
  if (print_config) {
    result.message = config_text(app.config_to_str(true, true));
    return result;
  }
  // A value the checks below refuse: in the file's terms (file:line) when the file set it.
  auto fail = [&](const std::string& why) {
    result.exit_code = 2;
    result.message = "weldr-cli: " + where_in_config(app, why, argc, argv) + why + " (see --help)";
    return result;
  };

  o.proxy.connect_timeout = *parse_duration(connect_timeout);
  o.proxy.read_timeout = *parse_duration(read_timeout);
  o.proxy.client_header_timeout = *parse_duration(client_timeout);
  o.shutdown_timeout = *parse_duration(shutdown_timeout);
  o.proxy.client_idle_timeout = *parse_duration(client_idle_timeout);
  o.proxy.request_body_timeout = *parse_duration(request_body_timeout);
  o.proxy.max_request_line = *parse_size(max_request_line);
  o.proxy.max_head_size = *parse_size(max_head_size);
  o.proxy.max_body_size = *parse_size(max_body_size);
  if (max_connections != "auto") o.max_connections = *parse_size(max_connections);
  o.proxy.buffer_size = *parse_size(buffer_size);
  if (o.proxy.buffer_size < 4096 || o.proxy.buffer_size > (1u << 20)) return fail("--buffer-size must be 4k to 1m");
  if (o.proxy.max_request_line == 0 || o.proxy.max_head_size < 64 || o.proxy.max_head_size > (1u << 30) ||
      o.proxy.max_request_line > o.proxy.max_head_size) {
    return fail("--max-request-line must be at least 1 and at most --max-head-size, which must be 64 bytes to 1g");
  }
  o.health.interval = *parse_duration(health_interval);
  o.health.timeout = *parse_duration(health_timeout);
  o.health.type = health_type == "tcp" ? HealthCheckOptions::Type::tcp : HealthCheckOptions::Type::http;
  if (const auto why = o.health.validate(); !why.empty()) return fail("invalid health-check settings: " + why);
  o.proxy.hash_key = *parse_hash_key(hash_key);
  o.access_log_format = *parse_access_log_format(access_log_format);
  o.slow_start = *parse_duration(slow_start);
  o.outlier.base_ejection_time = *parse_duration(outlier_base);
  o.outlier.max_ejection_time = *parse_duration(outlier_max);
  if (o.outlier.base_ejection_time.count() <= 0) return fail("--outlier-base-time must be more than 0");
  o.log_level = *parse_log_level(log_level);
  if (!o.cluster.etcd.empty() || !o.cluster.vip.empty() || !o.on_role_change.empty()) {
    if (o.cluster.etcd.empty()) return fail("--vip and --on-role-change need cluster mode (--etcd)");
    const auto ttl = *parse_duration(lease_ttl);
    if (ttl.count() % 1000 != 0 || ttl < std::chrono::seconds(1) || ttl > std::chrono::seconds(60)) {
      return fail("--lease-ttl must be whole seconds from 1s to 60s");
    }
    o.cluster.lease_ttl = std::chrono::duration_cast<std::chrono::seconds>(ttl);
    o.cluster.request_timeout = *parse_duration(etcd_timeout);
    o.role_change_timeout = *parse_duration(role_change_timeout);
    if (const char* password = std::getenv("WELDR_ETCD_PASSWORD")) o.cluster.etcd_password = password;
    if (!o.cluster.etcd_user.empty() && o.cluster.etcd_password.empty()) {
      return fail("--etcd-user needs the password in WELDR_ETCD_PASSWORD");
    }
    ClusterOptions check = o.cluster;
    if (check.node.empty()) check.node = "node";  // main() picks the default name
    if (const std::string why = validate(check); !why.empty()) return fail(why);
  }
  if (threads != "auto") std::from_chars(threads.data(), threads.data() + threads.size(), o.threads);
  if (o.threads == 0) o.threads = std::max(1u, std::thread::hardware_concurrency());
  o.proxy.reuse_port = o.threads > 1;
  result.options = std::move(o);
  return result;
}

}  // namespace weldr::cli
