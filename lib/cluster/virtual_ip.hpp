#pragma once
// A virtual IP address for cluster mode: the address the active node holds on one of its
// interfaces, and hands over on failover (as keepalived does with its VIPs, without keepalived).
//
// The address is added and removed with rtnetlink (RTM_NEWADDR, RTM_DELADDR) and announced with
// one gratuitous ARP (IPv4) or one unsolicited neighbour advertisement (IPv6), so that the
// neighbours' caches point at this node's MAC at once. Every call is synchronous and short: each
// opens its own sockets, waits at most a second or two for the kernel and closes them again. All of
// it needs CAP_NET_ADMIN (add, remove) and CAP_NET_RAW (announce); failures come back as
// std::error_code in std::system_category, never as exceptions.

#include <sys/socket.h>

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

namespace weldr::cluster {

/// An interface address with its prefix length, such as 192.0.2.10/24 or fd00::10/64.
struct VipAddress {
  int family{AF_INET};                    ///< AF_INET or AF_INET6
  std::array<unsigned char, 16> bytes{};  ///< the address in network order; 4 bytes used for AF_INET
  unsigned prefix_length{0};              ///< 0..32 for AF_INET, 0..128 for AF_INET6

  /// The address in the form parse_vip reads: "192.0.2.10/24", "fd00::10/64".
  std::string text() const;
  /// Same family, address and prefix length.
  bool operator==(const VipAddress&) const = default;
};

/// Parses "192.0.2.10/24" or "2001:db8::10/64": a numeric address (no host names, no scope id)
/// and a prefix length, which is required (0..32 or 0..128). Unspecified and multicast addresses
/// are refused, as no interface can hold them. On failure returns nothing and sets `error` to a
/// one-line reason.
std::optional<VipAddress> parse_vip(std::string_view text, std::string& error);

/// One virtual IP on one network interface of this host (in the caller's network namespace).
class VirtualIp {
 public:
  /// The VIP `address` on the interface named `interface_name` (e.g. "eth0"). Nothing is
  /// checked or changed until a member function is called.
  VirtualIp(VipAddress address, std::string interface_name);

  /// Sets `ec` when the interface does not exist or a netlink socket cannot be opened; clears it
  /// otherwise.
  void check(std::error_code& ec) const;
  /// Adds the address to the interface (RTM_NEWADDR); an address already there counts as success.
  /// IPv6 addresses skip duplicate address detection (IFA_F_NODAD), so they are usable at once.
  void add(std::error_code& ec);
  /// Removes the address from the interface (RTM_DELADDR); an address not there counts as success.
  void remove(std::error_code& ec);
  /// True when the interface holds the address with this prefix length right now. False, with
  /// `ec` set, when that cannot be found out.
  bool present(std::error_code& ec) const;
  /// Sends one gratuitous ARP request (IPv4) or one unsolicited neighbour advertisement with the
  /// override flag (IPv6, from the VIP itself, which must be on the interface) carrying the
  /// interface's MAC address. Only Ethernet-like interfaces are supported.
  void announce(std::error_code& ec);

  /// The VIP.
  const VipAddress& address() const noexcept { return address_; }
  /// The interface it is held on.
  const std::string& interface_name() const noexcept { return interface_name_; }

 private:
  VipAddress address_;
  std::string interface_name_;
};

}  // namespace weldr::cluster
