#pragma once
// etcd's v3 JSON gateway, sans I/O: the request bodies weldr sends, the responses and watch
// messages it reads, the key layout of a cluster, and the watch's revision bookkeeping. No
// sockets here, so every piece is unit-tested on its own (test/unit/etcd_codec_test.cpp).
//
// The gateway is grpc-gateway over etcdserverpb: keys and values are base64 in JSON, int64
// fields are decimal strings, and fields equal to their default (0, false, empty) are left out.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace weldr::cluster {

/// Standard base64 with padding (RFC 4648 §4), as protobuf's JSON mapping writes bytes.
std::string base64_encode(std::string_view data);
/// Decodes standard or URL-safe base64, padded or not; nothing when `text` is not base64.
std::optional<std::string> base64_decode(std::string_view text);
/// The range_end that selects every key starting with `prefix` (its last byte incremented).
std::string prefix_end(std::string_view prefix);

/// One key as etcd stores it.
struct KeyValue {
  std::string key;
  std::string value;
  std::int64_t create_revision{0};
  std::int64_t mod_revision{0};
  std::int64_t version{0};
  std::int64_t lease{0};
};

/// A failure that etcd reported: {"error": ..., "code": <gRPC status>}.
struct EtcdError {
  int code{0};          ///< gRPC status code (5 not found, 11 out of range, 16 unauthenticated, ...)
  std::string message;  ///< etcd's text
};

// ---- requests ----------------------------------------------------------------------------

/// POST /v3/kv/range; an empty `range_end` reads the one key.
std::string range_request(std::string_view key, std::string_view range_end = {});
/// POST /v3/kv/put, attached to `lease` when it is not 0.
std::string put_request(std::string_view key, std::string_view value, std::int64_t lease = 0);
/// POST /v3/kv/deleterange.
std::string delete_request(std::string_view key, std::string_view range_end = {});
/// POST /v3/lease/grant.
std::string grant_request(std::int64_t ttl_seconds);
/// POST /v3/lease/keepalive and /v3/lease/revoke: {"ID": id}.
std::string lease_request(std::int64_t id);
/// POST /v3/watch: a create request from `start_revision` on (0: from now).
std::string watch_request(std::string_view key, std::string_view range_end, std::int64_t start_revision);
/// POST /v3/auth/authenticate.
std::string authenticate_request(std::string_view user, std::string_view password);

/// One comparison of a transaction; all weldr's comparisons are EQUAL.
struct Compare {
  enum class Target { create_revision, mod_revision, value };
  std::string key;
  Target target{Target::create_revision};
  std::int64_t revision{0};  ///< for create_revision and mod_revision
  std::string value;         ///< for value
};

/// One operation of a transaction.
struct Operation {
  enum class Kind { put, remove, range };
  Kind kind{Kind::put};
  std::string key;
  std::string value;      ///< put
  std::int64_t lease{0};  ///< put
  std::string range_end;  ///< remove and range
};

/// POST /v3/kv/txn: if every comparison holds, `success`, else `failure`.
std::string txn_request(const std::vector<Compare>& compares, const std::vector<Operation>& success,
                        const std::vector<Operation>& failure = {});

// ---- responses ---------------------------------------------------------------------------

/// The error in a body such as {"error": "...", "code": 5}, or nothing when the body is not one.
std::optional<EtcdError> parse_error(std::string_view body);

/// A range's answer.
struct RangeResult {
  std::int64_t revision{0};  ///< the store's revision when it was read
  std::vector<KeyValue> kvs;
};
/// A transaction's answer.
struct TxnResult {
  std::int64_t revision{0};
  bool succeeded{false};
  std::vector<std::vector<KeyValue>> ranges;  ///< the kvs of each range operation that ran, in order
  std::vector<std::int64_t> deleted;          ///< the count of each delete operation that ran, in order
};
/// A lease's answer (grant, keepalive): `ttl` 0 or less means the lease is gone.
struct LeaseResult {
  std::int64_t revision{0};
  std::int64_t id{0};
  std::int64_t ttl{0};
};
/// A delete's answer.
struct DeleteResult {
  std::int64_t revision{0};
  std::int64_t deleted{0};
};

/// Each parses a successful answer; on failure returns nothing and sets `error`.
std::optional<RangeResult> parse_range(std::string_view body, std::string& error);
std::optional<TxnResult> parse_txn(std::string_view body, std::string& error);
/// Reads a grant's answer, or a keepalive's ({"result": {...}}).
std::optional<LeaseResult> parse_lease(std::string_view body, std::string& error);
std::optional<DeleteResult> parse_delete(std::string_view body, std::string& error);
/// The revision in an answer's header (put, revoke, ...).
std::optional<std::int64_t> parse_revision(std::string_view body, std::string& error);
/// The token of an authenticate answer.
std::optional<std::string> parse_token(std::string_view body, std::string& error);

/// One change that a watch reports.
struct WatchEvent {
  enum class Type { put, remove };
  Type type{Type::put};
  KeyValue kv;
};
/// One message of a watch stream: {"result": {...}} (or an error object).
struct WatchMessage {
  std::int64_t revision{0};          ///< header revision
  bool created{false};               ///< the watch was set up
  bool canceled{false};              ///< the watch ended (see compact_revision and cancel_reason)
  std::int64_t compact_revision{0};  ///< not 0: the requested revision was compacted
  std::string cancel_reason;
  std::vector<WatchEvent> events;
};
/// Parses one line of a watch stream. An {"error": ...} line comes back as a canceled message
/// with the error in cancel_reason.
std::optional<WatchMessage> parse_watch_message(std::string_view line, std::string& error);

// ---- the watch's bookkeeping -------------------------------------------------------------

/// Where a watch stands: the revision applied last, and what a message asks for. A watch starts
/// after a full read (resync) at revision R, from R + 1; events at or below the applied
/// revision (a reconnected watch may repeat some) are dropped; a canceled watch, a compacted
/// revision or events out of order mean the local view can no longer follow by events, so read
/// everything again. (A watch on a prefix skips the revisions of other keys, so a gap in
/// revisions is normal and tells nothing.)
class WatchCursor {
 public:
  /// What to do with a message.
  enum class Action { none, apply, resync };

  /// After reading everything at `revision`.
  void resynced(std::int64_t revision) noexcept { applied_ = revision; }
  /// The revision the next watch starts from.
  [[nodiscard]] std::int64_t start_revision() const noexcept { return applied_ + 1; }
  /// The revision applied last.
  [[nodiscard]] std::int64_t applied() const noexcept { return applied_; }
  /// Takes a message: removes from it the events already applied and tells what to do.
  Action on_message(WatchMessage& message) noexcept;

 private:
  std::int64_t applied_{0};
};

// ---- the layout of a cluster in etcd -----------------------------------------------------

/// The keys of cluster `name`: everything lives under /weldr/<name>/.
class Keys {
 public:
  /// The keys of the cluster called `name`.
  explicit Keys(std::string_view name);
  /// "/weldr/<name>/": every key of the cluster starts with it.
  [[nodiscard]] const std::string& prefix() const noexcept { return prefix_; }
  /// "/weldr/<name>/servers/": registrations, one key per server id, JSON values.
  [[nodiscard]] std::string servers() const { return prefix_ + "servers/"; }
  [[nodiscard]] std::string server(std::string_view id) const { return servers() + std::string(id); }
  /// "/weldr/<name>/config/<item>": configuration set through the API (JSON).
  [[nodiscard]] std::string config(std::string_view item) const { return prefix_ + "config/" + std::string(item); }
  /// "/weldr/<name>/nodes/<node>": membership, on the node's lease.
  [[nodiscard]] std::string nodes() const { return prefix_ + "nodes/"; }
  [[nodiscard]] std::string node(std::string_view node) const { return nodes() + std::string(node); }
  /// "/weldr/<name>/leader": the active node's name, on its lease.
  [[nodiscard]] std::string leader() const { return prefix_ + "leader"; }
  /// "/weldr/<name>/initialized": written with the first seed, so that later starts never seed.
  [[nodiscard]] std::string initialized() const { return prefix_ + "initialized"; }

  /// What a key of this cluster is.
  enum class Kind { other, server, config, node, leader };
  /// Classifies `key` and sets `name` to the server id, config item or node name in it.
  Kind classify(std::string_view key, std::string& name) const;

 private:
  std::string prefix_;
};

/// True when `name` can be a cluster name: 1..64 of [A-Za-z0-9._-]; with `colon`, ':' too (node
/// names, whose default is "host:port").
bool valid_name(std::string_view name, bool colon = false) noexcept;

}  // namespace weldr::cluster
