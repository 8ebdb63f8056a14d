// Counts heap allocations on the proxy's thread per request in the steady state of a keep-alive
// connection. The global operator new is replaced by a counting one; only allocations made on
// the thread that runs the Proxy's io_context are counted (the origin and the client run on
// other threads and use plain blocking sockets).
//
//   weldr-alloc-bench [requests]      (default 20000 per scenario)
//
// Prints, per scenario, allocations and bytes per request after a warm-up, and exits 1 when a
// keep-alive scenario allocates in the steady state (so a script can check it). The scenarios:
// three on one keep-alive connection, one with 64 keep-alive connections at once (client
// threads), and, for information only, a new connection per request.

#include <weldr/pool.hpp>
#include <weldr/proxy.hpp>

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

std::atomic<std::uint64_t> g_allocations{0};
std::atomic<std::uint64_t> g_bytes{0};
thread_local bool t_counted = false;
std::atomic<bool> g_trace{false};

// With WELDR_ALLOC_TRACE set, every counted allocation after the warm-up calls this: break on
// it in gdb (`break alloc_trace_hook`, then `bt`) to see where the allocations come from.
[[gnu::noinline]] void alloc_trace_hook(std::size_t n) {
  asm volatile("" : : "r"(n) : "memory");
}

void* counted_alloc(std::size_t n) {
  if (t_counted) {
    g_allocations.fetch_add(1, std::memory_order_relaxed);
    g_bytes.fetch_add(n, std::memory_order_relaxed);
    if (g_trace.load(std::memory_order_relaxed)) alloc_trace_hook(n);
  }
  if (n == 0) n = 1;
  void* p = std::malloc(n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void* counted_aligned_alloc(std::size_t n, std::align_val_t al) {
  if (t_counted) {
    g_allocations.fetch_add(1, std::memory_order_relaxed);
    g_bytes.fetch_add(n, std::memory_order_relaxed);
  }
  const auto alignment = static_cast<std::size_t>(al);
  void* p = std::aligned_alloc(alignment, (n + alignment - 1) / alignment * alignment);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

void* operator new(std::size_t n) {
  return counted_alloc(n);
}
void* operator new[](std::size_t n) {
  return counted_alloc(n);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new(std::size_t n, std::align_val_t al) {
  return counted_aligned_alloc(n, al);
}
void* operator new[](std::size_t n, std::align_val_t al) {
  return counted_aligned_alloc(n, al);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}

namespace {

int listen_socket(std::uint16_t& port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(fd, SOMAXCONN) != 0) {  // 64 connects may come at once
    std::perror("origin: bind/listen");
    std::exit(2);
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  port = ntohs(addr.sin_port);
  return fd;
}

int connect_to(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::perror("connect");
    std::exit(2);
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

bool send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const auto n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

std::size_t content_length(std::string_view head) {
  const auto at = head.find("Content-Length: ");
  if (at == std::string_view::npos) return 0;
  return std::strtoull(std::string(head.substr(at + 16, 20)).c_str(), nullptr, 10);
}

// Reads one message (head with Content-Length framing, then the body) from fd; false on EOF.
bool read_message(int fd, std::string& buffer, std::string* head_out = nullptr) {
  char chunk[65536];
  for (;;) {
    const auto end = buffer.find("\r\n\r\n");
    if (end != std::string::npos) {
      const std::size_t total = end + 4 + content_length(std::string_view(buffer).substr(0, end + 2));
      while (buffer.size() < total) {
        const auto n = ::recv(fd, chunk, sizeof chunk, 0);
        if (n <= 0) return false;
        buffer.append(chunk, static_cast<std::size_t>(n));
      }
      if (head_out != nullptr) head_out->assign(buffer, 0, end + 4);
      buffer.erase(0, total);
      return true;
    }
    const auto n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) return false;
    buffer.append(chunk, static_cast<std::size_t>(n));
  }
}

// Sends `request` and reads its response `n` times on `fd`; exits 2 when the connection is lost.
void exchange_n(int fd, const std::string& request, long n, const char* what) {
  std::string buffer;
  for (long i = 0; i < n; ++i) {
    if (!send_all(fd, request) || !read_message(fd, buffer)) {
      std::fprintf(stderr, "%s: connection lost after %ld requests\n", what, i);
      std::exit(2);
    }
  }
}

// Runs `work`, which serves `units` requests (or connections), with the proxy thread's
// allocations counted and, under WELDR_ALLOC_TRACE, traced; prints the scenario's row and
// returns its allocations per unit. Outside these windows nothing is traced.
template <typename Work>
double measure(const char* name, long units, Work&& work, const char* note = "") {
  g_trace = std::getenv("WELDR_ALLOC_TRACE") != nullptr;
  const auto a0 = g_allocations.load();
  const auto b0 = g_bytes.load();
  work();
  g_trace = false;
  const double allocs = static_cast<double>(g_allocations.load() - a0) / static_cast<double>(units);
  const double bytes = static_cast<double>(g_bytes.load() - b0) / static_cast<double>(units);
  std::printf("%-26s %12ld %14.3f %14.1f%s\n", name, units, allocs, bytes, note);
  return allocs;
}

// The origin: one thread per connection, answers every request with the response of its path.
void run_origin(int listener) {
  for (;;) {
    const int fd = ::accept(listener, nullptr, nullptr);
    if (fd < 0) return;
    std::thread([fd] {
      const std::string small = "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nHello World";
      const std::string large = "HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n" + std::string(65536, 'x');
      std::string buffer;
      std::string head;
      while (read_message(fd, buffer, &head)) {
        const bool big = head.rfind("GET /large", 0) == 0;
        if (!send_all(fd, big ? large : small)) break;
      }
      ::close(fd);
    }).detach();
  }
}

struct Scenario {
  const char* name;
  std::string request;
};

}  // namespace

int main(int argc, char** argv) {
  const long requests = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 20000;
  if (requests <= 0) {
    std::fputs("usage: weldr-alloc-bench [requests]\n", stderr);
    return 2;
  }
  std::uint16_t origin_port = 0;
  const int listener = listen_socket(origin_port);
  std::thread(run_origin, listener).detach();

  weldr::Pool pool;
  pool.add("http://127.0.0.1:" + std::to_string(origin_port));
  asio::io_context io(1);
  weldr::ProxyOptions options;
  options.read_timeout = std::chrono::seconds(10);
  weldr::Proxy proxy(io, pool, options);
  proxy.listen(asio::ip::tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  const auto proxy_port = proxy.local_endpoint().port();
  std::thread proxy_thread([&io] {
    t_counted = true;
    io.run();
  });

  const Scenario scenarios[] = {
      {"GET, 11-byte response", "GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: alloc-bench\r\nAccept: */*\r\n\r\n"},
      {"GET, 64 KiB response", "GET /large HTTP/1.1\r\nHost: bench\r\nAccept: */*\r\n\r\n"},
      {"POST, 4 KiB body",
       "POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\nContent-Length: "
       "4096\r\n\r\n" +
           std::string(4096, 'p')},
  };
  constexpr double kAllowed = 0.01;  // allocations per request a keep-alive scenario may show
  int failures = 0;
  std::printf("%-26s %12s %14s %14s\n", "scenario", "requests", "allocs/req", "bytes/req");
  for (const auto& s : scenarios) {
    const int fd = connect_to(proxy_port);
    auto run = [&](long n) { exchange_n(fd, s.request, n, s.name); };
    run(1000);  // warm-up: buffers, caches, the upstream connection
    if (measure(s.name, requests, [&] { run(requests); }) > kAllowed) ++failures;
    ::close(fd);
  }
  // The same small GET over many keep-alive connections at once, each on a client thread of
  // its own: the proxy then holds many requests in flight, and frees and allocates their
  // coroutine frames in bursts, which a single connection never shows.
  {
    constexpr int kConnections = 64;
    const std::string request = "GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: alloc-bench\r\nAccept: */*\r\n\r\n";
    const long per_connection = std::max(1L, requests / kConnections);
    std::vector<int> fds;
    for (int c = 0; c < kConnections; ++c)
      fds.push_back(connect_to(proxy_port));
    auto run = [&](long n) {
      std::vector<std::thread> clients;
      for (int fd : fds)
        clients.emplace_back([&, fd] { exchange_n(fd, request, n, "64 connections"); });
      for (auto& t : clients)
        t.join();
    };
    run(200);  // warm-up
    const long total = per_connection * kConnections;
    if (measure("GET, 64 connections at once", total, [&] { run(per_connection); }) > kAllowed) ++failures;
    for (int fd : fds)
      ::close(fd);
  }
  // For information (a new connection allocates its session by nature): the cost of a
  // connection per request.
  {
    const std::string request = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    const long connections = std::max(1L, requests / 10);
    auto run = [&](long n) {
      for (long i = 0; i < n; ++i) {
        const int fd = connect_to(proxy_port);
        std::string buffer;
        if (!send_all(fd, request) || !read_message(fd, buffer)) {
          std::fprintf(stderr, "new connections: lost after %ld\n", i);
          std::exit(2);
        }
        ::close(fd);
      }
    };
    run(100);
    measure(
        "GET, connection per request", connections, [&] { run(connections); }, "   (per connection; not checked)");
  }
  asio::post(io, [&] { proxy.stop([&] { io.stop(); }); });
  proxy_thread.join();
  ::close(listener);
  return failures == 0 ? 0 : 1;
}
