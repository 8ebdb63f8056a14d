// weldr-cli: a thin host around libweldr. The main thread runs the control io_context
// (signals, the management API; later health checks); each worker thread runs one io_context
// with its own Proxy on the shared port (SO_REUSEPORT), all sharing one Pool and one Stats.

#include "options.hpp"
#include "systemd.hpp"

#include <weldr/access_log.hpp>
#include <weldr/cluster.hpp>
#include <weldr/health_checker.hpp>
#include <weldr/log.hpp>
#include <weldr/management_api.hpp>
#include <weldr/pool.hpp>
#include <weldr/proxy.hpp>
#include <weldr/state_file.hpp>
#include <weldr/stats.hpp>

#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/signal_set.hpp>

#include <fmt/format.h>

#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <asio/steady_timer.hpp>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <memory>
#include <thread>
#include <vector>

namespace {

struct Worker {
  asio::io_context io{1};
  std::unique_ptr<weldr::Proxy> proxy;
  std::thread thread;
};

void log_line(weldr::LogLevel level, std::string_view text) {
  weldr::log_message(level, text);
}

// Raises the soft descriptor limit to the hard one, as a proxy holds two per connection, and
// returns the limit in force.
std::uint64_t raise_descriptor_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 1024;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  return limit.rlim_cur == RLIM_INFINITY ? UINT64_MAX : static_cast<std::uint64_t>(limit.rlim_cur);
}

extern "C" char** environ;

// Runs --on-role-change, one invocation at a time and in order, each bounded by a timeout;
// waits on the control io_context (polling waitpid), so the event loop never blocks.
class RoleCommand {
 public:
  RoleCommand(asio::io_context& io, std::string command, std::chrono::milliseconds timeout)
      : io_(io), command_(std::move(command)), timeout_(timeout), timer_(io) {}

  void run(weldr::ClusterRole role) {
    queue_.emplace_back(weldr::to_string(role));
    if (pid_ <= 0) next();
  }

 private:
  void next() {
    if (queue_.empty()) return;
    role_ = queue_.front();
    queue_.pop_front();
    // sh -c 'CMD "$@"' sh ROLE: the command may carry arguments of its own.
    const std::string script = command_ + " \"$@\"";
    std::vector<std::string> args{"/bin/sh", "-c", script, "weldr-role-change", role_};
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = -1;
    const int rc = posix_spawn(&pid, "/bin/sh", nullptr, nullptr, argv.data(), environ);
    if (rc != 0) {
      log_line(weldr::LogLevel::error, fmt::format("--on-role-change {}: cannot start: {}", role_, std::strerror(rc)));
      next();
      return;
    }
    pid_ = pid;
    started_ = std::chrono::steady_clock::now();
    poll();
  }

  void poll() {
    timer_.expires_after(std::chrono::milliseconds(20));
    timer_.async_wait([this](std::error_code ec) {
      if (ec) return;
      int status = 0;
      const pid_t done = ::waitpid(pid_, &status, WNOHANG);
      if (done == 0) {
        if (std::chrono::steady_clock::now() - started_ > timeout_) {
          ::kill(pid_, SIGKILL);
          ::waitpid(pid_, &status, 0);
          log_line(weldr::LogLevel::error,
                   fmt::format("--on-role-change {}: killed after {} ms", role_, timeout_.count()));
        } else {
          poll();
          return;
        }
      } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        log_line(weldr::LogLevel::info, fmt::format("--on-role-change {}: exit status 0", role_));
      } else {
        log_line(weldr::LogLevel::error,
                 WIFEXITED(status) ? fmt::format("--on-role-change {}: exit status {}", role_, WEXITSTATUS(status))
                                   : fmt::format("--on-role-change {}: killed by signal {}", role_, WTERMSIG(status)));
      }
      pid_ = -1;
      next();
    });
  }

  asio::io_context& io_;
  std::string command_;
  std::chrono::milliseconds timeout_;
  asio::steady_timer timer_;
  std::deque<std::string> queue_;
  std::string role_;
  pid_t pid_{-1};
  std::chrono::steady_clock::time_point started_;
};

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "weldr";
  return name;
}

}  // namespace

int main(int argc, char** argv) {
  auto parsed = weldr::cli::parse_options(argc, argv);
  if (!parsed.options) {
    // Under systemd a bad configuration is an error for `journalctl -p err` too.
    if (parsed.exit_code != 0 && weldr::cli::stderr_is_journal()) std::fputs("<3>", stderr);
    std::fputs(parsed.message.c_str(), parsed.exit_code == 0 ? stdout : stderr);
    if (parsed.exit_code != 0) std::fputc('\n', stderr);
    return parsed.exit_code;
  }
  const weldr::cli::Options& options = *parsed.options;
  if (options.check_config) {
    // Everything parse_options checks, plus what only main() touches: the state file is read,
    // and the directories of the state file and the access log must be writable (the state
    // file is rewritten through a temporary file beside it).
    const char* journal = weldr::cli::stderr_is_journal() ? "<3>" : "";
    if (!options.state_file.empty()) {
      try {
        weldr::load_state_file(options.state_file);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%sweldr-cli: %s\n", journal, e.what());
        return 2;
      }
    }
    for (const auto& [flag, path] :
         {std::pair{"--state-file", options.state_file}, std::pair{"--access-log", options.access_log}}) {
      if (path.empty() || path == "-") continue;
      const auto parent = std::filesystem::absolute(path).parent_path();
      if (::access(parent.c_str(), W_OK) != 0) {
        std::fprintf(stderr, "%sweldr-cli: %s %s: cannot write in %s: %s\n", journal, flag, path.c_str(),
                     parent.c_str(), std::strerror(errno));
        return 2;
      }
    }
    std::puts("weldr-cli: configuration OK");
    return 0;
  }
  // A closed pipe (--access-log - | head) must not kill the proxy: writes fail with EPIPE and
  // are logged instead. Asio's sockets already send with MSG_NOSIGNAL.
  std::signal(SIGPIPE, SIG_IGN);
  weldr::set_log_level(options.log_level);
  if (weldr::cli::stderr_is_journal()) {
    // Under systemd: priorities for `journalctl -p`, and the journal's own timestamps.
    weldr::set_log_sink([](weldr::LogLevel level, std::string_view line) {
      std::fputs(weldr::cli::journal_line(level, line).c_str(), stderr);
    });
  }

  weldr::Pool pool;
  pool.set_balancer(weldr::make_balancer(options.balance));
  pool.set_slow_start(options.slow_start);
  pool.set_outlier_detection(options.outlier);
  weldr::Stats stats;
  std::unique_ptr<weldr::StateFile> state;
  if (!options.state_file.empty()) {
    // Registrations made through the API survive restarts; a file that cannot be read is fatal
    // rather than a silent start with an empty pool.
    state = std::make_unique<weldr::StateFile>(pool, options.state_file);
    try {
      state->start();
    } catch (const std::exception& e) {
      log_line(weldr::LogLevel::error, e.what());
      return 1;
    }
  }
  for (const auto& url : options.servers) {
    if (!pool.add(url)) log_line(weldr::LogLevel::info, fmt::format("server {} is already registered", url));
  }

  std::shared_ptr<weldr::AccessLog> access_log;
  weldr::ProxyOptions proxy_options = options.proxy;
  const std::uint64_t descriptors = raise_descriptor_limit();
  const std::size_t max_connections = options.max_connections.value_or(weldr::cli::auto_max_connections(descriptors));
  if (max_connections != 0) {
    proxy_options.connection_limit = std::make_shared<weldr::ConnectionLimit>(max_connections);  // shared by all
  }
  if (!options.access_log.empty()) {
    try {
      access_log = std::make_shared<weldr::AccessLog>(options.access_log, options.access_log_format);
    } catch (const std::exception& e) {
      log_line(weldr::LogLevel::error, e.what());
      return 1;
    }
    proxy_options.hooks = access_log;  // one logger, shared by every worker (it locks)
  }

  auto endpoint = *weldr::cli::parse_endpoint(options.listen);
  std::vector<std::unique_ptr<Worker>> workers;
  for (unsigned i = 0; i < options.threads; ++i) {
    auto worker = std::make_unique<Worker>();
    worker->proxy = std::make_unique<weldr::Proxy>(worker->io, pool, stats, proxy_options);
    std::error_code ec;
    worker->proxy->listen(endpoint, ec);
    if (ec) {
      log_line(weldr::LogLevel::error, fmt::format("cannot listen on {}: {}", options.listen, ec.message()));
      return 1;
    }
    // With port 0 the first listener picks the port and the others share it.
    endpoint = worker->proxy->local_endpoint();
    workers.push_back(std::move(worker));
  }
  const std::string bound = endpoint.address().is_v6()
                                ? fmt::format("[{}]:{}", endpoint.address().to_string(), endpoint.port())
                                : fmt::format("{}:{}", endpoint.address().to_string(), endpoint.port());
  log_line(weldr::LogLevel::info,
           fmt::format("weldr-cli {} listening on {} with {} thread(s) and {} server(s); {} descriptors, {}",
                       WELDR_VERSION, bound, options.threads, pool.size(), descriptors,
                       max_connections == 0 ? std::string("no connection cap")
                                            : fmt::format("at most {} client connections", max_connections)));

  asio::io_context control;
  const auto admin_endpoint = *weldr::cli::parse_endpoint(options.admin_listen);
  weldr::HealthChecker checker(control, pool, options.health);
  checker.start();
  std::unique_ptr<RoleCommand> role_command;
  std::unique_ptr<weldr::Cluster> cluster;
  if (!options.cluster.etcd.empty()) {
    weldr::ClusterOptions cluster_options = options.cluster;
    if (cluster_options.node.empty()) cluster_options.node = fmt::format("{}:{}", host_name(), endpoint.port());
    cluster_options.proxy_address = bound;
    cluster_options.admin_address = options.admin_listen;
    if (!options.on_role_change.empty()) {
      role_command = std::make_unique<RoleCommand>(control, options.on_role_change, options.role_change_timeout);
      cluster_options.on_role_change = [&role_command](weldr::ClusterRole role) { role_command->run(role); };
    }
    try {
      cluster = std::make_unique<weldr::Cluster>(control, pool, cluster_options, &checker);
    } catch (const std::exception& e) {
      log_line(weldr::LogLevel::error, fmt::format("weldr-cli: {}", e.what()));
      return 2;
    }
    log_line(
        weldr::LogLevel::info,
        fmt::format("cluster {}: node {}, etcd {}{}", cluster_options.name, cluster_options.node, cluster_options.etcd,
                    cluster_options.vip.empty()
                        ? std::string()
                        : fmt::format(", virtual IP {} on {}", cluster_options.vip, cluster_options.vip_interface)));
  }
  weldr::ApiOptions api_options;
  api_options.health_checker = &checker;
  api_options.token = options.admin_token;
  // In a cluster, etcd has the registrations; the state file is only this node's cache.
  api_options.state_file = cluster ? nullptr : state.get();
  api_options.store = cluster.get();
  api_options.cluster = cluster.get();
  weldr::ManagementApi api(control, pool, stats, api_options);
  {
    std::error_code ec;
    api.listen(admin_endpoint, ec);
    if (ec) {
      log_line(weldr::LogLevel::error,
               fmt::format("cannot listen on {} for the management API: {}", options.admin_listen, ec.message()));
      return 1;
    }
    const auto api_bound = api.local_endpoint();
    log_line(weldr::LogLevel::info,
             fmt::format("management API listening on {}:{}{}", api_bound.address().to_string(), api_bound.port(),
                         options.admin_token.empty() ? "" : " (token required)"));
    if (options.admin_token.empty() && !admin_endpoint.address().is_loopback()) {
      log_line(weldr::LogLevel::warn,
               "the management API listens on a non-loopback address without --admin-token: anyone who can reach "
               "it can change the pool");
    }
  }

  if (cluster) cluster->start();

  asio::signal_set signals(control, SIGINT, SIGTERM);
  asio::signal_set hangups(control, SIGHUP);
  std::atomic<unsigned> running{static_cast<unsigned>(workers.size())};
  bool stopping = false;
  std::function<void()> wait_signal = [&] {
    signals.async_wait([&](std::error_code ec, int signal) {
      if (ec) return;
      if (stopping) {
        log_line(weldr::LogLevel::warn, "second signal: exiting now");
        std::_Exit(1);
      }
      stopping = true;
      weldr::cli::notify_systemd("STOPPING=1");
      wait_signal();
      auto drain = [&, signal] {
        api.stop();
        checker.stop();
        log_line(weldr::LogLevel::info, fmt::format("signal {}: finishing in-flight requests (up to {} ms)", signal,
                                                    options.shutdown_timeout.count()));
        for (auto& w : workers) {
          asio::post(w->io, [&, w = w.get()] {
            w->proxy->stop(options.shutdown_timeout, [&, w] {
              w->io.stop();
              if (running.fetch_sub(1) == 1) {
                asio::post(control, [&] {
                  signals.cancel();
                  hangups.cancel();
                });
              }
            });
          });
        }
      };
      // The active node hands over first (the proxies keep serving meanwhile), then drains.
      if (cluster) {
        cluster->shutdown(drain);
      } else {
        drain();
      }
    });
  };
  wait_signal();

  // SIGHUP reopens the access log, for logrotate.
  std::function<void()> wait_hangup = [&] {
    hangups.async_wait([&](std::error_code ec, int) {
      if (ec) return;
      weldr::cli::notify_systemd("RELOADING=1");
      if (access_log && access_log->path() != "-" && access_log->reopen()) {
        log_line(weldr::LogLevel::info, fmt::format("access log {} reopened", access_log->path()));
      }
      weldr::cli::notify_systemd("READY=1");
      wait_hangup();
    });
  };
  wait_hangup();

  for (auto& w : workers) {
    w->thread = std::thread([w = w.get()] {
      try {
        w->io.run();
      } catch (const std::exception& e) {
        log_line(weldr::LogLevel::error, fmt::format("worker stopped: {}", e.what()));
        std::_Exit(1);
      }
    });
  }
  // Ready once it listens and its signals are handled (Type=notify).
  weldr::cli::notify_systemd(fmt::format("READY=1\nSTATUS=listening on {}\nMAINPID={}", bound, ::getpid()));
  control.run();
  for (auto& w : workers)
    w->thread.join();
  log_line(weldr::LogLevel::info, "stopped");
  return 0;
}
