#include <weldr/error.hpp>

#include <string>

namespace weldr {
namespace {

class Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "weldr"; }
  std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
      case errc::invalid_url: return "invalid backend URL";
      case errc::bad_request: return "malformed request";
      case errc::head_too_large: return "head too large";
      case errc::too_many_headers: return "too many header fields";
      case errc::bad_response: return "malformed response from backend";
      case errc::no_backend: return "no usable backend";
      case errc::upstream_timeout: return "backend timed out";
      case errc::connect_timeout: return "connect to backend timed out";
      case errc::upstream_closed: return "backend closed the connection";
      case errc::client_timeout: return "client timed out";
      case errc::uri_too_long: return "request line too long";
      case errc::body_too_large: return "request body too large";
    }
    return "unknown weldr error";
  }
};

}  // namespace

const std::error_category& error_category() noexcept {
  static const Category category;
  return category;
}

}  // namespace weldr
