#include "options.hpp"

#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using weldr::cli::parse_duration;
using weldr::cli::parse_options;

namespace {
weldr::cli::ParseResult parse(std::vector<const char*> args) {
  args.insert(args.begin(), "weldr-cli");
  return parse_options(static_cast<int>(args.size()), args.data());
}
}  // namespace

TEST_CASE("durations", "[cli]") {
  CHECK(parse_duration("250ms") == 250ms);
  CHECK(parse_duration("2s") == 2000ms);
  CHECK(parse_duration("1m") == 60000ms);
  CHECK(parse_duration("1h") == 3600000ms);
  CHECK(parse_duration("5") == 5000ms);
  for (const char* bad : {"", "ms", "-1s", "1.5s", "2 s", "3d", "99999999999999h"}) {
    INFO(bad);
    CHECK_FALSE(parse_duration(bad));
  }
}

TEST_CASE("listen addresses", "[cli]") {
  using weldr::cli::parse_endpoint;
  REQUIRE(parse_endpoint("127.0.0.1:8080"));
  CHECK(parse_endpoint("127.0.0.1:8080")->port() == 8080);
  CHECK(parse_endpoint("0.0.0.0:0")->port() == 0);
  REQUIRE(parse_endpoint("[::1]:80"));
  CHECK(parse_endpoint("[::1]:80")->address().is_v6());
  for (const char* bad : {"", "8080", "localhost:80", "1.2.3.4:", "1.2.3.4:65536", "::1:80", "[::1]80", "1.2.3.4:8x"}) {
    INFO(bad);
    CHECK_FALSE(parse_endpoint(bad));
  }
}

TEST_CASE("defaults and flags", "[cli]") {
  auto r = parse({});
  REQUIRE(r.options);
  CHECK(r.options->listen == "0.0.0.0:8080");
  CHECK(r.options->admin_listen == "127.0.0.1:8687");
  CHECK(r.options->threads >= 1);
  CHECK(r.options->proxy.connect_timeout == 1s);

  r = parse({"--ip",
             "127.0.0.1:9000",
             "--server",
             "http://127.0.0.1:1",
             "--server",
             "127.0.0.1:2",
             "--threads",
             "3",
             "--connect-timeout",
             "250ms",
             "--read-timeout",
             "2s",
             "--client-timeout",
             "1m",
             "--log-level",
             "debug",
             "--retries",
             "2",
             "--fail-open",
             "--health-interval",
             "500ms",
             "--health-type",
             "tcp"});
  REQUIRE(r.options);
  CHECK(r.options->servers.size() == 2);
  CHECK(r.options->threads == 3);
  CHECK(r.options->proxy.reuse_port);
  CHECK(r.options->proxy.connect_timeout == 250ms);
  CHECK(r.options->proxy.read_timeout == 2s);
  CHECK(r.options->proxy.client_header_timeout == 60s);
  CHECK(r.options->log_level == weldr::LogLevel::debug);
  CHECK(r.options->proxy.retries == 2);
  CHECK(r.options->proxy.fail_open);
  CHECK(r.options->health.interval == 500ms);
  CHECK(r.options->health.type == weldr::HealthCheckOptions::Type::tcp);
}

TEST_CASE("balancing, outlier detection, slow start and retry budget flags", "[cli]") {
  auto r = parse({});
  REQUIRE(r.options);
  CHECK(r.options->balance == "round_robin");
  CHECK(r.options->slow_start == 0ms);
  CHECK(r.options->outlier.consecutive_failures == 5);
  CHECK(r.options->outlier.base_ejection_time == 30s);
  CHECK(r.options->outlier.max_ejection_time == 300s);
  CHECK(r.options->outlier.max_ejection_percent == 50);
  CHECK(r.options->proxy.retry_budget_percent == 20);
  CHECK(r.options->proxy.hash_key.source == weldr::HashKey::Source::client_ip);
  CHECK(r.options->access_log.empty());
  CHECK(r.options->access_log_format == weldr::AccessLogFormat::combined);
  r = parse({"--access-log", "-", "--access-log-format", "json"});
  REQUIRE(r.options);
  CHECK(r.options->access_log == "-");
  CHECK(r.options->access_log_format == weldr::AccessLogFormat::json);
  r = parse({});

  r = parse({"--balance", "hash", "--hash-key", "cookie:session", "--slow-start", "30s", "--outlier-failures", "3",
             "--outlier-base-time", "10s", "--outlier-max-time", "2m", "--outlier-max-percent", "30", "--retry-budget",
             "50"});
  REQUIRE(r.options);
  CHECK(r.options->balance == "hash");
  CHECK(r.options->proxy.hash_key.source == weldr::HashKey::Source::cookie);
  CHECK(r.options->proxy.hash_key.name == "session");
  CHECK(r.options->slow_start == 30s);
  CHECK(r.options->outlier.consecutive_failures == 3);
  CHECK(r.options->outlier.base_ejection_time == 10s);
  CHECK(r.options->outlier.max_ejection_time == 120s);
  CHECK(r.options->outlier.max_ejection_percent == 30);
  CHECK(r.options->proxy.retry_budget_percent == 50);

  for (const char* policy : {"round_robin", "least_conn", "p2c", "random"}) {
    INFO(policy);
    r = parse({"--balance", policy});
    REQUIRE(r.options);
    CHECK(r.options->balance == policy);
  }
  r = parse({"--hash-key", "header:X-User", "--outlier-failures", "0"});
  REQUIRE(r.options);
  CHECK(r.options->proxy.hash_key.source == weldr::HashKey::Source::header);
  CHECK(r.options->proxy.hash_key.name == "X-User");
  CHECK(r.options->outlier.consecutive_failures == 0);
}

TEST_CASE("sizes", "[cli]") {
  using weldr::cli::parse_size;
  CHECK(parse_size("0") == 0u);
  CHECK(parse_size("8192") == 8192u);
  CHECK(parse_size("8k") == 8192u);
  CHECK(parse_size("8K") == 8192u);
  CHECK(parse_size("10m") == 10u * 1024 * 1024);
  CHECK(parse_size("2g") == 2ull * 1024 * 1024 * 1024);
  for (const char* bad : {"", "k", "-1", "1.5m", "8 k", "8kb", "1t", "99999999999999999999", "17179869184g"}) {
    INFO(bad);
    CHECK_FALSE(parse_size(bad));
  }
}

TEST_CASE("limit flags", "[cli]") {
  auto r = parse({});
  REQUIRE(r.options);
  CHECK(r.options->proxy.max_request_line == 8192);
  CHECK(r.options->proxy.max_head_size == 64 * 1024);
  CHECK(r.options->proxy.max_header_count == 100);
  CHECK(r.options->proxy.max_body_size == 0);
  CHECK(r.options->proxy.request_body_timeout == 0ms);
  CHECK(r.options->proxy.client_idle_timeout == 60s);
  CHECK(r.options->proxy.backlog == 1024);
  CHECK_FALSE(r.options->max_connections);  // auto
  CHECK(r.options->proxy.buffer_size == 16 * 1024);

  r = parse({"--max-request-line", "4k", "--max-head-size", "32k", "--max-headers", "50", "--max-body-size", "10m",
             "--request-body-timeout", "2m", "--client-idle-timeout", "5s", "--backlog", "4096", "--max-connections",
             "10000", "--buffer-size", "64k"});
  REQUIRE(r.options);
  CHECK(r.options->proxy.buffer_size == 64 * 1024);
  CHECK(r.options->proxy.max_request_line == 4096);
  CHECK(r.options->proxy.max_head_size == 32 * 1024);
  CHECK(r.options->proxy.max_header_count == 50);
  CHECK(r.options->proxy.max_body_size == 10u * 1024 * 1024);
  CHECK(r.options->proxy.request_body_timeout == 120s);
  CHECK(r.options->proxy.client_idle_timeout == 5s);
  CHECK(r.options->proxy.backlog == 4096);
  CHECK(r.options->max_connections == 10000u);
  r = parse({"--max-connections", "0"});
  REQUIRE(r.options);
  CHECK(r.options->max_connections == 0u);

  // Two descriptors per connection, and a reserve.
  CHECK(weldr::cli::auto_max_connections(1024) == 480);
  CHECK(weldr::cli::auto_max_connections(20000) == 9968);
  CHECK(weldr::cli::auto_max_connections(64) == 1);
}

TEST_CASE("bad input is one line and exit code 2", "[cli]") {
  for (auto args : std::vector<std::vector<const char*>>{{"--ip", "nowhere"},
                                                         {"--server", "https://1.2.3.4:1"},
                                                         {"--threads", "0"},
                                                         {"--read-timeout", "soon"},
                                                         {"--log-level", "loud"},
                                                         {"--retries", "11"},
                                                         {"--health-failures", "0"},
                                                         {"--health-type", "udp"},
                                                         {"--balance", "fastest"},
                                                         {"--hash-key", "url"},
                                                         {"--hash-key", "header:"},
                                                         {"--slow-start", "soon"},
                                                         {"--outlier-failures", "-1"},
                                                         {"--outlier-base-time", "0s"},
                                                         {"--outlier-max-percent", "101"},
                                                         {"--retry-budget", "200"},
                                                         {"--access-log-format", "apache"},
                                                         {"--max-body-size", "10x"},
                                                         {"--max-body-size", "-1"},
                                                         {"--max-request-line", "0"},
                                                         {"--max-request-line", "128k"},
                                                         {"--max-head-size", "2g"},
                                                         {"--max-headers", "0"},
                                                         {"--max-connections", "many"},
                                                         {"--backlog", "0"},
                                                         {"--buffer-size", "1k"},
                                                         {"--buffer-size", "2m"},
                                                         {"--request-body-timeout", "soon"},
                                                         {"--client-idle-timeout", "-5s"},
                                                         {"--bogus"}}) {
    auto r = parse(args);
    INFO(args[0]);
    CHECK_FALSE(r.options);
    CHECK(r.exit_code == 2);
    CHECK(r.message.find('\n') == std::string::npos);
    CHECK(r.message.rfind("weldr-cli: ", 0) == 0);
  }
  auto help = parse({"--help"});
  CHECK_FALSE(help.options);
  CHECK(help.exit_code == 0);
  CHECK(help.message.find("--server") != std::string::npos);
}

TEST_CASE("cluster flags", "[cli]") {
  const auto standalone = parse({});
  REQUIRE(standalone.options);
  CHECK(standalone.options->cluster.etcd.empty());

  const auto r = parse({"--etcd", "http://10.0.0.5:2379,http://10.0.0.6:2379", "--cluster-name", "shop", "--node-name",
                        "lb-a", "--lease-ttl", "5s", "--etcd-timeout", "750ms", "--vip", "192.0.2.10/24",
                        "--vip-interface", "eth0", "--on-role-change", "/bin/true", "--role-change-timeout", "3s"});
  INFO(r.message);
  REQUIRE(r.options);
  const auto& c = r.options->cluster;
  CHECK(c.etcd == "http://10.0.0.5:2379,http://10.0.0.6:2379");
  CHECK(c.name == "shop");
  CHECK(c.node == "lb-a");
  CHECK(c.lease_ttl == std::chrono::seconds(5));
  CHECK(c.request_timeout == 750ms);
  CHECK(c.vip == "192.0.2.10/24");
  CHECK(c.vip_interface == "eth0");
  CHECK(r.options->on_role_change == "/bin/true");
  CHECK(r.options->role_change_timeout == 3000ms);

  const auto defaults = parse({"--etcd", "127.0.0.1:2379"});
  REQUIRE(defaults.options);
  CHECK(defaults.options->cluster.name == "default");
  CHECK(defaults.options->cluster.node.empty());  // main() uses host name:port
  CHECK(defaults.options->cluster.lease_ttl == std::chrono::seconds(2));
  CHECK(defaults.options->cluster.request_timeout == 2000ms);

  for (const auto& bad : std::vector<std::vector<const char*>>{
           {"--etcd", "ftp://x:1"},
           {"--etcd", "http://127.0.0.1:2379", "--lease-ttl", "2500ms"},
           {"--etcd", "http://127.0.0.1:2379", "--vip-interface", "eth0"},
           {"--etcd", "http://127.0.0.1:2379", "--vip", "fd00::1", "--vip-interface", "eth0"},
           {"--on-role-change", "/bin/true"},
       }) {
    const auto failed = parse(bad);
    INFO(failed.message);
    CHECK_FALSE(failed.options);
    CHECK(failed.exit_code == 2);
    CHECK(failed.message.find('\n') == std::string::npos);
  }
}

namespace {

// A configuration file of the test's own, removed at the end.
struct ConfigFile {
  explicit ConfigFile(const std::string& text)
      : path((std::filesystem::temp_directory_path() /
              ("weldr-options-test-" + std::to_string(::getpid()) + "-" + std::to_string(next_++) + ".conf"))
                 .string()) {
    std::ofstream(path) << text;
  }
  ~ConfigFile() { std::remove(path.c_str()); }
  ConfigFile(const ConfigFile&) = delete;
  ConfigFile& operator=(const ConfigFile&) = delete;
  std::string path;

 private:
  static inline int next_ = 0;  // several files may be open at once
};

}  // namespace

TEST_CASE("a configuration file sets every flag; the command line wins", "[cli]") {
  ConfigFile file(
      "# a comment\n"
      "ip = \"127.0.0.1:9080\"\n"
      "threads = 3\n"
      "server = [\"127.0.0.1:9001\", \"http://127.0.0.1:9002\"]\n"
      "read-timeout = \"5s\"\n"
      "fail-open = true\n"
      "balance = \"least_conn\"\n"
      "etcd = \"http://127.0.0.1:2379\"\n"
      "lease-ttl = \"3s\"\n");
  const auto r = parse({"--config", file.path.c_str(), "--threads", "2"});
  INFO(r.message);
  REQUIRE(r.options);
  CHECK(r.options->listen == "127.0.0.1:9080");
  CHECK(r.options->threads == 2);  // the command line wins
  CHECK(r.options->servers == std::vector<std::string>{"127.0.0.1:9001", "http://127.0.0.1:9002"});
  CHECK(r.options->proxy.read_timeout == 5000ms);
  CHECK(r.options->proxy.fail_open);
  CHECK(r.options->balance == "least_conn");
  CHECK(r.options->cluster.lease_ttl == std::chrono::seconds(3));
}

TEST_CASE("a bad configuration file names the file, the line and the key, exit code 2", "[cli]") {
  const std::vector<std::pair<std::string, std::string>> cases{
      {"ip = \"127.0.0.1:1\"\nbogus = 1\n", ":2: unknown key 'bogus'"},
      {"\n\nread-timeout = \"soon\"\n", ":3: --read-timeout"},
      {"threads = 0\n", ":1: --threads"},
  };
  for (const auto& [text, expected] : cases) {
    ConfigFile file(text);
    const auto r = parse({"--config", file.path.c_str()});
    INFO(r.message);
    CHECK_FALSE(r.options);
    CHECK(r.exit_code == 2);
    CHECK(r.message.find(file.path + expected) != std::string::npos);
    CHECK(r.message.find('\n') == std::string::npos);
  }
  const auto missing = parse({"--config", "/nonexistent/weldr.conf"});
  CHECK(missing.exit_code == 2);
  CHECK(missing.message.find("/nonexistent/weldr.conf") != std::string::npos);
}

TEST_CASE("weldr-cli --print-config writes every flag with its default, and reads back to the same options", "[cli]") {
  const auto printed = parse({"--print-config", "--server", "127.0.0.1:9001", "--health-path", "/healthz"});
  REQUIRE_FALSE(printed.options);
  CHECK(printed.exit_code == 0);
  const std::string& text = printed.message;
  for (const char* line : {"ip=\"0.0.0.0:8080\"", "threads=\"auto\"", "read-timeout=\"30s\"", "lease-ttl=\"2s\"",
                           "# state-file=\"\"", "# etcd=\"\""}) {
    INFO(line);
    CHECK(text.find(std::string("\n") + line + "\n") != std::string::npos);
  }
  CHECK(text.find("print-config") == std::string::npos);
  CHECK(text.find("check-config") == std::string::npos);
  ConfigFile file(text);
  const auto back = parse({"--config", file.path.c_str()});
  INFO(back.message);
  REQUIRE(back.options);
  const auto direct = parse({"--server", "127.0.0.1:9001", "--health-path", "/healthz"});
  REQUIRE(direct.options);
  CHECK(back.options->servers == direct.options->servers);
  CHECK(back.options->health.path == "/healthz");
  CHECK(back.options->listen == direct.options->listen);
  CHECK(back.options->threads == direct.options->threads);
  CHECK(back.options->proxy.read_timeout == direct.options->proxy.read_timeout);
  CHECK(back.options->cluster.etcd.empty());
}

TEST_CASE("weldr-cli --help is grouped by topic", "[cli]") {
  const auto help = parse({"--help"});
  for (const char* group : {"Listeners:", "Origins and balancing:", "Health:", "Limits and timeouts:",
                            "Management API:", "Logging:", "Cluster:", "Configuration:"}) {
    INFO(group);
    CHECK(help.message.find(std::string("\n") + group + "\n") != std::string::npos);
  }
  CHECK(help.message.find("Other:") == std::string::npos);
}

TEST_CASE("configuration file errors: exact keys, the command line's own, two files, secrets", "[cli]") {
  // "--access-log" set on line 1 is not what "--access-log-format" on line 2 is about.
  ConfigFile file("access-log = \"-\"\naccess-log-format = \"xml\"\nbuffer-size = \"16k\"\n");
  const auto format = parse({"--config", file.path.c_str()});
  INFO(format.message);
  CHECK(format.message.find(file.path + ":2: --access-log-format") != std::string::npos);
  // A bad value given on the command line is not blamed on the file, even for a key it sets.
  ConfigFile good("buffer-size = \"16k\"\n");
  const auto command_line = parse({"--config", good.path.c_str(), "--buffer-size", "1k"});
  INFO(command_line.message);
  CHECK(command_line.exit_code == 2);
  CHECK(command_line.message.find("--buffer-size must be 4k to 1m") != std::string::npos);
  CHECK(command_line.message.find(good.path) == std::string::npos);
  // A value refused after parsing is located in the file too.
  ConfigFile small("buffer-size = \"1k\"\n");
  const auto refused = parse({"--config", small.path.c_str()});
  CHECK(refused.message.find(small.path + ":1: --buffer-size must be 4k to 1m") != std::string::npos);
  // Two --config flags: one line and exit 2, not a crash.
  const auto twice = parse({"--config", small.path.c_str(), "--config", small.path.c_str()});
  CHECK(twice.exit_code == 2);
  CHECK(twice.message.find("--config") != std::string::npos);
  // The admin token is not written out.
  const auto printed = parse({"--print-config", "--admin-token", "sekret"});
  CHECK(printed.exit_code == 0);
  CHECK(printed.message.find("sekret") == std::string::npos);
  CHECK(printed.message.find("# admin-token=\"<not printed>\"") != std::string::npos);
}
