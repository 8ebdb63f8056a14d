#include <weldr/log.hpp>

#include "log_internal.hpp"

#include <fmt/chrono.h>

#include <chrono>
#include <cstdio>
#include <mutex>

namespace weldr {
namespace detail {

std::atomic<int> g_log_level{static_cast<int>(LogLevel::info)};

namespace {

std::mutex g_sink_mutex;
LogSink g_sink;  // guarded by g_sink_mutex; empty means the stderr default

void default_sink(LogLevel level, std::string_view line) {
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()) % 1000;
  // One fprintf per line so that lines from several threads do not interleave.
  const std::string out =
      fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03d}Z {:<5} {}\n", fmt::gmtime(std::chrono::system_clock::to_time_t(now)),
                  ms.count(), to_string(level), line);
  std::fputs(out.c_str(), stderr);
}

}  // namespace

void write_log(LogLevel level, std::string_view line) {
  std::lock_guard lock(g_sink_mutex);
  if (g_sink) {
    g_sink(level, line);
  } else {
    default_sink(level, line);
  }
}

void log_exception(std::exception_ptr e, std::string_view what) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    log(LogLevel::error, "{}: unexpected exception: {}", what, ex.what());
  } catch (...) {
    log(LogLevel::error, "{}: unexpected exception", what);
  }
}

}  // namespace detail

void set_log_level(LogLevel level) noexcept {
  detail::g_log_level.store(static_cast<int>(level), std::memory_order_relaxed);
}

LogLevel log_level() noexcept {
  return static_cast<LogLevel>(detail::g_log_level.load(std::memory_order_relaxed));
}

void set_log_sink(LogSink sink) {
  std::lock_guard lock(detail::g_sink_mutex);
  detail::g_sink = std::move(sink);
}

void log_message(LogLevel level, std::string_view line) {
  if (detail::log_enabled(level)) detail::write_log(level, line);
}

std::optional<LogLevel> parse_log_level(std::string_view name) noexcept {
  for (auto level : {LogLevel::error, LogLevel::warn, LogLevel::info, LogLevel::debug}) {
    if (to_string(level) == name) return level;
  }
  return std::nullopt;
}

std::string_view to_string(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::error: return "error";
    case LogLevel::warn: return "warn";
    case LogLevel::info: return "info";
    case LogLevel::debug: return "debug";
  }
  return "unknown";
}

}  // namespace weldr
