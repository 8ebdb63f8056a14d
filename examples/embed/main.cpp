// weldr-embed-example: a host program that embeds libweldr.
//
// It owns its io_contexts and threads, feeds two Pools from its own "service discovery" (a
// directory with one empty file per backend, named IP:PORT, under api/ and static/, read once
// a second), routes /api/ and /static/ to them with a hook, and stops gracefully on SIGTERM.
//
//   weldr-embed-example LISTEN_IP:PORT DIRECTORY [THREADS]

#include <weldr/health_checker.hpp>
#include <weldr/hooks.hpp>
#include <weldr/log.hpp>
#include <weldr/pool.hpp>
#include <weldr/proxy.hpp>

#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>

#include <atomic>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;

// Routes by path prefix; the prefix is stripped before the request goes upstream. Runs on
// every worker thread at once: it only reads the pools, which are thread-safe.
class Router : public weldr::ProxyHooks {
 public:
  Router(weldr::Pool& api, weldr::Pool& assets) : api_(api), assets_(assets) {}

  std::optional<weldr::LocalResponse> on_request(weldr::RequestContext& request) override {
    const std::string_view path = request.path();
    for (auto& [prefix, pool] : routes()) {
      if (!path.starts_with(prefix)) continue;
      request.user = pool;  // remembered for select_backend
      // path() is the path as forwarded (also for "GET http://host/api/x"); keep the query.
      const std::string_view target = request.target();
      const auto query = target.find('?');
      std::string upstream = "/" + std::string(path.substr(prefix.size()));
      if (query != std::string_view::npos) upstream += target.substr(query);
      request.set_upstream_target(std::move(upstream));
      return std::nullopt;
    }
    return weldr::LocalResponse{404, "no route for this path\n", {{"Content-Type", "text/plain"}}};
  }

  weldr::BackendChoice select_backend(weldr::RequestContext& request) override {
    return {std::any_cast<weldr::Pool*>(request.user), nullptr};  // that pool, with its policy
  }

  void on_upstream_request(weldr::RequestContext& request, const weldr::Backend&) override {
    request.upstream_headers().set("X-Routed-By", "weldr-embed-example");
  }

  void on_response(weldr::RequestContext& request) override {
    // The backend that answered (after a retry, not the first one tried).
    if (const weldr::Backend* backend = request.backend()) request.response_headers().set("X-Backend", backend->id());
  }

 private:
  std::vector<std::pair<std::string_view, weldr::Pool*>> routes() { return {{"/api/", &api_}, {"/static/", &assets_}}; }

  weldr::Pool& api_;
  weldr::Pool& assets_;
};

// Makes `pool` hold exactly the backends named by the files in `dir`.
void sync(weldr::Pool& pool, const fs::path& dir) {
  std::set<std::string> wanted;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::error_code parse_ec;
    if (auto address = weldr::parse_backend_url(entry.path().filename().string(), parse_ec)) {
      wanted.insert(address->id());
      if (pool.add(*address)) std::cout << "added " << address->id() << " from " << dir << std::endl;
    }
  }
  for (const auto& backend : pool.list()) {
    if (!wanted.contains(backend->id()) && pool.remove(backend->id())) {
      std::cout << "removing " << backend->id() << " (draining)" << std::endl;
    }
  }
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: weldr-embed-example LISTEN_IP:PORT DIRECTORY [THREADS]\n";
    return 2;
  }
  const std::string listen = argv[1];
  const fs::path root = argv[2];
  const unsigned threads = argc > 3 ? static_cast<unsigned>(std::stoul(argv[3])) : 2;
  const auto colon = listen.rfind(':');
  std::error_code ec;
  const auto address = asio::ip::make_address(listen.substr(0, colon), ec);
  if (colon == std::string::npos || ec) {
    std::cerr << "weldr-embed-example: invalid address " << listen << "\n";
    return 2;
  }

  weldr::Pool api;
  weldr::Pool assets;
  assets.set_balancer(weldr::make_balancer("least_conn"));  // each pool has its own policy

  // The control thread: discovery, health checks, signals.
  asio::io_context control;
  weldr::HealthChecker api_checks(control, api);
  weldr::HealthChecker asset_checks(control, assets);
  api_checks.start();
  asset_checks.start();
  asio::steady_timer scan(control);
  std::function<void()> rescan = [&] {
    sync(api, root / "api");
    sync(assets, root / "static");
    scan.expires_after(std::chrono::seconds(1));
    scan.async_wait([&](std::error_code wait_ec) {
      if (!wait_ec) rescan();
    });
  };
  rescan();

  // One io_context, Proxy and thread per worker, sharing the port and the hook.
  weldr::ProxyOptions options;
  options.reuse_port = threads > 1;
  options.hooks = std::make_shared<Router>(api, assets);
  struct Worker {
    asio::io_context io{1};
    std::unique_ptr<weldr::Proxy> proxy;
    std::thread thread;
  };
  std::vector<std::unique_ptr<Worker>> workers;
  asio::ip::tcp::endpoint endpoint(address, static_cast<std::uint16_t>(std::stoul(listen.substr(colon + 1))));
  for (unsigned i = 0; i < threads; ++i) {
    auto& w = workers.emplace_back(std::make_unique<Worker>());
    w->proxy = std::make_unique<weldr::Proxy>(w->io, api, options);  // api: the default pool
    w->proxy->listen(endpoint, ec);
    if (ec) {
      std::cerr << "weldr-embed-example: cannot listen on " << listen << ": " << ec.message() << "\n";
      return 1;
    }
    endpoint = w->proxy->local_endpoint();  // port 0: the others share the port the first got
  }
  std::cout << "listening on " << endpoint.address().to_string() << ":" << endpoint.port() << std::endl;

  // SIGTERM: stop discovery and checks, let each proxy finish its requests, then return.
  asio::signal_set signals(control, SIGINT, SIGTERM);
  std::atomic<unsigned> running{threads};
  signals.async_wait([&](std::error_code signal_ec, int) {
    if (signal_ec) return;
    std::cout << "stopping" << std::endl;
    scan.cancel();
    api_checks.stop();
    asset_checks.stop();
    for (auto& w : workers) {
      asio::post(w->io, [&, w = w.get()] {
        w->proxy->stop(std::chrono::seconds(10), [&, w] {
          w->io.stop();
          if (running.fetch_sub(1) == 1) control.stop();
        });
      });
    }
  });
  for (auto& w : workers)
    w->thread = std::thread([w = w.get()] { w->io.run(); });
  control.run();
  for (auto& w : workers)
    w->thread.join();
  std::cout << "stopped" << std::endl;
  return 0;
}
