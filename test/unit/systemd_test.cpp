#include "systemd.hpp"

#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

namespace {

// A datagram socket that plays the service manager, at `path` ("@name": abstract).
class Manager {
 public:
  explicit Manager(std::string path) : path_(std::move(path)), fd_(::socket(AF_UNIX, SOCK_DGRAM, 0)) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, path_.data(), path_.size());
    if (path_[0] == '@') address.sun_path[0] = '\0';
    const auto size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path_.size());
    REQUIRE(::bind(fd_, reinterpret_cast<const sockaddr*>(&address), size) == 0);
    timeval tv{2, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setenv("NOTIFY_SOCKET", path_.c_str(), 1);
  }
  ~Manager() {
    ::unsetenv("NOTIFY_SOCKET");
    ::close(fd_);
    if (path_[0] != '@') std::filesystem::remove(path_);
  }
  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;

  std::string receive() {
    char buf[512];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  }

 private:
  std::string path_;
  int fd_;
};

}  // namespace

TEST_CASE("systemd: notify sends one datagram to NOTIFY_SOCKET, a path or an abstract name", "[cli][systemd]") {
  ::unsetenv("NOTIFY_SOCKET");
  CHECK_FALSE(weldr::cli::notify_systemd("READY=1"));  // not under systemd: nothing to do
  for (const std::string& path :
       {(std::filesystem::temp_directory_path() / ("weldr-notify-" + std::to_string(::getpid()))).string(),
        "@weldr-notify-" + std::to_string(::getpid())}) {
    INFO(path);
    Manager manager(path);
    CHECK(weldr::cli::notify_systemd("READY=1\nSTATUS=listening"));
    CHECK(manager.receive() == "READY=1\nSTATUS=listening");
    CHECK(weldr::cli::notify_systemd("STOPPING=1"));
    CHECK(manager.receive() == "STOPPING=1");
  }
  ::setenv("NOTIFY_SOCKET", "/nonexistent/notify", 1);
  CHECK_FALSE(weldr::cli::notify_systemd("READY=1"));
  ::unsetenv("NOTIFY_SOCKET");
}

TEST_CASE("systemd: journal lines carry the syslog priority and no timestamp", "[cli][systemd]") {
  using weldr::LogLevel;
  CHECK(weldr::cli::journal_line(LogLevel::error, "cannot listen") == "<3>cannot listen\n");
  CHECK(weldr::cli::journal_line(LogLevel::warn, "w") == "<4>w\n");
  CHECK(weldr::cli::journal_line(LogLevel::info, "i") == "<6>i\n");
  CHECK(weldr::cli::journal_line(LogLevel::debug, "d") == "<7>d\n");
}

TEST_CASE("systemd: stderr is the journal only when JOURNAL_STREAM names it", "[cli][systemd]") {
  struct stat st {};
  REQUIRE(::fstat(STDERR_FILENO, &st) == 0);
  ::unsetenv("JOURNAL_STREAM");
  CHECK_FALSE(weldr::cli::stderr_is_journal());
  ::setenv("JOURNAL_STREAM", (std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino)).c_str(), 1);
  CHECK(weldr::cli::stderr_is_journal());
  ::setenv("JOURNAL_STREAM", (std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino + 1)).c_str(), 1);
  CHECK_FALSE(weldr::cli::stderr_is_journal());
  for (const char* bad : {"", "1", "a:b", "1:2:3", ":"}) {
    ::setenv("JOURNAL_STREAM", bad, 1);
    CHECK_FALSE(weldr::cli::stderr_is_journal());
  }
  ::unsetenv("JOURNAL_STREAM");
}
