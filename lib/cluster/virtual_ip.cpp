#include "cluster/virtual_ip.hpp"

// <net/if.h> before the kernel's headers, so that glibc and the kernel agree on who defines
// struct ifreq and the IFF_* flags.
#include <arpa/inet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netpacket/packet.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <linux/if_addr.h>
#include <linux/if_ether.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <span>
#include <utility>
#include <vector>

namespace weldr::cluster {

namespace {

using Bytes = std::span<const unsigned char>;
using MacAddress = std::array<unsigned char, ETH_ALEN>;

// Every wait for the kernel is bounded: one receive or send at most this long...
constexpr timeval kSocketTimeout{1, 0};
// ...and one netlink exchange, however many messages it takes, at most this long.
constexpr std::chrono::seconds kExchangeDeadline{2};
// Room for the largest message the kernel sends: it sizes dump messages to the reader's buffer,
// up to 32 KiB.
constexpr std::size_t kReceiveBufferSize = 32768;
// A dump that the kernel marks as interrupted by a concurrent change is read again, this many
// times at most.
constexpr int kDumpAttempts = 3;

std::error_code errno_code(int value) {
  return {value, std::system_category()};
}
std::error_code last_error() {
  return errno_code(errno);
}

std::size_t address_size(int family) {
  return family == AF_INET6 ? 16 : 4;
}

// Owns a file descriptor, and closes it.
class Fd {
 public:
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }

 private:
  int fd_;
};

template <class T>
bool set_option(const Fd& fd, int level, int name, const T& value, std::error_code& ec) {
  if (::setsockopt(fd.get(), level, name, &value, sizeof value) == 0) return true;
  ec = last_error();
  return false;
}

Fd open_socket(int domain, int type, int protocol, std::error_code& ec) {
  Fd fd(::socket(domain, type | SOCK_CLOEXEC, protocol));
  if (!fd.valid()) {
    ec = last_error();
  } else if (set_option(fd, SOL_SOCKET, SO_RCVTIMEO, kSocketTimeout, ec)) {
    set_option(fd, SOL_SOCKET, SO_SNDTIMEO, kSocketTimeout, ec);
  }
  return fd;
}

// 0 with `ec` set when there is no such interface.
unsigned interface_index(const std::string& name, std::error_code& ec) {
  // The kernel compares at most IFNAMSIZ - 1 bytes: a longer name, or one cut short by a NUL,
  // could otherwise name another interface.
  if (name.empty() || name.size() >= IFNAMSIZ || name.find('\0') != std::string::npos) {
    ec = errno_code(ENODEV);
    return 0;
  }
  const unsigned index = ::if_nametoindex(name.c_str());
  if (index == 0) ec = errno == 0 ? errno_code(ENODEV) : last_error();
  return index;
}

// The interface's Ethernet address; interfaces without one (tunnels, loopback) are refused.
MacAddress hardware_address(const Fd& fd, const std::string& name, std::error_code& ec) {
  MacAddress mac{};
  ifreq request{};
  std::memcpy(request.ifr_name, name.data(), std::min(name.size(), sizeof request.ifr_name - 1));
  if (::ioctl(fd.get(), SIOCGIFHWADDR, &request) < 0) {
    ec = last_error();
  } else if (request.ifr_hwaddr.sa_family != ARPHRD_ETHER) {
    ec = errno_code(EOPNOTSUPP);
  } else {
    std::memcpy(mac.data(), request.ifr_hwaddr.sa_data, mac.size());
  }
  return mac;
}

template <class Address>
std::error_code send_datagram(const Fd& fd, Bytes data, const Address& to) {
  ssize_t sent = 0;
  do {
    sent = ::sendto(fd.get(), data.data(), data.size(), 0, reinterpret_cast<const sockaddr*>(&to), sizeof to);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) return last_error();
  if (static_cast<std::size_t>(sent) != data.size()) return errno_code(EMSGSIZE);
  return {};
}

void put_u16(std::span<unsigned char> out, std::size_t offset, unsigned value) {
  out[offset] = static_cast<unsigned char>(value >> 8);
  out[offset + 1] = static_cast<unsigned char>(value & 0xff);
}

// --- rtnetlink ---------------------------------------------------------------------------------
// The kernel's NLMSG_* and RTA_* macros are written with C casts and pointer arithmetic on
// possibly unaligned buffers; these helpers copy headers in and out with memcpy instead.

constexpr std::size_t netlink_align(std::size_t size) {
  return (size + NLMSG_ALIGNTO - 1) & ~std::size_t{NLMSG_ALIGNTO - 1};
}
constexpr std::size_t kMessageHeaderSize = netlink_align(sizeof(nlmsghdr));
constexpr std::size_t kAttributeHeaderSize = netlink_align(sizeof(rtattr));
static_assert(RTA_ALIGNTO == NLMSG_ALIGNTO);

Fd open_netlink(std::error_code& ec) {
  Fd fd = open_socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE, ec);
  if (ec) return fd;
  // Lets the kernel filter an address dump by interface (Linux 4.20+). Older kernels send every
  // address, which the reader filters anyway, so a failure here changes nothing.
  const int one = 1;
  ::setsockopt(fd.get(), SOL_NETLINK, NETLINK_GET_STRICT_CHK, &one, sizeof one);
  sockaddr_nl local{};
  local.nl_family = AF_NETLINK;
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&local), sizeof local) < 0) ec = last_error();
  return fd;
}

// One RTM_*ADDR request: header, ifaddrmsg and at most two address attributes.
class AddressRequest {
 public:
  AddressRequest(std::uint16_t type, std::uint16_t flags, std::uint32_t sequence, const ifaddrmsg& message) {
    nlmsghdr header{};
    header.nlmsg_type = type;
    header.nlmsg_flags = flags;
    header.nlmsg_seq = sequence;
    append(&header, sizeof header);
    append(&message, sizeof message);
  }

  void add_attribute(std::uint16_t type, Bytes value) {
    rtattr attribute{};
    attribute.rta_len = static_cast<unsigned short>(kAttributeHeaderSize + value.size());
    attribute.rta_type = type;
    append(&attribute, sizeof attribute);
    append(value.data(), value.size());
  }

  Bytes finish() {
    const auto length = static_cast<std::uint32_t>(size_);
    std::memcpy(buffer_.data() + offsetof(nlmsghdr, nlmsg_len), &length, sizeof length);
    return {buffer_.data(), size_};
  }

 private:
  static constexpr std::size_t kCapacity = 64;
  static_assert(kMessageHeaderSize + netlink_align(sizeof(ifaddrmsg)) + 2 * (kAttributeHeaderSize + 16) <= kCapacity);

  // The buffer starts zeroed, so the padding that alignment skips is zero.
  void append(const void* data, std::size_t size) {
    std::memcpy(buffer_.data() + size_, data, size);
    size_ = netlink_align(size_ + size);
  }

  std::array<unsigned char, kCapacity> buffer_{};
  std::size_t size_{0};
};

std::error_code send_netlink(const Fd& fd, Bytes request) {
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  return send_datagram(fd, request, kernel);
}

// Reads the kernel's replies to request `sequence` until its ack, its error or the end of its
// dump, and returns that result. Each other message goes to `on_message(type, payload)`.
template <class OnMessage>
std::error_code read_replies(const Fd& fd, std::uint32_t sequence, OnMessage&& on_message) {
  std::vector<unsigned char> buffer(kReceiveBufferSize);
  const auto deadline = std::chrono::steady_clock::now() + kExchangeDeadline;
  bool interrupted = false;
  while (std::chrono::steady_clock::now() < deadline) {
    sockaddr_nl from{};
    iovec part{buffer.data(), buffer.size()};
    msghdr message{};
    message.msg_name = &from;
    message.msg_namelen = sizeof from;
    message.msg_iov = &part;
    message.msg_iovlen = 1;
    const ssize_t received = ::recvmsg(fd.get(), &message, 0);
    if (received < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK ? errno_code(ETIMEDOUT) : last_error();
    }
    if ((message.msg_flags & MSG_TRUNC) != 0) return errno_code(EMSGSIZE);
    if (from.nl_pid != 0) continue;  // not from the kernel

    const Bytes data(buffer.data(), static_cast<std::size_t>(received));
    std::size_t offset = 0;
    while (data.size() - offset >= sizeof(nlmsghdr)) {
      nlmsghdr header;
      std::memcpy(&header, data.data() + offset, sizeof header);
      if (header.nlmsg_len < kMessageHeaderSize || header.nlmsg_len > data.size() - offset) {
        return errno_code(EBADMSG);
      }
      const Bytes payload = data.subspan(offset + kMessageHeaderSize, header.nlmsg_len - kMessageHeaderSize);
      offset = std::min(data.size(), offset + netlink_align(header.nlmsg_len));
      if (header.nlmsg_seq != sequence) continue;
      if ((header.nlmsg_flags & NLM_F_DUMP_INTR) != 0) interrupted = true;

      if (header.nlmsg_type == NLMSG_ERROR || header.nlmsg_type == NLMSG_DONE) {
        // NLMSG_ERROR carries the request's result as a negative errno, 0 being the ack;
        // NLMSG_DONE carries one too, since Linux 4.x, when a dump fails part way.
        int error = 0;
        if (payload.size() >= sizeof error) {
          std::memcpy(&error, payload.data(), sizeof error);
        } else if (header.nlmsg_type == NLMSG_ERROR) {
          return errno_code(EBADMSG);
        }
        if (error < 0) return errno_code(-error);
        return interrupted ? errno_code(EINTR) : std::error_code{};
      }
      on_message(header.nlmsg_type, payload);
    }
  }
  return errno_code(ETIMEDOUT);
}

ifaddrmsg address_message(const VipAddress& vip, unsigned index) {
  ifaddrmsg message{};
  message.ifa_family = static_cast<unsigned char>(vip.family);
  message.ifa_prefixlen = static_cast<unsigned char>(vip.prefix_length);
  message.ifa_scope = RT_SCOPE_UNIVERSE;
  message.ifa_index = index;
  return message;
}

// RTM_NEWADDR or RTM_DELADDR for `vip`, where the error `done` means there was nothing to do.
void change_address(const VipAddress& vip, const std::string& interface_name, std::uint16_t type, std::uint16_t flags,
                    unsigned char address_flags, int done, std::error_code& ec) {
  ec.clear();
  const unsigned index = interface_index(interface_name, ec);
  if (ec) return;
  const Fd fd = open_netlink(ec);
  if (ec) return;

  ifaddrmsg message = address_message(vip, index);
  message.ifa_flags = address_flags;
  constexpr std::uint32_t sequence = 1;
  AddressRequest request(type, static_cast<std::uint16_t>(NLM_F_REQUEST | NLM_F_ACK | flags), sequence, message);
  // Both, as `ip address` sends them: IFA_LOCAL is the address, IFA_ADDRESS the peer (here the
  // same), and IPv6 reads either.
  const Bytes address(vip.bytes.data(), address_size(vip.family));
  request.add_attribute(IFA_LOCAL, address);
  request.add_attribute(IFA_ADDRESS, address);
  ec = send_netlink(fd, request.finish());
  if (!ec) ec = read_replies(fd, sequence, [](std::uint16_t, Bytes) {});
  if (ec == errno_code(done)) ec.clear();
}

// True when `payload`, an RTM_NEWADDR message, describes `vip` on interface `index`.
bool describes(Bytes payload, const VipAddress& vip, unsigned index) {
  ifaddrmsg message;
  if (payload.size() < sizeof message) return false;
  std::memcpy(&message, payload.data(), sizeof message);
  if (message.ifa_index != index || message.ifa_family != vip.family || message.ifa_prefixlen != vip.prefix_length) {
    return false;
  }
  // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a point-to-point link,
  // and the only one an IPv6 address without a peer has.
  std::optional<Bytes> local;
  std::optional<Bytes> address;
  std::size_t offset = netlink_align(sizeof message);
  while (offset <= payload.size() && payload.size() - offset >= sizeof(rtattr)) {
    rtattr attribute;
    std::memcpy(&attribute, payload.data() + offset, sizeof attribute);
    if (attribute.rta_len < kAttributeHeaderSize || attribute.rta_len > payload.size() - offset) break;
    const Bytes value = payload.subspan(offset + kAttributeHeaderSize, attribute.rta_len - kAttributeHeaderSize);
    if (attribute.rta_type == IFA_LOCAL) local = value;
    if (attribute.rta_type == IFA_ADDRESS) address = value;
    offset += netlink_align(attribute.rta_len);
  }
  const std::optional<Bytes>& own = local ? local : address;
  return own && own->size() == address_size(vip.family) && std::equal(own->begin(), own->end(), vip.bytes.begin());
}

// --- announcements -----------------------------------------------------------------------------

// A gratuitous ARP request, as keepalived sends it (vrrp_arp.c) and RFC 5227 section 2.3 calls
// an ARP announcement: sender and target IP are the VIP, the sender MAC is ours, and the frame
// goes to the broadcast address. Requests rather than replies, because some hosts only update
// their caches from requests.
void send_gratuitous_arp(const VipAddress& vip, const std::string& interface_name, unsigned index,
                         std::error_code& ec) {
  // Protocol 0: the socket only sends, and so queues none of the frames the host receives.
  const Fd fd = open_socket(AF_PACKET, SOCK_DGRAM, 0, ec);
  if (ec) return;
  sockaddr_ll local{};
  local.sll_family = AF_PACKET;
  local.sll_ifindex = static_cast<int>(index);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&local), sizeof local) < 0) {
    ec = last_error();
    return;
  }
  const MacAddress mac = hardware_address(fd, interface_name, ec);
  if (ec) return;

  constexpr MacAddress broadcast{0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  std::array<unsigned char, 8 + 2 * (ETH_ALEN + 4)> arp{};
  put_u16(arp, 0, ARPHRD_ETHER);
  put_u16(arp, 2, ETH_P_IP);
  arp[4] = ETH_ALEN;
  arp[5] = 4;
  put_u16(arp, 6, ARPOP_REQUEST);
  auto out = std::copy(mac.begin(), mac.end(), arp.begin() + 8);
  out = std::copy_n(vip.bytes.begin(), 4, out);
  out = std::copy(broadcast.begin(), broadcast.end(), out);
  std::copy_n(vip.bytes.begin(), 4, out);

  sockaddr_ll to{};
  to.sll_family = AF_PACKET;
  to.sll_protocol = htons(ETH_P_ARP);
  to.sll_ifindex = static_cast<int>(index);
  to.sll_halen = ETH_ALEN;
  std::copy(broadcast.begin(), broadcast.end(), to.sll_addr);
  ec = send_datagram(fd, arp, to);
}

// Whether the interface forwards IPv6, which an advertisement must state in its router flag:
// one without it makes the neighbours drop us from their default routers (RFC 4861 7.2.5).
bool forwards_ipv6(const std::string& interface_name) {
  std::ifstream file("/proc/sys/net/ipv6/conf/" + interface_name + "/forwarding");
  int value = 0;
  return static_cast<bool>(file >> value) && value != 0;
}

// An unsolicited neighbour advertisement (RFC 4861 7.2.6), as keepalived sends it (vrrp_ndisc.c):
// from the VIP to all nodes, override flag set, with our MAC as the target link-layer address.
void send_neighbour_advertisement(const VipAddress& vip, const std::string& interface_name, unsigned index,
                                  std::error_code& ec) {
  const Fd fd = open_socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6, ec);
  if (ec) return;
  const MacAddress mac = hardware_address(fd, interface_name, ec);
  if (ec) return;

  // The socket only sends: it lets no ICMPv6 message in.
  icmp6_filter block_all;
  std::memset(&block_all, 0xff, sizeof block_all);
  // Receivers drop neighbour discovery messages whose hop limit is not 255 (RFC 4861 7.1.2).
  const int hop_limit = 255;
  const int interface = static_cast<int>(index);
  const int no_loop = 0;
  if (!set_option(fd, IPPROTO_ICMPV6, ICMP6_FILTER, block_all, ec) ||
      !set_option(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, hop_limit, ec) ||
      !set_option(fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, interface, ec) ||
      !set_option(fd, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, no_loop, ec)) {
    return;
  }
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_BINDTODEVICE, interface_name.c_str(),
                   static_cast<socklen_t>(interface_name.size())) < 0) {
    ec = last_error();
    return;
  }
  // The source must be an address of the interface; the VIP is one, and unlike the link-local
  // address of an interface that just came up it is never tentative (added with IFA_F_NODAD).
  sockaddr_in6 local{};
  local.sin6_family = AF_INET6;
  std::copy_n(vip.bytes.begin(), 16, local.sin6_addr.s6_addr);
  local.sin6_scope_id = index;
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&local), sizeof local) < 0) {
    ec = last_error();
    return;
  }

  // Type, code, checksum (the kernel computes it for ICMPv6 raw sockets), flags and reserved,
  // target, then the target link-layer address option (type 2, length 1 in units of 8 bytes).
  std::array<unsigned char, 24 + 8> advertisement{};
  advertisement[0] = ND_NEIGHBOR_ADVERT;
  constexpr unsigned char kRouter = 0x80;
  constexpr unsigned char kOverride = 0x20;
  advertisement[4] = static_cast<unsigned char>(kOverride | (forwards_ipv6(interface_name) ? kRouter : 0));
  std::copy_n(vip.bytes.begin(), 16, advertisement.begin() + 8);
  advertisement[24] = ND_OPT_TARGET_LINKADDR;
  advertisement[25] = 1;
  std::copy(mac.begin(), mac.end(), advertisement.begin() + 26);

  sockaddr_in6 all_nodes{};
  all_nodes.sin6_family = AF_INET6;
  all_nodes.sin6_addr.s6_addr[0] = 0xff;
  all_nodes.sin6_addr.s6_addr[1] = 0x02;
  all_nodes.sin6_addr.s6_addr[15] = 0x01;
  all_nodes.sin6_scope_id = index;
  ec = send_datagram(fd, advertisement, all_nodes);
}

}  // namespace

std::string VipAddress::text() const {
  char buffer[INET6_ADDRSTRLEN] = {};
  if (::inet_ntop(family, bytes.data(), buffer, sizeof buffer) == nullptr) return "?";
  return std::string(buffer) + '/' + std::to_string(prefix_length);
}

std::optional<VipAddress> parse_vip(std::string_view text, std::string& error) {
  const auto slash = text.find('/');
  if (slash == std::string_view::npos) {
    error = "missing prefix length in '" + std::string(text) + "' (expected ADDRESS/PREFIX, e.g. 192.0.2.10/24)";
    return std::nullopt;
  }
  const std::string host(text.substr(0, slash));
  const std::string_view prefix = text.substr(slash + 1);

  VipAddress vip;
  vip.family = host.find(':') == std::string::npos ? AF_INET : AF_INET6;
  // inet_pton takes only numeric addresses: no host names, no IPv4 shorthand, no scope ids.
  if (host.find('\0') != std::string::npos || ::inet_pton(vip.family, host.c_str(), vip.bytes.data()) != 1) {
    error = "'" + host + "' is not a numeric IPv4 or IPv6 address (host names are not accepted)";
    return std::nullopt;
  }
  const unsigned max_prefix = vip.family == AF_INET ? 32 : 128;
  const auto digits_end = prefix.data() + prefix.size();
  const auto [end, status] = std::from_chars(prefix.data(), digits_end, vip.prefix_length);
  if (prefix.empty() || prefix.size() > 3 || status != std::errc{} || end != digits_end) {
    error = "invalid prefix length '" + std::string(prefix) + "' in '" + std::string(text) + "'";
    return std::nullopt;
  }
  if (vip.prefix_length > max_prefix) {
    error = "prefix length " + std::to_string(vip.prefix_length) + " is out of range 0.." + std::to_string(max_prefix) +
            " for " + (vip.family == AF_INET ? "IPv4" : "IPv6");
    return std::nullopt;
  }
  const auto used = std::span(vip.bytes).first(address_size(vip.family));
  if (std::all_of(used.begin(), used.end(), [](unsigned char byte) { return byte == 0; })) {
    error = "'" + host + "' is the unspecified address, which cannot be a virtual IP";
    return std::nullopt;
  }
  if (vip.family == AF_INET ? (used[0] & 0xf0) == 0xe0 : used[0] == 0xff) {
    error = "'" + host + "' is a multicast address, which cannot be a virtual IP";
    return std::nullopt;
  }
  return vip;
}

VirtualIp::VirtualIp(VipAddress address, std::string interface_name)
    : address_(address), interface_name_(std::move(interface_name)) {}

void VirtualIp::check(std::error_code& ec) const {
  ec.clear();
  interface_index(interface_name_, ec);
  if (!ec) open_netlink(ec);
}

void VirtualIp::add(std::error_code& ec) {
  // NLM_F_EXCL makes an address already there an EEXIST, told apart from success only to be
  // treated as one; IFA_F_NODAD skips the second or so of duplicate address detection during
  // which an IPv6 address is tentative and unusable (keepalived does the same).
  const auto address_flags = static_cast<unsigned char>(address_.family == AF_INET6 ? IFA_F_NODAD : 0);
  change_address(address_, interface_name_, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, address_flags, EEXIST, ec);
}

void VirtualIp::remove(std::error_code& ec) {
  change_address(address_, interface_name_, RTM_DELADDR, 0, 0, EADDRNOTAVAIL, ec);
}

bool VirtualIp::present(std::error_code& ec) const {
  ec.clear();
  const unsigned index = interface_index(interface_name_, ec);
  if (ec) return false;
  const Fd fd = open_netlink(ec);
  if (ec) return false;

  for (std::uint32_t sequence = 1; sequence <= kDumpAttempts; ++sequence) {
    // Strict checking wants the header empty but for family and interface.
    ifaddrmsg filter{};
    filter.ifa_family = static_cast<unsigned char>(address_.family);
    filter.ifa_index = index;
    AddressRequest request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, sequence, filter);
    ec = send_netlink(fd, request.finish());
    if (ec) return false;
    bool found = false;
    ec = read_replies(fd, sequence, [&](std::uint16_t type, Bytes payload) {
      if (type == RTM_NEWADDR && describes(payload, address_, index)) found = true;
    });
    if (ec != errno_code(EINTR)) return !ec && found;
  }
  return false;
}

void VirtualIp::announce(std::error_code& ec) {
  ec.clear();
  const unsigned index = interface_index(interface_name_, ec);
  if (ec) return;
  if (address_.family == AF_INET) {
    send_gratuitous_arp(address_, interface_name_, index, ec);
  } else {
    send_neighbour_advertisement(address_, interface_name_, index, ec);
  }
}

}  // namespace weldr::cluster
