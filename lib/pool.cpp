#include "log_internal.hpp"

#include <weldr/error.hpp>
#include <weldr/pool.hpp>

#include <asio/ip/address.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <stdexcept>

namespace weldr {

// ---------------------------------------------------------------------------------------------
// Addresses

std::string BackendAddress::id() const {
  const bool v6 = host.find(':') != std::string::npos;
  std::string out = v6 ? "[" + host + "]" : host;
  out += ':';
  out += std::to_string(port);
  return out;
}

std::optional<BackendAddress> parse_backend_url(std::string_view text, std::error_code& ec) {
  ec = errc::invalid_url;
  std::string_view rest = text;
  bool had_scheme = false;
  if (const auto sep = rest.find("://"); sep != std::string_view::npos) {
    std::string_view scheme = rest.substr(0, sep);
    if (scheme != "http" && scheme != "HTTP") return std::nullopt;
    rest.remove_prefix(sep + 3);
    had_scheme = true;
  }
  // Only a bare "/" may follow the authority: weldr forwards the client's path unchanged.
  if (const auto slash = rest.find('/'); slash != std::string_view::npos) {
    if (rest.substr(slash) != "/") return std::nullopt;
    rest = rest.substr(0, slash);
  }
  std::string_view host;
  std::string_view port_text;
  if (!rest.empty() && rest.front() == '[') {
    const auto close = rest.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = rest.substr(1, close - 1);
    rest.remove_prefix(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return std::nullopt;
      port_text = rest.substr(1);
      if (port_text.empty()) return std::nullopt;
    }
  } else {
    const auto colon = rest.rfind(':');
    host = rest.substr(0, colon);
    if (host.find(':') != std::string_view::npos) return std::nullopt;  // IPv6 needs brackets
    if (colon != std::string_view::npos) {
      port_text = rest.substr(colon + 1);
      if (port_text.empty()) return std::nullopt;
    }
  }
  if (host.empty()) return std::nullopt;
  // Backends are registered by address: a load balancer for dynamic fleets should not
  // depend on name resolution at request time.
  std::error_code addr_ec;
  const auto address = asio::ip::make_address(std::string(host), addr_ec);
  if (addr_ec) return std::nullopt;

  unsigned port = 80;
  if (!port_text.empty()) {
    auto [end, perr] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (perr != std::errc{} || end != port_text.data() + port_text.size() || port == 0 || port > 65535) {
      return std::nullopt;
    }
  } else if (!had_scheme) {
    return std::nullopt;  // "10.0.0.1" alone is too likely a mistake to guess a port for
  }

  BackendAddress out{address.to_string(), static_cast<std::uint16_t>(port), {}};
  out.url = "http://" + out.id();
  ec.clear();
  return out;
}

std::string_view to_string(BackendState state) noexcept {
  switch (state) {
    case BackendState::active: return "active";
    case BackendState::down: return "down";
    case BackendState::draining: return "draining";
  }
  return "unknown";
}

namespace {

std::int64_t steady_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Backend::Backend(BackendAddress address, std::string check, unsigned weight)
    : address_(std::move(address)),
      id_(address_.id()),
      check_(std::move(check)),
      weight_(std::clamp(weight, 1U, 256U)),
      id_hash_(hash_key(id_)),
      active_since_(steady_ns()) {}

bool Backend::ejected() const noexcept {
  if (held_.load(std::memory_order_acquire)) return true;
  const std::int64_t until = ejected_until_.load(std::memory_order_relaxed);
  return until != 0 && until > steady_ns();
}

std::chrono::milliseconds Backend::ejection_left() const noexcept {
  const std::int64_t left = ejected_until_.load(std::memory_order_relaxed) - steady_ns();
  return left > 0 ? std::chrono::ceil<std::chrono::milliseconds>(std::chrono::nanoseconds(left))
                  : std::chrono::milliseconds(0);
}

std::int64_t Backend::usable_since_ns() const noexcept {
  // Back from an ejection that simply ran out: the ramp starts where the ejection ended.
  return std::max(active_since_.load(std::memory_order_relaxed), ejected_until_.load(std::memory_order_relaxed));
}

// ---------------------------------------------------------------------------------------------
// Pool

struct Pool::Snapshot {
  std::vector<std::shared_ptr<Backend>> backends;
  std::uint64_t version{0};
  std::shared_ptr<Balancer> balancer;
  std::chrono::nanoseconds slow_start{0};
  unsigned max_weight{1};
};

namespace {

std::atomic<std::uint64_t> g_next_pool_uid{1};

// Each thread keeps the snapshot it last saw for a few pools, so that a pick costs one atomic
// load of the pool's version while nothing changes; the mutex is taken once per change.
struct CachedSnapshot {
  std::uint64_t pool_uid{0};
  std::uint64_t version{0};
  std::shared_ptr<const void> snapshot;
};
thread_local std::array<CachedSnapshot, 8> t_snapshots;
thread_local unsigned t_next_slot = 0;

}  // namespace

Pool::Pool() : uid_(g_next_pool_uid.fetch_add(1)) {
  auto first = std::make_shared<Snapshot>();
  first->balancer = make_balancer("round_robin");
  current_ = std::move(first);
}

Pool::~Pool() {
  for (auto& slot : t_snapshots) {
    if (slot.pool_uid == uid_) slot = {};
  }
}

std::shared_ptr<const Pool::Snapshot> Pool::snapshot() const {
  const std::uint64_t version = version_.load(std::memory_order_acquire);
  CachedSnapshot* slot = nullptr;
  for (auto& s : t_snapshots) {
    if (s.pool_uid == uid_) {
      if (s.version == version) return std::static_pointer_cast<const Snapshot>(s.snapshot);
      slot = &s;
      break;
    }
  }
  if (slot == nullptr) slot = &t_snapshots[t_next_slot++ % t_snapshots.size()];
  std::shared_ptr<const Snapshot> fresh;
  {
    std::lock_guard lock(mutex_);
    fresh = current_;
  }
  *slot = {uid_, fresh->version, fresh};
  return fresh;
}

void Pool::publish(std::vector<std::shared_ptr<Backend>> backends) {
  auto next = std::make_shared<Snapshot>();
  next->backends = std::move(backends);
  next->balancer = current_->balancer;
  next->slow_start = current_->slow_start;
  for (const auto& b : next->backends)
    next->max_weight = std::max(next->max_weight, b->weight());
  install(std::move(next));
}

void Pool::install(std::shared_ptr<Snapshot> next) {
  next->version = current_->version + 1;
  current_ = std::move(next);
  version_.store(current_->version, std::memory_order_release);
}

bool Pool::add(const BackendAddress& address, std::string check, unsigned weight) {
  auto backend = std::make_shared<Backend>(address, std::move(check), weight);
  std::lock_guard notify_lock(notify_mutex_);
  {
    std::lock_guard lock(mutex_);
    const auto& list = current_->backends;
    if (std::any_of(list.begin(), list.end(), [&](const auto& b) { return b->id() == backend->id(); })) {
      return false;
    }
    auto next = list;
    next.push_back(backend);
    publish(std::move(next));
  }
  notify(PoolEvent::Kind::added, std::move(backend));
  return true;
}

bool Pool::add(std::string_view url) {
  std::error_code ec;
  auto address = parse_backend_url(url, ec);
  if (!address) throw std::invalid_argument("invalid backend URL: " + std::string(url));
  return add(*address);
}

bool Pool::remove(std::string_view id) {
  std::lock_guard notify_lock(notify_mutex_);
  std::shared_ptr<Backend> backend;
  bool erased = false;
  {
    std::lock_guard lock(mutex_);
    const auto& list = current_->backends;
    auto it = std::find_if(list.begin(), list.end(), [&](const auto& b) { return b->id() == id; });
    if (it == list.end() || (*it)->state() == BackendState::draining) return false;
    backend = *it;
    // Sequentially consistent with end_request(): whichever of the two sees the other's write
    // last takes the drained backend out, so it is never left behind.
    backend->state_.store(BackendState::draining, std::memory_order_seq_cst);
    if (backend->in_flight_.load(std::memory_order_seq_cst) == 0) {
      auto next = list;
      next.erase(next.begin() + (it - list.begin()));
      publish(std::move(next));
      erased = true;
    } else {
      publish(list);  // readers notice the state change through a new version
    }
  }
  notify(PoolEvent::Kind::removed, backend);
  if (erased) notify(PoolEvent::Kind::erased, std::move(backend));
  return true;
}

bool Pool::set_weight(std::string_view id, unsigned weight) {
  weight = std::clamp(weight, 1U, 256U);
  std::lock_guard notify_lock(notify_mutex_);
  std::shared_ptr<Backend> backend;
  {
    std::lock_guard lock(mutex_);
    const auto& list = current_->backends;
    auto it = std::find_if(list.begin(), list.end(), [&](const auto& b) { return b->id() == id; });
    if (it == list.end() || (*it)->state() == BackendState::draining) return false;
    backend = *it;
    if (backend->weight_.exchange(weight, std::memory_order_relaxed) == weight) return true;
    publish(list);  // the snapshot's largest weight may change
  }
  notify(PoolEvent::Kind::reweighted, std::move(backend));
  return true;
}

bool Pool::set_state(std::string_view id, BackendState state) {
  if (state == BackendState::draining) return remove(id);
  std::lock_guard notify_lock(notify_mutex_);
  auto backend = find(id);
  if (!backend) return false;
  BackendState expected = backend->state();
  while (expected != BackendState::draining) {
    if (backend->state_.compare_exchange_weak(expected, state, std::memory_order_acq_rel)) {
      if (expected != state && state == BackendState::active) {
        const std::int64_t now = steady_ns();
        backend->active_since_.store(now, std::memory_order_relaxed);  // slow start from here
        // Passing the active checks after being down outweighs an ejection from before.
        if (backend->ejected_until_.load(std::memory_order_relaxed) > now) {
          backend->ejected_until_.store(now, std::memory_order_relaxed);
        }
        backend->held_.store(false, std::memory_order_release);
      }
      if (expected != state) notify(PoolEvent::Kind::state_changed, std::move(backend));
      return true;
    }
  }
  return false;
}

void Pool::erase_drained(const Backend& backend) {
  std::lock_guard notify_lock(notify_mutex_);
  std::shared_ptr<Backend> gone;
  {
    std::lock_guard lock(mutex_);
    const auto& list = current_->backends;
    auto it = std::find_if(list.begin(), list.end(), [&](const auto& b) { return b.get() == &backend; });
    if (it == list.end()) return;
    gone = *it;
    auto next = list;
    next.erase(next.begin() + (it - list.begin()));
    publish(std::move(next));
  }
  notify(PoolEvent::Kind::erased, std::move(gone));
}

void Pool::notify(PoolEvent::Kind kind, std::shared_ptr<Backend> backend) {
  if (listeners_.empty()) return;
  const PoolEvent event{kind, std::move(backend)};
  for (const auto& [handle, listener] : listeners_)
    listener(event);
}

std::uint64_t Pool::subscribe(Listener listener) {
  std::lock_guard notify_lock(notify_mutex_);
  listeners_.emplace_back(next_listener_, std::move(listener));
  return next_listener_++;
}

void Pool::unsubscribe(std::uint64_t handle) {
  std::lock_guard notify_lock(notify_mutex_);
  std::erase_if(listeners_, [&](const auto& entry) { return entry.first == handle; });
}

std::shared_ptr<Backend> Pool::find(std::string_view id) const {
  auto snap = snapshot();
  for (const auto& b : snap->backends) {
    if (b->id() == id) return b;
  }
  return nullptr;
}

std::vector<std::shared_ptr<Backend>> Pool::list() const {
  return snapshot()->backends;
}

std::size_t Pool::size() const {
  return snapshot()->backends.size();
}

std::shared_ptr<Backend> Pool::pick(const PickContext& context) {
  auto snap = snapshot();
  const auto& list = snap->backends;
  if (list.empty()) return nullptr;
  const Candidates candidates(list, context, snap->slow_start, snap->max_weight);
  const std::size_t chosen = snap->balancer->pick(candidates, context);
  if (chosen >= list.size()) return nullptr;
  return list[chosen];
}

std::shared_ptr<Backend> Pool::pick(bool include_down) {
  PickContext context;
  context.include_down = include_down;
  return pick(context);
}

void Pool::set_balancer(std::shared_ptr<Balancer> balancer) {
  if (!balancer) throw std::invalid_argument("Pool::set_balancer: null balancer");
  std::lock_guard lock(mutex_);
  auto next = std::make_shared<Snapshot>(*current_);
  next->balancer = std::move(balancer);
  install(std::move(next));
}

std::shared_ptr<Balancer> Pool::balancer() const {
  return snapshot()->balancer;
}

void Pool::set_slow_start(std::chrono::milliseconds window) {
  std::lock_guard lock(mutex_);
  auto next = std::make_shared<Snapshot>(*current_);
  next->slow_start = std::max(window, std::chrono::milliseconds(0));
  install(std::move(next));
}

std::chrono::milliseconds Pool::slow_start() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(snapshot()->slow_start);
}

void Pool::set_outlier_detection(const OutlierOptions& options) {
  std::lock_guard lock(mutex_);
  outlier_ = options;
  outlier_.max_ejection_percent = std::min(outlier_.max_ejection_percent, 100U);
  outlier_failures_.store(options.consecutive_failures, std::memory_order_relaxed);
}

OutlierOptions Pool::outlier_detection() const {
  std::lock_guard lock(mutex_);
  return outlier_;
}

void Pool::set_return_needs_checks(bool on) {
  return_needs_checks_.store(on, std::memory_order_relaxed);
  if (on) return;
  // Without a checker, nobody would ever reinstate a held backend: its time alone decides.
  for (const auto& backend : list())
    backend->held_.store(false, std::memory_order_release);
}

bool Pool::reinstate(std::string_view id) {
  std::lock_guard notify_lock(notify_mutex_);
  auto backend = find(id);
  if (!backend || !backend->held_.load(std::memory_order_acquire) || backend->ejection_left().count() > 0) {
    return false;
  }
  backend->active_since_.store(steady_ns(), std::memory_order_relaxed);
  backend->held_.store(false, std::memory_order_release);
  notify(PoolEvent::Kind::returned, std::move(backend));
  return true;
}

void Pool::maybe_eject(Backend& backend) {
  std::lock_guard notify_lock(notify_mutex_);
  if (backend.ejected() || backend.state() != BackendState::active) return;
  OutlierOptions options;
  std::shared_ptr<const Snapshot> snap;
  {
    std::lock_guard lock(mutex_);
    options = outlier_;
    snap = current_;
  }
  if (options.consecutive_failures == 0 ||
      backend.consecutive_failures_.load(std::memory_order_relaxed) < options.consecutive_failures) {
    return;
  }
  std::shared_ptr<Backend> self;
  std::size_t ejected = 0;
  for (const auto& b : snap->backends) {
    if (b.get() == &backend) self = b;
    if (b->ejected()) ++ejected;
  }
  if (!self) return;
  // The cap keeps a pool-wide problem (or a bad deploy) from ejecting everyone.
  if ((ejected + 1) * 100 > snap->backends.size() * options.max_ejection_percent) {
    detail::log(LogLevel::debug, "backend {}: not ejected, {} of {} already are", backend.id(), ejected,
                snap->backends.size());
    return;
  }
  const std::int64_t now = steady_ns();
  const std::int64_t base = std::chrono::nanoseconds(options.base_ejection_time).count();
  // Each ejection in a row lasts longer; a base time without one takes a step back.
  std::int64_t level = backend.ejection_level_.load(std::memory_order_relaxed);
  const std::int64_t last_end = backend.ejected_until_.load(std::memory_order_relaxed);
  if (last_end != 0 && base > 0) level = std::max<std::int64_t>(0, level - (now - last_end) / base);
  ++level;
  const std::int64_t limit = std::max(base, std::chrono::nanoseconds(options.max_ejection_time).count());
  const std::int64_t duration = level > limit / std::max<std::int64_t>(base, 1) ? limit : base * level;
  backend.ejection_level_.store(static_cast<std::uint32_t>(level), std::memory_order_relaxed);
  backend.ejected_until_.store(now + duration, std::memory_order_relaxed);
  backend.held_.store(return_needs_checks_.load(std::memory_order_relaxed), std::memory_order_release);
  backend.ejections_.fetch_add(1, std::memory_order_relaxed);
  const auto failures = backend.consecutive_failures_.exchange(0, std::memory_order_relaxed);
  detail::log(LogLevel::warn, "backend {} ejected for {} ms after {} failed requests in a row", backend.id(),
              duration / 1000000, failures);
  notify(PoolEvent::Kind::ejected, std::move(self));
}

void Pool::begin_request(Backend& backend) noexcept {
  backend.requests_.fetch_add(1, std::memory_order_relaxed);
  backend.in_flight_.fetch_add(1, std::memory_order_seq_cst);
}

void Pool::end_request(Backend& backend, bool ok, std::chrono::nanoseconds latency) {
  if (ok) {
    backend.successes_.fetch_add(1, std::memory_order_relaxed);
    if (backend.consecutive_failures_.load(std::memory_order_relaxed) != 0) {
      backend.consecutive_failures_.store(0, std::memory_order_relaxed);
    }
  } else {
    backend.failures_.fetch_add(1, std::memory_order_relaxed);
    const unsigned threshold = outlier_failures_.load(std::memory_order_relaxed);
    const auto failures = backend.consecutive_failures_.fetch_add(1, std::memory_order_relaxed) + 1;
    if (threshold != 0 && failures >= threshold) maybe_eject(backend);
  }
  if (latency.count() > 0 || !ok) {
    // A failure weighs at least as much as a slow answer: a backend that fails fast must not
    // look attractive to the latency-aware policy.
    constexpr double alpha = 0.2;
    const double seconds = std::chrono::duration<double>(latency).count();
    double old = backend.ewma_.load(std::memory_order_relaxed);
    double next;
    do {
      const double sample = ok ? seconds : std::max({seconds, 2 * old, 0.1});
      next = old == 0.0 ? sample : old + alpha * (sample - old);
    } while (!backend.ewma_.compare_exchange_weak(old, next, std::memory_order_relaxed));
  }
  if (backend.in_flight_.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
      backend.state_.load(std::memory_order_seq_cst) == BackendState::draining) {
    erase_drained(backend);
  }
}

}  // namespace weldr
