// Cluster mode end to end: real etcd members (test/support/etcd.hpp) and real weldr-cli
// processes on 127.0.0.1, talking over real sockets. No mocks of etcd or of the network.

#include "client.hpp"
#include "etcd.hpp"
#include "process.hpp"

#include <rapidjson/document.h>
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

using weldr::test::Client;
using weldr::test::EtcdCluster;
using weldr::test::port_from_line;
using weldr::test::Process;
using namespace std::chrono_literals;

namespace {

using Clock = std::chrono::steady_clock;

// Polls `done` every 20 ms until it holds or `timeout` passes; returns whether it held.
bool eventually(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (done()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// One request on a fresh connection; status 0 when the connection failed.
weldr::test::Response request(std::uint16_t port, std::string_view method, std::string_view target,
                              std::string_view body = {}) {
  try {
    Client client(port, 5s);
    return client.exchange(weldr::test::make_request(
        method, target, body,
        body.empty() ? "Connection: close\r\n" : "Connection: close\r\nContent-Type: application/json\r\n"));
  } catch (const std::exception& e) {
    weldr::test::Response failed;
    failed.error = e.what();
    return failed;
  }
}

struct Origin {
  Origin()
      : process({WELDR_TEST_SERVER_PATH, "--port", "0"}),
        port(port_from_line(process.wait_for_line("listening on").value_or(""))) {}
  [[nodiscard]] std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
  [[nodiscard]] std::string id() const { return "127.0.0.1:" + std::to_string(port); }
  Process process;
  std::uint16_t port;
};

std::string registration(const std::string& url) {
  return R"({"url": ")" + url + R"("})";
}

// A weldr-cli node of cluster `cluster` on free ports.
class Node {
 public:
  Node(const std::string& etcd, std::string name, std::vector<std::string> extra = {}, std::string cluster = "test")
      : name_(std::move(name)) {
    std::vector<std::string> argv{WELDR_CLI_PATH,
                                  "--ip",
                                  "127.0.0.1:0",
                                  "--admin-ip",
                                  "127.0.0.1:0",
                                  "--threads",
                                  "1",
                                  "--etcd",
                                  etcd,
                                  "--cluster-name",
                                  cluster,
                                  "--node-name",
                                  name_,
                                  "--lease-ttl",
                                  "1s",
                                  "--health-interval",
                                  "1h"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    process_ = std::make_unique<Process>(argv);
    proxy_port_ = port_from_line(process_->wait_for_line(" thread(s)").value_or(""));
    api_port_ = port_from_line(process_->wait_for_line("management API listening on").value_or(""));
    if (proxy_port_ == 0 || api_port_ == 0) FAIL("weldr-cli " << name_ << " did not start:\n" << process_->output());
  }

  [[nodiscard]] const std::string& name() const { return name_; }
  [[nodiscard]] std::uint16_t proxy_port() const { return proxy_port_; }
  [[nodiscard]] std::uint16_t api_port() const { return api_port_; }
  Process& process() { return *process_; }

  // GET /cluster, parsed; an empty object when it cannot be read.
  std::shared_ptr<rapidjson::Document> cluster() {
    auto doc = std::make_shared<rapidjson::Document>();
    const auto r = request(api_port_, "GET", "/cluster");
    doc->Parse(r.body.c_str());
    if (r.status != 200 || doc->HasParseError() || !doc->IsObject()) doc->SetObject();
    return doc;
  }
  std::string role() {
    const auto doc = cluster();
    return doc->HasMember("role") && (*doc)["role"].IsString() ? (*doc)["role"].GetString() : "";
  }
  bool connected() {
    const auto doc = cluster();
    return doc->HasMember("store") && (*doc)["store"]["connected"].IsBool() && (*doc)["store"]["connected"].GetBool();
  }
  bool has_server(const std::string& id) {
    const auto r = request(api_port_, "GET", "/servers");
    return r.status == 200 && r.body.find("\"id\":\"" + id + "\"") != std::string::npos;
  }
  int post(const std::string& url) { return request(api_port_, "POST", "/servers", registration(url)).status; }
  weldr::test::Response remove(const std::string& id) {
    const auto colon = id.rfind(':');
    return request(api_port_, "DELETE", "/servers/" + id.substr(0, colon) + "/" + id.substr(colon + 1));
  }
  // Reads what the process printed so far, so that its pipe never fills up.
  void drain() { process_->drain(); }

 private:
  std::string name_;
  std::unique_ptr<Process> process_;
  std::uint16_t proxy_port_{0};
  std::uint16_t api_port_{0};
};

// A directory of this test's own under $TMPDIR, removed with its files at the end.
struct TempDir {
  explicit TempDir(std::string_view what) {
    const char* tmp = std::getenv("TMPDIR");
    path = std::filesystem::path(tmp != nullptr ? tmp : "/tmp") /
           ("weldr-cluster-" + std::string(what) + "-" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::filesystem::path path;
};

bool hello(std::uint16_t proxy_port) {
  const auto r = request(proxy_port, "GET", "/");
  return r.status == 200 && r.body == "Hello World";
}

// Waits until one of `nodes` reports itself active and returns it (null on timeout).
Node* wait_active(const std::vector<Node*>& nodes, std::chrono::milliseconds timeout = 5s) {
  Node* found = nullptr;
  eventually(
      [&] {
        for (Node* n : nodes) {
          if (n->role() == "active") {
            found = n;
            return true;
          }
        }
        return false;
      },
      timeout);
  return found;
}

#define REQUIRE_ETCD()                                                                  \
  do {                                                                                  \
    if (!weldr::test::etcd_available()) {                                               \
      WARN("skipped: etcd is not installed (apt-get install etcd-server etcd-client)"); \
      return;                                                                           \
    }                                                                                   \
  } while (false)

}  // namespace

TEST_CASE("cluster: a registration on one node serves traffic through the other within 1 s", "[cluster]") {
  REQUIRE_ETCD();
  EtcdCluster etcd;
  Origin origin;
  Node a(etcd.endpoints(), "a");
  Node b(etcd.endpoints(), "b");
  REQUIRE(eventually([&] { return a.connected() && b.connected(); }, 5s));

  const auto registered = Clock::now();
  REQUIRE(b.post(origin.url()) == 201);
  REQUIRE(eventually([&] { return hello(a.proxy_port()); }, 1s));
  INFO("registered on b, served by a after " << seconds_since(registered) << " s");
  CHECK(seconds_since(registered) < 1.0);
  CHECK(etcd.get("/weldr/test/servers/" + origin.id()).has_value());

  // Delete through a: both nodes drop it.
  CHECK(a.remove(origin.id()).status == 204);
  CHECK(eventually([&] { return !a.has_server(origin.id()) && !b.has_server(origin.id()); }, 1s));
  CHECK(request(b.proxy_port(), "GET", "/").status == 503);
  CHECK(a.remove(origin.id()).status == 404);
  CHECK_FALSE(etcd.get("/weldr/test/servers/" + origin.id()).has_value());
}

TEST_CASE("cluster: the same server registered on two nodes at once: one 201, one 200", "[cluster]") {
  REQUIRE_ETCD();
  EtcdCluster etcd;
  Node a(etcd.endpoints(), "a");
  Node b(etcd.endpoints(), "b");
  REQUIRE(eventually([&] { return a.connected() && b.connected(); }, 5s));
  for (int round = 0; round < 5; ++round) {
    const std::string url = "http://127.0.0.1:" + std::to_string(21000 + round);
    int status_a = 0;
    int status_b = 0;
    std::thread ta([&] { status_a = a.post(url); });
    std::thread tb([&] { status_b = b.post(url); });
    ta.join();
    tb.join();
    CHECK(std::multiset<int>{status_a, status_b} == std::multiset<int>{200, 201});
  }
  CHECK(etcd.get_prefix("/weldr/test/servers/").size() == 5);
}

TEST_CASE("cluster: kill -9 of the active node: another is active within TTL + 1 s; SIGTERM within 1 s", "[cluster]") {
  REQUIRE_ETCD();
  EtcdCluster etcd;
  auto a = std::make_unique<Node>(etcd.endpoints(), "a");
  auto b = std::make_unique<Node>(etcd.endpoints(), "b");
  Node* active = wait_active({a.get(), b.get()});
  REQUIRE(active != nullptr);
  CHECK(etcd.get("/weldr/test/leader") == active->name());
  auto& victim = active == a.get() ? a : b;
  Node* other = active == a.get() ? b.get() : a.get();
  CHECK(other->role() == "passive");

  const auto killed = Clock::now();
  victim->process().signal(SIGKILL);
  REQUIRE(eventually([&] { return other->role() == "active"; }, 5s));
  const double hard = seconds_since(killed);
  WARN("kill -9 of the active node: the passive node was active after " << hard << " s (lease TTL 1 s)");
  CHECK(hard < 2.0);

  // The killed node comes back passive; then a graceful stop of the active one hands over.
  victim = std::make_unique<Node>(etcd.endpoints(), victim->name());
  REQUIRE(eventually([&] { return victim->connected(); }, 5s));
  CHECK(victim->role() == "passive");
  const auto terminated = Clock::now();
  other->process().signal(SIGTERM);
  REQUIRE(eventually([&] { return victim->role() == "active"; }, 3s));
  const double graceful = seconds_since(terminated);
  WARN("SIGTERM of the active node: the passive node was active after " << graceful << " s");
  CHECK(graceful < 1.0);
  CHECK(other->process().wait(10s) == 0);
  CHECK(other->process().output().find("took over") != std::string::npos);
}

TEST_CASE("cluster: POST /cluster/resign hands over; a passive node cannot resign", "[cluster]") {
  REQUIRE_ETCD();
  EtcdCluster etcd;
  Node a(etcd.endpoints(), "a");
  Node b(etcd.endpoints(), "b");
  Node* active = wait_active({&a, &b});
  REQUIRE(active != nullptr);
  Node* passive = active == &a ? &b : &a;
  REQUIRE(eventually([&] { return active->cluster()->operator[]("nodes").Size() == 2; }, 3s));

  const auto refused = request(passive->api_port(), "POST", "/cluster/resign");
  CHECK(refused.status == 409);
  CHECK(refused.body.find("not active") != std::string::npos);

  const auto resigned = request(active->api_port(), "POST", "/cluster/resign");
  CHECK(resigned.status == 200);
  CHECK(passive->role() == "active");
  CHECK(active->role() == "passive");
  // It does not campaign straight back.
  std::this_thread::sleep_for(500ms);
  CHECK(passive->role() == "active");
  CHECK(request(active->api_port(), "GET", "/cluster/resign").status == 405);
}

TEST_CASE("cluster: nothing acknowledged is lost while the active node is killed and restarted", "[cluster]") {
  REQUIRE_ETCD();
  EtcdCluster etcd;
  std::vector<std::unique_ptr<Node>> nodes;
  nodes.push_back(std::make_unique<Node>(etcd.endpoints(), "a"));
  nodes.push_back(std::make_unique<Node>(etcd.endpoints(), "b"));
  REQUIRE(eventually([&] { return nodes[0]->connected() && nodes[1]->connected(); }, 5s));

  constexpr int kRegistrations = 200;
  std::set<std::string> acknowledged;
  for (int i = 0; i < kRegistrations; ++i) {
    if (i % 50 == 25) {
      // Kill the active node and start it again under the same name.
      Node* active = wait_active({nodes[0].get(), nodes[1].get()});
      REQUIRE(active != nullptr);
      auto& victim = active == nodes[0].get() ? nodes[0] : nodes[1];
      const std::string name = victim->name();
      victim->process().signal(SIGKILL);
      victim->process().wait(5s);
      victim = std::make_unique<Node>(etcd.endpoints(), name);
    }
    const std::string id = "127.0.0.1:" + std::to_string(30000 + i);
    Node& target = *nodes[static_cast<std::size_t>(i % 2)];
    const int status = target.post("http://" + id);
    if (status == 201 || status == 200) acknowledged.insert(id);
    for (auto& n : nodes)
      n->drain();
  }
  INFO(acknowledged.size() << " of " << kRegistrations << " registrations acknowledged");
  CHECK(acknowledged.size() >= kRegistrations * 9 / 10);

  auto all_in = [&](Node& node) {
    const auto r = request(node.api_port(), "GET", "/servers");
    for (const auto& id : acknowledged) {
      if (r.body.find("\"id\":\"" + id + "\"") == std::string::npos) return false;
    }
    return r.status == 200;
  };
  const auto stored = etcd.get_prefix("/weldr/test/servers/");
  for (const auto& id : acknowledged)
    CHECK(stored.count("/weldr/test/servers/" + id) == 1);
  for (auto& n : nodes)
    CHECK(eventually([&] { return all_in(*n); }, 5s));

  // Every node restarted: all still there.
  for (auto& n : nodes) {
    const std::string name = n->name();
    n->process().signal(SIGTERM);
    CHECK(n->process().wait(10s) == 0);
    n = std::make_unique<Node>(etcd.endpoints(), name);
  }
  for (auto& n : nodes)
    CHECK(eventually([&] { return n->connected() && all_in(*n); }, 5s));
}

TEST_CASE("cluster: without etcd traffic keeps flowing and writes get 503; changes made meanwhile arrive",
          "[cluster]") {
  REQUIRE_ETCD();
  EtcdCluster etcd(3);
  Origin origin;
  Origin second;
  // a knows only member 0; b knows the others. Killing member 0 cuts a off from etcd alone.
  Node a(etcd.endpoint(0), "a");
  Node b(etcd.endpoint(1) + "," + etcd.endpoint(2), "b");
  REQUIRE(eventually([&] { return a.connected() && b.connected(); }, 5s));
  REQUIRE(a.post(origin.url()) == 201);
  REQUIRE(eventually([&] { return hello(b.proxy_port()); }, 1s));

  etcd.kill(0);
  REQUIRE(eventually([&] { return !a.connected(); }, 5s));
  CHECK(hello(a.proxy_port()));  // static stability: the last known pool serves
  const auto refused = request(a.api_port(), "POST", "/servers", registration(second.url()));
  CHECK(refused.status == 503);
  CHECK(refused.body.find("cluster store unavailable") != std::string::npos);
  CHECK(a.remove(origin.id()).status == 503);
  CHECK(a.has_server(origin.id()));
  const auto put = request(a.api_port(), "PUT", "/config/health-check", R"({"interval": "2h"})");
  CHECK(put.status == 503);

  // Meanwhile b changes the pool, and etcd compacts its history.
  REQUIRE(b.post(second.url()) == 201);
  REQUIRE(b.remove(origin.id()).status == 204);
  etcd.compact(etcd.revision());
  CHECK(hello(a.proxy_port()));
  CHECK_FALSE(a.has_server(second.id()));

  etcd.start(0);
  CHECK(eventually([&] { return a.connected(); }, 10s));
  CHECK(eventually([&] { return a.has_server(second.id()) && !a.has_server(origin.id()); }, 5s));
  CHECK(a.post("http://127.0.0.1:21999") == 201);
  CHECK(eventually([&] { return b.has_server("127.0.0.1:21999"); }, 1s));
  // One log line per change of state, not one per try.
  a.drain();
  std::size_t lines = 0;
  for (std::size_t at = 0; (at = a.process().output().find("etcd unavailable", at)) != std::string::npos; ++at)
    ++lines;
  INFO(a.process().output());
  CHECK(lines == 1);
}

TEST_CASE("cluster: a 3-member etcd losing one member is invisible to users", "[cluster]") {
  REQUIRE_ETCD();
  EtcdCluster etcd(3);
  Origin origin;
  Node a(etcd.endpoints(), "a");
  Node b(etcd.endpoints(), "b");
  REQUIRE(eventually([&] { return a.connected() && b.connected(); }, 5s));
  etcd.kill(0);  // the member both nodes try first
  for (int i = 0; i < 10; ++i) {
    const std::string url = "http://127.0.0.1:" + std::to_string(22000 + i);
    const auto started = Clock::now();
    CHECK((i % 2 == 0 ? a : b).post(url) == 201);
    CHECK(seconds_since(started) < 3.0);  // at most an etcd election, within --etcd-timeout
    CHECK(eventually([&] { return (i % 2 == 0 ? b : a).has_server("127.0.0.1:" + std::to_string(22000 + i)); }, 1s));
  }
  CHECK(a.post(origin.url()) == 201);
  CHECK(eventually([&] { return hello(b.proxy_port()); }, 1s));
  CHECK(wait_active({&a, &b}) != nullptr);
}

TEST_CASE("cluster: fencing: an active node paused past its TTL is passive when it runs again", "[cluster]") {
  REQUIRE_ETCD();
  EtcdCluster etcd;
  Node a(etcd.endpoints(), "a");
  Node b(etcd.endpoints(), "b");
  Node* active = wait_active({&a, &b});
  REQUIRE(active != nullptr);
  Node* other = active == &a ? &b : &a;
  active->process().signal(SIGSTOP);
  CHECK(eventually([&] { return other->role() == "active"; }, 4s));
  std::this_thread::sleep_for(500ms);
  active->process().signal(SIGCONT);
  CHECK(eventually([&] { return active->role() == "passive"; }, 1s));
  CHECK(other->role() == "active");
  CHECK(etcd.get("/weldr/test/leader") == other->name());
}

TEST_CASE("cluster: the first node seeds an empty cluster; a later start never brings back a deleted server",
          "[cluster]") {
  REQUIRE_ETCD();
  EtcdCluster etcd;
  Origin origin;
  TempDir dir("seed");
  const std::string state = (dir.path / "state.json").string();
  {
    Node a(etcd.endpoints(), "a", {"--server", origin.url(), "--state-file", state});
    REQUIRE(eventually([&] { return a.connected(); }, 5s));
    CHECK(etcd.get("/weldr/test/servers/" + origin.id()).has_value());
    CHECK(hello(a.proxy_port()));
    // A second node with other --server flags does not seed again.
    Node b(etcd.endpoints(), "b", {"--server", "http://127.0.0.1:23456"});
    REQUIRE(eventually([&] { return b.connected(); }, 5s));
    CHECK(eventually([&] { return b.has_server(origin.id()) && !b.has_server("127.0.0.1:23456"); }, 2s));
    CHECK_FALSE(etcd.get("/weldr/test/servers/127.0.0.1:23456").has_value());
    a.process().signal(SIGTERM);
    CHECK(a.process().wait(10s) == 0);
  }
  // With etcd down, a restarted node serves its state file (the cache of the last pool).
  etcd.kill(0);
  {
    Node a(etcd.endpoints(), "a", {"--state-file", state});
    CHECK(hello(a.proxy_port()));
    CHECK_FALSE(a.connected());
    a.process().signal(SIGTERM);
    CHECK(a.process().wait(10s) == 0);
  }
  etcd.start(0);
  etcd.del("/weldr/test/servers/" + origin.id());
  Node a(etcd.endpoints(), "a", {"--server", origin.url(), "--state-file", state});
  REQUIRE(eventually([&] { return a.connected(); }, 5s));
  CHECK(eventually([&] { return !a.has_server(origin.id()); }, 2s));
  CHECK_FALSE(etcd.get("/weldr/test/servers/" + origin.id()).has_value());
}

TEST_CASE("cluster: health-check settings changed on one node apply on every node", "[cluster]") {
  REQUIRE_ETCD();
  EtcdCluster etcd;
  Node a(etcd.endpoints(), "a");
  Node b(etcd.endpoints(), "b");
  REQUIRE(eventually([&] { return a.connected() && b.connected(); }, 5s));
  const auto put = request(a.api_port(), "PUT", "/config/health-check", R"({"interval": "7s", "failures": 4})");
  CHECK(put.status == 200);
  CHECK(eventually(
      [&] {
        const auto r = request(b.api_port(), "GET", "/config/health-check");
        return r.body.find("\"interval\":\"7000ms\"") != std::string::npos &&
               r.body.find("\"failures\":4") != std::string::npos;
      },
      1s));
}

TEST_CASE("cluster: bad cluster flags stop weldr-cli with one line and exit 2", "[cluster][cli]") {
  const std::vector<std::vector<std::string>> bad{
      {"--etcd", "https://127.0.0.1:2379"},
      {"--etcd", "127.0.0.1"},
      {"--etcd", "http://127.0.0.1:2379", "--lease-ttl", "0s"},
      {"--etcd", "http://127.0.0.1:2379", "--lease-ttl", "1500ms"},
      {"--etcd", "http://127.0.0.1:2379", "--lease-ttl", "61s"},
      {"--etcd", "http://127.0.0.1:2379", "--vip", "192.0.2.10/24"},
      {"--etcd", "http://127.0.0.1:2379", "--vip", "192.0.2.10", "--vip-interface", "lo"},
      {"--etcd", "http://127.0.0.1:2379", "--node-name", "a b"},
      {"--etcd", "http://127.0.0.1:2379", "--cluster-name", "a/b"},
      {"--etcd", "http://127.0.0.1:2379", "--etcd-user", "root"},
      {"--vip", "192.0.2.10/24", "--vip-interface", "lo"},
  };
  for (const auto& flags : bad) {
    std::vector<std::string> argv{WELDR_CLI_PATH, "--ip", "127.0.0.1:0", "--admin-ip", "127.0.0.1:0"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    Process cli(argv, {"WELDR_ETCD_PASSWORD="});
    const auto code = cli.wait(10s);
    INFO(cli.output());
    CHECK(code == 2);
    const auto& out = cli.output();
    CHECK(std::count(out.begin(), out.end(), '\n') == 1);
  }
}

TEST_CASE("cluster: --on-role-change runs with passive at start, then active, then passive", "[cluster]") {
  REQUIRE_ETCD();
  EtcdCluster etcd;
  TempDir dir("role");
  const std::string log = (dir.path / "roles").string();
  // The command carries an argument of its own; the role comes last.
  const std::string command = "printf '%s %s\\n' >>" + log;
  auto roles = [&] {
    std::ifstream in(log);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  Node a(etcd.endpoints(), "a", {"--on-role-change", command + " a"});
  REQUIRE(eventually([&] { return a.role() == "active"; }, 5s));
  CHECK(eventually([&] { return roles() == "a passive\na active\n"; }, 3s));
  Node b(etcd.endpoints(), "b");
  REQUIRE(eventually([&] { return b.connected(); }, 5s));
  CHECK(request(a.api_port(), "POST", "/cluster/resign").status == 200);
  CHECK(eventually([&] { return roles() == "a passive\na active\na passive\n"; }, 3s));
  a.drain();
  CHECK(eventually(
      [&] {
        a.drain();
        return a.process().output().find("--on-role-change passive: exit status 0") != std::string::npos;
      },
      3s));
}

TEST_CASE("cluster: etcd with authentication: --etcd-user and WELDR_ETCD_PASSWORD", "[cluster]") {
  REQUIRE_ETCD();
  if (::access("/usr/bin/etcdctl", X_OK) != 0) {
    WARN("skipped: etcdctl is not installed (apt-get install etcd-client)");
    return;
  }
  EtcdCluster etcd;
  auto etcdctl = [&](std::vector<std::string> args) {
    std::vector<std::string> argv{"/usr/bin/etcdctl", "--endpoints", etcd.endpoint(0)};
    argv.insert(argv.end(), args.begin(), args.end());
    Process p(argv, {"ETCDCTL_API=3"});
    const auto code = p.wait(10s);
    INFO(p.output());
    REQUIRE(code == 0);
  };
  etcdctl({"user", "add", "root:secret-root"});
  etcdctl({"user", "add", "weldr:secret-weldr"});
  etcdctl({"role", "add", "weldr"});
  etcdctl({"role", "grant-permission", "weldr", "--prefix=true", "readwrite", "/weldr/test/"});
  etcdctl({"user", "grant-role", "weldr", "weldr"});
  etcdctl({"auth", "enable"});

  Origin origin;
  auto node = [&](const std::string& name, const std::string& password) {
    std::vector<std::string> argv{WELDR_CLI_PATH, "--ip",        "127.0.0.1:0", "--admin-ip",     "127.0.0.1:0",
                                  "--threads",    "1",           "--etcd",      etcd.endpoints(), "--cluster-name",
                                  "test",         "--node-name", name,          "--etcd-user",    "weldr"};
    return std::make_unique<Process>(argv, std::vector<std::string>{"WELDR_ETCD_PASSWORD=" + password});
  };
  auto good = node("a", "secret-weldr");
  const auto api = port_from_line(good->wait_for_line("management API listening on").value_or(""));
  REQUIRE(api != 0);
  CHECK(good->wait_for_line("is now active", 10s).has_value());
  CHECK(request(api, "POST", "/servers", registration(origin.url())).status == 201);

  auto bad = node("b", "wrong");
  const auto bad_api = port_from_line(bad->wait_for_line("management API listening on").value_or(""));
  REQUIRE(bad_api != 0);
  CHECK(bad->wait_for_line("authentication failed", 10s).has_value());
  const auto refused = request(bad_api, "POST", "/servers", registration("http://127.0.0.1:21500"));
  CHECK(refused.status == 503);
  CHECK(refused.body.find("authentication failed") != std::string::npos);
}
