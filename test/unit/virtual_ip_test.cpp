// parse_vip on its own, and VirtualIp on a veth pair in a network namespace of its own: a forked
// child unshares its network namespace, so the addresses it adds and the frames it sends never
// reach the host's interfaces, and all of it goes away with the child. Those tests need root.

#include "cluster/virtual_ip.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <netpacket/packet.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/if_ether.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <span>
#include <string>
#include <thread>
#include <utility>

using weldr::cluster::parse_vip;
using weldr::cluster::VipAddress;
using weldr::cluster::VirtualIp;

namespace {

VipAddress vip(const char* text) {
  std::string error;
  const auto parsed = parse_vip(text, error);
  INFO(error);
  REQUIRE(parsed);
  return *parsed;
}

std::string parse_error(const char* text) {
  std::string error;
  const auto parsed = parse_vip(text, error);
  INFO(text);
  CHECK_FALSE(parsed);
  CHECK_FALSE(error.empty());
  CHECK(error.find('\n') == std::string::npos);
  return error;
}

}  // namespace

TEST_CASE("virtual_ip: parse_vip reads IPv4 addresses") {
  const VipAddress address = vip("192.0.2.10/24");
  CHECK(address.family == AF_INET);
  CHECK(address.prefix_length == 24);
  CHECK(address.bytes == std::array<unsigned char, 16>{192, 0, 2, 10});
  CHECK(address.text() == "192.0.2.10/24");
  CHECK(vip("10.1.2.3/32").text() == "10.1.2.3/32");
  CHECK(vip("10.1.2.3/0").prefix_length == 0);
  CHECK(vip("198.18.0.10/24") == vip("198.18.0.10/24"));
  CHECK_FALSE(vip("198.18.0.10/24") == vip("198.18.0.10/25"));
}

TEST_CASE("virtual_ip: parse_vip reads IPv6 addresses") {
  const VipAddress address = vip("2001:db8::10/64");
  CHECK(address.family == AF_INET6);
  CHECK(address.prefix_length == 64);
  CHECK(address.bytes == std::array<unsigned char, 16>{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10});
  CHECK(address.text() == "2001:db8::10/64");
  CHECK(vip("FD00:198:18::10/128").text() == "fd00:198:18::10/128");
  CHECK(vip("fe80::1/0").prefix_length == 0);
}

TEST_CASE("virtual_ip: parse_vip requires a prefix length") {
  CHECK_THAT(parse_error("192.0.2.10"), Catch::Contains("prefix"));
  CHECK_THAT(parse_error("2001:db8::10"), Catch::Contains("prefix"));
  CHECK_THAT(parse_error("192.0.2.10/"), Catch::Contains("prefix"));
  CHECK_THAT(parse_error(""), Catch::Contains("prefix"));
}

TEST_CASE("virtual_ip: parse_vip refuses prefix lengths out of range") {
  CHECK_THAT(parse_error("192.0.2.10/33"), Catch::Contains("0..32"));
  CHECK_THAT(parse_error("2001:db8::10/129"), Catch::Contains("0..128"));
  parse_error("192.0.2.10/1000");
  parse_error("192.0.2.10/-1");
  parse_error("192.0.2.10/+8");
  parse_error("192.0.2.10/ 8");
  parse_error("192.0.2.10/8 ");
  parse_error("192.0.2.10/24/1");
  parse_error("192.0.2.10/0x10");
}

TEST_CASE("virtual_ip: parse_vip refuses what is not an address") {
  for (const char* text : {"/24", "foo", "foo/24", "192.0.2/24", "192.0.2.256/24", "1.2.3.4.5/24", " 192.0.2.10/24",
                           "2001:db8:::1/64", "2001:db8::g/64", "fe80::1%eth0/64", "[2001:db8::1]/64"}) {
    parse_error(text);
  }
  CHECK_THAT(parse_error("0.0.0.0/0"), Catch::Contains("unspecified"));
  CHECK_THAT(parse_error("::/0"), Catch::Contains("unspecified"));
  CHECK_THAT(parse_error("224.0.0.18/32"), Catch::Contains("multicast"));
  CHECK_THAT(parse_error("ff02::1/128"), Catch::Contains("multicast"));
}

TEST_CASE("virtual_ip: parse_vip refuses host names") {
  CHECK_THAT(parse_error("localhost/8"), Catch::Contains("host names"));
  CHECK_THAT(parse_error("example.com/24"), Catch::Contains("host names"));
  CHECK_THAT(parse_error("ip6-localhost/128"), Catch::Contains("host names"));
}

TEST_CASE("virtual_ip: an unknown interface is an error, not an exception") {
  for (const char* name : {"weldr-nope0", "", "a-name-longer-than-ifnamsiz"}) {
    INFO(name);
    VirtualIp address(vip("198.18.0.10/24"), name);
    CHECK(address.interface_name() == name);
    CHECK(address.address() == vip("198.18.0.10/24"));
    std::error_code ec;
    address.check(ec);
    CHECK(ec == std::errc::no_such_device);
    ec.clear();
    CHECK_FALSE(address.present(ec));
    CHECK(ec);
    ec.clear();
    address.add(ec);
    CHECK(ec);
    ec.clear();
    address.remove(ec);
    CHECK(ec);
    ec.clear();
    address.announce(ec);
    CHECK(ec);
  }
}

// --- in a network namespace ----------------------------------------------------------------------
// The child reports each failure on stderr and its result in its exit status; it must not use
// Catch2, whose state belongs to the parent.

namespace {

constexpr int kSkipped = 77;
using Frame = std::span<const unsigned char>;

class Child {
 public:
  void expect(bool ok, const std::string& what) {
    if (ok) return;
    ++failures_;
    std::fprintf(stderr, "virtual_ip child: %s\n", what.c_str());
  }
  void expect_ok(const std::error_code& ec, const std::string& what) { expect(!ec, what + ": " + ec.message()); }
  int failures() const { return failures_; }

 private:
  int failures_{0};
};

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

std::array<unsigned char, ETH_ALEN> mac_of(const char* interface) {
  std::array<unsigned char, ETH_ALEN> mac{};
  const Fd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq request{};
  std::strncpy(request.ifr_name, interface, sizeof request.ifr_name - 1);
  if (::ioctl(fd.get(), SIOCGIFHWADDR, &request) == 0) std::memcpy(mac.data(), request.ifr_hwaddr.sa_data, mac.size());
  return mac;
}

// An AF_PACKET socket that receives the frames of `protocol` arriving on `interface`, without
// their Ethernet header. Created with protocol 0, it receives nothing before it is bound: no frame
// of another interface gets into its queue.
int open_capture(const char* interface, int protocol) {
  const int fd = ::socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_ll address{};
  address.sll_family = AF_PACKET;
  address.sll_protocol = htons(static_cast<std::uint16_t>(protocol));
  address.sll_ifindex = static_cast<int>(::if_nametoindex(interface));
  const timeval timeout{0, 200'000};
  if (fd < 0 || ::bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) < 0 ||
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) < 0) {
    std::perror("virtual_ip child: capture socket");
  }
  return fd;
}

// Reads frames for up to 3 s, until `match` accepts one.
template <class Match>
bool capture(const Fd& fd, Match match) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  std::array<unsigned char, 2048> buffer{};
  while (std::chrono::steady_clock::now() < deadline) {
    const ssize_t received = ::recv(fd.get(), buffer.data(), buffer.size(), 0);
    if (received > 0 && match(Frame(buffer.data(), static_cast<std::size_t>(received)))) return true;
  }
  return false;
}

bool equal_at(Frame frame, std::size_t offset, std::span<const unsigned char> expected) {
  return frame.size() >= offset + expected.size() &&
         std::equal(expected.begin(), expected.end(), frame.begin() + static_cast<std::ptrdiff_t>(offset));
}

unsigned u16_at(Frame frame, std::size_t offset) {
  return static_cast<unsigned>(frame[offset] << 8 | frame[offset + 1]);
}

// The ones' complement sum of the ICMPv6 message and its pseudo-header (RFC 8200 8.1): 0xffff
// when the checksum is right.
unsigned icmpv6_checksum_sum(Frame packet) {
  const Frame message = packet.subspan(40);
  std::uint32_t sum = 0;
  for (std::size_t i = 8; i < 40; i += 2)
    sum += u16_at(packet, i);
  sum += static_cast<std::uint32_t>(message.size()) + IPPROTO_ICMPV6;
  for (std::size_t i = 0; i + 1 < message.size(); i += 2)
    sum += u16_at(message, i);
  if (message.size() % 2 != 0) sum += static_cast<std::uint32_t>(message.back() << 8);
  while (sum > 0xffff)
    sum = (sum & 0xffff) + (sum >> 16);
  return sum;
}

// add, add again, present, announce (captured on the peer wv1), remove, remove again.
void exercise(Child& child, const char* text, int protocol, bool (*is_announcement)(Frame, const VipAddress&, Frame)) {
  const std::string name(text);
  std::string error;
  const auto parsed = parse_vip(text, error);
  child.expect(parsed.has_value(), name + ": " + error);
  if (!parsed) return;
  VirtualIp address(*parsed, "wv0");
  const std::array<unsigned char, ETH_ALEN> mac = mac_of("wv0");
  std::error_code ec;

  address.check(ec);
  child.expect_ok(ec, name + ": check()");
  child.expect(!address.present(ec) && !ec, name + ": present() before add()");
  address.add(ec);
  child.expect_ok(ec, name + ": add()");
  child.expect(address.present(ec) && !ec, name + ": present() after add()");
  address.add(ec);
  child.expect_ok(ec, name + ": add() again");
  child.expect(address.present(ec) && !ec, name + ": present() after add() again");

  const Fd capture_fd(open_capture("wv1", protocol));
  address.announce(ec);
  child.expect_ok(ec, name + ": announce()");
  child.expect(capture(capture_fd, [&](Frame frame) { return is_announcement(frame, address.address(), mac); }),
               name + ": no announcement from wv0's MAC arrived on wv1");

  address.remove(ec);
  child.expect_ok(ec, name + ": remove()");
  child.expect(!address.present(ec) && !ec, name + ": present() after remove()");
  address.remove(ec);
  child.expect_ok(ec, name + ": remove() again");
  child.expect(!address.present(ec) && !ec, name + ": present() after remove() again");
}

// An ARP request whose sender and target IP are the VIP, from `mac`.
bool is_gratuitous_arp(Frame arp, const VipAddress& address, Frame mac) {
  const Frame ip(address.bytes.data(), 4);
  return arp.size() >= 28 && u16_at(arp, 0) == ARPHRD_ETHER && u16_at(arp, 2) == ETH_P_IP && arp[4] == ETH_ALEN &&
         arp[5] == 4 && u16_at(arp, 6) == ARPOP_REQUEST && equal_at(arp, 8, mac) && equal_at(arp, 14, ip) &&
         equal_at(arp, 24, ip);
}

// An unsolicited neighbour advertisement for the VIP, from the VIP to ff02::1 with hop limit 255,
// override flag set, solicited flag clear, `mac` as target link-layer address, a valid checksum.
bool is_neighbour_advertisement(Frame packet, const VipAddress& address, Frame mac) {
  constexpr std::array<unsigned char, 16> all_nodes{0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01};
  const Frame ip(address.bytes.data(), 16);
  constexpr std::size_t icmp = 40;
  return packet.size() >= icmp + 32 && packet[0] >> 4 == 6 && packet[6] == IPPROTO_ICMPV6 && packet[7] == 255 &&
         equal_at(packet, 8, ip) && equal_at(packet, 24, all_nodes) && packet[icmp] == 136 && packet[icmp + 1] == 0 &&
         (packet[icmp + 4] & 0x20) != 0 && (packet[icmp + 4] & 0x40) == 0 && equal_at(packet, icmp + 8, ip) &&
         packet[icmp + 24] == 2 && packet[icmp + 25] == 1 && equal_at(packet, icmp + 26, mac) &&
         u16_at(packet, 4) == 32 && icmpv6_checksum_sum(packet.first(icmp + 32)) == 0xffff;
}

void ipv4_scenario(Child& child) {
  exercise(child, "198.18.0.10/24", ETH_P_ARP, is_gratuitous_arp);

  // A failed send is reported: a link that is down takes no frames.
  VirtualIp address(VipAddress{AF_INET, {198, 18, 0, 10}, 24}, "wv0");
  std::error_code ec;
  child.expect(std::system("ip link set wv0 down") == 0, "ip link set wv0 down");
  address.announce(ec);
  child.expect(ec == std::errc::network_down, "announce() on a link that is down: " + ec.message());
}

void ipv6_scenario(Child& child) {
  exercise(child, "fd00:198:18::10/64", ETH_P_IPV6, is_neighbour_advertisement);

  // The advertisement's source is the VIP, so announcing a VIP that is not there fails.
  VirtualIp address(VipAddress{AF_INET6, {0xfd, 0, 0x01, 0x98, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11}, 64}, "wv0");
  std::error_code ec;
  address.announce(ec);
  child.expect(ec == std::errc::address_not_available, "announce() of an absent IPv6 VIP: " + ec.message());
}

std::size_t open_descriptors() {
  std::error_code ec;
  const std::filesystem::directory_iterator fds("/proc/self/fd", ec);
  return ec ? 0 : static_cast<std::size_t>(std::distance(begin(fds), end(fds)));
}

// Runs `scenario` in a child process in a new network namespace with a veth pair wv0 - wv1, and
// returns its exit status, or -1 when it did not end within 10 s (it is killed).
int run_in_namespace(void (*scenario)(Child&)) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::unshare(CLONE_NEWNET) < 0) {
      std::perror("virtual_ip child: unshare(CLONE_NEWNET)");
      ::_exit(errno == EPERM ? kSkipped : 1);
    }
    if (std::system("ip link add wv0 type veth peer name wv1 && ip link set wv0 up && ip link set wv1 up") != 0) {
      std::fprintf(stderr, "virtual_ip child: could not create the veth pair wv0 - wv1 with ip(8)\n");
      ::_exit(1);
    }
    Child child;
    const std::size_t open_before = open_descriptors();
    scenario(child);
    child.expect(open_descriptors() == open_before, "a file descriptor was left open");
    std::fflush(nullptr);
    ::_exit(child.failures() == 0 ? 0 : 1);
  }
  REQUIRE(pid > 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void run_root_test(void (*scenario)(Child&)) {
  if (::geteuid() != 0) {
    WARN("skipped: needs root (network namespaces)");
    return;
  }
  const int status = run_in_namespace(scenario);
  if (status == kSkipped) {
    WARN("skipped: unshare(CLONE_NEWNET) is not permitted here (root without CAP_SYS_ADMIN?)");
    return;
  }
  INFO("the child's stderr says what failed; -1: killed after 10 s or died of a signal");
  REQUIRE(status == 0);
}

}  // namespace

TEST_CASE("virtual_ip: adds, announces and removes an IPv4 VIP in a network namespace (root)") {
  run_root_test(ipv4_scenario);
}

TEST_CASE("virtual_ip: adds, announces and removes an IPv6 VIP in a network namespace (root)") {
  run_root_test(ipv6_scenario);
}
