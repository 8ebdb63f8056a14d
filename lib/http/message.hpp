#pragma once
// The parsed form of an HTTP/1.x message head. Strings are spans (offset, length) into the
// buffer that holds the raw head, so parsing allocates nothing per header.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace weldr::http {

/// A byte range of the buffer a head was parsed from.
struct Span {
  std::uint32_t offset{0};
  std::uint32_t length{0};

  /// The bytes of this span inside `base`.
  [[nodiscard]] std::string_view view(const char* base) const noexcept { return {base + offset, length}; }
};

/// One header field line.
struct Field {
  Span name;
  Span value;
};

/// A request or response head.
struct Head {
  std::uint8_t http_major{1};
  std::uint8_t http_minor{1};
  // Requests.
  std::uint8_t method{0};  ///< llhttp_method_t
  Span method_name;
  Span target;
  // Responses.
  int status{0};
  Span reason;
  // Both.
  std::vector<Field> fields;
  std::size_t size{0};     ///< bytes of the raw head, CRLFCRLF included
  bool keep_alive{false};  ///< the sender allows another message on this connection
  bool chunked{false};     ///< Transfer-Encoding ends in chunked
  bool has_content_length{false};
  std::uint64_t content_length{0};
  bool upgrade{false};  ///< Connection: upgrade with an Upgrade header (or CONNECT)

  /// True for HTTP/1.1 and later.
  [[nodiscard]] bool is_http11() const noexcept { return http_major > 1 || (http_major == 1 && http_minor >= 1); }
  /// Empties the head, keeping the capacity of `fields`.
  void clear() noexcept;
};

/// ASCII case-insensitive comparison, as header names and tokens need.
bool iequals(std::string_view a, std::string_view b) noexcept;

/// Calls `fn(token)` for each comma-separated element of a header list value
/// (RFC 9110 §5.6.1), trimmed of optional whitespace, skipping empty elements.
template <typename Fn>
void for_each_token(std::string_view value, Fn&& fn) {
  std::size_t pos = 0;
  while (pos <= value.size()) {
    std::size_t comma = value.find(',', pos);
    if (comma == std::string_view::npos) comma = value.size();
    std::string_view token = value.substr(pos, comma - pos);
    while (!token.empty() && (token.front() == ' ' || token.front() == '\t'))
      token.remove_prefix(1);
    while (!token.empty() && (token.back() == ' ' || token.back() == '\t'))
      token.remove_suffix(1);
    if (!token.empty()) fn(token);
    pos = comma + 1;
  }
}

/// True when `text` is a token (RFC 9110 §5.6.2): one or more tchar. Field names are tokens,
/// and so are cookie names (RFC 6265 §4.1.1).
bool is_token(std::string_view text) noexcept;

/// True when the comma-separated list `value` contains `token` (case-insensitive).
bool list_contains(std::string_view value, std::string_view token) noexcept;

/// The value of the cookie `name` in a Cookie field value ("a=1; b=2", RFC 6265 §4.2.1), or
/// nothing when it is not there. Names are case-sensitive.
std::optional<std::string_view> find_cookie(std::string_view field_value, std::string_view name) noexcept;

/// True for methods that RFC 9110 §9.2.2 defines as idempotent.
bool is_idempotent(std::string_view method) noexcept;

}  // namespace weldr::http
