#include "http/parser.hpp"

#include <limits>

namespace weldr::http {

namespace {
Parser& self(llhttp_t* p) noexcept {
  return *static_cast<Parser*>(p->data);
}
}  // namespace

const llhttp_settings_t& Parser::settings() noexcept {
  static const llhttp_settings_t settings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_url = &Parser::on_url;
    s.on_method = &Parser::on_method;
    s.on_status = &Parser::on_status;
    s.on_header_field = &Parser::on_header_field;
    s.on_header_value = &Parser::on_header_value;
    s.on_header_field_complete = &Parser::on_header_field_complete;
    s.on_header_value_complete = &Parser::on_header_value_complete;
    s.on_headers_complete = &Parser::on_headers_complete;
    s.on_body = &Parser::on_body;
    s.on_message_complete = &Parser::on_message_complete;
    return s;
  }();
  return settings;
}

Parser::Parser(Kind kind, std::size_t max_head, std::size_t max_fields, std::size_t max_line)
    : kind_(kind), max_head_(max_head), max_fields_(max_fields), max_line_(max_line) {
  head_.fields.reserve(32);
  body_spans_.reserve(8);
  llhttp_init(&parser_, kind == Kind::request ? HTTP_REQUEST : HTTP_RESPONSE, &settings());
  parser_.data = this;
}

void Parser::reset(bool head_request) {
  llhttp_init(&parser_, kind_ == Kind::request ? HTTP_REQUEST : HTTP_RESPONSE, &settings());
  parser_.data = this;
  head_.clear();
  state_ = State::head;
  last_ = Last::none;
  head_request_ = head_request;
  needs_eof_ = false;
  paused_ = false;
  head_bytes_ = 0;
  trailer_name_ = false;
  trailer_value_done_ = false;
  feed_start_ = nullptr;
  tail_newline_ = false;
  body_spans_.clear();
  error_ = {};
  reason_ = {};
}

Span Parser::span_of(const char* at, std::size_t n) const noexcept {
  return {static_cast<std::uint32_t>(at - base_), static_cast<std::uint32_t>(n)};
}

// llhttp may report one element in several pieces when it arrives in several reads. The
// bytes are contiguous in the caller's buffer, so a piece that starts where the span ends
// extends it. A piece that does not is a new line of the same element: obs-fold (RFC 9112 §5.2).
bool Parser::extend(Span& span, Span piece) noexcept {
  if (span.length == 0 && span.offset == 0) {
    span = piece;
    return true;
  }
  if (span.offset + span.length != piece.offset) return false;
  span.length += piece.length;
  return true;
}

void Parser::fail(std::error_code ec, std::string_view reason) noexcept {
  if (!error_) {
    error_ = ec;
    reason_ = reason;
  }
}

int Parser::on_url(llhttp_t* p, const char* at, std::size_t n) {
  Parser& s = self(p);
  if (!extend(s.head_.target, s.span_of(at, n))) return -1;
  // llhttp reports the target as it arrives, so an endless one stops here, before the head limit.
  if (std::size_t{s.head_.method_name.length} + s.head_.target.length > s.max_line_) {
    s.fail(errc::uri_too_long, "request line too long");
    return HPE_USER;
  }
  return 0;
}

int Parser::on_method(llhttp_t* p, const char* at, std::size_t n) {
  Parser& s = self(p);
  return extend(s.head_.method_name, s.span_of(at, n)) ? 0 : -1;
}

int Parser::on_status(llhttp_t* p, const char* at, std::size_t n) {
  Parser& s = self(p);
  return extend(s.head_.reason, s.span_of(at, n)) ? 0 : -1;
}

int Parser::on_header_field(llhttp_t* p, const char* at, std::size_t n) {
  Parser& s = self(p);
  if (n > 0) s.trailer_name_ = true;  // (for the head too: the field has a name)
  if (s.state_ != State::head) {      // trailer fields travel raw inside the body
    if (n > 0) s.trailer_value_done_ = false;
    return 0;
  }
  const Span piece = s.span_of(at, n);
  if (s.last_ == Last::field) {
    return extend(s.head_.fields.back().name, piece) ? 0 : -1;
  }
  if (s.head_.fields.size() >= s.max_fields_) {
    s.fail(errc::too_many_headers, "too many header fields");
    return HPE_USER;
  }
  s.head_.fields.push_back({piece, {}});
  s.last_ = Last::field;
  return 0;
}

// True when a trailer value piece at `at` starts a new line (obs-fold): only whitespace lies
// between it and the previous LF, in this feed or at the end of the previous one.
bool Parser::trailer_fold(const char* at) const noexcept {
  const char* p = at;
  while (p > feed_start_ && (p[-1] == ' ' || p[-1] == '\t'))
    --p;
  if (p > feed_start_) return p[-1] == '\n';
  return tail_newline_;
}

int Parser::on_header_field_complete(llhttp_t* p) {
  Parser& s = self(p);
  if (!s.trailer_name_) {  // field-name = token (RFC 9110 §5.1): never empty
    s.fail(s.kind_ == Kind::request ? errc::bad_request : errc::bad_response, "empty field name");
    return HPE_USER;
  }
  return 0;
}

int Parser::on_header_value_complete(llhttp_t* p) {
  Parser& s = self(p);
  s.trailer_name_ = false;
  if (s.state_ != State::head) s.trailer_value_done_ = true;
  return 0;
}

int Parser::on_header_value(llhttp_t* p, const char* at, std::size_t n) {
  Parser& s = self(p);
  if (s.state_ != State::head) {
    if (n > 0 && (!s.trailer_name_ || s.trailer_value_done_ || s.trailer_fold(at))) {
      s.fail(s.kind_ == Kind::request ? errc::bad_request : errc::bad_response,
             "obsolete line folding or an empty field name in the trailer");
      return HPE_USER;
    }
    return 0;
  }
  if (s.head_.fields.empty()) {  // a value without a field name
    s.fail(s.kind_ == Kind::request ? errc::bad_request : errc::bad_response, "empty field name");
    return HPE_USER;
  }
  const Span piece = s.span_of(at, n);
  Span& value = s.head_.fields.back().value;
  if (s.last_ == Last::value) {
    if (!extend(value, piece)) {
      s.fail(s.kind_ == Kind::request ? errc::bad_request : errc::bad_response,
             "obsolete line folding in a header field");
      return HPE_USER;
    }
    return 0;
  }
  // A value whose first byte is on a later line than its name is obs-fold too
  // ("Name:\r\n value"), even though llhttp reports it as one piece.
  const Span name = s.head_.fields.back().name;
  const std::string_view gap(s.base_ + name.offset + name.length, piece.offset - (name.offset + name.length));
  if (piece.length > 0 && gap.find('\n') != std::string_view::npos) {
    s.fail(s.kind_ == Kind::request ? errc::bad_request : errc::bad_response,
           "obsolete line folding in a header field");
    return HPE_USER;
  }
  value = piece;
  s.last_ = Last::value;
  return 0;
}

int Parser::on_headers_complete(llhttp_t* p) {
  Parser& s = self(p);
  Head& h = s.head_;
  h.http_major = llhttp_get_http_major(p);
  h.http_minor = llhttp_get_http_minor(p);
  h.method = llhttp_get_method(p);
  h.status = llhttp_get_status_code(p);
  h.keep_alive = llhttp_should_keep_alive(p) != 0;
  h.chunked = (p->flags & F_CHUNKED) != 0;
  h.has_content_length = (p->flags & F_CONTENT_LENGTH) != 0;
  h.content_length = h.has_content_length ? p->content_length : 0;
  h.upgrade = p->upgrade != 0;
  if (s.kind_ == Kind::response) {
    // reason-phrase = *( HTAB / SP / VCHAR / obs-text ) (RFC 9112 §4): a control character
    // would reach the client.
    for (const char c : h.reason.view(s.base_)) {
      const auto byte = static_cast<unsigned char>(c);
      if ((byte < 0x20 && byte != '\t') || byte == 0x7f) {
        s.fail(errc::bad_response, "control character in the reason phrase");
        return HPE_USER;
      }
    }
    // The response to HEAD, and a 204 or 304, have no body whatever their framing says (RFC
    // 9110 §9.3.2, RFC 9112 §6.3). Bytes the server sends after such a head anyway are no
    // response of ours: the connection is not reused.
    const bool bodiless = h.status == 204 || h.status == 304;
    if (s.head_request_ || bodiless) p->flags |= F_SKIPBODY;
    if (bodiless && (h.chunked || h.content_length > 0) && !s.head_request_) h.keep_alive = false;
  }
  s.needs_eof_ = llhttp_message_needs_eof(p) != 0;
  s.state_ = State::body;
  return HPE_PAUSED;
}

int Parser::on_body(llhttp_t* p, const char* at, std::size_t n) {
  Parser& s = self(p);
  Span piece = s.span_of(at, n);
  if (!s.body_spans_.empty() && s.body_spans_.back().offset + s.body_spans_.back().length == piece.offset) {
    s.body_spans_.back().length += piece.length;
  } else {
    s.body_spans_.push_back(piece);
  }
  return 0;
}

int Parser::on_message_complete(llhttp_t* p) {
  self(p).state_ = State::done;
  return HPE_PAUSED;
}

Parser::Event Parser::feed(const char* base, std::size_t offset, std::size_t len, std::size_t& consumed) {
  consumed = 0;
  body_spans_.clear();
  if (error_) return Event::error;
  if (state_ == State::done) return Event::message;
  base_ = base;
  if (paused_) {
    llhttp_resume(&parser_);
    paused_ = false;
  }
  const State before = state_;
  const char* data = base + offset;
  feed_start_ = data;
  const llhttp_errno_t rc = llhttp_execute(&parser_, data, len);
  switch (rc) {
    case HPE_OK: consumed = len; break;
    case HPE_PAUSED:
      paused_ = true;
      consumed = static_cast<std::size_t>(llhttp_get_error_pos(&parser_) - data);
      break;
    case HPE_PAUSED_UPGRADE:
      // The message ended and what follows is another protocol; the caller decides.
      consumed = static_cast<std::size_t>(llhttp_get_error_pos(&parser_) - data);
      state_ = State::done;
      break;
    default: {
      const char* reason = llhttp_get_error_reason(&parser_);
      fail(kind_ == Kind::request ? errc::bad_request : errc::bad_response,
           reason != nullptr ? reason : llhttp_errno_name(rc));
      return Event::error;
    }
  }
  if (before == State::head) {
    head_bytes_ += consumed;
    if (head_bytes_ > max_head_) {
      fail(errc::head_too_large, "head too large");
      return Event::error;
    }
    if (state_ != State::head) {
      head_.size = head_bytes_;
      return Event::head;
    }
  }
  // Whether this feed ended on a new line, for a trailer fold that straddles two feeds.
  const char* p = data + consumed;
  while (p > data && (p[-1] == ' ' || p[-1] == '\t'))
    --p;
  if (p > data) tail_newline_ = p[-1] == '\n';
  return state_ == State::done ? Event::message : Event::need_more;
}

Parser::Event Parser::finish() {
  if (error_) return Event::error;
  if (state_ == State::done) return Event::message;
  if (state_ == State::body && needs_eof_) {
    state_ = State::done;
    return Event::message;
  }
  fail(kind_ == Kind::request ? errc::bad_request : errc::bad_response, "connection closed before the message ended");
  return Event::error;
}

}  // namespace weldr::http
