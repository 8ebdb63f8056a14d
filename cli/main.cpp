// weldr-cli: a thin host around libweldr. The main thread runs the control io_context
// (signals; later the management API and health checks); each worker thread runs one
// io_context with its own Proxy on the shared port (SO_REUSEPORT), all sharing one Pool.

#include "options.hpp"

#include <weldr/log.hpp>
#include <weldr/pool.hpp>
#include <weldr/proxy.hpp>

#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/signal_set.hpp>

#include <fmt/format.h>

#include <atomic>
#include <cstdio>
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

}  // namespace

int main(int argc, char** argv) {
  auto parsed = weldr::cli::parse_options(argc, argv);
  if (!parsed.options) {
    std::fputs(parsed.message.c_str(), parsed.exit_code == 0 ? stdout : stderr);
    if (parsed.exit_code != 0) std::fputc('\n', stderr);
    return parsed.exit_code;
  }
  const weldr::cli::Options& options = *parsed.options;
  weldr::set_log_level(options.log_level);

  weldr::Pool pool;
  for (const auto& url : options.servers) {
    if (!pool.add(url)) log_line(weldr::LogLevel::warn, fmt::format("server {} given twice; ignored", url));
  }

  auto endpoint = *weldr::cli::parse_endpoint(options.listen);
  std::vector<std::unique_ptr<Worker>> workers;
  for (unsigned i = 0; i < options.threads; ++i) {
    auto worker = std::make_unique<Worker>();
    worker->proxy = std::make_unique<weldr::Proxy>(worker->io, pool, options.proxy);
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
  log_line(weldr::LogLevel::info, fmt::format("weldr-cli {} listening on {} with {} thread(s) and {} server(s)",
                                              WELDR_VERSION, bound, options.threads, pool.size()));

  asio::io_context control;
  asio::signal_set signals(control, SIGINT, SIGTERM);
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
      log_line(weldr::LogLevel::info, fmt::format("signal {}: finishing in-flight requests (up to {} ms)", signal,
                                                  options.shutdown_timeout.count()));
      for (auto& w : workers) {
        asio::post(w->io, [&, w = w.get()] {
          w->proxy->stop(options.shutdown_timeout, [&, w] {
            w->io.stop();
            if (running.fetch_sub(1) == 1) asio::post(control, [&] { signals.cancel(); });
          });
        });
      }
      wait_signal();
    });
  };
  wait_signal();

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
  control.run();
  for (auto& w : workers)
    w->thread.join();
  log_line(weldr::LogLevel::info, "stopped");
  return 0;
}
