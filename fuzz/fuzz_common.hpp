#pragma once
// Shared by the fuzz targets: an invariant check that aborts (libFuzzer then saves the input),
// input splitting, and a driver that runs http::Parser over a byte stream the way the proxy
// does (head, then body, then the next message), recording what it saw.

#include "http/message.hpp"
#include "http/parser.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fuzz {

/// `text` with everything but printable ASCII as \xNN, for messages.
inline std::string escaped(std::string_view text, std::size_t max = 400) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < text.size() && i < max; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  if (text.size() > max) out += "...";
  return out;
}

/// Called before a failed check aborts (a target that made temporary files removes them).
inline void (*&on_failure())() {
  static void (*hook)() = nullptr;
  return hook;
}

[[noreturn]] inline void fail(const char* file, int line, const char* expr, const std::string& detail) {
  std::fprintf(stderr, "\n==== invariant violated: %s\n     at %s:%d\n     %s\n", expr, file, line, detail.c_str());
  std::fflush(stderr);
  if (on_failure() != nullptr) on_failure()();
  std::abort();
}

}  // namespace fuzz

/// Aborts with `detail` (a std::string expression, evaluated only on failure) unless `cond`.
#define FUZZ_CHECK(cond, detail)                                    \
  do {                                                              \
    if (!(cond)) ::fuzz::fail(__FILE__, __LINE__, #cond, (detail)); \
  } while (0)

namespace fuzz {

/// True when the known library bug `id` (fuzz/known-issues.txt) is to be tolerated: named in
/// the comma-separated WELDR_FUZZ_KNOWN. scripts/fuzz.sh sets it while fuzzing, so that a bug
/// found before does not stop the search for others, and leaves it unset for the regression
/// inputs, which must fail until the bug is fixed. A target checks its input for the bug and
/// skips the checks it would break; the invariants themselves stay as they are.
inline bool tolerated(std::string_view id) {
  static const std::string known = [] {
    const char* env = std::getenv("WELDR_FUZZ_KNOWN");
    return "," + std::string(env != nullptr ? env : "") + ",";
  }();
  return known.find("," + std::string(id) + ",") != std::string::npos;
}

/// A deterministic PRNG (splitmix64), seeded from the input so that a crash reproduces.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  /// A number in [0, n).
  std::size_t below(std::size_t n) { return n == 0 ? 0 : static_cast<std::size_t>(next() % n); }

 private:
  std::uint64_t state_;
};

/// FNV-1a of the input.
inline std::uint64_t hash(const std::uint8_t* data, std::size_t size) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (std::size_t i = 0; i < size; ++i)
    h = (h ^ data[i]) * 0x100000001b3ULL;
  return h;
}

/// How the bytes arrive: how many more become readable at each read.
struct Splitter {
  enum class Mode { whole, bytewise, random };
  Mode mode;
  Rng rng{0};
  std::size_t next() {
    switch (mode) {
      case Mode::whole: return static_cast<std::size_t>(-1) / 2;
      case Mode::bytewise: return 1;
      case Mode::random:
        // Mostly small reads, sometimes a large one.
        if (rng.below(8) == 0) return 1 + rng.below(512);
        return 1 + rng.below(16);
    }
    return 1;
  }
};

/// What the parser reported for one message of a stream.
struct Message {
  bool head_done{false};    ///< Event::head was reported
  bool error{false};        ///< Event::error (in the head or in the body)
  bool complete{false};     ///< Event::message (or finish() at the end of the input)
  bool by_eof{false};       ///< completed by finish(): a close-delimited body
  bool interim{false};      ///< a 1xx response other than 101: no body, the next head follows
  std::size_t start{0};     ///< offset of its first byte in the stream
  std::size_t head_end{0};  ///< offset just past the head
  std::size_t end{0};       ///< offset just past the message (when complete)
  weldr::http::Head head;   ///< the head, spans relative to the stream
  std::string body;         ///< the decoded body (chunk framing removed)
  bool needs_eof{false};

  // The head as strings, for comparing two runs.
  std::string method, target, reason;
  std::vector<std::pair<std::string, std::string>> fields;
};

// The targets' own model of RFC 9110's field classes, written apart from lib/http/rewrite.cpp
// on purpose: a model that called the code under test could not catch its mistakes.

/// This hop's Via entry, as the targets configure it.
constexpr std::string_view kVia = "1.1 weldr";

/// Fields for one connection only (RFC 9110 §7.6.1) and this hop's proxy credentials (§11.7).
inline bool hop_by_hop(std::string_view name) {
  for (std::string_view h : {"connection", "keep-alive", "proxy-connection", "te", "trailer", "proxy-authorization",
                             "proxy-authenticate", "upgrade"}) {
    if (weldr::http::iequals(name, h)) return true;
  }
  return false;
}

/// Fields that frame or route a message, never dropped through Connection.
inline bool framing(std::string_view name) {
  using weldr::http::iequals;
  return iequals(name, "content-length") || iequals(name, "transfer-encoding") || iequals(name, "host");
}

/// ASCII case-insensitive prefix test.
inline bool starts_with_ci(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && weldr::http::iequals(s.substr(0, prefix.size()), prefix);
}

inline bool same_head(const Message& a, const Message& b) {
  const auto& x = a.head;
  const auto& y = b.head;
  return a.method == b.method && a.target == b.target && a.reason == b.reason && a.fields == b.fields &&
         x.http_major == y.http_major && x.http_minor == y.http_minor && x.method == y.method && x.status == y.status &&
         x.size == y.size && x.keep_alive == y.keep_alive && x.chunked == y.chunked &&
         x.has_content_length == y.has_content_length && x.content_length == y.content_length &&
         x.upgrade == y.upgrade && a.needs_eof == b.needs_eof && a.head_end == b.head_end;
}

inline std::string describe(const Message& m) {
  std::string out = "message at " + std::to_string(m.start) + ": head_done=" + std::to_string(m.head_done) +
                    " error=" + std::to_string(m.error) + " complete=" + std::to_string(m.complete) +
                    " by_eof=" + std::to_string(m.by_eof) + " head_end=" + std::to_string(m.head_end) +
                    " end=" + std::to_string(m.end);
  if (m.head_done) {
    out += " method='" + escaped(m.method) + "' target='" + escaped(m.target) +
           "' status=" + std::to_string(m.head.status) + " reason='" + escaped(m.reason) +
           "' chunked=" + std::to_string(m.head.chunked) +
           " cl=" + (m.head.has_content_length ? std::to_string(m.head.content_length) : std::string("none")) +
           " upgrade=" + std::to_string(m.head.upgrade) + " keep_alive=" + std::to_string(m.head.keep_alive) +
           " fields=" + std::to_string(m.fields.size()) + " body=" + std::to_string(m.body.size()) + "B";
  }
  return out;
}

struct StreamOptions {
  weldr::http::Parser::Kind kind{weldr::http::Parser::Kind::request};
  std::size_t max_head{4096};
  std::size_t max_fields{32};
  bool head_request{false};  ///< responses: the request was HEAD
  std::size_t max_messages{4};
  bool relocate{false};  ///< copy the readable bytes to a new buffer at each read (as a growing buffer does)
};

/// Parses `data` as a stream of messages the way the proxy does: the head is fed from where the
/// last feed stopped until Event::head; then the body (at once, even zero bytes) until
/// Event::message; at the end of the input, finish(). Each read makes `split.next()` more
/// bytes readable. Stops after an error, an upgrade, an incomplete message or `max_messages`.
inline std::vector<Message> parse_stream(const std::uint8_t* data, std::size_t size, Splitter split,
                                         const StreamOptions& opt) {
  using weldr::http::Parser;
  Parser parser(opt.kind, opt.max_head, opt.max_fields);
  std::vector<Message> out;
  std::size_t readable = 0;
  std::unique_ptr<char[]> copy;
  const char* base = reinterpret_cast<const char*>(data);
  auto read_more = [&]() -> bool {
    if (readable >= size) return false;
    readable = std::min(size, readable + std::min(split.next(), size));
    if (opt.relocate) {
      // Exactly `readable` bytes: ASan catches a read past them or through an old buffer.
      std::unique_ptr<char[]> fresh(new char[readable]);
      std::memcpy(fresh.get(), data, readable);
      copy = std::move(fresh);
      base = copy.get();
    }
    return true;
  };
  read_more();

  std::size_t pos = 0;
  while (out.size() < opt.max_messages && pos < size) {
    Message m;
    m.start = pos;
    parser.reset(opt.head_request);
    std::size_t parsed = pos;
    auto event = Parser::Event::need_more;
    for (;;) {
      if (parsed < readable) {
        std::size_t used = 0;
        event = parser.feed(base, parsed, readable - parsed, used);
        FUZZ_CHECK(used <= readable - parsed, "consumed more than it was given");
        if (event == Parser::Event::need_more)
          FUZZ_CHECK(used == readable - parsed, "need_more without consuming everything");
        parsed += used;
        if (event == Parser::Event::head || event == Parser::Event::error) break;
        FUZZ_CHECK(event == Parser::Event::need_more, "message before head");
      } else if (!read_more()) {
        break;
      }
    }
    if (event == Parser::Event::error) {
      m.error = true;
      FUZZ_CHECK(parser.error(), "Event::error without an error code");
      out.push_back(std::move(m));
      break;
    }
    if (event != Parser::Event::head) {
      // The input ended inside the head.
      FUZZ_CHECK(parser.finish() == Parser::Event::error, "finish() inside a head must fail");
      m.error = true;
      out.push_back(std::move(m));
      break;
    }
    m.head_done = true;
    m.head_end = parsed;
    m.head = parser.head();
    m.needs_eof = parser.needs_eof();
    FUZZ_CHECK(parser.head_complete(), "head event but not head_complete()");
    FUZZ_CHECK(m.head.size == parsed - pos,
               "head.size " + std::to_string(m.head.size) + " != bytes consumed " + std::to_string(parsed - pos));
    auto text = [&](weldr::http::Span s) {
      if (s.length == 0) return std::string();  // an element the message does not have
      FUZZ_CHECK(s.offset >= pos && s.offset + std::uint64_t{s.length} <= parsed,
                 "span [" + std::to_string(s.offset) + "+" + std::to_string(s.length) + ") outside the head [" +
                     std::to_string(pos) + "," + std::to_string(parsed) + ")");
      return std::string(s.view(base));
    };
    m.method = text(m.head.method_name);
    m.target = text(m.head.target);
    m.reason = text(m.head.reason);
    for (const auto& f : m.head.fields)
      m.fields.emplace_back(text(f.name), text(f.value));

    const bool response = opt.kind == Parser::Kind::response;
    if (response && m.head.status >= 100 && m.head.status < 200 && m.head.status != 101) {
      // The proxy forwards an interim head and parses the next one (relay_response).
      m.interim = m.complete = true;
      m.end = parsed;
      pos = parsed;
      out.push_back(std::move(m));
      continue;
    }

    std::size_t at = parsed;
    for (;;) {
      std::size_t used = 0;
      event = parser.feed(base, at, readable - at, used);
      if (event == Parser::Event::error) break;
      FUZZ_CHECK(used <= readable - at, "consumed more than it was given");
      for (const auto& s : parser.body_spans()) {
        FUZZ_CHECK(s.offset >= at && s.offset + std::uint64_t{s.length} <= at + used,
                   "body span [" + std::to_string(s.offset) + "+" + std::to_string(s.length) +
                       ") outside the consumed bytes [" + std::to_string(at) + "," + std::to_string(at + used) + ")");
        m.body.append(s.view(base));
      }
      at += used;
      if (event == Parser::Event::message) break;
      FUZZ_CHECK(event == Parser::Event::need_more, "head reported twice");
      FUZZ_CHECK(at == readable, "need_more without consuming everything");
      if (!read_more()) {
        event = parser.finish();
        m.by_eof = event == Parser::Event::message;
        break;
      }
    }
    if (event == Parser::Event::error) {
      m.error = true;
      out.push_back(std::move(m));
      break;
    }
    m.complete = true;
    FUZZ_CHECK(parser.message_complete(), "message event but not message_complete()");
    m.end = at;
    const bool stop = m.by_eof || m.head.upgrade || (response && m.head.status == 101);
    pos = at;
    out.push_back(std::move(m));
    if (stop) break;
  }
  return out;
}

/// Aborts unless two runs over the same bytes saw the same messages.
inline void check_same(const std::vector<Message>& a, const std::vector<Message>& b, const char* what) {
  FUZZ_CHECK(a.size() == b.size(),
             std::string(what) + ": " + std::to_string(a.size()) + " vs " + std::to_string(b.size()) + " messages");
  for (std::size_t i = 0; i < a.size(); ++i) {
    const Message& x = a[i];
    const Message& y = b[i];
    auto both = [&] {
      return std::string(std::string(what) + ": message " + std::to_string(i) + "\n     " + describe(x) + "\n     " +
                         describe(y));
    };
    FUZZ_CHECK(x.error == y.error && x.head_done == y.head_done, both());
    if (x.head_done) FUZZ_CHECK(same_head(x, y), both());
    if (x.error) continue;
    FUZZ_CHECK(x.complete == y.complete && x.by_eof == y.by_eof && x.end == y.end, both());
    FUZZ_CHECK(x.body == y.body, both() + "\n     bodies: '" + escaped(x.body) + "' vs '" + escaped(y.body) + "'");
  }
}

/// Checks the line discipline of a head weldr wrote: CR only before LF, LF only after CR, one
/// empty line and only at the end, and "name: value" lines with a token name.
inline void check_wire_head(std::string_view head) {
  FUZZ_CHECK(head.size() >= 4 && head.substr(head.size() - 4) == "\r\n\r\n",
             "head does not end with an empty line: '" + escaped(head) + "'");
  for (std::size_t i = 0; i < head.size(); ++i) {
    if (head[i] == '\r')
      FUZZ_CHECK(i + 1 < head.size() && head[i + 1] == '\n',
                 "bare CR at " + std::to_string(i) + " in '" + escaped(head) + "'");
    if (head[i] == '\n') FUZZ_CHECK(i > 0 && head[i - 1] == '\r', "bare LF in '" + escaped(head) + "'");
  }
  const std::size_t first_empty = head.find("\r\n\r\n");
  FUZZ_CHECK(first_empty == head.size() - 4, "empty line inside the head: '" + escaped(head) + "'");
  // Control characters: none in the start line but HTAB (a reason phrase may have one), none in
  // a field line but HTAB (RFC 9110 §5.5, RFC 9112 §4).
  auto no_ctl = [&](std::string_view line, const char* what) {
    for (char c : line) {
      const auto byte = static_cast<unsigned char>(c);
      FUZZ_CHECK(byte == '\t' || (byte >= 0x20 && byte != 0x7f),
                 std::string("control character in ") + what + ": '" + escaped(line) + "' in '" + escaped(head) + "'");
    }
  };
  std::size_t line_start = head.find("\r\n") + 2;  // after the start line
  no_ctl(head.substr(0, line_start - 2), "the start line");
  while (line_start < head.size() - 2) {
    const std::size_t line_end = head.find("\r\n", line_start);
    const std::string_view line = head.substr(line_start, line_end - line_start);
    const std::size_t colon = line.find(':');
    FUZZ_CHECK(colon != std::string_view::npos && colon > 0,
               "field line without a name: '" + escaped(line) + "' in '" + escaped(head) + "'");
    for (char c : line.substr(0, colon)) {
      const bool tchar = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
      FUZZ_CHECK(tchar, "field name is not a token: '" + escaped(line) + "'");
    }
    no_ctl(line, "a field line");
    line_start = line_end + 2;
  }
}

/// The values of every field called `name` (case-insensitive).
inline std::vector<std::string> values_of(const Message& m, std::string_view name) {
  std::vector<std::string> out;
  for (const auto& [n, v] : m.fields) {
    if (weldr::http::iequals(n, name)) out.push_back(v);
  }
  return out;
}

}  // namespace fuzz
