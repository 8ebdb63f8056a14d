#include <weldr/access_log.hpp>

#include "log_internal.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cerrno>
#include <system_error>

namespace weldr {

std::optional<AccessLogFormat> parse_access_log_format(std::string_view text) {
  if (text == "common") return AccessLogFormat::common;
  if (text == "combined") return AccessLogFormat::combined;
  if (text == "json") return AccessLogFormat::json;
  return std::nullopt;
}

namespace {

// Escapes a string for a quoted field of the common log format, as nginx does: " and \ with a
// backslash, control and non-ASCII bytes as \xHH, so that a line is always one line.
void append_escaped(std::string& out, std::string_view text) {
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (byte < 0x20 || byte >= 0x7f) {
      fmt::format_to(std::back_inserter(out), "\\x{:02X}", byte);
    } else {
      out.push_back(c);
    }
  }
}

void append_or_dash(std::string& out, std::string_view text) {
  if (text.empty()) {
    out.push_back('-');
  } else {
    append_escaped(out, text);
  }
}

// Length of the valid UTF-8 sequence at the start of `text`, or 0 (RFC 3629: no overlongs,
// no surrogates, nothing above U+10FFFF).
std::size_t utf8_sequence(std::string_view text) {
  const auto b0 = static_cast<unsigned char>(text[0]);
  std::size_t n = 0;
  unsigned lo = 0x80;
  unsigned hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (text.size() < n) return 0;
  for (std::size_t i = 1; i < n; ++i) {
    const auto b = static_cast<unsigned char>(text[i]);
    if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xBF)) return 0;
  }
  return n;
}

// JSON must be UTF-8: bytes that are not (clients send anything) become U+FFFD.
std::string valid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    if (static_cast<unsigned char>(text[i]) < 0x80) {
      out.push_back(text[i++]);
      continue;
    }
    const std::size_t n = utf8_sequence(text.substr(i));
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(text.substr(i, n));
      i += n;
    }
  }
  return out;
}

std::string clf_time(std::chrono::system_clock::time_point t) {
  return fmt::format("{:%d/%b/%Y:%H:%M:%S} +0000", fmt::gmtime(std::chrono::system_clock::to_time_t(t)));
}

std::string iso_time(std::chrono::system_clock::time_point t) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()) % 1000;
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03d}Z", fmt::gmtime(std::chrono::system_clock::to_time_t(t)), ms.count());
}

}  // namespace

std::string format_access_log(const RequestLog& log, AccessLogFormat format) {
  if (format == AccessLogFormat::json) {
    rapidjson::StringBuffer buffer;
    rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
    auto string = [&](const char* key, std::string_view value) {
      w.Key(key);
      const std::string clean = valid_utf8(value);
      w.String(clean.data(), static_cast<rapidjson::SizeType>(clean.size()));
    };
    w.StartObject();
    string("time", iso_time(log.started));
    string("client", log.client_address);
    string("method", log.method);
    string("target", log.target);
    string("protocol", log.method.empty() ? std::string_view{} : log.http_minor == 0 ? "HTTP/1.0" : "HTTP/1.1");
    w.Key("status");
    w.Int(log.status);
    w.Key("bytes_sent");
    w.Uint64(log.response_bytes);
    w.Key("request_body_bytes");
    w.Uint64(log.request_body_bytes);
    string("host", log.host);
    string("referer", log.referer);
    string("user_agent", log.user_agent);
    string("backend", log.backend);
    w.Key("attempts");
    w.Uint(log.attempts);
    w.Key("duration_ms");
    w.Double(static_cast<double>(log.duration.count()) / 1000.0);
    w.Key("upstream_ms");
    w.Double(static_cast<double>(log.upstream_time.count()) / 1000.0);
    string("error", log.error);
    w.EndObject();
    return std::string(buffer.GetString(), buffer.GetSize());
  }
  std::string out;
  append_or_dash(out, log.client_address);
  out += " - - [";
  out += clf_time(log.started);
  out += "] \"";
  if (log.method.empty()) {
    out.push_back('-');  // no request line could be read
  } else {
    append_escaped(out, log.method);
    out.push_back(' ');
    append_escaped(out, log.target);
    out += log.http_minor == 0 ? " HTTP/1.0" : " HTTP/1.1";
  }
  out += "\" ";
  if (log.status == 0) {
    out.push_back('-');
  } else {
    out += std::to_string(log.status);
  }
  out.push_back(' ');
  if (log.response_bytes == 0) {
    out.push_back('-');
  } else {
    out += std::to_string(log.response_bytes);
  }
  if (format == AccessLogFormat::combined) {
    out += " \"";
    append_or_dash(out, log.referer);
    out += "\" \"";
    append_or_dash(out, log.user_agent);
    out.push_back('"');
  }
  return out;
}

namespace {

std::FILE* open_log(const std::string& path) {
  if (path == "-") return stdout;
  return std::fopen(path.c_str(), "ae");
}

}  // namespace

AccessLog::AccessLog(std::string path, AccessLogFormat format) : path_(std::move(path)), format_(format) {
  file_ = open_log(path_);
  if (file_ == nullptr) throw std::system_error(errno, std::generic_category(), "cannot open access log " + path_);
}

AccessLog::~AccessLog() {
  if (file_ != nullptr && file_ != stdout) std::fclose(file_);
}

void AccessLog::on_log(const RequestLog& log) {
  std::string line = format_access_log(log, format_);
  line.push_back('\n');
  std::lock_guard lock(mutex_);
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    const int error = errno;
    std::clearerr(file_);
    // Once per run of failures, not once per request.
    if (!failing_) {
      detail::log(LogLevel::error, "access log {}: write failed: {}", path_, std::generic_category().message(error));
    }
    failing_ = true;
  } else if (failing_) {
    failing_ = false;
    detail::log(LogLevel::info, "access log {}: writing again", path_);
  }
}

bool AccessLog::reopen() {
  if (path_ == "-") return true;
  std::FILE* fresh = open_log(path_);
  if (fresh == nullptr) {
    detail::log(LogLevel::error, "access log {}: cannot reopen: {}", path_, std::generic_category().message(errno));
    return false;
  }
  std::lock_guard lock(mutex_);
  std::fclose(file_);
  file_ = fresh;
  return true;
}

}  // namespace weldr
