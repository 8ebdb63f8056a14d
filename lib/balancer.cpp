#include <weldr/balancer.hpp>
#include <weldr/pool.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>

namespace weldr {

// ---------------------------------------------------------------------------------------------
// Hashing and randomness

namespace {

std::uint64_t mix64(std::uint64_t x) noexcept {  // the splitmix64 finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

struct ThreadRandom {
  ThreadRandom() {
    std::random_device device;
    state = (static_cast<std::uint64_t>(device()) << 32) ^ device() ^
            std::hash<std::thread::id>{}(std::this_thread::get_id());
  }
  std::uint64_t next() noexcept { return mix64(state += 0x9e3779b97f4a7c15ULL); }
  std::uint64_t state;
};

thread_local ThreadRandom t_random;

}  // namespace

std::uint64_t hash_key(std::string_view text) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (const char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return mix64(h);
}

// ---------------------------------------------------------------------------------------------
// Candidates

std::uint64_t Candidates::random() noexcept {
  return t_random.next();
}

double Candidates::random_unit() noexcept {
  return static_cast<double>(random() >> 11) * 0x1.0p-53;
}

std::int64_t Candidates::now_ns() const noexcept {
  if (now_ == 0) {
    now_ = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
               .count();
  }
  return now_;
}

bool Candidates::eligible(std::size_t i) const noexcept {
  const Backend& b = *backends_[i];
  const BackendState state = b.state();
  if (state == BackendState::draining) return false;
  if (!context_.include_down && (state != BackendState::active || b.ejected())) return false;
  return std::find(context_.exclude.begin(), context_.exclude.end(), &b) == context_.exclude.end();
}

unsigned Candidates::static_weight(std::size_t i) const noexcept {
  return backends_[i]->weight();
}

double Candidates::warmth(std::size_t i) const noexcept {
  if (warmup_.count() <= 0) return 1.0;
  const std::int64_t age = now_ns() - backends_[i]->usable_since_ns();
  if (age >= warmup_.count()) return 1.0;
  // Never quite zero: a backend in slow start still gets some traffic to prove itself with.
  return std::max(0.1, static_cast<double>(age) / static_cast<double>(warmup_.count()));
}

double Candidates::weight(std::size_t i) const noexcept {
  return static_weight(i) * warmth(i);
}

// ---------------------------------------------------------------------------------------------
// Policies

namespace {

/// Interleaved weighted round robin: the cursor walks positions; position p offers backend
/// p % n in round (p / n) % max_weight, which it takes when its weight exceeds the round. So
/// over n × max_weight positions each backend is offered exactly `weight` times, interleaved.
/// A backend in slow start accepts an offer with probability warmth().
class RoundRobin final : public Balancer {
 public:
  std::string_view name() const noexcept override { return "round_robin"; }

  std::size_t pick(const Candidates& c, const PickContext&) override {
    const std::size_t n = c.size();
    const std::uint64_t max_weight = c.max_weight();
    const std::uint64_t period = n * max_weight;
    std::uint64_t start = cursor_.load(std::memory_order_relaxed);
    std::size_t chosen = none;
    std::uint64_t chosen_at = 0;
    for (std::uint64_t k = 0; k < period; ++k) {
      const std::uint64_t position = start + k;
      const std::size_t i = position % n;
      if ((position / n) % max_weight >= c.static_weight(i) || !c.eligible(i)) continue;
      const double warmth = c.warmth(i);
      if (warmth < 1.0 && Candidates::random_unit() >= warmth) {
        if (chosen == none) {  // every offer declined (all in slow start): still answer
          chosen = i;
          chosen_at = position;
        }
        continue;
      }
      chosen = i;
      chosen_at = position;
      break;
    }
    if (chosen == none) return none;
    // Another thread may have moved the cursor meanwhile; then both may pick the same backend
    // once, which costs a little evenness and no correctness.
    cursor_.compare_exchange_strong(start, chosen_at + 1, std::memory_order_relaxed);
    return chosen;
  }

 private:
  std::atomic<std::uint64_t> cursor_{0};
};

/// A backend in slow start accepts being chosen with probability warmth() / `reference` (the
/// warmth of the best alternative): at light load the load-based policies would otherwise never
/// choose a backend whose weight is scaled down, and backends equally cold (all of them, just
/// after a start) decline nothing among themselves.
bool declines(double warmth, double reference) noexcept {
  return warmth < reference && Candidates::random_unit() * reference >= warmth;
}

/// Fewest requests in flight relative to weight (nginx's least_conn); ties take turns in
/// proportion to their weights.
class LeastConn final : public Balancer {
 public:
  std::string_view name() const noexcept override { return "least_conn"; }

  std::size_t pick(const Candidates& c, const PickContext&) override {
    // One turn per pick, also for the second choice, so that declines do not skew the turns.
    const std::uint64_t turn = turn_.fetch_add(1, std::memory_order_relaxed);
    const std::size_t chosen = least_loaded(c, none, turn);
    if (chosen == none) return none;
    const double warmth = c.warmth(chosen);
    if (warmth >= 1.0) return chosen;
    const std::size_t other = least_loaded(c, chosen, turn);
    if (other == none || !declines(warmth, c.warmth(other))) return chosen;
    return other;
  }

 private:
  static double load_of(const Candidates& c, std::size_t i) noexcept {
    return static_cast<double>(c[i].active_requests()) / c.static_weight(i);
  }

  static std::size_t least_loaded(const Candidates& c, std::size_t skip, std::uint64_t turn) {
    // First the lowest load and the total weight of the backends that share it, then the
    // turn-th of those counted by weight: at light load (all idle) weights are honoured.
    double best_load = 0;
    std::uint64_t tie_weight = 0;
    for (std::size_t i = 0; i < c.size(); ++i) {
      if (i == skip || !c.eligible(i)) continue;
      const double load = load_of(c, i);
      if (tie_weight == 0 || load < best_load) {
        best_load = load;
        tie_weight = c.static_weight(i);
      } else if (load == best_load) {
        tie_weight += c.static_weight(i);
      }
    }
    if (tie_weight == 0) return none;
    turn %= tie_weight;
    for (std::size_t i = 0; i < c.size(); ++i) {
      if (i == skip || !c.eligible(i) || load_of(c, i) != best_load) continue;
      if (turn < c.static_weight(i)) return i;
      turn -= c.static_weight(i);
    }
    // In-flight counts moved between the two passes: the first backend at the lowest load now.
    std::size_t best = none;
    for (std::size_t i = 0; i < c.size(); ++i) {
      if (i != skip && c.eligible(i) && (best == none || load_of(c, i) < load_of(c, best))) best = i;
    }
    return best;
  }

  std::atomic<std::uint64_t> turn_{0};
};

/// Power of two choices: two distinct eligible backends drawn at random in proportion to their
/// weights; the one with the lower cost wins, cost = (requests in flight + 1) × latency
/// average, and a tie goes to the first drawn (unless the winner is in slow start and declines).
class PowerOfTwo final : public Balancer {
 public:
  std::string_view name() const noexcept override { return "p2c"; }

  std::size_t pick(const Candidates& c, const PickContext&) override {
    // The eligible candidates and their cumulative weights, per thread (no allocation once warm).
    thread_local std::vector<std::pair<std::size_t, std::uint64_t>> eligible;
    eligible.clear();
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < c.size(); ++i) {
      if (!c.eligible(i)) continue;
      total += c.static_weight(i);
      eligible.emplace_back(i, total);
    }
    if (eligible.empty()) return none;
    if (eligible.size() == 1) return eligible[0].first;
    const std::size_t a = draw(eligible, Candidates::random() % total);
    // The second from the others: draw over the total less the first one's weight, skipping it.
    const std::uint64_t first_weight = eligible[a].second - (a == 0 ? 0 : eligible[a - 1].second);
    std::uint64_t r = Candidates::random() % (total - first_weight);
    if (r >= eligible[a].second - first_weight) r += first_weight;
    const std::size_t b = draw(eligible, r);
    const std::size_t x = eligible[a].first;
    const std::size_t y = eligible[b].first;
    double lx = c[x].latency_ewma();
    double ly = c[y].latency_ewma();
    // A backend without a measurement yet is taken to be as fast as the other one.
    if (lx == 0.0) lx = ly;
    if (ly == 0.0) ly = lx;
    if (lx == 0.0) lx = ly = 1.0;  // neither measured: requests in flight alone decide
    const double cx = static_cast<double>(c[x].active_requests() + 1) * lx;
    const double cy = static_cast<double>(c[y].active_requests() + 1) * ly;
    const std::size_t winner = cy < cx ? y : x;
    const std::size_t loser = winner == x ? y : x;
    return declines(c.warmth(winner), c.warmth(loser)) ? loser : winner;
  }

 private:
  // The position whose cumulative weight first exceeds r.
  static std::size_t draw(const std::vector<std::pair<std::size_t, std::uint64_t>>& eligible, std::uint64_t r) {
    const auto it = std::upper_bound(eligible.begin(), eligible.end(), r,
                                     [](std::uint64_t value, const auto& entry) { return value < entry.second; });
    return static_cast<std::size_t>(it - eligible.begin());
  }
};

/// Weighted random.
class Random final : public Balancer {
 public:
  std::string_view name() const noexcept override { return "random"; }

  std::size_t pick(const Candidates& c, const PickContext&) override {
    double total = 0;
    for (std::size_t i = 0; i < c.size(); ++i) {
      if (c.eligible(i)) total += c.weight(i);
    }
    if (total <= 0) return none;
    double target = Candidates::random_unit() * total;
    std::size_t last = none;
    for (std::size_t i = 0; i < c.size(); ++i) {
      if (!c.eligible(i)) continue;
      last = i;
      target -= c.weight(i);
      if (target < 0) return i;
    }
    return last;  // rounding left a crumb at the end
  }
};

/// Consistent hashing by weighted rendezvous (highest random weight): each backend scores
/// -weight / ln(u) for a uniform u drawn from hash(key, backend); the highest score wins. A
/// backend that joins or leaves moves only the keys it wins or won (about 1/N), and an
/// ineligible backend simply passes its keys to each key's runner-up. Slow start does not
/// apply: a key must stay where it is. Requests without a key go round robin.
class ConsistentHash final : public Balancer {
 public:
  std::string_view name() const noexcept override { return "hash"; }
  bool uses_key() const noexcept override { return true; }

  std::size_t pick(const Candidates& c, const PickContext& context) override {
    if (!context.key) return fallback_.pick(c, context);
    std::size_t best = none;
    double best_score = 0;
    for (std::size_t i = 0; i < c.size(); ++i) {
      if (!c.eligible(i)) continue;
      const std::uint64_t h = mix64(*context.key ^ c[i].id_hash());
      const double u = (static_cast<double>(h >> 11) + 0.5) * 0x1.0p-53;  // in (0, 1)
      const double score = -static_cast<double>(c.static_weight(i)) / std::log(u);
      if (best == none || score > best_score) {
        best = i;
        best_score = score;
      }
    }
    return best;
  }

 private:
  RoundRobin fallback_;
};

}  // namespace

std::unique_ptr<Balancer> make_balancer(std::string_view name) {
  if (name == "round_robin") return std::make_unique<RoundRobin>();
  if (name == "least_conn") return std::make_unique<LeastConn>();
  if (name == "p2c") return std::make_unique<PowerOfTwo>();
  if (name == "random") return std::make_unique<Random>();
  if (name == "hash") return std::make_unique<ConsistentHash>();
  throw std::invalid_argument("unknown balancing policy \"" + std::string(name) +
                              "\" (expected round_robin, least_conn, p2c, random or hash)");
}

std::vector<std::string_view> balancer_names() {
  return {"round_robin", "least_conn", "p2c", "random", "hash"};
}

}  // namespace weldr
