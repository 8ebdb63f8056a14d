#pragma once
/// \file
/// Catch2 checks shared by the integration tests.

#include "client.hpp"

#include <catch2/catch.hpp>

#include <cstdint>

namespace weldr::test {

/// Requires that a plain GET / through the proxy on `proxy_port` still gets the default
/// origin's "Hello World": whatever a test did before, the proxy keeps serving.
inline void require_usable(std::uint16_t proxy_port) {
  const Response r = http_get(proxy_port, "/");
  INFO("afterwards: " << r.describe());
  REQUIRE(r.complete);
  REQUIRE(r.status == 200);
  REQUIRE(r.body == "Hello World");
}

}  // namespace weldr::test
