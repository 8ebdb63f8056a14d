#pragma once
/// \file
/// In-process servers for integration tests: a scriptable origin (`Origin`) and the proxy under
/// test running on its own io_context and thread (`TestProxy`).

#include "client.hpp"

#include <weldr/pool.hpp>
#include <weldr/proxy.hpp>

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

namespace weldr::test {

/// A request as the origin received it.
struct RecordedRequest : Message {
  std::size_t connection{0};  ///< index of the connection it came on (0 = first accepted)

  /// First value of header `name`, or "" when absent.
  [[nodiscard]] std::string header(std::string_view name) const;
  /// True when header `name` is present.
  [[nodiscard]] bool has(std::string_view name) const;
  /// The path of the target, without the query.
  [[nodiscard]] std::string_view path() const;
  /// The value of query parameter `key`, if present.
  [[nodiscard]] std::optional<std::string> query(std::string_view key) const;
};

/// What the origin does with one request: a normal response, or scripted misbehaviour.
struct Reply {
  int status{200};                     ///< status code
  std::string reason{};                ///< reason phrase; empty picks the standard one
  Headers headers{};                   ///< extra header fields, sent as given (hop-by-hop ones included)
  std::string body{};                  ///< the body (not sent for HEAD, whose Content-Length still counts it)
  bool chunked{false};                 ///< send the body with Transfer-Encoding: chunked
  std::size_t chunk_size{16 * 1024};   ///< size of each chunk when chunked
  bool content_length{true};           ///< add Content-Length (when not chunked); false with keep_alive=false
                                       ///< gives a close-delimited body
  bool keep_alive{true};               ///< false: send "Connection: close" and close after the response
  bool close_after_response{false};    ///< close silently after the response (no Connection: close)
  std::chrono::milliseconds delay{0};  ///< wait this long before answering
  std::optional<std::size_t> close_after_bytes{};  ///< send only the first K bytes of the response, then close
  bool reset{false};                   ///< when closing early (close_after_bytes, close_without_response), send an RST
  std::optional<std::string> raw{};    ///< send exactly these bytes instead of a formatted response
  bool no_response{false};             ///< never answer; keep the connection open until the origin stops
  bool close_without_response{false};  ///< close the connection instead of answering
};

/// The behaviour of an origin: maps each complete request to a Reply.
using Handler = std::function<Reply(const RecordedRequest&)>;

/// A scriptable HTTP/1.1 origin server on 127.0.0.1 with its own io_context and thread.
///
/// It records every complete request it receives, answers through its Handler (by default
/// default_reply()), supports keep-alive and pipelining, and sends `100 Continue` when a
/// request with a body carries `Expect: 100-continue`. Everything stops in the destructor.
class Origin {
 public:
  /// Starts listening on 127.0.0.1 at a free port, with default_reply() as handler.
  Origin();
  /// Starts listening with `handler`.
  explicit Origin(Handler handler);
  /// Closes every connection and joins the thread.
  ~Origin();
  Origin(const Origin&) = delete;
  Origin& operator=(const Origin&) = delete;

  /// The listening port.
  [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
  /// "http://127.0.0.1:PORT".
  [[nodiscard]] std::string endpoint_url() const;
  /// "127.0.0.1:PORT", the backend's id in a Pool.
  [[nodiscard]] std::string id() const;

  /// Replaces the handler (takes effect for the next request).
  void set_handler(Handler handler);
  /// Whether to answer `Expect: 100-continue` with an interim `100 Continue` (default true).
  void set_send_continue(bool enabled);

  /// Copies of every complete request received so far, in arrival order.
  [[nodiscard]] std::vector<RecordedRequest> requests() const;
  /// Number of complete requests received so far.
  [[nodiscard]] std::size_t request_count() const;
  /// Number of connections accepted so far.
  [[nodiscard]] std::size_t connections_accepted() const;
  /// Blocks until at least `n` requests have been received; false if `timeout` passed first.
  bool wait_for_requests(std::size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(10)) const;
  /// Blocks until at least `n` connections have been accepted; false if `timeout` passed first.
  bool wait_for_connections(std::size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(10)) const;

  /// The built-in behaviour: `/` → 200 "Hello World"; `/echo` → the request body (chunked when
  /// the request was); `/large?size=N` → N bytes, byte i = 'a' + i % 26; `/chunked` → "Hello World"
  /// in two chunks; `/status/N` → status N; `/delay/MS` → "Hello World" after MS ms; anything
  /// else → 404. HEAD gets the same head without the body.
  static Reply default_reply(const RecordedRequest& request);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::uint16_t port_{0};
};

/// The body that `/large?size=N` returns: byte i is 'a' + i % 26.
std::string large_body(std::size_t size);

/// A handler that answers requests for `path` with `reply` and everything else with
/// Origin::default_reply().
Handler reply_on(std::string path, Reply reply);

/// A weldr::Proxy under test with its own Pool, io_context and thread, on 127.0.0.1:0.
///
/// The Proxy is created and starts listening before the thread runs; afterwards every call into
/// it is posted to its io_context (see call()). The destructor stops it gracefully (busy
/// connections get a short grace period), then stops the loop and joins.
class TestProxy {
 public:
  /// Starts a proxy over a new Pool holding `backends` (URLs) with `options`.
  explicit TestProxy(const std::vector<std::string>& backends = {}, ProxyOptions options = test_options());
  ~TestProxy();
  TestProxy(const TestProxy&) = delete;
  TestProxy& operator=(const TestProxy&) = delete;

  /// Options with short timeouts, so that a failing test ends quickly.
  static ProxyOptions test_options();

  /// The port the proxy listens on.
  [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
  /// The pool it balances over (thread-safe: usable from the test thread).
  [[nodiscard]] Pool& pool() noexcept { return *pool_; }
  /// The proxy's counters, read on its thread.
  [[nodiscard]] ProxyCounters counters();

  /// Calls stop() on the proxy's thread and returns once the call has returned; the future
  /// becomes ready when the stop completes (the callback fired).
  std::future<void> stop(std::optional<std::chrono::milliseconds> grace = std::nullopt);

  /// Runs `f(proxy)` on the proxy's thread and returns its result (rethrows its exception).
  /// Throws std::runtime_error when the proxy's thread does not get to it within 10 s.
  template <class F>
  auto call(F f) -> std::invoke_result_t<F&, Proxy&> {
    using R = std::invoke_result_t<F&, Proxy&>;
    // Shared, so that a task that runs after a timeout still has everything it refers to.
    auto task = std::make_shared<std::packaged_task<R()>>(
        [f = std::move(f), proxy = proxy_.get()]() mutable { return f(*proxy); });
    auto future = task->get_future();
    asio::post(io_, [task] { (*task)(); });
    if (future.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      throw std::runtime_error("the proxy's thread did not run a posted call within 10 s");
    }
    return future.get();
  }

 private:
  // Declared so that the io_context (and the coroutine frames still queued in it) goes away
  // after the Proxy but before the Pool, which must outlive everything that refers to it.
  std::unique_ptr<Pool> pool_;
  asio::io_context io_;
  std::unique_ptr<Proxy> proxy_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread thread_;
  std::uint16_t port_{0};
  bool stopped_{false};
};

}  // namespace weldr::test
