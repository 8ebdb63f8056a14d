#include <weldr/health_checker.hpp>

#include <weldr/pool.hpp>

#include "log_internal.hpp"
#include "net/use_nothrow.hpp"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <charconv>
#include <mutex>
#include <random>
#include <unordered_map>

namespace weldr {

using asio::ip::tcp;
using std::chrono::milliseconds;

namespace {

using net::use_nothrow;
constexpr milliseconds kMaxDuration = std::chrono::hours(24);

std::optional<milliseconds> duration_value(const rapidjson::Value& v) {
  if (v.IsString()) return parse_duration({v.GetString(), v.GetStringLength()});
  if (v.IsUint64()) return milliseconds(v.GetUint64());
  return std::nullopt;
}

bool parse_expect(const rapidjson::Value& v, int& min, int& max) {
  if (v.IsInt()) {
    min = max = v.GetInt();
    return true;
  }
  if (!v.IsString()) return false;
  const std::string_view text(v.GetString(), v.GetStringLength());
  const auto dash = text.find('-');
  const std::string_view first = text.substr(0, dash);
  const std::string_view second = dash == std::string_view::npos ? first : text.substr(dash + 1);
  auto parse = [](std::string_view t, int& out) {
    auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), out);
    return !t.empty() && ec == std::errc{} && end == t.data() + t.size();
  };
  return parse(first, min) && parse(second, max);
}

}  // namespace

std::optional<milliseconds> parse_duration(std::string_view text) {
  std::uint64_t value = 0;
  const char* first = text.data();
  const char* last = text.data() + text.size();
  auto [end, ec] = std::from_chars(first, last, value);
  if (ec != std::errc{} || end == first) return std::nullopt;
  const std::string_view unit(end, static_cast<std::size_t>(last - end));
  std::uint64_t scale = 0;
  if (unit == "ms") {
    scale = 1;
  } else if (unit == "s" || unit.empty()) {
    scale = 1000;
  } else if (unit == "m") {
    scale = 60 * 1000;
  } else if (unit == "h") {
    scale = 3600 * 1000;
  } else {
    return std::nullopt;
  }
  constexpr std::uint64_t kMaxMs = 365ULL * 24 * 3600 * 1000;
  if (value > kMaxMs / scale) return std::nullopt;
  return milliseconds(value * scale);
}

std::string HealthCheckOptions::validate() const {
  if (path.empty() || path.front() != '/') return "\"path\" must start with '/'";
  if (path.find_first_of(" \r\n") != std::string::npos) return "\"path\" must not contain spaces or line breaks";
  if (host.find_first_of(" \r\n") != std::string::npos) return "\"host\" must not contain spaces or line breaks";
  if (expect_min < 100 || expect_max > 599 || expect_min > expect_max) {
    return "\"expect\" must be a status or a range within 100-599, e.g. 200 or \"200-399\"";
  }
  if (interval <= milliseconds::zero() || interval > kMaxDuration) return "\"interval\" must be between 1ms and 24h";
  if (timeout <= milliseconds::zero() || timeout > kMaxDuration) return "\"timeout\" must be between 1ms and 24h";
  if (failures < 1 || failures > 1000) return "\"failures\" must be between 1 and 1000";
  if (passes < 1 || passes > 1000) return "\"passes\" must be between 1 and 1000";
  return {};
}

std::optional<HealthCheckOptions> apply_check_json(const HealthCheckOptions& base, std::string_view json,
                                                   std::string& error) {
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag>(json.data(), json.size());
  if (doc.HasParseError()) {
    error = fmt::format("invalid JSON at offset {}: {}", doc.GetErrorOffset(),
                        rapidjson::GetParseError_En(doc.GetParseError()));
    return std::nullopt;
  }
  if (!doc.IsObject()) {
    error = "health-check settings must be a JSON object";
    return std::nullopt;
  }
  HealthCheckOptions out = base;
  for (const auto& m : doc.GetObject()) {
    const std::string_view name(m.name.GetString(), m.name.GetStringLength());
    const auto& v = m.value;
    bool ok = true;
    if (name == "type") {
      const std::string_view t = v.IsString() ? std::string_view(v.GetString(), v.GetStringLength()) : "";
      ok = t == "http" || t == "tcp";
      out.type = t == "tcp" ? HealthCheckOptions::Type::tcp : HealthCheckOptions::Type::http;
      if (!ok) error = "\"type\" must be \"http\" or \"tcp\"";
    } else if (name == "path" || name == "host") {
      ok = v.IsString();
      if (ok) (name == "path" ? out.path : out.host).assign(v.GetString(), v.GetStringLength());
      if (!ok) error = fmt::format("\"{}\" must be a string", name);
    } else if (name == "expect") {
      ok = parse_expect(v, out.expect_min, out.expect_max);
      if (!ok) error = "\"expect\" must be a status or a range, e.g. 200 or \"200-399\"";
    } else if (name == "interval" || name == "timeout") {
      const auto d = duration_value(v);
      ok = d.has_value();
      if (ok) (name == "interval" ? out.interval : out.timeout) = *d;
      if (!ok) error = fmt::format("\"{}\" must be a duration such as \"2s\" or \"250ms\", or milliseconds", name);
    } else if (name == "failures" || name == "passes") {
      ok = v.IsUint() && v.GetUint() >= 1;
      if (ok) (name == "failures" ? out.failures : out.passes) = v.GetUint();
      if (!ok) error = fmt::format("\"{}\" must be a whole number of at least 1", name);
    } else {
      ok = false;
      error = fmt::format("unknown health-check setting \"{}\"", name);
    }
    if (!ok) return std::nullopt;
  }
  error = out.validate();
  if (!error.empty()) return std::nullopt;
  return out;
}

std::string to_json(const HealthCheckOptions& o) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
  w.StartObject();
  w.Key("type");
  w.String(o.type == HealthCheckOptions::Type::tcp ? "tcp" : "http");
  w.Key("path");
  w.String(o.path.c_str(), static_cast<rapidjson::SizeType>(o.path.size()));
  w.Key("host");
  w.String(o.host.c_str(), static_cast<rapidjson::SizeType>(o.host.size()));
  w.Key("expect");
  const std::string expect = fmt::format("{}-{}", o.expect_min, o.expect_max);
  w.String(expect.c_str(), static_cast<rapidjson::SizeType>(expect.size()));
  w.Key("interval");
  const std::string interval = fmt::format("{}ms", o.interval.count());
  w.String(interval.c_str(), static_cast<rapidjson::SizeType>(interval.size()));
  w.Key("timeout");
  const std::string timeout = fmt::format("{}ms", o.timeout.count());
  w.String(timeout.c_str(), static_cast<rapidjson::SizeType>(timeout.size()));
  w.Key("failures");
  w.Uint(o.failures);
  w.Key("passes");
  w.Uint(o.passes);
  w.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

RiseFall::Change RiseFall::record(bool ok) noexcept {
  if (ok) {
    bad_ = 0;
    ++good_;
    if (!up_ && good_ >= passes_) {
      up_ = true;
      return Change::went_up;
    }
  } else {
    good_ = 0;
    ++bad_;
    if (up_ && bad_ >= failures_) {
      up_ = false;
      return Change::went_down;
    }
  }
  return Change::none;
}

// ---------------------------------------------------------------------------------------------

namespace {

/// One checked backend; its loop runs on the checker's io_context.
struct Target {
  // A backend that is down already (a checker started again) must pass to come back.
  Target(asio::io_context& io, std::shared_ptr<Backend> b, const HealthCheckOptions& o)
      : backend(std::move(b)),
        rise_fall(o.failures, o.passes, backend->state() != BackendState::down),
        timer(io),
        deadline(io) {
    status.up = rise_fall.up();
  }
  /// Ends its loop at once: the wait between checks and a check in flight are both cut short.
  void cancel() {
    removed = true;
    // Expiring the timers (rather than only cancelling pending waits) also ends a wait that
    // starts later: a check between two of its steps would otherwise wait out its timeout.
    timer.expires_at(std::chrono::steady_clock::time_point::min());
    deadline.expires_at(std::chrono::steady_clock::time_point::min());
  }
  std::shared_ptr<Backend> backend;
  RiseFall rise_fall;           // io thread only
  unsigned ejected_passes{0};   // passed checks in a row while ejected; io thread only
  HealthStatus status;          // guarded by HealthCheckerImpl::mutex
  asio::steady_timer timer;     // between two checks
  asio::steady_timer deadline;  // of the check in flight
  bool removed{false};
};

}  // namespace

struct detail::HealthCheckerImpl : std::enable_shared_from_this<detail::HealthCheckerImpl> {
  HealthCheckerImpl(asio::io_context& io_context, Pool& p, HealthCheckOptions o)
      : io(io_context), pool(p), defaults(std::move(o)), rng(std::random_device{}()) {}

  void add(const std::shared_ptr<Backend>& backend);
  void remove(const std::shared_ptr<Backend>& backend);
  HealthCheckOptions effective(const Backend& backend) const;  // takes mutex
  HealthCheckOptions effective(const HealthCheckOptions& base, const Backend& backend) const;
  milliseconds jitter(milliseconds interval, double share);
  asio::awaitable<void> loop(std::shared_ptr<Target> target);
  asio::awaitable<void> sleep(Target& target);
  asio::awaitable<std::string> check_once(Target& target, const HealthCheckOptions& options);

  asio::io_context& io;
  Pool& pool;
  mutable std::mutex mutex;  // guards defaults, targets and every Target::status
  HealthCheckOptions defaults;
  std::unordered_map<std::string, std::shared_ptr<Target>> targets;  // changed on the io thread only
  std::mt19937 rng;                                                  // io thread only
  std::uint64_t listener{0};
  bool running{false};
};

HealthCheckOptions detail::HealthCheckerImpl::effective(const Backend& backend) const {
  HealthCheckOptions base;
  {
    std::lock_guard lock(mutex);
    base = defaults;
  }
  return effective(base, backend);
}

HealthCheckOptions detail::HealthCheckerImpl::effective(const HealthCheckOptions& base, const Backend& backend) const {
  if (backend.check().empty()) return base;
  std::string error;
  auto own = apply_check_json(base, backend.check(), error);
  if (own) return *own;
  // Registration validated the object, so this happens only if a host set invalid defaults
  // through set_defaults() itself; the defaults then apply alone.
  detail::log(LogLevel::warn, "backend {}: health-check settings ignored: {}", backend.id(), error);
  return base;
}

milliseconds detail::HealthCheckerImpl::jitter(milliseconds interval, double share) {
  const auto span = static_cast<std::int64_t>(static_cast<double>(interval.count()) * share);
  if (span <= 0) return milliseconds::zero();
  return milliseconds(std::uniform_int_distribution<std::int64_t>(0, span)(rng));
}

void detail::HealthCheckerImpl::add(const std::shared_ptr<Backend>& backend) {
  if (!running || backend->state() == BackendState::draining) return;
  auto target = std::make_shared<Target>(io, backend, effective(*backend));
  {
    std::lock_guard lock(mutex);
    auto& slot = targets[backend->id()];
    if (slot && slot->backend == backend) return;  // already checked
    if (slot) slot->cancel();                      // an older backend with the same id
    slot = target;
  }
  asio::co_spawn(
      io, [self = shared_from_this(), target]() { return self->loop(target); },
      [](std::exception_ptr e) { detail::log_exception(e, "health checker"); });
}

void detail::HealthCheckerImpl::remove(const std::shared_ptr<Backend>& backend) {
  std::lock_guard lock(mutex);
  auto it = targets.find(backend->id());
  // Only the same backend object: a newer one with this id may already be checked.
  if (it == targets.end() || it->second->backend != backend) return;
  it->second->cancel();
  targets.erase(it);
}

// Waits until the target's timer expires. set_defaults() may move the expiry earlier, which
// interrupts the wait; the wait then goes on until the new expiry.
asio::awaitable<void> detail::HealthCheckerImpl::sleep(Target& target) {
  do {
    co_await target.timer.async_wait(use_nothrow);
  } while (running && !target.removed && std::chrono::steady_clock::now() < target.timer.expiry());
}

asio::awaitable<void> detail::HealthCheckerImpl::loop(std::shared_ptr<Target> target) {
  auto self = shared_from_this();
  // The first check comes at a random point of the first interval, so that backends added
  // together (at start, say) are not all checked in the same millisecond.
  target->timer.expires_after(jitter(effective(*target->backend).interval, 1.0));
  co_await sleep(*target);
  while (running && !target->removed) {
    const HealthCheckOptions options = effective(*target->backend);
    const std::string failure = co_await check_once(*target, options);
    if (!running || target->removed) break;

    target->rise_fall.set_thresholds(options.failures, options.passes);
    const auto change = target->rise_fall.record(failure.empty());
    const std::string& id = target->backend->id();
    std::string reason;
    if (change == RiseFall::Change::went_down) {
      reason = fmt::format("{} failed checks: {}", options.failures, failure);
      detail::log(LogLevel::warn, "backend {} down after {}", id, reason);
      pool.set_state(id, BackendState::down);
    } else if (change == RiseFall::Change::went_up) {
      reason = fmt::format("{} passed checks", options.passes);
      detail::log(LogLevel::info, "backend {} up after {}", id, reason);
      pool.set_state(id, BackendState::active);
    }
    // An ejected backend (outlier detection) comes back once its time is over and it has
    // passed `passes` checks in a row since it was ejected.
    if (target->backend->ejected()) {
      target->ejected_passes = failure.empty() ? target->ejected_passes + 1 : 0;
      if (target->ejected_passes >= options.passes && pool.reinstate(id)) {
        reason = fmt::format("{} passed checks after an ejection", target->ejected_passes);
        detail::log(LogLevel::info, "backend {} back after {}", id, reason);
        target->ejected_passes = 0;
      }
    } else {
      target->ejected_passes = 0;
    }
    {
      std::lock_guard lock(mutex);
      auto& s = target->status;
      s.up = target->rise_fall.up();
      s.consecutive_failures = target->rise_fall.consecutive_failures();
      s.consecutive_passes = target->rise_fall.consecutive_passes();
      ++s.checks;
      s.last_result = failure.empty() ? "ok" : failure;
      if (!reason.empty()) {
        s.last_change_reason = std::move(reason);
        s.last_change = std::chrono::system_clock::now();
      }
    }
    // ±10 % around the interval keeps backends from falling into step over time.
    const milliseconds wait = options.interval - options.interval / 10 + jitter(options.interval, 0.2);
    target->timer.expires_after(wait);
    co_await sleep(*target);
  }
}

asio::awaitable<std::string> detail::HealthCheckerImpl::check_once(Target& target, const HealthCheckOptions& options) {
  const Backend& backend = *target.backend;
  using namespace asio::experimental::awaitable_operators;
  std::error_code ec;
  const auto address = asio::ip::make_address(backend.host(), ec);
  if (ec) co_return "invalid address";
  const tcp::endpoint endpoint(address, backend.port());
  tcp::socket socket(io);
  asio::steady_timer& deadline = target.deadline;
  deadline.expires_after(options.timeout);
  const std::string timed_out = fmt::format("timed out after {} ms", options.timeout.count());

  auto connected = co_await (socket.async_connect(endpoint, use_nothrow) || deadline.async_wait(use_nothrow));
  if (connected.index() == 1) co_return timed_out;
  if (auto [cec] = std::get<0>(connected); cec) co_return cec.message();
  if (options.type == HealthCheckOptions::Type::tcp) co_return std::string{};

  const std::string host = options.host.empty() ? backend.id() : options.host;
  const std::string request = fmt::format(
      "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: weldr-health-check\r\nConnection: close\r\n\r\n", options.path, host);
  auto sent =
      co_await (asio::async_write(socket, asio::buffer(request), use_nothrow) || deadline.async_wait(use_nothrow));
  if (sent.index() == 1) co_return timed_out;
  if (auto [wec, n] = std::get<0>(sent); wec) co_return wec.message();

  // Only the status line matters: "HTTP/1.x NNN ..." within the first 4 KiB.
  std::string head;
  char chunk[1024];
  while (head.find("\r\n") == std::string::npos && head.size() < 4096) {
    auto got = co_await (socket.async_read_some(asio::buffer(chunk), use_nothrow) || deadline.async_wait(use_nothrow));
    if (got.index() == 1) co_return timed_out;
    auto [rec, n] = std::get<0>(got);
    if (rec) {
      std::string why = head.empty() ? "closed without a response" : "truncated status line";
      co_return why;
    }
    head.append(chunk, n);
  }
  int status = 0;
  const bool valid = head.size() >= 12 && head.compare(0, 7, "HTTP/1.") == 0 && head[8] == ' ' &&
                     std::from_chars(head.data() + 9, head.data() + 12, status).ptr == head.data() + 12;
  if (!valid) co_return std::string("invalid status line");
  if (status < options.expect_min || status > options.expect_max) co_return fmt::format("status {}", status);
  co_return std::string{};
}

// ---------------------------------------------------------------------------------------------

HealthChecker::HealthChecker(asio::io_context& io, Pool& pool, HealthCheckOptions defaults)
    : impl_(std::make_shared<detail::HealthCheckerImpl>(io, pool, std::move(defaults))) {}

HealthChecker::~HealthChecker() {
  stop();
}

void HealthChecker::start() {
  if (impl_->running) return;
  impl_->running = true;
  impl_->pool.set_return_needs_checks(true);
  // Pool changes may come from any thread; the checker's own state lives on its io_context.
  std::weak_ptr<detail::HealthCheckerImpl> weak = impl_;
  impl_->listener = impl_->pool.subscribe([weak](const PoolEvent& event) {
    auto impl = weak.lock();
    if (!impl) return;
    asio::post(impl->io, [impl, event] {
      if (event.kind == PoolEvent::Kind::added) {
        impl->add(event.backend);
      } else if (event.kind == PoolEvent::Kind::removed || event.kind == PoolEvent::Kind::erased) {
        impl->remove(event.backend);
      }
    });
  });
  for (const auto& backend : impl_->pool.list())
    impl_->add(backend);
}

void HealthChecker::stop() {
  if (!impl_->running) return;
  impl_->running = false;
  impl_->pool.unsubscribe(impl_->listener);
  impl_->pool.set_return_needs_checks(false);
  std::lock_guard lock(impl_->mutex);
  for (auto& [id, target] : impl_->targets)
    target->cancel();
  impl_->targets.clear();
}

HealthCheckOptions HealthChecker::defaults() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->defaults;
}

void HealthChecker::set_defaults(const HealthCheckOptions& options) {
  {
    std::lock_guard lock(impl_->mutex);
    impl_->defaults = options;
  }
  // Wake every backend that is waiting out the old interval.
  asio::post(impl_->io, [impl = impl_] {
    // Backends waiting out a longer interval are checked within the new one, each at a random
    // point of it, so that a change does not check every backend at the same instant.
    std::lock_guard lock(impl->mutex);
    for (auto& [id, target] : impl->targets) {
      const auto interval = impl->effective(impl->defaults, *target->backend).interval;
      const auto next = std::chrono::steady_clock::now() + impl->jitter(interval, 1.0);
      if (next < target->timer.expiry()) target->timer.expires_at(next);
    }
  });
}

std::optional<HealthStatus> HealthChecker::status(std::string_view id) const {
  std::lock_guard lock(impl_->mutex);
  auto it = impl_->targets.find(std::string(id));
  if (it == impl_->targets.end()) return std::nullopt;
  return it->second->status;
}

}  // namespace weldr
