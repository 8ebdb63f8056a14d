#pragma once
// Opening a listening socket, shared by the proxy and the management API.

#include <asio/ip/tcp.hpp>

#include <sys/socket.h>

#include <cerrno>
#include <system_error>

namespace weldr::net {

/// Opens, binds and listens `acceptor` on `endpoint` (SO_REUSEADDR; SO_REUSEPORT when asked, so
/// that one listener per thread can share a port). On failure `ec` is set and it is closed.
inline void open_listener(asio::ip::tcp::acceptor& acceptor, const asio::ip::tcp::endpoint& endpoint, int backlog,
                          bool reuse_port, std::error_code& ec) {
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::ip::tcp::acceptor::reuse_address(true), ec);
  if (!ec && reuse_port) {
    const int on = 1;
    if (::setsockopt(acceptor.native_handle(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) {
      ec = std::error_code(errno, std::system_category());
    }
  }
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(backlog, ec);
  if (ec) {
    std::error_code ignored;
    acceptor.close(ignored);
  }
}

}  // namespace weldr::net
