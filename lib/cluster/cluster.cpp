#include <weldr/cluster.hpp>

#include <weldr/health_checker.hpp>
#include <weldr/pool.hpp>

#include "api/json.hpp"
#include "cluster/etcd_client.hpp"
#include "cluster/etcd_codec.hpp"
#include "cluster/virtual_ip.hpp"
#include "log_internal.hpp"
#include "net/use_nothrow.hpp"

#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <stdexcept>

namespace weldr {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
namespace c = cluster;

namespace {

using net::use_nothrow;
constexpr std::string_view kHealthCheck = "health-check";
// Gratuitous ARPs (or unsolicited neighbour advertisements) after taking the address, as
// keepalived sends several: one lost frame must not leave clients on the old node.
constexpr std::array<milliseconds, 5> kAnnouncements{milliseconds(0), milliseconds(100), milliseconds(300),
                                                     milliseconds(1000), milliseconds(2000)};
constexpr milliseconds kTick{50};

std::string registration_json(const BackendAddress& address, unsigned weight, std::string_view check) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
  w.StartObject();
  w.Key("url");
  w.String(address.url.c_str());
  w.Key("weight");
  w.Uint(weight);
  w.EndObject();
  std::string out(buffer.GetString(), buffer.GetSize());
  if (!check.empty()) {
    out.pop_back();
    out += ",\"check\":";
    out += check;  // already a compact JSON object (Pool keeps it so)
    out += '}';
  }
  return out;
}

std::string node_json(const ClusterOptions& options) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
  w.StartObject();
  w.Key("name");
  w.String(options.node.c_str());
  w.Key("proxy");
  w.String(options.proxy_address.c_str());
  w.Key("admin");
  w.String(options.admin_address.c_str());
  w.EndObject();
  return {buffer.GetString(), buffer.GetSize()};
}

ClusterNodeInfo parse_node(const std::string& name, const std::string& value) {
  ClusterNodeInfo info;
  info.name = name;
  rapidjson::Document doc;
  doc.Parse(value.data(), value.size());
  if (doc.HasParseError() || !doc.IsObject()) return info;
  auto field = [&](const char* key) {
    const auto m = doc.FindMember(key);
    return m != doc.MemberEnd() && m->value.IsString() ? std::string(m->value.GetString()) : std::string();
  };
  info.proxy = field("proxy");
  info.admin = field("admin");
  return info;
}

StoreResult unavailable(const std::string& why) {
  return {StoreResult::Status::unavailable, fmt::format("cluster store unavailable: {}", why)};
}

}  // namespace

std::string_view to_string(ClusterRole role) noexcept {
  switch (role) {
    case ClusterRole::standalone: return "standalone";
    case ClusterRole::passive: return "passive";
    case ClusterRole::active: return "active";
  }
  return "?";
}

std::string validate(const ClusterOptions& options) {
  std::string error;
  if (!c::parse_endpoints(options.etcd, error)) return error;
  if (!c::valid_name(options.name)) {
    return fmt::format("invalid cluster name '{}' (1-64 of A-Z a-z 0-9 . _ -)", options.name);
  }
  if (!c::valid_name(options.node, true)) {
    return fmt::format("invalid node name '{}' (1-64 of A-Z a-z 0-9 . _ - :)", options.node);
  }
  if (options.lease_ttl < std::chrono::seconds(1) || options.lease_ttl > std::chrono::seconds(60)) {
    return fmt::format("lease TTL {}s out of range (1s to 60s)", options.lease_ttl.count());
  }
  if (options.vip.empty() != options.vip_interface.empty()) {
    return "a virtual IP needs both an address (--vip) and an interface (--vip-interface)";
  }
  if (!options.vip.empty() && !c::parse_vip(options.vip, error)) return fmt::format("--vip: {}", error);
  if (options.request_timeout < milliseconds(100)) return "the etcd request timeout must be at least 100ms";
  return {};
}

struct detail::ClusterImpl : std::enable_shared_from_this<detail::ClusterImpl> {
  ClusterImpl(asio::io_context& control, Pool& p, ClusterOptions o, HealthChecker* h)
      : io(control),
        pool(p),
        checker(h),
        options(std::move(o)),
        keys(options.name),
        client(control.get_executor(), client_options(options)),
        rng(std::random_device{}()) {
    if (!options.vip.empty()) {
      std::string error;
      vip.emplace(*c::parse_vip(options.vip, error), options.vip_interface);
    }
    if (checker != nullptr) {
      base_health = checker->defaults();
      applied_health = to_json(base_health);
    }
  }

  static c::EtcdClientOptions client_options(const ClusterOptions& o) {
    c::EtcdClientOptions out;
    std::string error;
    out.endpoints = *c::parse_endpoints(o.etcd, error);
    out.connect_timeout = std::min(o.request_timeout, milliseconds(1000));
    out.user = o.etcd_user;
    out.password = o.etcd_password;
    return out;
  }

  // ---- the connection to etcd and the pool that follows it --------------------------------
  asio::awaitable<void> run();
  asio::awaitable<std::string> session();
  asio::awaitable<bool> seed(std::string& error);
  asio::awaitable<bool> grant(std::string& error);
  bool on_watch_line(std::string_view line);
  void apply_snapshot(const std::vector<c::KeyValue>& kvs);
  void apply(const c::KeyValue& kv, bool removed);
  void apply_registration(const std::string& id);
  void apply_health(const std::string* json);
  void set_connected(bool on, const std::string& why);

  // ---- election -----------------------------------------------------------------------------
  asio::awaitable<void> keepalive_loop();
  asio::awaitable<void> tick_loop();
  asio::awaitable<void> campaign();
  asio::awaitable<void> announce_loop(std::uint64_t term);
  asio::awaitable<std::string> resign();
  void spawn_campaign();
  bool lease_fresh() const;
  milliseconds ttl() const { return milliseconds(1000 * std::max<std::int64_t>(granted_ttl, 1)); }
  milliseconds fence_margin() const { return std::max(ttl() / 4, milliseconds(250)); }
  void abandon_lease(const std::string& why);
  void become_active();
  void step_down(const std::string& why);
  void notify_role();
  void stop_all();

  // ---- store --------------------------------------------------------------------------------
  asio::awaitable<void> wait_applied(std::int64_t revision);
  asio::awaitable<c::CallResult> txn(const std::string& body) { return commit("/v3/kv/txn", body); }
  // `maybe_twice` is set when an attempt that may have been applied was sent again.
  asio::awaitable<c::CallResult> commit(std::string_view path, const std::string& body, bool* maybe_twice = nullptr);

  template <typename F>
  void spawn(F&& f, const char* what) {
    asio::co_spawn(io, std::forward<F>(f), [what](std::exception_ptr e) { detail::log_exception(e, what); });
  }
  asio::awaitable<void> sleep(milliseconds d) {
    asio::steady_timer t(io, d);
    // Erased also when the frame is destroyed without resuming (its io_context went first).
    struct Registered {
      std::set<asio::steady_timer*>& set;
      asio::steady_timer* timer;
      ~Registered() { set.erase(timer); }
    } registered{timers, &t};
    timers.insert(&t);
    co_await t.async_wait(use_nothrow);
  }
  // Ends the running watch on purpose (not an etcd failure): the session starts over at once.
  void restart_watch() {
    restart_requested = true;
    client.cancel_watch();
  }

  asio::io_context& io;
  Pool& pool;
  HealthChecker* checker;
  ClusterOptions options;
  c::Keys keys;
  c::EtcdClient client;
  std::optional<c::VirtualIp> vip;
  HealthCheckOptions base_health;  // the checker's settings from the host, used when etcd has none
  std::string applied_health;
  std::mt19937 rng;
  std::set<asio::steady_timer*> timers;  // sleeping coroutines, woken by stop()

  bool started{false};
  bool stopped{false};
  bool seeded{false};
  bool connected{false};
  bool ever_connected{false};
  std::string disconnected_why;
  c::WatchCursor cursor;
  std::map<std::string, std::string> registrations;  // id -> registration JSON, as in etcd
  std::map<std::string, ClusterNodeInfo> nodes;
  std::optional<std::string> leader;
  std::int64_t leader_lease{0};
  std::int64_t leader_mod_revision{0};

  std::int64_t lease_id{0};
  std::int64_t granted_ttl{0};
  Clock::time_point renewed_at{};  // when the last successful grant or keepalive was sent
  ClusterRole role_now{ClusterRole::passive};
  std::uint64_t role_changes{0};
  std::uint64_t term{0};  // counts activations, so an old announce loop stops
  bool campaigning{false};
  bool resigning{false};
  Clock::time_point last_quick_retry{};
  bool restart_requested{false};  // the watch was ended by this node, not by etcd
  bool watching{false};           // this session got as far as its watch
  Clock::time_point hold_off_until{};
  std::uint64_t pool_subscription{0};
  std::vector<std::string> logged_bad;  // registrations already reported as unreadable
};

// ---------------------------------------------------------------------------------------------

asio::awaitable<void> detail::ClusterImpl::run() {
  auto self = shared_from_this();
  milliseconds backoff{100};
  while (!stopped) {
    restart_requested = false;
    watching = false;
    const auto began = Clock::now();
    const std::string why = co_await session();
    if (stopped) break;
    // A watch that ran and ended (a member went away, the lease was replaced, the view must be
    // read again) is reopened at once, and the node counts as connected until that fails too;
    // but not twice within a second, so that a watch etcd cancels at once cannot busy-loop.
    if ((watching || restart_requested || why == "resync") && Clock::now() - last_quick_retry > milliseconds(1000)) {
      last_quick_retry = Clock::now();
      continue;
    }
    set_connected(false, why == "resync" ? std::string("etcd cancels the watch again at once") : why);
    if (Clock::now() - began > std::chrono::seconds(5)) backoff = milliseconds(100);
    // Full jitter around the backoff, so that nodes that lost etcd together do not come back
    // in step.
    std::uniform_int_distribution<std::int64_t> jitter(backoff.count() / 2, backoff.count() * 3 / 2);
    co_await sleep(milliseconds(jitter(rng)));
    backoff = std::min(backoff * 2, milliseconds(2000));
  }
}

asio::awaitable<std::string> detail::ClusterImpl::session() {
  auto self = shared_from_this();
  std::string error;
  if (!seeded && !co_await seed(error)) co_return error;
  if (lease_id == 0 && !co_await grant(error)) co_return error;
  const std::int64_t lease = lease_id;
  {
    // Membership, on the lease: it disappears with the node. Node names must be unique: a key
    // held on another lease is another live node of the same name, or this node's previous
    // run that has not expired yet; either way this node waits until the key is gone.
    const std::string key = keys.node(options.node);
    const std::vector<c::Compare> free{{key, c::Compare::Target::create_revision, 0, {}}};
    const std::vector<c::Operation> put{{c::Operation::Kind::put, key, node_json(options), lease, {}}};
    const std::vector<c::Operation> read{{c::Operation::Kind::range, key, {}, 0, {}}};
    auto r = co_await txn(c::txn_request(free, put, read));
    if (!r.ok()) co_return r.error;
    auto result = c::parse_txn(r.body, error);
    if (!result) co_return error;
    if (!result->succeeded && !result->ranges.empty() && !result->ranges[0].empty() &&
        result->ranges[0][0].lease != lease) {
      co_return fmt::format(
          "the node name {} is held by another live node (or by this node's previous run, until "
          "its lease of {} s expires)",
          options.node, granted_ttl);
    }
  }
  if (lease != lease_id) co_return "the lease changed";
  {
    auto r = co_await client.call("/v3/kv/range", c::range_request(keys.prefix(), c::prefix_end(keys.prefix())), true,
                                  options.request_timeout);
    if (!r.ok()) co_return r.error;
    auto range = c::parse_range(r.body, error);
    if (!range) co_return error;
    apply_snapshot(range->kvs);
    cursor.resynced(range->revision);
  }
  if (lease != lease_id) co_return "the lease changed";
  set_connected(true, {});
  spawn_campaign();
  watching = true;
  std::string resync;
  const std::string why = co_await client.watch(
      c::watch_request(keys.prefix(), c::prefix_end(keys.prefix()), cursor.start_revision()),
      [this, &resync](std::string_view line) {
        if (on_watch_line(line)) return true;
        resync = "resync";
        return false;
      },
      options.request_timeout);
  if (!resync.empty()) co_return resync;
  co_return why;
}

bool detail::ClusterImpl::on_watch_line(std::string_view line) {
  if (stopped) return false;
  std::string error;
  auto message = c::parse_watch_message(line, error);
  if (!message) {
    detail::log(LogLevel::warn, "cluster: {}; reading the pool again", error);
    return false;
  }
  switch (cursor.on_message(*message)) {
    case c::WatchCursor::Action::none: return true;
    case c::WatchCursor::Action::resync:
      detail::log(LogLevel::info, "cluster: the watch was canceled ({}); reading the pool again",
                  message->compact_revision != 0 ? fmt::format("revision {} was compacted", message->compact_revision)
                                                 : message->cancel_reason);
      return false;
    case c::WatchCursor::Action::apply:
      for (const c::WatchEvent& e : message->events)
        apply(e.kv, e.type == c::WatchEvent::Type::remove);
      return true;
  }
  return true;
}

asio::awaitable<bool> detail::ClusterImpl::seed(std::string& error) {
  auto self = shared_from_this();
  // The first node of a new cluster brings what it knows (--server, its state file); the
  // "initialized" key makes this happen once in the cluster's life, so a server deleted later
  // is never brought back by a restart. Looked up first: later starts send nothing more.
  auto look = co_await client.call("/v3/kv/range", c::range_request(keys.initialized()), true, options.request_timeout);
  if (!look.ok()) {
    error = look.error;
    co_return false;
  }
  auto existing = c::parse_range(look.body, error);
  if (!existing) co_return false;
  if (!existing->kvs.empty()) {
    seeded = true;
    co_return true;
  }
  std::vector<c::Operation> puts;
  for (const auto& b : pool.list()) {
    if (b->state() == BackendState::draining) continue;
    puts.push_back({c::Operation::Kind::put,
                    keys.server(b->id()),
                    registration_json(b->address(), b->weight(), b->check()),
                    0,
                    {}});
  }
  // etcd refuses a transaction of more than --max-txn-ops (128 by default) operations: the
  // first one marks the cluster and carries what fits; the rest follow one by one, each only
  // if the server is not registered yet (the API may be in use by then).
  constexpr std::size_t kFirst = 100;
  std::vector<c::Operation> first;
  first.push_back({c::Operation::Kind::put, keys.initialized(), options.node, 0, {}});
  first.insert(first.end(), puts.begin(), puts.begin() + static_cast<std::ptrdiff_t>(std::min(kFirst, puts.size())));
  const std::vector<c::Compare> empty{{keys.initialized(), c::Compare::Target::create_revision, 0, {}}};
  auto r = co_await txn(c::txn_request(empty, first));
  if (!r.ok()) {
    error = r.error;
    co_return false;
  }
  auto result = c::parse_txn(r.body, error);
  if (!result) co_return false;
  if (result->succeeded) {
    for (std::size_t i = kFirst; i < puts.size(); ++i) {
      const std::vector<c::Compare> absent{{puts[i].key, c::Compare::Target::create_revision, 0, {}}};
      const std::vector<c::Operation> one(1, puts[i]);
      r = co_await txn(c::txn_request(absent, one));
      if (!r.ok()) {
        detail::log(LogLevel::error, "cluster {}: seeding stopped after {} of {} server(s): {}", options.name, i,
                    puts.size(), r.error);
        break;
      }
    }
    detail::log(LogLevel::info, "cluster {}: new cluster, seeded with {} server(s) from this node", options.name,
                puts.size());
  }
  seeded = true;
  co_return true;
}

asio::awaitable<bool> detail::ClusterImpl::grant(std::string& error) {
  auto self = shared_from_this();
  const auto sent = Clock::now();
  auto r = co_await client.call("/v3/lease/grant", c::grant_request(options.lease_ttl.count()), true,
                                options.request_timeout);
  if (!r.ok()) {
    error = r.error;
    co_return false;
  }
  auto lease = c::parse_lease(r.body, error);
  if (!lease) co_return false;
  if (lease->ttl != granted_ttl) {
    detail::log(LogLevel::info, "cluster {}: lease TTL {}s{}", options.name, lease->ttl,
                lease->ttl != options.lease_ttl.count()
                    ? fmt::format(" (asked for {}s; etcd raises a TTL below 1.5 x its election timeout)",
                                  options.lease_ttl.count())
                    : std::string());
  }
  lease_id = lease->id;
  granted_ttl = lease->ttl;
  renewed_at = sent;
  co_return true;
}

void detail::ClusterImpl::set_connected(bool on, const std::string& why) {
  if (on == connected && (on || ever_connected || !disconnected_why.empty())) return;
  connected = on;
  if (on) {
    ever_connected = true;
    disconnected_why.clear();
    detail::log(LogLevel::info, "cluster {}: connected to etcd ({}), pool at revision {}, {} server(s)", options.name,
                client.watch_endpoint().empty() ? "ok" : client.watch_endpoint(), cursor.applied(),
                registrations.size());
    return;
  }
  disconnected_why = why;
  detail::log(LogLevel::warn,
              "cluster {}: etcd unavailable ({}); serving the last known pool, API writes fail until it is back",
              options.name, why);
}

void detail::ClusterImpl::apply_snapshot(const std::vector<c::KeyValue>& kvs) {
  registrations.clear();
  nodes.clear();
  const std::string* health = nullptr;
  std::optional<c::KeyValue> leader_kv;
  std::string name;
  for (const c::KeyValue& kv : kvs) {
    switch (keys.classify(kv.key, name)) {
      case c::Keys::Kind::server: registrations[name] = kv.value; break;
      case c::Keys::Kind::node: nodes[name] = parse_node(name, kv.value); break;
      case c::Keys::Kind::config:
        if (name == kHealthCheck) health = &kv.value;
        break;
      case c::Keys::Kind::leader: leader_kv = kv; break;
      case c::Keys::Kind::other: break;
    }
  }
  // Servers the cluster no longer has leave; the others are added or updated.
  for (const auto& b : pool.list()) {
    if (b->state() != BackendState::draining && !registrations.contains(b->id())) {
      if (pool.remove(b->id())) detail::log(LogLevel::info, "cluster: server {} is no longer registered", b->id());
    }
  }
  for (const auto& [id, value] : registrations)
    apply_registration(id);
  apply_health(health);
  if (leader_kv) {
    apply(*leader_kv, false);
  } else {
    c::KeyValue gone;
    gone.key = keys.leader();
    apply(gone, true);
  }
}

void detail::ClusterImpl::apply(const c::KeyValue& kv, bool removed) {
  std::string name;
  switch (keys.classify(kv.key, name)) {
    case c::Keys::Kind::server:
      if (removed) {
        registrations.erase(name);
        if (pool.remove(name)) detail::log(LogLevel::info, "cluster: server {} removed", name);
      } else {
        registrations[name] = kv.value;
        apply_registration(name);
      }
      return;
    case c::Keys::Kind::config:
      if (name == kHealthCheck) apply_health(removed ? nullptr : &kv.value);
      return;
    case c::Keys::Kind::node:
      if (removed) {
        nodes.erase(name);
      } else {
        nodes[name] = parse_node(name, kv.value);
      }
      return;
    case c::Keys::Kind::leader:
      if (removed) {
        leader.reset();
        leader_lease = 0;
        if (role_now == ClusterRole::active && !resigning) step_down("the leader key was deleted");
        spawn_campaign();
        return;
      }
      leader = kv.value;
      leader_lease = kv.lease;
      leader_mod_revision = kv.mod_revision;
      if (kv.value == options.node && kv.lease == lease_id && lease_id != 0) {
        if (role_now != ClusterRole::active && lease_fresh()) become_active();
      } else if (role_now == ClusterRole::active && !resigning) {
        step_down(fmt::format("{} holds the leader key", kv.value));
      }
      return;
    case c::Keys::Kind::other: return;
  }
}

void detail::ClusterImpl::apply_registration(const std::string& id) {
  const auto it = registrations.find(id);
  if (it == registrations.end()) return;
  std::string error;
  const auto reg = api::parse_registration(it->second, error);
  if (!reg || reg->address.id() != id) {
    if (std::find(logged_bad.begin(), logged_bad.end(), id) == logged_bad.end()) {
      logged_bad.push_back(id);
      detail::log(LogLevel::error, "cluster: registration {} in etcd is not usable ({}); ignored", id,
                  reg ? "its URL does not match its key" : error);
    }
    return;
  }
  const unsigned weight = reg->weight == 0 ? 1 : reg->weight;
  if (pool.add(reg->address, reg->check, weight)) {
    detail::log(LogLevel::info, "cluster: server {} registered", id);
    return;
  }
  const auto existing = pool.find(id);
  // A draining server is added again once it has left (the Pool's erased event).
  if (existing && existing->state() != BackendState::draining && existing->weight() != weight) {
    pool.set_weight(id, weight);
  }
}

void detail::ClusterImpl::apply_health(const std::string* json) {
  if (checker == nullptr) return;
  HealthCheckOptions next = base_health;
  if (json != nullptr) {
    std::string error;
    auto parsed = apply_check_json(base_health, *json, error);
    if (!parsed) {
      detail::log(LogLevel::error, "cluster: health-check settings in etcd are not usable ({}); kept", error);
      return;
    }
    next = *parsed;
  }
  std::string text = to_json(next);
  if (text == applied_health) return;
  applied_health = std::move(text);
  checker->set_defaults(next);
  detail::log(LogLevel::info, "cluster: health-check settings now {}", applied_health);
}

// ---- election -------------------------------------------------------------------------------

bool detail::ClusterImpl::lease_fresh() const {
  return lease_id != 0 && Clock::now() < renewed_at + ttl() - fence_margin();
}

void detail::ClusterImpl::spawn_campaign() {
  if (campaigning || stopped || resigning || role_now == ClusterRole::active || leader || !lease_fresh() ||
      Clock::now() < hold_off_until) {
    return;
  }
  campaigning = true;
  spawn([self = shared_from_this()]() { return self->campaign(); }, "cluster: campaign");
}

asio::awaitable<void> detail::ClusterImpl::campaign() {
  auto self = shared_from_this();
  struct Done {
    bool& flag;
    ~Done() { flag = false; }
  } done{campaigning};
  const std::int64_t lease = lease_id;
  // Whoever creates the leader key first is active: etcd orders the transactions.
  const std::vector<c::Compare> free{{keys.leader(), c::Compare::Target::create_revision, 0, {}}};
  const std::vector<c::Operation> take{{c::Operation::Kind::put, keys.leader(), options.node, lease, {}}};
  const std::vector<c::Operation> look{{c::Operation::Kind::range, keys.leader(), {}, 0, {}}};
  auto r = co_await txn(c::txn_request(free, take, look));
  if (!r.ok() || stopped) co_return;
  std::string error;
  auto result = c::parse_txn(r.body, error);
  if (!result) co_return;
  if (!result->succeeded && !result->ranges.empty() && !result->ranges[0].empty()) {
    const c::KeyValue& kv = result->ranges[0][0];
    if (kv.value != options.node || kv.lease == lease) co_return;
    // The key names this node on an older lease: a previous run of this node that has not
    // expired yet. Node names are unique, so it is ours to take over.
    const std::vector<c::Compare> same{{keys.leader(), c::Compare::Target::mod_revision, kv.mod_revision, {}}};
    r = co_await txn(c::txn_request(same, take));
    if (!r.ok() || stopped) co_return;
    result = c::parse_txn(r.body, error);
    if (!result || !result->succeeded) co_return;
  } else if (!result->succeeded) {
    co_return;
  }
  if (lease != lease_id || !lease_fresh()) co_return;  // the lease changed meanwhile; the watch tells
  leader = options.node;
  leader_lease = lease;
  leader_mod_revision = result->revision;
  become_active();
}

void detail::ClusterImpl::become_active() {
  if (role_now == ClusterRole::active || stopped) return;
  role_now = ClusterRole::active;
  ++role_changes;
  ++term;
  detail::log(LogLevel::info, "cluster {}: this node ({}) is now active", options.name, options.node);
  if (vip) {
    std::error_code ec;
    vip->add(ec);
    if (ec) {
      detail::log(LogLevel::error, "cluster: cannot add the virtual IP {} on {}: {}", vip->address().text(),
                  vip->interface_name(), ec.message());
    } else {
      spawn([self = shared_from_this(), t = term]() { return self->announce_loop(t); }, "cluster: announce");
    }
  }
  notify_role();
}

void detail::ClusterImpl::step_down(const std::string& why) {
  if (role_now != ClusterRole::active) return;
  role_now = ClusterRole::passive;
  ++role_changes;
  ++term;
  if (vip) {
    std::error_code ec;
    vip->remove(ec);
    if (ec) {
      detail::log(LogLevel::error, "cluster: cannot remove the virtual IP {} from {}: {}", vip->address().text(),
                  vip->interface_name(), ec.message());
    }
  }
  detail::log(LogLevel::info, "cluster {}: this node ({}) is now passive: {}", options.name, options.node, why);
  notify_role();
}

void detail::ClusterImpl::notify_role() {
  if (!options.on_role_change) return;
  try {
    options.on_role_change(role_now);
  } catch (const std::exception& e) {
    detail::log(LogLevel::error, "cluster: role-change callback failed: {}", e.what());
  }
}

asio::awaitable<void> detail::ClusterImpl::announce_loop(std::uint64_t my_term) {
  auto self = shared_from_this();
  milliseconds at{0};
  for (const milliseconds when : kAnnouncements) {
    if (when > at) co_await sleep(when - at);
    at = when;
    // A resigning node keeps the address only until the next node has announced it: it must not
    // announce it again meanwhile (clients would come back to a node about to leave).
    if (stopped || term != my_term || !vip || resigning) co_return;
    std::error_code ec;
    vip->announce(ec);
    if (ec && when == milliseconds(0)) {
      detail::log(LogLevel::warn, "cluster: cannot announce the virtual IP {} on {}: {}", vip->address().text(),
                  vip->interface_name(), ec.message());
    }
  }
}

void detail::ClusterImpl::abandon_lease(const std::string& why) {
  step_down(why);
  const std::int64_t old = lease_id;
  lease_id = 0;
  restart_watch();  // the session grants a new lease and registers again
  if (old == 0) return;
  // Revoking deletes the leader key at once, so another node need not wait for the TTL.
  spawn(
      [self = shared_from_this(), old]() -> asio::awaitable<void> {
        co_await self->client.call("/v3/lease/revoke", c::lease_request(old), true, self->options.request_timeout);
      },
      "cluster: revoke");
}

asio::awaitable<void> detail::ClusterImpl::keepalive_loop() {
  auto self = shared_from_this();
  Clock::time_point next = Clock::now();
  while (!stopped) {
    // Paced from the send times, not the answers: a slow answer must not delay the next try,
    // or a steady latency of a third of the TTL would let the lease go stale.
    const auto wait = std::chrono::duration_cast<milliseconds>(next - Clock::now());
    if (wait > milliseconds(0)) co_await sleep(wait);
    if (stopped) break;
    const std::int64_t id = lease_id;
    const auto sent = Clock::now();
    next = sent + ttl() / 3;
    if (id == 0) {
      next = sent + std::min(ttl() / 10, milliseconds(100));
      continue;
    }
    // To the member the watch is on, first: a member that has gone silent is found here, and
    // the watch moves (EtcdClient closes it when a call to its member fails).
    auto r = co_await client.call("/v3/lease/keepalive", c::lease_request(id), true,
                                  std::min(options.request_timeout, ttl() / 4), client.watch_endpoint());
    if (stopped || id != lease_id) continue;
    std::string error;
    auto lease = r.ok() ? c::parse_lease(r.body, error) : std::nullopt;
    if (!lease) {
      next = std::min(next, Clock::now() + std::min(ttl() / 10, milliseconds(100)));
      continue;
    }
    if (lease->ttl <= 0) {
      detail::log(LogLevel::warn, "cluster {}: etcd says this node's lease expired", options.name);
      abandon_lease("the lease expired");
      continue;
    }
    renewed_at = std::max(renewed_at, sent);
  }
}

asio::awaitable<void> detail::ClusterImpl::tick_loop() {
  auto self = shared_from_this();
  while (!stopped) {
    co_await sleep(kTick);
    if (stopped) break;
    // Fencing: etcd cannot expire the lease before renewed_at + TTL, so giving up the role a
    // margin before that means that two nodes never hold the address at once.
    if (role_now == ClusterRole::active && !lease_fresh()) {
      detail::log(LogLevel::warn,
                  "cluster {}: lease not renewed for {} ms; giving up the active role before etcd can elect another "
                  "node",
                  options.name, std::chrono::duration_cast<milliseconds>(Clock::now() - renewed_at).count());
      abandon_lease("lease not renewed in time");
    }
    // The leader key names this node on its live lease, but it is passive: a campaign won
    // while the lease looked stale for a moment. Nobody else can take the key, so take the role.
    if (role_now == ClusterRole::passive && !resigning && leader && *leader == options.node && lease_id != 0 &&
        leader_lease == lease_id && lease_fresh()) {
      become_active();
    }
    // A lease given up while the session was between calls: start over with a new one.
    if (lease_id == 0 && watching && !restart_requested) restart_watch();
    if (connected) spawn_campaign();
  }
}

asio::awaitable<std::string> detail::ClusterImpl::resign() {
  auto self = shared_from_this();
  if (role_now != ClusterRole::active) co_return "this node is not active";
  if (resigning) co_return "a resignation is already in progress";
  std::size_t others = 0;
  for (const auto& [name, node] : nodes)
    others += name != options.node ? 1 : 0;
  if (others == 0) co_return "no other node could take over";
  resigning = true;
  hold_off_until = Clock::now() + std::max(ttl() * 2, milliseconds(3000));
  const std::vector<c::Compare> ours{{keys.leader(), c::Compare::Target::value, 0, options.node}};
  const std::vector<c::Operation> drop{{c::Operation::Kind::remove, keys.leader(), {}, 0, {}}};
  auto r = co_await txn(c::txn_request(ours, drop));
  std::string error;
  if (!r.ok()) {
    error = fmt::format("cluster store unavailable: {}", r.error);
  } else if (!c::parse_txn(r.body, error)) {
    error = fmt::format("cluster store unavailable: {}", error);
  }
  // Whatever the answer said (a lost answer may hide a delete that was done, a failed compare
  // means the key is no longer this node's), the watch tells who holds the key now. Keep the
  // address until the next node is active, then a moment more for its announcement to reach
  // the clients, so that the handover loses no connection attempt.
  const auto deadline = Clock::now() + ttl() + milliseconds(1000);
  auto ours_still = [&] { return leader && *leader == options.node && leader_lease == lease_id && lease_id != 0; };
  while (!stopped && Clock::now() < deadline && !(leader && *leader != options.node)) {
    if (!error.empty() && ours_still()) break;  // the delete did not happen: stay active
    co_await sleep(milliseconds(10));
  }
  const bool taken = leader && *leader != options.node;
  if (taken) co_await sleep(milliseconds(150));
  resigning = false;
  if (ours_still()) {
    // The key is still this node's: it stays active (stepping down would leave the cluster
    // with a leader key that nobody serves).
    hold_off_until = {};
    co_return error.empty() ? std::string("no other node took over in time") : error;
  }
  step_down(taken ? fmt::format("resigned; {} took over", *leader) : std::string("resigned"));
  if (taken) co_return std::string();
  co_return error.empty() ? std::string("no other node took over in time") : error;
}

asio::awaitable<c::CallResult> detail::ClusterImpl::commit(std::string_view path, const std::string& body,
                                                           bool* maybe_twice) {
  auto self = shared_from_this();
  // Every write weldr makes is safe to send twice (a transaction guarded by a compare, a put
  // of the same value, a delete), so a member that has no leader for a moment (an election
  // after another member failed) is waited out, within the one request timeout.
  const auto deadline = Clock::now() + options.request_timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    c::CallResult r = co_await client.call(path, body, true, std::max(left, milliseconds(1)));
    if (r.ok() || stopped || Clock::now() + milliseconds(100) >= deadline) co_return r;
    if (!c::transient(r)) co_return r;
    if (maybe_twice != nullptr && r.maybe_applied) *maybe_twice = true;
    co_await sleep(milliseconds(50));
  }
}

asio::awaitable<void> detail::ClusterImpl::wait_applied(std::int64_t revision) {
  auto self = shared_from_this();
  // The watch normally delivers our own change within milliseconds; the API answers from the
  // local pool, so wait for it (bounded: etcd has committed, the answer is right either way).
  const auto deadline = Clock::now() + milliseconds(1000);
  while (!stopped && cursor.applied() < revision && Clock::now() < deadline)
    co_await sleep(milliseconds(2));
}

// ---------------------------------------------------------------------------------------------

Cluster::Cluster(asio::io_context& control, Pool& pool, ClusterOptions options, HealthChecker* checker) {
  if (std::string error = validate(options); !error.empty()) throw std::invalid_argument(error);
  impl_ = std::make_shared<detail::ClusterImpl>(control, pool, std::move(options), checker);
}

Cluster::~Cluster() {
  stop();
}

void Cluster::start() {
  auto& impl = *impl_;
  if (impl.started) return;
  impl.started = true;
  if (impl.vip) {
    std::error_code ec;
    impl.vip->check(ec);
    if (ec) {
      detail::log(LogLevel::error, "cluster: virtual IP interface {}: {}", impl.vip->interface_name(), ec.message());
    }
    if (impl.vip->present(ec)) {
      detail::log(LogLevel::warn, "cluster: removing the virtual IP {} left on {} (this node starts passive)",
                  impl.vip->address().text(), impl.vip->interface_name());
      impl.vip->remove(ec);
    }
  }
  // A drained server that the cluster still has comes back (it was deleted and registered
  // again while it drained). The Pool may call this on any thread.
  std::weak_ptr<detail::ClusterImpl> weak = impl_;
  impl.pool_subscription = impl.pool.subscribe([weak, &io = impl.io](const PoolEvent& event) {
    if (event.kind != PoolEvent::Kind::erased) return;
    asio::post(io, [weak, id = event.backend->id()] {
      if (auto self = weak.lock(); self && !self->stopped && !self->pool.find(id)) self->apply_registration(id);
    });
  });
  impl.notify_role();
  impl.spawn([self = impl_]() { return self->run(); }, "cluster");
  impl.spawn([self = impl_]() { return self->keepalive_loop(); }, "cluster: keepalive");
  impl.spawn([self = impl_]() { return self->tick_loop(); }, "cluster: fencing");
}

void Cluster::shutdown(std::function<void()> done) {
  auto impl = impl_;
  if (!impl->started || impl->stopped) {
    stop();
    if (done) asio::post(impl->io, std::move(done));
    return;
  }
  impl->spawn(
      [impl, done = std::move(done)]() mutable -> asio::awaitable<void> {
        if (impl->role_now == ClusterRole::active) {
          const std::string why = co_await impl->resign();
          if (!why.empty()) detail::log(LogLevel::info, "cluster: handover on shutdown: {}", why);
        }
        impl->hold_off_until = Clock::time_point::max();
        impl->step_down("shutting down");
        if (impl->lease_id != 0) {
          const std::int64_t id = impl->lease_id;
          impl->lease_id = 0;
          co_await impl->client.call("/v3/lease/revoke", c::lease_request(id), true,
                                     std::min(impl->options.request_timeout, milliseconds(1000)));
        }
        impl->stop_all();
        if (done) done();
      },
      "cluster: shutdown");
}

void detail::ClusterImpl::stop_all() {
  if (stopped) return;
  step_down("stopping");
  stopped = true;
  client.close();
  for (auto* t : timers)
    t->cancel();
  if (pool_subscription != 0) pool.unsubscribe(pool_subscription);
  pool_subscription = 0;
}

void Cluster::stop() {
  impl_->stop_all();
}

asio::awaitable<std::string> Cluster::resign() {
  auto impl = impl_;
  co_return co_await impl->resign();
}

ClusterRole Cluster::role() const noexcept {
  return impl_->role_now;
}

ClusterStatus Cluster::status() const {
  const auto& impl = *impl_;
  ClusterStatus s;
  s.name = impl.options.name;
  s.node = impl.options.node;
  s.role = impl.role_now;
  s.leader = impl.leader;
  for (const auto& ep : impl.client.endpoints())
    s.endpoints.push_back(ep.url);
  s.connected = impl.connected;
  s.revision = impl.cursor.applied();
  s.lease_ttl = impl.lease_id != 0 ? impl.granted_ttl : 0;
  s.role_changes = impl.role_changes;
  for (const auto& [name, node] : impl.nodes) {
    ClusterNodeInfo info = node;
    info.role = impl.leader && *impl.leader == name ? "active" : "passive";
    s.nodes.push_back(std::move(info));
  }
  return s;
}

asio::awaitable<StoreResult> Cluster::add(BackendAddress address, std::string check, unsigned weight) {
  auto impl = impl_;
  const std::string id = address.id();
  const std::string key = impl->keys.server(id);
  const std::vector<c::Compare> absent{{key, c::Compare::Target::create_revision, 0, {}}};
  const std::vector<c::Operation> put{
      {c::Operation::Kind::put, key, registration_json(address, weight == 0 ? 1 : weight, check), 0, {}}};
  const std::vector<c::Operation> read{{c::Operation::Kind::range, key, {}, 0, {}}};
  // Registering an existing server changes its weight; the compare on its revision makes a
  // concurrent change from another node retry rather than be lost.
  for (int attempt = 0; attempt < 5; ++attempt) {
    auto r = co_await impl->txn(c::txn_request(absent, put, read));
    if (!r.ok()) co_return unavailable(r.error);
    std::string error;
    auto result = c::parse_txn(r.body, error);
    if (!result) co_return unavailable(error);
    if (result->succeeded) {
      co_await impl->wait_applied(result->revision);
      co_return StoreResult{StoreResult::Status::created, {}};
    }
    if (result->ranges.empty() || result->ranges[0].empty()) continue;  // deleted meanwhile: try again
    const c::KeyValue& kv = result->ranges[0][0];
    const auto existing = api::parse_registration(kv.value, error);
    if (weight == 0 || (existing && existing->weight == weight)) {
      co_await impl->wait_applied(kv.mod_revision);
      co_return StoreResult{StoreResult::Status::unchanged, {}};
    }
    const std::string kept_check = existing ? existing->check : check;
    const std::vector<c::Compare> same{{key, c::Compare::Target::mod_revision, kv.mod_revision, {}}};
    const std::vector<c::Operation> reweigh{
        {c::Operation::Kind::put, key, registration_json(address, weight, kept_check), 0, {}}};
    r = co_await impl->txn(c::txn_request(same, reweigh));
    if (!r.ok()) co_return unavailable(r.error);
    result = c::parse_txn(r.body, error);
    if (!result) co_return unavailable(error);
    if (result->succeeded) {
      co_await impl->wait_applied(result->revision);
      co_return StoreResult{StoreResult::Status::updated, {}};
    }
  }
  co_return StoreResult{StoreResult::Status::conflict, fmt::format("server {} keeps changing; try again", id)};
}

asio::awaitable<StoreResult> Cluster::remove(std::string id) {
  auto impl = impl_;
  bool maybe_twice = false;
  auto r = co_await impl->commit("/v3/kv/deleterange", c::delete_request(impl->keys.server(id)), &maybe_twice);
  if (!r.ok()) co_return unavailable(r.error);
  std::string error;
  auto result = c::parse_delete(r.body, error);
  if (!result) co_return unavailable(error);
  // Nothing deleted after a first attempt that may have deleted it: it is gone, as asked.
  if (result->deleted == 0 && !maybe_twice) {
    co_return StoreResult{StoreResult::Status::not_found, fmt::format("no server {}", id)};
  }
  co_await impl->wait_applied(result->revision);
  co_return StoreResult{StoreResult::Status::removed, {}};
}

asio::awaitable<StoreResult> Cluster::set_health_check(HealthCheckOptions options) {
  auto impl = impl_;
  if (impl->checker == nullptr) co_return StoreResult{StoreResult::Status::not_found, "health checks are not enabled"};
  auto r = co_await impl->commit("/v3/kv/put", c::put_request(impl->keys.config(kHealthCheck), to_json(options)));
  if (!r.ok()) co_return unavailable(r.error);
  std::string error;
  const auto revision = c::parse_revision(r.body, error);
  if (!revision) co_return unavailable(error);
  co_await impl->wait_applied(*revision);
  co_return StoreResult{StoreResult::Status::updated, {}};
}

}  // namespace weldr
