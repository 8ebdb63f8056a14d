#include "origin.hpp"

#include <asio/awaitable.hpp>
#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <mutex>
#include <set>

namespace weldr::test {

namespace {

constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

std::string_view standard_reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Status";
  }
}

template <class T>
std::optional<T> parse_number(std::string_view text) {
  T value{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

bool body_allowed(int status) {
  return status >= 200 && status != 204 && status != 304;
}

std::string serialize(const RecordedRequest& request, const Reply& reply) {
  std::string out = fmt::format("HTTP/1.1 {} {}\r\n", reply.status,
                                reply.reason.empty() ? standard_reason(reply.status) : reply.reason);
  for (const auto& [name, value] : reply.headers)
    out += fmt::format("{}: {}\r\n", name, value);
  const bool with_body = body_allowed(reply.status);
  if (with_body && reply.chunked) {
    out += "Transfer-Encoding: chunked\r\n";
  } else if (with_body && reply.content_length && !has_header(reply.headers, "Content-Length")) {
    out += fmt::format("Content-Length: {}\r\n", reply.body.size());
  }
  if (!reply.keep_alive) out += "Connection: close\r\n";
  out += "\r\n";
  if (!with_body || request.method == "HEAD") return out;
  if (!reply.chunked) return out + reply.body;
  const std::size_t step = std::max<std::size_t>(reply.chunk_size, 1);
  for (std::size_t i = 0; i < reply.body.size(); i += step) {
    const std::string_view piece = std::string_view(reply.body).substr(i, step);
    out += fmt::format("{:x}\r\n", piece.size());
    out += piece;
    out += "\r\n";
  }
  out += "0\r\n\r\n";
  return out;
}

bool expects_body(const Message& m) {
  if (m.chunked) return true;
  const auto length = header_value(m.headers, "Content-Length");
  return length && *length != "0";
}

}  // namespace

// --- RecordedRequest -------------------------------------------------------------------------

std::string RecordedRequest::header(std::string_view name) const {
  return header_value(headers, name).value_or("");
}

bool RecordedRequest::has(std::string_view name) const {
  return has_header(headers, name);
}

std::string_view RecordedRequest::path() const {
  const std::string_view t = target;
  return t.substr(0, t.find('?'));
}

std::optional<std::string> RecordedRequest::query(std::string_view key) const {
  const auto q = target.find('?');
  if (q == std::string::npos) return std::nullopt;
  std::string_view rest = std::string_view(target).substr(q + 1);
  while (!rest.empty()) {
    const auto amp = rest.find('&');
    const std::string_view item = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
    const auto eq = item.find('=');
    if (item.substr(0, eq) == key) return std::string(eq == std::string_view::npos ? "" : item.substr(eq + 1));
  }
  return std::nullopt;
}

std::string large_body(std::size_t size) {
  std::string body(size, '\0');
  for (std::size_t i = 0; i < size; ++i)
    body[i] = static_cast<char>('a' + i % 26);
  return body;
}

// --- Origin ----------------------------------------------------------------------------------

struct Origin::Impl {
  /// One accepted connection; kept in `connections` so that shutdown can close it.
  struct Connection {
    explicit Connection(asio::ip::tcp::socket s) : socket(std::move(s)), timer(socket.get_executor()) {}
    asio::ip::tcp::socket socket;
    asio::steady_timer timer;
  };

  asio::io_context io;
  asio::ip::tcp::acceptor acceptor{io};
  std::thread thread;

  mutable std::mutex mutex;
  mutable std::condition_variable changed;
  std::vector<RecordedRequest> requests;  // guarded by mutex
  std::size_t accepted{0};                // guarded by mutex
  Handler handler;                        // guarded by mutex
  bool send_continue{true};               // guarded by mutex

  // Touched on the io thread only.
  bool stopping{false};
  std::set<std::shared_ptr<Connection>> connections;

  asio::awaitable<void> accept_loop() {
    for (;;) {
      auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
      if (stopping || !acceptor.is_open()) co_return;
      if (ec) continue;
      std::size_t index = 0;
      {
        std::lock_guard lock(mutex);
        index = accepted++;
      }
      changed.notify_all();
      socket.set_option(asio::ip::tcp::no_delay(true), ec);
      auto connection = std::make_shared<Connection>(std::move(socket));
      connections.insert(connection);
      asio::co_spawn(io, session(connection, index), [this, connection](const std::exception_ptr& e) {
        connections.erase(connection);
        if (!e) return;
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& ex) {
          std::fprintf(stderr, "test origin: session failed: %s\n", ex.what());
        }
      });
    }
  }

  asio::awaitable<void> session(std::shared_ptr<Connection> c, std::size_t index) {
    MessageParser parser(MessageParser::Kind::request, /*pause_on_head=*/true);
    std::string input;
    std::array<char, 64 * 1024> buffer{};
    for (;;) {
      const auto r = parser.feed(input);
      input.erase(0, r.consumed);
      switch (r.event) {
        case MessageParser::Event::error:
        case MessageParser::Event::eof: co_return;
        case MessageParser::Event::head_complete: {
          if (wants_continue(parser.message())) {
            constexpr std::string_view interim = "HTTP/1.1 100 Continue\r\n\r\n";
            auto [ec, n] = co_await asio::async_write(c->socket, asio::buffer(interim), use_tuple);
            if (ec) co_return;
          }
          continue;
        }
        case MessageParser::Event::message_complete: {
          RecordedRequest request;
          static_cast<Message&>(request) = parser.message();
          request.connection = index;
          if (!co_await respond(*c, record(std::move(request)))) co_return;
          continue;
        }
        case MessageParser::Event::need_more: break;
      }
      if (stopping) co_return;
      auto [ec, n] = co_await c->socket.async_read_some(asio::buffer(buffer), use_tuple);
      if (ec) co_return;
      input.append(buffer.data(), n);
    }
  }

  bool wants_continue(const Message& head) {
    std::lock_guard lock(mutex);
    return send_continue && header_has_token(head.headers, "Expect", "100-continue") && expects_body(head);
  }

  // Stores the request and returns it with the reply the handler chose.
  std::pair<RecordedRequest, Reply> record(RecordedRequest request) {
    Handler h;
    {
      std::lock_guard lock(mutex);
      requests.push_back(request);
      h = handler;
    }
    changed.notify_all();
    Reply reply = h ? h(request) : default_reply(request);
    return {std::move(request), std::move(reply)};
  }

  static void close(Connection& c, bool reset) {
    std::error_code ec;
    if (reset) c.socket.set_option(asio::socket_base::linger(true, 0), ec);
    c.socket.close(ec);
  }

  // Answers one request; false when the connection must not carry another one.
  asio::awaitable<bool> respond(Connection& c, std::pair<RecordedRequest, Reply> exchange) {
    const auto& [request, reply] = exchange;
    if (reply.delay.count() > 0 && !stopping) {
      c.timer.expires_after(reply.delay);
      co_await c.timer.async_wait(use_tuple);
    }
    if (stopping) co_return false;
    if (reply.no_response) {
      // Read and discard until the peer gives up or the origin stops.
      std::array<char, 4096> sink{};
      for (;;) {
        auto [ec, n] = co_await c.socket.async_read_some(asio::buffer(sink), use_tuple);
        if (ec) co_return false;
      }
    }
    if (reply.close_without_response) {
      close(c, reply.reset);
      co_return false;
    }
    std::string out = reply.raw ? *reply.raw : serialize(request, reply);
    if (reply.close_after_bytes) {
      out.resize(std::min(out.size(), *reply.close_after_bytes));
      co_await asio::async_write(c.socket, asio::buffer(out), use_tuple);
      close(c, reply.reset);
      co_return false;
    }
    auto [ec, n] = co_await asio::async_write(c.socket, asio::buffer(out), use_tuple);
    if (ec) co_return false;
    const bool keep = reply.keep_alive && !reply.close_after_response && request.keep_alive &&
                      !header_has_token(reply.headers, "Connection", "close");
    if (!keep) close(c, false);
    co_return keep;
  }

  void shutdown() {
    stopping = true;
    std::error_code ec;
    acceptor.close(ec);
    for (const auto& c : connections) {
      c->socket.close(ec);
      c->timer.cancel();
    }
  }
};

Origin::Origin() : Origin(Handler{}) {}

Origin::Origin(Handler handler) : impl_(std::make_unique<Impl>()) {
  impl_->handler = std::move(handler);
  const asio::ip::tcp::endpoint endpoint(asio::ip::address_v4::loopback(), 0);
  impl_->acceptor.open(endpoint.protocol());
  impl_->acceptor.set_option(asio::socket_base::reuse_address(true));
  impl_->acceptor.bind(endpoint);
  impl_->acceptor.listen();
  port_ = impl_->acceptor.local_endpoint().port();
  asio::co_spawn(impl_->io, impl_->accept_loop(), [](const std::exception_ptr& e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      std::fprintf(stderr, "test origin: accept loop failed: %s\n", ex.what());
    }
  });
  impl_->thread = std::thread([impl = impl_.get()] { impl->io.run(); });
}

Origin::~Origin() {
  // Closing every socket and timer lets each coroutine end on its own; run() then returns.
  asio::post(impl_->io, [impl = impl_.get()] { impl->shutdown(); });
  impl_->thread.join();
}

std::string Origin::endpoint_url() const {
  return fmt::format("http://127.0.0.1:{}", port_);
}

std::string Origin::id() const {
  return fmt::format("127.0.0.1:{}", port_);
}

void Origin::set_handler(Handler handler) {
  std::lock_guard lock(impl_->mutex);
  impl_->handler = std::move(handler);
}

void Origin::set_send_continue(bool enabled) {
  std::lock_guard lock(impl_->mutex);
  impl_->send_continue = enabled;
}

std::vector<RecordedRequest> Origin::requests() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->requests;
}

std::size_t Origin::request_count() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->requests.size();
}

std::size_t Origin::connections_accepted() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->accepted;
}

bool Origin::wait_for_requests(std::size_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(impl_->mutex);
  return impl_->changed.wait_for(lock, timeout, [&] { return impl_->requests.size() >= n; });
}

bool Origin::wait_for_connections(std::size_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(impl_->mutex);
  return impl_->changed.wait_for(lock, timeout, [&] { return impl_->accepted >= n; });
}

Reply Origin::default_reply(const RecordedRequest& request) {
  Reply reply;
  const std::string_view path = request.path();
  if (path == "/") {
    reply.body = "Hello World";
  } else if (path == "/echo") {
    reply.body = request.body;
    reply.chunked = request.chunked;
  } else if (path == "/large") {
    const auto size = parse_number<std::size_t>(request.query("size").value_or(""));
    if (!size) return Reply{.status = 400, .body = "size=N expected"};
    reply.body = large_body(*size);
  } else if (path == "/chunked") {
    reply.body = "Hello World";
    reply.chunked = true;
    reply.chunk_size = 6;
  } else if (path.starts_with("/status/")) {
    const auto status = parse_number<int>(path.substr(8));
    if (!status || *status < 200 || *status > 599) return Reply{.status = 400, .body = "bad status"};
    reply.status = *status;
  } else if (path.starts_with("/delay/")) {
    const auto ms = parse_number<int>(path.substr(7));
    if (!ms || *ms < 0) return Reply{.status = 400, .body = "bad delay"};
    reply.delay = std::chrono::milliseconds(*ms);
    reply.body = "Hello World";
  } else {
    reply.status = 404;
    reply.body = "Not Found";
  }
  return reply;
}

Handler reply_on(std::string path, Reply reply) {
  return [path = std::move(path), reply = std::move(reply)](const RecordedRequest& request) {
    return request.path() == path ? reply : Origin::default_reply(request);
  };
}

// --- TestProxy -------------------------------------------------------------------------------

ProxyOptions TestProxy::test_options() {
  ProxyOptions o;
  o.connect_timeout = std::chrono::milliseconds(2000);
  o.read_timeout = std::chrono::milliseconds(5000);
  o.client_header_timeout = std::chrono::milliseconds(5000);
  o.client_idle_timeout = std::chrono::milliseconds(10000);
  o.send_timeout = std::chrono::milliseconds(5000);
  o.upstream_idle_timeout = std::chrono::milliseconds(10000);
  return o;
}

TestProxy::TestProxy(const std::vector<std::string>& backends, ProxyOptions options) : pool_(std::make_unique<Pool>()) {
  for (const auto& url : backends)
    pool_->add(url);
  proxy_ = std::make_unique<Proxy>(io_, *pool_, std::move(options));
  proxy_->listen(asio::ip::tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  port_ = proxy_->local_endpoint().port();
  work_.emplace(asio::make_work_guard(io_));
  thread_ = std::thread([this] { io_.run(); });
}

TestProxy::~TestProxy() {
  if (!stopped_) {
    try {
      stop(std::chrono::milliseconds(1000)).wait_for(std::chrono::seconds(10));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "TestProxy: stop failed: %s\n", e.what());
    }
  }
  work_.reset();
  io_.stop();
  thread_.join();
  proxy_.reset();
}

ProxyCounters TestProxy::counters() {
  return call([](Proxy& p) { return p.counters(); });
}

std::future<void> TestProxy::stop(std::optional<std::chrono::milliseconds> grace) {
  auto done = std::make_shared<std::promise<void>>();
  auto once = std::make_shared<std::once_flag>();
  std::future<void> future = done->get_future();
  std::function<void()> callback = [done, once] { std::call_once(*once, [&] { done->set_value(); }); };
  call([grace, callback](Proxy& p) {
    if (grace) {
      p.stop(*grace, callback);
    } else {
      p.stop(callback);
    }
  });
  stopped_ = true;
  return future;
}

}  // namespace weldr::test
