// Request parser + header rewriting.
//
// The input is a byte stream from a client (one or more pipelined requests). It is parsed
// three times: all bytes at once, one byte per read, and in random reads with the readable
// bytes moved to a fresh buffer at each read; the three must see the same messages (heads,
// decoded bodies, boundaries). Each head that validate_request() accepts is rewritten with
// write_request_head() (as is, and with the header edits and target a hook could make), and
// the head sent upstream, followed by the body bytes as forwarded, is parsed again:
//  - it is well-formed (CRLF only as line ends, token names, one empty line) and parses;
//  - same method, the expected target (origin-form), HTTP/1.1, exactly one valid Host;
//  - same body framing (chunked, Content-Length, upgrade) and the same decoded body, ending
//    exactly where the forwarded bytes end (no smuggling between the two hops);
//  - no hop-by-hop field and no field named in Connection survives; every end-to-end field
//    does, in order, with this hop's Via and X-Forwarded-For entries appended to the last ones;
//  - a hook's edits never change framing fields.
// Hook edits are read from the request itself, as a hook copying client data would make them:
// "x-fuzz-set-NAME: V", "x-fuzz-add-NAME: V", "x-fuzz-del-NAME:", "x-fuzz-target: /path".

#include "fuzz_common.hpp"

#include "http/rewrite.hpp"

#include <weldr/hooks.hpp>

#include <llhttp.h>

namespace {

using fuzz::escaped;
using fuzz::Message;
using weldr::http::iequals;

constexpr std::string_view kClient = "192.0.2.7";
constexpr std::string_view kDefaultHost = "backend.test:8080";

using fuzz::framing;
using fuzz::hop_by_hop;
using fuzz::kVia;
using fuzz::starts_with_ci;

// RFC 9112 §3.2.2, written again here rather than borrowed from rewrite.cpp.
bool absolute_form(std::string_view target, std::string_view& authority, std::string_view& path) {
  std::size_t scheme = 0;
  if (starts_with_ci(target, "http://")) {
    scheme = 7;
  } else if (starts_with_ci(target, "https://")) {
    scheme = 8;
  } else {
    return false;
  }
  const std::string_view rest = target.substr(scheme);
  const std::size_t end = rest.find_first_of("/?#");
  authority = rest.substr(0, end);
  path = end == std::string_view::npos ? std::string_view{} : rest.substr(end);
  return true;
}

std::vector<std::string> connection_tokens(const Message& m) {
  std::vector<std::string> out;
  for (const auto& value : fuzz::values_of(m, "connection")) {
    weldr::http::for_each_token(value, [&](std::string_view t) { out.emplace_back(t); });
  }
  return out;
}

bool listed(const std::vector<std::string>& tokens, std::string_view name) {
  for (const auto& t : tokens) {
    if (iequals(t, name)) return true;
  }
  return false;
}

struct Hook {
  weldr::HeaderEdits edits;
  std::string target;
  bool any{false};
};

Hook hook_from(const Message& m) {
  Hook hook;
  for (const auto& [name, value] : m.fields) {
    if (starts_with_ci(name, "x-fuzz-set-") || starts_with_ci(name, "x-fuzz-add-")) {
      std::string field = name.substr(11);
      // A careful hook sets Host only to an authority; anything else would be its own bug.
      if (field.empty() || (iequals(field, "host") && !weldr::http::valid_authority(value))) continue;
      if (starts_with_ci(name, "x-fuzz-set-")) {
        hook.edits.set(field, value);
      } else {
        hook.edits.add(field, value);
      }
      hook.any = true;
    } else if (starts_with_ci(name, "x-fuzz-del-")) {
      hook.edits.remove(name.substr(11));
      hook.any = true;
    } else if (iequals(name, "x-fuzz-target") && weldr::http::valid_origin_form(value) &&
               value.find('#') == std::string::npos) {
      // valid_origin_form() lets '#' through, which origin-form does not have (RFC 9112 §3.2.1):
      // a hook that forwards one makes an invalid request of its own.
      hook.target = value;
      hook.any = true;
    }
  }
  return hook;
}

void check_rewrite(const std::uint8_t* data, const Message& m, const Hook* hook) {
  const char* base = reinterpret_cast<const char*>(data);
  weldr::http::RequestRewrite rw{kClient, "http", kVia, kDefaultHost};
  if (hook != nullptr) {
    rw.target = hook->target;
    rw.edits = &hook->edits;
  }
  std::string head;
  std::vector<std::string_view> scratch;
  weldr::http::write_request_head(head, base, m.head, rw, scratch);
  auto context = [&] {
    return std::string(std::string(hook != nullptr ? "with hook edits" : "plain") + "\n     client head: '" +
                       escaped(std::string_view(base + m.start, m.head_end - m.start)) + "'\n     upstream head: '" +
                       escaped(head) + "'");
  };
  fuzz::check_wire_head(head);

  std::string wire = head;
  if (m.complete) wire.append(base + m.head_end, m.end - m.head_end);
  fuzz::StreamOptions opt;
  opt.max_head = 1 << 20;
  opt.max_fields = 1 << 16;
  opt.max_messages = 1;
  const auto up = fuzz::parse_stream(reinterpret_cast<const std::uint8_t*>(wire.data()), wire.size(),
                                     {fuzz::Splitter::Mode::whole}, opt);
  FUZZ_CHECK(!up.empty() && up[0].head_done, "the upstream head does not parse: " + context());
  const Message& u = up[0];
  auto both = [&] {
    return std::string(context() + "\n     client:   " + fuzz::describe(m) + "\n     upstream: " + fuzz::describe(u));
  };

  // Request line.
  std::string_view authority;
  std::string_view path;
  const bool absolute = absolute_form(m.target, authority, path);
  std::string target = m.target;
  if (!rw.target.empty()) {
    target = rw.target;
  } else if (absolute) {
    target = (path.empty() || path.front() != '/') ? "/" + std::string(path) : std::string(path);
  }
  FUZZ_CHECK(u.method == m.method, "method changed: " + both());
  FUZZ_CHECK(u.target == target, "target '" + escaped(u.target) + "', expected '" + escaped(target) + "': " + both());
  FUZZ_CHECK(u.head.http_major == 1 && u.head.http_minor == 1, "not HTTP/1.1 upstream: " + both());

  // Framing.
  FUZZ_CHECK(u.head.chunked == m.head.chunked, "chunked changed: " + both());
  FUZZ_CHECK(u.head.has_content_length == m.head.has_content_length && u.head.content_length == m.head.content_length,
             "Content-Length changed: " + both());
  FUZZ_CHECK(u.head.upgrade == m.head.upgrade, "upgrade changed: " + both());
  if (m.complete) {
    FUZZ_CHECK(u.complete && !u.error && u.end == wire.size(), "upstream message boundary differs: " + both());
    FUZZ_CHECK(u.body == m.body, "upstream body differs: " + both());
  }

  // Host.
  const auto hosts = fuzz::values_of(u, "host");
  FUZZ_CHECK(hosts.size() == 1, std::to_string(hosts.size()) + " Host fields upstream: " + both());
  const auto rejection = weldr::http::validate_request(wire.data(), u.head);
  FUZZ_CHECK(rejection.status == 0,
             "upstream head fails validate_request (" + std::string(rejection.reason) + "): " + both());
  std::string host;
  if (absolute) {
    host = authority;
  } else if (const auto client_hosts = fuzz::values_of(m, "host"); !client_hosts.empty()) {
    host = client_hosts.back();
  } else {
    host = kDefaultHost;
  }
  if (hook == nullptr)
    FUZZ_CHECK(hosts[0] == host, "Host '" + escaped(hosts[0]) + "' expected '" + escaped(host) + "': " + both());
  // This hop's X-Forwarded-Proto, whatever the client sent; unless a hook removes or sets it:
  // then only the hook's.
  const auto protos = fuzz::values_of(u, "x-forwarded-proto");
  std::vector<std::string> expected_protos{"http"};
  if (hook != nullptr) {
    std::vector<std::string> added;
    for (const auto& f : hook->edits.added()) {
      if (iequals(f.name, "x-forwarded-proto")) added.push_back(f.value);
    }
    if (!added.empty() || hook->edits.removes("x-forwarded-proto")) expected_protos = added;
  }
  FUZZ_CHECK(protos == expected_protos, "X-Forwarded-Proto: " + both());

  // Hop-by-hop fields and fields named in Connection.
  const auto tokens = connection_tokens(m);
  for (const auto& [name, value] : u.fields) {
    if (hook != nullptr) {
      bool added = false;
      for (const auto& f : hook->edits.added())
        added = added || iequals(f.name, name);
      if (added) continue;  // the hook's own field
    }
    if (iequals(name, "connection")) {
      FUZZ_CHECK(m.head.upgrade && value == "upgrade", "Connection forwarded: " + both());
    } else if (iequals(name, "upgrade")) {
      FUZZ_CHECK(m.head.upgrade, "Upgrade forwarded without an upgrade: " + both());
    } else {
      FUZZ_CHECK(!hop_by_hop(name), "hop-by-hop field '" + escaped(name) + "' forwarded: " + both());
      const bool ours = iequals(name, "via") || starts_with_ci(name, "x-forwarded-") || framing(name);
      FUZZ_CHECK(ours || !listed(tokens, name),
                 "field '" + escaped(name) + "' named in Connection forwarded: " + both());
    }
  }

  if (hook != nullptr) {
    // Edits: removed fields are gone unless re-added (or this hop's own); added ones are there.
    for (const auto& removed : hook->edits.removed()) {
      if (framing(removed) || hop_by_hop(removed) || iequals(removed, "via") ||
          starts_with_ci(removed, "x-forwarded-")) {
        continue;
      }
      bool re_added = false;
      for (const auto& f : hook->edits.added())
        re_added = re_added || iequals(f.name, removed);
      if (!re_added)
        FUZZ_CHECK(fuzz::values_of(u, removed).empty(), "removed field '" + removed + "' forwarded: " + both());
    }
    return;
  }

  // Without a hook: every end-to-end field is forwarded, in order, unchanged; Via and
  // X-Forwarded-For get this hop's entry on their last kept field, or a field of their own.
  std::vector<std::pair<std::string, std::string>> kept;
  for (const auto& [name, value] : m.fields) {
    if (iequals(name, "host") && absolute) continue;
    if (iequals(name, "x-forwarded-proto") || iequals(name, "x-forwarded-host")) continue;
    if (iequals(name, "upgrade") && m.head.upgrade) {
      kept.emplace_back(name, value);
      continue;
    }
    if (hop_by_hop(name)) continue;
    if (listed(tokens, name) && !framing(name)) continue;
    kept.emplace_back(name, value);
  }
  bool merged_via = false;
  bool merged_xff = false;
  for (auto it = kept.rbegin(); it != kept.rend(); ++it) {
    if (!merged_via && iequals(it->first, "via")) {
      it->second += ", " + std::string(kVia);
      merged_via = true;
    }
    if (!merged_xff && iequals(it->first, "x-forwarded-for")) {
      it->second += ", " + std::string(kClient);
      merged_xff = true;
    }
  }
  // What weldr adds, taken out of the upstream list so that the rest can be compared.
  std::vector<std::pair<std::string, std::string>> rest;
  bool host_line = absolute || fuzz::values_of(m, "host").empty();
  for (const auto& [name, value] : u.fields) {
    if (host_line && iequals(name, "host")) {
      host_line = false;
      continue;
    }
    if (iequals(name, "x-forwarded-proto") || iequals(name, "x-forwarded-host")) continue;
    if (iequals(name, "connection")) continue;  // checked above
    if (!merged_via && iequals(name, "via") && value == kVia) {
      merged_via = true;
      continue;
    }
    if (!merged_xff && iequals(name, "x-forwarded-for") && value == kClient) {
      merged_xff = true;
      continue;
    }
    rest.emplace_back(name, value);
  }
  FUZZ_CHECK(merged_via && merged_xff, "no Via or X-Forwarded-For entry for this hop: " + both());
  auto listing = [&] {
    std::string out;
    for (const auto& [n, v] : kept)
      out += "\n       want " + escaped(n) + ": " + escaped(v);
    for (const auto& [n, v] : rest)
      out += "\n       got  " + escaped(n) + ": " + escaped(v);
    return out;
  };
  FUZZ_CHECK(rest == kept, "end-to-end fields not forwarded as they were: " + both() + listing());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::StreamOptions opt;
  opt.kind = weldr::http::Parser::Kind::request;
  opt.max_head = 2048;  // small limits, so that the fuzzer reaches them
  opt.max_fields = 24;

  const auto whole = fuzz::parse_stream(data, size, {fuzz::Splitter::Mode::whole}, opt);
  const auto bytewise = fuzz::parse_stream(data, size, {fuzz::Splitter::Mode::bytewise}, opt);
  fuzz::check_same(whole, bytewise, "all at once vs one byte per read");
  fuzz::StreamOptions moved = opt;
  moved.relocate = true;
  const auto random =
      fuzz::parse_stream(data, size, {fuzz::Splitter::Mode::random, fuzz::Rng(fuzz::hash(data, size))}, moved);
  fuzz::check_same(whole, random, "all at once vs random reads");

  for (const Message& m : whole) {
    if (!m.head_done) continue;
    const auto rejection = weldr::http::validate_request(reinterpret_cast<const char*>(data), m.head);
    if (rejection.status != 0) {
      FUZZ_CHECK(rejection.status >= 400 && rejection.status < 600 && !rejection.reason.empty(), "odd rejection");
      continue;
    }
    if (m.head.method == HTTP_CONNECT) continue;  // refused by the proxy before any rewriting
    check_rewrite(data, m, nullptr);
    if (const Hook hook = hook_from(m); hook.any) check_rewrite(data, m, &hook);
  }
  return 0;
}
