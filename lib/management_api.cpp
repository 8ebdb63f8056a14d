#include <weldr/management_api.hpp>

#include <weldr/cluster.hpp>
#include <weldr/health_checker.hpp>
#include <weldr/pool.hpp>
#include <weldr/pool_store.hpp>
#include <weldr/state_file.hpp>
#include <weldr/stats.hpp>

#include "api/json.hpp"
#include "http/message.hpp"
#include "http/parser.hpp"
#include "http/rewrite.hpp"
#include "log_internal.hpp"
#include "net/listen.hpp"
#include "net/use_nothrow.hpp"
#include "net/watchdog.hpp"

#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <list>

namespace weldr {

using asio::ip::tcp;
using net::Watchdog;

namespace {

using net::use_nothrow;

/// What a route answers.
struct Reply {
  int status{200};
  std::string body;
  std::string headers;  // extra header lines, each ending in CRLF
  std::string_view content_type{"application/json"};
};

Reply json_reply(int status, std::string body, std::string headers = {}) {
  return {status, std::move(body), std::move(headers), "application/json"};
}

Reply json_error(int status, std::string_view message, std::string headers = {}) {
  return json_reply(status, api::error_json(message), std::move(headers));
}

// 405, with the methods the resource takes.
Reply not_allowed(std::string_view allow) {
  return json_error(405, "method not allowed", fmt::format("Allow: {}\r\n", allow));
}

// Compares without an early exit, so the time taken does not tell how much of a guess matched.
// A missing Content-Type is taken as JSON; another media type is refused (415).
bool json_content_type(std::string_view content_type, bool has_content_type) {
  std::string_view media = content_type.substr(0, content_type.find(';'));
  while (!media.empty() && media.back() == ' ')
    media.remove_suffix(1);
  return !has_content_type || http::iequals(media, "application/json");
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const std::size_t n = std::max(a.size(), b.size());
  for (std::size_t i = 0; i < n; ++i) {
    const auto x = static_cast<unsigned char>(i < a.size() ? a[i] : 0);
    const auto y = static_cast<unsigned char>(i < b.size() ? b[i] : 0);
    diff = static_cast<unsigned char>(diff | (x ^ y));
  }
  return diff == 0;
}

}  // namespace

class ApiSession;

struct detail::ManagementApiImpl : std::enable_shared_from_this<detail::ManagementApiImpl> {
  ManagementApiImpl(asio::io_context& io_context, Pool& p, Stats& s, ApiOptions o)
      : io(io_context),
        pool(p),
        stats(s),
        options(std::move(o)),
        local_store(options.store == nullptr ? std::make_unique<LocalStore>(pool, options.health_checker) : nullptr),
        store(options.store != nullptr ? *options.store : *local_store),
        acceptor(io_context),
        wheel(std::make_shared<net::TimerWheel>(
            io_context.get_executor(),
            net::TimerWheel::resolution_for(std::min(options.timeout, options.idle_timeout)))) {}
  ~ManagementApiImpl() { wheel->close(); }
  ManagementApiImpl(const ManagementApiImpl&) = delete;
  ManagementApiImpl& operator=(const ManagementApiImpl&) = delete;

  asio::awaitable<void> accept_loop();
  asio::awaitable<Reply> route(std::string_view method, std::string_view target, std::string_view authorization,
                               std::string_view content_type, bool has_content_type, const std::string& body);
  asio::awaitable<Reply> register_server(std::string_view content_type, bool has_content_type, const std::string& body);
  asio::awaitable<Reply> remove_server(const std::string& id);
  Reply after_change(Reply reply) const;
  asio::awaitable<Reply> health_config(std::string_view method, std::string_view content_type, bool has_content_type,
                                       const std::string& body);
  asio::awaitable<Reply> cluster_route(std::string_view path, std::string_view method);
  std::string metrics() const;

  asio::io_context& io;
  Pool& pool;
  Stats& stats;
  ApiOptions options;
  std::unique_ptr<LocalStore> local_store;  // when the host gave no store
  PoolStore& store;
  tcp::acceptor acceptor;
  std::shared_ptr<net::TimerWheel> wheel;  // the connections' timeouts
  std::list<ApiSession*> sessions;
  bool stopped{false};
};

// One client connection of the API: requests are read, routed and answered in order.
class ApiSession : public std::enable_shared_from_this<ApiSession> {
 public:
  ApiSession(std::shared_ptr<detail::ManagementApiImpl> api, tcp::socket socket)
      : api_(std::move(api)),
        socket_(std::move(socket)),
        watchdog_(*api_->wheel),
        parser_(http::Parser::Kind::request, api_->options.max_head, 100) {
    watchdog_.watch(&socket_);
    self_in_list_ = api_->sessions.insert(api_->sessions.end(), this);
  }

  asio::awaitable<void> run() {
    auto self = shared_from_this();
    try {
      while (co_await serve_one()) {
      }
    } catch (...) {
      detail::log_exception(std::current_exception(), "management API");
    }
    std::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    socket_.close(ignored);
    api_->sessions.erase(self_in_list_);
  }

  void close() {
    std::error_code ignored;
    socket_.close(ignored);
  }

 private:
  asio::awaitable<bool> serve_one() {
    parser_.reset();
    body_.clear();
    std::size_t parsed = 0;
    bool too_large = false;
    watchdog_.arm(Watchdog::read, in_.empty() ? api_->options.idle_timeout : api_->options.timeout);
    for (;;) {
      // After the head, feed even zero bytes: that is how a body-less message completes.
      if (parsed < in_.size() || parser_.head_complete()) {
        std::size_t used = 0;
        const auto event = parser_.feed(in_.data(), parsed, in_.size() - parsed, used);
        for (const http::Span& s : parser_.body_spans()) {
          if (body_.size() + s.length > api_->options.max_body) {
            too_large = true;
          } else {
            body_.append(in_.data() + s.offset, s.length);
          }
        }
        parsed += used;
        if (event == http::Parser::Event::message) break;
        if (event == http::Parser::Event::error) {
          const bool head_limit = parser_.error() == errc::head_too_large || parser_.error() == errc::too_many_headers;
          const int status = head_limit ? 431 : 400;
          co_await write(json_error(status, parser_.error_reason()), true);
          co_return false;
        }
        if (event == http::Parser::Event::head) {
          watchdog_.arm(Watchdog::read, api_->options.timeout);
          if (parser_.head().content_length > api_->options.max_body) too_large = true;
          if (too_large) break;
          continue;
        }
        if (too_large) break;
        // Everything was fed: body bytes are copied out, so drop them and keep the head alone.
        const std::size_t head = parser_.head().size;
        if (parser_.head_complete() && in_.size() > head) {
          in_.erase(head);
          parsed = head;
        }
      }
      char chunk[4096];
      auto [ec, n] = co_await socket_.async_read_some(asio::buffer(chunk), use_nothrow);
      if (ec) co_return false;
      in_.append(chunk, n);
    }
    watchdog_.disarm(Watchdog::read);

    if (too_large) {
      const std::string message = fmt::format("request body larger than {} bytes", api_->options.max_body);
      co_await write(json_error(413, message), true);
      co_return false;
    }

    const http::Head& head = parser_.head();
    const char* base = in_.data();
    std::string_view authorization;
    std::string_view content_type;
    bool has_content_type = false;
    for (const http::Field& f : head.fields) {
      const auto name = f.name.view(base);
      if (http::iequals(name, "authorization")) authorization = f.value.view(base);
      if (http::iequals(name, "content-type")) {
        content_type = f.value.view(base);
        has_content_type = true;
      }
    }
    // The head's strings point into in_, which stays as it is while the route runs.
    Reply reply = co_await api_->route(head.method_name.view(base), head.target.view(base), authorization, content_type,
                                       has_content_type, body_);
    const bool keep_alive = head.keep_alive && !api_->stopped;
    const bool head_request = head.method == HTTP_HEAD;
    in_.erase(0, std::min(parsed, in_.size()));
    if (head_request) reply.body.clear();
    const bool close = !keep_alive;
    const bool written = co_await write(reply, close);
    const bool next = written && keep_alive;
    co_return next;
  }

  asio::awaitable<bool> write(const Reply& reply, bool close) {
    out_.clear();
    fmt::format_to(std::back_inserter(out_), "HTTP/1.1 {} {}\r\n", reply.status, http::reason_phrase(reply.status));
    if (reply.status != 204) {  // a 204 has neither content nor Content-Length (RFC 9110 §8.6)
      fmt::format_to(std::back_inserter(out_), "Content-Type: {}\r\nContent-Length: {}\r\n", reply.content_type,
                     reply.body.size());
    }
    fmt::format_to(std::back_inserter(out_), "{}{}\r\n", reply.headers, close ? "Connection: close\r\n" : "");
    out_ += reply.body;
    watchdog_.arm(Watchdog::write, api_->options.timeout);
    auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(out_), use_nothrow);
    watchdog_.disarm(Watchdog::write);
    const bool ok = !ec;
    co_return ok;
  }

  std::shared_ptr<detail::ManagementApiImpl> api_;
  tcp::socket socket_;
  Watchdog watchdog_;
  http::Parser parser_;
  std::string in_;
  std::string body_;
  std::string out_;
  std::list<ApiSession*>::iterator self_in_list_;
};

asio::awaitable<void> detail::ManagementApiImpl::accept_loop() {
  auto self = shared_from_this();
  while (!stopped) {
    auto [ec, socket] = co_await acceptor.async_accept(use_nothrow);
    if (stopped || ec == asio::error::operation_aborted) break;
    if (ec) {
      detail::log(LogLevel::error, "management API: accept failed: {}", ec.message());
      asio::steady_timer backoff(io, std::chrono::milliseconds(100));
      co_await backoff.async_wait(use_nothrow);
      continue;
    }
    auto session = std::make_shared<ApiSession>(self, std::move(socket));
    asio::co_spawn(
        io, [session]() { return session->run(); },
        [](std::exception_ptr e) { detail::log_exception(e, "management API"); });
  }
}

asio::awaitable<Reply> detail::ManagementApiImpl::route(std::string_view method, std::string_view target,
                                                        std::string_view authorization, std::string_view content_type,
                                                        bool has_content_type, const std::string& body) {
  auto self = shared_from_this();
  if (!options.token.empty()) {
    constexpr std::string_view kBearer = "Bearer ";
    const bool bearer = authorization.size() > kBearer.size() && http::iequals(authorization.substr(0, 7), kBearer);
    const std::string_view given = bearer ? authorization.substr(kBearer.size()) : std::string_view{};
    if (!constant_time_equal(given, options.token)) {
      co_return json_error(401, "missing or wrong bearer token", "WWW-Authenticate: Bearer realm=\"weldr\"\r\n");
    }
  }
  std::string_view path = target.substr(0, target.find('?'));
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  const bool get = method == "GET" || method == "HEAD";

  if (path == "/") co_return get ? json_reply(200, api::index_json()) : not_allowed("GET, HEAD");
  if (path == "/servers") {
    if (get) co_return json_reply(200, api::servers_json(pool.list(), options.health_checker));
    if (method == "POST") co_return co_await register_server(content_type, has_content_type, body);
    co_return not_allowed("GET, HEAD, POST");
  }
  if (path == "/stats") co_return get ? json_reply(200, api::stats_json(stats)) : not_allowed("GET, HEAD");
  if (path == "/config/health-check") co_return co_await health_config(method, content_type, has_content_type, body);
  if (path == "/stats/detail")
    co_return get ? json_reply(200, api::stats_detail_json(pool.list())) : not_allowed("GET, HEAD");
  if (path == "/metrics") {
    if (!get) co_return not_allowed("GET, HEAD");
    co_return Reply{200, metrics(), {}, "text/plain; version=0.0.4; charset=utf-8"};
  }
  if (path == "/cluster" || path == "/cluster/resign") co_return co_await cluster_route(path, method);
  constexpr std::string_view kServers = "/servers/";
  if (path.substr(0, kServers.size()) == kServers) {
    const std::string_view rest = path.substr(kServers.size());
    const auto slash = rest.rfind('/');
    if (slash == std::string_view::npos) co_return json_error(404, "use /servers/{ip}/{port}");
    std::string error;
    const auto id = api::id_from_path(rest.substr(0, slash), rest.substr(slash + 1), error);
    if (!id) co_return json_error(400, error);
    if (get) {
      const auto backend = pool.find(*id);
      if (!backend) co_return json_error(404, fmt::format("no server {}", *id));
      co_return json_reply(200, api::server_json(*backend, options.health_checker));
    }
    if (method == "DELETE") co_return co_await remove_server(*id);
    co_return not_allowed("GET, HEAD, DELETE");
  }
  co_return json_error(404, fmt::format("no such resource: {}", path));
}

namespace {

// The HTTP answer to a store's refusal.
Reply store_error(const StoreResult& result) {
  switch (result.status) {
    case StoreResult::Status::not_found: return json_error(404, result.message);
    case StoreResult::Status::conflict: return json_error(409, result.message);
    case StoreResult::Status::unavailable: return json_error(503, result.message, "Retry-After: 1\r\n");
    default: return json_error(500, result.message);
  }
}

}  // namespace

asio::awaitable<Reply> detail::ManagementApiImpl::register_server(std::string_view content_type, bool has_content_type,
                                                                  const std::string& body) {
  auto self = shared_from_this();
  if (!json_content_type(content_type, has_content_type)) {
    co_return json_error(415, "the body must be application/json");
  }
  std::string error;
  const auto registration = api::parse_registration(body, error);
  if (!registration) co_return json_error(400, error);
  const std::string id = registration->address.id();
  const unsigned weight = registration->weight;
  const StoreResult result = co_await store.add(registration->address, registration->check, weight);
  if (!result.ok()) co_return store_error(result);
  // The store has it; the Pool normally shows it already. If not yet (a cluster whose watch is
  // late), answer with the registration as stored.
  auto backend = pool.find(id);
  if (!backend)
    backend = std::make_shared<Backend>(registration->address, registration->check, weight == 0 ? 1 : weight);
  switch (result.status) {
    case StoreResult::Status::created:
      detail::log(LogLevel::info, "server {} registered through the management API", id);
      co_return after_change(json_reply(201, api::server_json(*backend, options.health_checker),
                                        fmt::format("Location: {}\r\n", api::server_path(*backend))));
    case StoreResult::Status::updated:
      detail::log(LogLevel::info, "server {}: weight set to {} through the management API", id, weight);
      co_return after_change(json_reply(200, api::server_json(*backend, options.health_checker)));
    default: co_return json_reply(200, api::server_json(*backend, options.health_checker));
  }
}

asio::awaitable<Reply> detail::ManagementApiImpl::remove_server(const std::string& id) {
  auto self = shared_from_this();
  const StoreResult result = co_await store.remove(id);
  if (!result.ok()) co_return store_error(result);
  detail::log(LogLevel::info, "server {} removed through the management API", id);
  co_return after_change(json_reply(204, {}));
}

asio::awaitable<Reply> detail::ManagementApiImpl::health_config(std::string_view method, std::string_view content_type,
                                                                bool has_content_type, const std::string& body) {
  auto self = shared_from_this();
  if (options.health_checker == nullptr) co_return json_error(404, "health checks are not enabled");
  HealthChecker& checker = *options.health_checker;
  if (method == "GET" || method == "HEAD") co_return json_reply(200, to_json(checker.defaults()) + "\n");
  if (method != "PUT") co_return not_allowed("GET, HEAD, PUT");
  if (!json_content_type(content_type, has_content_type)) {
    co_return json_error(415, "the body must be application/json");
  }
  // A partial object changes only the settings it names.
  std::string error;
  const auto updated = apply_check_json(checker.defaults(), body, error);
  if (!updated) co_return json_error(400, error);
  const StoreResult result = co_await store.set_health_check(*updated);
  if (!result.ok()) co_return store_error(result);
  detail::log(LogLevel::info, "health-check settings changed through the management API: {}", to_json(*updated));
  co_return json_reply(200, to_json(*updated) + "\n");
}

asio::awaitable<Reply> detail::ManagementApiImpl::cluster_route(std::string_view path, std::string_view method) {
  auto self = shared_from_this();
  const bool get = method == "GET" || method == "HEAD";
  if (path == "/cluster") {
    if (!get) co_return not_allowed("GET, HEAD");
    if (options.cluster == nullptr) co_return json_reply(200, api::standalone_cluster_json());
    co_return json_reply(200, api::cluster_json(options.cluster->status()));
  }
  if (method != "POST") co_return not_allowed("POST");
  if (options.cluster == nullptr) co_return json_error(409, "this node is not in a cluster");
  const std::string error = co_await options.cluster->resign();
  if (!error.empty()) {
    const bool store_down = error.starts_with("cluster store unavailable");
    co_return json_error(store_down ? 503 : 409, error);
  }
  detail::log(LogLevel::info, "resigned the active role through the management API");
  co_return json_reply(200, api::cluster_json(options.cluster->status()));
}

std::string detail::ManagementApiImpl::metrics() const {
  std::string text = api::metrics_text(stats, pool.list());
  if (options.cluster != nullptr) text += api::cluster_metrics(options.cluster->status());
  return text;
}

Reply detail::ManagementApiImpl::after_change(Reply reply) const {
  if (options.state_file == nullptr) return reply;
  const std::string error = options.state_file->last_error();
  if (error.empty()) return reply;
  return json_error(500, fmt::format("the change was made but could not be saved to the state file: {}", error));
}

// ---------------------------------------------------------------------------------------------

ManagementApi::ManagementApi(asio::io_context& io, Pool& pool, Stats& stats, ApiOptions options)
    : impl_(std::make_shared<detail::ManagementApiImpl>(io, pool, stats, std::move(options))) {}

ManagementApi::~ManagementApi() {
  stop();
}

void ManagementApi::listen(const tcp::endpoint& endpoint) {
  std::error_code ec;
  listen(endpoint, ec);
  if (ec) throw std::system_error(ec, "management API: listen");
}

void ManagementApi::listen(const tcp::endpoint& endpoint, std::error_code& ec) {
  net::open_listener(impl_->acceptor, endpoint, asio::socket_base::max_listen_connections, false, ec);
  if (ec) return;
  auto impl = impl_;
  asio::co_spawn(
      impl->io, [impl]() { return impl->accept_loop(); },
      [](std::exception_ptr e) { detail::log_exception(e, "management API"); });
}

tcp::endpoint ManagementApi::local_endpoint() const {
  std::error_code ec;
  return impl_->acceptor.local_endpoint(ec);
}

void ManagementApi::stop() {
  impl_->stopped = true;
  std::error_code ignored;
  impl_->acceptor.close(ignored);
  for (ApiSession* s : impl_->sessions)
    s->close();
}

}  // namespace weldr
