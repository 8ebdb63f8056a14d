#include <weldr/proxy.hpp>

#include <weldr/error.hpp>
#include <weldr/hooks.hpp>
#include <weldr/pool.hpp>
#include <weldr/stats.hpp>

#include "hooks_internal.hpp"
#include "http/parser.hpp"
#include "http/rewrite.hpp"
#include "log_internal.hpp"
#include "net/buffer.hpp"
#include "net/frame_pool.hpp"
#include "net/listen.hpp"
#include "net/use_nothrow.hpp"
#include "net/watchdog.hpp"
#include "retry_budget.hpp"

#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <list>
#include <unordered_map>
#include <vector>

namespace weldr {
class Session;
}

// The Session's coroutines (its member functions returning asio::awaitable) take their frames
// from net::FramePool, so that many connections at once allocate nothing per request.
template <typename T, typename... Args>
struct std::coroutine_traits<asio::awaitable<T, asio::any_io_executor>, weldr::Session&, Args...> {
  using promise_type = weldr::net::PooledFrame<asio::detail::awaitable_frame<T, asio::any_io_executor>>;
};

namespace weldr {

using asio::ip::tcp;
using net::Watchdog;
using std::chrono::milliseconds;
using clock_type = std::chrono::steady_clock;

namespace {

using net::use_nothrow;

// GCC 12 miscompiles some coroutines whose co_await or co_return statements contain ?:, && or
// || (it resumes a corrupt frame), so throughout this file such expressions are computed into
// locals first. (The awaitable operators && of Asio are function calls, not affected.)

// How long a closing connection keeps reading what the client still sends, so that our last
// response is not destroyed by a TCP reset (the "lingering close" of nginx and Apache).
constexpr milliseconds kLingerTime{2000};
constexpr std::size_t kLingerBytes = 256 * 1024;

// Buffers kept for reuse by each Proxy, beyond those in use (256 x 16 KiB = 4 MiB by default).
constexpr std::size_t kFreeBuffers = 256;
// The read buffer of a large response body (see relay_response), and how many are kept.
constexpr std::size_t kLargeBodyBuffer = 64 * 1024;
constexpr std::size_t kFreeLargeBuffers = 32;

// The shortest timeout a session may arm, which sets the resolution of the proxy's TimerWheel.
milliseconds shortest_timeout(const ProxyOptions& o) {
  milliseconds shortest = std::min(
      {o.connect_timeout, o.read_timeout, o.client_header_timeout, o.client_idle_timeout, o.send_timeout, kLingerTime});
  if (o.request_body_timeout.count() > 0) shortest = std::min(shortest, o.request_body_timeout);
  return shortest;
}

bool is_aborted(const std::error_code& ec) {
  return ec == asio::error::operation_aborted;
}

}  // namespace

/// A keep-alive connection to a backend; it counts itself in the backend's connection gauge.
struct UpstreamConnection {
  UpstreamConnection(tcp::socket s, std::shared_ptr<Backend> b) : socket(std::move(s)), backend(std::move(b)) {
    backend->add_connections(1);
  }
  ~UpstreamConnection() { backend->add_connections(-1); }
  UpstreamConnection(const UpstreamConnection&) = delete;
  UpstreamConnection& operator=(const UpstreamConnection&) = delete;

  /// False when the backend closed it (or sent something unasked) while it sat idle.
  bool still_open() {
    char byte;
    const ssize_t n = ::recv(socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  tcp::socket socket;
  std::shared_ptr<Backend> backend;
  clock_type::time_point idle_since{};
};

class Session;

struct detail::ProxyImpl : std::enable_shared_from_this<detail::ProxyImpl> {
  ProxyImpl(asio::io_context& io_context, Pool& p, Stats* shared_stats, ProxyOptions o)
      : io(io_context),
        pool(p),
        own_stats(shared_stats == nullptr ? std::make_unique<Stats>() : nullptr),
        stats(shared_stats == nullptr ? *own_stats : *shared_stats),
        options(std::move(o)),
        buffers(options.buffer_size, kFreeBuffers),
        large_buffers(kLargeBodyBuffer, kFreeLargeBuffers),
        retry_budget(options.retry_budget_percent, options.retry_budget_min, options.retry_budget_window),
        acceptor(io_context),
        accept_wakeup(io_context),
        sweep_timer(io_context),
        wheel(std::make_shared<net::TimerWheel>(io_context.get_executor(),
                                                net::TimerWheel::resolution_for(shortest_timeout(options)))) {
    via = "1.1 " + options.via_name;
  }
  ~ProxyImpl() { wheel->close(); }
  ProxyImpl(const ProxyImpl&) = delete;
  ProxyImpl& operator=(const ProxyImpl&) = delete;

  asio::awaitable<void> accept_loop();
  asio::awaitable<void> sweep_loop();
  std::unique_ptr<UpstreamConnection> take_idle(const std::shared_ptr<Backend>& backend);
  void put_idle(std::unique_ptr<UpstreamConnection> connection);
  void begin_stop(std::optional<milliseconds> grace, std::function<void()> done);
  void close_all();
  void session_ended(std::list<Session*>::iterator it);
  void maybe_finish_stop();

  asio::io_context& io;
  Pool& pool;
  std::unique_ptr<Stats> own_stats;
  Stats& stats;
  ProxyOptions options;
  net::BufferPool buffers;
  net::BufferPool large_buffers;  // for large response bodies
  detail::RetryBudget retry_budget;
  std::string via;
  tcp::acceptor acceptor;
  asio::steady_timer accept_wakeup;  // wakes an accept loop paused at the connection limit
  asio::steady_timer sweep_timer;
  std::shared_ptr<net::TimerWheel> wheel;  // the sessions' timeouts
  std::unique_ptr<asio::steady_timer> grace_timer;
  ProxyCounters counters;
  std::list<Session*> sessions;
  // Keyed by backend object, not address: two pools may hold the same ip:port.
  std::unordered_map<const Backend*, std::vector<std::unique_ptr<UpstreamConnection>>> idle;
  std::vector<std::function<void()>> stopped_callbacks;
  std::uint64_t pool_listener{0};
  bool stopping{false};
};

// ---------------------------------------------------------------------------------------------
// Session: one client connection, one coroutine, requests served in order.

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(std::shared_ptr<detail::ProxyImpl> proxy, tcp::socket socket, const tcp::endpoint& remote)
      : proxy_(std::move(proxy)),
        opts_(proxy_->options),
        client_(std::move(socket)),
        client_wd_(*proxy_->wheel),
        up_wd_(*proxy_->wheel),
        in_(proxy_->buffers),
        up_in_(proxy_->buffers),
        req_(http::Parser::Kind::request, opts_.max_head_size, opts_.max_header_count, opts_.max_request_line),
        resp_(http::Parser::Kind::response, opts_.max_head_size, opts_.max_header_count) {
    client_address_ = remote.address().to_string();  // (from accept: no getpeername)
    client_wd_.watch(&client_);
    self_in_list_ = proxy_->sessions.insert(proxy_->sessions.end(), this);
    hooks_ = opts_.hooks.get();
  }

  asio::awaitable<void> run();

  /// The proxy is stopping: a connection waiting for its next request closes now.
  void on_stop() {
    if (waiting_idle_) {
      std::error_code ignored;
      client_.cancel(ignored);
    }
  }

  /// Closes both sockets at once (end of a stop's grace period, or the Proxy's destruction).
  void force_close() {
    forced_ = true;
    std::error_code ignored;
    client_.close(ignored);
    if (up_) up_->socket.close(ignored);
    if (connecting_ != nullptr) connecting_->close(ignored);
  }

 private:
  enum class Failure {
    none,
    connect,       // no connection to the backend; nothing was sent
    no_response,   // the backend closed or reset before the first response byte
    timeout,       // the backend sent no (complete) response head in time
    bad_response,  // the backend's response head was invalid or too large
    broken,        // the response was cut after it started: the client connection must close
    client,        // the client went away or sent an invalid body: nothing more to say to it
  };

  struct Exchange {
    Failure failure{Failure::none};
    std::string_view detail;
    int client_status{0};  // for Failure::client: what to tell the client, if it can still hear (400, 408)
  };

  asio::awaitable<bool> serve_one();
  asio::awaitable<bool> handle_request();
  asio::awaitable<bool> serve_request();
  asio::awaitable<bool> send_local(const LocalResponse& response, bool close);
  void begin_log() noexcept;
  void finish_log(bool have_head);
  std::optional<std::uint64_t> request_key() const;
  // Decoded body bytes reported by the request parser's last feed.
  std::uint64_t decoded_bytes() const noexcept {
    std::uint64_t n = 0;
    for (const auto& span : req_.body_spans())
      n += span.length;
    return n;
  }
  bool body_over_limit(std::uint64_t bytes) const noexcept {
    return opts_.max_body_size != 0 && bytes > opts_.max_body_size;
  }
  asio::awaitable<Exchange> exchange(const std::shared_ptr<Backend>& backend);
  asio::awaitable<std::error_code> connect(const std::shared_ptr<Backend>& backend);
  asio::awaitable<void> pump_request_body(Exchange& result);
  asio::awaitable<void> relay_response(Exchange& result);
  asio::awaitable<void> tunnel();
  asio::awaitable<void> copy(tcp::socket& from, Watchdog& from_wd, tcp::socket& to, Watchdog& to_wd);
  asio::awaitable<bool> send_error(int status, std::string_view body, bool close, std::string_view extra_headers = {});
  asio::awaitable<std::error_code> write_client(std::array<asio::const_buffer, 2> buffers);
  asio::awaitable<void> lingering_close();
  void release_upstream(bool reusable);
  void abort_exchange();

  std::shared_ptr<detail::ProxyImpl> proxy_;
  const ProxyOptions& opts_;
  tcp::socket client_;
  Watchdog client_wd_;
  Watchdog up_wd_;
  net::Buffer in_;
  net::Buffer up_in_;
  http::Parser req_;
  http::Parser resp_;
  std::string client_address_;
  // The client asked to close after a request that was read to its end, with nothing after it:
  // it sends no more, so the connection closes at once, without a lingering close.
  bool client_closes_{false};
  bool first_request_{true};       // nothing was read from the client yet
  std::array<char, 512> idle_in_;  // the start of the next request on an idle connection
  std::string head_out_;
  std::vector<std::string_view> scratch_;
  std::vector<asio::const_buffer> gather_;
  std::vector<const Backend*> tried_;

  // Hooks (null without) and what they see of the current request.
  ProxyHooks* hooks_{nullptr};
  RequestContext context_;
  detail::RequestView view_;
  bool context_ready_{false};  // context_ describes the current request

  // What on_log reports of the current request.
  int status_sent_{0};
  std::uint64_t bytes_out_{0};
  std::uint64_t body_bytes_in_{0};
  std::shared_ptr<Backend> last_backend_;
  unsigned attempts_{0};
  clock_type::time_point request_start_{};
  std::chrono::system_clock::time_point request_wall_{};
  clock_type::duration upstream_time_{};
  std::string error_text_;
  std::string head_copy_;  // the request head, once its body streams through in_
  std::unique_ptr<UpstreamConnection> up_;
  std::list<Session*>::iterator self_in_list_;

  // Per request.
  std::size_t head_size_{0};                // bytes of the request head in in_
  std::size_t body_in_head_{0};             // body bytes that arrived with the head
  std::uint64_t body_payload_{0};           // decoded request body bytes seen so far
  clock_type::time_point body_deadline_{};  // when the whole body must have arrived (request_body_timeout)
  bool head_request_{false};
  bool client_http10_{false};
  bool client_keep_alive_{false};
  bool request_done_{false};      // the whole request was read from the client
  bool response_started_{false};  // a byte of the final response went to the client
  bool response_done_{false};
  clock_type::time_point response_head_at_{};  // when the final response head arrived
  bool close_after_{false};                    // the client connection ends after this response
  bool upgraded_{false};
  bool request_upgrade_{false};  // the client asked for a protocol upgrade
  bool body_streamed_{false};    // body bytes left our buffer: no retry possible
  bool aborted_{false};          // one side of a two-way exchange failed; the other stops

  // Per connection.
  bool waiting_idle_{false};
  bool forced_{false};        // the proxy's stop grace ran out: abandon everything
  bool reset_client_{false};  // end with a TCP reset: a FIN could make a cut response look complete
  tcp::socket* connecting_{nullptr};
};

asio::awaitable<void> Session::run() {
  auto self = shared_from_this();

  try {
    while (co_await serve_one()) {
    }
    if (reset_client_) {
      // A response without length framing (close-delimited, or de-chunked for HTTP/1.0) ends
      // at the FIN, so a response cut short must end with a reset instead.
      std::error_code ignored;
      client_.set_option(asio::socket_base::linger(true, 0), ignored);
    } else if (!forced_ && !client_closes_) {
      co_await lingering_close();
    }
  } catch (...) {
    detail::log_exception(std::current_exception(), "client session");
  }
  std::error_code ignored;
  client_.close(ignored);
  release_upstream(false);
  proxy_->session_ended(self_in_list_);
}

// Reads and serves one request. False when the connection is to be closed.
asio::awaitable<bool> Session::serve_one() {
  in_.compact();
  req_.reset();
  head_request_ = false;
  std::size_t parsed = 0;
  waiting_idle_ = in_.size() == 0;
  if (proxy_->stopping && waiting_idle_) co_return false;
  const bool fresh = first_request_;
  if (waiting_idle_ && first_request_) {
    // A new client usually sends its request at once: read it now, which spares the readiness
    // wait (an epoll_ctl and a wake-up) that an idle keep-alive connection needs.
    first_request_ = false;
    const auto n = ::recv(client_.native_handle(), in_.write_ptr(), in_.writable(), MSG_DONTWAIT);
    if (n == 0) co_return false;  // closed without a request
    if (n > 0) {
      in_.commit(static_cast<std::size_t>(n));
      waiting_idle_ = false;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
      co_return false;  // reset
    }
  }
  if (waiting_idle_) {
    // An idle keep-alive connection holds no pool buffer: the next request starts in the
    // session's small one and moves to a pool buffer once it arrives.
    in_.release();
    // A new connection must start its request within the header timeout; a kept-alive one may
    // stay idle for the idle timeout.
    client_wd_.arm(Watchdog::read, fresh ? opts_.client_header_timeout : opts_.client_idle_timeout);
    // A read rather than a wait for readiness: Asio tries it at once, and when nothing is there
    // it waits without the epoll_ctl(MOD) that a wait costs.
    auto [ec, n] = co_await client_.async_read_some(asio::buffer(idle_in_), use_nothrow);
    waiting_idle_ = false;
    if (ec) co_return false;  // closed, reset, idle timeout, or the proxy's stop
    std::memcpy(in_.write_ptr(), idle_in_.data(), n);
    in_.commit(n);
  }
  client_wd_.arm(Watchdog::read, opts_.client_header_timeout);

  for (;;) {
    if (parsed < in_.size()) {
      std::size_t used = 0;
      const auto event = req_.feed(in_.data(), parsed, in_.size() - parsed, used);
      parsed += used;
      if (event == http::Parser::Event::head) break;
      if (event == http::Parser::Event::error) {
        ++proxy_->counters.requests;
        const auto error = req_.error();
        const bool too_big = error == errc::head_too_large || error == errc::too_many_headers;
        detail::log(LogLevel::debug, "client {}: bad request: {}", client_address_, req_.error_reason());
        int status = too_big ? 431 : 400;
        if (error == errc::uri_too_long) status = 414;
        begin_log();
        co_await send_error(status, req_.error_reason(), true);
        finish_log(false);
        co_return false;
      }
    }
    if (in_.writable() == 0) in_.grow(std::max(in_.capacity() * 2, opts_.max_head_size + 1));
    auto [ec, n] = co_await client_.async_read_some(asio::buffer(in_.write_ptr(), in_.writable()), use_nothrow);
    if (ec) {
      if (client_wd_.expired(Watchdog::read) && in_.size() > 0) {
        ++proxy_->counters.requests;
        begin_log();
        co_await send_error(408, "timed out reading the request head", true);
        finish_log(false);
      }
      co_return false;  // end of stream, reset, idle timeout or stop: nothing to answer
    }
    in_.commit(n);
  }
  client_wd_.disarm(Watchdog::read);
  head_size_ = parsed;
  co_return co_await handle_request();
}

asio::awaitable<bool> Session::handle_request() {
  begin_log();
  const bool next = co_await serve_request();
  finish_log(true);
  if (context_ready_) detail::RequestView::detach(context_);
  context_ready_ = false;
  co_return next;
}

void Session::begin_log() noexcept {
  view_.base = nullptr;
  status_sent_ = 0;
  bytes_out_ = 0;
  body_bytes_in_ = 0;
  last_backend_.reset();
  attempts_ = 0;
  upstream_time_ = {};
  error_text_.clear();
  if (hooks_ != nullptr) {
    request_start_ = clock_type::now();
    request_wall_ = std::chrono::system_clock::now();
  }
}

void Session::finish_log(bool have_head) {
  if (hooks_ == nullptr) return;
  RequestLog log;
  log.client_address = client_address_;
  if (have_head) {
    const char* base = view_.base != nullptr ? view_.base : in_.data();
    const http::Head& head = req_.head();
    log.method = head.method_name.view(base);
    log.target = head.target.view(base);
    log.http_minor = head.http_minor;
    log.host = http::origin_form(base, head).host;
    for (const auto& field : head.fields) {
      const std::string_view name = field.name.view(base);
      if (log.user_agent.empty() && http::iequals(name, "user-agent")) log.user_agent = field.value.view(base);
      if (log.referer.empty() && http::iequals(name, "referer")) log.referer = field.value.view(base);
    }
  }
  log.status = status_sent_;
  log.request_body_bytes = body_bytes_in_;
  log.response_bytes = bytes_out_;
  if (last_backend_) log.backend = last_backend_->id();
  log.attempts = attempts_;
  log.started = request_wall_;
  log.duration = std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - request_start_);
  log.upstream_time = std::chrono::duration_cast<std::chrono::microseconds>(upstream_time_);
  log.error = error_text_;
  if (context_ready_) log.context = &context_;
  try {
    hooks_->on_log(log);
  } catch (...) {
    detail::log_exception(std::current_exception(), "on_log hook");
  }
}

// A response from a hook (on_request), sent instead of forwarding the request.
asio::awaitable<bool> Session::send_local(const LocalResponse& response, bool close) {
  close = close || proxy_->stopping;
  std::string out;
  http::write_local_response(out, response, close, head_request_, client_http10_);
  status_sent_ = http::local_response_status(response);
  const bool ok = status_sent_ < 500;
  if (ok) {
    ++proxy_->counters.responses_ok;
  } else {
    ++proxy_->counters.responses_error;
  }
  proxy_->stats.client_result(ok);
  const auto ec = co_await write_client({asio::buffer(out), asio::const_buffer{}});
  const bool can_continue = !ec && !close;
  co_return can_continue;
}

asio::awaitable<bool> Session::serve_request() {
  ++proxy_->counters.requests;
  const http::Head& head = req_.head();
  const char* base = in_.data();

  if (const auto rejection = http::validate_request(base, head); rejection.status != 0) {
    co_return co_await send_error(rejection.status, rejection.reason, true);
  }
  if (head.method == HTTP_CONNECT) {
    co_return co_await send_error(405, "CONNECT is not supported by a reverse proxy", true);
  }
  // A declared length over the limit is refused before any of the body is read (and before
  // a 100-continue, so the client need not send it).
  const std::uint64_t declared = head.has_content_length ? head.content_length : 0;
  if (body_over_limit(declared)) {
    co_return co_await send_error(413, "request body too large", true);
  }

  const std::string_view method = head.method_name.view(base);
  const bool idempotent = http::is_idempotent(method);
  head_request_ = head.method == HTTP_HEAD;
  request_upgrade_ = head.upgrade;
  body_streamed_ = false;
  client_http10_ = !head.is_http11();
  client_keep_alive_ = head.keep_alive;
  response_started_ = response_done_ = upgraded_ = aborted_ = false;
  close_after_ = !client_keep_alive_ || proxy_->stopping;

  // The body bytes that came with the head; llhttp also completes a body-less message here.
  const auto event = req_.feed(base, head_size_, in_.size() - head_size_, body_in_head_);
  if (event == http::Parser::Event::error) co_return co_await send_error(400, req_.error_reason(), true);
  request_done_ = event == http::Parser::Event::message;
  body_bytes_in_ = body_in_head_;
  body_payload_ = decoded_bytes();
  if (body_over_limit(body_payload_)) co_return co_await send_error(413, "request body too large", true);
  if (opts_.request_body_timeout.count() > 0) body_deadline_ = clock_type::now() + opts_.request_body_timeout;

  bool hook_failed = false;
  if (hooks_ != nullptr) {
    view_ = {base, &head, client_address_};
    view_.attach(context_);
    context_ready_ = true;
    std::optional<LocalResponse> local;
    try {
      local = hooks_->on_request(context_);
    } catch (...) {
      detail::log_exception(std::current_exception(), "on_request hook");
      hook_failed = true;
    }
    if (local && !hook_failed) {
      // The rest of an unread body cannot be skipped safely: the connection ends after it.
      const bool close = !request_done_ || close_after_;
      const bool keep = co_await send_local(*local, close);
      if (keep && request_done_) in_.consume(head_size_ + body_in_head_);
      const bool next = keep && !proxy_->stopping;
      co_return next;
    }
  }

  Exchange last;
  PickContext pick;
  bool key_known = false;
  Pool* pool = &proxy_->pool;
  tried_.clear();
  const auto received = clock_type::now();
  proxy_->retry_budget.on_request(received);
  for (unsigned attempt = 0; attempt <= opts_.retries && !forced_ && !hook_failed; ++attempt) {
    std::shared_ptr<Backend> backend;
    if (hooks_ != nullptr) {
      detail::RequestView::set_attempt(context_, attempt);
      BackendChoice choice;
      try {
        choice = hooks_->select_backend(context_);
      } catch (...) {
        detail::log_exception(std::current_exception(), "select_backend hook");
        hook_failed = true;
        break;
      }
      pool = choice.pool != nullptr ? choice.pool : &proxy_->pool;
      backend = std::move(choice.backend);
      if (backend && pool->find(backend->id()) != backend) {
        // Its requests would be counted, drained and ejected in the wrong pool.
        detail::log(LogLevel::error, "select_backend chose {}, which is not in the pool it gave", backend->id());
        hook_failed = true;
        break;
      }
    }
    if (!backend) {
      if (!key_known && pool->balancer()->uses_key()) {
        pick.key = request_key();
        key_known = true;
      }
      // A retry goes to a backend not tried yet when there is one; else to any usable one.
      try {
        pick.exclude = tried_;
        pick.include_down = false;
        backend = pool->pick(pick);
        if (!backend && !tried_.empty()) {
          pick.exclude = {};
          backend = pool->pick(pick);
        }
        // Fail-open: with every backend down, trying them beats refusing everyone.
        if (!backend && opts_.fail_open) {
          pick.include_down = true;
          backend = pool->pick(pick);
        }
      } catch (...) {
        // A host's own Balancer threw: nothing was sent, so the client gets a clean 500.
        detail::log_exception(std::current_exception(), "balancing policy");
        hook_failed = true;
        break;
      }
    }
    if (!backend) break;
    if (attempt > 0) {
      if (!proxy_->retry_budget.try_retry(clock_type::now())) {
        ++proxy_->counters.retries_denied;
        proxy_->stats.retry(false);
        detail::log(LogLevel::debug, "client {}: retry budget spent, not retrying", client_address_);
        break;
      }
      ++proxy_->counters.retries;
      proxy_->stats.retry(true);
    }
    if (hooks_ != nullptr) detail::RequestView::set_backend(context_, backend.get());
    if (attempt == 0 && hooks_ != nullptr) {
      try {
        hooks_->on_upstream_request(context_, *backend);
      } catch (...) {
        detail::log_exception(std::current_exception(), "on_upstream_request hook");
        hook_failed = true;
        break;
      }
    }
    // Written for each attempt: a previous one may have used head_out_ for a response head.
    // Room for the head and what the rewrite adds (Forwarded, Via...), so that a connection's
    // first request grows it once rather than by doubling from a few bytes.
    head_out_.clear();
    head_out_.reserve(head_size_ + 256);
    // An HTTP/1.0 request may come without Host; HTTP/1.1 needs one: the backend's address.
    http::RequestRewrite rewrite{client_address_, opts_.forwarded_proto, proxy_->via, backend->id()};
    if (hooks_ != nullptr) {
      rewrite.target = context_.upstream_target();
      rewrite.edits = &context_.upstream_headers();
      if (!rewrite.target.empty() && !http::valid_origin_form(rewrite.target)) {
        // Written as given, CR, LF or a space would split or bend the request line.
        detail::log(LogLevel::error, "client {}: a hook set an invalid upstream target", client_address_);
        hook_failed = true;
        break;
      }
    }
    http::write_request_head(head_out_, base, head, rewrite, scratch_);
    tried_.push_back(backend.get());
    if (hooks_ != nullptr) last_backend_ = backend;  // for on_log; no refcount traffic without hooks
    ++attempts_;
    pool->begin_request(*backend);
    const auto started = clock_type::now();
    response_head_at_ = {};
    last = co_await exchange(backend);
    if (forced_) {
      // Our stop closed the sockets; the backend did nothing wrong and the client is gone.
      last.failure = Failure::client;
      last.detail = "closed by the proxy's stop";
    }
    // A client that went away says nothing about the backend.
    const bool ok = (last.failure == Failure::none || last.failure == Failure::client) && resp_.head().status < 500;
    const auto to_head =
        response_head_at_ == clock_type::time_point{} ? clock_type::duration::zero() : response_head_at_ - started;
    pool->end_request(*backend, ok, to_head);
    upstream_time_ = to_head;
    if (last.failure != Failure::client) proxy_->stats.server_result(ok);
    if (ok && response_done_) backend->latency().record(clock_type::now() - started);
    if (last.failure == Failure::none) break;
    if (last.failure != Failure::client) {
      detail::log(LogLevel::warn, "backend {}: {}", backend->id(), last.detail);
    }
    // A request may go to another backend only while the client has seen nothing and the
    // whole request is still in our buffer; beyond connect failures, only when idempotent
    // (RFC 9110 §9.2.2), since the first backend may have acted on it.
    const bool retryable = !response_started_ && !body_streamed_ && request_done_ &&
                           (last.failure == Failure::connect || (idempotent && last.failure == Failure::no_response));
    if (!retryable) break;
  }

  bool keep = false;
  int error_status = 0;
  std::string_view error_detail = last.detail;
  if (hook_failed) {
    last.failure = Failure::none;
    response_done_ = false;
  }
  switch (last.failure) {
    case Failure::none:
      if (response_done_) {
        keep = !close_after_ && request_done_ && !upgraded_;
      } else if (hook_failed) {
        error_status = 500;
        error_detail = "a hook of the host failed";
      } else {
        error_status = 503;  // no usable backend at all
        error_detail = "no backend available";
      }
      break;
    case Failure::connect:
    case Failure::no_response:
    case Failure::bad_response: error_status = 502; break;
    case Failure::timeout: error_status = 504; break;
    case Failure::broken: reset_client_ = true; break;
    case Failure::client:
      if (last.client_status != 0 && !response_started_ && !forced_) {
        error_status = last.client_status;
      }
      break;
  }
  if (last.failure == Failure::none && response_done_) {
    ++proxy_->counters.responses_ok;
    proxy_->stats.client_result(true);
  } else if (error_status == 0) {
    ++proxy_->counters.responses_error;  // broken off: no answer of ours either
    proxy_->stats.client_result(false);
    error_text_ = last.detail;
  }
  if (error_status != 0) {
    // Our answer ends the connection when the rest of the request body was never read.
    const bool close = !request_done_ || close_after_;
    std::string extra;
    if (error_status == 503) extra = fmt::format("Retry-After: {}\r\n", opts_.retry_after);
    keep = co_await send_error(error_status, error_detail, close, extra);
  }
  if (keep && request_done_) {
    in_.consume(head_size_ + body_in_head_);  // what is left is the next pipelined request
  }
  const bool leftover = in_.size() > head_size_ + body_in_head_;
  client_closes_ = !client_keep_alive_ && request_done_ && !leftover && !upgraded_;
  const bool next = keep && !proxy_->stopping;
  co_return next;
}

// The hash policy's key for this request: nothing when the request lacks it (a missing
// header or cookie), and the policy then balances it round robin.
std::optional<std::uint64_t> Session::request_key() const {
  const HashKey& key = opts_.hash_key;
  if (key.source == HashKey::Source::client_ip) return hash_key(client_address_);
  const char* base = in_.data();
  std::optional<std::uint64_t> hash;
  std::string joined;
  const std::string_view wanted = key.source == HashKey::Source::cookie ? std::string_view("cookie") : key.name;
  for (const auto& field : req_.head().fields) {
    if (!http::iequals(field.name.view(base), wanted)) continue;
    const std::string_view value = field.value.view(base);
    if (key.source == HashKey::Source::cookie) {
      if (const auto cookie = http::find_cookie(value, key.name)) return hash_key(*cookie);
      continue;
    }
    if (!joined.empty()) joined += ',';  // several lines of one header are one list (RFC 9110 §5.3)
    joined += value;
    hash = 0;
  }
  if (hash) hash = hash_key(joined);
  return hash;
}

asio::awaitable<std::error_code> Session::connect(const std::shared_ptr<Backend>& backend) {
  std::error_code ec;
  const auto address = asio::ip::make_address(backend->host(), ec);
  if (ec) co_return ec;
  const tcp::endpoint endpoint(address, backend->port());
  tcp::socket socket(client_.get_executor());
  socket.open(endpoint.protocol(), ec);
  if (ec) co_return ec;
  up_wd_.watch(&socket);
  up_wd_.arm(Watchdog::write, opts_.connect_timeout);
  connecting_ = &socket;
  auto [cec] = co_await socket.async_connect(endpoint, use_nothrow);
  connecting_ = nullptr;
  up_wd_.disarm(Watchdog::write);
  up_wd_.watch(nullptr);
  if (cec) {
    const std::error_code failure = up_wd_.expired(Watchdog::write) ? make_error_code(errc::connect_timeout) : cec;
    co_return failure;
  }
  socket.set_option(tcp::no_delay(true), ec);
  ++proxy_->counters.upstream_connects;
  up_ = std::make_unique<UpstreamConnection>(std::move(socket), backend);
  co_return std::error_code{};
}

asio::awaitable<Session::Exchange> Session::exchange(const std::shared_ptr<Backend>& backend) {
  Exchange result;
  aborted_ = false;
  up_in_.clear();
  up_ = proxy_->take_idle(backend);
  const bool reused = up_ != nullptr;
  if (up_) {
    ++proxy_->counters.upstream_reuses;
  } else if (auto ec = co_await connect(backend); ec) {
    result.failure = Failure::connect;
    result.detail = ec == errc::connect_timeout ? "connect timed out" : "connect failed";
    detail::log(LogLevel::debug, "backend {}: connect: {}", backend->id(), ec.message());
    co_return result;
  }
  up_wd_.watch(&up_->socket);
  up_in_.compact();

  // Head and the body bytes that came with it go out in one write.
  up_wd_.arm(Watchdog::write, opts_.send_timeout);
  const std::array<asio::const_buffer, 2> first{asio::buffer(head_out_),
                                                asio::buffer(in_.data() + head_size_, body_in_head_)};
  auto [wec, written] = co_await asio::async_write(up_->socket, first, use_nothrow);
  up_wd_.disarm(Watchdog::write);
  if (wec) {
    release_upstream(false);
    // A cached connection that fails before any byte was written was dead before the backend
    // saw anything (it closed it meanwhile), which is as safe to retry as a failed connect.
    result.failure = (reused && written == 0) ? Failure::connect : Failure::no_response;
    result.detail = "connection lost while sending the request";
    co_return result;
  }

  if (request_done_) {
    co_await relay_response(result);
  } else {
    // From here on the body streams through and the request can no longer be retried.
    using namespace asio::experimental::awaitable_operators;
    if (hooks_ != nullptr) {
      // The body will reuse the buffer the head is in: hooks and the log keep a copy of it
      // (spans are offsets from the start of the buffer, so they stay valid in the copy).
      head_copy_.assign(in_.data(), head_size_);
      view_.base = head_copy_.data();
    }
    in_.consume(head_size_ + body_in_head_);
    head_size_ = body_in_head_ = 0;
    body_streamed_ = true;
    co_await (pump_request_body(result) && relay_response(result));
  }

  if (upgraded_ && result.failure == Failure::none) {
    co_await tunnel();
    release_upstream(false);
    co_return result;
  }
  const bool reusable = result.failure == Failure::none && response_done_ && request_done_ && !resp_.needs_eof() &&
                        resp_.head().keep_alive && up_in_.size() == 0 && !aborted_;
  release_upstream(reusable);
  co_return result;
}

// Streams the rest of the request body to the backend, as framed by the client: llhttp has
// checked the framing, and the backend sees exactly the bytes that we counted.
asio::awaitable<void> Session::pump_request_body(Exchange& result) {
  while (!req_.message_complete() && !aborted_) {
    if (in_.size() == 0) {
      in_.compact();
      // Each read gets the per-read time, and no more than what is left of the total.
      auto allowed = opts_.client_header_timeout;
      const bool total = opts_.request_body_timeout.count() > 0;
      if (total) {
        const auto left = std::chrono::duration_cast<milliseconds>(body_deadline_ - clock_type::now());
        allowed = std::clamp(left, milliseconds(1), allowed);
      }
      client_wd_.arm(Watchdog::read, allowed);
      auto [ec, n] = co_await client_.async_read_some(asio::buffer(in_.write_ptr(), in_.writable()), use_nothrow);
      client_wd_.disarm(Watchdog::read);
      if (aborted_) co_return;
      if (ec) {
        result.failure = Failure::client;
        if (client_wd_.expired(Watchdog::read)) {
          const bool over_total = total && clock_type::now() >= body_deadline_;
          result.detail = over_total ? "the request body took longer than request_body_timeout"
                                     : "timed out reading the request body";
          result.client_status = 408;
        } else {
          result.detail = "client went away during the request body";
        }
        abort_exchange();
        co_return;
      }
      in_.commit(n);
    }
    std::size_t used = 0;
    const auto event = req_.feed(in_.data(), in_.begin(), in_.size(), used);
    if (event == http::Parser::Event::error) {
      result.failure = Failure::client;
      result.detail = "invalid request body";
      result.client_status = 400;
      abort_exchange();
      co_return;
    }
    body_payload_ += decoded_bytes();
    if (body_over_limit(body_payload_)) {
      // The backend has part of the body: its connection is cut so it never takes it as whole.
      result.failure = Failure::client;
      result.detail = "request body too large";
      result.client_status = 413;
      abort_exchange();
      co_return;
    }
    body_bytes_in_ += used;
    up_wd_.arm(Watchdog::write, opts_.send_timeout);
    auto [wec, written] = co_await asio::async_write(up_->socket, asio::buffer(in_.read_ptr(), used), use_nothrow);
    up_wd_.disarm(Watchdog::write);
    if (aborted_) co_return;
    if (wec) {
      // The backend stopped reading: it may still answer (an early 413, say); the relay decides,
      // within the read timeout.
      up_wd_.arm(Watchdog::read, opts_.read_timeout);
      co_return;
    }
    in_.consume(used);
  }
  request_done_ = req_.message_complete();
  // Only now does the wait for the response begin (an upload may take longer than read_timeout).
  if (request_done_) up_wd_.arm(Watchdog::read, opts_.read_timeout);
}

asio::awaitable<void> Session::relay_response(Exchange& result) {
  resp_.reset(head_request_);
  std::size_t parsed = 0;  // bytes of up_in_ fed to the parser while reading a head
  bool any_byte = false;
  bool dechunk = false;
  unsigned full_reads = 0;  // body reads in a row that filled the buffer

  auto fail = [&](Failure f, std::string_view why) {
    if (result.failure == Failure::none) {
      result.failure = (response_started_ && f != Failure::client) ? Failure::broken : f;
      result.detail = why;
    }
    abort_exchange();
  };

  for (;;) {
    // Read from the backend unless unparsed bytes are waiting.
    const bool need_read = resp_.head_complete() ? up_in_.size() == 0 : parsed >= up_in_.size();
    if (need_read) {
      {
        if (up_in_.writable() == 0) up_in_.grow(std::max(up_in_.capacity() * 2, opts_.max_head_size + 1));
        // A large body: after reads that fill the buffer, read in bigger pieces (fewer trips
        // through the event loop). The bigger buffer is freed with the exchange.
        if (full_reads >= 2) up_in_.grow_from(proxy_->large_buffers);
        const std::size_t asked = up_in_.writable();
        if (request_done_) {
          up_wd_.arm(Watchdog::read, opts_.read_timeout);
        } else {
          up_wd_.disarm(Watchdog::read);  // the body pump arms it when the request is complete
        }
        auto [ec, n] =
            co_await up_->socket.async_read_some(asio::buffer(up_in_.write_ptr(), up_in_.writable()), use_nothrow);
        up_wd_.disarm(Watchdog::read);
        if (aborted_ && result.failure != Failure::none) co_return;
        if (ec == asio::error::eof && resp_.head_complete()) {
          if (resp_.finish() == http::Parser::Event::message) {
            response_done_ = true;
            co_return;
          }
          fail(Failure::broken, "backend closed the connection before the response ended");
          co_return;
        }
        if (ec) {
          if (up_wd_.expired(Watchdog::read)) {
            fail(Failure::timeout, "timed out waiting for the response");
          } else if (!any_byte) {
            fail(Failure::no_response, "backend closed the connection without a response");
          } else if (resp_.head_complete()) {
            fail(Failure::broken, "backend connection lost during the response body");
          } else {
            fail(Failure::bad_response, "backend closed the connection inside the response head");
          }
          co_return;
        }
        any_byte = true;
        up_in_.commit(n);
        if (resp_.head_complete()) full_reads = n == asked ? full_reads + 1 : 0;
      }
    }

    if (!resp_.head_complete()) {
      std::size_t used = 0;
      const auto event = resp_.feed(up_in_.data(), parsed, up_in_.size() - parsed, used);
      parsed += used;
      if (event == http::Parser::Event::error) {
        fail(Failure::bad_response, "invalid response head");
        co_return;
      }
      if (event != http::Parser::Event::head) continue;

      const http::Head& head = resp_.head();
      response_head_at_ = clock_type::now();
      if (head.status >= 100 && head.status < 200 && head.status != 101) {
        // Interim responses (100 Continue, 103 Early Hints) go to HTTP/1.1 clients only
        // (RFC 9110 §15.2); the final response follows on the same connection.
        if (!client_http10_) {
          head_out_.clear();
          http::write_response_head(head_out_, up_in_.data(), head, {proxy_->via, false, false, false, false},
                                    scratch_);
          if (co_await write_client({asio::buffer(head_out_), asio::const_buffer{}})) {
            fail(Failure::client, "client went away");
            co_return;
          }
        }
        up_in_.consume(parsed);
        up_in_.compact();
        parsed = 0;
        resp_.reset(head_request_);
        continue;
      }
      if (head.status == 101) {
        if (!request_upgrade_) {
          fail(Failure::bad_response, "101 Switching Protocols to a request that asked for no upgrade");
          co_return;
        }
        upgraded_ = true;  // the tunnel takes over after this head
      }
      dechunk = client_http10_ && head.chunked;
      if (resp_.needs_eof() || dechunk || proxy_->stopping) close_after_ = true;

      http::ResponseRewrite rewrite{proxy_->via, close_after_, client_http10_, dechunk, upgraded_};
      if (hooks_ != nullptr && context_ready_) {
        detail::RequestView::set_response_status(context_, head.status);
        try {
          hooks_->on_response(context_);
          rewrite.edits = &context_.response_headers();
        } catch (...) {
          detail::log_exception(std::current_exception(), "on_response hook");
        }
      }
      status_sent_ = head.status;
      head_out_.clear();
      http::write_response_head(head_out_, up_in_.data(), head, rewrite, scratch_);
      up_in_.consume(parsed);
      parsed = 0;
      // The head goes out together with the first body bytes below.
    }

    // Body bytes (raw, or without chunk framing for an HTTP/1.0 client).
    std::size_t used = 0;
    auto event = http::Parser::Event::message;
    if (!upgraded_) {
      event = resp_.feed(up_in_.data(), up_in_.begin(), up_in_.size(), used);
      if (event == http::Parser::Event::error) {
        fail(Failure::broken, "invalid response body framing");
        co_return;
      }
    }
    // The head (first time) and the body bytes go out in one write. A fixed pair of buffers
    // costs no allocation; only the dechunking of a response for an HTTP/1.0 client, with any
    // number of pieces, needs the vector.
    const asio::const_buffer head_part = response_started_ ? asio::const_buffer{} : asio::buffer(head_out_);
    std::array<asio::const_buffer, 2> pair{head_part, asio::const_buffer{}};
    gather_.clear();
    if (dechunk) {
      if (!response_started_) gather_.push_back(head_part);
      for (const http::Span& s : resp_.body_spans())
        gather_.push_back(asio::buffer(up_in_.data() + s.offset, s.length));
    } else if (used > 0) {
      pair[1] = asio::buffer(up_in_.read_ptr(), used);
    }
    const bool any = dechunk ? !gather_.empty() : (!response_started_ || used > 0);
    if (any) {
      client_wd_.arm(Watchdog::write, opts_.send_timeout);
      std::error_code wec;
      std::size_t n = 0;
      if (dechunk) {
        std::tie(wec, n) = co_await asio::async_write(client_, gather_, use_nothrow);
      } else {
        std::tie(wec, n) = co_await asio::async_write(client_, pair, use_nothrow);
      }
      client_wd_.disarm(Watchdog::write);
      bytes_out_ += n;
      response_started_ = true;
      if (wec) {
        fail(Failure::client, "client went away during the response");
        co_return;
      }
    }
    up_in_.consume(used);
    if (event == http::Parser::Event::message) {
      response_done_ = true;
      if (!request_done_ && !upgraded_) {
        // The backend answered before reading the whole body (RFC 9112 §9.3): stop sending it
        // and close the client connection afterwards; its unread body cannot be skipped safely.
        close_after_ = true;
        abort_exchange();
      }
      co_return;
    }
  }
}

// After 101 Switching Protocols both connections carry another protocol: copy bytes both
// ways until each side has closed.
asio::awaitable<void> Session::tunnel() {
  using namespace asio::experimental::awaitable_operators;
  // Bytes that arrived after the heads belong to the new protocol.
  if (up_in_.size() > 0) {
    if (co_await write_client({asio::buffer(up_in_.read_ptr(), up_in_.size()), asio::const_buffer{}})) co_return;
    up_in_.consume(up_in_.size());
  }
  const std::size_t pending = in_.size() - std::min(in_.size(), head_size_ + body_in_head_);
  if (pending > 0) {
    up_wd_.arm(Watchdog::write, opts_.send_timeout);
    auto [ec, n] = co_await asio::async_write(
        up_->socket, asio::buffer(in_.data() + head_size_ + body_in_head_, pending), use_nothrow);
    up_wd_.disarm(Watchdog::write);
    if (ec) co_return;
  }
  in_.consume(in_.size());
  co_await (copy(client_, client_wd_, up_->socket, up_wd_) && copy(up_->socket, up_wd_, client_, client_wd_));
}

asio::awaitable<void> Session::copy(tcp::socket& from, Watchdog& from_wd, tcp::socket& to, Watchdog& to_wd) {
  std::array<char, 8192> chunk;
  const auto idle = std::max(opts_.client_idle_timeout, opts_.read_timeout);
  for (;;) {
    from_wd.arm(Watchdog::read, idle);
    auto [ec, n] = co_await from.async_read_some(asio::buffer(chunk), use_nothrow);
    from_wd.disarm(Watchdog::read);
    if (ec == asio::error::eof) {
      std::error_code ignored;
      to.shutdown(tcp::socket::shutdown_send, ignored);
      co_return;
    }
    if (ec) break;
    to_wd.arm(Watchdog::write, opts_.send_timeout);
    auto [wec, written] = co_await asio::async_write(to, asio::buffer(chunk.data(), n), use_nothrow);
    to_wd.disarm(Watchdog::write);
    if (wec) break;
  }
  std::error_code ignored;
  from.cancel(ignored);
  to.cancel(ignored);
}

void Session::abort_exchange() {
  aborted_ = true;
  std::error_code ignored;
  client_.cancel(ignored);
  if (up_) up_->socket.cancel(ignored);
}

asio::awaitable<std::error_code> Session::write_client(std::array<asio::const_buffer, 2> buffers) {
  client_wd_.arm(Watchdog::write, opts_.send_timeout);
  auto [ec, n] = co_await asio::async_write(client_, buffers, use_nothrow);
  client_wd_.disarm(Watchdog::write);
  bytes_out_ += n;
  co_return ec;
}

// Sends an error generated by weldr. True when the connection may serve another request.
asio::awaitable<bool> Session::send_error(int status, std::string_view body, bool close,
                                          std::string_view extra_headers) {
  ++proxy_->counters.responses_error;
  proxy_->stats.client_result(false);
  close = close || proxy_->stopping;
  status_sent_ = status;
  error_text_ = body;
  std::string out;
  std::string text(body);
  text.push_back('\n');
  if (hooks_ != nullptr) {
    // The host may put its own error page in place of ours.
    LocalResponse page{status, std::move(text), {{"Content-Type", "text/plain; charset=utf-8"}}};
    if (const auto colon = extra_headers.find(": "); colon != std::string_view::npos) {
      page.headers.push_back({std::string(extra_headers.substr(0, colon)),
                              std::string(extra_headers.substr(colon + 2, extra_headers.find('\r') - colon - 2))});
    }
    LocalResponse custom = page;  // a hook that throws midway changes nothing
    try {
      hooks_->on_error(context_ready_ ? &context_ : nullptr, custom);
      page = std::move(custom);
    } catch (...) {
      detail::log_exception(std::current_exception(), "on_error hook");
    }
    page.status = status;
    http::write_local_response(out, page, close, head_request_, client_http10_);
  } else {
    std::string extra(extra_headers);
    if (!close && client_http10_) extra += "Connection: keep-alive\r\n";  // else 1.0 means close
    http::write_error_response(out, status, {}, text, close, extra);
    // A HEAD response announces the length of the body it does not carry.
    if (head_request_) out.resize(out.size() - text.size());
  }
  const auto ec = co_await write_client({asio::buffer(out), asio::const_buffer{}});
  const bool can_continue = !ec && !close;
  co_return can_continue;
}

asio::awaitable<void> Session::lingering_close() {
  std::error_code ec;
  client_.shutdown(tcp::socket::shutdown_send, ec);
  if (ec) co_return;
  std::array<char, 4096> sink;
  std::size_t drained = 0;
  client_wd_.arm(Watchdog::read, std::min(kLingerTime, opts_.client_header_timeout));
  while (drained < kLingerBytes) {
    auto [rec, n] = co_await client_.async_read_some(asio::buffer(sink), use_nothrow);
    if (rec) break;
    drained += n;
  }
  client_wd_.disarm(Watchdog::read);
}

void Session::release_upstream(bool reusable) {
  up_wd_.watch(nullptr);
  if (!up_) return;
  up_in_.clear();
  up_in_.release();
  if (reusable && !proxy_->stopping) {
    proxy_->put_idle(std::move(up_));
  } else {
    up_.reset();
  }
}

// ---------------------------------------------------------------------------------------------
// detail::ProxyImpl

asio::awaitable<void> detail::ProxyImpl::accept_loop() {
  auto self = shared_from_this();
  auto last_log = clock_type::time_point{};
  auto last_full_log = clock_type::time_point{};
  ConnectionLimit* limit = options.connection_limit.get();
  tcp::endpoint peer;
  while (!stopping) {
    if (limit != nullptr && limit->full()) {
      // At the cap, new connections wait in the listen backlog. A connection of this Proxy
      // that closes wakes us at once; one of another Proxy sharing the cap, at the next poll.
      if (clock_type::now() - last_full_log > std::chrono::seconds(10)) {
        detail::log(LogLevel::warn, "{} client connections open, the --max-connections cap: new ones wait",
                    limit->open());
        last_full_log = clock_type::now();
      }
      accept_wakeup.expires_after(milliseconds(20));
      co_await accept_wakeup.async_wait(use_nothrow);
      continue;
    }
    auto [ec, socket] = co_await acceptor.async_accept(peer, use_nothrow);
    if (stopping) break;
    if (ec) {
      if (is_aborted(ec)) break;
      // Out of descriptors or memory: back off instead of spinning, and say so once a second.
      if (clock_type::now() - last_log > std::chrono::seconds(1)) {
        detail::log(LogLevel::error, "accept failed: {}", ec.message());
        last_log = clock_type::now();
      }
      asio::steady_timer backoff(io, milliseconds(50));
      co_await backoff.async_wait(use_nothrow);
      continue;
    }
    std::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    ++counters.connections_accepted;
    ++counters.connections_open;
    if (limit != nullptr) limit->acquire();
    auto session = std::make_shared<Session>(self, std::move(socket), peer);
    asio::co_spawn(
        io, [session]() { return session->run(); }, [](std::exception_ptr e) { detail::log_exception(e, "session"); });
  }
}

asio::awaitable<void> detail::ProxyImpl::sweep_loop() {
  auto self = shared_from_this();
  const auto period = std::max(milliseconds(100), options.upstream_idle_timeout / 4);
  while (!stopping) {
    sweep_timer.expires_after(period);
    co_await sweep_timer.async_wait(use_nothrow);
    if (stopping) break;
    const auto cutoff = clock_type::now() - options.upstream_idle_timeout;
    // Also drops connections to backends that are down or draining (removed). An emptied list
    // stays, with its capacity, so that a backend whose connections are all busy at the moment
    // of a sweep costs no allocation when they come back; the Pool listener (see Proxy's
    // constructor) erases the list of a backend that is removed, ejected or down.
    for (auto& [backend, list] : idle)
      std::erase_if(list,
                    [&](const auto& c) { return c->idle_since < cutoff || !c->backend->usable() || !c->still_open(); });
  }
}

std::unique_ptr<UpstreamConnection> detail::ProxyImpl::take_idle(const std::shared_ptr<Backend>& backend) {
  auto it = idle.find(backend.get());
  if (it == idle.end()) return nullptr;
  auto& list = it->second;
  while (!list.empty()) {
    auto connection = std::move(list.back());  // most recently used: least likely to be closed
    list.pop_back();
    if (connection->backend == backend && connection->still_open()) return connection;
  }
  return nullptr;
}

void detail::ProxyImpl::put_idle(std::unique_ptr<UpstreamConnection> connection) {
  if (!connection->backend->usable()) return;
  auto& list = idle[connection->backend.get()];
  if (list.size() >= options.max_idle_per_backend) return;
  connection->idle_since = clock_type::now();
  list.push_back(std::move(connection));
}

void detail::ProxyImpl::begin_stop(std::optional<milliseconds> grace, std::function<void()> done) {
  if (done) stopped_callbacks.push_back(std::move(done));
  if (!stopping) {
    stopping = true;
    std::error_code ignored;
    acceptor.close(ignored);
    accept_wakeup.cancel();
    sweep_timer.cancel();
    idle.clear();
    for (Session* s : sessions)
      s->on_stop();
  }
  if (grace && !sessions.empty()) {
    grace_timer = std::make_unique<asio::steady_timer>(io, *grace);
    grace_timer->async_wait([self = shared_from_this()](std::error_code ec) {
      if (!ec) {
        for (Session* s : self->sessions)
          s->force_close();
      }
    });
  }
  maybe_finish_stop();
}

void detail::ProxyImpl::close_all() {
  stopping = true;
  std::error_code ignored;
  acceptor.close(ignored);
  accept_wakeup.cancel();
  sweep_timer.cancel();
  if (grace_timer) grace_timer->cancel();
  idle.clear();
  for (Session* s : sessions)
    s->force_close();
}

void detail::ProxyImpl::session_ended(std::list<Session*>::iterator it) {
  sessions.erase(it);
  --counters.connections_open;
  if (options.connection_limit) {
    options.connection_limit->release();
    accept_wakeup.cancel();
  }
  maybe_finish_stop();
}

void detail::ProxyImpl::maybe_finish_stop() {
  if (!stopping || !sessions.empty() || stopped_callbacks.empty()) return;
  if (grace_timer) grace_timer->cancel();
  for (auto& callback : std::exchange(stopped_callbacks, {}))
    asio::post(io, std::move(callback));
}

// ---------------------------------------------------------------------------------------------
// Proxy

std::optional<HashKey> parse_hash_key(std::string_view text) {
  if (text == "client_ip") return HashKey{HashKey::Source::client_ip, {}};
  for (const auto& [prefix, source] : {std::pair{std::string_view("header:"), HashKey::Source::header},
                                       std::pair{std::string_view("cookie:"), HashKey::Source::cookie}}) {
    if (!text.starts_with(prefix)) continue;
    const std::string_view name = text.substr(prefix.size());
    if (!http::is_token(name)) return std::nullopt;  // header and cookie names are tokens
    return HashKey{source, std::string(name)};
  }
  return std::nullopt;
}

Proxy::Proxy(asio::io_context& io, Pool& pool, ProxyOptions options) : Proxy(io, pool, nullptr, std::move(options)) {}

Proxy::Proxy(asio::io_context& io, Pool& pool, Stats& stats, ProxyOptions options)
    : Proxy(io, pool, &stats, std::move(options)) {}

Proxy::Proxy(asio::io_context& io, Pool& pool, Stats* stats, ProxyOptions options)
    : impl_(std::make_shared<detail::ProxyImpl>(io, pool, stats, std::move(options))) {
  // A backend that is removed or goes down will not be picked again: close this proxy's idle
  // connections to it now rather than at the next sweep. Pool events come from any thread.
  std::weak_ptr<detail::ProxyImpl> weak = impl_;
  impl_->pool_listener = pool.subscribe([weak](const PoolEvent& event) {
    const bool unusable = event.kind == PoolEvent::Kind::removed || event.kind == PoolEvent::Kind::ejected ||
                          (event.kind == PoolEvent::Kind::state_changed && !event.backend->usable());
    if (!unusable) return;
    if (auto impl = weak.lock()) {
      asio::post(impl->io, [impl, backend = event.backend] {
        auto it = impl->idle.find(backend.get());
        if (it == impl->idle.end()) return;
        std::erase_if(it->second, [&](const auto& c) { return c->backend == backend; });
        if (it->second.empty()) impl->idle.erase(it);
      });
    }
  });
}

Proxy::~Proxy() {
  impl_->pool.unsubscribe(impl_->pool_listener);
  impl_->close_all();
}

void Proxy::listen(const tcp::endpoint& endpoint) {
  std::error_code ec;
  listen(endpoint, ec);
  if (ec)
    throw std::system_error(ec, "listen on " + endpoint.address().to_string() + ":" + std::to_string(endpoint.port()));
}

void Proxy::listen(const tcp::endpoint& endpoint, std::error_code& ec) {
  net::open_listener(impl_->acceptor, endpoint, impl_->options.backlog, impl_->options.reuse_port, ec);
  if (ec) return;
  auto impl = impl_;
  asio::co_spawn(
      impl->io, [impl]() { return impl->accept_loop(); },
      [](std::exception_ptr e) { detail::log_exception(e, "accept loop"); });
  asio::co_spawn(
      impl->io, [impl]() { return impl->sweep_loop(); },
      [](std::exception_ptr e) { detail::log_exception(e, "idle sweep"); });
}

tcp::endpoint Proxy::local_endpoint() const {
  std::error_code ec;
  return impl_->acceptor.local_endpoint(ec);
}

void Proxy::stop(std::function<void()> done) {
  impl_->begin_stop(std::nullopt, std::move(done));
}

void Proxy::stop(milliseconds grace, std::function<void()> done) {
  impl_->begin_stop(grace, std::move(done));
}

ProxyCounters Proxy::counters() const {
  return impl_->counters;
}

const ProxyOptions& Proxy::options() const {
  return impl_->options;
}

}  // namespace weldr
