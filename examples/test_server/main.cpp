// weldr-test-server: the origin behind the README demo, the integration tests and the benchmark.
//
// One Asio coroutine per connection. llhttp's callbacks pause the parser after the request head
// and after the message, so a route answers in between while a pipelined next request waits in
// the buffer. Bodies pass through one fixed 64 KiB buffer, so a 1 GiB upload to /echo or
// download from /large runs in constant memory.
//
// Routes (any method; HEAD gets the GET headers without the body):
//   /                Hello World
//   /health          OK
//   /large[?size=N]  N bytes (default 1 MiB, at most 1 GiB); byte i is 'a' + i % 26
//   /echo            the request body, chunked if the request's was, with its Content-Type
//   /chunked         Hello World in three chunks
//   /status/N        status N (200..599) with body "status N"; 204 and 304 have no body
//   /delay/MS        "delayed MS" after MS milliseconds (at most 60000)
//   /headers         "METHOD TARGET HTTP/x.y", then each header field as received, one per line
//   anything else    404 not found

// GCC 12 miscompiles some coroutines that put a co_await in one expression with ?: or && (it
// resumes a corrupt frame), so here each co_await sits in a plain statement with plain arguments.
// It also takes Asio's coroutine frame allocator for a mismatched new/delete pair once inlined
// (-O1 with sanitizers, -O3); the pair does match (chriskohlhoff/asio#1391).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

#include <llhttp.h>

#include <fmt/format.h>
#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>
#include <asio/strand.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using namespace asio::experimental::awaitable_operators;
constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

constexpr std::size_t kBufferSize = 64 * 1024;        ///< Read buffer, and piece size of /large.
constexpr std::size_t kMaxHeadSize = 64 * 1024;       ///< Bigger request heads get 431.
constexpr std::uint64_t kDefaultLargeSize = 1 << 20;  ///< /large without ?size=.
constexpr std::uint64_t kMaxLargeSize = 1 << 30;      ///< Upper bound of /large?size=N.
constexpr unsigned kMaxDelayMs = 60'000;              ///< Upper bound of /delay/MS.
constexpr auto kIdleTimeout = std::chrono::seconds(60);
constexpr unsigned kMaxThreads = 256;

/// Body of /large: byte i is 'a' + i % 26. One piece plus one period, so that the piece at any
/// offset is the slice starting at offset % 26.
constexpr auto kLargePattern = [] {
  std::array<char, kBufferSize + 26> bytes{};
  for (std::size_t i = 0; i < bytes.size(); ++i)
    bytes[i] = static_cast<char>('a' + i % 26);
  return bytes;
}();

/// The whole of `text` as a decimal number, or nothing.
template <typename T>
std::optional<T> parse_number(std::string_view text) {
  T value{};
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc{} || ptr != end) return std::nullopt;
  return value;
}

/// ASCII case-insensitive equality, for header names and tokens.
bool iequals(std::string_view a, std::string_view b) {
  const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
  return std::ranges::equal(a, b, [&](char x, char y) { return lower(x) == lower(y); });
}

/// The value of `name` in a query string such as "size=10&x=y".
std::optional<std::string_view> query_param(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    const auto amp = query.find('&');
    const auto pair = query.substr(0, amp);
    if (pair.size() > name.size() && pair.starts_with(name) && pair[name.size()] == '=')
      return pair.substr(name.size() + 1);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
  }
  return std::nullopt;
}

/// Reason phrase for the status line. It carries no meaning (RFC 9112 section 4), so codes
/// without a common one get a placeholder.
std::string_view reason_phrase(unsigned status) {
  using Phrase = std::pair<unsigned, std::string_view>;
  static constexpr std::array<Phrase, 10> kPhrases{{
      {200, "OK"},
      {201, "Created"},
      {204, "No Content"},
      {304, "Not Modified"},
      {400, "Bad Request"},
      {404, "Not Found"},
      {431, "Request Header Fields Too Large"},
      {500, "Internal Server Error"},
      {502, "Bad Gateway"},
      {503, "Service Unavailable"},
  }};
  const auto it = std::ranges::find(kPhrases, status, &Phrase::first);
  return it == kPhrases.end() ? "Unknown" : it->second;
}

/// co_spawn completion handler: an exception escaping a coroutine is a bug, so it is reported.
auto report_exception(std::string_view what) {
  return [what](std::exception_ptr error) {
    if (!error) return;
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      fmt::print(stderr, "weldr-test-server: {}: {}\n", what, e.what());
    }
  };
}

/// What read_body does with the body bytes llhttp hands over.
enum class BodyMode { discard, echo, echo_chunked };

/// One client connection: parses requests in order and answers each before reading the next.
class Connection {
 public:
  /// Takes over an accepted socket.
  explicit Connection(tcp::socket socket) : socket_(std::move(socket)) {
    llhttp_init(&parser_, HTTP_REQUEST, &settings());
    parser_.data = this;
    std::error_code ignored;
    socket_.set_option(tcp::no_delay(true), ignored);  // a head and its body are separate writes
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  /// Serves requests until the peer closes, an error, or kIdleTimeout without progress.
  asio::awaitable<void> run() { co_await (serve() || watchdog()); }

 private:
  static Connection& self(llhttp_t* parser) { return *static_cast<Connection*>(parser->data); }
  static const llhttp_settings_t& settings();

  int append_head(std::string& to, const char* at, std::size_t length) {
    head_size_ += length;
    head_too_large_ = head_size_ > kMaxHeadSize;
    if (!head_too_large_) to.append(at, length);
    return head_too_large_ ? -1 : 0;
  }

  std::optional<std::string_view> header(std::string_view name) const {
    const auto it = std::ranges::find_if(headers_, [&](const auto& field) { return iequals(field.first, name); });
    if (it == headers_.end()) return std::nullopt;
    return it->second;
  }

  asio::awaitable<bool> read_some() {
    deadline_ = Clock::now() + kIdleTimeout;
    const auto [error, n] = co_await socket_.async_read_some(asio::buffer(buffer_), use_tuple);
    begin_ = 0;
    end_ = n;
    co_return !error;
  }

  template <typename Buffers>
  asio::awaitable<bool> write(const Buffers& buffers) {
    deadline_ = Clock::now() + kIdleTimeout;
    const auto [error, n] = co_await asio::async_write(socket_, buffers, use_tuple);
    co_return !error;
  }

  asio::awaitable<void> watchdog() {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    while (deadline_ > Clock::now()) {
      timer.expires_at(deadline_);
      const auto [error] = co_await timer.async_wait(use_tuple);
      if (error) co_return;
    }
  }

  /// Status line, `fields` (each ending in CRLF), the common fields and the blank line.
  std::string response_head(unsigned status, std::string_view fields) const;
  /// Feeds the unparsed bytes to llhttp up to its next pause; HPE_OK unless the request is bad.
  llhttp_errno_t parse();
  asio::awaitable<void> serve();
  /// Parses up to the end of a request head; on a bad one it answers 400 or 431 and says stop.
  asio::awaitable<bool> read_head();
  /// Parses up to the end of the message, writing body bytes back as `mode` says.
  asio::awaitable<bool> read_body(BodyMode mode);
  /// Reads the rest of the request and answers it; false when the connection must end.
  asio::awaitable<bool> respond();
  asio::awaitable<bool> echo();
  asio::awaitable<bool> send_large(std::uint64_t size);
  asio::awaitable<bool> send_text(unsigned status, std::string_view body);
  /// Writes a response head with `fields`, then `body` unless the request was HEAD.
  asio::awaitable<bool> send(unsigned status, std::string_view fields, std::string_view body);

  tcp::socket socket_;
  llhttp_t parser_{};
  std::array<char, kBufferSize> buffer_{};
  std::size_t begin_ = 0;  ///< buffer_[begin_, end_) is read but not parsed yet.
  std::size_t end_ = 0;
  Clock::time_point deadline_ = Clock::now() + kIdleTimeout;
  // The current request, as the llhttp callbacks fill it in.
  std::string target_;
  std::vector<std::pair<std::string, std::string>> headers_;
  std::size_t head_size_ = 0;
  bool in_field_ = false;
  bool head_done_ = false;
  bool message_done_ = false;
  bool head_too_large_ = false;
  bool keep_alive_ = false;
  bool head_method_ = false;
  BodyMode body_mode_ = BodyMode::discard;
  std::vector<asio::const_buffer> body_pieces_;  ///< Body bytes in buffer_ from the last parse().
};

const llhttp_settings_t& Connection::settings() {
  static const llhttp_settings_t settings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_url = [](llhttp_t* p, const char* at, std::size_t n) { return self(p).append_head(self(p).target_, at, n); };
    s.on_header_field = [](llhttp_t* p, const char* at, std::size_t n) {
      Connection& c = self(p);
      if (!c.in_field_) c.headers_.emplace_back();
      c.in_field_ = true;
      return c.append_head(c.headers_.back().first, at, n);
    };
    s.on_header_field_complete = [](llhttp_t* p) {
      self(p).in_field_ = false;
      return 0;
    };
    s.on_header_value = [](llhttp_t* p, const char* at, std::size_t n) {
      return self(p).append_head(self(p).headers_.back().second, at, n);
    };
    s.on_headers_complete = [](llhttp_t* p) {
      self(p).head_done_ = true;
      return static_cast<int>(HPE_PAUSED);
    };
    s.on_body = [](llhttp_t* p, const char* at, std::size_t n) {
      if (self(p).body_mode_ != BodyMode::discard) self(p).body_pieces_.emplace_back(at, n);
      return 0;
    };
    s.on_message_complete = [](llhttp_t* p) {
      self(p).message_done_ = true;
      return static_cast<int>(HPE_PAUSED);
    };
    return s;
  }();
  return settings;
}

std::string Connection::response_head(unsigned status, std::string_view fields) const {
  // HTTP/1.0 closes by default, so keep-alive must be confirmed to it explicitly.
  std::string_view connection;
  if (!keep_alive_)
    connection = "Connection: close\r\n";
  else if (parser_.http_minor == 0)
    connection = "Connection: keep-alive\r\n";
  return fmt::format("HTTP/1.1 {} {}\r\nServer: weldr-test-server\r\n{}{}\r\n", status, reason_phrase(status), fields,
                     connection);
}

llhttp_errno_t Connection::parse() {
  const llhttp_errno_t error = llhttp_execute(&parser_, buffer_.data() + begin_, end_ - begin_);
  if (error != HPE_PAUSED) {
    begin_ = end_;
    return error;
  }
  begin_ = static_cast<std::size_t>(llhttp_get_error_pos(&parser_) - buffer_.data());
  llhttp_resume(&parser_);
  return HPE_OK;
}

asio::awaitable<void> Connection::serve() {
  static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
  for (;;) {
    const bool got_head = co_await read_head();
    if (!got_head) break;
    // After an Upgrade or CONNECT the bytes that follow are not HTTP, so the connection closes.
    keep_alive_ = llhttp_should_keep_alive(&parser_) != 0 && parser_.upgrade == 0;
    head_method_ = parser_.method == HTTP_HEAD;
    const bool has_body = (parser_.flags & F_CHUNKED) != 0 || parser_.content_length > 0;
    const auto expect = header("Expect");
    // RFC 9110 section 10.1.1: a client that sent Expect waits for this before the body.
    if (has_body && expect && iequals(*expect, "100-continue") && parser_.http_minor > 0) {
      const bool sent = co_await write(asio::buffer(kContinue));
      if (!sent) break;
    }
    const bool answered = co_await respond();
    if (!answered || !keep_alive_) break;
  }
  std::error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_send, ignored);
}

asio::awaitable<bool> Connection::read_head() {
  target_.clear();
  headers_.clear();
  head_size_ = 0;
  in_field_ = head_done_ = message_done_ = head_too_large_ = head_method_ = false;
  while (!head_done_) {
    if (begin_ == end_) {
      const bool got = co_await read_some();
      if (!got) co_return false;
    }
    if (parse() != HPE_OK) {
      keep_alive_ = false;
      const unsigned status = head_too_large_ ? 431 : 400;
      co_await send_text(status, "bad request");
      co_return false;
    }
  }
  co_return true;
}

asio::awaitable<bool> Connection::read_body(BodyMode mode) {
  static constexpr std::string_view kCrlf = "\r\n";
  body_mode_ = mode;
  for (;;) {
    // Slot 0 is kept for a chunk-size line; echoing raw, it stays empty and writes nothing.
    body_pieces_.assign(1, asio::const_buffer());
    // Parse what is buffered even if that is nothing: a message without a body completes here.
    const llhttp_errno_t error = parse();
    if (body_pieces_.size() > 1) {
      std::string chunk_head;
      if (mode == BodyMode::echo_chunked) {
        chunk_head = fmt::format("{:x}\r\n", asio::buffer_size(body_pieces_));
        body_pieces_.front() = asio::buffer(chunk_head);
        body_pieces_.push_back(asio::buffer(kCrlf));
      }
      const bool sent = co_await write(body_pieces_);
      if (!sent) co_return false;
    }
    if (message_done_) co_return true;
    if (error != HPE_OK) {
      // Before a response has started the client can still be told; /echo has started one.
      keep_alive_ = false;
      if (mode == BodyMode::discard) co_await send_text(400, "bad request");
      co_return false;
    }
    const bool got = co_await read_some();
    if (!got) co_return false;
  }
}

asio::awaitable<bool> Connection::respond() {
  const std::string_view target = target_;
  const auto question = target.find('?');
  const auto path = target.substr(0, question);
  const auto query = question == std::string_view::npos ? std::string_view{} : target.substr(question + 1);

  if (path == "/echo") co_return co_await echo();
  const bool body_read = co_await read_body(BodyMode::discard);
  if (!body_read) co_return false;

  if (path == "/") co_return co_await send_text(200, "Hello World");
  if (path == "/health") co_return co_await send_text(200, "OK");
  if (path == "/headers") {
    const auto method = static_cast<llhttp_method_t>(parser_.method);
    std::string body =
        fmt::format("{} {} HTTP/{}.{}\n", llhttp_method_name(method), target_, parser_.http_major, parser_.http_minor);
    for (const auto& [field, value] : headers_)
      body += fmt::format("{}: {}\n", field, value);
    co_return co_await send_text(200, body);
  }
  // HTTP/1.0 has no chunked coding (RFC 9112 section 7), so it gets a plain body.
  if (path == "/chunked" && parser_.http_minor > 0)
    co_return co_await send(200, "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n",
                            "5\r\nHello\r\n1\r\n \r\n5\r\nWorld\r\n0\r\n\r\n");
  if (path == "/chunked") co_return co_await send_text(200, "Hello World");
  if (path == "/large") {
    const auto size_text = query_param(query, "size");
    const auto size = size_text ? parse_number<std::uint64_t>(*size_text) : kDefaultLargeSize;
    if (!size || *size > kMaxLargeSize) co_return co_await send_text(400, "bad size");
    co_return co_await send_large(*size);
  }
  if (path.starts_with("/status/")) {
    const auto status = parse_number<unsigned>(path.substr(8));
    if (!status || *status < 200 || *status > 599) co_return co_await send_text(400, "bad status");
    const std::string body = fmt::format("status {}", *status);
    co_return co_await send_text(*status, body);
  }
  if (path.starts_with("/delay/")) {
    const auto ms = parse_number<unsigned>(path.substr(7));
    if (!ms) co_return co_await send_text(400, "bad delay");
    const auto delay = std::chrono::milliseconds(std::min(*ms, kMaxDelayMs));
    deadline_ = Clock::now() + delay + kIdleTimeout;
    asio::steady_timer timer(co_await asio::this_coro::executor, delay);
    const auto [error] = co_await timer.async_wait(use_tuple);
    if (error) co_return false;
    const std::string body = fmt::format("delayed {}", delay.count());
    co_return co_await send_text(200, body);
  }
  co_return co_await send_text(404, "not found");
}

asio::awaitable<bool> Connection::echo() {
  static constexpr std::string_view kLastChunk = "0\r\n\r\n";
  const bool chunked = (parser_.flags & F_CHUNKED) != 0;
  std::string fields;
  if (const auto type = header("Content-Type")) fields = fmt::format("Content-Type: {}\r\n", *type);
  if (chunked)
    fields += "Transfer-Encoding: chunked\r\n";
  else
    fields += fmt::format("Content-Length: {}\r\n", parser_.content_length);
  const bool sent = co_await send(200, fields, "");
  if (!sent) co_return false;
  BodyMode mode = chunked ? BodyMode::echo_chunked : BodyMode::echo;
  if (head_method_) mode = BodyMode::discard;
  const bool body_read = co_await read_body(mode);
  if (!body_read || mode != BodyMode::echo_chunked) co_return body_read;
  co_return co_await write(asio::buffer(kLastChunk));
}

asio::awaitable<bool> Connection::send_large(std::uint64_t size) {
  const std::string fields = fmt::format("Content-Type: text/plain\r\nContent-Length: {}\r\n", size);
  const bool sent = co_await send(200, fields, "");
  if (!sent || head_method_) co_return sent;
  for (std::uint64_t offset = 0; offset < size;) {
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(kBufferSize, size - offset));
    const auto piece = asio::buffer(kLargePattern.data() + offset % 26, n);
    const bool piece_sent = co_await write(piece);
    if (!piece_sent) co_return false;
    offset += n;
  }
  co_return true;
}

asio::awaitable<bool> Connection::send_text(unsigned status, std::string_view body) {
  // RFC 9110 sections 15.3.5 and 15.4.5: 204 and 304 have no content, and so no length.
  if (status == 204 || status == 304) co_return co_await send(status, "", "");
  const std::string fields = fmt::format("Content-Type: text/plain\r\nContent-Length: {}\r\n", body.size());
  co_return co_await send(status, fields, body);
}

asio::awaitable<bool> Connection::send(unsigned status, std::string_view fields, std::string_view body) {
  const std::string head = response_head(status, fields);
  if (head_method_) body = {};
  const std::array buffers{asio::buffer(std::string_view(head)), asio::buffer(body)};
  co_return co_await write(buffers);
}

asio::awaitable<void> serve_connection(tcp::socket socket) {
  Connection connection(std::move(socket));
  co_await connection.run();
}

asio::awaitable<void> accept_loop(tcp::acceptor& acceptor) {
  for (;;) {
    auto [error, socket] = co_await acceptor.async_accept(use_tuple);
    if (error == asio::error::operation_aborted) co_return;
    if (error) {
      // Out of descriptors, most likely: retrying at once would only spin.
      asio::steady_timer pause(acceptor.get_executor(), std::chrono::milliseconds(50));
      co_await pause.async_wait(use_tuple);
      continue;
    }
    // A strand per connection: the session and its watchdog share state across --threads.
    asio::co_spawn(asio::make_strand(acceptor.get_executor()), serve_connection(std::move(socket)),
                   report_exception("connection"));
  }
}

/// Command-line settings.
struct Options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 12345;
  unsigned threads = 1;
};

constexpr std::string_view kUsage =
    "usage: weldr-test-server [--port N] [--host ADDR] [--threads N]\n"
    "  --port N     port to listen on (default 12345; 0 picks a free one)\n"
    "  --host ADDR  address to listen on (default 127.0.0.1)\n"
    "  --threads N  threads running the event loop (default 1)\n"
    "Prints 'listening on ADDR:PORT' once ready; SIGINT or SIGTERM stops it.\n";

/// Fills `options` from the arguments; an error message for the first bad one.
std::optional<std::string> parse_args(const std::vector<std::string_view>& args, Options& options) {
  for (auto it = args.begin(); it != args.end(); ++it) {
    const std::string_view flag = *it;
    if (flag != "--port" && flag != "--host" && flag != "--threads")
      return fmt::format("unknown argument '{}' (see --help)", flag);
    if (++it == args.end()) return fmt::format("{} needs a value", flag);
    const std::string_view value = *it;
    if (flag == "--host") {
      options.host = value;
    } else if (flag == "--port") {
      const auto port = parse_number<std::uint16_t>(value);
      if (!port) return fmt::format("bad --port '{}': expected 0..65535", value);
      options.port = *port;
    } else {
      const auto threads = parse_number<unsigned>(value);
      if (!threads || *threads == 0 || *threads > kMaxThreads)
        return fmt::format("bad --threads '{}': expected 1..{}", value, kMaxThreads);
      options.threads = *threads;
    }
  }
  return std::nullopt;
}

/// Opens, binds and listens, stopping at the first error.
std::error_code listen(tcp::acceptor& acceptor, const tcp::endpoint& endpoint) {
  std::error_code error;
  acceptor.open(endpoint.protocol(), error);
  if (!error) acceptor.set_option(tcp::acceptor::reuse_address(true), error);
  if (!error) acceptor.bind(endpoint, error);
  if (!error) acceptor.listen(asio::socket_base::max_listen_connections, error);
  return error;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  if (std::ranges::find(args, "--help") != args.end() || std::ranges::find(args, "-h") != args.end()) {
    fmt::print("{}", kUsage);
    return 0;
  }
  Options options;
  if (const auto error = parse_args(args, options)) {
    fmt::print(stderr, "weldr-test-server: {}\n", *error);
    return 2;
  }
  std::error_code error;
  const auto address = asio::ip::make_address(options.host, error);
  if (error) {
    fmt::print(stderr, "weldr-test-server: bad --host '{}': {}\n", options.host, error.message());
    return 2;
  }

  asio::io_context context(static_cast<int>(options.threads));
  tcp::acceptor acceptor(context);
  error = listen(acceptor, tcp::endpoint(address, options.port));
  if (error) {
    fmt::print(stderr, "weldr-test-server: cannot listen on {}:{}: {}\n", options.host, options.port, error.message());
    return 1;
  }
  const auto local = acceptor.local_endpoint();
  std::string shown = local.address().to_string();
  if (local.address().is_v6()) shown = fmt::format("[{}]", shown);
  fmt::print("listening on {}:{}\n", shown, local.port());
  std::fflush(stdout);  // tests wait for this line through a pipe

  asio::signal_set signals(context, SIGINT, SIGTERM);
  signals.async_wait([&](std::error_code, int) { context.stop(); });
  asio::co_spawn(context, accept_loop(acceptor), report_exception("accept loop"));

  std::vector<std::jthread> workers;
  for (unsigned i = 1; i < options.threads; ++i)
    workers.emplace_back([&] { context.run(); });
  context.run();
  return 0;
}
