#include "cluster/etcd_codec.hpp"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <fmt/format.h>

#include <array>
#include <charconv>

namespace weldr::cluster {

namespace {

constexpr std::string_view kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int base64_value(char c) noexcept {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void key(Writer& w, std::string_view name) {
  w.Key(name.data(), static_cast<rapidjson::SizeType>(name.size()));
}

void string_field(Writer& w, std::string_view name, std::string_view value) {
  key(w, name);
  w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
}

void bytes_field(Writer& w, std::string_view name, std::string_view value) {
  string_field(w, name, base64_encode(value));
}

// int64 fields as decimal strings, as the gateway writes them itself.
void int_field(Writer& w, std::string_view name, std::int64_t value) {
  string_field(w, name, fmt::format("{}", value));
}

std::string finish(rapidjson::StringBuffer& buffer) {
  return {buffer.GetString(), buffer.GetSize()};
}

bool parse(rapidjson::Document& doc, std::string_view body, std::string& error) {
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError()) {
    error = fmt::format("invalid JSON from etcd at offset {}: {}", doc.GetErrorOffset(),
                        rapidjson::GetParseError_En(doc.GetParseError()));
    return false;
  }
  if (!doc.IsObject()) {
    error = "the answer from etcd is not a JSON object";
    return false;
  }
  if (const auto e = doc.FindMember("error"); e != doc.MemberEnd()) {
    error = e->value.IsString() ? std::string(e->value.GetString(), e->value.GetStringLength()) : "etcd error";
    return false;
  }
  return true;
}

// An int64 written as a string (the gateway's way) or as a number; 0 when absent.
bool read_int(const rapidjson::Value& object, const char* name, std::int64_t& out) {
  out = 0;
  const auto m = object.FindMember(name);
  if (m == object.MemberEnd()) return true;
  if (m->value.IsInt64()) {
    out = m->value.GetInt64();
    return true;
  }
  if (!m->value.IsString()) return false;
  const char* begin = m->value.GetString();
  const char* end = begin + m->value.GetStringLength();
  auto [ptr, ec] = std::from_chars(begin, end, out);
  return ec == std::errc{} && ptr == end;
}

bool read_bool(const rapidjson::Value& object, const char* name) {
  const auto m = object.FindMember(name);
  return m != object.MemberEnd() && m->value.IsBool() && m->value.GetBool();
}

bool read_bytes(const rapidjson::Value& object, const char* name, std::string& out) {
  out.clear();
  const auto m = object.FindMember(name);
  if (m == object.MemberEnd()) return true;
  if (!m->value.IsString()) return false;
  auto decoded = base64_decode(std::string_view(m->value.GetString(), m->value.GetStringLength()));
  if (!decoded) return false;
  out = std::move(*decoded);
  return true;
}

bool header_revision(const rapidjson::Value& object, std::int64_t& revision, std::string& error) {
  revision = 0;
  const auto h = object.FindMember("header");
  if (h == object.MemberEnd() || !h->value.IsObject() || !read_int(h->value, "revision", revision)) {
    error = "the answer from etcd has no header revision";
    return false;
  }
  return true;
}

bool read_kv(const rapidjson::Value& v, KeyValue& kv) {
  return v.IsObject() && read_bytes(v, "key", kv.key) && read_bytes(v, "value", kv.value) &&
         read_int(v, "create_revision", kv.create_revision) && read_int(v, "mod_revision", kv.mod_revision) &&
         read_int(v, "version", kv.version) && read_int(v, "lease", kv.lease);
}

bool read_kvs(const rapidjson::Value& object, std::vector<KeyValue>& kvs, std::string& error) {
  kvs.clear();
  const auto m = object.FindMember("kvs");
  if (m == object.MemberEnd()) return true;
  if (!m->value.IsArray()) {
    error = "\"kvs\" is not an array";
    return false;
  }
  for (const auto& v : m->value.GetArray()) {
    KeyValue kv;
    if (!read_kv(v, kv)) {
      error = "a key-value pair from etcd is malformed";
      return false;
    }
    kvs.push_back(std::move(kv));
  }
  return true;
}

void write_operation(Writer& w, const Operation& op) {
  w.StartObject();
  switch (op.kind) {
    case Operation::Kind::put:
      key(w, "request_put");
      w.StartObject();
      bytes_field(w, "key", op.key);
      bytes_field(w, "value", op.value);
      if (op.lease != 0) int_field(w, "lease", op.lease);
      w.EndObject();
      break;
    case Operation::Kind::remove:
      key(w, "request_delete_range");
      w.StartObject();
      bytes_field(w, "key", op.key);
      if (!op.range_end.empty()) bytes_field(w, "range_end", op.range_end);
      w.EndObject();
      break;
    case Operation::Kind::range:
      key(w, "request_range");
      w.StartObject();
      bytes_field(w, "key", op.key);
      if (!op.range_end.empty()) bytes_field(w, "range_end", op.range_end);
      w.EndObject();
      break;
  }
  w.EndObject();
}

}  // namespace

std::string base64_encode(std::string_view data) {
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= data.size(); i += 3) {
    const auto n = static_cast<std::uint32_t>(static_cast<unsigned char>(data[i])) << 16 |
                   static_cast<std::uint32_t>(static_cast<unsigned char>(data[i + 1])) << 8 |
                   static_cast<unsigned char>(data[i + 2]);
    out += kAlphabet[n >> 18 & 63];
    out += kAlphabet[n >> 12 & 63];
    out += kAlphabet[n >> 6 & 63];
    out += kAlphabet[n & 63];
  }
  const std::size_t rest = data.size() - i;
  if (rest > 0) {
    std::uint32_t n = static_cast<std::uint32_t>(static_cast<unsigned char>(data[i])) << 16;
    if (rest == 2) n |= static_cast<std::uint32_t>(static_cast<unsigned char>(data[i + 1])) << 8;
    out += kAlphabet[n >> 18 & 63];
    out += kAlphabet[n >> 12 & 63];
    out += rest == 2 ? kAlphabet[n >> 6 & 63] : '=';
    out += '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  while (!text.empty() && text.back() == '=')
    text.remove_suffix(1);
  if (text.size() % 4 == 1) return std::nullopt;
  std::string out;
  out.reserve(text.size() * 3 / 4);
  std::uint32_t bits = 0;
  int count = 0;
  for (const char c : text) {
    const int v = base64_value(c);
    if (v < 0) return std::nullopt;
    bits = bits << 6 | static_cast<std::uint32_t>(v);
    count += 6;
    if (count >= 8) {
      count -= 8;
      out += static_cast<char>(bits >> count & 0xff);
    }
  }
  return out;
}

std::string prefix_end(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    auto& last = reinterpret_cast<unsigned char&>(end.back());
    if (last < 0xff) {
      ++last;
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // no upper bound: every key from `prefix` on
}

std::string range_request(std::string_view key_name, std::string_view range_end) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  bytes_field(w, "key", key_name);
  if (!range_end.empty()) bytes_field(w, "range_end", range_end);
  w.EndObject();
  return finish(buffer);
}

std::string put_request(std::string_view key_name, std::string_view value, std::int64_t lease) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  bytes_field(w, "key", key_name);
  bytes_field(w, "value", value);
  if (lease != 0) int_field(w, "lease", lease);
  w.EndObject();
  return finish(buffer);
}

std::string delete_request(std::string_view key_name, std::string_view range_end) {
  return range_request(key_name, range_end);  // the same two fields
}

std::string grant_request(std::int64_t ttl_seconds) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  int_field(w, "TTL", ttl_seconds);
  w.EndObject();
  return finish(buffer);
}

std::string lease_request(std::int64_t id) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  int_field(w, "ID", id);
  w.EndObject();
  return finish(buffer);
}

std::string watch_request(std::string_view key_name, std::string_view range_end, std::int64_t start_revision) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  key(w, "create_request");
  w.StartObject();
  bytes_field(w, "key", key_name);
  if (!range_end.empty()) bytes_field(w, "range_end", range_end);
  if (start_revision > 0) int_field(w, "start_revision", start_revision);
  w.EndObject();
  w.EndObject();
  return finish(buffer);
}

std::string authenticate_request(std::string_view user, std::string_view password) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  string_field(w, "name", user);
  string_field(w, "password", password);
  w.EndObject();
  return finish(buffer);
}

std::string txn_request(const std::vector<Compare>& compares, const std::vector<Operation>& success,
                        const std::vector<Operation>& failure) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  key(w, "compare");
  w.StartArray();
  for (const Compare& c : compares) {
    w.StartObject();
    bytes_field(w, "key", c.key);
    string_field(w, "result", "EQUAL");
    switch (c.target) {
      case Compare::Target::create_revision:
        string_field(w, "target", "CREATE");
        int_field(w, "create_revision", c.revision);
        break;
      case Compare::Target::mod_revision:
        string_field(w, "target", "MOD");
        int_field(w, "mod_revision", c.revision);
        break;
      case Compare::Target::value:
        string_field(w, "target", "VALUE");
        bytes_field(w, "value", c.value);
        break;
    }
    w.EndObject();
  }
  w.EndArray();
  key(w, "success");
  w.StartArray();
  for (const Operation& op : success)
    write_operation(w, op);
  w.EndArray();
  key(w, "failure");
  w.StartArray();
  for (const Operation& op : failure)
    write_operation(w, op);
  w.EndArray();
  w.EndObject();
  return finish(buffer);
}

std::optional<EtcdError> parse_error(std::string_view body) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject()) return std::nullopt;
  const auto e = doc.FindMember("error");
  if (e == doc.MemberEnd()) return std::nullopt;
  EtcdError error;
  if (e->value.IsString()) error.message.assign(e->value.GetString(), e->value.GetStringLength());
  if (const auto c = doc.FindMember("code"); c != doc.MemberEnd() && c->value.IsInt()) error.code = c->value.GetInt();
  return error;
}

std::optional<RangeResult> parse_range(std::string_view body, std::string& error) {
  rapidjson::Document doc;
  RangeResult result;
  if (!parse(doc, body, error) || !header_revision(doc, result.revision, error) || !read_kvs(doc, result.kvs, error)) {
    return std::nullopt;
  }
  return result;
}

std::optional<TxnResult> parse_txn(std::string_view body, std::string& error) {
  rapidjson::Document doc;
  TxnResult result;
  if (!parse(doc, body, error) || !header_revision(doc, result.revision, error)) return std::nullopt;
  result.succeeded = read_bool(doc, "succeeded");
  const auto responses = doc.FindMember("responses");
  if (responses == doc.MemberEnd()) return result;
  if (!responses->value.IsArray()) {
    error = "\"responses\" is not an array";
    return std::nullopt;
  }
  for (const auto& r : responses->value.GetArray()) {
    if (!r.IsObject()) continue;
    if (const auto range = r.FindMember("response_range"); range != r.MemberEnd() && range->value.IsObject()) {
      std::vector<KeyValue> kvs;
      if (!read_kvs(range->value, kvs, error)) return std::nullopt;
      result.ranges.push_back(std::move(kvs));
    }
    if (const auto del = r.FindMember("response_delete_range"); del != r.MemberEnd() && del->value.IsObject()) {
      std::int64_t deleted = 0;
      if (!read_int(del->value, "deleted", deleted)) {
        error = "\"deleted\" is malformed";
        return std::nullopt;
      }
      result.deleted.push_back(deleted);
    }
  }
  return result;
}

std::optional<LeaseResult> parse_lease(std::string_view body, std::string& error) {
  rapidjson::Document doc;
  if (!parse(doc, body, error)) return std::nullopt;
  const rapidjson::Value* object = &doc;
  if (const auto r = doc.FindMember("result"); r != doc.MemberEnd() && r->value.IsObject()) object = &r->value;
  LeaseResult result;
  if (!header_revision(*object, result.revision, error)) return std::nullopt;
  if (!read_int(*object, "ID", result.id) || !read_int(*object, "TTL", result.ttl)) {
    error = "a lease answer from etcd is malformed";
    return std::nullopt;
  }
  return result;
}

std::optional<DeleteResult> parse_delete(std::string_view body, std::string& error) {
  rapidjson::Document doc;
  DeleteResult result;
  if (!parse(doc, body, error) || !header_revision(doc, result.revision, error)) return std::nullopt;
  if (!read_int(doc, "deleted", result.deleted)) {
    error = "\"deleted\" is malformed";
    return std::nullopt;
  }
  return result;
}

std::optional<std::int64_t> parse_revision(std::string_view body, std::string& error) {
  rapidjson::Document doc;
  std::int64_t revision = 0;
  if (!parse(doc, body, error) || !header_revision(doc, revision, error)) return std::nullopt;
  return revision;
}

std::optional<std::string> parse_token(std::string_view body, std::string& error) {
  rapidjson::Document doc;
  if (!parse(doc, body, error)) return std::nullopt;
  const auto t = doc.FindMember("token");
  if (t == doc.MemberEnd() || !t->value.IsString()) {
    error = "the authenticate answer from etcd has no token";
    return std::nullopt;
  }
  return std::string(t->value.GetString(), t->value.GetStringLength());
}

std::optional<WatchMessage> parse_watch_message(std::string_view line, std::string& error) {
  rapidjson::Document doc;
  doc.Parse(line.data(), line.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    error = "a watch message from etcd is not a JSON object";
    return std::nullopt;
  }
  WatchMessage message;
  if (const auto e = doc.FindMember("error"); e != doc.MemberEnd()) {
    // A stream's error is an object ({"error": {"grpc_code", "http_code", "message", ...}}),
    // a unary answer's a string.
    message.canceled = true;
    message.cancel_reason = "error";
    if (e->value.IsString()) {
      message.cancel_reason.assign(e->value.GetString(), e->value.GetStringLength());
    } else if (e->value.IsObject()) {
      if (const auto m = e->value.FindMember("message"); m != e->value.MemberEnd() && m->value.IsString()) {
        message.cancel_reason.assign(m->value.GetString(), m->value.GetStringLength());
      }
    }
    return message;
  }
  const auto r = doc.FindMember("result");
  if (r == doc.MemberEnd() || !r->value.IsObject()) {
    error = "a watch message from etcd has no result";
    return std::nullopt;
  }
  const rapidjson::Value& result = r->value;
  if (const auto h = result.FindMember("header"); h != result.MemberEnd() && h->value.IsObject()) {
    if (!read_int(h->value, "revision", message.revision)) {
      error = "a watch message from etcd has a malformed revision";
      return std::nullopt;
    }
  }
  message.created = read_bool(result, "created");
  message.canceled = read_bool(result, "canceled");
  if (!read_int(result, "compact_revision", message.compact_revision)) {
    error = "a watch message from etcd has a malformed compact_revision";
    return std::nullopt;
  }
  if (const auto reason = result.FindMember("cancel_reason");
      reason != result.MemberEnd() && reason->value.IsString()) {
    message.cancel_reason = reason->value.GetString();
  }
  if (const auto events = result.FindMember("events"); events != result.MemberEnd()) {
    if (!events->value.IsArray()) {
      error = "\"events\" is not an array";
      return std::nullopt;
    }
    for (const auto& e : events->value.GetArray()) {
      WatchEvent event;
      if (!e.IsObject()) continue;
      if (const auto type = e.FindMember("type"); type != e.MemberEnd() && type->value.IsString()) {
        event.type =
            std::string_view(type->value.GetString()) == "DELETE" ? WatchEvent::Type::remove : WatchEvent::Type::put;
      }
      const auto kv = e.FindMember("kv");
      if (kv == e.MemberEnd() || !read_kv(kv->value, event.kv)) {
        error = "a watch event from etcd is malformed";
        return std::nullopt;
      }
      message.events.push_back(std::move(event));
    }
  }
  return message;
}

WatchCursor::Action WatchCursor::on_message(WatchMessage& message) noexcept {
  if (message.canceled || message.compact_revision != 0) return Action::resync;
  std::erase_if(message.events, [this](const WatchEvent& e) { return e.kv.mod_revision <= applied_; });
  if (message.events.empty()) return Action::none;
  // Events come in revision order; one from before the start we asked for, or out of order,
  // means the stream is not the one we think it is.
  for (const WatchEvent& e : message.events) {
    if (e.kv.mod_revision < applied_) return Action::resync;
    applied_ = e.kv.mod_revision;
  }
  return Action::apply;
}

Keys::Keys(std::string_view name) : prefix_(fmt::format("/weldr/{}/", name)) {}

Keys::Kind Keys::classify(std::string_view key_name, std::string& name) const {
  name.clear();
  if (key_name.substr(0, prefix_.size()) != prefix_) return Kind::other;
  const std::string_view rest = key_name.substr(prefix_.size());
  if (rest == "leader") return Kind::leader;
  const auto under = [&](std::string_view folder) {
    if (rest.substr(0, folder.size()) != folder || rest.size() == folder.size()) return false;
    name.assign(rest.substr(folder.size()));
    return true;
  };
  if (under("servers/")) return Kind::server;
  if (under("config/")) return Kind::config;
  if (under("nodes/")) return Kind::node;
  return Kind::other;
}

bool valid_name(std::string_view name, bool colon) noexcept {
  if (name.empty() || name.size() > 64) return false;
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-' || (colon && c == ':');
    if (!ok) return false;
  }
  return true;
}

}  // namespace weldr::cluster
