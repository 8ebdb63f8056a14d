#include "etcd.hpp"

#include "client.hpp"
#include "process.hpp"

#include <fmt/format.h>
#include <rapidjson/document.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

namespace weldr::test {

namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

constexpr auto kStartTimeout = 20s;
constexpr auto kRequestTimeout = 3s;
// Short, so that one member that is not up yet does not hold up polling the others.
constexpr auto kProbeTimeout = 1s;
constexpr std::size_t kLogTail = 4000;

constexpr std::string_view kBase64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const auto n = static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i])) << 16 |
                   static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8 |
                   static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i + 2]));
    out += kBase64Alphabet[n >> 18 & 63];
    out += kBase64Alphabet[n >> 12 & 63];
    out += kBase64Alphabet[n >> 6 & 63];
    out += kBase64Alphabet[n & 63];
  }
  const std::size_t rest = bytes.size() - i;
  if (rest > 0) {
    std::uint32_t n = static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i])) << 16;
    if (rest == 2) n |= static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8;
    out += kBase64Alphabet[n >> 18 & 63];
    out += kBase64Alphabet[n >> 12 & 63];
    out += rest == 2 ? kBase64Alphabet[n >> 6 & 63] : '=';
    out += '=';
  }
  return out;
}

std::string base64_decode(std::string_view text) {
  while (!text.empty() && text.back() == '=')
    text.remove_suffix(1);
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (const char c : text) {
    const auto v = kBase64Alphabet.find(c);
    if (v == std::string_view::npos) throw std::runtime_error(fmt::format("etcd returned bad base64 '{}'", text));
    acc = (acc << 6 | static_cast<std::uint32_t>(v)) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>(acc >> bits & 0xff);
    }
  }
  return out;
}

// The range_end of etcd's clientv3.WithPrefix: the prefix with its last byte below 0xff
// incremented and what follows it dropped; "\0" (no upper bound) when there is no such byte.
std::string prefix_range_end(std::string prefix) {
  while (!prefix.empty()) {
    auto& last = prefix.back();
    if (static_cast<unsigned char>(last) != 0xff) {
      last = static_cast<char>(static_cast<unsigned char>(last) + 1);
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');
}

// The gateway writes int64 as a JSON string and leaves out fields equal to zero.
std::int64_t int64_field(const rapidjson::Value& object, const char* name) {
  const auto m = object.FindMember(name);
  if (m == object.MemberEnd()) return 0;
  if (m->value.IsInt64()) return m->value.GetInt64();
  if (m->value.IsString()) return std::stoll(m->value.GetString());
  throw std::runtime_error(fmt::format("etcd returned a non-integer '{}'", name));
}

// A bytes field: base64 in JSON, left out when empty.
std::string bytes_field(const rapidjson::Value& object, const char* name) {
  const auto m = object.FindMember(name);
  if (m == object.MemberEnd()) return {};
  if (!m->value.IsString()) throw std::runtime_error(fmt::format("etcd returned a non-string '{}'", name));
  return base64_decode(std::string_view(m->value.GetString(), m->value.GetStringLength()));
}

std::string tail(const std::string& text, std::size_t n = kLogTail) {
  return text.size() <= n ? text : "..." + text.substr(text.size() - n);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Ports the kernel considers free right now. All sockets stay bound until every port is
// chosen, so the ports differ from each other; another process may still take one before
// etcd binds it, which the constructor handles by retrying.
std::vector<std::uint16_t> free_ports(std::size_t count) {
  std::vector<int> fds;
  std::vector<std::uint16_t> ports;
  std::error_code failure;
  for (std::size_t i = 0; i < count && !failure; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      failure = {errno, std::system_category()};
      break;
    }
    fds.push_back(fd);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    auto* sa = static_cast<sockaddr*>(static_cast<void*>(&addr));
    socklen_t len = sizeof addr;
    if (::bind(fd, sa, sizeof addr) != 0 || ::getsockname(fd, sa, &len) != 0) {
      failure = {errno, std::system_category()};
      break;
    }
    ports.push_back(ntohs(addr.sin_port));
  }
  for (const int fd : fds)
    ::close(fd);
  if (failure) throw std::system_error(failure, "choosing a free port");
  return ports;
}

std::string url(std::uint16_t port) {
  return fmt::format("http://127.0.0.1:{}", port);
}

struct Reply {
  std::optional<rapidjson::Document> json;  // set on success
  std::string error;                        // why not, otherwise
};

// One POST to the gateway at `port`; never throws.
Reply post_to(std::uint16_t port, const std::string& path, const std::string& body, std::chrono::milliseconds timeout) {
  Reply reply;
  Response response;
  try {
    Client client(port, timeout);
    response =
        client.exchange(make_request("POST", path, body, "Content-Type: application/json\r\nConnection: close\r\n"));
  } catch (const std::exception& e) {
    reply.error = e.what();
    return reply;
  }
  if (!response.complete) {
    reply.error = response.describe();
    return reply;
  }
  if (response.status != 200) {
    reply.error = fmt::format("HTTP {}: {}", response.status, tail(response.body, 500));
    return reply;
  }
  rapidjson::Document doc;
  doc.Parse(response.body.data(), response.body.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    reply.error = fmt::format("not a JSON object: {}", tail(response.body, 500));
    return reply;
  }
  reply.json = std::move(doc);
  return reply;
}

const std::string& probe_body() {
  // A count-only linearizable range over the key "\0": cheap, and it succeeds only when the
  // member has a leader and has caught up with its commit index.
  static const std::string body = fmt::format(R"({{"key":"{}","count_only":true}})", base64_encode({"\0", 1}));
  return body;
}

// One POST to the first of `ports` that answers it with success; the next port when one fails.
rapidjson::Document post_any(const std::vector<std::uint16_t>& ports, const std::string& path,
                             const std::string& body) {
  std::string errors;
  for (const auto port : ports) {
    auto reply = post_to(port, path, body, kRequestTimeout);
    if (reply.json) return std::move(*reply.json);
    errors += fmt::format("\n  127.0.0.1:{}: {}", port, reply.error);
  }
  throw std::runtime_error(
      fmt::format("etcd POST {} {} failed{}", path, body, errors.empty() ? std::string(": no live member") : errors));
}

std::atomic<int> instance_count{0};

}  // namespace

struct EtcdCluster::Member {
  std::string name;
  std::uint16_t client_port{0};
  std::uint16_t peer_port{0};
  std::string data_dir;
  std::string log_file;
  std::unique_ptr<Process> process;
  bool paused{false};

  // etcd's log file and anything it printed to stdout or stderr (flag errors, Go panics).
  [[nodiscard]] std::string output() const {
    std::string out =
        fmt::format("--- {} (client {}, peer {}) log:\n{}", name, client_port, peer_port, tail(read_file(log_file)));
    if (process && !process->output().empty()) out += "\n--- stdout/stderr:\n" + tail(process->output());
    return out;
  }
};

std::string etcd_binary() {
  if (const char* path = std::getenv("PATH")) {
    std::string_view rest = path;
    while (!rest.empty()) {
      const auto colon = rest.find(':');
      const auto entry = rest.substr(0, colon);
      rest = colon == std::string_view::npos ? std::string_view{} : rest.substr(colon + 1);
      if (entry.empty()) continue;
      const std::string candidate = fmt::format("{}/etcd", entry);
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
  }
  if (::access("/usr/bin/etcd", X_OK) == 0) return "/usr/bin/etcd";
  return {};
}

bool etcd_available() {
  return !etcd_binary().empty();
}

EtcdCluster::EtcdCluster(int members) {
  if (members < 1) throw std::invalid_argument("an etcd cluster needs at least one member");
  const std::string binary = etcd_binary();
  if (binary.empty()) throw std::runtime_error("no etcd binary: install Debian's etcd-server package");

  std::string pattern = (fs::temp_directory_path() / "weldr-etcd-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr)
    throw std::system_error(errno, std::system_category(), "mkdtemp " + pattern);
  dir_ = pattern;

  // A port chosen by free_ports can be taken by someone else before etcd binds it; then
  // the whole cluster starts again on new ports, since every member knows every peer URL.
  for (int attempt = 1;; ++attempt) {
    try {
      token_ = fmt::format("weldr-test-{}-{}-{}", ::getpid(), instance_count.fetch_add(1), attempt);
      const auto ports = free_ports(2 * static_cast<std::size_t>(members));
      members_.clear();
      members_.resize(static_cast<std::size_t>(members));
      std::vector<int> all;
      for (int i = 0; i < members; ++i) {
        auto& m = members_[static_cast<std::size_t>(i)];
        m.name = fmt::format("member{}", i);
        m.client_port = ports[2 * static_cast<std::size_t>(i)];
        m.peer_port = ports[2 * static_cast<std::size_t>(i) + 1];
        m.data_dir = fmt::format("{}/{}-{}", dir_, m.name, attempt);
        m.log_file = m.data_dir + ".log";
        all.push_back(i);
      }
      for (const int i : all)
        launch(i, false);
      wait_ready(all);
      return;
    } catch (const std::exception& e) {
      const bool port_taken = std::string_view(e.what()).find("address already in use") != std::string_view::npos;
      stop_all();
      if (!port_taken || attempt == 2) {
        std::error_code ignored;
        fs::remove_all(dir_, ignored);
        throw;
      }
    }
  }
}

EtcdCluster::~EtcdCluster() {
  stop_all();
  std::error_code ignored;
  fs::remove_all(dir_, ignored);
}

void EtcdCluster::stop_all() noexcept {
  // Process's destructor SIGKILLs and reaps; SIGKILL also ends a stopped (paused) process.
  for (auto& m : members_) {
    m.process.reset();
    m.paused = false;
  }
}

EtcdCluster::Member& EtcdCluster::member(int i) {
  if (i < 0 || i >= size()) throw std::out_of_range(fmt::format("no etcd member {} (size {})", i, size()));
  return members_[static_cast<std::size_t>(i)];
}

const EtcdCluster::Member& EtcdCluster::member(int i) const {
  if (i < 0 || i >= size()) throw std::out_of_range(fmt::format("no etcd member {} (size {})", i, size()));
  return members_[static_cast<std::size_t>(i)];
}

int EtcdCluster::size() const noexcept {
  return static_cast<int>(members_.size());
}

std::string EtcdCluster::endpoints() const {
  std::string out;
  for (const auto& m : members_) {
    if (!out.empty()) out += ',';
    out += url(m.client_port);
  }
  return out;
}

std::string EtcdCluster::endpoint(int i) const {
  return url(member(i).client_port);
}

std::uint16_t EtcdCluster::client_port(int i) const {
  return member(i).client_port;
}

void EtcdCluster::launch(int i, bool existing) {
  auto& m = member(i);
  std::string initial_cluster;
  for (const auto& peer : members_) {
    if (!initial_cluster.empty()) initial_cluster += ',';
    initial_cluster += fmt::format("{}={}", peer.name, url(peer.peer_port));
  }
  // A file, not the pipe: nothing reads the pipe while a test runs, and a full pipe would
  // block etcd's logging and with it etcd.
  m.process = std::make_unique<Process>(std::vector<std::string>{etcd_binary(),
                                                                 "--name",
                                                                 m.name,
                                                                 "--data-dir",
                                                                 m.data_dir,
                                                                 "--listen-client-urls",
                                                                 url(m.client_port),
                                                                 "--advertise-client-urls",
                                                                 url(m.client_port),
                                                                 "--listen-peer-urls",
                                                                 url(m.peer_port),
                                                                 "--initial-advertise-peer-urls",
                                                                 url(m.peer_port),
                                                                 "--initial-cluster",
                                                                 initial_cluster,
                                                                 "--initial-cluster-token",
                                                                 token_,
                                                                 "--initial-cluster-state",
                                                                 existing ? "existing" : "new",
                                                                 "--heartbeat-interval",
                                                                 "50",
                                                                 "--election-timeout",
                                                                 "500",
                                                                 "--logger",
                                                                 "zap",
                                                                 "--log-outputs",
                                                                 m.log_file});
  m.paused = false;
}

void EtcdCluster::wait_ready(const std::vector<int>& which) {
  const auto deadline = std::chrono::steady_clock::now() + kStartTimeout;
  std::vector<int> waiting = which;
  std::string last_error;
  while (!waiting.empty()) {
    std::vector<int> still;
    for (const int i : waiting) {
      auto& m = member(i);
      if (!running(i)) {
        const auto code = m.process->wait(1s);
        throw std::runtime_error(
            fmt::format("etcd {} exited with code {} while starting\n{}", m.name, code.value_or(-1), m.output()));
      }
      auto reply = post_to(m.client_port, "/v3/kv/range", probe_body(), kProbeTimeout);
      if (!reply.json) {
        last_error = fmt::format("{}: {}", m.name, reply.error);
        still.push_back(i);
      }
    }
    waiting = std::move(still);
    if (waiting.empty()) return;
    if (std::chrono::steady_clock::now() >= deadline) {
      std::string message = fmt::format("etcd did not answer a linearizable read within {} s (last error: {})",
                                        kStartTimeout.count(), last_error);
      for (const int i : waiting) {
        // Killed first: Process reads what is left in the pipe once the process has exited.
        auto& m = member(i);
        m.process->signal(SIGKILL);
        m.process->wait(2s);
        message += "\n" + m.output();
      }
      throw std::runtime_error(message);
    }
    std::this_thread::sleep_for(50ms);
  }
}

void EtcdCluster::kill(int i) {
  auto& m = member(i);
  if (!m.process) return;
  m.process->signal(SIGKILL);
  m.process->wait(10s);
  m.process.reset();
  m.paused = false;
}

void EtcdCluster::pause(int i) {
  auto& m = member(i);
  if (!running(i)) throw std::logic_error(fmt::format("etcd {} is not running", m.name));
  m.process->signal(SIGSTOP);
  m.paused = true;
}

void EtcdCluster::resume(int i) {
  auto& m = member(i);
  if (!running(i)) throw std::logic_error(fmt::format("etcd {} is not running", m.name));
  m.process->signal(SIGCONT);
  m.paused = false;
}

void EtcdCluster::start(int i) {
  auto& m = member(i);
  if (running(i)) throw std::logic_error(fmt::format("etcd {} is already running", m.name));
  m.process.reset();  // reaps one that exited by itself
  launch(i, true);
  wait_ready({i});
}

bool EtcdCluster::running(int i) const {
  const auto& m = member(i);
  if (!m.process) return false;
  // WNOWAIT leaves the child to be reaped by Process::wait, which records its exit code.
  siginfo_t info{};
  if (::waitid(P_PID, static_cast<id_t>(m.process->pid()), &info, WEXITED | WNOHANG | WNOWAIT) != 0) return false;
  return info.si_pid == 0;
}

bool EtcdCluster::paused(int i) const {
  return member(i).paused;
}

std::vector<std::uint16_t> EtcdCluster::live_ports() const {
  std::vector<std::uint16_t> ports;
  for (int i = 0; i < size(); ++i) {
    if (running(i) && !paused(i)) ports.push_back(client_port(i));
  }
  return ports;
}

std::map<std::string, std::string> EtcdCluster::get_prefix(const std::string& prefix) {
  const std::string key = prefix.empty() ? std::string(1, '\0') : prefix;
  const auto doc = post_any(
      live_ports(), "/v3/kv/range",
      fmt::format(R"({{"key":"{}","range_end":"{}"}})", base64_encode(key), base64_encode(prefix_range_end(prefix))));
  std::map<std::string, std::string> out;
  const auto kvs = doc.FindMember("kvs");
  if (kvs == doc.MemberEnd()) return out;
  if (!kvs->value.IsArray()) throw std::runtime_error("etcd returned a non-array 'kvs'");
  for (const auto& kv : kvs->value.GetArray()) {
    if (!kv.IsObject()) throw std::runtime_error("etcd returned a non-object in 'kvs'");
    out.insert_or_assign(bytes_field(kv, "key"), bytes_field(kv, "value"));
  }
  return out;
}

std::optional<std::string> EtcdCluster::get(const std::string& key) {
  const auto doc = post_any(live_ports(), "/v3/kv/range", fmt::format(R"({{"key":"{}"}})", base64_encode(key)));
  const auto kvs = doc.FindMember("kvs");
  if (kvs == doc.MemberEnd() || !kvs->value.IsArray() || kvs->value.Empty()) return std::nullopt;
  return bytes_field(kvs->value[0], "value");
}

void EtcdCluster::put(const std::string& key, const std::string& value) {
  post_any(live_ports(), "/v3/kv/put",
           fmt::format(R"({{"key":"{}","value":"{}"}})", base64_encode(key), base64_encode(value)));
}

void EtcdCluster::del(const std::string& key) {
  post_any(live_ports(), "/v3/kv/deleterange", fmt::format(R"({{"key":"{}"}})", base64_encode(key)));
}

std::int64_t EtcdCluster::revision() {
  const auto doc = post_any(live_ports(), "/v3/kv/range", probe_body());
  const auto header = doc.FindMember("header");
  if (header == doc.MemberEnd() || !header->value.IsObject())
    throw std::runtime_error("etcd returned no 'header' in a range response");
  return int64_field(header->value, "revision");
}

void EtcdCluster::compact(std::int64_t revision) {
  post_any(live_ports(), "/v3/kv/compaction", fmt::format(R"({{"revision":"{}","physical":true}})", revision));
}

}  // namespace weldr::test
