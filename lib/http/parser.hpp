#pragma once
// A thin wrapper around llhttp that finds message boundaries and records the head as spans.
//
// The caller owns the bytes. It feeds them in order; the parser stops right after the head
// (Event::head) and right after the message (Event::message), telling how many bytes of the
// input belong to what it reported. Every span refers to the `base` pointer passed to feed(),
// so the head must stay contiguous from its first byte until the caller is done with it.

#include "http/message.hpp"

#include <weldr/error.hpp>

#include <llhttp.h>

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <system_error>
#include <vector>

namespace weldr::http {

/// Parses one HTTP/1.x message at a time.
class Parser {
 public:
  /// What a feed() stopped at.
  enum class Event {
    need_more,  ///< all input consumed, the message is not complete
    head,       ///< the head is complete (body bytes, if any, follow)
    message,    ///< the message is complete
    error,      ///< the input is invalid; see error()
  };

  /// Whether requests or responses are parsed.
  enum class Kind { request, response };

  /// Limits: `max_head` bytes per head, `max_fields` header fields and, for requests,
  /// `max_line` bytes of method and target (errc::uri_too_long beyond it).
  Parser(Kind kind, std::size_t max_head, std::size_t max_fields, std::size_t max_line = SIZE_MAX);
  Parser(const Parser&) = delete;
  Parser& operator=(const Parser&) = delete;

  /// Prepares for a new message. `head_request` tells a response parser that the request was
  /// HEAD, so the response has no body whatever its headers say.
  void reset(bool head_request = false);

  /// Parses `len` bytes at `base + offset`. `consumed` is set to the bytes used up to the
  /// reported event; the rest must be fed again.
  Event feed(const char* base, std::size_t offset, std::size_t len, std::size_t& consumed);
  /// Tells the parser that the peer closed the connection (ends a close-delimited body).
  Event finish();

  /// The head, valid after Event::head.
  [[nodiscard]] const Head& head() const noexcept { return head_; }
  /// True once the head is complete.
  [[nodiscard]] bool head_complete() const noexcept { return state_ != State::head; }
  /// True once the whole message was seen.
  [[nodiscard]] bool message_complete() const noexcept { return state_ == State::done; }
  /// True when the body ends only when the connection closes (responses only).
  [[nodiscard]] bool needs_eof() const noexcept { return needs_eof_; }
  /// Decoded body pieces seen by the last feed() (chunk framing removed), as spans of `base`.
  [[nodiscard]] const std::vector<Span>& body_spans() const noexcept { return body_spans_; }
  /// Why parsing failed: errc::bad_request / bad_response, head_too_large, too_many_headers or
  /// uri_too_long.
  [[nodiscard]] std::error_code error() const noexcept { return error_; }
  /// llhttp's explanation of the failure, for logs and error bodies.
  [[nodiscard]] std::string_view error_reason() const noexcept { return reason_; }

 private:
  enum class State { head, body, done };
  enum class Last { none, field, value };

  static int on_url(llhttp_t* p, const char* at, std::size_t n);
  static int on_method(llhttp_t* p, const char* at, std::size_t n);
  static int on_status(llhttp_t* p, const char* at, std::size_t n);
  static int on_header_field(llhttp_t* p, const char* at, std::size_t n);
  static int on_header_value(llhttp_t* p, const char* at, std::size_t n);
  static int on_header_field_complete(llhttp_t* p);
  static int on_header_value_complete(llhttp_t* p);
  bool trailer_fold(const char* at) const noexcept;
  static int on_headers_complete(llhttp_t* p);
  static int on_body(llhttp_t* p, const char* at, std::size_t n);
  static int on_message_complete(llhttp_t* p);
  static const llhttp_settings_t& settings() noexcept;

  Span span_of(const char* at, std::size_t n) const noexcept;
  static bool extend(Span& span, Span piece) noexcept;
  void fail(std::error_code ec, std::string_view reason) noexcept;

  llhttp_t parser_{};
  Kind kind_;
  std::size_t max_head_;
  std::size_t max_fields_;
  std::size_t max_line_;
  const char* base_{nullptr};
  Head head_;
  State state_{State::head};
  Last last_{Last::none};
  bool head_request_{false};
  bool needs_eof_{false};
  bool paused_{false};
  std::size_t head_bytes_{0};
  // Trailer fields travel raw in the body, but are checked as strictly as the head's.
  bool trailer_name_{false};        // the current trailer field has a name
  bool trailer_value_done_{false};  // its value ended: another piece would be obs-fold
  const char* feed_start_{nullptr};
  bool tail_newline_{false};  // the previous feed ended with LF and optional whitespace
  std::vector<Span> body_spans_;
  std::error_code error_;
  std::string_view reason_;
};

}  // namespace weldr::http
