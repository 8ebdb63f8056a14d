// Response parser + response head rewriting.
//
// The input is a byte stream from a backend (interim 1xx heads, then responses). It is parsed
// as the answer to a GET and to a HEAD, each three ways (all bytes at once, one byte per read,
// random reads into a moving buffer), which must agree. Every head is then written for the
// client with write_response_head() as relay_response() does, for HTTP/1.1 and HTTP/1.0
// clients, keep-alive or not, with or without an upgrade asked for (and once with a hook's
// edits), and the head plus the body as the proxy sends it (raw, or dechunked for HTTP/1.0) is
// parsed again as the client would:
//  - well-formed head, same status and reason, HTTP/1.1;
//  - the same decoded body, ending where the bytes sent end, or at the close for a
//    close-delimited body, which must then say Connection: close;
//  - never chunked to an HTTP/1.0 client; framing otherwise unchanged;
//  - one Connection field at most, saying close / upgrade / keep-alive as the case is;
//  - no hop-by-hop field and no field named in Connection; end-to-end fields in order,
//    unchanged, with this hop's Via entry on the last Via.
// Hook edits are read from the response: "x-fuzz-set-NAME: V", "x-fuzz-add-NAME: V",
// "x-fuzz-del-NAME:".

#include "fuzz_common.hpp"

#include "http/rewrite.hpp"

#include <weldr/hooks.hpp>

namespace {

using fuzz::escaped;
using fuzz::Message;
using weldr::http::iequals;

using fuzz::framing;
using fuzz::hop_by_hop;
using fuzz::kVia;
using fuzz::starts_with_ci;

bool listed(const Message& m, std::string_view name) {
  bool found = false;
  for (const auto& value : fuzz::values_of(m, "connection")) {
    weldr::http::for_each_token(value, [&](std::string_view t) { found = found || iequals(t, name); });
  }
  return found;
}

weldr::HeaderEdits edits_from(const Message& m, bool& any) {
  weldr::HeaderEdits edits;
  any = false;
  for (const auto& [name, value] : m.fields) {
    if (starts_with_ci(name, "x-fuzz-set-") && name.size() > 11) {
      edits.set(name.substr(11), value);
      any = true;
    } else if (starts_with_ci(name, "x-fuzz-add-") && name.size() > 11) {
      edits.add(name.substr(11), value);
      any = true;
    } else if (starts_with_ci(name, "x-fuzz-del-")) {
      edits.remove(name.substr(11));
      any = true;
    }
  }
  return edits;
}

struct Client {
  bool http10;
  bool keep_alive;
  bool asked_upgrade;
};

void check_relay(const std::uint8_t* data, const Message& m, bool head_request, Client client,
                 const weldr::HeaderEdits* edits) {
  const char* base = reinterpret_cast<const char*>(data);
  // What relay_response() decides.
  weldr::http::ResponseRewrite rw{kVia, false, false, false, false};
  if (!m.interim) {
    rw.upgrade = m.head.status == 101;
    rw.dechunk = client.http10 && m.head.chunked;
    rw.close = !client.keep_alive || m.needs_eof || rw.dechunk;
    rw.client_http10 = client.http10;
    rw.edits = edits;
  }
  std::string head;
  std::vector<std::string_view> scratch;
  weldr::http::write_response_head(head, base, m.head, rw, scratch);
  auto context = [&] {
    return std::string(std::string("client HTTP/1.") + (client.http10 ? "0" : "1") +
                       (client.keep_alive ? " keep-alive" : " close") + (head_request ? " HEAD" : "") +
                       (edits != nullptr ? " with hook edits" : "") + "\n     backend head: '" +
                       escaped(std::string_view(base + m.start, m.head_end - m.start)) + "'\n     client head:  '" +
                       escaped(head) + "'");
  };
  fuzz::check_wire_head(head);

  std::string wire = head;
  if (m.complete && !rw.upgrade) {
    if (rw.dechunk) {
      wire += m.body;
    } else {
      wire.append(base + m.head_end, m.end - m.head_end);
    }
  }
  fuzz::StreamOptions opt;
  opt.kind = weldr::http::Parser::Kind::response;
  opt.head_request = head_request;
  opt.max_head = 1 << 20;
  opt.max_fields = 1 << 16;
  opt.max_messages = 1;
  const auto out = fuzz::parse_stream(reinterpret_cast<const std::uint8_t*>(wire.data()), wire.size(),
                                      {fuzz::Splitter::Mode::whole}, opt);
  FUZZ_CHECK(!out.empty() && out[0].head_done, "the client head does not parse: " + context());
  const Message& c = out[0];
  auto both = [&] {
    return std::string(context() + "\n     backend: " + fuzz::describe(m) + "\n     client:  " + fuzz::describe(c));
  };

  FUZZ_CHECK(c.head.status == m.head.status && c.reason == m.reason, "status line changed: " + both());
  FUZZ_CHECK(c.head.http_major == 1 && c.head.http_minor == 1, "not HTTP/1.1: " + both());
  if (client.http10) FUZZ_CHECK(!c.head.chunked, "chunked to an HTTP/1.0 client: " + both());
  // A 204 has no body and says nothing of one; a 304 claims no transfer coding (RFC 9110 §8.6,
  // RFC 9112 §6.1): weldr drops such framing fields instead of relaying them.
  const bool drops_length = m.head.status == 204;
  const bool drops_coding = m.head.status == 204 || m.head.status == 304;
  if (!rw.dechunk) {
    if (drops_coding) {
      FUZZ_CHECK(!c.head.chunked, "Transfer-Encoding relayed on a 204 or 304: " + both());
    } else {
      FUZZ_CHECK(c.head.chunked == m.head.chunked, "chunked changed: " + both());
    }
    FUZZ_CHECK(c.needs_eof == m.needs_eof, "close-delimited changed: " + both());
  }
  if (drops_length) {
    FUZZ_CHECK(!c.head.has_content_length, "Content-Length relayed on a 204: " + both());
  } else {
    FUZZ_CHECK(c.head.has_content_length == m.head.has_content_length && c.head.content_length == m.head.content_length,
               "Content-Length changed: " + both());
  }
  if (m.complete && !rw.upgrade && !m.interim) {
    FUZZ_CHECK(c.complete && !c.error && c.end == wire.size(), "message boundary differs: " + both());
    FUZZ_CHECK(c.body == m.body, "body differs: " + both());
  }

  const auto connection = fuzz::values_of(c, "connection");
  FUZZ_CHECK(connection.size() <= 1, "several Connection fields: " + both());
  if (rw.upgrade) {
    FUZZ_CHECK(connection.size() == 1 && connection[0] == "upgrade", "Connection: upgrade missing: " + both());
  } else if (rw.close) {
    FUZZ_CHECK(connection.size() == 1 && connection[0] == "close", "Connection: close missing: " + both());
  } else if (rw.client_http10) {
    FUZZ_CHECK(connection.size() == 1 && connection[0] == "keep-alive", "Connection: keep-alive missing: " + both());
  } else {
    FUZZ_CHECK(connection.empty(), "Connection forwarded: " + both());
  }
  if (c.needs_eof) FUZZ_CHECK(rw.close, "a close-delimited body on a connection kept open: " + both());
  if (rw.dechunk) FUZZ_CHECK(fuzz::values_of(c, "transfer-encoding").empty(), "Transfer-Encoding kept: " + both());

  for (const auto& [name, value] : c.fields) {
    bool added = false;
    if (edits != nullptr) {
      for (const auto& f : edits->added())
        added = added || iequals(f.name, name);
    }
    if (added || iequals(name, "connection") || iequals(name, "via") || framing(name)) continue;
    if (iequals(name, "upgrade")) {
      FUZZ_CHECK(rw.upgrade, "Upgrade forwarded without an upgrade: " + both());
      continue;
    }
    FUZZ_CHECK(!hop_by_hop(name), "hop-by-hop field '" + escaped(name) + "' forwarded: " + both());
    FUZZ_CHECK(!listed(m, name), "field '" + escaped(name) + "' named in Connection forwarded: " + both());
  }
  if (edits != nullptr) {
    for (const auto& removed : edits->removed()) {
      if (framing(removed) || hop_by_hop(removed) || iequals(removed, "via")) continue;
      bool re_added = false;
      for (const auto& f : edits->added())
        re_added = re_added || iequals(f.name, removed);
      if (!re_added) FUZZ_CHECK(fuzz::values_of(c, removed).empty(), "removed field '" + removed + "' sent: " + both());
    }
    return;
  }

  std::vector<std::pair<std::string, std::string>> kept;
  for (const auto& [name, value] : m.fields) {
    if (iequals(name, "upgrade") && rw.upgrade) {
      kept.emplace_back(name, value);
      continue;
    }
    if (hop_by_hop(name)) continue;
    if (rw.dechunk && iequals(name, "transfer-encoding")) continue;
    if (drops_coding && iequals(name, "transfer-encoding")) continue;
    if (drops_length && iequals(name, "content-length")) continue;
    if (listed(m, name) && !framing(name)) continue;
    kept.emplace_back(name, value);
  }
  bool merged_via = false;
  for (auto it = kept.rbegin(); it != kept.rend(); ++it) {
    if (iequals(it->first, "via")) {
      it->second += ", " + std::string(kVia);
      merged_via = true;
      break;
    }
  }
  std::vector<std::pair<std::string, std::string>> rest;
  for (const auto& [name, value] : c.fields) {
    if (iequals(name, "connection")) continue;
    if (!merged_via && iequals(name, "via") && value == kVia) {
      merged_via = true;
      continue;
    }
    rest.emplace_back(name, value);
  }
  FUZZ_CHECK(merged_via, "no Via entry for this hop: " + both());
  auto listing = [&] {
    std::string out;
    for (const auto& [n, v] : kept)
      out += "\n       want " + escaped(n) + ": " + escaped(v);
    for (const auto& [n, v] : rest)
      out += "\n       got  " + escaped(n) + ": " + escaped(v);
    return out;
  };
  FUZZ_CHECK(rest == kept, "end-to-end fields not relayed as they were: " + both() + listing());
}

void run(const std::uint8_t* data, std::size_t size, bool head_request) {
  fuzz::StreamOptions opt;
  opt.kind = weldr::http::Parser::Kind::response;
  opt.head_request = head_request;
  opt.max_head = 2048;
  opt.max_fields = 24;
  const auto whole = fuzz::parse_stream(data, size, {fuzz::Splitter::Mode::whole}, opt);
  const auto bytewise = fuzz::parse_stream(data, size, {fuzz::Splitter::Mode::bytewise}, opt);
  fuzz::check_same(whole, bytewise,
                   head_request ? "HEAD: all at once vs one byte per read" : "all at once vs one byte per read");
  fuzz::StreamOptions moved = opt;
  moved.relocate = true;
  const auto random = fuzz::parse_stream(
      data, size, {fuzz::Splitter::Mode::random, fuzz::Rng(fuzz::hash(data, size) + head_request)}, moved);
  fuzz::check_same(whole, random, head_request ? "HEAD: all at once vs random reads" : "all at once vs random reads");

  for (const Message& m : whole) {
    if (!m.head_done) continue;
    // RFC 9112 §6.3: a response to HEAD and a 1xx, 204 or 304 response end with their head,
    // whatever Content-Length or Transfer-Encoding say. What follows is the next response; read
    // as a body, it would be relayed to a client that reads it as the next response.
    const bool bodiless = head_request || m.head.status == 204 || m.head.status == 304;
    if (bodiless) {
      FUZZ_CHECK(m.complete && !m.error && !m.needs_eof && m.end == m.head_end && m.body.empty(), [&] {
        return "a " + std::string(head_request ? "HEAD " : "") + std::to_string(m.head.status) +
               " response read a body: " + fuzz::describe(m) + "\n     head: '" +
               escaped(std::string_view(reinterpret_cast<const char*>(data) + m.start, m.head_end - m.start)) + "'";
      }());
    }
    if (m.interim) {
      check_relay(data, m, head_request, {false, true, false}, nullptr);  // HTTP/1.0 clients get none
      continue;
    }
    for (int bits = 0; bits < 8; ++bits) {
      const Client client{(bits & 1) != 0, (bits & 2) != 0, (bits & 4) != 0};
      // A 101 to a request that asked for no upgrade is refused (bad_response), not relayed.
      if (m.head.status == 101 && !client.asked_upgrade) continue;
      if (m.head.status != 101 && client.asked_upgrade) continue;  // the same as without
      check_relay(data, m, head_request, client, nullptr);
    }
    bool any = false;
    const auto edits = edits_from(m, any);
    if (any) check_relay(data, m, head_request, {false, true, m.head.status == 101}, &edits);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  run(data, size, false);
  run(data, size, true);
  return 0;
}
