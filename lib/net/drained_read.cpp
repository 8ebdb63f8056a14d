#include "net/drained_read.hpp"

namespace weldr::net {

DrainedReads::DrainedReads(asio::execution_context& context)
    : reactor_(&asio::use_service<drained_detail::reactor>(context)) {}

}  // namespace weldr::net
