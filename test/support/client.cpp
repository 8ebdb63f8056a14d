#include "client.hpp"

#include <llhttp.h>

#include <fmt/format.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <system_error>

namespace weldr::test {

bool iequals(std::string_view a, std::string_view b) noexcept {
  auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [&](char x, char y) { return lower(x) == lower(y); });
}

std::optional<std::string> header_value(const Headers& headers, std::string_view name) {
  for (const auto& [n, v] : headers) {
    if (iequals(n, name)) return v;
  }
  return std::nullopt;
}

std::vector<std::string> header_values(const Headers& headers, std::string_view name) {
  std::vector<std::string> out;
  for (const auto& [n, v] : headers) {
    if (iequals(n, name)) out.push_back(v);
  }
  return out;
}

std::string header_joined(const Headers& headers, std::string_view name) {
  std::string out;
  for (const auto& v : header_values(headers, name)) {
    if (!out.empty()) out += ", ";
    out += v;
  }
  return out;
}

bool has_header(const Headers& headers, std::string_view name) {
  return header_value(headers, name).has_value();
}

bool header_has_token(const Headers& headers, std::string_view name, std::string_view token) {
  const std::string joined = header_joined(headers, name);
  std::string_view rest = joined;
  while (!rest.empty()) {
    const auto comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t'))
      item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t'))
      item.remove_suffix(1);
    if (iequals(item, token)) return true;
  }
  return false;
}

// --- MessageParser ---------------------------------------------------------------------------

struct MessageParser::Impl {
  llhttp_t parser{};
  llhttp_settings_t settings{};
  Message message;
  bool pause_on_head{false};
  bool no_body{false};
  bool new_field{true};
  bool in_message{false};
  bool head_done{false};
  bool message_done{false};
  bool paused{false};
  std::string error;

  static Impl& self(llhttp_t* p) { return *static_cast<Impl*>(p->data); }

  static int on_message_begin(llhttp_t* p) {
    auto& s = self(p);
    s.message = Message{};
    s.new_field = true;
    s.in_message = true;
    s.head_done = false;
    s.message_done = false;
    return 0;
  }
  static int on_url(llhttp_t* p, const char* at, std::size_t n) {
    self(p).message.target.append(at, n);
    return 0;
  }
  static int on_status(llhttp_t* p, const char* at, std::size_t n) {
    self(p).message.reason.append(at, n);
    return 0;
  }
  static int on_header_field(llhttp_t* p, const char* at, std::size_t n) {
    auto& s = self(p);
    if (s.new_field) {
      s.message.headers.emplace_back();
      s.new_field = false;
    }
    s.message.headers.back().first.append(at, n);
    return 0;
  }
  static int on_header_value(llhttp_t* p, const char* at, std::size_t n) {
    self(p).message.headers.back().second.append(at, n);
    return 0;
  }
  static int on_header_value_complete(llhttp_t* p) {
    self(p).new_field = true;
    return 0;
  }
  static int on_headers_complete(llhttp_t* p) {
    auto& s = self(p);
    auto& m = s.message;
    m.version_major = llhttp_get_http_major(p);
    m.version_minor = llhttp_get_http_minor(p);
    if (llhttp_get_type(p) == HTTP_REQUEST) {
      m.method = llhttp_method_name(static_cast<llhttp_method_t>(llhttp_get_method(p)));
    } else {
      m.status = llhttp_get_status_code(p);
    }
    m.chunked = (p->flags & F_CHUNKED) != 0;
    s.head_done = true;
    if (s.no_body && m.status >= 200) return 1;
    return s.pause_on_head ? HPE_PAUSED : 0;
  }
  static int on_body(llhttp_t* p, const char* at, std::size_t n) {
    self(p).message.body.append(at, n);
    return 0;
  }
  static int on_message_complete(llhttp_t* p) {
    auto& s = self(p);
    s.message.keep_alive = llhttp_should_keep_alive(p) != 0;
    s.in_message = false;
    s.message_done = true;
    return HPE_PAUSED;
  }
};

MessageParser::MessageParser(Kind kind, bool pause_on_head) : impl_(std::make_unique<Impl>()) {
  auto& s = impl_->settings;
  llhttp_settings_init(&s);
  s.on_message_begin = &Impl::on_message_begin;
  s.on_url = &Impl::on_url;
  s.on_status = &Impl::on_status;
  s.on_header_field = &Impl::on_header_field;
  s.on_header_value = &Impl::on_header_value;
  s.on_header_value_complete = &Impl::on_header_value_complete;
  s.on_headers_complete = &Impl::on_headers_complete;
  s.on_body = &Impl::on_body;
  s.on_message_complete = &Impl::on_message_complete;
  llhttp_init(&impl_->parser, kind == Kind::request ? HTTP_REQUEST : HTTP_RESPONSE, &impl_->settings);
  impl_->parser.data = impl_.get();
  impl_->pause_on_head = pause_on_head;
}

MessageParser::~MessageParser() = default;

MessageParser::Result MessageParser::feed(std::string_view data) {
  auto& s = *impl_;
  if (!s.error.empty()) return {Event::error, 0};
  if (s.paused) {
    llhttp_resume(&s.parser);
    s.paused = false;
  }
  const bool in_body = s.head_done && !s.message_done;
  if (s.message_done) s.head_done = s.message_done = false;

  const llhttp_errno_t err = llhttp_execute(&s.parser, data.data(), data.size());
  std::size_t consumed = data.size();
  Event event = Event::need_more;
  if (err == HPE_PAUSED) {
    consumed = static_cast<std::size_t>(llhttp_get_error_pos(&s.parser) - data.data());
    s.paused = true;
    event = s.message_done ? Event::message_complete : Event::head_complete;
  } else if (err != HPE_OK) {
    s.error = fmt::format("{}: {}", llhttp_errno_name(err), llhttp_get_error_reason(&s.parser));
    return {Event::error, 0};
  }
  // With pause_on_head the parser stops at both ends of a body, so everything consumed
  // between the two stops is exactly the body as it was framed on the wire.
  if (in_body && s.pause_on_head) s.message.raw_body.append(data.substr(0, consumed));
  return {event, consumed};
}

MessageParser::Result MessageParser::finish() {
  auto& s = *impl_;
  if (!s.error.empty()) return {Event::error, 0};
  if (s.paused) {
    llhttp_resume(&s.parser);
    s.paused = false;
  }
  if (s.message_done) s.head_done = s.message_done = false;
  const bool was_in_message = s.in_message;
  const llhttp_errno_t err = llhttp_finish(&s.parser);
  if (s.message_done) {
    s.paused = err == HPE_PAUSED;
    return {Event::message_complete, 0};
  }
  if (err == HPE_OK && !was_in_message) return {Event::eof, 0};
  s.error = err == HPE_OK ? std::string("end of stream inside a message")
                          : fmt::format("{}: {}", llhttp_errno_name(err), llhttp_get_error_reason(&s.parser));
  return {Event::error, 0};
}

void MessageParser::expect_no_body(bool no_body) noexcept {
  impl_->no_body = no_body;
}
const Message& MessageParser::message() const noexcept {
  return impl_->message;
}
bool MessageParser::in_message() const noexcept {
  return impl_->in_message;
}
const std::string& MessageParser::error() const noexcept {
  return impl_->error;
}

// --- Response --------------------------------------------------------------------------------

std::string Response::header(std::string_view name) const {
  return header_value(headers, name).value_or("");
}

bool Response::has(std::string_view name) const {
  return has_header(headers, name);
}

std::string Response::describe() const {
  return fmt::format("status={} complete={} closed={} timed_out={} error='{}' body_size={} interim={}", status,
                     complete, closed, timed_out, error, body.size(), interim.size());
}

// --- Client ----------------------------------------------------------------------------------

namespace {

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

int connect_loopback(std::uint16_t port, std::error_code& ec) {
  ec.clear();
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ec = {errno, std::system_category()};
    return -1;
  }
  const sockaddr_in addr = loopback(port);
  // sockaddr_in and sockaddr are the same object viewed through the sockets API.
  if (::connect(fd, static_cast<const sockaddr*>(static_cast<const void*>(&addr)), sizeof addr) != 0) {
    ec = {errno, std::system_category()};
    ::close(fd);
    return -1;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

int remaining_ms(std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  return static_cast<int>(std::max<std::chrono::milliseconds::rep>(left.count(), 0));
}

// Waits until `fd` is ready for `events`; false on timeout.
bool wait_ready(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, remaining_ms(deadline));
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return false;
  }
}

}  // namespace

Client::Client(std::uint16_t port, std::chrono::milliseconds timeout) : timeout_(timeout) {
  std::error_code ec;
  fd_ = connect_loopback(port, ec);
  if (fd_ < 0) throw std::system_error(ec, fmt::format("connect to 127.0.0.1:{}", port));
}

Client::~Client() {
  close();
}

bool Client::send(std::string_view bytes) {
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  while (!bytes.empty()) {
    if (fd_ < 0) return false;
    const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n > 0) {
      bytes.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_ready(fd_, POLLOUT, deadline)) return false;
      continue;
    }
    return false;
  }
  return true;
}

Client::ReadStatus Client::read_some(std::chrono::steady_clock::time_point deadline) {
  if (eof_ || fd_ < 0) return ReadStatus::eof;
  std::array<char, 64 * 1024> buf{};
  for (;;) {
    const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
    if (n > 0) {
      pending_.append(buf.data(), static_cast<std::size_t>(n));
      return ReadStatus::data;
    }
    if (n == 0) {
      eof_ = true;
      return ReadStatus::eof;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_ready(fd_, POLLIN, deadline)) return ReadStatus::timeout;
      continue;
    }
    // ECONNRESET and friends: the peer is gone, which is what callers want to know.
    eof_ = true;
    return ReadStatus::eof;
  }
}

Response Client::read_response(bool head_request, bool return_interim) {
  Response out;
  MessageParser parser(MessageParser::Kind::response);
  parser.expect_no_body(head_request);
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  for (;;) {
    const auto r = parser.feed(pending_);
    pending_.erase(0, r.consumed);
    if (r.event == MessageParser::Event::error) {
      out.error = parser.error();
      return out;
    }
    if (r.event == MessageParser::Event::message_complete) {
      const Message& m = parser.message();
      if (m.status >= 100 && m.status < 200 && m.status != 101 && !return_interim) {
        out.interim.push_back(m);
        continue;
      }
      static_cast<Message&>(out) = m;
      out.complete = true;
      return out;
    }
    if (r.event != MessageParser::Event::need_more) continue;

    const ReadStatus st = read_some(deadline);
    if (st == ReadStatus::data) continue;
    if (st == ReadStatus::timeout) {
      static_cast<Message&>(out) = parser.message();
      out.timed_out = true;
      out.error = "timed out waiting for the response";
      return out;
    }
    out.closed = true;
    const auto f = parser.finish();
    static_cast<Message&>(out) = parser.message();
    if (f.event == MessageParser::Event::message_complete) {
      out.complete = true;
    } else if (f.event == MessageParser::Event::eof) {
      out.error = "connection closed before a response";
    } else {
      out.error = parser.error();
    }
    return out;
  }
}

Response Client::exchange(std::string_view request, bool head_request) {
  // A failed send is not final: the server may have answered (and closed) before reading it
  // all, as it does for a request head over its size limit. The read reports what happened.
  send(request);
  return read_response(head_request);
}

bool Client::wait_closed(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const ReadStatus st = read_some(deadline);
    if (st == ReadStatus::eof) return true;
    if (st == ReadStatus::timeout) return false;
  }
}

void Client::shutdown_send() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
}

void close_socket(int& fd, bool reset) {
  if (fd < 0) return;
  if (reset) {
    const linger l{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  ::close(fd);
  fd = -1;
}

void Client::close(bool reset) {
  close_socket(fd_, reset);
}

std::uint16_t Client::local_port() const {
  sockaddr_in addr{};
  socklen_t len = sizeof addr;
  ::getsockname(fd_, static_cast<sockaddr*>(static_cast<void*>(&addr)), &len);
  return ntohs(addr.sin_port);
}

bool Client::can_connect(std::uint16_t port) {
  std::error_code ec;
  const int fd = connect_loopback(port, ec);
  if (fd >= 0) ::close(fd);
  return fd >= 0;
}

Response http_get(std::uint16_t port, std::string_view path) {
  Client c(port);
  c.send(make_request("GET", path, {}, "Connection: close\r\n"));
  return c.read_response();
}

std::string make_request(std::string_view method, std::string_view target, std::string_view body,
                         std::string_view extra_headers) {
  std::string out = fmt::format("{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\n{}", method, target, extra_headers);
  if (!body.empty()) out += fmt::format("Content-Length: {}\r\n", body.size());
  out += "\r\n";
  out += body;
  return out;
}

RefusingPort::RefusingPort() {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw std::system_error(errno, std::system_category(), "socket");
  sockaddr_in addr = loopback(0);
  auto* sa = static_cast<sockaddr*>(static_cast<void*>(&addr));
  socklen_t len = sizeof addr;
  if (::bind(fd_, sa, sizeof addr) != 0 || ::getsockname(fd_, sa, &len) != 0) {
    const int e = errno;
    ::close(fd_);
    throw std::system_error(e, std::system_category(), "bind");
  }
  port_ = ntohs(addr.sin_port);
}

RefusingPort::~RefusingPort() {
  ::close(fd_);
}

std::string RefusingPort::url() const {
  return fmt::format("http://127.0.0.1:{}", port_);
}

std::string RefusingPort::id() const {
  return fmt::format("127.0.0.1:{}", port_);
}

}  // namespace weldr::test
