#pragma once
/// \file
/// The HTTP/1.1 reverse proxy: one listening socket on a host-owned io_context.

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

namespace weldr {

class Pool;
class ProxyHooks;
class Stats;
namespace detail {
struct ProxyImpl;
}

/// What the hash balancing policy hashes for each request.
struct HashKey {
  /// Where the key comes from.
  enum class Source {
    client_ip,  ///< the client's IP address
    header,     ///< the value of a request header (all of its lines, in order)
    cookie,     ///< the value of a cookie
  };
  Source source{Source::client_ip};  ///< where the key comes from
  std::string name;                  ///< the header or cookie name
};

/// Parses "client_ip", "header:NAME" or "cookie:NAME"; nothing when `text` is none of those.
std::optional<HashKey> parse_hash_key(std::string_view text);

/// A cap on open client connections that several Proxies (threads) can share. Thread-safe.
///
/// A Proxy checks the cap before each accept, so with N Proxies sharing one object the count
/// can pass the cap by at most N - 1 for a moment.
class ConnectionLimit {
 public:
  /// Allows `max` connections at once (at least 1).
  explicit ConnectionLimit(std::size_t max) noexcept : max_(max == 0 ? 1 : max) {}
  /// True when no connection should be accepted now.
  [[nodiscard]] bool full() const noexcept { return open() >= max_; }
  /// Counts an accepted connection.
  void acquire() noexcept { open_.fetch_add(1, std::memory_order_relaxed); }
  /// Counts a closed connection.
  void release() noexcept { open_.fetch_sub(1, std::memory_order_relaxed); }
  /// Connections open now, across every Proxy sharing this object.
  [[nodiscard]] std::size_t open() const noexcept { return open_.load(std::memory_order_relaxed); }
  /// The cap.
  [[nodiscard]] std::size_t max() const noexcept { return max_; }

 private:
  std::size_t max_;
  std::atomic<std::size_t> open_{0};
};

/// Limits and timeouts of a Proxy. Every wait has a timeout and every buffer a bound.
struct ProxyOptions {
  /// Time allowed to establish a TCP connection to a backend.
  std::chrono::milliseconds connect_timeout{1000};
  /// Time allowed between sending a request and each read of the backend's response.
  std::chrono::milliseconds read_timeout{30000};
  /// Time allowed to receive a complete request head, and between reads of a request body.
  std::chrono::milliseconds client_header_timeout{10000};
  /// How long an idle keep-alive client connection is kept open.
  std::chrono::milliseconds client_idle_timeout{60000};
  /// Time allowed for each write to a client or backend to make progress.
  std::chrono::milliseconds send_timeout{30000};
  /// How long an idle upstream connection stays in the keep-alive cache.
  std::chrono::milliseconds upstream_idle_timeout{30000};
  /// Total time allowed to receive a request body (408 beyond it), on top of the time allowed
  /// per read (`client_header_timeout`); zero means no total limit, as uploads may be large.
  std::chrono::milliseconds request_body_timeout{0};
  /// Largest request line: method and target, the URI included (414 beyond it).
  std::size_t max_request_line{8 * 1024};
  /// Largest request or response head accepted (431 / 502 beyond it).
  std::size_t max_head_size{64 * 1024};
  /// Largest number of header fields in a request head (431 beyond it).
  std::size_t max_header_count{100};
  /// Largest request body, after chunked decoding (413 beyond it); zero means no limit.
  std::uint64_t max_body_size{0};
  /// Size of each streaming buffer (one per direction and connection).
  std::size_t buffer_size{16 * 1024};
  /// Idle keep-alive connections cached per backend.
  std::size_t max_idle_per_backend{64};
  /// Attempts on another backend after a connect failure, or (idempotent requests only) a
  /// connection lost before any response byte.
  unsigned retries{1};
  /// Retry budget: retries may add at most this share (percent) of the requests received over
  /// `retry_budget_window`, plus `retry_budget_min`; a failing pool is not hit twice as hard.
  unsigned retry_budget_percent{20};
  /// Retries always allowed per window, however little traffic there is.
  unsigned retry_budget_min{10};
  /// The window of the retry budget.
  std::chrono::milliseconds retry_budget_window{10000};
  /// The request key of the hash balancing policy (ignored by the other policies).
  HashKey hash_key;
  /// When every backend is down, keep sending to them anyway instead of answering 503.
  bool fail_open{false};
  /// Retry-After (seconds) of the 503 answered when no backend is usable.
  unsigned retry_after{1};
  /// Set SO_REUSEPORT on the listening socket so that one Proxy per thread can share a port.
  bool reuse_port{false};
  /// Listen backlog.
  int backlog{1024};
  /// Caps the client connections open at once, shared by every Proxy given the same object
  /// (null: no cap). At the cap a Proxy stops accepting: new connections wait in the listen
  /// backlog, as in HAProxy, and are accepted as others close.
  std::shared_ptr<ConnectionLimit> connection_limit;
  /// Value of X-Forwarded-Proto.
  std::string forwarded_proto{"http"};
  /// The pseudonym used in the Via header ("1.1 <via_name>").
  std::string via_name{"weldr"};
  /// The host's hooks (see weldr/hooks.hpp), or null. One object may serve several Proxies
  /// (threads): it must then be thread-safe.
  std::shared_ptr<ProxyHooks> hooks;
};

/// Counters of one Proxy, readable while it runs (same thread as its io_context).
struct ProxyCounters {
  std::uint64_t connections_accepted{0};  ///< client connections accepted
  std::uint64_t connections_open{0};      ///< client connections open now
  std::uint64_t requests{0};              ///< requests received from clients
  std::uint64_t responses_ok{0};          ///< complete responses relayed from backends
  std::uint64_t responses_error{0};       ///< requests answered by weldr with an error or broken off
  std::uint64_t upstream_connects{0};     ///< new connections opened to backends
  std::uint64_t upstream_reuses{0};       ///< requests sent on a cached keep-alive connection
  std::uint64_t retries{0};               ///< requests tried again on another backend
  std::uint64_t retries_denied{0};        ///< retries the retry budget refused
};

/// An HTTP/1.1 reverse proxy that balances over a Pool.
///
/// All work runs on the io_context given to the constructor, which must be run by a single
/// thread; to use several cores, create one Proxy per thread and io_context with
/// `reuse_port` set, all sharing one Pool. The Proxy starts no threads of its own.
class Proxy {
 public:
  /// Creates a proxy that will run on `io` and pick backends from `pool`, with counters of its own.
  Proxy(asio::io_context& io, Pool& pool, ProxyOptions options = {});
  /// Creates a proxy that counts requests in `stats` (shared with other proxies and read by
  /// the management API); `pool` and `stats` must outlive it.
  Proxy(asio::io_context& io, Pool& pool, Stats& stats, ProxyOptions options = {});
  /// Closes everything at once; call stop() first for a graceful end.
  ~Proxy();
  /// Not copyable.
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  /// Binds and starts accepting on `endpoint` (port 0 picks a free port). Throws std::system_error.
  void listen(const asio::ip::tcp::endpoint& endpoint);
  /// Same as listen(endpoint), reporting failure through `ec` instead of throwing.
  void listen(const asio::ip::tcp::endpoint& endpoint, std::error_code& ec);
  /// The bound address (useful after listening on port 0).
  [[nodiscard]] asio::ip::tcp::endpoint local_endpoint() const;

  /// Graceful stop: stops accepting, closes idle client and upstream connections, lets requests
  /// in flight finish, then calls `done` (on the io_context). Upgraded connections (WebSocket
  /// tunnels) count as in flight until they end, so prefer the form with a grace period. Call
  /// it on the io_context's thread (asio::post from elsewhere); calling it again adds a callback.
  void stop(std::function<void()> done = {});
  /// Like stop(), but whatever is still open after `grace` is closed, tunnels included.
  void stop(std::chrono::milliseconds grace, std::function<void()> done = {});

  /// Current counters.
  [[nodiscard]] ProxyCounters counters() const;
  /// The options it runs with.
  [[nodiscard]] const ProxyOptions& options() const;

 private:
  Proxy(asio::io_context& io, Pool& pool, Stats* stats, ProxyOptions options);

  std::shared_ptr<detail::ProxyImpl> impl_;
};

}  // namespace weldr
