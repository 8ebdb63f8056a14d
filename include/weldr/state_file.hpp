#pragma once
/// \file
/// Durable registrations: the pool's backends kept in a JSON file that survives a restart.

#include <weldr/pool.hpp>

#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace weldr {

/// One registration as stored: the backend URL, its own health-check settings and its weight.
struct StoredBackend {
  std::string url;     ///< As registered, e.g. "http://127.0.0.1:9001".
  std::string check;   ///< Its health-check settings as a compact JSON object text, or "" for none.
  unsigned weight{1};  ///< Its weight, 1..256 (written only when not 1).

  /// Equal when both fields are.
  friend bool operator==(const StoredBackend&, const StoredBackend&) = default;
};

/// A state file that cannot be read or parsed; what() says which file, where and what is wrong.
class StateFileError : public std::runtime_error {
 public:
  /// Constructs it with a message, as std::runtime_error.
  using std::runtime_error::runtime_error;
};

/// Reads a state file. A missing file means no registrations (first start); anything else that
/// is wrong (unreadable, not a regular file, empty, not JSON, not the expected shape, an invalid
/// or duplicate URL) throws StateFileError.
std::vector<StoredBackend> load_state_file(const std::string& path);

/// Writes `backends` to `path` durably: a temp file in the same directory, write, fsync, rename
/// over `path`, fsync the directory. Throws std::system_error on failure (and leaves the old
/// file intact), std::invalid_argument (touching no file) when a `check` is not a JSON object.
void save_state_file(const std::string& path, const std::vector<StoredBackend>& backends);

/// Keeps a state file in step with a Pool: loads it at start, rewrites it after every add and
/// remove. One StateFile per path and process; the Pool must outlive it.
class StateFile {
 public:
  /// Binds `pool` and `path`; does not touch either yet.
  StateFile(Pool& pool, std::string path);
  /// Unsubscribes from the pool; when it returns, no write is in progress.
  ~StateFile();
  /// Not copyable.
  StateFile(const StateFile&) = delete;
  StateFile& operator=(const StateFile&) = delete;

  /// Loads the file into the pool (Pool::add for each entry, check included; entries already in
  /// the pool are kept), writes the file once so that an unwritable path fails now rather than
  /// at the first change, and from then on rewrites it after every add and remove. Throws
  /// StateFileError when the file cannot be read, is corrupt or cannot be written; the pool
  /// may then hold some of the file's entries. Call at most once.
  void start();

  /// The error of the last failed write, or empty; cleared by the next successful write.
  /// Thread-safe.
  [[nodiscard]] std::string last_error() const;

  /// The path it keeps.
  [[nodiscard]] const std::string& path() const noexcept { return path_; }

 private:
  void on_event(const PoolEvent& event);
  void save();  // throws; takes write_mutex_

  Pool& pool_;
  const std::string path_;
  std::uint64_t subscription_{0};  // 0: not subscribed
  std::mutex write_mutex_;         // one write at a time, each from a fresh Pool::list()
  mutable std::mutex error_mutex_;
  std::string last_error_;  // guarded by error_mutex_
};

}  // namespace weldr
