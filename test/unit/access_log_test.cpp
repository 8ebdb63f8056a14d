#include <weldr/access_log.hpp>

#include <rapidjson/document.h>
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>

using namespace std::chrono_literals;
using weldr::AccessLogFormat;
using weldr::format_access_log;
using weldr::RequestLog;

namespace {

RequestLog sample() {
  RequestLog log;
  log.client_address = "127.0.0.1";
  log.method = "GET";
  log.target = "/index.html?q=1";
  log.host = "example.test";
  log.user_agent = "curl/7.88.1";
  log.referer = "http://ref.test/";
  log.status = 200;
  log.response_bytes = 119;
  log.request_body_bytes = 0;
  log.backend = "127.0.0.1:9001";
  log.attempts = 1;
  log.started = std::chrono::system_clock::time_point(std::chrono::seconds(1795000000));  // 2026-11-18
  log.duration = 1500us;
  log.upstream_time = 1200us;
  return log;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE("access log formats: common and combined", "[access-log]") {
  const RequestLog log = sample();
  CHECK(format_access_log(log, AccessLogFormat::common) ==
        R"(127.0.0.1 - - [18/Nov/2026:11:06:40 +0000] "GET /index.html?q=1 HTTP/1.1" 200 119)");
  CHECK(
      format_access_log(log, AccessLogFormat::combined) ==
      R"(127.0.0.1 - - [18/Nov/2026:11:06:40 +0000] "GET /index.html?q=1 HTTP/1.1" 200 119 "http://ref.test/" "curl/7.88.1")");
}

TEST_CASE("access log: missing values are dashes, and nothing can break a line", "[access-log]") {
  RequestLog log = sample();
  log.method = {};
  log.target = {};
  log.status = 400;
  log.response_bytes = 0;
  log.referer = {};
  log.user_agent = "evil\"\r\n127.0.0.1 - - fake \xff";
  const std::string line = format_access_log(log, AccessLogFormat::combined);
  CHECK(line == R"(127.0.0.1 - - [18/Nov/2026:11:06:40 +0000] "-" 400 - "-" "evil\"\x0D\x0A127.0.0.1 - - fake \xFF")");
  CHECK(line.find('\n') == std::string::npos);
  log.status = 0;
  CHECK(format_access_log(log, AccessLogFormat::common).ends_with("\"-\" - -"));
  log.http_minor = 0;
  log.method = "HEAD";
  log.target = "/";
  CHECK(format_access_log(log, AccessLogFormat::common).find("\"HEAD / HTTP/1.0\"") != std::string::npos);
}

TEST_CASE("access log format: json lines with every field", "[access-log]") {
  RequestLog log = sample();
  log.error = "line\nbreak";
  const std::string line = format_access_log(log, AccessLogFormat::json);
  CHECK(line.find('\n') == std::string::npos);
  rapidjson::Document doc;
  doc.Parse(line.data(), line.size());
  REQUIRE(doc.IsObject());
  CHECK(std::string(doc["time"].GetString()) == "2026-11-18T11:06:40.000Z");
  CHECK(std::string(doc["client"].GetString()) == "127.0.0.1");
  CHECK(std::string(doc["method"].GetString()) == "GET");
  CHECK(std::string(doc["target"].GetString()) == "/index.html?q=1");
  CHECK(std::string(doc["protocol"].GetString()) == "HTTP/1.1");
  CHECK(doc["status"].GetInt() == 200);
  CHECK(doc["bytes_sent"].GetUint64() == 119);
  CHECK(doc["request_body_bytes"].GetUint64() == 0);
  CHECK(std::string(doc["host"].GetString()) == "example.test");
  CHECK(std::string(doc["backend"].GetString()) == "127.0.0.1:9001");
  CHECK(doc["attempts"].GetUint() == 1);
  CHECK(doc["duration_ms"].GetDouble() == Approx(1.5));
  CHECK(doc["upstream_ms"].GetDouble() == Approx(1.2));
  CHECK(std::string(doc["error"].GetString()) == "line\nbreak");
}

TEST_CASE("access log formats by name", "[access-log]") {
  CHECK(weldr::parse_access_log_format("common") == AccessLogFormat::common);
  CHECK(weldr::parse_access_log_format("combined") == AccessLogFormat::combined);
  CHECK(weldr::parse_access_log_format("json") == AccessLogFormat::json);
  CHECK_FALSE(weldr::parse_access_log_format("apache"));
  CHECK_FALSE(weldr::parse_access_log_format(""));
}

TEST_CASE("AccessLog appends lines, reopens after a rotation, refuses an unopenable path", "[access-log]") {
  const auto dir = std::filesystem::temp_directory_path() / ("weldr-access-log-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "access.log").string();
  {
    weldr::AccessLog log(path, AccessLogFormat::common);
    log.on_log(sample());
    log.on_log(sample());
    CHECK(read_all(path) == format_access_log(sample(), AccessLogFormat::common) + "\n" +
                                format_access_log(sample(), AccessLogFormat::common) + "\n");
    std::filesystem::rename(path, path + ".1");
    CHECK(log.reopen());
    log.on_log(sample());
    CHECK(read_all(path) == format_access_log(sample(), AccessLogFormat::common) + "\n");
  }
  CHECK_THROWS_AS(weldr::AccessLog((dir / "missing" / "access.log").string(), AccessLogFormat::json),
                  std::system_error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("access log format: json stays valid UTF-8 whatever the client sent", "[access-log]") {
  RequestLog log = sample();
  log.user_agent = "ok \xC3\xA9 bad \xFF \xC3 end";  // a valid é, a stray byte, a cut sequence
  log.target = "/\xED\xA0\x80";                      // an encoded surrogate: not UTF-8
  const std::string line = format_access_log(log, AccessLogFormat::json);
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseValidateEncodingFlag>(line.data(), line.size());
  REQUIRE_FALSE(doc.HasParseError());
  CHECK(std::string(doc["user_agent"].GetString()) == "ok \xC3\xA9 bad \xEF\xBF\xBD \xEF\xBF\xBD end");
  CHECK(std::string(doc["target"].GetString()) == "/\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}
