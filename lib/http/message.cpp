#include "http/message.hpp"

#include <algorithm>
#include <array>

namespace weldr::http {

void Head::clear() noexcept {
  http_major = 1;
  http_minor = 1;
  method = 0;
  method_name = {};
  target = {};
  status = 0;
  reason = {};
  fields.clear();
  size = 0;
  keep_alive = false;
  chunked = false;
  has_content_length = false;
  content_length = 0;
  upgrade = false;
}

namespace {
constexpr char lower(char c) noexcept {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}
}  // namespace

bool iequals(std::string_view a, std::string_view b) noexcept {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return lower(x) == lower(y); });
}

bool is_token(std::string_view text) noexcept {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
  });
}

bool list_contains(std::string_view value, std::string_view token) noexcept {
  bool found = false;
  for_each_token(value, [&](std::string_view t) { found = found || iequals(t, token); });
  return found;
}

std::optional<std::string_view> find_cookie(std::string_view field_value, std::string_view name) noexcept {
  std::size_t pos = 0;
  while (pos < field_value.size()) {
    std::size_t end = field_value.find(';', pos);
    if (end == std::string_view::npos) end = field_value.size();
    std::string_view pair = field_value.substr(pos, end - pos);
    while (!pair.empty() && (pair.front() == ' ' || pair.front() == '\t'))
      pair.remove_prefix(1);
    if (const auto eq = pair.find('='); eq != std::string_view::npos && pair.substr(0, eq) == name) {
      std::string_view value = pair.substr(eq + 1);
      while (!value.empty() && (value.back() == ' ' || value.back() == '\t'))
        value.remove_suffix(1);
      if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
      return value;
    }
    pos = end + 1;
  }
  return std::nullopt;
}

bool is_idempotent(std::string_view method) noexcept {
  static constexpr std::array<std::string_view, 6> kIdempotent{"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"};
  return std::find(kIdempotent.begin(), kIdempotent.end(), method) != kIdempotent.end();
}

}  // namespace weldr::http
