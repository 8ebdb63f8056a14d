#include "http/parser.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using weldr::http::Parser;
using Event = Parser::Event;

namespace {

// Feeds `text` in pieces of `step` bytes into one contiguous buffer, as a socket would.
struct Feeder {
  explicit Feeder(Parser::Kind kind, std::size_t max_head = 64 * 1024, std::size_t max_fields = 100)
      : parser(kind, max_head, max_fields) {}

  Event head(const std::string& text, std::size_t step = 1 << 20) {
    buffer = text;
    parsed = 0;
    Event e = Event::need_more;
    for (std::size_t avail = std::min(step, text.size());; avail = std::min(avail + step, text.size())) {
      std::size_t used = 0;
      e = parser.feed(buffer.data(), parsed, avail - parsed, used);
      parsed += used;
      if (e != Event::need_more || avail == text.size()) return e;
    }
  }

  std::string field(std::size_t i) const {
    const auto& f = parser.head().fields.at(i);
    return std::string(f.name.view(buffer.data())) + "=" + std::string(f.value.view(buffer.data()));
  }

  Parser parser;
  std::string buffer;
  std::size_t parsed{0};
};

}  // namespace

TEST_CASE("request head is split into spans, whatever the read boundaries", "[parser]") {
  const std::string text = "GET /a?b=c HTTP/1.1\r\nHost: example\r\nX-Long: some value here\r\n\r\nNEXT";
  for (std::size_t step : {1u, 3u, 7u, 1000u}) {
    Feeder f(Parser::Kind::request);
    INFO("step " << step);
    REQUIRE(f.head(text, step) == Event::head);
    const auto& h = f.parser.head();
    CHECK(h.method_name.view(f.buffer.data()) == "GET");
    CHECK(h.target.view(f.buffer.data()) == "/a?b=c");
    CHECK(h.is_http11());
    CHECK(h.keep_alive);
    REQUIRE(h.fields.size() == 2);
    CHECK(f.field(0) == "Host=example");
    CHECK(f.field(1) == "X-Long=some value here");
    CHECK(h.size == text.size() - 4);
    CHECK(f.parsed == text.size() - 4);
    std::size_t used = 0;
    CHECK(f.parser.feed(f.buffer.data(), f.parsed, 0, used) == Event::message);
  }
}

TEST_CASE("body bytes are counted up to the end of the message", "[parser]") {
  const std::string text =
      "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nT: v\r\n\r\nGET";
  Feeder f(Parser::Kind::request);
  REQUIRE(f.head(text) == Event::head);
  CHECK(f.parser.head().chunked);
  std::size_t used = 0;
  CHECK(f.parser.feed(f.buffer.data(), f.parsed, text.size() - f.parsed, used) == Event::message);
  CHECK(f.parsed + used == text.size() - 3);
  REQUIRE(f.parser.body_spans().size() == 1);
  CHECK(f.parser.body_spans()[0].view(f.buffer.data()) == "abc");
}

TEST_CASE("ambiguous or malformed requests are errors", "[parser]") {
  const char* cases[] = {
      "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
      "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n folded\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
      "GET / HTTP/1.1\nHost: a\n\n",
      "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
      "GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
      "G@T / HTTP/1.1\r\n\r\n",
      "GET / HTTP/9.9\r\n\r\n",
  };
  for (const char* text : cases) {
    INFO(text);
    Feeder f(Parser::Kind::request);
    CHECK(f.head(text) == Event::error);
    CHECK(f.parser.error() == weldr::errc::bad_request);
  }
}

TEST_CASE("bad chunk size and a final coding other than chunked are errors", "[parser]") {
  for (const char* text : {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
                           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"}) {
    INFO(text);
    Feeder f(Parser::Kind::request);
    auto event = f.head(text);
    if (event == Event::head) {
      std::size_t used = 0;
      event = f.parser.feed(f.buffer.data(), f.parsed, std::string_view(text).size() - f.parsed, used);
    }
    CHECK(event == Event::error);
    CHECK(f.parser.error() == weldr::errc::bad_request);
  }
}

TEST_CASE("head size and header count limits", "[parser]") {
  Feeder big(Parser::Kind::request, 100);
  CHECK(big.head("GET / HTTP/1.1\r\nHost: a\r\nX: " + std::string(200, 'x') + "\r\n\r\n", 10) == Event::error);
  CHECK(big.parser.error() == weldr::errc::head_too_large);

  std::string many = "GET / HTTP/1.1\r\nHost: a\r\n";
  for (int i = 0; i < 5; ++i)
    many += "X" + std::to_string(i) + ": v\r\n";
  Feeder counted(Parser::Kind::request, 64 * 1024, 5);
  CHECK(counted.head(many + "\r\n") == Event::error);
  CHECK(counted.parser.error() == weldr::errc::too_many_headers);
}

TEST_CASE("responses: HEAD, 204 and 304 have no body; close-delimited bodies end at EOF", "[parser]") {
  Feeder head(Parser::Kind::response);
  head.parser.reset(/*head_request=*/true);
  REQUIRE(head.head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n") == Event::head);
  std::size_t used = 0;
  CHECK(head.parser.feed(head.buffer.data(), head.parsed, 0, used) == Event::message);

  for (const char* status : {"204 No Content", "304 Not Modified"}) {
    Feeder f(Parser::Kind::response);
    REQUIRE(f.head(std::string("HTTP/1.1 ") + status + "\r\n\r\n") == Event::head);
    CHECK(f.parser.feed(f.buffer.data(), f.parsed, 0, used) == Event::message);
  }

  Feeder eof(Parser::Kind::response);
  const std::string text = "HTTP/1.1 200 OK\r\n\r\nsome body";
  REQUIRE(eof.head(text) == Event::head);
  CHECK(eof.parser.needs_eof());
  CHECK(eof.parser.feed(eof.buffer.data(), eof.parsed, text.size() - eof.parsed, used) == Event::need_more);
  CHECK(used == 9);
  CHECK(eof.parser.finish() == Event::message);

  Feeder cut(Parser::Kind::response);
  REQUIRE(cut.head("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n") == Event::head);
  CHECK(cut.parser.finish() == Event::error);
}

TEST_CASE("interim responses are messages of their own", "[parser]") {
  Feeder f(Parser::Kind::response);
  const std::string text = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
  REQUIRE(f.head(text) == Event::head);
  CHECK(f.parser.head().status == 100);
  std::size_t used = 0;
  CHECK(f.parser.feed(f.buffer.data(), f.parsed, 0, used) == Event::message);
}

namespace {

// Feeds a whole request in separate feeds, each starting at the buffer's start (as the proxy's
// body pump does after consuming what it fed): the result of the last feed.
Event feed_pieces(Parser& parser, const std::vector<std::string>& pieces) {
  Event e = Event::need_more;
  std::string buffer;
  for (const auto& piece : pieces) {
    buffer = piece;
    std::size_t used = 0;
    e = parser.feed(buffer.data(), 0, buffer.size(), used);
    if (e == Event::error) return e;
    if (e == Event::head) {
      std::size_t more = 0;
      e = parser.feed(buffer.data(), used, buffer.size() - used, more);
      if (e == Event::error) return e;
    }
  }
  return e;
}

}  // namespace

TEST_CASE("trailer fields get the head's checks, also when split over feeds", "[parser]") {
  const std::string head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
  SECTION("a valid trailer, whole or split anywhere, is accepted") {
    for (const auto& pieces :
         std::vector<std::vector<std::string>>{{head + "5\r\nhello\r\n0\r\nX-T: ab\r\n\r\n"},
                                               {head + "5\r\nhello\r\n0\r\nX-T: a", "b\r\n\r\n"},
                                               {head + "5\r\nhello\r\n0\r\nX-T:", " ab\r\n\r\n"},
                                               {head + "5\r\nhello\r\n0\r\nX-T: ab\r\n", "Y: c\r\n\r\n"}}) {
      Parser parser(Parser::Kind::request, 64 * 1024, 100);
      CHECK(feed_pieces(parser, pieces) == Event::message);
    }
  }
  SECTION("obs-fold and an empty name are refused, also across feeds") {
    for (const auto& pieces :
         std::vector<std::vector<std::string>>{{head + "5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n"},
                                               {head + "5\r\nhello\r\n0\r\nX-T: a\r\n", " b\r\n\r\n"},
                                               {head + "5\r\nhello\r\n0\r\nX-T: a\r\n ", "b\r\n\r\n"},
                                               {head + "5\r\nhello\r\n0\r\nX-T:\r\n b\r\n\r\n"},
                                               {head + "5\r\nhello\r\n0\r\n: a\r\n\r\n"}}) {
      Parser parser(Parser::Kind::request, 64 * 1024, 100);
      CHECK(feed_pieces(parser, pieces) == Event::error);
    }
  }
}
