#pragma once
/// \file
/// Where registrations are kept: the management API asks a PoolStore to change them, and the
/// Pool follows the store. Standalone, the store is the Pool itself (LocalStore); in a cluster
/// it is etcd (weldr::Cluster), and every node's Pool follows etcd's changes in order.

#include <weldr/health_checker.hpp>
#include <weldr/pool.hpp>

#include <asio/awaitable.hpp>

#include <string>

namespace weldr {

/// The outcome of a change asked of a store.
struct StoreResult {
  /// What happened.
  enum class Status {
    created,      ///< a new registration
    updated,      ///< an existing one changed (its weight, the settings)
    unchanged,    ///< it was already so
    removed,      ///< the registration is gone (the server drains)
    not_found,    ///< there was no such registration
    conflict,     ///< it cannot be done now (e.g. the server is still draining); see message
    unavailable,  ///< the store cannot be reached or cannot commit; nothing was changed
  };
  Status status{Status::unchanged};  ///< what happened
  std::string message;               ///< why, for conflict and unavailable

  /// True for created, updated, unchanged and removed.
  [[nodiscard]] bool ok() const noexcept {
    return status != Status::not_found && status != Status::conflict && status != Status::unavailable;
  }
};

/// Registrations and API-set configuration, kept somewhere. Methods run on the control
/// io_context; when one returns ok(), this node's Pool (and HealthChecker) already show the
/// change, unless the store says otherwise in its own documentation.
class PoolStore {
 public:
  /// Destroys the store.
  virtual ~PoolStore() = default;
  /// Registers a server, or changes its weight when it is already registered. `weight` 0 keeps
  /// the current weight (1 for a new server); `check` is its own health-check settings as a
  /// JSON object text, or "".
  virtual asio::awaitable<StoreResult> add(BackendAddress address, std::string check, unsigned weight) = 0;
  /// Removes the registration with this id ("host:port").
  virtual asio::awaitable<StoreResult> remove(std::string id) = 0;
  /// Replaces the default health-check settings.
  virtual asio::awaitable<StoreResult> set_health_check(HealthCheckOptions options) = 0;
};

/// The standalone store: changes go straight to the Pool (and to the HealthChecker, when there
/// is one), so the event follows the request at once. A StateFile subscribed to the Pool
/// keeps them across restarts.
class LocalStore final : public PoolStore {
 public:
  /// A store over `pool` and, for the health-check settings, `checker` (may be null).
  explicit LocalStore(Pool& pool, HealthChecker* checker = nullptr) : pool_(pool), checker_(checker) {}
  asio::awaitable<StoreResult> add(BackendAddress address, std::string check, unsigned weight) override;
  asio::awaitable<StoreResult> remove(std::string id) override;
  asio::awaitable<StoreResult> set_health_check(HealthCheckOptions options) override;

 private:
  Pool& pool_;
  HealthChecker* checker_;
};

}  // namespace weldr
