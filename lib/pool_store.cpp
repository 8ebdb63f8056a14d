#include <weldr/pool_store.hpp>

#include <fmt/format.h>

namespace weldr {

asio::awaitable<StoreResult> LocalStore::add(BackendAddress address, std::string check, unsigned weight) {
  const std::string id = address.id();
  if (pool_.add(address, std::move(check), weight == 0 ? 1 : weight))
    co_return StoreResult{StoreResult::Status::created, {}};
  const auto existing = pool_.find(id);
  if (existing && existing->state() == BackendState::draining) {
    co_return StoreResult{StoreResult::Status::conflict,
                          fmt::format("server {} is being removed; register it again once it is gone", id)};
  }
  if (!existing)
    co_return StoreResult{StoreResult::Status::conflict, fmt::format("server {} changed meanwhile; try again", id)};
  if (weight != 0 && existing->weight() != weight) {
    if (!pool_.set_weight(id, weight)) {
      co_return StoreResult{StoreResult::Status::conflict, fmt::format("server {} changed meanwhile; try again", id)};
    }
    co_return StoreResult{StoreResult::Status::updated, {}};
  }
  co_return StoreResult{StoreResult::Status::unchanged, {}};
}

asio::awaitable<StoreResult> LocalStore::remove(std::string id) {
  if (!pool_.remove(id)) co_return StoreResult{StoreResult::Status::not_found, fmt::format("no server {}", id)};
  co_return StoreResult{StoreResult::Status::removed, {}};
}

asio::awaitable<StoreResult> LocalStore::set_health_check(HealthCheckOptions options) {
  if (checker_ == nullptr) co_return StoreResult{StoreResult::Status::not_found, "health checks are not enabled"};
  checker_->set_defaults(options);
  co_return StoreResult{StoreResult::Status::updated, {}};
}

}  // namespace weldr
