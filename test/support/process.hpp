#pragma once
/// \file
/// A child process for end-to-end tests: started with posix_spawn, its stdout and stderr read
/// through one pipe, killed in the destructor if it is still running.

#include <sys/types.h>
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace weldr::test {

/// A running program whose output can be waited on.
class Process {
 public:
  /// Starts `argv[0]` with these arguments and this process's environment, in which each
  /// "NAME=value" of `env` replaces or adds a variable. Throws std::system_error if it cannot start.
  explicit Process(std::vector<std::string> argv, std::vector<std::string> env = {});
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  /// Waits until a line of output contains `needle` and returns that line; nothing on timeout or exit.
  std::optional<std::string> wait_for_line(std::string_view needle,
                                           std::chrono::milliseconds timeout = std::chrono::seconds(20));
  /// Reads whatever the process has printed by now, without waiting (so that a chatty process
  /// never blocks on a full pipe while the test does something else).
  void drain();
  /// Everything the process printed so far.
  [[nodiscard]] const std::string& output() const noexcept { return output_; }
  /// Sends a signal.
  void signal(int sig) const;
  /// Waits for the exit and returns its exit code (128 + signal when killed); nothing on timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  /// The process id.
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }
  /// A field of /proc/PID/status in KiB, e.g. "VmRSS" or "VmHWM"; -1 when unreadable.
  [[nodiscard]] long status_kib(std::string_view field) const;

 private:
  bool read_more(std::chrono::steady_clock::time_point deadline);

  pid_t pid_{-1};
  int out_fd_{-1};
  std::string output_;
  std::size_t scanned_{0};
  std::optional<int> exit_code_;
};

/// Extracts the port from a line containing "listening on HOST:PORT"; 0 if there is none.
unsigned short port_from_line(std::string_view line);

}  // namespace weldr::test
