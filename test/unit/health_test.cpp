#include <weldr/health_checker.hpp>

#include <rapidjson/document.h>
#include <catch2/catch.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using weldr::HealthCheckOptions;
using weldr::RiseFall;
using Change = weldr::RiseFall::Change;

namespace {

/// Records `results` ("F" = failure, "P" = pass, one letter each) and returns every change.
std::vector<Change> record_all(RiseFall& rf, std::string_view results) {
  std::vector<Change> out;
  for (const char r : results)
    out.push_back(rf.record(r == 'P'));
  return out;
}

/// True when `a` and `b` have the same value in every field.
bool same(const HealthCheckOptions& a, const HealthCheckOptions& b) {
  return a.type == b.type && a.path == b.path && a.host == b.host && a.expect_min == b.expect_min &&
         a.expect_max == b.expect_max && a.interval == b.interval && a.timeout == b.timeout &&
         a.failures == b.failures && a.passes == b.passes;
}

/// apply_check_json over `base`, which must succeed.
HealthCheckOptions apply(const HealthCheckOptions& base, std::string_view json) {
  std::string error;
  auto out = weldr::apply_check_json(base, json, error);
  INFO(json << " -> error: " << error);
  REQUIRE(out);
  return *out;
}

}  // namespace

// --- RiseFall ------------------------------------------------------------------------------

TEST_CASE("RiseFall: goes down exactly once at the Nth consecutive failure", "[health]") {
  RiseFall rf(3, 2);
  REQUIRE(rf.up());
  CHECK(rf.record(false) == Change::none);
  CHECK(rf.consecutive_failures() == 1);
  CHECK(rf.record(false) == Change::none);
  CHECK(rf.up());
  CHECK(rf.record(false) == Change::went_down);
  CHECK_FALSE(rf.up());
  CHECK(rf.consecutive_failures() == 3);
  for (int i = 0; i < 10; ++i) {
    INFO("further failure " << i);
    CHECK(rf.record(false) == Change::none);
    CHECK_FALSE(rf.up());
  }
}

TEST_CASE("RiseFall: comes back up at the Nth consecutive pass", "[health]") {
  RiseFall rf(3, 2);
  REQUIRE(record_all(rf, "FFF").back() == Change::went_down);
  CHECK(rf.record(true) == Change::none);
  CHECK_FALSE(rf.up());
  CHECK(rf.consecutive_passes() == 1);
  CHECK(rf.record(true) == Change::went_up);
  CHECK(rf.up());
  for (int i = 0; i < 10; ++i) {
    INFO("further pass " << i);
    CHECK(rf.record(true) == Change::none);
    CHECK(rf.up());
  }
}

TEST_CASE("RiseFall: flapping never changes the state", "[health]") {
  SECTION("starting up") {
    RiseFall rf(3, 2);
    for (int i = 0; i < 50; ++i) {
      CHECK(rf.record(false) == Change::none);
      CHECK(rf.record(true) == Change::none);
      CHECK(rf.up());
    }
  }
  SECTION("starting down") {
    RiseFall rf(3, 2, false);
    for (int i = 0; i < 50; ++i) {
      CHECK(rf.record(true) == Change::none);
      CHECK(rf.record(false) == Change::none);
      CHECK_FALSE(rf.up());
    }
  }
  SECTION("two failures, one pass") {
    RiseFall rf(3, 2);
    for (int i = 0; i < 20; ++i) {
      CHECK(record_all(rf, "FFP") == std::vector<Change>(3, Change::none));
      CHECK(rf.up());
    }
  }
}

TEST_CASE("RiseFall: a pass resets the failure count and a failure resets the pass count", "[health]") {
  RiseFall rf(3, 2);
  record_all(rf, "FF");
  CHECK(rf.consecutive_failures() == 2);
  CHECK(rf.consecutive_passes() == 0);
  CHECK(rf.record(true) == Change::none);
  CHECK(rf.consecutive_failures() == 0);
  CHECK(rf.consecutive_passes() == 1);
  // The count starts again from zero: two more failures are not enough.
  CHECK(record_all(rf, "FF") == std::vector<Change>(2, Change::none));
  CHECK(rf.up());
  CHECK(rf.consecutive_failures() == 2);
  CHECK(rf.consecutive_passes() == 0);
  CHECK(rf.record(false) == Change::went_down);

  CHECK(rf.record(true) == Change::none);
  CHECK(rf.consecutive_passes() == 1);
  CHECK(rf.consecutive_failures() == 0);
  CHECK(rf.record(false) == Change::none);
  CHECK(rf.consecutive_passes() == 0);
  CHECK(rf.consecutive_failures() == 1);
  CHECK(rf.record(true) == Change::none);
  CHECK(rf.record(true) == Change::went_up);
}

TEST_CASE("RiseFall: starting down needs `passes` passes", "[health]") {
  RiseFall rf(3, 4, false);
  REQUIRE_FALSE(rf.up());
  CHECK(record_all(rf, "PPP") == std::vector<Change>(3, Change::none));
  CHECK_FALSE(rf.up());
  CHECK(rf.record(true) == Change::went_up);
  CHECK(rf.up());
}

TEST_CASE("RiseFall: thresholds of 1 change state at every differing result", "[health]") {
  RiseFall rf(1, 1);
  CHECK(rf.record(true) == Change::none);
  CHECK(rf.record(false) == Change::went_down);
  CHECK(rf.record(false) == Change::none);
  CHECK(rf.record(true) == Change::went_up);
  CHECK(rf.record(true) == Change::none);
  CHECK(rf.record(false) == Change::went_down);
  CHECK(rf.record(true) == Change::went_up);
}

TEST_CASE("RiseFall: set_thresholds applies to the counts so far", "[health]") {
  RiseFall rf(5, 2);
  record_all(rf, "FF");
  CHECK(rf.up());
  rf.set_thresholds(3, 2);
  CHECK(rf.consecutive_failures() == 2);
  CHECK(rf.record(false) == Change::went_down);
}

// --- parse_duration ------------------------------------------------------------------------

TEST_CASE("parse_duration: units and bare seconds", "[health]") {
  CHECK(weldr::parse_duration("250ms") == std::optional(250ms));
  CHECK(weldr::parse_duration("2s") == std::optional<std::chrono::milliseconds>(2s));
  CHECK(weldr::parse_duration("1m") == std::optional<std::chrono::milliseconds>(1min));
  CHECK(weldr::parse_duration("1h") == std::optional<std::chrono::milliseconds>(1h));
  CHECK(weldr::parse_duration("5") == std::optional<std::chrono::milliseconds>(5s));
}

TEST_CASE("parse_duration: rejects what it cannot read", "[health]") {
  for (const char* bad : {"", "ms", "s", "-1s", "1.5s", "3d", "5 s", "s5", "1sm", "+1s", "0x10s"}) {
    INFO('"' << bad << '"');
    CHECK_FALSE(weldr::parse_duration(bad));
  }
}

// --- HealthCheckOptions::validate -------------------------------------------------------------

TEST_CASE("validate: the defaults are valid", "[health]") {
  const HealthCheckOptions defaults;
  CHECK(defaults.validate().empty());
  CHECK(defaults.type == HealthCheckOptions::Type::http);
  CHECK(defaults.path == "/");
  CHECK(defaults.expect_min == 200);
  CHECK(defaults.expect_max == 299);
  CHECK(defaults.interval == 10s);
  CHECK(defaults.timeout == 2s);
  CHECK(defaults.failures == 3);
  CHECK(defaults.passes == 2);
}

TEST_CASE("validate: every unusable value has a reason", "[health]") {
  struct Bad {
    const char* what;
    HealthCheckOptions options;
  };
  const auto with = [](auto change) {
    HealthCheckOptions o;
    change(o);
    return o;
  };
  const std::vector<Bad> cases{
      {"failures 0", with([](auto& o) { o.failures = 0; })},
      {"passes 0", with([](auto& o) { o.passes = 0; })},
      {"interval 0", with([](auto& o) { o.interval = 0ms; })},
      {"interval negative", with([](auto& o) { o.interval = -1ms; })},
      {"timeout 0", with([](auto& o) { o.timeout = 0ms; })},
      {"timeout negative", with([](auto& o) { o.timeout = -5ms; })},
      {"expect_min 99", with([](auto& o) { o.expect_min = 99; })},
      {"expect_max 600", with([](auto& o) { o.expect_max = 600; })},
      {"expect_min > expect_max", with([](auto& o) {
         o.expect_min = 399;
         o.expect_max = 200;
       })},
  };
  for (const auto& [what, options] : cases) {
    INFO(what);
    CHECK_FALSE(options.validate().empty());
  }
}

TEST_CASE("validate: the documented bounds are inclusive", "[health]") {
  const auto with = [](auto change) {
    HealthCheckOptions o;
    change(o);
    return o.validate();
  };
  CHECK(with([](auto& o) { o.failures = 1000; }).empty());
  CHECK_FALSE(with([](auto& o) { o.failures = 1001; }).empty());
  CHECK(with([](auto& o) { o.passes = 1000; }).empty());
  CHECK_FALSE(with([](auto& o) { o.passes = 1001; }).empty());
  CHECK(with([](auto& o) { o.interval = 1ms; }).empty());
  CHECK(with([](auto& o) { o.interval = 24h; }).empty());
  CHECK_FALSE(with([](auto& o) { o.interval = 24h + 1ms; }).empty());
  CHECK(with([](auto& o) { o.timeout = 24h; }).empty());
  CHECK_FALSE(with([](auto& o) { o.timeout = 24h + 1ms; }).empty());
  CHECK(with([](auto& o) {
          o.expect_min = 100;
          o.expect_max = 599;
        }).empty());
}

// --- apply_check_json ----------------------------------------------------------------------

TEST_CASE("apply_check_json: an empty object keeps the base", "[health]") {
  HealthCheckOptions base;
  base.path = "/base";
  base.failures = 7;
  CHECK(same(apply(base, "{}"), base));
}

TEST_CASE("apply_check_json: each field overrides the base, the others stay", "[health]") {
  HealthCheckOptions base;
  base.path = "/base";
  base.host = "base.example";
  base.failures = 4;

  const auto tcp = apply(base, R"({"type": "tcp"})");
  CHECK(tcp.type == HealthCheckOptions::Type::tcp);
  CHECK(tcp.path == "/base");
  CHECK(tcp.failures == 4);
  CHECK(apply(tcp, R"({"type": "http"})").type == HealthCheckOptions::Type::http);

  const auto path = apply(base, R"({"path": "/health"})");
  CHECK(path.path == "/health");
  CHECK(path.host == "base.example");

  CHECK(apply(base, R"({"host": "svc.internal"})").host == "svc.internal");

  const auto single = apply(base, R"({"expect": 204})");
  CHECK(single.expect_min == 204);
  CHECK(single.expect_max == 204);
  const auto range = apply(base, R"({"expect": "200-399"})");
  CHECK(range.expect_min == 200);
  CHECK(range.expect_max == 399);

  CHECK(apply(base, R"({"interval": "500ms"})").interval == 500ms);
  CHECK(apply(base, R"({"interval": "2s"})").interval == 2s);
  CHECK(apply(base, R"({"interval": 1500})").interval == 1500ms);
  CHECK(apply(base, R"({"timeout": "1s"})").timeout == 1s);
  CHECK(apply(base, R"({"timeout": 250})").timeout == 250ms);

  const auto counts = apply(base, R"({"failures": 5, "passes": 1})");
  CHECK(counts.failures == 5);
  CHECK(counts.passes == 1);
  CHECK(counts.path == "/base");
  CHECK(counts.interval == base.interval);
}

TEST_CASE("apply_check_json: all fields at once", "[health]") {
  const auto o = apply(HealthCheckOptions{}, R"({"type": "http", "path": "/ready", "host": "a.example",
      "expect": "200-204", "interval": "750ms", "timeout": 300, "failures": 6, "passes": 4})");
  CHECK(o.type == HealthCheckOptions::Type::http);
  CHECK(o.path == "/ready");
  CHECK(o.host == "a.example");
  CHECK(o.expect_min == 200);
  CHECK(o.expect_max == 204);
  CHECK(o.interval == 750ms);
  CHECK(o.timeout == 300ms);
  CHECK(o.failures == 6);
  CHECK(o.passes == 4);
}

TEST_CASE("apply_check_json: every invalid input gives nothing and a reason", "[health]") {
  const char* bad[] = {
      "",
      "{",
      "not json",
      "[]",
      "42",
      R"("tcp")",
      R"({"type": "udp"})",
      R"({"type": 1})",
      R"({"path": "health"})",
      R"({"path": ""})",
      R"({"path": 5})",
      R"({"host": 5})",
      R"({"expect": "abc"})",
      R"({"expect": "399-200"})",
      R"({"expect": 99})",
      R"({"expect": 600})",
      R"({"expect": "99-200"})",
      R"({"expect": "200-600"})",
      R"({"expect": "200-"})",
      R"({"expect": true})",
      R"({"interval": "soon"})",
      R"({"interval": 0})",
      R"({"interval": "0ms"})",
      R"({"interval": -100})",
      R"({"interval": "-1s"})",
      R"({"interval": "1.5s"})",
      R"({"interval": 1.5})",
      R"({"timeout": 0})",
      R"({"timeout": "never"})",
      R"({"failures": 0})",
      R"({"failures": -1})",
      R"({"failures": "3"})",
      R"({"passes": 0})",
      R"({"passes": 1.5})",
      R"({"failures": 1001})",
      R"({"interval": "25h"})",
      R"({"timeout": 86400001})",
      R"({"bogus": 1})",
      R"({"path": "/ok", "intervall": "1s"})",
  };
  const HealthCheckOptions base;
  for (const char* json : bad) {
    INFO(json);
    std::string error;
    const auto out = weldr::apply_check_json(base, json, error);
    CHECK_FALSE(out);
    CHECK_FALSE(error.empty());
  }
}

TEST_CASE("apply_check_json: what it returns passes validate()", "[health]") {
  std::string error;
  const auto o = weldr::apply_check_json(HealthCheckOptions{}, R"({"failures": 1, "passes": 1})", error);
  REQUIRE(o);
  CHECK(o->validate().empty());
}

TEST_CASE("apply_check_json: no CR, LF or space in what goes into the check request", "[health]") {
  // The path and host are written into a request head: a line break would inject header fields.
  const char* bad[] = {
      R"({"path": "/a\r\nX-Injected: 1"})",        R"({"path": "/a\nb"})", R"({"path": "/a b"})",
      R"({"host": "a.example\r\nX-Injected: 1"})", R"({"host": "a b"})",
  };
  for (const char* json : bad) {
    INFO(json);
    std::string error;
    CHECK_FALSE(weldr::apply_check_json(HealthCheckOptions{}, json, error));
    CHECK_FALSE(error.empty());
  }
}

// --- to_json ---------------------------------------------------------------------------------

TEST_CASE("to_json: an object that apply_check_json reads back as the same settings", "[health]") {
  HealthCheckOptions tcp;
  tcp.type = HealthCheckOptions::Type::tcp;
  tcp.interval = 1500ms;
  tcp.timeout = 250ms;
  tcp.failures = 1;
  tcp.passes = 7;

  HealthCheckOptions http;
  http.path = "/health?full=1";
  http.host = "svc.internal";
  http.expect_min = 200;
  http.expect_max = 399;
  http.interval = 1h;
  http.timeout = 2s;

  HealthCheckOptions exact;
  exact.expect_min = exact.expect_max = 204;
  exact.path = "/a/b?x=1&y=%20";

  for (const auto& original : {HealthCheckOptions{}, tcp, http, exact}) {
    const std::string json = weldr::to_json(original);
    INFO(json);
    rapidjson::Document doc;
    doc.Parse(json.data(), json.size());
    REQUIRE_FALSE(doc.HasParseError());
    CHECK(doc.IsObject());
    // Read back over a base that differs in every field, so nothing comes from the base.
    HealthCheckOptions other;
    other.type = original.type == HealthCheckOptions::Type::http ? HealthCheckOptions::Type::tcp
                                                                 : HealthCheckOptions::Type::http;
    other.path = "/other";
    other.host = "other.example";
    other.expect_min = 100;
    other.expect_max = 101;
    other.interval = 3ms;
    other.timeout = 2ms;
    other.failures = 99;
    other.passes = 98;
    std::string error;
    const auto back = weldr::apply_check_json(other, json, error);
    INFO("error: " << error);
    REQUIRE(back);
    CHECK(same(*back, original));
  }
}
