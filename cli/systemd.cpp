#include "systemd.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <charconv>
#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace weldr::cli {

bool notify_systemd(std::string_view state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || path[0] == '\0') return false;
  const std::size_t length = std::strlen(path);
  sockaddr_un address{};
  if (length >= sizeof address.sun_path) return false;
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path, length);
  if (path[0] == '@') address.sun_path[0] = '\0';  // an abstract socket
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return false;
  const auto size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + length);
  const ssize_t sent =
      ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&address), size);
  ::close(fd);
  return sent == static_cast<ssize_t>(state.size());
}

bool stderr_is_journal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  const std::string_view text(stream);
  const auto colon = text.find(':');
  if (colon == std::string_view::npos) return false;
  unsigned long long device = 0;
  unsigned long long inode = 0;
  const auto [d_end, d_err] = std::from_chars(text.data(), text.data() + colon, device);
  const auto [i_end, i_err] = std::from_chars(text.data() + colon + 1, text.data() + text.size(), inode);
  if (d_err != std::errc{} || i_err != std::errc{} || d_end != text.data() + colon ||
      i_end != text.data() + text.size()) {
    return false;
  }
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  return static_cast<unsigned long long>(st.st_dev) == device && static_cast<unsigned long long>(st.st_ino) == inode;
}

std::string journal_line(LogLevel level, std::string_view line) {
  const char* priority = "<6>";
  switch (level) {
    case LogLevel::error: priority = "<3>"; break;
    case LogLevel::warn: priority = "<4>"; break;
    case LogLevel::info: priority = "<6>"; break;
    case LogLevel::debug: priority = "<7>"; break;
  }
  std::string out(priority);
  out += line;
  out += '\n';
  return out;
}

}  // namespace weldr::cli
