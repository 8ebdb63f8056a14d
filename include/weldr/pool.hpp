#pragma once
/// \file
/// The set of origin servers (backends) that weldr balances over.

#include <weldr/stats.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace weldr {

/// Where a backend lives: parsed from "http://host:port[/]" or "host:port".
struct BackendAddress {
  std::string host;    ///< IP literal or host name, without brackets for IPv6.
  std::uint16_t port;  ///< TCP port, 1..65535.
  std::string url;     ///< Normalised URL, e.g. "http://127.0.0.1:9000".

  /// "host:port" ("[::1]:port" for IPv6): the backend's identity in the Pool.
  [[nodiscard]] std::string id() const;
};

/// Parses a backend URL; "http" is the only scheme accepted, and a missing scheme means http.
/// Sets `ec` (weldr::errc::invalid_url) and returns nothing when `text` is not usable.
std::optional<BackendAddress> parse_backend_url(std::string_view text, std::error_code& ec);

/// Lifecycle state of a backend as seen by the balancer.
enum class BackendState : std::uint8_t {
  active,    ///< receives new requests
  down,      ///< failed its health checks; receives nothing
  draining,  ///< being removed; in-flight requests finish, no new ones
};

/// "active", "down" or "draining".
std::string_view to_string(BackendState state) noexcept;

/// One origin server and its live counters. Counters are atomics: readable from any thread.
class Backend {
 public:
  /// Creates a backend in the active state. `check` is its health-check settings as a JSON
  /// object text ("" when it has none of its own).
  explicit Backend(BackendAddress address, std::string check = {});

  /// The "host:port" identity.
  [[nodiscard]] const std::string& id() const noexcept { return id_; }
  /// Host name or IP literal.
  [[nodiscard]] const std::string& host() const noexcept { return address_.host; }
  /// TCP port.
  [[nodiscard]] std::uint16_t port() const noexcept { return address_.port; }
  /// The URL it was registered with (normalised).
  [[nodiscard]] const std::string& url() const noexcept { return address_.url; }
  /// Where it lives.
  [[nodiscard]] const BackendAddress& address() const noexcept { return address_; }
  /// Its own health-check settings as a JSON object text, or "" (fixed at registration).
  [[nodiscard]] const std::string& check() const noexcept { return check_; }
  /// Time from sending a request to receiving the whole response, for successful requests.
  [[nodiscard]] LatencyHistogram& latency() noexcept { return latency_; }
  [[nodiscard]] const LatencyHistogram& latency() const noexcept { return latency_; }
  /// Current state.
  [[nodiscard]] BackendState state() const noexcept { return state_.load(std::memory_order_acquire); }
  /// True when the balancer may pick it.
  [[nodiscard]] bool usable() const noexcept { return state() == BackendState::active; }

  /// Requests sent (or attempted) to this backend.
  [[nodiscard]] std::uint64_t requests() const noexcept { return requests_.load(std::memory_order_relaxed); }
  /// Requests that got a complete response that was not 5xx.
  [[nodiscard]] std::uint64_t successes() const noexcept { return successes_.load(std::memory_order_relaxed); }
  /// Requests that failed: connect error, timeout, reset, or a 5xx response.
  [[nodiscard]] std::uint64_t failures() const noexcept { return failures_.load(std::memory_order_relaxed); }
  /// Requests in flight right now.
  [[nodiscard]] std::uint64_t active_requests() const noexcept { return in_flight_.load(std::memory_order_relaxed); }
  /// Open upstream connections (busy or idle in a cache) to this backend.
  [[nodiscard]] std::int64_t active_connections() const noexcept {
    return connections_.load(std::memory_order_relaxed);
  }

  /// Adjusts the open-connection gauge; called by the Proxy when it opens or closes a socket.
  void add_connections(std::int64_t delta) noexcept { connections_.fetch_add(delta, std::memory_order_relaxed); }

 private:
  friend class Pool;
  BackendAddress address_;
  std::string id_;
  std::string check_;
  LatencyHistogram latency_;
  std::atomic<BackendState> state_{BackendState::active};
  std::atomic<std::uint64_t> requests_{0};
  std::atomic<std::uint64_t> successes_{0};
  std::atomic<std::uint64_t> failures_{0};
  std::atomic<std::uint64_t> in_flight_{0};
  std::atomic<std::int64_t> connections_{0};
};

/// A change to the pool, as told to subscribers.
struct PoolEvent {
  /// What happened.
  enum class Kind {
    added,          ///< a backend joined
    removed,        ///< remove() was called: it drains and takes no new requests
    erased,         ///< it left the pool (drained)
    state_changed,  ///< set_state() changed it (active <-> down)
  };
  Kind kind;                         ///< what happened
  std::shared_ptr<Backend> backend;  ///< to whom
};

/// A thread-safe, dynamically changing set of backends with a round-robin picker.
///
/// Readers (pick, find, list) take no lock: they read an immutable snapshot that writers
/// (add, remove, set_state) replace under a mutex. A Pool must outlive every Proxy that uses it.
class Pool {
 public:
  /// An empty pool.
  Pool();
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// Adds a backend with optional health-check settings (a JSON object text); false (and no
  /// change) when one with the same id is already present.
  bool add(const BackendAddress& address, std::string check = {});
  /// Parses `url` and adds it; throws std::invalid_argument when the URL is not valid.
  bool add(std::string_view url);
  /// Starts draining the backend with this id: no new picks; it leaves the pool once its
  /// in-flight requests finish. False when no such (non-draining) backend exists.
  bool remove(std::string_view id);
  /// Sets the state of a backend (used by health checks); false when unknown or draining.
  bool set_state(std::string_view id, BackendState state);

  /// The backend with this id, or null.
  [[nodiscard]] std::shared_ptr<Backend> find(std::string_view id) const;
  /// Every backend, draining ones included, in insertion order.
  [[nodiscard]] std::vector<std::shared_ptr<Backend>> list() const;
  /// Number of backends (draining ones included).
  [[nodiscard]] std::size_t size() const;

  /// Picks the next usable backend round-robin; null when none is usable. Lock-free. With
  /// `include_down`, backends that are down count as usable too (fail-open); draining never.
  [[nodiscard]] std::shared_ptr<Backend> pick(bool include_down = false);

  /// Marks the start of a request on `backend` (counts it as in flight).
  void begin_request(Backend& backend) noexcept;
  /// Marks its end; `ok` tells whether it succeeded. A drained backend leaves the pool here.
  void end_request(Backend& backend, bool ok);

  /// Called after each change, in the order of the changes, on the thread that made it.
  using Listener = std::function<void(const PoolEvent&)>;
  /// Subscribes `listener` to changes; returns a handle for unsubscribe(). A listener may read
  /// the pool but must not change it (that would deadlock).
  std::uint64_t subscribe(Listener listener);
  /// Stops calling the listener with this handle; when it returns, the listener is not running.
  void unsubscribe(std::uint64_t handle);

 private:
  struct Snapshot;
  std::shared_ptr<const Snapshot> snapshot() const;
  void publish(std::vector<std::shared_ptr<Backend>> backends);  // requires mutex_
  void erase_drained(const Backend& backend);
  void notify(PoolEvent::Kind kind, std::shared_ptr<Backend> backend);  // requires notify_mutex_

  const std::uint64_t uid_;
  // Writers hold notify_mutex_ across a change and its notification, so listeners see changes
  // in order; mutex_ guards the snapshot alone, so listeners can read the pool.
  std::mutex notify_mutex_;
  std::vector<std::pair<std::uint64_t, Listener>> listeners_;  // guarded by notify_mutex_
  std::uint64_t next_listener_{1};                             // guarded by notify_mutex_
  mutable std::mutex mutex_;
  std::shared_ptr<const Snapshot> current_;  // guarded by mutex_
  std::atomic<std::uint64_t> version_{0};
  std::atomic<std::uint64_t> next_{0};
};

}  // namespace weldr
