#pragma once
/// \file
/// Cluster mode: weldr nodes share one pool through etcd and elect one active node, which holds
/// a virtual IP; the others are passive and take over when it fails.

#include <weldr/pool_store.hpp>

#include <asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace weldr {

class HealthChecker;
class Pool;
namespace detail {
struct ClusterImpl;
}

/// A node's role.
enum class ClusterRole {
  standalone,  ///< no cluster (reported by hosts that run none)
  passive,     ///< serves what reaches it, keeps everything warm, holds no virtual IP
  active,      ///< the elected node: holds the virtual IP
};

/// "standalone", "passive" or "active".
std::string_view to_string(ClusterRole role) noexcept;

/// Settings of a cluster node.
struct ClusterOptions {
  /// etcd client URLs, comma-separated ("http://10.0.0.5:2379,http://10.0.0.6:2379").
  std::string etcd;
  /// The cluster's name: its keys live under /weldr/<name>/, so one etcd serves many clusters.
  std::string name{"default"};
  /// This node's name, unique in the cluster: 1-64 of [A-Za-z0-9._:-].
  std::string node;
  /// TTL asked for the lease that carries this node's membership and leadership (1-60 s);
  /// etcd may grant more (it raises a TTL below 1.5 x its election timeout).
  std::chrono::seconds lease_ttl{2};
  /// The virtual IP the active node holds, "ADDR/LEN" (IPv4 or IPv6); "" for none.
  std::string vip;
  /// The interface the virtual IP goes on.
  std::string vip_interface;
  /// etcd authentication; empty for none.
  std::string etcd_user;
  /// The password of etcd_user.
  std::string etcd_password;
  /// Time allowed for each call to etcd (an API write answers 503 after it).
  std::chrono::milliseconds request_timeout{2000};
  /// Addresses advertised in the node list (GET /cluster), e.g. "10.0.0.7:8080".
  std::string proxy_address;
  /// The management API's address, advertised likewise.
  std::string admin_address;
  /// Called on the control io_context after each role change (and once with passive at start).
  std::function<void(ClusterRole)> on_role_change;
};

/// Checks `options` without touching anything: "" when they are usable, else a one-line reason.
std::string validate(const ClusterOptions& options);

/// One node as the cluster sees it.
struct ClusterNodeInfo {
  std::string name;   ///< its node name
  std::string role;   ///< "active" or "passive"
  std::string proxy;  ///< its proxy address, as it advertises it
  std::string admin;  ///< its management API address
};

/// What GET /cluster shows.
struct ClusterStatus {
  std::string name;                        ///< the cluster
  std::string node;                        ///< this node
  ClusterRole role{ClusterRole::passive};  ///< this node's role
  std::optional<std::string> leader;       ///< the active node's name, when there is one
  std::vector<std::string> endpoints;      ///< etcd's URLs
  bool connected{false};                   ///< etcd reachable: the pool follows it
  std::int64_t revision{0};                ///< the etcd revision this node's pool reflects
  std::int64_t lease_ttl{0};               ///< the TTL etcd granted (seconds; 0 without a lease)
  std::uint64_t role_changes{0};           ///< role changes since start
  std::vector<ClusterNodeInfo> nodes;      ///< every live node, this one included
};

/// One cluster node: the etcd store of the pool (a PoolStore), the election and the virtual IP.
/// Runs on the host's control io_context; starts no thread.
///
/// The Pool follows etcd: registrations are applied in revision order from a watch on
/// /weldr/<name>/; writes through add/remove/set_health_check are etcd transactions and return
/// once etcd has committed them (and, normally, once this node's Pool shows them). When etcd
/// cannot be reached, the Pool keeps what it had (traffic goes on), writes fail with
/// StoreResult::Status::unavailable, and the node resynchronises when etcd is back.
class Cluster final : public PoolStore {
 public:
  /// A node over `pool` (and `checker`, whose default settings follow the cluster's; may be
  /// null). Throws std::invalid_argument when validate(options) fails.
  Cluster(asio::io_context& control, Pool& pool, ClusterOptions options, HealthChecker* checker = nullptr);
  /// Stops (see stop()).
  ~Cluster() override;
  /// Not copyable.
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  /// Starts: connects to etcd (retrying with backoff for as long as it takes), seeds an empty
  /// cluster from what the Pool holds now, follows the cluster's pool and campaigns. The node
  /// is passive until elected. The virtual IP, if configured and present, is removed first.
  void start();
  /// Leaves the cluster for good: resigns when active (a passive node takes over), gives up the
  /// virtual IP, revokes the lease, and calls `done` on the control io_context.
  void shutdown(std::function<void()> done);
  /// Stops everything at once, with no handover (the lease expires by itself).
  void stop();

  /// Steps down for maintenance: deletes the leader key and waits until another node is active
  /// (it keeps the virtual IP until then). Returns "" on success, else why not; this node does
  /// not campaign again for a while afterwards.
  asio::awaitable<std::string> resign();

  /// The node's view of the cluster.
  [[nodiscard]] ClusterStatus status() const;
  /// This node's role.
  [[nodiscard]] ClusterRole role() const noexcept;

  asio::awaitable<StoreResult> add(BackendAddress address, std::string check, unsigned weight) override;
  asio::awaitable<StoreResult> remove(std::string id) override;
  asio::awaitable<StoreResult> set_health_check(HealthCheckOptions options) override;

 private:
  std::shared_ptr<detail::ClusterImpl> impl_;
};

}  // namespace weldr
