#include "http/rewrite.hpp"

#include <llhttp.h>

#include <algorithm>
#include <array>
#include <charconv>

namespace weldr::http {

namespace {

// Fields that apply to one connection only (RFC 9110 §7.6.1) plus the proxy credentials of
// §11.7, which are for this hop alone.
constexpr std::array<std::string_view, 8> kHopByHop{
    "connection", "keep-alive",          "proxy-connection",   "te",
    "trailer",    "proxy-authorization", "proxy-authenticate", "upgrade",
};

// A client may name any field in Connection; these are never dropped that way, or a
// request would change its framing or target between two hops.
constexpr std::array<std::string_view, 3> kProtected{"content-length", "transfer-encoding", "host"};

template <std::size_t N>
bool in(const std::array<std::string_view, N>& set, std::string_view name) noexcept {
  for (std::string_view s : set) {
    if (iequals(s, name)) return true;
  }
  return false;
}

void collect_connection_tokens(const char* base, const Head& head, std::vector<std::string_view>& tokens) {
  tokens.clear();
  for (const Field& f : head.fields) {
    if (iequals(f.name.view(base), "connection")) {
      for_each_token(f.value.view(base), [&](std::string_view t) { tokens.push_back(t); });
    }
  }
}

bool is_hop_by_hop(std::string_view name, const std::vector<std::string_view>& tokens, bool keep_upgrade) {
  if (keep_upgrade && iequals(name, "upgrade")) return false;
  if (in(kHopByHop, name)) return true;
  if (in(kProtected, name)) return false;
  for (std::string_view t : tokens) {
    if (iequals(t, name)) return true;
  }
  return false;
}

// Index of the last field called `name` that `skip` keeps, or -1.
template <typename Skip>
int last_index(const char* base, const Head& head, std::string_view name, Skip&& skip) {
  int found = -1;
  for (std::size_t i = 0; i < head.fields.size(); ++i) {
    const std::string_view n = head.fields[i].name.view(base);
    if (iequals(n, name) && !skip(n)) found = static_cast<int>(i);
  }
  return found;
}

int last_index(const char* base, const Head& head, std::string_view name) {
  return last_index(base, head, name, [](std::string_view) { return false; });
}

void append_field(std::string& out, std::string_view name, std::string_view value) {
  out.append(name).append(": ").append(value).append("\r\n");
}

void append_number(std::string& out, long long value) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
  (void)ec;
  out.append(buf, end);
}

// Writes every end-to-end field, merging our entry into the last Via (and, for requests,
// the client address into the last X-Forwarded-For) so each list stays one field. Only a
// field that is kept can carry our entry: a sender that names Via in Connection must not be
// able to drop this hop's entry along with its own.
template <typename Skip>
void copy_fields(std::string& out, const char* base, const Head& head, std::string_view via, std::string_view xff_entry,
                 Skip&& skip) {
  const int last_via = last_index(base, head, "via", skip);
  const int last_xff = xff_entry.empty() ? -1 : last_index(base, head, "x-forwarded-for", skip);
  for (std::size_t i = 0; i < head.fields.size(); ++i) {
    const std::string_view name = head.fields[i].name.view(base);
    const std::string_view value = head.fields[i].value.view(base);
    if (skip(name)) continue;
    out.append(name).append(": ").append(value);
    if (static_cast<int>(i) == last_via) out.append(", ").append(via);
    if (static_cast<int>(i) == last_xff) out.append(", ").append(xff_entry);
    out.append("\r\n");
  }
  if (last_via < 0) append_field(out, "Via", via);
  if (!xff_entry.empty() && last_xff < 0) append_field(out, "X-Forwarded-For", xff_entry);
}

// Splits an absolute-form target (RFC 9112 §3.2.2) into authority and origin-form path.
bool split_absolute_form(std::string_view target, std::string_view& authority, std::string_view& path) {
  std::size_t scheme_end = 0;
  if (target.size() >= 7 && iequals(target.substr(0, 7), "http://")) {
    scheme_end = 7;
  } else if (target.size() >= 8 && iequals(target.substr(0, 8), "https://")) {
    scheme_end = 8;
  } else {
    return false;
  }
  const std::string_view rest = target.substr(scheme_end);
  const std::size_t end = rest.find_first_of("/?#");
  authority = rest.substr(0, end);
  path = end == std::string_view::npos ? std::string_view{} : rest.substr(end);
  return true;
}

}  // namespace

OriginForm origin_form(const char* base, const Head& head) noexcept {
  OriginForm out;
  const std::string_view target = head.target.view(base);
  std::string_view authority;
  std::string_view path;
  if (split_absolute_form(target, authority, path)) {
    out.host = authority;
    out.path = path.empty() ? std::string_view("/") : path;
  } else {
    out.path = target;
    const int host_index = last_index(base, head, "host");
    if (host_index >= 0) out.host = head.fields[static_cast<std::size_t>(host_index)].value.view(base);
  }
  out.path = out.path.substr(0, out.path.find('?'));
  return out;
}

bool valid_authority(std::string_view authority) noexcept {
  // uri-host [":" port] (RFC 9110 §7.2, RFC 3986 §3.2.2); no userinfo (RFC 9110 §4.2.4).
  // An empty value is what a client sends when the target has no authority (RFC 9112 §3.2).
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); };
  std::string_view host = authority;
  std::string_view port;
  bool has_port = false;
  if (!authority.empty() && authority.front() == '[') {
    // IP-literal: an IPv6 address (or IPvFuture) in brackets.
    const auto close = authority.find(']');
    if (close == std::string_view::npos || close < 3) return false;
    const std::string_view inside = authority.substr(1, close - 1);
    const bool ipv6 = std::all_of(inside.begin(), inside.end(), [&](char c) { return hex(c) || c == ':' || c == '.'; });
    const bool future = inside.front() == 'v' || inside.front() == 'V';
    if (!ipv6 && !future) return false;
    const std::string_view rest = authority.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return false;
      has_port = true;
      port = rest.substr(1);
    }
    host = {};
  } else if (const auto colon = authority.find(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
    has_port = true;
  }
  // reg-name / IPv4address: unreserved, pct-encoded, sub-delims.
  for (std::size_t i = 0; i < host.size(); ++i) {
    const char c = host[i];
    if (c == '%') {
      if (i + 2 >= host.size() || !hex(host[i + 1]) || !hex(host[i + 2])) return false;
      i += 2;
      continue;
    }
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    std::string_view("-._~!$&'()*+,;=").find(c) != std::string_view::npos;
    if (!ok) return false;
  }
  if (has_port) {
    // port = *DIGIT; more than 65535 names no TCP port.
    if (port.size() > 5 || !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return false;
    }
    unsigned value = 0;
    for (const char c : port)
      value = value * 10 + static_cast<unsigned>(c - '0');
    if (value > 65535) return false;
    if (host.empty() && authority.front() != '[') return false;  // ":80"
  }
  return true;
}

Rejection validate_request(const char* base, const Head& head) {
  if (head.http_major != 1) {
    if (head.http_major == 0) return {400, "HTTP/0.9 is not supported"};
    return {505, "only HTTP/1.0 and HTTP/1.1 are supported on this port"};
  }
  const std::string_view target = head.target.view(base);
  if (target.find('#') != std::string_view::npos) return {400, "fragment in the request target"};
  std::string_view authority;
  std::string_view path;
  const bool absolute = split_absolute_form(target, authority, path);
  if (absolute && (authority.empty() || !valid_authority(authority))) {
    return {400, "invalid authority in the request target"};
  }
  // origin-form, absolute-form (http and https), or asterisk-form for OPTIONS (RFC 9112 §3.2).
  if (head.method == HTTP_CONNECT) {
    // authority-form: the caller refuses CONNECT (405) on its own.
  } else if (target == "*") {
    if (head.method != HTTP_OPTIONS) return {400, "the asterisk-form target is for OPTIONS only"};
  } else if (!absolute && (target.empty() || target.front() != '/')) {
    return {400, "invalid request target"};
  }
  int hosts = 0;
  int transfer_encodings = 0;
  for (const Field& f : head.fields) {
    const std::string_view name = f.name.view(base);
    if (name.empty()) return {400, "empty field name"};
    if (iequals(name, "transfer-encoding")) ++transfer_encodings;
    if (!iequals(name, "host")) continue;
    ++hosts;
    if (!valid_authority(f.value.view(base))) return {400, "invalid Host header"};
  }
  if (hosts > 1) return {400, "more than one Host header"};
  if (hosts == 0 && head.is_http11()) return {400, "missing Host header"};
  if (transfer_encodings > 0 && !head.is_http11()) return {400, "Transfer-Encoding in an HTTP/1.0 request"};
  // RFC 9112 §6.3: with Transfer-Encoding, chunked must be the final coding, and a
  // Content-Length beside it makes the framing ambiguous (both: 400 and close). An empty
  // Transfer-Encoding counts: a hop that reads it as chunked would frame the body otherwise.
  if (transfer_encodings > 0 && !head.chunked) return {400, "Transfer-Encoding without chunked as final coding"};
  if (transfer_encodings > 0 && head.has_content_length) {
    return {400, "both Transfer-Encoding and Content-Length"};
  }
  return {};
}

bool valid_origin_form(std::string_view target) noexcept {
  if (target.empty() || target.front() != '/') return false;
  return std::all_of(target.begin(), target.end(), [](char c) {
    const auto byte = static_cast<unsigned char>(c);
    return byte > 0x20 && byte < 0x7f && c != '#';  // no fragment in a request target
  });
}

bool is_protected_field(std::string_view name) noexcept {
  for (const std::string_view p : {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
                                   "trailer", "proxy-connection"}) {
    if (iequals(name, p)) return true;
  }
  return false;
}

namespace {

bool edit_removes(const HeaderEdits* edits, std::string_view name) {
  return edits != nullptr && !is_protected_field(name) && edits->removes(name);
}

// A field name is a token (RFC 9110 §5.1); a value is field-vchar, obs-text, SP and HTAB
// (§5.5): anything else (CR, LF, NUL, other controls) could be read differently by the next hop.
bool valid_field(std::string_view name, std::string_view value) {
  return is_token(name) && std::all_of(value.begin(), value.end(), [](char c) {
           const auto byte = static_cast<unsigned char>(c);
           return byte == '\t' || (byte >= 0x20 && byte != 0x7f);
         });
}

void append_edits(std::string& out, const HeaderEdits* edits) {
  if (edits == nullptr) return;
  for (const auto& field : edits->added()) {
    if (is_protected_field(field.name) || !valid_field(field.name, field.value)) continue;
    append_field(out, field.name, field.value);
  }
}

}  // namespace

void write_request_head(std::string& out, const char* base, const Head& head, const RequestRewrite& rw,
                        std::vector<std::string_view>& scratch) {
  collect_connection_tokens(base, head, scratch);
  std::string_view target = head.target.view(base);
  std::string_view authority;
  std::string_view path;
  const bool absolute = split_absolute_form(target, authority, path);

  out.append(head.method_name.view(base)).push_back(' ');
  if (!rw.target.empty()) {
    out.append(rw.target);  // a hook's, origin-form; Host still comes from the original target
  } else if (absolute) {
    // The request-target's authority replaces Host (RFC 9112 §3.2.2); the origin gets origin-form.
    if (path.empty() || path.front() != '/') out.push_back('/');
    out.append(path);
  } else {
    out.append(target);
  }
  out.append(" HTTP/1.1\r\n");

  std::string_view host;
  const int host_index = last_index(base, head, "host");
  if (absolute) {
    host = authority;
  } else if (host_index >= 0) {
    host = head.fields[static_cast<std::size_t>(host_index)].value.view(base);
  } else {
    host = rw.default_host;
  }
  // HTTP/1.1 requires a Host: a hook may replace it, not remove it.
  const bool host_replaced = rw.edits != nullptr && rw.edits->removes("host") && rw.edits->adds("host");
  if ((absolute || host_index < 0) && !host_replaced) append_field(out, "Host", host);

  copy_fields(out, base, head, rw.via, rw.client_address, [&](std::string_view name) {
    if (absolute && iequals(name, "host")) return true;
    if (iequals(name, "host")) return host_replaced;
    if (edit_removes(rw.edits, name)) return true;
    // Set by us, never trusted from the client.
    if (iequals(name, "x-forwarded-proto") || iequals(name, "x-forwarded-host")) return true;
    return is_hop_by_hop(name, scratch, head.upgrade);
  });
  // weldr's own X-Forwarded-Proto and -Host, unless a hook set or removed them (one of each).
  auto hook_owns = [&](std::string_view name) {
    return rw.edits != nullptr && (rw.edits->removes(name) || rw.edits->adds(name));
  };
  if (!hook_owns("x-forwarded-proto")) append_field(out, "X-Forwarded-Proto", rw.proto);
  if ((absolute || host_index >= 0) && !host.empty() && !hook_owns("x-forwarded-host")) {
    append_field(out, "X-Forwarded-Host", host);
  }
  append_edits(out, rw.edits);
  if (head.upgrade) append_field(out, "Connection", "upgrade");
  out.append("\r\n");
}

void write_response_head(std::string& out, const char* base, const Head& head, const ResponseRewrite& rw,
                         std::vector<std::string_view>& scratch) {
  collect_connection_tokens(base, head, scratch);
  out.append("HTTP/1.1 ");
  append_number(out, head.status);
  out.push_back(' ');
  out.append(head.reason.view(base)).append("\r\n");
  // A 204 has no body and must not say otherwise (RFC 9110 §8.6, RFC 9112 §6.1), nor may a 304
  // claim a transfer coding: such framing fields from a server are dropped, not relayed.
  const bool no_framing = head.status == 204;
  const bool no_coding = head.status == 204 || head.status == 304;
  copy_fields(out, base, head, rw.via, {}, [&](std::string_view name) {
    if (rw.dechunk && iequals(name, "transfer-encoding")) return true;
    if (no_framing && iequals(name, "content-length")) return true;
    if (no_coding && iequals(name, "transfer-encoding")) return true;
    if (edit_removes(rw.edits, name)) return true;
    return is_hop_by_hop(name, scratch, rw.upgrade);
  });
  append_edits(out, rw.edits);
  if (rw.upgrade) {
    append_field(out, "Connection", "upgrade");
  } else if (rw.close) {
    append_field(out, "Connection", "close");
  } else if (rw.client_http10) {
    append_field(out, "Connection", "keep-alive");
  }
  out.append("\r\n");
}

void write_error_response(std::string& out, int status, std::string_view reason, std::string_view body, bool close,
                          std::string_view extra_headers) {
  out.append("HTTP/1.1 ");
  append_number(out, status);
  out.push_back(' ');
  out.append(reason.empty() ? reason_phrase(status) : reason).append("\r\n");
  out.append("Content-Type: text/plain; charset=utf-8\r\nContent-Length: ");
  append_number(out, static_cast<long long>(body.size()));
  out.append("\r\n");
  out.append(extra_headers);
  if (close) out.append("Connection: close\r\n");
  out.append("\r\n").append(body);
}

int local_response_status(const LocalResponse& response) noexcept {
  return response.status >= 200 && response.status <= 599 ? response.status : 500;
}

void write_local_response(std::string& out, const LocalResponse& response, bool close, bool head_request,
                          bool client_http10) {
  const int status = local_response_status(response);
  const bool bodiless = status == 204 || status == 304;
  out.append("HTTP/1.1 ");
  append_number(out, status);
  out.push_back(' ');
  out.append(reason_phrase(status)).append("\r\n");
  HeaderEdits fields;
  for (const auto& field : response.headers)
    fields.add(field.name, field.value);
  append_edits(out, &fields);
  if (!bodiless) {
    out.append("Content-Length: ");
    append_number(out, static_cast<long long>(response.body.size()));
    out.append("\r\n");
  }
  if (close) {
    out.append("Connection: close\r\n");
  } else if (client_http10) {
    out.append("Connection: keep-alive\r\n");
  }
  out.append("\r\n");
  if (!bodiless && !head_request) out.append(response.body);
}

std::string_view reason_phrase(int status) noexcept {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 403: return "Forbidden";
    case 410: return "Gone";
    case 429: return "Too Many Requests";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 401: return "Unauthorized";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

}  // namespace weldr::http
