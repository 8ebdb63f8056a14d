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

/// A backend in slow start accepts being chosen with probability warmth(): at light load the
/// load-based policies would otherwise never choose a backend whose weight is scaled down.
bool declines(const Candidates& c, std::size_t i) noexcept {
  const double warmth = c.warmth(i);
  return warmth < 1.0 && Candidates::random_unit() >= warmth;
}

/// Fewest requests in flight relative to weight; ties take turns (round robin among them).
class LeastConn final : public Balancer {
 public:
  std::string_view name() const noexcept override { return "least_conn"; }

  std::size_t pick(const Candidates& c, const PickContext&) override {
    // One turn per pick, also for the second choice, so that declines do not skew the turns.
    const std::uint64_t turn = turn_.fetch_add(1, std::memory_order_relaxed);
    const std::size_t chosen = least_loaded(c, none, turn);
    if (chosen == none || !declines(c, chosen)) return chosen;
    const std::size_t other = least_loaded(c, chosen, turn);
    return other == none ? chosen : other;
  }

 private:
  static double load_of(const Candidates& c, std::size_t i) noexcept {
    return static_cast<double>(c[i].active_requests() + 1) / c.static_weight(i);
  }

  static std::size_t least_loaded(const Candidates& c, std::size_t skip, std::uint64_t turn) {
    // First the lowest load and how many share it, then the turn-th of those.
    double best_load = 0;
    std::uint64_t ties = 0;
    for (std::size_t i = 0; i < c.size(); ++i) {
      if (i == skip || !c.eligible(i)) continue;
      const double load = load_of(c, i);
      if (ties == 0 || load < best_load) {
        best_load = load;
        ties = 1;
      } else if (load == best_load) {
        ++ties;
      }
    }
    if (ties == 0) return none;
    turn %= ties;
    for (std::size_t i = 0; i < c.size(); ++i) {
      if (i == skip || !c.eligible(i) || load_of(c, i) != best_load) continue;
      if (turn-- == 0) return i;
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

/// Collects the eligible candidates into a per-thread vector (no allocation once warm).
const std::vector<std::size_t>& eligible_indices(const Candidates& c) {
  thread_local std::vector<std::size_t> indices;
  indices.clear();
  for (std::size_t i = 0; i < c.size(); ++i) {
    if (c.eligible(i)) indices.push_back(i);
  }
  return indices;
}

/// Power of two choices: two distinct eligible backends at random; the one with the lower
/// cost wins, cost = (requests in flight + 1) × latency average / weight (unless it is in slow
/// start and declines).
class PowerOfTwo final : public Balancer {
 public:
  std::string_view name() const noexcept override { return "p2c"; }

  std::size_t pick(const Candidates& c, const PickContext&) override {
    const auto& indices = eligible_indices(c);
    const std::size_t m = indices.size();
    if (m == 0) return none;
    if (m == 1) return indices[0];
    const std::size_t a = Candidates::random() % m;
    std::size_t b = Candidates::random() % (m - 1);
    if (b >= a) ++b;
    const std::size_t x = indices[a];
    const std::size_t y = indices[b];
    double lx = c[x].latency_ewma();
    double ly = c[y].latency_ewma();
    // A backend without a measurement yet is taken to be as fast as the other one.
    if (lx == 0.0) lx = ly;
    if (ly == 0.0) ly = lx;
    if (lx == 0.0) lx = ly = 1.0;
    const double cx = static_cast<double>(c[x].active_requests() + 1) * lx / c.static_weight(x);
    const double cy = static_cast<double>(c[y].active_requests() + 1) * ly / c.static_weight(y);
    const std::size_t winner = cy < cx ? y : x;
    return declines(c, winner) ? (winner == x ? y : x) : winner;
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
