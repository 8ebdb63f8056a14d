#include "http/rewrite.hpp"

#include "http/parser.hpp"

#include <catch2/catch.hpp>

#include <string>

using namespace weldr::http;

namespace {

struct Parsed {
  Parsed(Parser::Kind kind, std::string text) : buffer(std::move(text)), parser(kind, 64 * 1024, 100) {
    std::size_t used = 0;
    event = parser.feed(buffer.data(), 0, buffer.size(), used);
  }
  std::string buffer;
  Parser parser;
  Parser::Event event;
};

std::string request(const std::string& head, std::string_view client = "127.0.0.1") {
  Parsed p(Parser::Kind::request, head);
  REQUIRE(p.event == Parser::Event::head);
  std::string out;
  std::vector<std::string_view> scratch;
  write_request_head(out, p.buffer.data(), p.parser.head(), {client, "http", "1.1 weldr", ""}, scratch);
  return out;
}

std::string response(const std::string& head, ResponseRewrite rw = {"1.1 weldr"}) {
  Parsed p(Parser::Kind::response, head);
  REQUIRE(p.event == Parser::Event::head);
  std::string out;
  std::vector<std::string_view> scratch;
  write_response_head(out, p.buffer.data(), p.parser.head(), rw, scratch);
  return out;
}

}  // namespace

TEST_CASE("request: Via and X-Forwarded-* added, Host kept", "[rewrite]") {
  CHECK(request("GET /x HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n") ==
        "GET /x HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nVia: 1.1 weldr\r\nX-Forwarded-For: 127.0.0.1\r\n"
        "X-Forwarded-Proto: http\r\nX-Forwarded-Host: example.com\r\n\r\n");
}

TEST_CASE("request: existing Via and X-Forwarded-For are appended to", "[rewrite]") {
  const auto out = request(
      "GET / HTTP/1.1\r\nHost: a\r\nVia: 1.0 fred\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n"
      "X-Forwarded-Host: evil\r\n\r\n");
  CHECK(out.find("Via: 1.0 fred, 1.1 weldr\r\n") != std::string::npos);
  CHECK(out.find("X-Forwarded-For: 1.2.3.4, 127.0.0.1\r\n") != std::string::npos);
  CHECK(out.find("X-Forwarded-Proto: http\r\n") != std::string::npos);
  CHECK(out.find("https") == std::string::npos);  // the client's claims are replaced
  CHECK(out.find("evil") == std::string::npos);
}

TEST_CASE("request: hop-by-hop fields are removed, framing fields never", "[rewrite]") {
  const auto out = request(
      "POST / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Hop, Content-Length, Host\r\nX-Hop: 1\r\n"
      "Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
      "Proxy-Authorization: Basic eA==\r\nContent-Length: 3\r\nX-End: yes\r\n\r\n");
  for (const char* gone :
       {"Connection", "X-Hop", "Keep-Alive", "Proxy-Connection", "TE:", "Trailer", "Upgrade", "Proxy-Authorization"}) {
    INFO(gone);
    CHECK(out.find(gone) == std::string::npos);
  }
  CHECK(out.find("Content-Length: 3\r\n") != std::string::npos);
  CHECK(out.find("Host: a\r\n") != std::string::npos);
  CHECK(out.find("X-End: yes\r\n") != std::string::npos);
}

TEST_CASE("request: upgrade keeps Upgrade and says Connection: upgrade", "[rewrite]") {
  const auto out = request("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
  CHECK(out.find("Upgrade: websocket\r\n") != std::string::npos);
  CHECK(out.find("Connection: upgrade\r\n") != std::string::npos);
}

TEST_CASE("request: absolute-form becomes origin-form with the target's authority as Host", "[rewrite]") {
  const auto out = request("GET http://example.org:8080/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n");
  CHECK(out.rfind("GET /p?q=1 HTTP/1.1\r\nHost: example.org:8080\r\n", 0) == 0);
  CHECK(out.find("other") == std::string::npos);
  CHECK(request("GET http://example.org HTTP/1.1\r\nHost: x\r\n\r\n").rfind("GET / HTTP/1.1\r\n", 0) == 0);
}

TEST_CASE("request: HTTP/1.0 is sent on as HTTP/1.1", "[rewrite]") {
  CHECK(request("GET / HTTP/1.0\r\n\r\n").rfind("GET / HTTP/1.1\r\nHost: \r\n", 0) == 0);
}

TEST_CASE("validate_request: version, target, Host, Transfer-Encoding in HTTP/1.0", "[rewrite]") {
  auto status = [](const std::string& text) {
    Parsed p(Parser::Kind::request, text);
    REQUIRE(p.event == Parser::Event::head);
    return validate_request(p.buffer.data(), p.parser.head()).status;
  };
  CHECK(status("GET / HTTP/1.1\r\nHost: a\r\n\r\n") == 0);
  CHECK(status("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n") == 0);
  CHECK(status("GET / HTTP/1.1\r\nHost: \r\n\r\n") == 0);  // empty Host is allowed
  CHECK(status("GET / HTTP/1.0\r\n\r\n") == 0);
  CHECK(status("GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n") == 0);
  CHECK(status("GET / HTTP/1.1\r\n\r\n") == 400);
  CHECK(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == 400);
  CHECK(status("GET / HTTP/1.1\r\nHost: a b\r\n\r\n") == 400);
  CHECK(status("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n") == 400);
  CHECK(status("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n") == 400);
  CHECK(status("GET http://evil@good/x HTTP/1.1\r\nHost: good\r\n\r\n") == 400);
  CHECK(status("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n") == 400);
  CHECK(status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n") == 400);
  CHECK(status("GET / HTTP/2.0\r\nHost: a\r\n\r\n") == 505);
}

TEST_CASE("request: a client cannot drop this hop's Via or X-Forwarded-For through Connection", "[rewrite]") {
  const auto out = request(
      "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-forwarded-for, via\r\nX-Forwarded-For: 1.2.3.4\r\n"
      "Via: 1.0 x\r\n\r\n");
  CHECK(out.find("1.2.3.4") == std::string::npos);
  CHECK(out.find("1.0 x") == std::string::npos);
  CHECK(out.find("\r\nVia: 1.1 weldr\r\n") != std::string::npos);
  CHECK(out.find("\r\nX-Forwarded-For: 127.0.0.1\r\n") != std::string::npos);
}

TEST_CASE("response: hop-by-hop removed, Via added, connection handling", "[rewrite]") {
  const std::string head =
      "HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n"
      "Proxy-Authenticate: Basic\r\nTrailer: X-T\r\nUpgrade: h2\r\nContent-Length: 2\r\nVia: 1.1 origin\r\n\r\n";
  const auto out = response(head);
  CHECK(out == "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 origin, 1.1 weldr\r\n\r\n");
  CHECK(response(head, {"1.1 weldr", true}).find("Connection: close\r\n") != std::string::npos);
  CHECK(response(head, {"1.1 weldr", false, true}).find("Connection: keep-alive\r\n") != std::string::npos);
}

TEST_CASE("response: chunked framing dropped for an HTTP/1.0 client", "[rewrite]") {
  const auto out = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", {"1.1 weldr", true, true, true});
  CHECK(out == "HTTP/1.1 200 OK\r\nVia: 1.1 weldr\r\nConnection: close\r\n\r\n");
}

TEST_CASE("error responses are complete messages", "[rewrite]") {
  std::string out;
  write_error_response(out, 502, {}, "bad\n", true);
  CHECK(out ==
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 4\r\n"
        "Connection: close\r\n\r\nbad\n");
}

TEST_CASE("token lists", "[rewrite]") {
  CHECK(list_contains("keep-alive, Upgrade", "upgrade"));
  CHECK(list_contains(" ,close,", "CLOSE"));
  CHECK_FALSE(list_contains("closed", "close"));
  CHECK(is_idempotent("GET"));
  CHECK(is_idempotent("DELETE"));
  CHECK_FALSE(is_idempotent("POST"));
  CHECK_FALSE(is_idempotent("PATCH"));
}

TEST_CASE("valid_authority: uri-host and a numeric port", "[rewrite]") {
  using weldr::http::valid_authority;
  for (const char* good : {"", "a.example", "a.example:80", "a.example:", "127.0.0.1:8080", "[::1]", "[::1]:443",
                           "[v1.x]", "xn--caf-dma.example", "a%20b", "a_b~c!$&'()*+,;=d"}) {
    INFO(good);
    CHECK(valid_authority(good));
  }
  for (const char* bad : {"a.example:http", "a.example:80:81", "[::1", "[::1]x", "[]", ":80", "a.example:65536",
                          "a.example:123456", "user@a.example", "a b", "a%2", "a%zz", "[::g]", "a/b"}) {
    INFO(bad);
    CHECK_FALSE(valid_authority(bad));
  }
}
