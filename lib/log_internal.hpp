#pragma once
// Internal logging front end: formats only when the level is enabled.

#include <weldr/log.hpp>

#include <fmt/format.h>

#include <atomic>
#include <exception>
#include <string_view>
#include <utility>

namespace weldr::detail {

extern std::atomic<int> g_log_level;

void write_log(LogLevel level, std::string_view line);

/// Logs an exception that escaped a coroutine (`what` names it); nothing when `e` is null.
/// Used as the completion handler of co_spawn, so that no failure is silent.
void log_exception(std::exception_ptr e, std::string_view what);

inline bool log_enabled(LogLevel level) noexcept {
  return static_cast<int>(level) <= g_log_level.load(std::memory_order_relaxed);
}

template <typename... Args>
void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
  if (!log_enabled(level)) return;
  fmt::memory_buffer buffer;
  fmt::format_to(std::back_inserter(buffer), format, std::forward<Args>(args)...);
  write_log(level, std::string_view(buffer.data(), buffer.size()));
}

}  // namespace weldr::detail
