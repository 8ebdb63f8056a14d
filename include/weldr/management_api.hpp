#pragma once
/// \file
/// The management HTTP API: register and remove origin servers at runtime, read stats.

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <system_error>

namespace weldr {

class Cluster;
class HealthChecker;
class Pool;
class PoolStore;
class Stats;
class StateFile;
namespace detail {
struct ManagementApiImpl;
}

/// Settings of the management API.
struct ApiOptions {
  /// When not empty, every request must carry "Authorization: Bearer <token>" (else 401).
  std::string token;
  /// Largest request body accepted (413 beyond it).
  std::size_t max_body{64 * 1024};
  /// Largest request head accepted (431 beyond it).
  std::size_t max_head{16 * 1024};
  /// Time allowed for a client to send a request, and for each write of a response.
  std::chrono::milliseconds timeout{10000};
  /// How long an idle keep-alive connection stays open.
  std::chrono::milliseconds idle_timeout{60000};
  /// When set, failures to write it after a change are reported to the API client (500).
  StateFile* state_file{nullptr};
  /// When set, servers show their health and /config/health-check reads and changes its settings.
  HealthChecker* health_checker{nullptr};
  /// Where registrations and the health-check settings are changed. When null, the API changes
  /// the Pool (and the HealthChecker) directly, through a LocalStore of its own.
  PoolStore* store{nullptr};
  /// When set (cluster mode), GET /cluster shows the cluster, POST /cluster/resign steps down,
  /// and /metrics has the cluster's gauges. It is usually also the store.
  Cluster* cluster{nullptr};
};

/// The management API on a host-owned io_context (run by one thread). Changes go to the
/// PoolStore (the Pool itself when standalone, etcd in a cluster) and are answered once the
/// store has them; changes the host makes to the Pool directly show up in the API at once.
class ManagementApi {
 public:
  /// An API over `pool` and `stats`, which must outlive it.
  ManagementApi(asio::io_context& io, Pool& pool, Stats& stats, ApiOptions options = {});
  /// Closes the listener and every connection.
  ~ManagementApi();
  /// Not copyable.
  ManagementApi(const ManagementApi&) = delete;
  ManagementApi& operator=(const ManagementApi&) = delete;

  /// Binds and starts accepting on `endpoint`. Throws std::system_error.
  void listen(const asio::ip::tcp::endpoint& endpoint);
  /// Same, reporting failure through `ec`.
  void listen(const asio::ip::tcp::endpoint& endpoint, std::error_code& ec);
  /// The bound address.
  [[nodiscard]] asio::ip::tcp::endpoint local_endpoint() const;
  /// Stops accepting and closes every connection. Call on the io_context's thread.
  void stop();

 private:
  std::shared_ptr<detail::ManagementApiImpl> impl_;
};

}  // namespace weldr
