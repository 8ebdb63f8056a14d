#pragma once
/// \file
/// An access log built on ProxyHooks::on_log: one line per request, to a file or stdout.

#include <weldr/hooks.hpp>

#include <cstdio>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace weldr {

/// The shape of an access log line.
enum class AccessLogFormat {
  common,    ///< NCSA common log format: host - - [time] "request" status bytes
  combined,  ///< common plus "referer" "user-agent" (Apache's and nginx's default)
  json,      ///< one JSON object per line with every RequestLog field
};

/// Parses "common", "combined" or "json".
std::optional<AccessLogFormat> parse_access_log_format(std::string_view text);

/// One request as a log line, without the newline. Bytes are those sent to the client, head
/// included; strings are escaped (\" and \xHH for control and non-ASCII bytes, JSON escapes in
/// json).
std::string format_access_log(const RequestLog& log, AccessLogFormat format);

/// Hooks that write one line per request. Thread-safe: one AccessLog may serve the Proxies of
/// every thread. Each line is written and flushed at once, under a lock: use a local file (the
/// write lands in the page cache). A pipe or a network file system can block every proxy
/// thread when it stalls; a host writing to a pipe must ignore SIGPIPE (weldr-cli does).
class AccessLog : public ProxyHooks {
 public:
  /// Opens `path` for appending ("-" means standard output). Throws std::system_error when the
  /// file cannot be opened.
  AccessLog(std::string path, AccessLogFormat format);
  /// Closes the file.
  ~AccessLog() override;
  /// Not copyable.
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  /// Writes the line.
  void on_log(const RequestLog& log) override;
  /// Closes and opens the file again (after logrotate moved it); false, keeping the old file,
  /// when it cannot be opened.
  bool reopen();
  /// The path it writes to ("-" for standard output).
  [[nodiscard]] const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
  AccessLogFormat format_;
  std::mutex mutex_;
  std::FILE* file_{nullptr};  // guarded by mutex_
  bool failing_{false};       // guarded by mutex_
};

}  // namespace weldr
