#pragma once
// weldr-cli under systemd: the notify protocol (Type=notify) and journal-friendly log lines.
// Both are a few lines of socket and string code, so no libsystemd is linked.

#include <weldr/log.hpp>

#include <string>
#include <string_view>

namespace weldr::cli {

/// Sends `state` ("READY=1", "STOPPING=1", ...) to the service manager when $NOTIFY_SOCKET is
/// set (a path, or an abstract socket name starting with '@'); false when it is not set or the
/// datagram could not be sent. Never blocks.
bool notify_systemd(std::string_view state);

/// True when standard error is the journal: $JOURNAL_STREAM names its device and inode.
bool stderr_is_journal();

/// A log line for the journal: the syslog priority as a "<N>" prefix (error 3, warn 4, info 6,
/// debug 7), so that `journalctl -p err` works, and no timestamp of our own (the journal has one).
std::string journal_line(LogLevel level, std::string_view line);

}  // namespace weldr::cli
