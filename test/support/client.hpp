#pragma once
/// \file
/// Test-side HTTP plumbing: a header list with case-insensitive look-ups, an incremental
/// llhttp-based message parser, and a blocking raw-socket client with a timeout on every wait.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace weldr::test {

/// Header fields in the order they were received, names and values as sent.
using Headers = std::vector<std::pair<std::string, std::string>>;

/// True when `a` and `b` are equal ignoring ASCII case.
bool iequals(std::string_view a, std::string_view b) noexcept;
/// The value of the first field called `name` (case-insensitive), if any.
std::optional<std::string> header_value(const Headers& headers, std::string_view name);
/// The values of every field called `name`, in order.
std::vector<std::string> header_values(const Headers& headers, std::string_view name);
/// Every value of `name` joined with ", " (the combined field value of RFC 9110 5.3); empty if absent.
std::string header_joined(const Headers& headers, std::string_view name);
/// True when a field called `name` is present.
bool has_header(const Headers& headers, std::string_view name);
/// True when the comma-separated field `name` has a member equal to `token` (case-insensitive).
bool header_has_token(const Headers& headers, std::string_view name, std::string_view token);

/// One parsed HTTP/1.x message (request or response).
struct Message {
  std::string method;      ///< request method, e.g. "GET" (requests only)
  std::string target;      ///< request target as sent, e.g. "/echo?x=1" (requests only)
  int status{0};           ///< status code (responses only)
  std::string reason;      ///< reason phrase (responses only)
  int version_major{1};    ///< HTTP major version
  int version_minor{1};    ///< HTTP minor version
  Headers headers;         ///< header fields as received
  std::string body;        ///< the body, decoded (chunk framing removed)
  std::string raw_body;    ///< the body bytes as on the wire (only when parsing with pause_on_head)
  bool chunked{false};     ///< sent with Transfer-Encoding: chunked
  bool keep_alive{false};  ///< llhttp's verdict: the connection may carry another message
};

/// An incremental HTTP/1.1 parser (llhttp, strict) that stops at message boundaries.
///
/// Feed it bytes; it reports how many it consumed and whether it stopped after a complete head
/// (only with `pause_on_head`) or a complete message. The bytes it did not consume belong to
/// the next message and must be fed again.
class MessageParser {
 public:
  /// What the parser wants to parse.
  enum class Kind { request, response };
  /// Why feed() or finish() returned.
  enum class Event {
    need_more,         ///< everything consumed; the message is not complete yet
    head_complete,     ///< stopped right after a complete head
    message_complete,  ///< stopped right after a complete message; see message()
    eof,               ///< finish() between messages: a clean end of stream
    error,             ///< malformed input or EOF in the middle of a message; see error()
  };
  /// The result of feed() or finish().
  struct Result {
    Event event;           ///< why it returned
    std::size_t consumed;  ///< bytes of the input that were parsed
  };

  /// A parser for requests or responses; with `pause_on_head` it also stops after each head.
  explicit MessageParser(Kind kind, bool pause_on_head = false);
  ~MessageParser();
  MessageParser(const MessageParser&) = delete;
  MessageParser& operator=(const MessageParser&) = delete;

  /// Parses as much of `data` as belongs to the current message (an empty `data` is allowed).
  Result feed(std::string_view data);
  /// Tells the parser the peer closed the stream (completes a close-delimited body).
  Result finish();
  /// Treat the next response as having no body (the answer to a HEAD request).
  void expect_no_body(bool no_body) noexcept;
  /// The message being parsed, or the last complete one.
  [[nodiscard]] const Message& message() const noexcept;
  /// True between the first byte of a message and its end.
  [[nodiscard]] bool in_message() const noexcept;
  /// Description of the last error.
  [[nodiscard]] const std::string& error() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// A response read by Client::read_response.
struct Response : Message {
  bool complete{false};          ///< a whole response was parsed
  bool closed{false};            ///< the peer closed (or reset) the connection while reading
  bool timed_out{false};         ///< nothing arrived within the client's timeout
  std::string error;             ///< what went wrong when not complete
  std::vector<Message> interim;  ///< 1xx responses received before this one (when skipped)

  /// First value of header `name`, or "" when absent.
  [[nodiscard]] std::string header(std::string_view name) const;
  /// True when header `name` is present.
  [[nodiscard]] bool has(std::string_view name) const;
  /// A one-line summary for test failure messages.
  [[nodiscard]] std::string describe() const;
};

/// A blocking HTTP client on a raw TCP socket to 127.0.0.1, for sending exact bytes.
///
/// Every wait is bounded by the timeout given to the constructor, so a server that hangs
/// fails the test instead of hanging the suite.
class Client {
 public:
  /// Connects to 127.0.0.1:`port`; throws std::system_error when the connection fails.
  explicit Client(std::uint16_t port, std::chrono::milliseconds timeout = std::chrono::seconds(10));
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  /// Writes all of `bytes`; false when the peer closed or the timeout passed first.
  bool send(std::string_view bytes);
  /// Reads one response. With `head_request` the response has no body; with `return_interim`
  /// a 1xx response is returned as soon as it is complete, otherwise 1xx responses are
  /// collected in Response::interim and the final response is returned.
  Response read_response(bool head_request = false, bool return_interim = false);
  /// Sends `request` and reads its response (see read_response); a send that fails because the
  /// peer already answered and closed still returns that answer.
  Response exchange(std::string_view request, bool head_request = false);
  /// Waits up to `timeout` for the peer to close the connection; true when it did (EOF or
  /// reset). Bytes that arrive meanwhile are kept for the next read_response.
  bool wait_closed(std::chrono::milliseconds timeout = std::chrono::seconds(5));
  /// Half-closes the connection (no more sending).
  void shutdown_send();
  /// Closes the socket now; with `reset` the peer gets an RST instead of a FIN.
  void close(bool reset = false);
  /// The local port of the connection.
  [[nodiscard]] std::uint16_t local_port() const;

  /// True when a TCP connection to 127.0.0.1:`port` can be established right now.
  static bool can_connect(std::uint16_t port);

 private:
  enum class ReadStatus { data, eof, timeout };
  ReadStatus read_some(std::chrono::steady_clock::time_point deadline);

  int fd_{-1};
  std::chrono::milliseconds timeout_;
  std::string pending_;  // received but not parsed yet
  bool eof_{false};
};

/// Closes `fd` and sets it to -1 (nothing when it is already -1); with `reset`, with an RST
/// (SO_LINGER 0) instead of a FIN.
void close_socket(int& fd, bool reset = false);

/// Opens a connection, sends `GET path` with `Connection: close` and returns the response.
Response http_get(std::uint16_t port, std::string_view path);

/// Formats a minimal request: request line, Host: 127.0.0.1, `extra_headers` (each ending in
/// "\r\n"), Content-Length when `body` is not empty, and the body.
std::string make_request(std::string_view method, std::string_view target, std::string_view body = {},
                         std::string_view extra_headers = {});

/// A TCP port on 127.0.0.1 where connections are refused: a socket is bound to it without
/// listening, which also keeps any other socket (another test's listener) from taking the port.
class RefusingPort {
 public:
  /// Binds a socket to 127.0.0.1 at a free port; throws std::system_error on failure.
  RefusingPort();
  /// Releases the port.
  ~RefusingPort();
  RefusingPort(const RefusingPort&) = delete;
  RefusingPort& operator=(const RefusingPort&) = delete;

  /// The port.
  [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
  /// "http://127.0.0.1:PORT".
  [[nodiscard]] std::string url() const;
  /// "127.0.0.1:PORT", the backend's id in a Pool.
  [[nodiscard]] std::string id() const;

 private:
  int fd_{-1};
  std::uint16_t port_{0};
};

}  // namespace weldr::test
