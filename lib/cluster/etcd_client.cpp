#include "cluster/etcd_client.hpp"

#include "cluster/etcd_codec.hpp"
#include "http/parser.hpp"
#include "net/use_nothrow.hpp"

#include <asio/connect.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <fmt/format.h>

#include <charconv>
#include <set>

namespace weldr::cluster {

using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

using net::use_nothrow;
constexpr int kUnauthenticated = 16;
constexpr int kUnavailable = 14;
constexpr int kDeadlineExceeded = 4;

}  // namespace

bool transient(const CallResult& r) {
  if (r.ec) return true;
  if (r.status >= 500) return true;
  const auto e = parse_error(r.body);
  return e && (e->code == kUnavailable || e->code == kDeadlineExceeded);
}

std::optional<std::vector<Endpoint>> parse_endpoints(std::string_view urls, std::string& error) {
  std::vector<Endpoint> out;
  while (!urls.empty()) {
    const auto comma = urls.find(',');
    std::string_view item = urls.substr(0, comma);
    urls = comma == std::string_view::npos ? std::string_view{} : urls.substr(comma + 1);
    while (!item.empty() && item.front() == ' ')
      item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ')
      item.remove_suffix(1);
    const std::string given(item);
    if (item.substr(0, 8) == "https://") {
      error = fmt::format("etcd URL '{}': https is not supported yet; use http://", given);
      return std::nullopt;
    }
    if (item.substr(0, 7) == "http://") item.remove_prefix(7);
    if (!item.empty() && item.back() == '/') item.remove_suffix(1);
    std::string_view host;
    std::string_view port_text;
    if (!item.empty() && item.front() == '[') {
      const auto close = item.find(']');
      if (close == std::string_view::npos || item.substr(close + 1, 1) != ":") {
        error = fmt::format("etcd URL '{}' is not http://host:port", given);
        return std::nullopt;
      }
      host = item.substr(1, close - 1);
      port_text = item.substr(close + 2);
    } else {
      const auto colon = item.rfind(':');
      if (colon == std::string_view::npos || item.substr(0, colon).find(':') != std::string_view::npos) {
        error = fmt::format("etcd URL '{}' is not http://host:port", given);
        return std::nullopt;
      }
      host = item.substr(0, colon);
      port_text = item.substr(colon + 1);
    }
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (host.empty() || port_text.empty() || ec != std::errc{} || end != port_text.data() + port_text.size() ||
        port == 0 || port > 65535 || host.find_first_of("/?#@ ") != std::string_view::npos) {
      error = fmt::format("etcd URL '{}' is not http://host:port", given);
      return std::nullopt;
    }
    Endpoint ep;
    ep.host = std::string(host);
    ep.port = static_cast<std::uint16_t>(port);
    ep.url = host.find(':') != std::string_view::npos ? fmt::format("http://[{}]:{}", host, port)
                                                      : fmt::format("http://{}:{}", host, port);
    out.push_back(std::move(ep));
  }
  if (out.empty()) {
    error = "no etcd URL given";
    return std::nullopt;
  }
  return out;
}

struct EtcdClient::Impl : std::enable_shared_from_this<EtcdClient::Impl> {
  Impl(asio::any_io_executor e, EtcdClientOptions o) : executor(std::move(e)), options(std::move(o)) {}

  // One request on a new connection to `ep`. With `on_line`, the answer is a stream whose
  // lines are handed over as they come, and `deadline` bounds only the wait for its head.
  asio::awaitable<CallResult> exchange(const Endpoint& ep, std::string_view path, const std::string& body,
                                       Clock::time_point deadline,
                                       const std::function<bool(std::string_view)>* on_line = nullptr);
  asio::awaitable<CallResult> authenticated(const Endpoint& ep, std::string_view path, const std::string& body,
                                            Clock::time_point deadline,
                                            const std::function<bool(std::string_view)>* on_line = nullptr);

  asio::any_io_executor executor;
  EtcdClientOptions options;
  std::size_t preferred{0};
  std::string token;
  std::set<std::shared_ptr<tcp::socket>> sockets;  // open ones, for close()
  std::shared_ptr<tcp::socket> watch_socket;
  std::string watch_url;
  bool closed{false};
};

asio::awaitable<CallResult> EtcdClient::Impl::exchange(const Endpoint& ep, std::string_view path,
                                                       const std::string& body, Clock::time_point deadline,
                                                       const std::function<bool(std::string_view)>* on_line) {
  auto self = shared_from_this();
  CallResult result;
  result.endpoint = ep.url;
  result.maybe_applied = false;
  if (closed) {
    result.ec = asio::error::operation_aborted;
    result.error = "the etcd client is closed";
    co_return result;
  }
  auto socket = std::make_shared<tcp::socket>(executor);
  sockets.insert(socket);
  struct Forget {
    Impl& impl;
    std::shared_ptr<tcp::socket> socket;
    ~Forget() { impl.sockets.erase(socket); }
  } forget{*this, socket};
  // The deadline's handler may already be queued when the operation completes; it then must
  // neither touch this frame (gone by then) nor close a socket that is in use under a newer
  // deadline: it checks a generation in state that it shares.
  struct Deadline {
    bool timed_out{false};
    unsigned generation{0};
  };
  auto state = std::make_shared<Deadline>();
  asio::steady_timer timer(executor);
  auto arm = [&](Clock::time_point at) {
    const unsigned generation = ++state->generation;
    timer.expires_at(at);
    timer.async_wait([socket, state, generation](std::error_code ec) {
      if (ec || state->generation != generation) return;
      state->timed_out = true;
      std::error_code ignored;
      socket->close(ignored);
    });
  };
  auto disarm = [&] {
    ++state->generation;
    timer.cancel();
  };
  arm(std::min(deadline, Clock::now() + options.connect_timeout));
  auto fail = [&](std::error_code ec, std::string_view what) {
    result.ec = state->timed_out ? asio::error::timed_out : ec;
    result.error = fmt::format("etcd at {}: {}: {}", ep.url, what, state->timed_out ? "timed out" : ec.message());
    return result;
  };

  tcp::resolver resolver(executor);
  auto [rec, endpoints] = co_await resolver.async_resolve(ep.host, std::to_string(ep.port), use_nothrow);
  if (rec) co_return fail(rec, "resolve");
  if (state->timed_out) co_return fail(asio::error::timed_out, "resolve");
  auto [cec, connected] = co_await asio::async_connect(*socket, endpoints, use_nothrow);
  if (cec) co_return fail(cec, "connect");
  const std::string head =
      fmt::format("POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}{}\r\n",
                  path, ep.host.find(':') != std::string::npos ? "[" + ep.host + "]" : ep.host, ep.port, body.size(),
                  token.empty() ? "" : fmt::format("Authorization: {}\r\n", token),
                  // A watch on a member cut off from its cluster's leader would stay silent:
                  // etcd cancels it instead when asked to require a leader (gRPC metadata).
                  on_line == nullptr ? "Connection: close\r\n" : "Grpc-Metadata-Hasleader: true\r\n");
  // From here on the request may reach etcd.
  arm(deadline);
  result.maybe_applied = true;
  const std::array<asio::const_buffer, 2> request{asio::buffer(head), asio::buffer(body)};
  if (auto [wec, n] = co_await asio::async_write(*socket, request, use_nothrow); wec) co_return fail(wec, "send");

  http::Parser parser(http::Parser::Kind::response, 64 * 1024, 100);
  parser.reset();
  std::string in;
  std::size_t parsed = 0;
  std::string lines;  // a stream's body not split into lines yet
  for (;;) {
    if (parsed < in.size() || parser.head_complete()) {
      std::size_t used = 0;
      const auto event = parser.feed(in.data(), parsed, in.size() - parsed, used);
      for (const http::Span& s : parser.body_spans()) {
        std::string& sink = on_line != nullptr ? lines : result.body;
        if (sink.size() + s.length > options.max_body) {
          co_return fail(asio::error::message_size, "answer too large");
        }
        sink.append(in.data() + s.offset, s.length);
      }
      parsed += used;
      if (event == http::Parser::Event::error) {
        result.error = fmt::format("etcd at {}: invalid HTTP answer: {}", ep.url, parser.error_reason());
        result.ec = asio::error::invalid_argument;
        co_return result;
      }
      if (event == http::Parser::Event::head) {
        result.status = parser.head().status;
        if (on_line != nullptr && result.status == 200) {
          disarm();  // a watch may stay quiet for as long as nothing changes
          watch_socket = socket;
          watch_url = ep.url;
        }
        continue;
      }
      if (on_line != nullptr && !lines.empty()) {
        std::size_t start = 0;
        for (auto nl = lines.find('\n'); nl != std::string::npos; nl = lines.find('\n', start)) {
          const std::string_view line(lines.data() + start, nl - start);
          start = nl + 1;
          if (line.find_first_not_of(" \r\t") == std::string_view::npos) continue;
          if (!(*on_line)(line)) {
            lines.clear();
            result.error = "stopped";
            co_return result;
          }
        }
        lines.erase(0, start);
      }
      if (event == http::Parser::Event::message) {
        if (on_line != nullptr && !lines.empty()) (*on_line)(lines);
        if (on_line != nullptr || result.status != 200) {
          result.error =
              result.status == 200
                  ? "the watch stream ended"
                  : fmt::format("etcd at {}: HTTP {}: {}", ep.url, result.status,
                                parse_error(result.body + lines).value_or(EtcdError{0, result.body + lines}).message);
        }
        co_return result;
      }
      const std::size_t head_size = parser.head().size;
      if (parser.head_complete() && in.size() > head_size) {
        in.erase(head_size);
        parsed = head_size;
      }
    }
    char chunk[16 * 1024];
    auto [ec, n] = co_await socket->async_read_some(asio::buffer(chunk), use_nothrow);
    if (ec == asio::error::eof && parser.head_complete()) {
      if (parser.finish() == http::Parser::Event::message) {
        if (on_line == nullptr) co_return result;
      }
    }
    if (ec) co_return fail(ec, on_line != nullptr && parser.head_complete() ? "watch" : "read");
    in.append(chunk, n);
  }
}

asio::awaitable<CallResult> EtcdClient::Impl::authenticated(const Endpoint& ep, std::string_view path,
                                                            const std::string& body, Clock::time_point deadline,
                                                            const std::function<bool(std::string_view)>* on_line) {
  auto self = shared_from_this();
  for (int attempt = 0;; ++attempt) {
    if (!options.user.empty() && token.empty()) {
      CallResult auth = co_await exchange(ep, "/v3/auth/authenticate",
                                          authenticate_request(options.user, options.password), deadline);
      if (!auth.ok()) {
        if (auth.error.empty())
          auth.error = fmt::format("etcd at {}: authentication failed: HTTP {}", ep.url, auth.status);
        if (const auto e = parse_error(auth.body)) {
          auth.error = fmt::format("etcd at {}: authentication failed: {}", ep.url, e->message);
        }
        auth.maybe_applied = false;
        co_return auth;
      }
      std::string error;
      auto t = parse_token(auth.body, error);
      if (!t) {
        auth.ec = asio::error::invalid_argument;
        auth.error = error;
        auth.maybe_applied = false;
        co_return auth;
      }
      token = std::move(*t);
    }
    CallResult r = co_await exchange(ep, path, body, deadline, on_line);
    const auto e = r.ec ? std::nullopt : parse_error(r.body);
    // Tokens expire (--auth-token-ttl); one fresh token per call is enough.
    if (e && e->code == kUnauthenticated && !options.user.empty() && attempt == 0) {
      token.clear();
      continue;
    }
    co_return r;
  }
}

EtcdClient::EtcdClient(asio::any_io_executor executor, EtcdClientOptions options)
    : impl_(std::make_shared<Impl>(std::move(executor), std::move(options))) {}

EtcdClient::~EtcdClient() {
  close();
}

asio::awaitable<CallResult> EtcdClient::call(std::string_view path, std::string body, bool idempotent,
                                             std::chrono::milliseconds timeout, std::string prefer) {
  auto impl = impl_;
  const auto deadline = Clock::now() + timeout;
  const std::size_t n = impl->options.endpoints.size();
  std::size_t start = impl->preferred;
  for (std::size_t i = 0; i < n && !prefer.empty(); ++i) {
    if (impl->options.endpoints[i].url == prefer) start = i;
  }
  CallResult last;
  last.error = "no etcd member was tried";
  last.ec = asio::error::not_connected;
  last.maybe_applied = false;
  for (std::size_t attempt = 0; attempt < n && Clock::now() < deadline; ++attempt) {
    const std::size_t i = (start + attempt) % n;
    const Endpoint& ep = impl->options.endpoints[i];
    // An idempotent call keeps time for a second member, in case this one hangs.
    auto attempt_deadline = deadline;
    if (idempotent && n > 1 && attempt + 1 < n) attempt_deadline = Clock::now() + (deadline - Clock::now()) / 2;
    CallResult r = co_await impl->authenticated(ep, path, body, attempt_deadline);
    if (r.ok()) {
      impl->preferred = i;
      co_return r;
    }
    if (r.error.empty()) {
      const auto e = parse_error(r.body);
      r.error = fmt::format("etcd at {}: {}", ep.url, e ? e->message : fmt::format("HTTP {}", r.status));
    }
    if (!transient(r)) co_return r;
    if (impl->preferred == i) impl->preferred = (i + 1) % n;
    // A member that fails a call may be the one the watch hangs on, silently: move the watch.
    if (impl->watch_url == ep.url && impl->watch_socket) {
      std::error_code ignored;
      impl->watch_socket->close(ignored);
    }
    const bool maybe_applied = r.maybe_applied;
    last = std::move(r);
    if (maybe_applied && !idempotent) break;  // it may have been done: the caller decides
  }
  co_return last;
}

asio::awaitable<std::string> EtcdClient::watch(std::string body, std::function<bool(std::string_view)> on_line,
                                               std::chrono::milliseconds opened) {
  auto impl = impl_;
  const std::size_t n = impl->options.endpoints.size();
  const std::size_t i = impl->preferred % n;
  const Endpoint ep = impl->options.endpoints[i];
  CallResult r = co_await impl->authenticated(ep, "/v3/watch", body, Clock::now() + opened, &on_line);
  impl->watch_socket.reset();
  impl->watch_url.clear();
  if (r.ec || r.status != 200) {
    if (impl->preferred == i) impl->preferred = (i + 1) % n;
  }
  co_return r.error.empty() ? std::string("the watch stream ended") : r.error;
}

void EtcdClient::cancel_watch() {
  if (impl_->watch_socket) {
    std::error_code ignored;
    impl_->watch_socket->close(ignored);
  }
}

std::string EtcdClient::watch_endpoint() const {
  return impl_->watch_url;
}

void EtcdClient::demote(const std::string& url) {
  const auto& eps = impl_->options.endpoints;
  if (eps.empty()) return;
  if (eps[impl_->preferred % eps.size()].url == url) impl_->preferred = (impl_->preferred + 1) % eps.size();
}

const std::vector<Endpoint>& EtcdClient::endpoints() const noexcept {
  return impl_->options.endpoints;
}

void EtcdClient::close() {
  impl_->closed = true;
  for (const auto& s : impl_->sockets) {
    std::error_code ignored;
    s->close(ignored);
  }
}

}  // namespace weldr::cluster
