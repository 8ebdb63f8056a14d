// The etcd gateway's codec without sockets: base64, the request bodies (parsed back with
// RapidJSON), the response parsers on answers captured from a real etcd 3.4.23 gateway, the
// watch cursor, the key layout, and the checks of endpoints and ClusterOptions.

#include "cluster/etcd_codec.hpp"

#include "cluster/etcd_client.hpp"

#include <weldr/cluster.hpp>

#include <rapidjson/document.h>
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

using namespace std::string_literals;
using weldr::cluster::base64_decode;
using weldr::cluster::base64_encode;
using weldr::cluster::Compare;
using weldr::cluster::Keys;
using weldr::cluster::KeyValue;
using weldr::cluster::Operation;
using weldr::cluster::prefix_end;
using weldr::cluster::WatchCursor;
using weldr::cluster::WatchEvent;
using weldr::cluster::WatchMessage;

namespace {

// ---- answers of a real etcd 3.4.23 gateway (curl on /v3/...) ------------------------------

constexpr const char* kRange =
    R"({"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"2","raft_term":"2"},)"
    R"("kvs":[{"key":"L2EveA==","create_revision":"2","mod_revision":"2","version":"1","value":"aGVsbG8="}],)"
    R"("count":"1"})";
// A prefix read: two keys, one of them on a lease.
constexpr const char* kRangeTwo =
    R"({"header":{"cluster_id":"7801232528081817440","member_id":"13458989633860879742","revision":"3",)"
    R"("raft_term":"2"},"kvs":[{"key":"L2EveA==","create_revision":"2","mod_revision":"2","version":"1",)"
    R"("value":"aGVsbG8=","lease":"5007618312523969544"},{"key":"L2EveQ==","create_revision":"3",)"
    R"("mod_revision":"3","version":"1","value":"eA=="}],"count":"2"})";
constexpr const char* kEmptyRange =
    R"({"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"2",)"
    R"("raft_term":"2"}})";
// A failed transaction ("succeeded" left out) whose failure branch read a key.
constexpr const char* kTxnFailedRange =
    R"({"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"2",)"
    R"("raft_term":"2"},"responses":[{"response_range":{"header":{"revision":"2"},"kvs":[{"key":"L2EveA==",)"
    R"("create_revision":"2","mod_revision":"2","version":"1","value":"aGVsbG8="}],"count":"1"}}]})";
// A failed transaction with an empty failure branch.
constexpr const char* kTxnFailedEmpty =
    R"({"header":{"cluster_id":"7801232528081817440","member_id":"13458989633860879742","revision":"5",)"
    R"("raft_term":"2"}})";
constexpr const char* kTxnSucceededPut =
    R"({"header":{"cluster_id":"7801232528081817440","member_id":"13458989633860879742","revision":"4",)"
    R"("raft_term":"2"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"4"}}}]})";
// A delete of three keys, then a read of the same range that found nothing.
constexpr const char* kTxnSucceededDeleteRange =
    R"({"header":{"cluster_id":"7801232528081817440","member_id":"13458989633860879742","revision":"10",)"
    R"("raft_term":"2"},"succeeded":true,"responses":[{"response_delete_range":{"header":{"revision":"10"},)"
    R"("deleted":"3"}},{"response_range":{"header":{"revision":"10"}}}]})";
constexpr const char* kGrant =
    R"({"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"2",)"
    R"("raft_term":"2"},"ID":"2324035884392797446","TTL":"1"})";
constexpr const char* kKeepalive =
    R"({"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"4",)"
    R"("raft_term":"2"},"ID":"2324035884392797454","TTL":"5"}})";
constexpr const char* kKeepaliveGone =
    R"({"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"4",)"
    R"("raft_term":"2"},"ID":"12345"}})";
constexpr const char* kLeaseNotFound =
    R"({"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found",)"
    R"("code":5})";
constexpr const char* kPut =
    R"({"header":{"cluster_id":"7801232528081817440","member_id":"13458989633860879742","revision":"7",)"
    R"("raft_term":"2"}})";
constexpr const char* kDeleteRange =
    R"({"header":{"cluster_id":"7801232528081817440","member_id":"13458989633860879742","revision":"6",)"
    R"("raft_term":"2"},"deleted":"2"})";
constexpr const char* kDeleteNothing =
    R"({"header":{"cluster_id":"7801232528081817440","member_id":"13458989633860879742","revision":"6",)"
    R"("raft_term":"2"}})";
constexpr const char* kToken =
    R"({"header":{"cluster_id":"7801232528081817440","member_id":"13458989633860879742","revision":"10",)"
    R"("raft_term":"2"},"token":"KWICLIobEdjmlxGh.26"})";
constexpr const char* kAuthFailed =
    R"({"error":"etcdserver: authentication failed, invalid user ID or password","message":"etcdserver: )"
    R"(authentication failed, invalid user ID or password","code":3})";
constexpr const char* kWatchCreated =
    R"({"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"2",)"
    R"("raft_term":"2"},"created":true}})";
constexpr const char* kWatchEvents =
    R"({"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"4",)"
    R"("raft_term":"2"},"events":[{"kv":{"key":"L2EveA==","create_revision":"2","mod_revision":"2","version":"1",)"
    R"("value":"aGVsbG8="}},{"kv":{"key":"L2EveQ==","create_revision":"3","mod_revision":"3","version":"1",)"
    R"("value":"eA=="}},{"type":"DELETE","kv":{"key":"L2EveQ==","mod_revision":"4"}}]}})";
// A watch from revision 2 that catches up on history: puts, deletes, and two transactions
// (revision 6 deleted two keys, revision 10 three).
constexpr const char* kWatchHistory =
    R"({"result":{"header":{"cluster_id":"7801232528081817440","member_id":"13458989633860879742",)"
    R"("revision":"10","raft_term":"2"},"events":[)"
    R"({"kv":{"key":"L2EveA==","create_revision":"2","mod_revision":"2","version":"1","value":"aGVsbG8=",)"
    R"("lease":"5007618312523969544"}},)"
    R"({"kv":{"key":"L2EveQ==","create_revision":"3","mod_revision":"3","version":"1","value":"eA=="}},)"
    R"({"kv":{"key":"L2Eveg==","create_revision":"4","mod_revision":"4","version":"1","value":"eno="}},)"
    R"({"type":"DELETE","kv":{"key":"L2EveA==","mod_revision":"5"}},)"
    R"({"type":"DELETE","kv":{"key":"L2EveQ==","mod_revision":"6"}},)"
    R"({"type":"DELETE","kv":{"key":"L2Eveg==","mod_revision":"6"}},)"
    R"({"kv":{"key":"L2EveA==","create_revision":"7","mod_revision":"7","version":"1","value":"aGVsbG8="}},)"
    R"({"kv":{"key":"L2EveQ==","create_revision":"8","mod_revision":"8","version":"1","value":"eA=="}},)"
    R"({"kv":{"key":"L2Eveg==","create_revision":"9","mod_revision":"9","version":"1","value":"eno="}},)"
    R"({"type":"DELETE","kv":{"key":"L2EveA==","mod_revision":"10"}},)"
    R"({"type":"DELETE","kv":{"key":"L2EveQ==","mod_revision":"10"}},)"
    R"({"type":"DELETE","kv":{"key":"L2Eveg==","mod_revision":"10"}}]}})";
constexpr const char* kWatchCompacted =
    R"({"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","raft_term":"2"},)"
    R"("canceled":true,"compact_revision":"6"}})";
// A watch refused for want of a token (auth enabled).
constexpr const char* kWatchCanceledAuth =
    R"({"result":{"header":{"cluster_id":"7801232528081817440","member_id":"13458989633860879742",)"
    R"("revision":"10","raft_term":"2"},"watch_id":"-1","created":true,"canceled":true,)"
    R"("cancel_reason":"rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"}})";
// What /v3/watch answers to a body that is not JSON.
constexpr const char* kWatchBadRequest =
    R"j({"error":"invalid character 'o' in literal null (expecting 'u')","message":"invalid character 'o' in )j"
    R"j(literal null (expecting 'u')","code":2})j";

// ---- helpers --------------------------------------------------------------------------------

rapidjson::Document parse_json(const std::string& json) {
  INFO(json);
  rapidjson::Document doc;
  doc.Parse(json.data(), json.size());
  REQUIRE_FALSE(doc.HasParseError());
  REQUIRE(doc.IsObject());
  return doc;
}

const rapidjson::Value& member(const rapidjson::Value& object, const char* name) {
  INFO(name);
  REQUIRE(object.IsObject());
  const auto m = object.FindMember(name);
  REQUIRE(m != object.MemberEnd());
  return m->value;
}

std::string text(const rapidjson::Value& object, const char* name) {
  const rapidjson::Value& v = member(object, name);
  REQUIRE(v.IsString());
  return {v.GetString(), v.GetStringLength()};
}

// A bytes field: base64 that decodes.
std::string bytes(const rapidjson::Value& object, const char* name) {
  const std::string encoded = text(object, name);
  INFO(encoded);
  auto decoded = base64_decode(encoded);
  REQUIRE(decoded);
  return *decoded;
}

std::string all_bytes() {
  std::string out;
  for (int i = 0; i < 256; ++i)
    out += static_cast<char>(i);
  return out;
}

std::string url_safe(std::string encoded) {
  for (char& c : encoded) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  return encoded;
}

std::string unpadded(std::string encoded) {
  while (!encoded.empty() && encoded.back() == '=')
    encoded.pop_back();
  return encoded;
}

WatchEvent event_at(std::int64_t revision, std::string key = "/k", WatchEvent::Type type = WatchEvent::Type::put) {
  WatchEvent e;
  e.type = type;
  e.kv.key = std::move(key);
  e.kv.mod_revision = revision;
  return e;
}

WatchMessage message_of(std::vector<WatchEvent> events) {
  WatchMessage m;
  m.revision = events.empty() ? 0 : events.back().kv.mod_revision;
  m.events = std::move(events);
  return m;
}

weldr::ClusterOptions usable_options() {
  weldr::ClusterOptions o;
  o.etcd = "http://127.0.0.1:2379";
  o.node = "n1";
  return o;
}

}  // namespace

// ---- base64 -----------------------------------------------------------------------------------

TEST_CASE("etcd_codec: base64 encodes the RFC 4648 test vectors", "[cluster]") {
  CHECK(base64_encode("") == "");
  CHECK(base64_encode("f") == "Zg==");
  CHECK(base64_encode("fo") == "Zm8=");
  CHECK(base64_encode("foo") == "Zm9v");
  CHECK(base64_encode("foob") == "Zm9vYg==");
  CHECK(base64_encode("fooba") == "Zm9vYmE=");
  CHECK(base64_encode("foobar") == "Zm9vYmFy");
  CHECK(base64_encode("/a/x") == "L2EveA==");  // as etcd writes the key
  CHECK(base64_encode("\xfb\xff"s) == "+/8=");
  CHECK(base64_encode("\0"s) == "AA==");
}

TEST_CASE("etcd_codec: base64 round trips every length and every byte", "[cluster]") {
  const std::string all = all_bytes();
  REQUIRE(all.size() == 256);
  for (std::size_t n = 0; n <= 12; ++n) {                 // empty, and 1-, 2- and 3-byte tails, several times over
    const std::string data = all.substr(256 - n - 3, n);  // ends in 0xfd 0xfe 0xff: high bits set
    INFO("length " << n);
    const std::string encoded = base64_encode(data);
    CHECK(encoded.size() == (n + 2) / 3 * 4);
    CHECK(encoded.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") ==
          std::string::npos);
    CHECK(base64_decode(encoded) == data);
  }
  // Every byte, in each position of a 3-byte group.
  for (std::size_t shift = 0; shift < 3; ++shift) {
    const std::string data = all.substr(shift);
    INFO("shift " << shift);
    CHECK(base64_decode(base64_encode(data)) == data);
  }
  CHECK(base64_decode(base64_encode("\0\0\0\0"s)) == "\0\0\0\0"s);
}

TEST_CASE("etcd_codec: base64 decodes URL-safe and unpadded input", "[cluster]") {
  CHECK(base64_decode("-_8=") == "\xfb\xff"s);
  CHECK(base64_decode("-_8") == "\xfb\xff"s);
  CHECK(base64_decode("+/8") == "\xfb\xff"s);
  CHECK(base64_decode("Zg") == "f");
  CHECK(base64_decode("Zm8") == "fo");
  CHECK(base64_decode("Zm9vYg") == "foob");
  CHECK(base64_decode("") == "");
  const std::string all = all_bytes();
  for (std::size_t n : {253u, 254u, 255u, 256u}) {
    const std::string data = all.substr(0, n);
    const std::string encoded = base64_encode(data);
    INFO("length " << n);
    CHECK(base64_decode(url_safe(encoded)) == data);
    CHECK(base64_decode(unpadded(encoded)) == data);
    CHECK(base64_decode(unpadded(url_safe(encoded))) == data);
  }
}

TEST_CASE("etcd_codec: base64 rejects what is not base64", "[cluster]") {
  CHECK_FALSE(base64_decode("@@"));
  CHECK_FALSE(base64_decode("Zm9v!"));
  CHECK_FALSE(base64_decode("Zm 9v"));
  CHECK_FALSE(base64_decode("Zm9v\n"));
  CHECK_FALSE(base64_decode("Zg==Zg=="));  // padding inside
  CHECK_FALSE(base64_decode("Z"));         // length % 4 == 1
  CHECK_FALSE(base64_decode("Zm9vY"));
  CHECK_FALSE(base64_decode("Zm9vY==="));
  CHECK_FALSE(base64_decode("Zm9v\0Zg=="s));
}

// ---- prefix_end -------------------------------------------------------------------------------

TEST_CASE("etcd_codec: prefix_end increments the last byte that can be", "[cluster]") {
  CHECK(prefix_end("/weldr/a/") == "/weldr/a0");
  CHECK(prefix_end("/a/") == "/a0");
  CHECK(prefix_end("a") == "b");
  CHECK(prefix_end("a\x7f"s) == "a\x80"s);
  CHECK(prefix_end("a\xff"s) == "b");
  CHECK(prefix_end("ab\xff\xff"s) == "ac");
  // Nothing above it: "\0" is etcd's "every key from `key` on".
  CHECK(prefix_end("\xff"s) == "\0"s);
  CHECK(prefix_end("\xff\xff\xff"s) == "\0"s);
}

// ---- requests ---------------------------------------------------------------------------------

TEST_CASE("etcd_codec: range_request", "[cluster]") {
  const auto one = parse_json(weldr::cluster::range_request("/weldr/a/leader"));
  CHECK(bytes(one, "key") == "/weldr/a/leader");
  CHECK_FALSE(one.HasMember("range_end"));
  CHECK(one.MemberCount() == 1);

  const auto prefix = parse_json(weldr::cluster::range_request("/weldr/a/", prefix_end("/weldr/a/")));
  CHECK(bytes(prefix, "key") == "/weldr/a/");
  CHECK(bytes(prefix, "range_end") == "/weldr/a0");

  // Every key: range_end "\0".
  const auto all = parse_json(weldr::cluster::range_request("\0"s, "\0"s));
  CHECK(text(all, "key") == "AA==");
  CHECK(text(all, "range_end") == "AA==");
}

TEST_CASE("etcd_codec: put_request", "[cluster]") {
  const auto plain = parse_json(weldr::cluster::put_request("/a/x", "hello"));
  CHECK(text(plain, "key") == "L2EveA==");
  CHECK(bytes(plain, "value") == "hello");
  CHECK_FALSE(plain.HasMember("lease"));

  const auto leased = parse_json(weldr::cluster::put_request("/a/x", "hello", 5007618312523969544));
  CHECK(text(leased, "lease") == "5007618312523969544");  // int64 as a decimal string

  const auto max = parse_json(weldr::cluster::put_request("k", "v", std::numeric_limits<std::int64_t>::max()));
  CHECK(text(max, "lease") == "9223372036854775807");

  // Values are bytes: JSON and binary survive.
  const std::string value = R"({"url":"http://[::1]:80","q":"\"\\"})" + "\0\xff\n"s;
  const std::string key = "/weldr/a/servers/\xc3\xa9\x01"s;
  const auto binary = parse_json(weldr::cluster::put_request(key, value));
  CHECK(bytes(binary, "key") == key);
  CHECK(bytes(binary, "value") == value);

  const auto empty = parse_json(weldr::cluster::put_request("k", ""));
  CHECK(text(empty, "value") == "");
}

TEST_CASE("etcd_codec: delete_request", "[cluster]") {
  const auto one = parse_json(weldr::cluster::delete_request("/weldr/a/leader"));
  CHECK(bytes(one, "key") == "/weldr/a/leader");
  CHECK_FALSE(one.HasMember("range_end"));

  const auto range = parse_json(weldr::cluster::delete_request("/a/", prefix_end("/a/")));
  CHECK(text(range, "key") == "L2Ev");
  CHECK(text(range, "range_end") == "L2Ew");
}

TEST_CASE("etcd_codec: lease requests", "[cluster]") {
  const auto grant = parse_json(weldr::cluster::grant_request(5));
  CHECK(text(grant, "TTL") == "5");
  CHECK(grant.MemberCount() == 1);

  const auto keepalive = parse_json(weldr::cluster::lease_request(2324035884392797446));
  CHECK(text(keepalive, "ID") == "2324035884392797446");
  CHECK(keepalive.MemberCount() == 1);

  const auto max = parse_json(weldr::cluster::lease_request(std::numeric_limits<std::int64_t>::max()));
  CHECK(text(max, "ID") == "9223372036854775807");
}

TEST_CASE("etcd_codec: watch_request", "[cluster]") {
  const auto from = parse_json(weldr::cluster::watch_request("/weldr/a/", prefix_end("/weldr/a/"), 3));
  const rapidjson::Value& create = member(from, "create_request");
  CHECK(bytes(create, "key") == "/weldr/a/");
  CHECK(bytes(create, "range_end") == "/weldr/a0");
  CHECK(text(create, "start_revision") == "3");

  const auto now = parse_json(weldr::cluster::watch_request("/weldr/a/leader", {}, 0));
  const rapidjson::Value& create_now = member(now, "create_request");
  CHECK(bytes(create_now, "key") == "/weldr/a/leader");
  CHECK_FALSE(create_now.HasMember("range_end"));
  CHECK_FALSE(create_now.HasMember("start_revision"));
}

TEST_CASE("etcd_codec: authenticate_request", "[cluster]") {
  const auto doc = parse_json(weldr::cluster::authenticate_request("root", R"(p"a\ss)"));
  CHECK(text(doc, "name") == "root");  // strings, not bytes
  CHECK(text(doc, "password") == R"(p"a\ss)");
}

TEST_CASE("etcd_codec: txn_request compares and operations", "[cluster]") {
  const std::vector<Compare> compares{
      {"/weldr/a/leader", Compare::Target::create_revision, 0, ""},
      {"/weldr/a/servers/s1", Compare::Target::mod_revision, 42, ""},
      {"/weldr/a/leader", Compare::Target::value, 0, "node-1"},
  };
  Operation put{Operation::Kind::put, "/weldr/a/leader", "node-1", 77, ""};
  Operation put_no_lease{Operation::Kind::put, "/weldr/a/initialized", "1", 0, ""};
  Operation remove{Operation::Kind::remove, "/weldr/a/servers/", "", 0, prefix_end("/weldr/a/servers/")};
  Operation remove_one{Operation::Kind::remove, "/weldr/a/leader", "", 0, ""};
  Operation range{Operation::Kind::range, "/weldr/a/", "", 0, prefix_end("/weldr/a/")};
  Operation range_one{Operation::Kind::range, "/weldr/a/leader", "", 0, ""};

  const auto doc =
      parse_json(weldr::cluster::txn_request(compares, {put, put_no_lease, remove, remove_one}, {range, range_one}));

  const rapidjson::Value& cmp = member(doc, "compare");
  REQUIRE(cmp.IsArray());
  REQUIRE(cmp.Size() == 3);
  for (const auto& c : cmp.GetArray())
    CHECK(text(c, "result") == "EQUAL");
  CHECK(bytes(cmp[0], "key") == "/weldr/a/leader");
  CHECK(text(cmp[0], "target") == "CREATE");
  CHECK(text(cmp[0], "create_revision") == "0");
  CHECK(bytes(cmp[1], "key") == "/weldr/a/servers/s1");
  CHECK(text(cmp[1], "target") == "MOD");
  CHECK(text(cmp[1], "mod_revision") == "42");
  CHECK_FALSE(cmp[1].HasMember("create_revision"));
  CHECK(text(cmp[2], "target") == "VALUE");
  CHECK(bytes(cmp[2], "value") == "node-1");
  CHECK_FALSE(cmp[2].HasMember("mod_revision"));

  const rapidjson::Value& success = member(doc, "success");
  REQUIRE(success.IsArray());
  REQUIRE(success.Size() == 4);
  const rapidjson::Value& p = member(success[0], "request_put");
  CHECK(bytes(p, "key") == "/weldr/a/leader");
  CHECK(bytes(p, "value") == "node-1");
  CHECK(text(p, "lease") == "77");
  const rapidjson::Value& p2 = member(success[1], "request_put");
  CHECK(bytes(p2, "key") == "/weldr/a/initialized");
  CHECK_FALSE(p2.HasMember("lease"));
  const rapidjson::Value& d = member(success[2], "request_delete_range");
  CHECK(bytes(d, "key") == "/weldr/a/servers/");
  CHECK(bytes(d, "range_end") == "/weldr/a/servers0");
  const rapidjson::Value& d2 = member(success[3], "request_delete_range");
  CHECK(bytes(d2, "key") == "/weldr/a/leader");
  CHECK_FALSE(d2.HasMember("range_end"));
  for (const auto& op : success.GetArray())
    CHECK(op.MemberCount() == 1);  // one request_* each

  const rapidjson::Value& failure = member(doc, "failure");
  REQUIRE(failure.IsArray());
  REQUIRE(failure.Size() == 2);
  const rapidjson::Value& r = member(failure[0], "request_range");
  CHECK(bytes(r, "key") == "/weldr/a/");
  CHECK(bytes(r, "range_end") == "/weldr/a0");
  const rapidjson::Value& r2 = member(failure[1], "request_range");
  CHECK(bytes(r2, "key") == "/weldr/a/leader");
  CHECK_FALSE(r2.HasMember("range_end"));
}

TEST_CASE("etcd_codec: txn_request with no failure branch", "[cluster]") {
  const auto doc = parse_json(weldr::cluster::txn_request({}, {{Operation::Kind::put, "k", "v", 0, ""}}));
  CHECK(member(doc, "compare").IsArray());
  CHECK(member(doc, "compare").Empty());
  CHECK(member(doc, "success").Size() == 1);
  CHECK(member(doc, "failure").IsArray());
  CHECK(member(doc, "failure").Empty());
}

// ---- responses --------------------------------------------------------------------------------

TEST_CASE("etcd_codec: parse_range on real answers", "[cluster]") {
  std::string error;
  const auto one = weldr::cluster::parse_range(kRange, error);
  REQUIRE(one);
  CHECK(one->revision == 2);
  REQUIRE(one->kvs.size() == 1);
  const KeyValue& kv = one->kvs[0];
  CHECK(kv.key == "/a/x");
  CHECK(kv.value == "hello");
  CHECK(kv.create_revision == 2);
  CHECK(kv.mod_revision == 2);
  CHECK(kv.version == 1);
  CHECK(kv.lease == 0);

  const auto two = weldr::cluster::parse_range(kRangeTwo, error);
  REQUIRE(two);
  CHECK(two->revision == 3);
  REQUIRE(two->kvs.size() == 2);
  CHECK(two->kvs[0].key == "/a/x");
  CHECK(two->kvs[0].lease == 5007618312523969544);
  CHECK(two->kvs[1].key == "/a/y");
  CHECK(two->kvs[1].value == "x");
  CHECK(two->kvs[1].lease == 0);

  const auto empty = weldr::cluster::parse_range(kEmptyRange, error);
  REQUIRE(empty);
  CHECK(empty->revision == 2);
  CHECK(empty->kvs.empty());
}

TEST_CASE("etcd_codec: parse_txn on real answers", "[cluster]") {
  std::string error;
  const auto failed = weldr::cluster::parse_txn(kTxnFailedRange, error);
  REQUIRE(failed);
  CHECK(failed->revision == 2);
  CHECK_FALSE(failed->succeeded);  // "succeeded" is left out when false
  REQUIRE(failed->ranges.size() == 1);
  REQUIRE(failed->ranges[0].size() == 1);
  CHECK(failed->ranges[0][0].key == "/a/x");
  CHECK(failed->ranges[0][0].value == "hello");
  CHECK(failed->ranges[0][0].mod_revision == 2);
  CHECK(failed->deleted.empty());

  const auto failed_empty = weldr::cluster::parse_txn(kTxnFailedEmpty, error);
  REQUIRE(failed_empty);
  CHECK(failed_empty->revision == 5);
  CHECK_FALSE(failed_empty->succeeded);
  CHECK(failed_empty->ranges.empty());
  CHECK(failed_empty->deleted.empty());

  const auto put = weldr::cluster::parse_txn(kTxnSucceededPut, error);
  REQUIRE(put);
  CHECK(put->revision == 4);
  CHECK(put->succeeded);
  CHECK(put->ranges.empty());
  CHECK(put->deleted.empty());

  const auto del = weldr::cluster::parse_txn(kTxnSucceededDeleteRange, error);
  REQUIRE(del);
  CHECK(del->revision == 10);
  CHECK(del->succeeded);
  CHECK(del->deleted == std::vector<std::int64_t>{3});
  REQUIRE(del->ranges.size() == 1);  // a range that found nothing still counts
  CHECK(del->ranges[0].empty());

  error.clear();
  CHECK_FALSE(weldr::cluster::parse_txn(kLeaseNotFound, error));
  CHECK(error == "etcdserver: requested lease not found");
}

TEST_CASE("etcd_codec: parse_lease on real answers", "[cluster]") {
  std::string error;
  const auto grant = weldr::cluster::parse_lease(kGrant, error);
  REQUIRE(grant);
  CHECK(grant->revision == 2);
  CHECK(grant->id == 2324035884392797446);
  CHECK(grant->ttl == 1);

  const auto keepalive = weldr::cluster::parse_lease(kKeepalive, error);
  REQUIRE(keepalive);
  CHECK(keepalive->revision == 4);
  CHECK(keepalive->id == 2324035884392797454);
  CHECK(keepalive->ttl == 5);

  const auto gone = weldr::cluster::parse_lease(kKeepaliveGone, error);
  REQUIRE(gone);
  CHECK(gone->id == 12345);
  CHECK(gone->ttl == 0);  // TTL left out: the lease is gone

  error.clear();
  CHECK_FALSE(weldr::cluster::parse_lease(kLeaseNotFound, error));
  CHECK(error == "etcdserver: requested lease not found");
}

TEST_CASE("etcd_codec: parse_delete parse_revision and parse_token on real answers", "[cluster]") {
  std::string error;
  const auto deleted = weldr::cluster::parse_delete(kDeleteRange, error);
  REQUIRE(deleted);
  CHECK(deleted->revision == 6);
  CHECK(deleted->deleted == 2);
  const auto nothing = weldr::cluster::parse_delete(kDeleteNothing, error);
  REQUIRE(nothing);
  CHECK(nothing->deleted == 0);

  CHECK(weldr::cluster::parse_revision(kPut, error) == 7);
  CHECK(weldr::cluster::parse_revision(kRange, error) == 2);

  CHECK(weldr::cluster::parse_token(kToken, error) == "KWICLIobEdjmlxGh.26");
  error.clear();
  CHECK_FALSE(weldr::cluster::parse_token(kAuthFailed, error));
  CHECK(error == "etcdserver: authentication failed, invalid user ID or password");
  error.clear();
  CHECK_FALSE(weldr::cluster::parse_token(kPut, error));
  CHECK_FALSE(error.empty());
}

TEST_CASE("etcd_codec: parse_error", "[cluster]") {
  const auto lease = weldr::cluster::parse_error(kLeaseNotFound);
  REQUIRE(lease);
  CHECK(lease->code == 5);
  CHECK(lease->message == "etcdserver: requested lease not found");

  const auto auth = weldr::cluster::parse_error(kAuthFailed);
  REQUIRE(auth);
  CHECK(auth->code == 3);

  for (const char* body : {kRange, kEmptyRange, kTxnSucceededPut, kGrant, kKeepalive, kKeepaliveGone, kWatchCreated, "",
                           "not json", "[]", R"("error")", "{}", "Not Found"}) {
    INFO(body);
    CHECK_FALSE(weldr::cluster::parse_error(body));
  }
}

TEST_CASE("etcd_codec: parsers refuse malformed answers with a reason", "[cluster]") {
  struct Case {
    const char* what;
    const char* body;
  };
  const std::vector<Case> cases{
      {"empty", ""},
      {"not JSON", "not json"},
      {"truncated", R"({"header":{"revision":"2")"},
      {"an HTTP error page", "Not Found"},
      {"not an object", R"([{"header":{"revision":"2"}}])"},
      {"a string", R"("header")"},
      {"no header", R"({"kvs":[]})"},
      {"a header that is not an object", R"({"header":"2"})"},
      {"a revision that is not a number", R"({"header":{"revision":"two"}})"},
      {"a revision with trailing garbage", R"({"header":{"revision":"2x"}})"},
      {"a fractional revision", R"({"header":{"revision":2.5}})"},
      {"a revision out of range", R"({"header":{"revision":"99999999999999999999"}})"},
      {"a boolean revision", R"({"header":{"revision":true}})"},
      {"an etcd error", kLeaseNotFound},
  };
  for (const Case& c : cases) {
    INFO(c.what << ": " << c.body);
    std::string error;
    CHECK_FALSE(weldr::cluster::parse_range(c.body, error));
    CHECK_FALSE(error.empty());
    error.clear();
    CHECK_FALSE(weldr::cluster::parse_txn(c.body, error));
    CHECK_FALSE(error.empty());
    error.clear();
    CHECK_FALSE(weldr::cluster::parse_lease(c.body, error));
    CHECK_FALSE(error.empty());
    error.clear();
    CHECK_FALSE(weldr::cluster::parse_delete(c.body, error));
    CHECK_FALSE(error.empty());
    error.clear();
    CHECK_FALSE(weldr::cluster::parse_revision(c.body, error));
    CHECK_FALSE(error.empty());
  }

  // A revision written as a JSON number is read too.
  std::string error;
  CHECK(weldr::cluster::parse_revision(R"({"header":{"revision":7}})", error) == 7);
}

TEST_CASE("etcd_codec: parse_range and parse_txn refuse malformed key-values", "[cluster]") {
  const std::vector<const char*> ranges{
      R"({"header":{"revision":"2"},"kvs":{}})",
      R"({"header":{"revision":"2"},"kvs":"L2EveA=="})",
      R"({"header":{"revision":"2"},"kvs":[1]})",
      R"({"header":{"revision":"2"},"kvs":[{"key":"@@","value":"aGVsbG8="}]})",
      R"({"header":{"revision":"2"},"kvs":[{"key":"L2EveA==","value":"aGVsb"}]})",  // length % 4 == 1
      R"({"header":{"revision":"2"},"kvs":[{"key":"L2EveA==","value":"!!!!"}]})",
      R"({"header":{"revision":"2"},"kvs":[{"key":7}]})",
      R"({"header":{"revision":"2"},"kvs":[{"key":"L2EveA==","mod_revision":"x"}]})",
      R"({"header":{"revision":"2"},"kvs":[{"key":"L2EveA==","lease":{}}]})",
  };
  std::string error;
  for (const char* body : ranges) {
    INFO(body);
    error.clear();
    CHECK_FALSE(weldr::cluster::parse_range(body, error));
    CHECK_FALSE(error.empty());
  }
  // Unpadded base64 is still base64.
  const auto unpadded_value =
      weldr::cluster::parse_range(R"({"header":{"revision":"2"},"kvs":[{"key":"L2EveA","value":"aGVsbG8"}]})", error);
  REQUIRE(unpadded_value);
  REQUIRE(unpadded_value->kvs.size() == 1);
  CHECK(unpadded_value->kvs[0].key == "/a/x");
  CHECK(unpadded_value->kvs[0].value == "hello");

  const std::vector<const char*> txns{
      R"({"header":{"revision":"2"},"responses":{}})",
      R"({"header":{"revision":"2"},"responses":[{"response_range":{"kvs":{}}}]})",
      R"({"header":{"revision":"2"},"responses":[{"response_range":{"kvs":[{"key":"@@"}]}}]})",
      R"({"header":{"revision":"2"},"responses":[{"response_delete_range":{"deleted":"many"}}]})",
  };
  for (const char* body : txns) {
    INFO(body);
    error.clear();
    CHECK_FALSE(weldr::cluster::parse_txn(body, error));
    CHECK_FALSE(error.empty());
  }

  error.clear();
  CHECK_FALSE(weldr::cluster::parse_lease(R"({"header":{"revision":"2"},"ID":"abc","TTL":"5"})", error));
  CHECK_FALSE(error.empty());
  error.clear();
  CHECK_FALSE(weldr::cluster::parse_lease(R"({"result":{"header":{"revision":"2"},"TTL":[5]}})", error));
  CHECK_FALSE(error.empty());
  error.clear();
  CHECK_FALSE(weldr::cluster::parse_lease(R"({"result":{"ID":"1","TTL":"5"}})", error));  // no header
  CHECK_FALSE(error.empty());
  error.clear();
  CHECK_FALSE(weldr::cluster::parse_delete(R"({"header":{"revision":"2"},"deleted":"1.5"})", error));
  CHECK_FALSE(error.empty());
}

// ---- watch messages ---------------------------------------------------------------------------

TEST_CASE("etcd_codec: parse_watch_message on real lines", "[cluster]") {
  std::string error;
  const auto created = weldr::cluster::parse_watch_message(kWatchCreated, error);
  REQUIRE(created);
  CHECK(created->created);
  CHECK_FALSE(created->canceled);
  CHECK(created->revision == 2);
  CHECK(created->compact_revision == 0);
  CHECK(created->events.empty());

  const auto events = weldr::cluster::parse_watch_message(kWatchEvents, error);
  REQUIRE(events);
  CHECK_FALSE(events->created);
  CHECK_FALSE(events->canceled);
  CHECK(events->revision == 4);
  REQUIRE(events->events.size() == 3);
  CHECK(events->events[0].type == WatchEvent::Type::put);
  CHECK(events->events[0].kv.key == "/a/x");
  CHECK(events->events[0].kv.value == "hello");
  CHECK(events->events[0].kv.create_revision == 2);
  CHECK(events->events[0].kv.mod_revision == 2);
  CHECK(events->events[0].kv.version == 1);
  CHECK(events->events[1].type == WatchEvent::Type::put);
  CHECK(events->events[1].kv.key == "/a/y");
  CHECK(events->events[1].kv.value == "x");
  CHECK(events->events[1].kv.mod_revision == 3);
  CHECK(events->events[2].type == WatchEvent::Type::remove);
  CHECK(events->events[2].kv.key == "/a/y");
  CHECK(events->events[2].kv.value.empty());
  CHECK(events->events[2].kv.mod_revision == 4);
  CHECK(events->events[2].kv.version == 0);

  const auto compacted = weldr::cluster::parse_watch_message(kWatchCompacted, error);
  REQUIRE(compacted);
  CHECK(compacted->canceled);
  CHECK(compacted->compact_revision == 6);
  CHECK(compacted->revision == 0);  // this header has no revision
  CHECK(compacted->events.empty());

  const auto refused = weldr::cluster::parse_watch_message(kWatchCanceledAuth, error);
  REQUIRE(refused);
  CHECK(refused->created);
  CHECK(refused->canceled);
  CHECK(refused->compact_revision == 0);
  CHECK(refused->cancel_reason == "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token");
}

TEST_CASE("etcd_codec: parse_watch_message turns an error line into a canceled message", "[cluster]") {
  std::string error;
  const auto bad = weldr::cluster::parse_watch_message(kWatchBadRequest, error);
  REQUIRE(bad);
  CHECK(bad->canceled);
  CHECK(bad->cancel_reason == "invalid character 'o' in literal null (expecting 'u')");
  CHECK(bad->events.empty());

  // grpc-gateway's stream error shape: an object, not a string.
  const auto stream_error = weldr::cluster::parse_watch_message(
      R"({"error":{"grpc_code":14,"http_code":503,"message":"no leader","http_status":"Service Unavailable"}})", error);
  REQUIRE(stream_error);
  CHECK(stream_error->canceled);
  CHECK_FALSE(stream_error->cancel_reason.empty());
}

TEST_CASE("etcd_codec: parse_watch_message refuses malformed lines", "[cluster]") {
  const std::vector<const char*> lines{
      "",
      "not json",
      "[]",
      R"({"result":{"header":{"revision":"2"})",
      "{}",
      R"({"result":"x"})",
      R"({"result":{"header":{"revision":"two"}}})",
      R"({"result":{"header":{"revision":"4"},"compact_revision":"six"}})",
      R"({"result":{"header":{"revision":"4"},"events":{}}})",
      R"({"result":{"header":{"revision":"4"},"events":[{"type":"DELETE"}]}})",
      R"({"result":{"header":{"revision":"4"},"events":[{"kv":"x"}]}})",
      R"({"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"@@","mod_revision":"4"}}]}})",
      R"({"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"L2EveA==","mod_revision":"4x"}}]}})",
  };
  for (const char* line : lines) {
    INFO(line);
    std::string error;
    CHECK_FALSE(weldr::cluster::parse_watch_message(line, error));
    CHECK_FALSE(error.empty());
  }
}

// ---- the watch cursor -------------------------------------------------------------------------

TEST_CASE("etcd_codec: WatchCursor starts after a resync", "[cluster]") {
  WatchCursor cursor;
  CHECK(cursor.applied() == 0);
  CHECK(cursor.start_revision() == 1);
  cursor.resynced(41);
  CHECK(cursor.applied() == 41);
  CHECK(cursor.start_revision() == 42);
  cursor.resynced(7);  // a fresh read decides, even backwards
  CHECK(cursor.start_revision() == 8);
}

TEST_CASE("etcd_codec: WatchCursor applies new events and advances", "[cluster]") {
  WatchCursor cursor;
  cursor.resynced(1);
  std::string error;
  auto message = weldr::cluster::parse_watch_message(kWatchEvents, error);
  REQUIRE(message);
  CHECK(cursor.on_message(*message) == WatchCursor::Action::apply);
  CHECK(message->events.size() == 3);
  CHECK(cursor.applied() == 4);  // the last event's revision
  CHECK(cursor.start_revision() == 5);
}

TEST_CASE("etcd_codec: WatchCursor drops events already applied", "[cluster]") {
  WatchCursor cursor;
  cursor.resynced(3);
  std::string error;
  auto message = weldr::cluster::parse_watch_message(kWatchEvents, error);
  REQUIRE(message);
  CHECK(cursor.on_message(*message) == WatchCursor::Action::apply);
  REQUIRE(message->events.size() == 1);  // revisions 2 and 3 were in the read already
  CHECK(message->events[0].type == WatchEvent::Type::remove);
  CHECK(message->events[0].kv.mod_revision == 4);
  CHECK(cursor.applied() == 4);

  // A reconnected watch repeats what was applied: nothing left, nothing to do.
  auto again = weldr::cluster::parse_watch_message(kWatchEvents, error);
  REQUIRE(again);
  CHECK(cursor.on_message(*again) == WatchCursor::Action::none);
  CHECK(again->events.empty());
  CHECK(cursor.applied() == 4);

  // A message with no events at all (the "created" answer).
  auto created = weldr::cluster::parse_watch_message(kWatchCreated, error);
  REQUIRE(created);
  CHECK(cursor.on_message(*created) == WatchCursor::Action::none);
  CHECK(cursor.applied() == 4);
}

TEST_CASE("etcd_codec: WatchCursor keeps every event of one revision (a txn)", "[cluster]") {
  WatchCursor cursor;
  cursor.resynced(5);
  auto message = message_of({event_at(6, "/a"), event_at(6, "/b", WatchEvent::Type::remove), event_at(6, "/c")});
  CHECK(cursor.on_message(message) == WatchCursor::Action::apply);
  REQUIRE(message.events.size() == 3);
  CHECK(message.events[0].kv.key == "/a");
  CHECK(message.events[1].kv.key == "/b");
  CHECK(message.events[2].kv.key == "/c");
  CHECK(cursor.applied() == 6);

  // History caught up in one message: revisions 2..10, with two transactions (6 and 10).
  WatchCursor history;
  history.resynced(5);
  std::string error;
  auto caught_up = weldr::cluster::parse_watch_message(kWatchHistory, error);
  REQUIRE(caught_up);
  REQUIRE(caught_up->events.size() == 12);
  CHECK(history.on_message(*caught_up) == WatchCursor::Action::apply);
  REQUIRE(caught_up->events.size() == 8);  // 6, 6, 7, 8, 9, 10, 10, 10
  CHECK(caught_up->events[0].kv.mod_revision == 6);
  CHECK(caught_up->events[1].kv.mod_revision == 6);
  CHECK(caught_up->events[5].kv.mod_revision == 10);
  CHECK(caught_up->events[7].kv.mod_revision == 10);
  CHECK(caught_up->events[7].kv.key == "/a/z");
  CHECK(history.applied() == 10);
  CHECK(history.start_revision() == 11);
}

TEST_CASE("etcd_codec: WatchCursor asks for a resync when the watch cannot follow", "[cluster]") {
  std::string error;
  SECTION("compacted") {
    WatchCursor cursor;
    cursor.resynced(3);
    auto message = weldr::cluster::parse_watch_message(kWatchCompacted, error);
    REQUIRE(message);
    CHECK(cursor.on_message(*message) == WatchCursor::Action::resync);
  }
  SECTION("canceled") {
    WatchCursor cursor;
    cursor.resynced(3);
    auto message = weldr::cluster::parse_watch_message(kWatchCanceledAuth, error);
    REQUIRE(message);
    CHECK(cursor.on_message(*message) == WatchCursor::Action::resync);
  }
  SECTION("an error line") {
    WatchCursor cursor;
    auto message = weldr::cluster::parse_watch_message(kWatchBadRequest, error);
    REQUIRE(message);
    CHECK(cursor.on_message(*message) == WatchCursor::Action::resync);
  }
  SECTION("canceled, even with new events in it") {
    WatchCursor cursor;
    cursor.resynced(3);
    auto message = message_of({event_at(4)});
    message.canceled = true;
    CHECK(cursor.on_message(message) == WatchCursor::Action::resync);
    CHECK(cursor.applied() == 3);
  }
  SECTION("a compact revision without canceled") {
    WatchCursor cursor;
    cursor.resynced(3);
    auto message = message_of({event_at(4)});
    message.compact_revision = 4;
    CHECK(cursor.on_message(message) == WatchCursor::Action::resync);
    CHECK(cursor.applied() == 3);
  }
  SECTION("events out of order") {
    WatchCursor cursor;
    cursor.resynced(3);
    auto message = message_of({event_at(6), event_at(5)});
    CHECK(cursor.on_message(message) == WatchCursor::Action::resync);
  }
}

// ---- keys -------------------------------------------------------------------------------------

TEST_CASE("etcd_codec: Keys lays a cluster out under /weldr/<name>/", "[cluster]") {
  const Keys keys("a");
  CHECK(keys.prefix() == "/weldr/a/");
  CHECK(keys.servers() == "/weldr/a/servers/");
  CHECK(keys.server("127.0.0.1:9001") == "/weldr/a/servers/127.0.0.1:9001");
  CHECK(keys.config("health-check") == "/weldr/a/config/health-check");
  CHECK(keys.nodes() == "/weldr/a/nodes/");
  CHECK(keys.node("n1") == "/weldr/a/nodes/n1");
  CHECK(keys.leader() == "/weldr/a/leader");
  CHECK(keys.initialized() == "/weldr/a/initialized");
  CHECK(Keys("default").prefix() == "/weldr/default/");
  // Every key of the cluster lies in [prefix, prefix_end(prefix)).
  const std::string end = prefix_end(keys.prefix());
  for (const std::string& k : {keys.server("x"), keys.config("y"), keys.node("z"), keys.leader(), keys.initialized()}) {
    INFO(k);
    CHECK(k >= keys.prefix());
    CHECK(k < end);
  }
}

TEST_CASE("etcd_codec: Keys::classify", "[cluster]") {
  const Keys keys("a");
  std::string name = "stale";
  CHECK(keys.classify(keys.server("127.0.0.1:9001"), name) == Keys::Kind::server);
  CHECK(name == "127.0.0.1:9001");
  CHECK(keys.classify(keys.server("[::1]:80"), name) == Keys::Kind::server);
  CHECK(name == "[::1]:80");
  CHECK(keys.classify(keys.config("health-check"), name) == Keys::Kind::config);
  CHECK(name == "health-check");
  CHECK(keys.classify(keys.node("n1"), name) == Keys::Kind::node);
  CHECK(name == "n1");
  name = "stale";
  CHECK(keys.classify(keys.leader(), name) == Keys::Kind::leader);
  CHECK(name.empty());

  for (const char* key : {
           "/weldr/a/initialized",
           "/weldr/a/servers/",  // the folder, nothing after it
           "/weldr/a/config/",
           "/weldr/a/nodes/",
           "/weldr/a/servers",
           "/weldr/a/leaderx",
           "/weldr/a/leader/",
           "/weldr/a/",
           "/weldr/a",
           "/weldr/ab/servers/x",  // another cluster whose name starts the same
           "/weldr/ab/leader",
           "/weldr/b/servers/x",
           "/weldr/",
           "/other/a/servers/x",
           "",
       }) {
    INFO(key);
    name = "stale";
    CHECK(keys.classify(key, name) == Keys::Kind::other);
    CHECK(name.empty());
  }

  // And the other way round: cluster "ab" does not take "a"'s keys.
  const Keys ab("ab");
  CHECK(ab.classify("/weldr/a/servers/x", name) == Keys::Kind::other);
  CHECK(ab.classify("/weldr/ab/servers/x", name) == Keys::Kind::server);
  CHECK(name == "x");
}

TEST_CASE("etcd_codec: valid_name", "[cluster]") {
  using weldr::cluster::valid_name;
  CHECK(valid_name("a"));
  CHECK(valid_name("default"));
  CHECK(valid_name("Prod-eu_1.b"));
  CHECK(valid_name("0123456789"));
  CHECK(valid_name(std::string(64, 'x')));
  CHECK_FALSE(valid_name(std::string(65, 'x')));
  CHECK_FALSE(valid_name(""));
  CHECK_FALSE(valid_name("a/b"));
  CHECK_FALSE(valid_name("a b"));
  CHECK_FALSE(valid_name("a:b"));
  CHECK_FALSE(valid_name("a\nb"));
  CHECK_FALSE(valid_name("\0"s));
  CHECK_FALSE(valid_name("a\0b"s));
  CHECK_FALSE(valid_name("caf\xc3\xa9"));
  CHECK_FALSE(valid_name("*"));
}

// ---- endpoints --------------------------------------------------------------------------------

TEST_CASE("etcd_codec: parse_endpoints accepts host:port URLs", "[cluster]") {
  std::string error;
  const auto plain = weldr::cluster::parse_endpoints("http://127.0.0.1:2379", error);
  REQUIRE(plain);
  REQUIRE(plain->size() == 1);
  CHECK((*plain)[0].host == "127.0.0.1");
  CHECK((*plain)[0].port == 2379);
  CHECK((*plain)[0].url == "http://127.0.0.1:2379");

  const auto bare = weldr::cluster::parse_endpoints("127.0.0.1:2379", error);
  REQUIRE(bare);
  REQUIRE(bare->size() == 1);
  CHECK((*bare)[0].host == "127.0.0.1");
  CHECK((*bare)[0].port == 2379);
  CHECK((*bare)[0].url == "http://127.0.0.1:2379");

  const auto v6 = weldr::cluster::parse_endpoints("http://[::1]:2379", error);
  REQUIRE(v6);
  REQUIRE(v6->size() == 1);
  CHECK((*v6)[0].host == "::1");
  CHECK((*v6)[0].port == 2379);
  CHECK((*v6)[0].url == "http://[::1]:2379");

  const auto named = weldr::cluster::parse_endpoints("http://etcd-1.example:65535/", error);
  REQUIRE(named);
  REQUIRE(named->size() == 1);
  CHECK((*named)[0].host == "etcd-1.example");
  CHECK((*named)[0].port == 65535);
  CHECK((*named)[0].url == "http://etcd-1.example:65535");

  const auto several =
      weldr::cluster::parse_endpoints(" http://10.0.0.5:2379 , 10.0.0.6:2380/,http://[fd00::7]:1 ", error);
  REQUIRE(several);
  REQUIRE(several->size() == 3);
  CHECK((*several)[0].url == "http://10.0.0.5:2379");
  CHECK((*several)[1].host == "10.0.0.6");
  CHECK((*several)[1].port == 2380);
  CHECK((*several)[1].url == "http://10.0.0.6:2380");
  CHECK((*several)[2].host == "fd00::7");
  CHECK((*several)[2].port == 1);
  CHECK((*several)[2].url == "http://[fd00::7]:1");
}

TEST_CASE("etcd_codec: parse_endpoints refuses what is not http://host:port", "[cluster]") {
  for (const char* urls : {
           "https://127.0.0.1:2379",
           "http://127.0.0.1",
           "127.0.0.1",
           "http://127.0.0.1:",
           "http://127.0.0.1:0",
           "http://127.0.0.1:65536",
           "http://127.0.0.1:99999999999",
           "http://127.0.0.1:abc",
           "http://127.0.0.1:-1",
           "http://127.0.0.1:+1",
           "",
           " ",
           ",",
           "http://a:1,,http://b:2",
           "http://a:1,https://b:2",
           "http://a:1/path",
           "http://a:1?x",
           "http://user@a:1",
           "http://:2379",
           "http://::1:2379",
           "http://[::1]",
           "http://[::1]2379",
           "http://[::1:2379",
           "ftp://a:1",
       }) {
    INFO("'" << urls << "'");
    std::string error;
    CHECK_FALSE(weldr::cluster::parse_endpoints(urls, error));
    CHECK_FALSE(error.empty());
  }
  std::string error;
  CHECK_FALSE(weldr::cluster::parse_endpoints("https://127.0.0.1:2379", error));
  CHECK(error.find("https") != std::string::npos);
}

// ---- ClusterOptions ---------------------------------------------------------------------------

TEST_CASE("etcd_codec: validate(ClusterOptions) accepts usable options", "[cluster]") {
  CHECK(weldr::validate(usable_options()) == "");

  auto o = usable_options();
  o.etcd = "http://10.0.0.5:2379, 10.0.0.6:2379";
  o.name = "prod-eu.1";
  o.node = "10.0.0.7:8080";  // node names may have ':'
  o.lease_ttl = std::chrono::seconds(1);
  CHECK(weldr::validate(o) == "");
  o.lease_ttl = std::chrono::seconds(60);
  CHECK(weldr::validate(o) == "");
  o.vip = "192.0.2.10/24";
  o.vip_interface = "eth0";
  CHECK(weldr::validate(o) == "");
  o.vip = "fd00::10/64";
  CHECK(weldr::validate(o) == "");
}

TEST_CASE("etcd_codec: validate(ClusterOptions) says what is wrong, in one line", "[cluster]") {
  struct Case {
    const char* what;
    weldr::ClusterOptions options;
  };
  std::vector<Case> cases;
  const auto with = [&](const char* what, auto change) {
    auto o = usable_options();
    change(o);
    cases.push_back({what, std::move(o)});
  };
  with("no etcd", [](weldr::ClusterOptions& o) { o.etcd.clear(); });
  with("an https etcd", [](weldr::ClusterOptions& o) { o.etcd = "https://127.0.0.1:2379"; });
  with("an etcd URL with no port", [](weldr::ClusterOptions& o) { o.etcd = "http://127.0.0.1"; });
  with("no node name", [](weldr::ClusterOptions& o) { o.node.clear(); });
  with("a node name with a space", [](weldr::ClusterOptions& o) { o.node = "node 1"; });
  with("a node name with a slash", [](weldr::ClusterOptions& o) { o.node = "a/b"; });
  with("a node name too long", [](weldr::ClusterOptions& o) { o.node = std::string(65, 'n'); });
  with("a cluster name with a slash", [](weldr::ClusterOptions& o) { o.name = "a/b"; });
  with("an empty cluster name", [](weldr::ClusterOptions& o) { o.name.clear(); });
  with("a TTL of 0s", [](weldr::ClusterOptions& o) { o.lease_ttl = std::chrono::seconds(0); });
  with("a TTL of 61s", [](weldr::ClusterOptions& o) { o.lease_ttl = std::chrono::seconds(61); });
  with("a negative TTL", [](weldr::ClusterOptions& o) { o.lease_ttl = std::chrono::seconds(-1); });
  with("a virtual IP without an interface", [](weldr::ClusterOptions& o) { o.vip = "192.0.2.10/24"; });
  with("an interface without a virtual IP", [](weldr::ClusterOptions& o) { o.vip_interface = "eth0"; });
  with("a virtual IP that is not an address", [](weldr::ClusterOptions& o) {
    o.vip = "300.1.1.1/24";
    o.vip_interface = "eth0";
  });
  with("a virtual IP without a prefix length", [](weldr::ClusterOptions& o) {
    o.vip = "192.0.2.10";
    o.vip_interface = "eth0";
  });
  with("a virtual IP with a prefix too long", [](weldr::ClusterOptions& o) {
    o.vip = "192.0.2.10/33";
    o.vip_interface = "eth0";
  });
  with("a host name as virtual IP", [](weldr::ClusterOptions& o) {
    o.vip = "vip.example/24";
    o.vip_interface = "eth0";
  });
  with("a request timeout under 100ms",
       [](weldr::ClusterOptions& o) { o.request_timeout = std::chrono::milliseconds(99); });

  for (const Case& c : cases) {
    INFO(c.what);
    const std::string error = weldr::validate(c.options);
    INFO(error);
    CHECK_FALSE(error.empty());
    CHECK(error.find('\n') == std::string::npos);
  }
}
