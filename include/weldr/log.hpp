#pragma once
/// \file
/// The library's log output: a level filter and a replaceable sink.

#include <functional>
#include <optional>
#include <string_view>

namespace weldr {

/// Severity of a log line, most severe first.
enum class LogLevel {
  error = 0,  ///< a failure weldr cannot work around (accept, state-file or access-log write)
  warn = 1,   ///< a problem it works around: backend errors, health changes, ejections
  info = 2,   ///< normal events: start, stop, changes to the pool (the default level)
  debug = 3,  ///< details: malformed requests, connect errors, refused retries
};

/// Receives each log line that passes the level filter (without a trailing newline).
using LogSink = std::function<void(LogLevel, std::string_view)>;

/// Sets the most verbose level that is emitted (default: info). Thread-safe.
void set_log_level(LogLevel level) noexcept;
/// The current level.
LogLevel log_level() noexcept;
/// Replaces the sink (default: one line on stderr with time and level). Call before starting work.
void set_log_sink(LogSink sink);
/// Parses "error", "warn", "info" or "debug".
std::optional<LogLevel> parse_log_level(std::string_view name) noexcept;
/// Writes one line through the sink when `level` is enabled (for hosts that share the log).
void log_message(LogLevel level, std::string_view line);
/// "error", "warn", "info" or "debug".
std::string_view to_string(LogLevel level) noexcept;

}  // namespace weldr
