#pragma once
/// \file
/// A real etcd (v3.4) cluster for cluster tests: 1 or 3 members on 127.0.0.1, each in its own
/// temporary data directory, plus a small blocking client over etcd's v3 JSON gateway.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace weldr::test {

/// True when an etcd binary is installed (so tests can SKIP with a clear message otherwise).
bool etcd_available();

/// The etcd binary EtcdCluster runs: `etcd` on $PATH, else /usr/bin/etcd; empty when there is none.
std::string etcd_binary();

/// One etcd cluster of `members` members on 127.0.0.1, on free ports, each in a fresh temporary
/// data directory, started for real and killed (SIGKILL) in the destructor.
///
/// Members are numbered from 0. etcd runs with a 50 ms heartbeat and a 500 ms election timeout,
/// so leader elections are quick and the minimum lease TTL is 1 s. Each member logs (zap) to a
/// file next to its data directory; the tail of those logs is in every startup error.
///
/// The client functions (get, put, ...) send one POST to the gateway of the first live member
/// (running and not paused), with a 3 s timeout, and try the next live member when one fails;
/// they throw std::runtime_error when none answers with success.
class EtcdCluster {
 public:
  /// Starts all members and waits (at most 20 s) until each answers a linearizable read; throws
  /// std::runtime_error with etcd's output on failure (after one retry on new ports when a port
  /// was taken meanwhile).
  explicit EtcdCluster(int members = 1);
  /// SIGKILLs all members and removes their data directories.
  ~EtcdCluster();
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;

  /// The number of members, running or not.
  [[nodiscard]] int size() const noexcept;
  /// Every member's client URL, comma-separated: "http://127.0.0.1:P0,http://127.0.0.1:P1,...".
  [[nodiscard]] std::string endpoints() const;
  /// The client URL of member `i`: "http://127.0.0.1:Pi".
  [[nodiscard]] std::string endpoint(int i) const;
  /// The client port of member `i`.
  [[nodiscard]] std::uint16_t client_port(int i) const;

  /// SIGKILLs member `i` and reaps it (nothing when it is not running).
  void kill(int i);
  /// Stops member `i` with SIGSTOP: its sockets stay open but it answers nothing.
  void pause(int i);
  /// Continues a paused member `i` with SIGCONT.
  void resume(int i);
  /// Restarts killed (or exited) member `i` with the same name, ports and data directory, and
  /// waits (at most 20 s) until it answers a linearizable read; throws std::runtime_error with
  /// its output on failure, std::logic_error when it is running.
  void start(int i);
  /// True while member `i`'s process exists (paused or not).
  [[nodiscard]] bool running(int i) const;
  /// True while member `i` is paused.
  [[nodiscard]] bool paused(int i) const;

  /// Every key that starts with `prefix` (all keys when it is empty), mapped to its value.
  std::map<std::string, std::string> get_prefix(const std::string& prefix);
  /// The value of `key`, or nothing when it does not exist.
  std::optional<std::string> get(const std::string& key);
  /// Sets `key` to `value`.
  void put(const std::string& key, const std::string& value);
  /// Deletes `key` (nothing when it does not exist).
  void del(const std::string& key);
  /// The current revision of the store (header.revision of a range request).
  std::int64_t revision();
  /// Compacts the store up to `revision`, physically (the call returns once it is done).
  void compact(std::int64_t revision);

 private:
  struct Member;
  void launch(int i, bool existing);
  void wait_ready(const std::vector<int>& which);
  void stop_all() noexcept;
  Member& member(int i);
  const Member& member(int i) const;
  std::vector<std::uint16_t> live_ports() const;

  std::string dir_;
  std::string token_;
  std::vector<Member> members_;
};

}  // namespace weldr::test
