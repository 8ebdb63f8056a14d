#pragma once
// A small client for etcd's v3 JSON gateway over HTTP/1.1: unary POSTs with a timeout each,
// and one streamed watch. It runs on the host's control executor and starts no thread.
//
// Why not gRPC: the gRPC C++ runtime brings its own threads and completion queues, a large
// dependency, and a second event loop beside Asio, for the five calls weldr needs (range, txn,
// lease grant/keepalive/revoke, watch). The gateway is part of every etcd 3.4 member.

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace weldr::cluster {

/// One etcd member's client URL, "http://host:port".
struct Endpoint {
  std::string host;
  std::uint16_t port{2379};
  std::string url;  ///< as given, normalised to "http://host:port"
};

/// Parses a comma-separated list of client URLs ("http://host:port", or "host:port"); https
/// is refused (weldr has no TLS yet). On failure returns nothing and sets `error`.
std::optional<std::vector<Endpoint>> parse_endpoints(std::string_view urls, std::string& error);

/// Settings of an EtcdClient.
struct EtcdClientOptions {
  std::vector<Endpoint> endpoints;
  std::chrono::milliseconds connect_timeout{1000};  ///< per endpoint tried
  std::string user;                                 ///< etcd authentication; empty: none
  std::string password;
  std::size_t max_body{16 * 1024 * 1024};  ///< largest answer (and watch message) accepted
};

/// The outcome of one call.
struct CallResult {
  std::error_code ec;        ///< transport failure (connect, timeout, reset) when set
  int status{0};             ///< HTTP status of the answer
  std::string body;          ///< the answer
  std::string error;         ///< one line for logs and API errors when the call failed
  bool maybe_applied{true};  ///< false when the request surely never reached etcd
  std::string endpoint;      ///< the member that answered, or the last one tried

  /// True when etcd answered 200.
  [[nodiscard]] bool ok() const noexcept { return !ec && status == 200; }
};

/// True when a failed call may succeed if tried again, on this member or another: a transport
/// failure, a 5xx, or etcd's "not now" (gRPC Unavailable: no leader; DeadlineExceeded).
bool transient(const CallResult& result);

/// The client. Every call is bounded by its timeout; members are tried in turn, starting with
/// the one that last worked.
class EtcdClient {
 public:
  /// A client on `executor` (the host's control io_context).
  EtcdClient(asio::any_io_executor executor, EtcdClientOptions options);
  ~EtcdClient();
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  /// POSTs `body` to `path` (e.g. "/v3/kv/range"). Another member is tried when this one could
  /// not be reached, and, for `idempotent` calls, when it failed in any way (timeout, no
  /// leader). The whole call takes at most `timeout`. `prefer` names the member to try first
  /// (a URL of endpoints()); by default the one that last worked. A member that fails a call
  /// while the watch is connected to it loses the watch too (it reconnects elsewhere).
  asio::awaitable<CallResult> call(std::string_view path, std::string body, bool idempotent,
                                   std::chrono::milliseconds timeout, std::string prefer = {});

  /// Opens a watch (POST /v3/watch with `body`) and calls `on_line` for each message of the
  /// stream until the stream ends, `on_line` returns false, or cancel_watch() is called.
  /// `opened` is the time allowed to get the answer's head. Returns why it ended.
  asio::awaitable<std::string> watch(std::string body, std::function<bool(std::string_view)> on_line,
                                     std::chrono::milliseconds opened);
  /// Ends the running watch, if any (its socket is closed).
  void cancel_watch();
  /// The member the watch is connected to ("" when none).
  [[nodiscard]] std::string watch_endpoint() const;
  /// Tells the client that calls to `url` fail: the next calls start with another member.
  void demote(const std::string& url);

  /// The members, as configured.
  [[nodiscard]] const std::vector<Endpoint>& endpoints() const noexcept;
  /// Closes everything; calls in progress fail.
  void close();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace weldr::cluster
