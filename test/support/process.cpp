#include "process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <fstream>
#include <system_error>
#include <thread>

extern char** environ;  // NOLINT: POSIX declares it nowhere

namespace weldr::test {

Process::Process(std::vector<std::string> argv, std::vector<std::string> env) {
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view var(*e);
    const auto name = var.substr(0, var.find('=') + 1);
    bool replaced = false;
    for (const auto& mine : env)
      replaced = replaced || std::string_view(mine).substr(0, name.size()) == name;
    if (!replaced) env.emplace_back(var);
  }
  std::vector<char*> envp;
  for (auto& e : env)
    envp.push_back(e.data());
  envp.push_back(nullptr);

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::system_error(errno, std::system_category(), "pipe");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
  std::vector<char*> args;
  for (auto& a : argv)
    args.push_back(a.data());
  args.push_back(nullptr);
  const int rc = ::posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    throw std::system_error(rc, std::system_category(), "spawn " + argv[0]);
  }
  out_fd_ = fds[0];
}

Process::~Process() {
  if (!exit_code_) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  ::close(out_fd_);
}

bool Process::read_more(std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  if (left.count() <= 0) return false;
  pollfd p{out_fd_, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
  char buf[4096];
  const ssize_t n = ::read(out_fd_, buf, sizeof buf);
  if (n <= 0) return false;
  output_.append(buf, static_cast<std::size_t>(n));
  return true;
}

void Process::drain() {
  for (;;) {
    pollfd p{out_fd_, POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) return;
    char buf[4096];
    const ssize_t n = ::read(out_fd_, buf, sizeof buf);
    if (n <= 0) return;
    output_.append(buf, static_cast<std::size_t>(n));
  }
}

std::optional<std::string> Process::wait_for_line(std::string_view needle, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::size_t eol;
    while ((eol = output_.find('\n', scanned_)) != std::string::npos) {
      std::string line = output_.substr(scanned_, eol - scanned_);
      scanned_ = eol + 1;
      if (line.find(needle) != std::string::npos) return line;
    }
    if (!read_more(deadline)) return std::nullopt;
  }
}

void Process::signal(int sig) const {
  ::kill(pid_, sig);
}

std::optional<int> Process::wait(std::chrono::milliseconds timeout) {
  if (exit_code_) return exit_code_;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      while (read_more(std::chrono::steady_clock::now() + std::chrono::milliseconds(50))) {
      }
      return exit_code_;
    }
    read_more(std::chrono::steady_clock::now() + std::chrono::milliseconds(20));
  }
  return std::nullopt;
}

long Process::status_kib(std::string_view field) const {
  std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > field.size() && line.compare(0, field.size(), field) == 0 && line[field.size()] == ':') {
      long value = -1;
      const auto start = line.find_first_of("0123456789");
      if (start == std::string::npos) return -1;
      std::from_chars(line.data() + start, line.data() + line.size(), value);
      return value;
    }
  }
  return -1;
}

unsigned short port_from_line(std::string_view line) {
  const auto at = line.find("listening on ");
  if (at == std::string_view::npos) return 0;
  auto rest = line.substr(at + 13);
  rest = rest.substr(0, rest.find_first_of(" \r\n"));
  const auto colon = rest.rfind(':');
  if (colon == std::string_view::npos) return 0;
  unsigned short port = 0;
  std::from_chars(rest.data() + colon + 1, rest.data() + rest.size(), port);
  return port;
}

}  // namespace weldr::test
