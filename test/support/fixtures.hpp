#pragma once
/// \file
/// Fixtures shared by the integration tests: a gate that holds an origin's answers, and a
/// HealthChecker on a control thread of its own.

#include "origin.hpp"

#include <weldr/health_checker.hpp>
#include <weldr/pool.hpp>

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

namespace weldr::test {

/// Holds the origin's answer to requests for one path until opened, so that a request stays in
/// flight exactly as long as a test needs; opens itself when destroyed. Declare it after the
/// Origin whose handler it makes, so that it opens before that Origin joins its thread.
class Gate {
 public:
  Gate() : opened_(promise_.get_future().share()) {}
  ~Gate() { open(); }
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;

  /// Lets held requests (and later ones) be answered.
  void open() {
    if (open_) return;
    open_ = true;
    promise_.set_value();
  }

  /// A handler that holds `path` until open() (at most 10 s), then answers 200 "released";
  /// other paths get the origin's default behaviour.
  [[nodiscard]] Handler handler(std::string path) const {
    return [path = std::move(path), opened = opened_](const RecordedRequest& request) {
      if (request.path() != path) return Origin::default_reply(request);
      static_cast<void>(opened.wait_for(std::chrono::seconds(10)));
      return Reply{.body = "released"};
    };
  }

 private:
  std::promise<void> promise_;
  std::shared_future<void> opened_;
  bool open_{false};
};

/// A HealthChecker over a Pool, on an io_context run by a thread of its own (as a host runs it
/// on its control loop).
///
/// The checker is created and started before the thread runs; afterwards every call that must
/// run on its thread goes through call(). The Pool must outlive it.
class CheckerThread {
 public:
  CheckerThread(Pool& pool, HealthCheckOptions options)
      : checker_(std::make_unique<HealthChecker>(io_, pool, std::move(options))) {
    checker_->start();
    work_.emplace(io_.get_executor());
    thread_ = std::thread([this] {
      io_.run();
      ran_out_.set_value();
    });
  }

  ~CheckerThread() { static_cast<void>(shutdown()); }

  CheckerThread(const CheckerThread&) = delete;
  CheckerThread& operator=(const CheckerThread&) = delete;

  /// The checker; its thread-safe members (status, defaults, set_defaults) may be called from
  /// the test's thread.
  [[nodiscard]] HealthChecker& checker() { return *checker_; }

  /// Runs `f` on the checker's thread and waits (at most 10 s) until it has returned.
  void call(std::function<void()> f) {
    auto task = std::make_shared<std::packaged_task<void()>>(std::move(f));
    auto done = task->get_future();
    asio::post(io_, [task] { (*task)(); });
    if (done.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      throw std::runtime_error("the checker's thread did not run a posted call within 10 s");
    }
    done.get();
  }

  /// Stops and destroys the checker on its thread, then lets the io_context run out of work;
  /// true when it did within 5 s (otherwise it is stopped by force).
  bool shutdown() {
    if (!thread_.joinable()) return drained_;
    try {
      call([this] {
        checker_->stop();
        checker_.reset();
      });
    } catch (const std::exception&) {
      // Reported through the return value: the loop is stopped by force below.
    }
    work_.reset();
    drained_ = ran_out_.get_future().wait_for(std::chrono::seconds(5)) == std::future_status::ready;
    if (!drained_) io_.stop();
    thread_.join();
    checker_.reset();
    return drained_;
  }

 private:
  asio::io_context io_;
  std::unique_ptr<HealthChecker> checker_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::promise<void> ran_out_;
  std::thread thread_;
  bool drained_{false};
};

}  // namespace weldr::test
