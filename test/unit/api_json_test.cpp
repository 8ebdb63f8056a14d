#include "api/json.hpp"

#include <weldr/pool.hpp>
#include <weldr/stats.hpp>

#include <rapidjson/document.h>
#include <catch2/catch.hpp>

#include <string>

using namespace std::chrono_literals;
using weldr::api::parse_registration;

namespace {

rapidjson::Document parse(const std::string& text) {
  rapidjson::Document doc;
  doc.Parse(text.c_str());
  REQUIRE_FALSE(doc.HasParseError());
  return doc;
}

}  // namespace

TEST_CASE("registration: the three accepted shapes", "[api]") {
  std::string error;
  for (const char* body : {R"({"url": "http://127.0.0.1:9001"})", R"({"url": "127.0.0.1:9001"})",
                           R"({"ip": "127.0.0.1", "port": "9001"})", R"({"ip": "127.0.0.1", "port": 9001})"}) {
    INFO(body);
    auto r = parse_registration(body, error);
    REQUIRE(r);
    CHECK(r->address.id() == "127.0.0.1:9001");
    CHECK(r->address.url == "http://127.0.0.1:9001");
    CHECK(r->check.empty());
  }
  auto v6 = parse_registration(R"({"ip": "::1", "port": 80})", error);
  REQUIRE(v6);
  CHECK(v6->address.id() == "[::1]:80");
}

TEST_CASE("registration: the check object is kept, compact", "[api]") {
  std::string error;
  auto r = parse_registration(R"({"url": "127.0.0.1:1", "check": { "type": "http", "path": "/health" }})", error);
  REQUIRE(r);
  CHECK(r->check == R"({"type":"http","path":"/health"})");
}

TEST_CASE("registration: weight is optional, 1 by default, 1..256", "[api]") {
  std::string error;
  auto plain = parse_registration(R"({"url": "127.0.0.1:1"})", error);
  REQUIRE(plain);
  CHECK(plain->weight == 0);  // not given: 1 for a new server, unchanged for a known one
  auto heavy = parse_registration(R"({"url": "127.0.0.1:1", "weight": 256})", error);
  REQUIRE(heavy);
  CHECK(heavy->weight == 256);
  CHECK_FALSE(parse_registration(R"({"url": "127.0.0.1:1", "weight": 0})", error));
  CHECK(error == "\"weight\" must be an integer from 1 to 256");
}

TEST_CASE("registration: every bad input has a message", "[api]") {
  const char* bad[] = {
      "",
      "{",
      "[]",
      R"("127.0.0.1:1")",
      R"({})",
      R"({"url": 5})",
      R"({"url": "https://127.0.0.1:1"})",
      R"({"url": "ftp://127.0.0.1:1"})",
      R"({"url": "127.0.0.1"})",
      R"({"url": "example.com:80"})",
      R"({"url": "127.0.0.1:0"})",
      R"({"url": "127.0.0.1:65536"})",
      R"({"ip": "127.0.0.1", "port": "-1"})",
      R"({"ip": "127.0.0.1", "port": 70000})",
      R"({"ip": "127.0.0.1", "port": 1.5})",
      R"({"ip": "127.0.0.1"})",
      R"({"port": 80})",
      R"({"ip": 127, "port": 80})",
      R"({"ip": "nope", "port": 80})",
      R"({"url": "127.0.0.1:1", "ip": "127.0.0.1", "port": 1})",
      R"({"url": "127.0.0.1:1", "check": "http"})",
      R"({"url": "127.0.0.1:1", "check": {"type": "udp"}})",
      R"({"url": "127.0.0.1:1", "weight": 0})",
      R"({"url": "127.0.0.1:1", "weight": 257})",
      R"({"url": "127.0.0.1:1", "weight": -1})",
      R"({"url": "127.0.0.1:1", "weight": 1.5})",
      R"({"url": "127.0.0.1:1", "weight": "2"})",
  };
  for (const char* body : bad) {
    INFO(body);
    std::string error;
    CHECK_FALSE(parse_registration(body, error));
    CHECK_FALSE(error.empty());
  }
}

TEST_CASE("ids from /servers/IP/PORT", "[api]") {
  std::string error;
  CHECK(weldr::api::id_from_path("127.0.0.1", "80", error) == "127.0.0.1:80");
  CHECK(weldr::api::id_from_path("::1", "80", error) == "[::1]:80");
  CHECK(weldr::api::id_from_path("[::1]", "80", error) == "[::1]:80");
  CHECK_FALSE(weldr::api::id_from_path("127.0.0.1", "0", error));
  CHECK_FALSE(weldr::api::id_from_path("127.0.0.1", "x", error));
  CHECK_FALSE(weldr::api::id_from_path("host", "80", error));
}

TEST_CASE("server, stats and error JSON shapes", "[api]") {
  weldr::Pool pool;
  std::error_code ec;
  pool.add(*weldr::parse_backend_url("127.0.0.1:9001", ec), R"({"type":"tcp"})");
  auto backend = pool.find("127.0.0.1:9001");
  pool.begin_request(*backend);
  pool.end_request(*backend, true);
  backend->latency().record(2ms);

  auto server = parse(weldr::api::server_json(*backend));
  CHECK(std::string(server["id"].GetString()) == "127.0.0.1:9001");
  CHECK(std::string(server["ip"].GetString()) == "127.0.0.1");
  CHECK(std::string(server["port"].GetString()) == "9001");
  CHECK(std::string(server["state"].GetString()) == "active");
  CHECK(server["counters"]["success"].GetUint64() == 1);
  CHECK(std::string(server["check"]["type"].GetString()) == "tcp");
  CHECK(server["weight"].GetUint() == 1);
  CHECK(server["outlier"]["ejected"].GetBool() == false);
  CHECK(server["outlier"]["ejections"].GetUint64() == 0);
  CHECK(server["outlier"]["consecutive_failures"].GetUint() == 0);
  CHECK(server["outlier"]["ejected_for_ms"].GetInt64() == 0);
  CHECK(server["counters"]["latency_ewma_ms"].IsNumber());
  CHECK(std::string(server["links"][1]["href"].GetString()) == "/servers/127.0.0.1/9001");
  CHECK(std::string(server["links"][1]["method"].GetString()) == "DELETE");

  weldr::Stats stats;
  stats.client_result(true);
  stats.client_result(false);
  stats.server_result(true);
  auto s = parse(weldr::api::stats_json(stats));
  CHECK(s.MemberCount() == 3);
  CHECK(s["client"]["success"].GetUint64() == 1);
  CHECK(s["client"]["failed"].GetUint64() == 1);
  CHECK(s["server"]["success"].GetUint64() == 1);
  CHECK(s["server"]["failed"].GetUint64() == 0);
  CHECK(s["retries"]["sent"].GetUint64() == 0);
  stats.retry(true);
  stats.retry(false);
  stats.retry(false);
  auto r = parse(weldr::api::stats_json(stats));
  CHECK(r["retries"]["sent"].GetUint64() == 1);
  CHECK(r["retries"]["denied"].GetUint64() == 2);

  auto detail = parse(weldr::api::stats_detail_json(pool.list()));
  REQUIRE(detail.IsArray());
  CHECK(std::string(detail[0]["port"].GetString()) == "9001");
  CHECK(detail[0]["success"].GetUint64() == 1);
  CHECK(detail[0]["latency_ms"]["count"].GetUint64() == 1);
  CHECK(detail[0]["latency_ms"]["p50"].GetDouble() > 1.0);
  CHECK(detail[0]["latency_ms"]["p50"].GetDouble() <= 2.5);

  auto error = parse(weldr::api::error_json("bad \"thing\""));
  CHECK(std::string(error["error"].GetString()) == "bad \"thing\"");
}

TEST_CASE("Prometheus text", "[api]") {
  weldr::Pool pool;
  pool.add("127.0.0.1:9001");
  auto backend = pool.find("127.0.0.1:9001");
  backend->latency().record(3ms);
  backend->latency().record(200ms);
  weldr::Stats stats;
  stats.client_result(true);
  const std::string text = weldr::api::metrics_text(stats, pool.list());
  CHECK(text.find("weldr_client_requests_total{result=\"success\"} 1\n") != std::string::npos);
  CHECK(text.find("# TYPE weldr_backend_request_duration_seconds histogram\n") != std::string::npos);
  CHECK(text.find("weldr_backend_request_duration_seconds_bucket{backend=\"127.0.0.1:9001\",le=\"0.005\"} 1\n") !=
        std::string::npos);
  CHECK(text.find("weldr_backend_request_duration_seconds_bucket{backend=\"127.0.0.1:9001\",le=\"+Inf\"} 2\n") !=
        std::string::npos);
  CHECK(text.find("weldr_backend_request_duration_seconds_count{backend=\"127.0.0.1:9001\"} 2\n") != std::string::npos);
  CHECK(text.find("weldr_backend_up{backend=\"127.0.0.1:9001\"} 1\n") != std::string::npos);
}
