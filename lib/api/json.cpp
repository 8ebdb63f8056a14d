#include "api/json.hpp"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <charconv>
#include <cmath>

namespace weldr::api {

namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void key(Writer& w, std::string_view k) {
  w.Key(k.data(), static_cast<rapidjson::SizeType>(k.size()));
}
void string(Writer& w, std::string_view v) {
  w.String(v.data(), static_cast<rapidjson::SizeType>(v.size()));
}

std::string done(const rapidjson::StringBuffer& buffer) {
  return std::string(buffer.GetString(), buffer.GetSize()) + "\n";
}

void link(Writer& w, std::string_view rel, std::string_view href, std::string_view method) {
  w.StartObject();
  key(w, "rel");
  string(w, rel);
  key(w, "href");
  string(w, href);
  key(w, "method");
  string(w, method);
  w.EndObject();
}

void write_health(Writer& w, const HealthStatus& h) {
  key(w, "health");
  w.StartObject();
  key(w, "status");
  string(w, h.up ? "up" : "down");
  key(w, "consecutive_failures");
  w.Uint(h.consecutive_failures);
  key(w, "consecutive_passes");
  w.Uint(h.consecutive_passes);
  key(w, "checks");
  w.Uint64(h.checks);
  key(w, "last_result");
  string(w, h.last_result);
  key(w, "reason");
  string(w, h.last_change_reason);
  key(w, "last_change");
  if (h.last_change.time_since_epoch().count() == 0) {
    w.Null();
  } else {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(h.last_change.time_since_epoch()) % 1000;
    string(w, fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03d}Z",
                          fmt::gmtime(std::chrono::system_clock::to_time_t(h.last_change)), ms.count()));
  }
  w.EndObject();
}

void write_server(Writer& w, const Backend& b, const HealthChecker* health) {
  const std::string path = server_path(b);
  w.StartObject();
  key(w, "id");
  string(w, b.id());
  key(w, "ip");
  string(w, b.host());
  key(w, "port");
  string(w, std::to_string(b.port()));
  key(w, "url");
  string(w, b.url());
  key(w, "state");
  string(w, to_string(b.state()));
  key(w, "weight");
  w.Uint(b.weight());
  key(w, "outlier");
  w.StartObject();
  key(w, "ejected");
  w.Bool(b.ejected());
  key(w, "ejected_for_ms");
  w.Int64(b.ejection_left().count());
  key(w, "ejections");
  w.Uint64(b.ejections());
  key(w, "consecutive_failures");
  w.Uint(b.consecutive_failures());
  w.EndObject();
  key(w, "counters");
  w.StartObject();
  key(w, "requests");
  w.Uint64(b.requests());
  key(w, "success");
  w.Uint64(b.successes());
  key(w, "failed");
  w.Uint64(b.failures());
  key(w, "active_requests");
  w.Uint64(b.active_requests());
  key(w, "active_connections");
  w.Int64(b.active_connections());
  key(w, "latency_ewma_ms");
  w.Double(std::round(b.latency_ewma() * 1e6) / 1e3);  // milliseconds, to the microsecond
  w.EndObject();
  if (health != nullptr) {
    if (const auto status = health->status(b.id())) write_health(w, *status);
  }
  if (!b.check().empty()) {
    key(w, "check");
    w.RawValue(b.check().data(), b.check().size(), rapidjson::kObjectType);
  }
  key(w, "links");
  w.StartArray();
  link(w, "self", path, "GET");
  link(w, "delete", path, "DELETE");
  w.EndArray();
  w.EndObject();
}

std::string compact(const rapidjson::Value& value) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  value.Accept(w);
  return std::string(buffer.GetString(), buffer.GetSize());
}

// Prometheus label values escape backslash, double quote and newline.
std::string label(std::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace

std::optional<Registration> parse_registration(std::string_view body, std::string& error) {
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag>(body.data(), body.size());
  if (doc.HasParseError()) {
    error = fmt::format("invalid JSON at offset {}: {}", doc.GetErrorOffset(),
                        rapidjson::GetParseError_En(doc.GetParseError()));
    return std::nullopt;
  }
  if (!doc.IsObject()) {
    error = "the body must be a JSON object";
    return std::nullopt;
  }
  const auto url = doc.FindMember("url");
  const auto ip = doc.FindMember("ip");
  const auto port = doc.FindMember("port");
  const bool has_url = url != doc.MemberEnd();
  const bool has_ip = ip != doc.MemberEnd() || port != doc.MemberEnd();
  std::string text;
  if (has_url && has_ip) {
    error = "give either \"url\" or \"ip\" and \"port\", not both";
    return std::nullopt;
  }
  if (has_url) {
    if (!url->value.IsString()) {
      error = "\"url\" must be a string";
      return std::nullopt;
    }
    text.assign(url->value.GetString(), url->value.GetStringLength());
  } else if (has_ip) {
    if (ip == doc.MemberEnd() || !ip->value.IsString()) {
      error = "\"ip\" must be a string";
      return std::nullopt;
    }
    std::string port_text;
    if (port == doc.MemberEnd()) {
      error = "\"port\" is missing";
      return std::nullopt;
    }
    if (port->value.IsString()) {
      port_text.assign(port->value.GetString(), port->value.GetStringLength());
    } else if (port->value.IsInt64()) {
      port_text = std::to_string(port->value.GetInt64());
    } else {
      error = "\"port\" must be a number or a string";
      return std::nullopt;
    }
    auto id = id_from_path(std::string_view(ip->value.GetString(), ip->value.GetStringLength()), port_text, error);
    if (!id) return std::nullopt;
    text = *id;
  } else {
    error = "missing \"url\" (or \"ip\" and \"port\")";
    return std::nullopt;
  }

  std::error_code ec;
  auto address = parse_backend_url(text, ec);
  if (!address) {
    error = fmt::format(
        "invalid server URL \"{}\": use http://IP:PORT or IP:PORT with an IP address and a port 1-65535", text);
    return std::nullopt;
  }
  Registration out{*address, {}, 0};
  if (const auto weight = doc.FindMember("weight"); weight != doc.MemberEnd()) {
    if (!weight->value.IsUint() || weight->value.GetUint() < 1 || weight->value.GetUint() > 256) {
      error = "\"weight\" must be an integer from 1 to 256";
      return std::nullopt;
    }
    out.weight = weight->value.GetUint();
  }
  if (const auto check = doc.FindMember("check"); check != doc.MemberEnd()) {
    if (!check->value.IsObject()) {
      error = "\"check\" must be an object";
      return std::nullopt;
    }
    out.check = compact(check->value);
    std::string check_error;
    if (!apply_check_json(HealthCheckOptions{}, out.check, check_error)) {
      error = "\"check\": " + check_error;
      return std::nullopt;
    }
  }
  return out;
}

std::optional<std::string> id_from_path(std::string_view ip, std::string_view port, std::string& error) {
  if (!ip.empty() && ip.front() == '[' && ip.back() == ']') ip = ip.substr(1, ip.size() - 2);
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc{} || end != port.data() + port.size() || value == 0 || value > 65535) {
    error = fmt::format("invalid port \"{}\": must be 1-65535", port);
    return std::nullopt;
  }
  const bool v6 = ip.find(':') != std::string_view::npos;
  std::string text = v6 ? fmt::format("[{}]:{}", ip, value) : fmt::format("{}:{}", ip, value);
  std::error_code parse_ec;
  auto address = parse_backend_url(text, parse_ec);
  if (!address) {
    error = fmt::format("invalid IP address \"{}\"", ip);
    return std::nullopt;
  }
  return address->id();
}

std::string server_path(const Backend& backend) {
  return fmt::format("/servers/{}/{}", backend.host(), backend.port());
}

std::string error_json(std::string_view message) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  key(w, "error");
  string(w, message);
  w.EndObject();
  return done(buffer);
}

std::string index_json() {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  key(w, "about");
  string(w, "weldr management API");
  key(w, "links");
  w.StartArray();
  link(w, "servers", "/servers", "GET");
  link(w, "register", "/servers", "POST");
  link(w, "server", "/servers/{ip}/{port}", "GET");
  link(w, "deregister", "/servers/{ip}/{port}", "DELETE");
  link(w, "stats", "/stats", "GET");
  link(w, "stats-detail", "/stats/detail", "GET");
  link(w, "metrics", "/metrics", "GET");
  link(w, "health-check-config", "/config/health-check", "GET");
  link(w, "health-check-config-update", "/config/health-check", "PUT");
  link(w, "cluster", "/cluster", "GET");
  link(w, "cluster-resign", "/cluster/resign", "POST");
  w.EndArray();
  w.EndObject();
  return done(buffer);
}

std::string server_json(const Backend& backend, const HealthChecker* health) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  write_server(w, backend, health);
  return done(buffer);
}

std::string servers_json(const std::vector<std::shared_ptr<Backend>>& backends, const HealthChecker* health) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartArray();
  for (const auto& b : backends)
    write_server(w, *b, health);
  w.EndArray();
  return done(buffer);
}

std::string stats_json(const Stats& stats) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  key(w, "client");
  w.StartObject();
  key(w, "success");
  w.Uint64(stats.client_success());
  key(w, "failed");
  w.Uint64(stats.client_failed());
  w.EndObject();
  key(w, "server");
  w.StartObject();
  key(w, "success");
  w.Uint64(stats.server_success());
  key(w, "failed");
  w.Uint64(stats.server_failed());
  w.EndObject();
  key(w, "retries");
  w.StartObject();
  key(w, "sent");
  w.Uint64(stats.retries());
  key(w, "denied");
  w.Uint64(stats.retries_denied());
  w.EndObject();
  w.EndObject();
  return done(buffer);
}

std::string stats_detail_json(const std::vector<std::shared_ptr<Backend>>& backends) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartArray();
  for (const auto& b : backends) {
    const auto latency = b->latency().snapshot();
    w.StartObject();
    key(w, "id");
    string(w, b->id());
    key(w, "ip");
    string(w, b->host());
    key(w, "port");
    string(w, std::to_string(b->port()));
    key(w, "state");
    string(w, to_string(b->state()));
    key(w, "requests");
    w.Uint64(b->requests());
    key(w, "success");
    w.Uint64(b->successes());
    key(w, "failed");
    w.Uint64(b->failures());
    key(w, "active_requests");
    w.Uint64(b->active_requests());
    key(w, "active_connections");
    w.Int64(b->active_connections());
    key(w, "latency_ms");
    w.StartObject();
    key(w, "count");
    w.Uint64(latency.count);
    for (auto [name, q] : {std::pair{"p50", 0.5}, std::pair{"p90", 0.9}, std::pair{"p99", 0.99}}) {
      key(w, name);
      w.Double(std::round(latency.quantile(q) * 1e6) / 1e3);  // milliseconds, to the microsecond
    }
    w.EndObject();
    w.EndObject();
  }
  w.EndArray();
  return done(buffer);
}

std::string metrics_text(const Stats& stats, const std::vector<std::shared_ptr<Backend>>& backends) {
  std::string out;
  auto it = std::back_inserter(out);
  fmt::format_to(it,
                 "# HELP weldr_client_requests_total Requests received from clients, by result.\n"
                 "# TYPE weldr_client_requests_total counter\n"
                 "weldr_client_requests_total{{result=\"success\"}} {}\n"
                 "weldr_client_requests_total{{result=\"failed\"}} {}\n"
                 "# HELP weldr_server_requests_total Requests sent to origin servers, by result.\n"
                 "# TYPE weldr_server_requests_total counter\n"
                 "weldr_server_requests_total{{result=\"success\"}} {}\n"
                 "weldr_server_requests_total{{result=\"failed\"}} {}\n",
                 stats.client_success(), stats.client_failed(), stats.server_success(), stats.server_failed());
  fmt::format_to(it,
                 "# HELP weldr_retries_total Requests tried again on another origin server, by whether the retry "
                 "budget allowed it.\n"
                 "# TYPE weldr_retries_total counter\n"
                 "weldr_retries_total{{result=\"sent\"}} {}\n"
                 "weldr_retries_total{{result=\"denied\"}} {}\n",
                 stats.retries(), stats.retries_denied());
  out +=
      "# HELP weldr_backend_ejections_total Times outlier detection ejected one origin server.\n"
      "# TYPE weldr_backend_ejections_total counter\n";
  for (const auto& b : backends)
    fmt::format_to(it, "weldr_backend_ejections_total{{backend=\"{}\"}} {}\n", label(b->id()), b->ejections());
  out +=
      "# HELP weldr_backend_requests_total Requests sent to one origin server, by result.\n"
      "# TYPE weldr_backend_requests_total counter\n";
  for (const auto& b : backends) {
    const std::string id = label(b->id());
    fmt::format_to(it, "weldr_backend_requests_total{{backend=\"{}\",result=\"success\"}} {}\n", id, b->successes());
    fmt::format_to(it, "weldr_backend_requests_total{{backend=\"{}\",result=\"failed\"}} {}\n", id, b->failures());
  }
  out +=
      "# HELP weldr_backend_up Whether an origin server receives new requests (1) or not (down, ejected or draining, "
      "0).\n"
      "# TYPE weldr_backend_up gauge\n";
  for (const auto& b : backends)
    fmt::format_to(it, "weldr_backend_up{{backend=\"{}\"}} {}\n", label(b->id()), b->usable() ? 1 : 0);
  out +=
      "# HELP weldr_backend_active_requests Requests in flight to one origin server.\n"
      "# TYPE weldr_backend_active_requests gauge\n";
  for (const auto& b : backends) {
    fmt::format_to(it, "weldr_backend_active_requests{{backend=\"{}\"}} {}\n", label(b->id()), b->active_requests());
  }
  out +=
      "# HELP weldr_backend_active_connections Open connections to one origin server, busy or idle.\n"
      "# TYPE weldr_backend_active_connections gauge\n";
  for (const auto& b : backends) {
    fmt::format_to(it, "weldr_backend_active_connections{{backend=\"{}\"}} {}\n", label(b->id()),
                   b->active_connections());
  }
  out +=
      "# HELP weldr_backend_request_duration_seconds Time from sending a request to an origin server to the end of its "
      "response, successful requests only.\n"
      "# TYPE weldr_backend_request_duration_seconds histogram\n";
  for (const auto& b : backends) {
    const std::string id = label(b->id());
    const auto s = b->latency().snapshot();
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < LatencyHistogram::kBuckets; ++i) {
      cumulative += s.buckets[i];
      if (i < LatencyHistogram::kBounds.size()) {
        fmt::format_to(it, "weldr_backend_request_duration_seconds_bucket{{backend=\"{}\",le=\"{}\"}} {}\n", id,
                       LatencyHistogram::kBounds[i], cumulative);
      } else {
        fmt::format_to(it, "weldr_backend_request_duration_seconds_bucket{{backend=\"{}\",le=\"+Inf\"}} {}\n", id,
                       cumulative);
      }
    }
    fmt::format_to(it, "weldr_backend_request_duration_seconds_sum{{backend=\"{}\"}} {}\n", id, s.sum_seconds);
    fmt::format_to(it, "weldr_backend_request_duration_seconds_count{{backend=\"{}\"}} {}\n", id, s.count);
  }
  return out;
}

namespace {

void write_cluster(Writer& w, const ClusterStatus& status) {
  w.StartObject();
  key(w, "name");
  string(w, status.name);
  key(w, "node");
  string(w, status.node);
  key(w, "role");
  string(w, to_string(status.role));
  key(w, "leader");
  if (status.leader) {
    string(w, *status.leader);
  } else {
    w.Null();
  }
  key(w, "lease_ttl");
  w.Int64(status.lease_ttl);
  key(w, "role_changes");
  w.Uint64(status.role_changes);
  key(w, "store");
  w.StartObject();
  key(w, "endpoints");
  w.StartArray();
  for (const auto& e : status.endpoints)
    string(w, e);
  w.EndArray();
  key(w, "connected");
  w.Bool(status.connected);
  key(w, "revision");
  w.Int64(status.revision);
  w.EndObject();
  key(w, "nodes");
  w.StartArray();
  for (const auto& n : status.nodes) {
    w.StartObject();
    key(w, "name");
    string(w, n.name);
    key(w, "role");
    string(w, n.role);
    key(w, "proxy");
    string(w, n.proxy);
    key(w, "admin");
    string(w, n.admin);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
}

}  // namespace

std::string cluster_json(const ClusterStatus& status) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  write_cluster(w, status);
  return done(buffer);
}

std::string standalone_cluster_json() {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  key(w, "role");
  string(w, "standalone");
  key(w, "leader");
  w.Null();
  key(w, "nodes");
  w.StartArray();
  w.EndArray();
  w.EndObject();
  return done(buffer);
}

std::string cluster_metrics(const ClusterStatus& status) {
  return fmt::format(
      "# HELP weldr_cluster_active Whether this node is the cluster's active node (1) or not (0).\n"
      "# TYPE weldr_cluster_active gauge\n"
      "weldr_cluster_active {}\n"
      "# HELP weldr_cluster_store_connected Whether this node follows etcd now (1) or serves its last known pool (0).\n"
      "# TYPE weldr_cluster_store_connected gauge\n"
      "weldr_cluster_store_connected {}\n"
      "# HELP weldr_cluster_role_changes_total Role changes of this node (passive to active and back).\n"
      "# TYPE weldr_cluster_role_changes_total counter\n"
      "weldr_cluster_role_changes_total {}\n"
      "# HELP weldr_cluster_revision The etcd revision this node's pool reflects.\n"
      "# TYPE weldr_cluster_revision gauge\n"
      "weldr_cluster_revision {}\n",
      status.role == ClusterRole::active ? 1 : 0, status.connected ? 1 : 0, status.role_changes, status.revision);
}

}  // namespace weldr::api
