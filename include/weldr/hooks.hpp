#pragma once
/// \file
/// Hooks: a host's own code at fixed points of every request a Proxy serves (in the spirit of
/// Pingora's phases). Hooks run on the Proxy's thread, inside its event loop: they must not
/// block (no file or network I/O that can wait, no locks held for long), and a hook object
/// shared by several Proxies (one per thread) is called from all their threads at once.

#include <any>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace weldr {

class Backend;
class Pool;

/// One header field.
struct HeaderField {
  std::string name;   ///< field name, e.g. "Cache-Control"
  std::string value;  ///< field value, without surrounding whitespace
};

/// Changes to a message head, applied when weldr writes it: every field whose name was
/// removed (or set) is left out, then the added (or set) fields are appended.
class HeaderEdits {
 public:
  /// Replaces every field named `name` with one field `name: value`.
  void set(std::string name, std::string value);
  /// Adds a field, keeping those of the same name (for Host, which must be single: set()).
  void add(std::string name, std::string value);
  /// Removes every field named `name` (case-insensitive). Host can be replaced (set), not
  /// removed.
  void remove(std::string name);
  /// True when nothing is to change.
  [[nodiscard]] bool empty() const noexcept { return removed_.empty() && added_.empty(); }
  /// The names to leave out.
  [[nodiscard]] const std::vector<std::string>& removed() const noexcept { return removed_; }
  /// The fields to append.
  [[nodiscard]] const std::vector<HeaderField>& added() const noexcept { return added_; }
  /// True when a field named `name` is to be left out.
  [[nodiscard]] bool removes(std::string_view name) const noexcept;
  /// True when a field named `name` is to be appended.
  [[nodiscard]] bool adds(std::string_view name) const noexcept;
  /// Forgets every change (keeps the capacity).
  void clear() noexcept;

 private:
  std::vector<std::string> removed_;
  std::vector<HeaderField> added_;
};

/// A response that weldr sends itself: an answer from on_request, or an error page.
struct LocalResponse {
  int status{200};                   ///< status code, 200..599
  std::string body;                  ///< the body (Content-Length is added)
  std::vector<HeaderField> headers;  ///< extra fields (Content-Type, Location, ...)
};

/// Where select_backend sends a request: a backend of a given pool, or a pool to pick from with its
/// policy. Both empty: the Proxy's own pool and policy.
struct BackendChoice {
  /// The pool to pick from (and that owns `backend`); null means the Proxy's pool. It must
  /// outlive the Proxy.
  Pool* pool{nullptr};
  /// A backend chosen by the hook; null means "pick from `pool` with its policy".
  std::shared_ptr<Backend> backend;
};

namespace detail {
struct RequestView;
}

/// One request as the hooks see it. Valid during the hook calls of that request only.
class RequestContext {
 public:
  /// Method, e.g. "GET".
  [[nodiscard]] std::string_view method() const noexcept;
  /// Request target as received, e.g. "/api/users?id=7".
  [[nodiscard]] std::string_view target() const noexcept;
  /// The path the request is for, without the query, as forwarded: for an absolute-form target
  /// ("GET http://host/admin") its path ("/admin"). Raw, not normalised: "/./admin", "//admin"
  /// and "/%61dmin" are other strings than "/admin"; decide access on a canonical form.
  [[nodiscard]] std::string_view path() const noexcept;
  /// The host the request is for, as forwarded: an absolute-form target's authority, otherwise
  /// the Host field ("" when there is none, as HTTP/1.0 allows).
  [[nodiscard]] std::string_view host() const noexcept;
  /// The value of the first field named `name` (case-insensitive), or nothing.
  [[nodiscard]] std::optional<std::string_view> header(std::string_view name) const noexcept;
  /// Every header field as received, in order.
  [[nodiscard]] std::vector<std::pair<std::string_view, std::string_view>> headers() const;
  /// The client's IP address.
  [[nodiscard]] std::string_view client_address() const noexcept;
  /// 0 for HTTP/1.0, 1 for HTTP/1.1.
  [[nodiscard]] int http_minor() const noexcept;

  /// Replaces the target sent to the backend (e.g. to strip a path prefix); "" keeps it. It
  /// must be origin-form ("/" then visible ASCII, no spaces): otherwise the request gets 500.
  void set_upstream_target(std::string target) { upstream_target_ = std::move(target); }
  /// The target to send upstream ("" when unchanged).
  [[nodiscard]] const std::string& upstream_target() const noexcept { return upstream_target_; }
  /// Changes to the request head sent to the backend (on_request, on_upstream_request).
  [[nodiscard]] HeaderEdits& upstream_headers() noexcept { return upstream_headers_; }
  /// Changes to the response head sent to the client (on_request, on_response).
  [[nodiscard]] HeaderEdits& response_headers() noexcept { return response_headers_; }

  /// The attempt being made: 0, then 1.. for retries (in select_backend).
  [[nodiscard]] unsigned attempt() const noexcept { return attempt_; }
  /// The backend of the current attempt (from on_upstream_request on), or null.
  [[nodiscard]] const Backend* backend() const noexcept { return backend_; }
  /// The status of the backend's response (in on_response), or 0.
  [[nodiscard]] int response_status() const noexcept { return response_status_; }

  /// Anything the host wants to carry from one hook to the next for this request.
  std::any user;

 private:
  friend struct detail::RequestView;
  void reset(const void* view) noexcept;

  const void* view_{nullptr};  // detail::RequestView
  std::string upstream_target_;
  HeaderEdits upstream_headers_;
  HeaderEdits response_headers_;
  unsigned attempt_{0};
  int response_status_{0};
  const Backend* backend_{nullptr};
};

/// What one finished request looked like, for access logs (ProxyHooks::on_log).
struct RequestLog {
  std::string_view client_address;                ///< the client's IP
  std::string_view method;                        ///< "" when the head could not be parsed
  std::string_view target;                        ///< as received ("" when unparsed)
  std::string_view host;                          ///< the Host field, or ""
  std::string_view user_agent;                    ///< the User-Agent field, or ""
  std::string_view referer;                       ///< the Referer field, or ""
  int http_minor{1};                              ///< 0 for HTTP/1.0
  int status{0};                                  ///< status sent to the client; 0 when none was
  std::uint64_t request_body_bytes{0};            ///< request body bytes received
  std::uint64_t response_bytes{0};                ///< response bytes sent to the client, head included
  std::string_view backend;                       ///< id of the last backend tried, or ""
  unsigned attempts{0};                           ///< backends tried (1 + retries)
  std::chrono::system_clock::time_point started;  ///< when its head was complete
  std::chrono::microseconds duration{0};          ///< from then to the end of the response
  std::chrono::microseconds upstream_time{0};     ///< from sending to the backend to its response head
  std::string_view error;                         ///< why weldr answered itself or broke off, or ""
  const RequestContext* context{nullptr};         ///< the hooks' context (its `user` included), or null
};

/// The hooks of a Proxy. Every method has a default that changes nothing; override the ones
/// you need. An exception escaping on_request, select_backend or on_upstream_request is logged
/// and the request answered with 500; one from on_response or on_error is logged and the
/// response goes out without the hook's changes; one from on_log is logged.
class ProxyHooks {
 public:
  /// Destroys the hooks (a Proxy holds them through a shared_ptr).
  virtual ~ProxyHooks() = default;
  /// A request head arrived (already validated): inspect it, change what goes upstream, or
  /// answer it directly by returning a response (e.g. 403, or a redirect).
  virtual std::optional<LocalResponse> on_request(RequestContext& context);
  /// Chooses where the request goes, for each attempt (context.attempt()).
  virtual BackendChoice select_backend(RequestContext& context);
  /// The request is about to be sent to `backend` (first attempt only: retries send the same
  /// head); last chance to change upstream_headers().
  virtual void on_upstream_request(RequestContext& context, const Backend& backend);
  /// The backend's final response head arrived (context.response_status()); change
  /// response_headers() to change what the client gets.
  virtual void on_response(RequestContext& context);
  /// weldr is about to answer with an error of its own (`response` holds the default page):
  /// change its body or headers (the status stays).
  virtual void on_error(RequestContext* context, LocalResponse& response);
  /// The request is finished (one call per request, whatever happened).
  virtual void on_log(const RequestLog& log);
};

}  // namespace weldr
