#pragma once
/// \file
/// weldr's own error codes.

#include <system_error>
#include <type_traits>

namespace weldr {

/// Errors that weldr reports through std::error_code. Values start at 1.
enum class errc {
  invalid_url = 1,   ///< a backend URL that cannot be parsed or uses another scheme
  bad_request,       ///< a malformed or ambiguous request (400)
  head_too_large,    ///< a request or response head over the size limit
  too_many_headers,  ///< more header fields than allowed
  bad_response,      ///< a malformed response from a backend (502)
  no_backend,        ///< no usable backend (503)
  upstream_timeout,  ///< a backend did not answer in time (504)
  connect_timeout,   ///< connecting to a backend timed out
  upstream_closed,   ///< a backend closed or reset before a complete response
  client_timeout,    ///< a client was too slow
  uri_too_long,      ///< a request line over the size limit (414)
  body_too_large,    ///< a request body over the configured limit (413)
};

/// The category of weldr::errc values.
const std::error_category& error_category() noexcept;

/// Makes an error_code from a weldr::errc.
inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

}  // namespace weldr

/// Lets a weldr::errc convert implicitly to std::error_code and compare with one.
template <>
struct std::is_error_code_enum<weldr::errc> : std::true_type {};
