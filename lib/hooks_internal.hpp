#pragma once
// What a RequestContext looks at: the parsed request head inside the session's buffer.

#include <weldr/hooks.hpp>

#include "http/message.hpp"

#include <string_view>

namespace weldr::detail {

struct RequestView {
  const char* base{nullptr};
  const http::Head* head{nullptr};
  std::string_view client_address;

  static const RequestView& of(const RequestContext& context) noexcept {
    return *static_cast<const RequestView*>(context.view_);
  }
  /// Points `context` at this view and forgets the previous request's changes.
  void attach(RequestContext& context) const noexcept { context.reset(this); }
  /// Forgets the request: its `user` data is destroyed now, not when the next one starts.
  static void detach(RequestContext& context) noexcept { context.reset(nullptr); }
  /// Sets the response status on_response sees.
  static void set_response_status(RequestContext& context, int status) noexcept { context.response_status_ = status; }
  /// Sets the backend of the current attempt.
  static void set_backend(RequestContext& context, const Backend* backend) noexcept { context.backend_ = backend; }
  /// Sets the attempt number.
  static void set_attempt(RequestContext& context, unsigned attempt) noexcept { context.attempt_ = attempt; }
};

}  // namespace weldr::detail
