#include <weldr/hooks.hpp>

#include "hooks_internal.hpp"
#include "http/rewrite.hpp"

#include <algorithm>

namespace weldr {

// ---------------------------------------------------------------------------------------------
// HeaderEdits

void HeaderEdits::set(std::string name, std::string value) {
  remove(name);
  added_.push_back({std::move(name), std::move(value)});
}

void HeaderEdits::add(std::string name, std::string value) {
  if (http::iequals(name, "host")) return set(std::move(name), std::move(value));  // one Host only
  added_.push_back({std::move(name), std::move(value)});
}

void HeaderEdits::remove(std::string name) {
  std::erase_if(added_, [&](const HeaderField& f) { return http::iequals(f.name, name); });
  if (!removes(name)) removed_.push_back(std::move(name));
}

bool HeaderEdits::removes(std::string_view name) const noexcept {
  return std::any_of(removed_.begin(), removed_.end(), [&](const std::string& n) { return http::iequals(n, name); });
}

bool HeaderEdits::adds(std::string_view name) const noexcept {
  return std::any_of(added_.begin(), added_.end(), [&](const HeaderField& f) { return http::iequals(f.name, name); });
}

void HeaderEdits::clear() noexcept {
  removed_.clear();
  added_.clear();
}

// ---------------------------------------------------------------------------------------------
// RequestContext

void RequestContext::reset(const void* view) noexcept {
  view_ = view;
  upstream_target_.clear();
  upstream_headers_.clear();
  response_headers_.clear();
  attempt_ = 0;
  response_status_ = 0;
  backend_ = nullptr;
  user.reset();
}

std::string_view RequestContext::method() const noexcept {
  const auto& v = detail::RequestView::of(*this);
  return v.head->method_name.view(v.base);
}

std::string_view RequestContext::target() const noexcept {
  const auto& v = detail::RequestView::of(*this);
  return v.head->target.view(v.base);
}

std::string_view RequestContext::path() const noexcept {
  const auto& v = detail::RequestView::of(*this);
  return http::origin_form(v.base, *v.head).path;
}

std::string_view RequestContext::host() const noexcept {
  const auto& v = detail::RequestView::of(*this);
  return http::origin_form(v.base, *v.head).host;
}

std::optional<std::string_view> RequestContext::header(std::string_view name) const noexcept {
  const auto& v = detail::RequestView::of(*this);
  for (const auto& field : v.head->fields) {
    if (http::iequals(field.name.view(v.base), name)) return field.value.view(v.base);
  }
  return std::nullopt;
}

std::vector<std::pair<std::string_view, std::string_view>> RequestContext::headers() const {
  const auto& v = detail::RequestView::of(*this);
  std::vector<std::pair<std::string_view, std::string_view>> out;
  out.reserve(v.head->fields.size());
  for (const auto& field : v.head->fields)
    out.emplace_back(field.name.view(v.base), field.value.view(v.base));
  return out;
}

std::string_view RequestContext::client_address() const noexcept {
  return detail::RequestView::of(*this).client_address;
}

int RequestContext::http_minor() const noexcept {
  return detail::RequestView::of(*this).head->http_minor;
}

// ---------------------------------------------------------------------------------------------
// ProxyHooks defaults

std::optional<LocalResponse> ProxyHooks::on_request(RequestContext&) {
  return std::nullopt;
}

BackendChoice ProxyHooks::select_backend(RequestContext&) {
  return {};
}

void ProxyHooks::on_upstream_request(RequestContext&, const Backend&) {}

void ProxyHooks::on_response(RequestContext&) {}

void ProxyHooks::on_error(RequestContext*, LocalResponse&) {}

void ProxyHooks::on_log(const RequestLog&) {}

}  // namespace weldr
