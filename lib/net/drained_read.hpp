#pragma once
// A socket read that tells Asio's reactor when it drained the socket.
//
// Asio (1.22) starts every read with a "speculative" recv(2) and only waits for epoll when that
// fails with EAGAIN. It stops trying at once only after a read that returned end of stream, so
// after a read that emptied the socket, the next one costs a recv that fails. For a proxy that
// is one failed system call per request on each side (the client's next request, the backend's
// next response): about 460 ns each on the benchmark machine, and HAProxy makes none.
//
// async_read_some_drained() is socket.async_read_some() with one change: a read that returned
// fewer bytes than the buffer holds reports "done and exhausted" to the reactor, as Asio's own
// reads do for end of stream. The reactor then queues the next read without trying it, and
// tries again after epoll reports the socket readable (edge-triggered: any byte that arrives
// after the short read, or a close, raises a new event; one that arrived before it only causes a
// read that may fail, as without this). The status is given under the descriptor's lock, inside
// the operation, so no event can come between the read and the mark.
//
// It builds the operation Asio's reactive socket service builds, out of Asio's detail classes:
// checked below for the Asio version and reactor the project builds with.

#include <asio/associated_cancellation_slot.hpp>
#include <asio/async_result.hpp>
#include <asio/buffer.hpp>
#include <asio/detail/bind_handler.hpp>
#include <asio/detail/fenced_block.hpp>
#include <asio/detail/handler_alloc_helpers.hpp>
#include <asio/detail/handler_cont_helpers.hpp>
#include <asio/detail/handler_work.hpp>
#include <asio/detail/memory.hpp>
#include <asio/detail/reactor.hpp>
#include <asio/detail/reactor_op.hpp>
#include <asio/detail/socket_ops.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/version.hpp>

#include <cstddef>
#include <system_error>
#include <type_traits>
#include <utility>

namespace weldr::net {

static_assert(ASIO_VERSION / 100 == 1022, "drained_read.hpp builds Asio 1.22's reactor operation: check it first");
static_assert(std::is_same_v<asio::detail::reactor, asio::detail::epoll_reactor>,
              "drained_read.hpp expects Asio's epoll reactor");

namespace drained_detail {

using asio::detail::reactor;
using asio::detail::reactor_op;

/// The socket's implementation (descriptor, state, reactor data): a protected member of
/// basic_socket, reached through a pointer to member formed in a derived class.
struct SocketAccess : asio::ip::tcp::socket {
  static auto& implementation(asio::ip::tcp::socket& socket) {
    return (socket.*(&SocketAccess::impl_)).get_implementation();
  }
};

/// Per-operation cancellation, as Asio's socket service registers it for its own reads.
class Cancellation {
 public:
  Cancellation(reactor* r, reactor::per_descriptor_data* data, int descriptor)
      : reactor_(r), data_(data), descriptor_(descriptor) {}
  void operator()(asio::cancellation_type_t type) {
    if (!!(type &
           (asio::cancellation_type::terminal | asio::cancellation_type::partial | asio::cancellation_type::total)))
      reactor_->cancel_ops_by_key(descriptor_, *data_, reactor::read_op, this);
  }

 private:
  reactor* reactor_;
  reactor::per_descriptor_data* data_;
  int descriptor_;
};

template <typename Handler, typename IoExecutor>
class RecvOp : public reactor_op {
 public:
  ASIO_DEFINE_HANDLER_PTR(RecvOp);

  RecvOp(int descriptor, asio::mutable_buffer buffer, Handler& handler, const IoExecutor& io_ex)
      : reactor_op(std::error_code{}, &RecvOp::do_perform, &RecvOp::do_complete),
        descriptor_(descriptor),
        buffer_(buffer),
        handler_(std::move(handler)),
        work_(handler_, io_ex) {}

  static status do_perform(reactor_op* base) {
    auto* o = static_cast<RecvOp*>(base);
    if (!asio::detail::socket_ops::non_blocking_recv1(o->descriptor_, o->buffer_.data(), o->buffer_.size(), 0, true,
                                                      o->ec_, o->bytes_transferred_))
      return not_done;  // EAGAIN: wait for epoll
    // Short (or end of stream, or an error): nothing is left to read until the next event.
    return o->bytes_transferred_ < o->buffer_.size() ? done_and_exhausted : done;
  }

  static void do_complete(void* owner, asio::detail::operation* base, const std::error_code&, std::size_t) {
    // As reactive_socket_recv_op::do_complete: move the handler out, free the operation, and
    // only then call the handler.
    auto* o = static_cast<RecvOp*>(base);
    ptr p = {asio::detail::addressof(o->handler_), o, o};
    asio::detail::handler_work<Handler, IoExecutor> w(std::move(o->work_));
    asio::detail::binder2<Handler, std::error_code, std::size_t> handler(o->handler_, o->ec_, o->bytes_transferred_);
    p.h = asio::detail::addressof(handler.handler_);
    p.reset();
    if (owner) {
      asio::detail::fenced_block b(asio::detail::fenced_block::half);
      w.complete(handler, handler.handler_);
    }
  }

 private:
  int descriptor_;
  asio::mutable_buffer buffer_;
  Handler handler_;
  asio::detail::handler_work<Handler, IoExecutor> work_;
};

struct Initiate {
  template <typename Handler>
  void operator()(Handler&& handler, reactor* r, asio::ip::tcp::socket* socket, asio::mutable_buffer buffer) const {
    using Decayed = std::decay_t<Handler>;
    using Executor = asio::ip::tcp::socket::executor_type;
    using Op = RecvOp<Decayed, Executor>;
    auto& impl = SocketAccess::implementation(*socket);
    const bool is_continuation = asio_handler_cont_helpers::is_continuation(handler);
    auto slot = asio::get_associated_cancellation_slot(handler);

    typename Op::ptr p = {asio::detail::addressof(handler), Op::ptr::allocate(handler), 0};
    p.p = new (p.v) Op(impl.socket_, buffer, handler, socket->get_executor());
    if (slot.is_connected())
      p.p->cancellation_key_ = &slot.template emplace<Cancellation>(r, &impl.reactor_data_, impl.socket_);

    // As reactive_socket_service_base::start_op: the descriptor must be in non-blocking mode.
    if ((impl.state_ & asio::detail::socket_ops::non_blocking) ||
        asio::detail::socket_ops::set_internal_non_blocking(impl.socket_, impl.state_, true, p.p->ec_)) {
      r->start_op(reactor::read_op, impl.socket_, impl.reactor_data_, p.p, is_continuation, true);
    } else {
      r->post_immediate_completion(p.p, is_continuation);
    }
    p.v = p.p = 0;
  }
};

}  // namespace drained_detail

/// Reads for the sockets of one execution context (an io_context).
class DrainedReads {
 public:
  explicit DrainedReads(asio::execution_context& context);

  /// socket.async_read_some(buffer, token), except that a read returning fewer bytes than
  /// `buffer` holds makes the next read on the socket wait for epoll rather than try at once.
  /// Completes with (error_code, bytes). `buffer` must not be empty, and `socket` must belong to
  /// the context given to the constructor.
  template <typename CompletionToken>
  auto read_some(asio::ip::tcp::socket& socket, asio::mutable_buffer buffer, CompletionToken&& token) {
    return asio::async_initiate<CompletionToken, void(std::error_code, std::size_t)>(drained_detail::Initiate{}, token,
                                                                                     reactor_, &socket, buffer);
  }

 private:
  drained_detail::reactor* reactor_;
};

}  // namespace weldr::net
