#pragma once
/// \file
/// The set of origin servers (backends) that weldr balances over.

#include <weldr/balancer.hpp>
#include <weldr/stats.hpp>

#include <atomic>
#include <chrono>
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
  /// object text ("" when it has none of its own); `weight` its share of traffic (1..256,
  /// clamped).
  explicit Backend(BackendAddress address, std::string check = {}, unsigned weight = 1);

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
  /// Its weight, 1..256: its share of traffic relative to the others (Pool::set_weight).
  [[nodiscard]] unsigned weight() const noexcept { return weight_.load(std::memory_order_relaxed); }
  /// A hash of its id, for the hash policy.
  [[nodiscard]] std::uint64_t id_hash() const noexcept { return id_hash_; }
  /// Time from sending a request to receiving the whole response, for successful requests.
  [[nodiscard]] LatencyHistogram& latency() noexcept { return latency_; }
  /// Same, read-only.
  [[nodiscard]] const LatencyHistogram& latency() const noexcept { return latency_; }
  /// Current state.
  [[nodiscard]] BackendState state() const noexcept { return state_.load(std::memory_order_acquire); }
  /// True when the balancer may pick it: active and not ejected.
  [[nodiscard]] bool usable() const noexcept { return state() == BackendState::active && !ejected(); }
  /// True while outlier detection keeps it out of rotation.
  [[nodiscard]] bool ejected() const noexcept;
  /// Time left of its current ejection (zero when not ejected, or when only waiting for the
  /// health checker's passes).
  [[nodiscard]] std::chrono::milliseconds ejection_left() const noexcept;
  /// Times outlier detection ejected it.
  [[nodiscard]] std::uint64_t ejections() const noexcept { return ejections_.load(std::memory_order_relaxed); }
  /// Failed requests in a row (reset by a success and by an ejection).
  [[nodiscard]] std::uint32_t consecutive_failures() const noexcept {
    return consecutive_failures_.load(std::memory_order_relaxed);
  }
  /// Moving average of its time to the response head, in seconds (0 before the first response).
  [[nodiscard]] double latency_ewma() const noexcept { return ewma_.load(std::memory_order_relaxed); }
  /// When it last became usable (added, up again, back from an ejection), on the steady clock,
  /// in nanoseconds: the start of its slow start.
  [[nodiscard]] std::int64_t usable_since_ns() const noexcept;

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
  std::atomic<unsigned> weight_;
  std::uint64_t id_hash_;
  LatencyHistogram latency_;
  std::atomic<BackendState> state_{BackendState::active};
  std::atomic<std::int64_t> active_since_{0};     // steady ns
  std::atomic<std::int64_t> ejected_until_{0};    // steady ns; 0: never ejected
  std::atomic<bool> held_{false};                 // ejected until the health checker passes it
  std::atomic<std::uint32_t> ejection_level_{0};  // multiplier of the next ejection time
  std::atomic<std::uint64_t> ejections_{0};
  std::atomic<std::uint32_t> consecutive_failures_{0};
  std::atomic<double> ewma_{0.0};
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
    ejected,        ///< outlier detection took it out of rotation
    returned,       ///< it came back from an ejection (reinstate())
    reweighted,     ///< set_weight() changed its weight
  };
  Kind kind;                         ///< what happened
  std::shared_ptr<Backend> backend;  ///< to whom
};

/// Passive health: real traffic ejects a backend that keeps failing.
struct OutlierOptions {
  /// Failed requests in a row (connect failure, timeout, reset or 5xx) that eject a backend;
  /// 0 turns outlier detection off.
  unsigned consecutive_failures{5};
  /// Length of a first ejection; the n-th ejection in a row lasts n times as long.
  std::chrono::milliseconds base_ejection_time{30000};
  /// Longest ejection.
  std::chrono::milliseconds max_ejection_time{300000};
  /// Largest share of the pool (percent) ejected at once.
  unsigned max_ejection_percent{50};
};

/// A thread-safe, dynamically changing set of backends with a balancing policy.
///
/// Readers (pick, find, list) take no lock: they read an immutable snapshot that writers
/// (add, remove, set_state) replace under a mutex. A Pool must outlive every Proxy that uses it.
class Pool {
 public:
  /// An empty pool.
  Pool();
  /// Destroys the pool; no Proxy, StateFile, HealthChecker or ManagementApi may still use it.
  ~Pool();
  /// Not copyable.
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// Adds a backend with optional health-check settings (a JSON object text) and a weight
  /// (1..256); false (and no change) when one with the same id is already present.
  bool add(const BackendAddress& address, std::string check = {}, unsigned weight = 1);
  /// Parses `url` and adds it; throws std::invalid_argument when the URL is not valid.
  bool add(std::string_view url);
  /// Starts draining the backend with this id: no new picks; it leaves the pool once its
  /// in-flight requests finish. False when no such (non-draining) backend exists.
  bool remove(std::string_view id);
  /// Changes the weight of a backend (clamped to 1..256); false when unknown or draining.
  bool set_weight(std::string_view id, unsigned weight);
  /// Sets the state of a backend (used by health checks); false when unknown or draining.
  bool set_state(std::string_view id, BackendState state);

  /// The backend with this id, or null.
  [[nodiscard]] std::shared_ptr<Backend> find(std::string_view id) const;
  /// Every backend, draining ones included, in insertion order.
  [[nodiscard]] std::vector<std::shared_ptr<Backend>> list() const;
  /// Number of backends (draining ones included).
  [[nodiscard]] std::size_t size() const;

  /// Picks a usable backend with the pool's policy; null when none is eligible. Lock-free
  /// (unless the policy takes a lock; the built-in ones do not).
  [[nodiscard]] std::shared_ptr<Backend> pick(const PickContext& context);
  /// pick() with no request key and nothing excluded; with `include_down`, backends that are
  /// down or ejected are eligible too (fail-open); draining never.
  [[nodiscard]] std::shared_ptr<Backend> pick(bool include_down = false);

  /// Replaces the balancing policy (round robin by default). Thread-safe.
  void set_balancer(std::shared_ptr<Balancer> balancer);
  /// The balancing policy.
  [[nodiscard]] std::shared_ptr<Balancer> balancer() const;
  /// Sets the slow-start window: a backend that comes back ramps its share of traffic up over
  /// this time (zero, the default, turns it off). Thread-safe.
  void set_slow_start(std::chrono::milliseconds window);
  /// The slow-start window.
  [[nodiscard]] std::chrono::milliseconds slow_start() const;
  /// Sets outlier detection (passive health). Thread-safe.
  void set_outlier_detection(const OutlierOptions& options);
  /// The outlier-detection settings.
  [[nodiscard]] OutlierOptions outlier_detection() const;
  /// With `on`, an ejected backend returns only when reinstate() is called (by a HealthChecker
  /// after passing checks), not merely when its ejection time is over.
  void set_return_needs_checks(bool on);
  /// Brings back an ejected backend whose ejection time is over; false when it is not ejected
  /// or its time is not over yet.
  bool reinstate(std::string_view id);

  /// Marks the start of a request on `backend` (counts it as in flight).
  void begin_request(Backend& backend) noexcept;
  /// Marks its end; `ok` tells whether it succeeded and `latency` is its time to the response
  /// head (for the latency average; zero when there was no response). Failures in a row may
  /// eject the backend. A drained backend leaves the pool here.
  void end_request(Backend& backend, bool ok, std::chrono::nanoseconds latency = {});

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
  void install(std::shared_ptr<Snapshot> next);                  // requires mutex_
  void erase_drained(const Backend& backend);
  void notify(PoolEvent::Kind kind, std::shared_ptr<Backend> backend);  // requires notify_mutex_
  void maybe_eject(Backend& backend);

  const std::uint64_t uid_;
  // Writers hold notify_mutex_ across a change and its notification, so listeners see changes
  // in order; mutex_ guards the snapshot alone, so listeners can read the pool.
  std::mutex notify_mutex_;
  std::vector<std::pair<std::uint64_t, Listener>> listeners_;  // guarded by notify_mutex_
  std::uint64_t next_listener_{1};                             // guarded by notify_mutex_
  mutable std::mutex mutex_;
  std::shared_ptr<const Snapshot> current_;  // guarded by mutex_
  std::atomic<std::uint64_t> version_{0};
  OutlierOptions outlier_;                     // guarded by mutex_
  std::atomic<unsigned> outlier_failures_{5};  // outlier_.consecutive_failures, read per request
  std::atomic<bool> return_needs_checks_{false};
};

}  // namespace weldr
