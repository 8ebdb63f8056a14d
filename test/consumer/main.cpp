// A program that embeds libweldr, built by the consumer tests: with find_package(weldr), with
// add_subdirectory(weldr) and with pkg-config. It runs a Proxy on an ephemeral port in front
// of a backend that refuses connections, sends it one request (answered 502), stops it
// gracefully and exits 0.
#include <weldr/pool.hpp>
#include <weldr/proxy.hpp>

// The program's own use of Asio must match the separately compiled Asio in weldr::asio.
#if !defined(ASIO_STANDALONE) || !defined(ASIO_SEPARATE_COMPILATION) || !defined(ASIO_NO_DEPRECATED) || \
    !defined(ASIO_DISABLE_STD_ALIGNED_ALLOC) || ASIO_RECYCLING_ALLOCATOR_CACHE_SIZE != 16
#error "weldr's Asio definitions did not reach this translation unit"
#endif

#include <asio/connect.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/address.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>
#include <asio/read.hpp>
#include <asio/write.hpp>

#include <exception>
#include <future>
#include <iostream>
#include <string>
#include <system_error>
#include <thread>

int main() {
  try {
    weldr::Pool pool;
    pool.add("http://127.0.0.1:9");  // discard: nothing listens there

    asio::io_context io;
    weldr::Proxy proxy(io, pool);
    proxy.listen({asio::ip::make_address("127.0.0.1"), 0});
    const auto port = proxy.local_endpoint().port();
    std::cout << "weldr proxy listening on 127.0.0.1:" << port << std::endl;
    if (port == 0) return 1;
    std::thread loop([&io] { io.run(); });

    // One request from a plain Asio client: the backend is unreachable, so weldr answers 502.
    std::string response;
    {
      asio::io_context client_io;
      asio::ip::tcp::socket socket(client_io);
      socket.connect({asio::ip::make_address("127.0.0.1"), port});
      const std::string request = "GET / HTTP/1.1\r\nHost: consumer\r\nConnection: close\r\n\r\n";
      asio::write(socket, asio::buffer(request));
      std::error_code ec;
      asio::read(socket, asio::dynamic_buffer(response), ec);  // until weldr closes
    }
    const auto status_line = response.substr(0, response.find("\r\n"));
    std::cout << "response: " << status_line << std::endl;

    std::promise<void> stopped;
    asio::post(io, [&] { proxy.stop(std::chrono::seconds(5), [&] { stopped.set_value(); }); });
    const bool stopped_in_time = stopped.get_future().wait_for(std::chrono::seconds(10)) == std::future_status::ready;
    io.stop();
    loop.join();
    if (!stopped_in_time) {
      std::cerr << "proxy did not stop\n";
      return 1;
    }
    if (status_line.rfind("HTTP/1.1 502", 0) != 0) {
      std::cerr << "expected a 502 response, got: " << response << '\n';
      return 1;
    }
    std::cout << "stopped" << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 1;
  }
}
