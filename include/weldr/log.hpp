#pragma once
/// \file
/// The library's log output: a level filter and a replaceable sink.

#include <functional>
#include <optional>
#include <string_view>

namespace weldr {

/// Severity of a log line, most severe first.
enum class LogLevel { error = 0, warn = 1, info = 2, debug = 3 };

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
