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

Backend::Backend(BackendAddress address, std::string check)
    : address_(std::move(address)), id_(address_.id()), check_(std::move(check)) {}

// ---------------------------------------------------------------------------------------------
// Pool

struct Pool::Snapshot {
  std::vector<std::shared_ptr<Backend>> backends;
  std::uint64_t version{0};
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

Pool::Pool() : uid_(g_next_pool_uid.fetch_add(1)), current_(std::make_shared<const Snapshot>()) {}

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
  next->version = current_->version + 1;
  current_ = std::move(next);
  version_.store(current_->version, std::memory_order_release);
}

bool Pool::add(const BackendAddress& address, std::string check) {
  auto backend = std::make_shared<Backend>(address, std::move(check));
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

bool Pool::set_state(std::string_view id, BackendState state) {
  if (state == BackendState::draining) return remove(id);
  std::lock_guard notify_lock(notify_mutex_);
  auto backend = find(id);
  if (!backend) return false;
  BackendState expected = backend->state();
  while (expected != BackendState::draining) {
    if (backend->state_.compare_exchange_weak(expected, state, std::memory_order_acq_rel)) {
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

std::shared_ptr<Backend> Pool::pick(bool include_down) {
  auto snap = snapshot();
  const auto& list = snap->backends;
  const std::size_t n = list.size();
  if (n == 0) return nullptr;
  const std::uint64_t start = next_.fetch_add(1, std::memory_order_relaxed);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& b = list[(start + i) % n];
    if (b->usable() || (include_down && b->state() == BackendState::down)) return b;
  }
  return nullptr;
}

void Pool::begin_request(Backend& backend) noexcept {
  backend.requests_.fetch_add(1, std::memory_order_relaxed);
  backend.in_flight_.fetch_add(1, std::memory_order_seq_cst);
}

void Pool::end_request(Backend& backend, bool ok) {
  (ok ? backend.successes_ : backend.failures_).fetch_add(1, std::memory_order_relaxed);
  if (backend.in_flight_.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
      backend.state_.load(std::memory_order_seq_cst) == BackendState::draining) {
    erase_drained(backend);
  }
}

}  // namespace weldr
